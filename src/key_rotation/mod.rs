//! Upstream key rotation: a [`KeyPool`] of Gemini API keys and the [`KeyRotationLayer`] that
//! sets a key on each request and retries on another when the upstream blames the key.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::Body;
//! use tower_gemini::key_rotation::{KeyPool, KeyRotationLayer, Strategy};
//!
//! let pool = KeyPool::builder()
//!     .keys(["AIzaSyA-first-key-0000000000000000000001", "AIzaSyA-second-key-000000000000000000002"])
//!     .strategy(Strategy::RoundRobin)
//!     .max_failures(3)
//!     .build()
//!     .unwrap();
//!
//! // The upstream (here a stub) sees the pool's key, never the client's.
//! let upstream = service_fn(|req: Request<Body>| async move {
//!     assert!(req.headers()["x-goog-api-key"].to_str().unwrap().starts_with("AIzaSyA-"));
//!     assert!(req.headers().get("authorization").is_none());
//!     Ok::<_, std::convert::Infallible>(Response::new(Body::from("{}")))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(KeyRotationLayer::new(pool.clone()).max_attempts(2))
//!     .service(upstream);
//!
//! let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .header("authorization", "Bearer client-token")
//!     .body(Body::from(r#"{"contents":[]}"#))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(pool.usable_count(), 2);
//! assert_eq!(pool.snapshot()[0].total_requests, 1);
//! # });
//! ```
//!
//! # What each answer does to a key
//! | upstream answer | key | request |
//! |---|---|---|
//! | 2xx | failures reset, cool-down for the model cleared | relayed (a stream is never retried) |
//! | 429 | cools for *that model*: `RetryInfo.retryDelay`, else exponential backoff with jitter from [`cooldown`](KeyPoolBuilder::cooldown); a per-day quota parks it until midnight Pacific (UTC-8) | retried on another key at once |
//! | 400 `API_KEY_INVALID` (the `ErrorInfo` reason, or "API key not valid" when there is none), 400 `FAILED_PRECONDITION`, 401, 403 | one failure; [`max_failures`](KeyPoolBuilder::max_failures) in a row disable it until a re-probe | retried on another key at once |
//! | 500, 502, 503, 504, transport error, timeout | one transient failure; [`max_transient_failures`](KeyPoolBuilder::max_transient_failures) in a row (default 3) rest it for every model for the base [`cooldown`](KeyPoolBuilder::cooldown), then it comes back; any other answer resets the count | retried with a small backoff |
//! | any other 4xx (bad request, 404) | untouched | relayed, no retry |
//! | 403 or 404 about a resource (the request has a [`KeyPin`](crate::facts::KeyPin) or [`NamedResources`](crate::facts::NamedResources), its path is under `files`, `cachedContents`, `batches`, `operations` or `/upload/`, or the error says "... or it may not exist") | untouched: the resource lives in another project, the key is fine | relayed, no retry |
//!
//! A request with a [`KeyPin`](crate::facts::KeyPin) goes to that key only, whatever its
//! cool-downs, and is never retried on another (a transient failure is retried on the same
//! key); when that key is disabled (503) or gone from the pool (404), the answer names the
//! resource, not the key.
//!
//! A disabled key is re-probed after [`reprobe_after`](KeyPoolBuilder::reprobe_after) with one
//! real request, and revived when it answers. When no key can serve the model the layer answers
//! at once, without calling upstream: 429 with `Retry-After` when every key is cooling for the
//! model, 503 when every key is disabled; in the route's [`Dialect`](crate::Dialect), naming no key.
//! A key resting after repeated transient failures counts as cooling for every model, so a
//! gateway whose upstream fails with every key answers 429 with `Retry-After` for a while, not
//! 503 for ever.
//!
//! # Retries and bodies
//! A retry replays the request body, so it needs a buffered body ([`Body::as_bytes`]
//! is `Some`): put a body-limit or buffering layer before this one. A streaming request body
//! gets one attempt. The number of attempts defaults to the number of usable keys, at most 5
//! ([`KeyRotationLayer::max_attempts`]). Upstream error bodies are read (up to 64 KiB) and
//! classified through [`GeminiError`](crate::gemini::GeminiError), and are relayed with every
//! pool key scrubbed. When the last attempt fails on the transport, the client gets 504 for a
//! timeout and 502 otherwise ([`ApiError::from_transport`](crate::ApiError::from_transport)).
//!
//! # Credentials
//! The layer removes every client credential (`authorization`, `x-goog-api-key`, `?key=`) and
//! sets the upstream key as `x-goog-api-key` (marked sensitive). Keys appear only masked in
//! snapshots and logs; spans carry `key.id`, a fingerprint.
//!
//! A request that carries a [`ClientKey`](crate::secret::ClientKey) extension (own-key mode,
//! see [`BearerAuthLayer::client_key_passthrough`](crate::auth::BearerAuthLayer::client_key_passthrough))
//! is sent once with that key instead: the pool is neither drawn from nor told about it, and its
//! errors are relayed, scrubbed, for the client to act on.
//!
//! # Several instances
//! Cool-downs and disabled flags can be shared through a [`KeyStateStore`]: [`KeyStateMemoryStore`]
//! in one process, `KeyStateRedisStore` (feature `redis`) across processes. Without a store each
//! pool keeps its state to itself.
//!
//! [`Body::as_bytes`]: crate::Body::as_bytes

mod classify;
mod layer;
mod pool;
#[cfg(feature = "redis")]
mod redis;
mod store;
mod strategy;

pub use layer::{KeyRotation, KeyRotationLayer, ResponseFuture};
pub use pool::{CoolingSnapshot, KeyId, KeyPool, KeyPoolBuilder, KeySnapshot, KeyState};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::KeyStateRedisStore;
pub use store::{KeyStateMemoryStore, KeyStateStore, SharedKeyState, StoreFuture};
pub use strategy::{Candidates, SelectKey, Strategy};

// The Live relay picks one key per session and reports its handshake like an HTTP answer.
#[cfg(feature = "live")]
pub(crate) use classify::Outcome;
#[cfg(feature = "live")]
pub(crate) use pool::{Lease, Pick, Unavailable};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
