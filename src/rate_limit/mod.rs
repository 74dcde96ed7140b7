//! Quotas per client, IP address, model or for the whole gateway, so that one heavy client
//! cannot starve the others or burn every upstream key.
//!
//! A [`Rule`] names what its buckets are keyed by and one or more [`Quota`]s:
//!
//! | constructor | one bucket per |
//! |---|---|
//! | [`Rule::global`] | gateway |
//! | [`Rule::per_client`] | authenticated client ([`Identity::subject`](crate::facts::Identity::subject), from `BearerAuth`: one bucket per token on every instance) |
//! | [`Rule::per_ip`] | client IP ([`ClientAddr`] / `SocketAddr` extension, or a trusted forwarding header) |
//! | [`Rule::per_model`]`("m")` | model `m` (requests for other models are not counted) |
//! | [`Rule::per_each_model`] | model named in the Gemini path |
//! | `.and_client()`, `.and_ip()`, `.and_model()` | combination, e.g. (client, model) |
//!
//! Request quotas (per second, minute, day, or any period, with a burst) use GCRA: smooth, no
//! fixed-window cliff. Token quotas charge an estimate before the call (request-body bytes / 4)
//! and settle it with the answer's `usageMetadata.totalTokenCount`: a non-streamed answer is
//! buffered (bounded) and parsed; a stream is relayed untouched while a tiny scanner reads the
//! usage of its last event. Failed calls give the estimate back.
//!
//! Over a limit the answer is 429 in the route's dialect, without calling the inner service,
//! with `Retry-After` (whole seconds) and a message naming the limit ("rate limit of 60
//! requests per minute per client exceeded; retry in 3 s"). `x-ratelimit-limit`,
//! `x-ratelimit-remaining` and `x-ratelimit-reset` (whole seconds until the quota is whole
//! again) describe the tightest quota on every limited response, allowed or not.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, facts::Identity, rate_limit::{RateLimitLayer, Rule}};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RateLimitLayer::builder()
//!             .rule(Rule::per_client().requests_per_minute(2))
//!             .rule(Rule::per_model("gemini-2.5-pro").tokens_per_minute(250_000))
//!             .build()
//!             .unwrap(),
//!     )
//!     .service(service_fn(|_req: Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
//!     }));
//!
//! let request = || {
//!     let mut req = Request::builder()
//!         .uri("/v1beta/models/gemini-2.5-flash:generateContent")
//!         .body(Body::empty())
//!         .unwrap();
//!     req.extensions_mut().insert(Identity::new("alice", "sk-a…0001", false));
//!     req
//! };
//! let ok = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(ok.headers()["x-ratelimit-remaining"], "1");
//! svc.clone().oneshot(request()).await.unwrap();
//! let refused = svc.oneshot(request()).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "30");
//! # });
//! ```
//!
//! # Stores
//! State lives in a [`RateLimitStore`], shared by every clone of the layer (axum clones
//! services per connection; a limiter per clone would multiply the quotas). [`RateLimitMemoryStore`] is
//! the default: sharded, bounded, idle buckets evicted, driven by Tokio's clock. With the
//! `redis` feature, [`RateLimitRedisStore`] shares one limit between gateway instances in one atomic
//! script per request. When the store fails, the layer lets requests through (the default)
//! or answers 503 ([`fail_open`](RateLimitLayerBuilder::fail_open)), and logs a warning.
//!
//! # Ordering
//! After `BearerAuthLayer` (per-client rules need its [`Identity`](crate::facts::Identity))
//! and after the OpenAI translation (model rules read the Gemini path), before key rotation,
//! so a refused request never reaches an upstream key. [`ModelLimits`] parses the
//! `MODEL_LIMITS` syntax (`gemini-2.5-pro=5rpm,250000tpm,100rpd;gemini-2.5-flash=10rpm`) into
//! rules.

mod body;
mod key;
mod layer;
#[cfg(feature = "redis")]
mod redis;
mod rule;
mod store;

#[cfg(test)]
mod tests;

pub use key::ClientAddr;
pub use layer::{RateLimit, RateLimitLayer, RateLimitLayerBuilder, ResponseFuture};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RateLimitRedisStore;
pub use rule::{ModelLimits, Quota, QuotaKind, Rule};
pub use store::{Check, Outcome, RateLimitMemoryStore, RateLimitStore, Settlement, StoreFuture};
