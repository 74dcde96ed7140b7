//! Resource affinity: a file, cached content, batch or operation lives in the Google project
//! of the key that created it, so every later call naming it must use that key.
//!
//! With a pool of keys, a `generateContent` naming `files/abc` on another key's project gets
//! 403 `PERMISSION_DENIED`. The [`AffinityLayer`] remembers, for every resource created
//! through it, the key that served the creation (read from the request's
//! [`Report`](crate::facts::Report)) and the client that asked, in an [`AffinityStore`]; every
//! later request that names the resource carries a [`KeyPin`](crate::facts::KeyPin) that key
//! rotation honours.
//!
//! | request | what the layer does |
//! |---|---|
//! | `POST /upload/v1beta/files`, resumable `start` | the answer's `X-Goog-Upload-URL` is rewritten to the gateway (`Host`, `X-Forwarded-Proto`) under an opaque id that maps to the upstream URL and key; neither is shown |
//! | bytes to that URL (`upload, finalize`) | sent to the upstream session on its key, streamed; the `{"file": ...}` answer is pinned. As with Google's own URL, the session id is the credential (the SDKs send no key with the bytes): [`UploadSessionsLayer`], in front of authentication, lets such a request in as the session's client |
//! | multipart upload, `POST cachedContents`, `:batchGenerateContent`, `:asyncBatchEmbedContent`, `:predictLongRunning`, `POST interactions` | the answer's `name` (an interaction's `id`) is pinned |
//! | `files/{id}`, `cachedContents/{id}`, `batches/{id}[:cancel]`, `operations/{id}`, `models/*/operations/{id}`, `interactions/{id}[:cancel]` | pinned to the key; a `DELETE` forgets the pin |
//! | a body with `fileData.fileUri`, `cachedContent` or `previous_interaction_id` | pinned to their key; resources on two keys → 400 saying why |
//! | `GET files`, `cachedContents`, `batches` | answered from the store: the caller's resources across every key, with page tokens of the gateway |
//!
//! Each client sees only what it created (an admin [`Identity`](crate::facts::Identity) sees
//! everything): another client's resource is a 404, as Google answers for a resource it cannot
//! see. Without authentication in front every request is one tenant. In own-key mode (a
//! [`ClientKey`](crate::secret::ClientKey) in the request) nothing is remembered.
//!
//! Pins expire with their resource: files after 48 h (their `expirationTime`), cached contents
//! at their `expireTime`, batches and operations after [`AffinityLayer::default_ttl`].
//!
//! # Stores
//! [`MemoryAffinityStore`] for one process; `AffinitySqliteStore` (feature `sqlite`) for the
//! instances of one host and across restarts; `AffinityRedisStore` (feature `redis`) for a
//! fleet, each call bounded so a slow Redis never holds a request for long.
//!
//! # Ordering
//! Stack it after authentication (it reads the [`Identity`](crate::facts::Identity)) and the
//! body limit (it reads buffered bodies; upload bytes stream and are never read), before key
//! rotation. Lists are answered here without an upstream call.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, affinity::AffinityLayer, facts::{FactsLayer, KeyPin, Report}};
//!
//! let layer = AffinityLayer::default();
//! let svc = ServiceBuilder::new()
//!     .layer(FactsLayer::new())
//!     .layer(layer.clone())
//!     .service(service_fn(|req: Request<Body>| async move {
//!         let pin = req.extensions().get::<KeyPin>().map(|p| p.key_id().to_owned());
//!         // Key rotation would record the serving key; here a stub does.
//!         Report::of(&req).unwrap().record_key("key-a");
//!         let body = match pin {
//!             Some(key) => format!(r#"{{"pinned":"{key}"}}"#),
//!             None => r#"{"name":"cachedContents/c1","expireTime":"2099-01-01T00:00:00Z"}"#.to_owned(),
//!         };
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from(body)))
//!     }));
//!
//! let create = Request::post("/v1beta/cachedContents").body(Body::from("{}")).unwrap();
//! assert_eq!(svc.clone().oneshot(create).await.unwrap().status(), StatusCode::OK);
//! let use_it = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .body(Body::from(r#"{"cachedContent":"cachedContents/c1","contents":[]}"#))
//!     .unwrap();
//! let res = svc.oneshot(use_it).await.unwrap();
//! assert_eq!(res.into_body().as_bytes().unwrap(), r#"{"pinned":"key-a"}"#);
//! # });
//! ```

mod layer;
mod names;
#[cfg(feature = "redis")]
mod redis;
mod sessions;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

pub use layer::{Affinity, AffinityLayer, ResponseFuture};
#[cfg(feature = "redis")]
pub use redis::AffinityRedisStore;
pub use sessions::{UploadSessions, UploadSessionsLayer};
#[cfg(feature = "sqlite")]
pub use sqlite::AffinitySqliteStore;
pub use store::{AffinityStore, MemoryAffinityStore, Pinned, StoreFuture};
