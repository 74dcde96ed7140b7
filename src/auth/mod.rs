//! Authenticate gateway clients by token, and strip their credential before the upstream.
//!
//! [`BearerAuthLayer`] accepts the three ways clients send a key: `Authorization: Bearer <t>`
//! (OpenAI SDKs, curl), `x-goog-api-key: <t>` (google-genai SDKs) and `?key=<t>` (Gemini REST
//! examples). The token is looked up in a [`TokenStore`] with constant-time comparison; on
//! success the caller's [`Identity`] goes into the request extensions and **every** credential
//! (the three above) is removed from the request, so the client's secret never travels
//! upstream. Otherwise the answer is 401 with `WWW-Authenticate: Bearer` and a JSON error in the
//! route's dialect, and the inner service is not called.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, auth::{BearerAuthLayer, Identity, MemoryTokenStore}};
//!
//! let tokens = MemoryTokenStore::new().with_token("sk-client-token-1", "alice");
//! let svc = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(tokens))
//!     .service(service_fn(|req: Request<Body>| async move {
//!         assert!(req.headers().get("authorization").is_none());
//!         let who = req.extensions().get::<Identity>().unwrap().name().to_owned();
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from(who)))
//!     }));
//!
//! let ok = Request::builder()
//!     .uri("/v1beta/models")
//!     .header("authorization", "Bearer sk-client-token-1")
//!     .body(Body::empty())
//!     .unwrap();
//! assert_eq!(svc.clone().oneshot(ok).await.unwrap().status(), StatusCode::OK);
//!
//! let bad = Request::builder().uri("/v1beta/models?key=nope").body(Body::empty()).unwrap();
//! assert_eq!(svc.oneshot(bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! # });
//! ```
//!
//! # Ordering
//! Put it after `RequestIdLayer` (so rejections carry an id) and before anything that calls
//! upstream. Routes that need no credential (`/health`) belong outside it.

mod credentials;
mod future;
mod layer;
mod service;
mod store;

pub use crate::credential::{CredentialSource, credential};
pub use crate::facts::Identity;
pub use crate::secret::TokenDigest;
pub use credentials::client_key_id;
pub use future::ResponseFuture;
pub use layer::BearerAuthLayer;
pub use service::BearerAuth;
#[cfg(feature = "live")]
pub(crate) use service::{MISSING_TOKEN, identify};
pub use store::{MemoryTokenStore, TokenInfo, TokenStore, mint_token};

#[cfg(test)]
mod tests;
