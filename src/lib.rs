//! Tower middleware for Gemini API gateways, and the pieces of a complete one.
//!
//! People put a gateway in front of Gemini because one API key is never enough, streams get cut
//! off, and their tools speak OpenAI's or Anthropic's API. `tower-gemini` gives Rust programs those pieces as
//! [tower](https://docs.rs/tower) layers: they stack onto an axum or hyper server (a gateway of
//! your own), or onto an HTTP client (a program that calls Gemini directly with a pool of keys).
//! `examples/full_proxy` is a ready gateway built from them: `cargo run --example full_proxy`.
//!
//! # Layers and features
//!
//! | Layer | What it does | Feature | Default? |
//! |---|---|---|---|
//! | [`request_id::RequestIdLayer`] | keeps a valid `x-request-id` or mints one; the request's span | `request-id` | yes |
//! | [`auth::BearerAuthLayer`] | client tokens (`Authorization: Bearer`, `x-goog-api-key`, `x-api-key`, `?key=`); strips them | `bearer-auth` | yes |
//! | [`openai::OpenAiToGeminiLayer`] | OpenAI chat completions, models and embeddings over Gemini | `openai` | no |
//! | [`anthropic::AnthropicToGeminiLayer`] | Anthropic's Messages API (Claude Code, the Anthropic SDKs) over Gemini | `anthropic` | no |
//! | [`policy::RequestPolicyLayer`] | aliases, allow lists, prompt injection, safety, thinking, search | `policy` | no |
//! | [`rate_limit::RateLimitLayer`] | quotas per client, IP or model (memory or Redis) | `rate-limit` | no |
//! | [`stream_resume::StreamResumeLayer`] | resumes a cut-off stream so the client sees one answer | `stream-resume` | no |
//! | [`key_rotation::KeyRotationLayer`] | a pool of upstream keys: cool-downs, disabling, retries | `key-rotation` | no |
//! | [`usage::UsageLayer`] | one record per request (client, key, model, tokens) to sinks, stats | `usage` | no |
//! | [`live::LiveProxy`] | the Live API's WebSocket, relayed frame by frame on one pool key per session | `live` | no |
//! | [`gateway::Gateway`] | all of the above, stacked in the one order that works | `request-id` + `bearer-auth` | yes |
//!
//! More features: `redis` (shared limits, key state, pins and admin changes for many instances,
//! on one Redis, over TLS or on a Redis Cluster: `RedisConfig`), `client` (a pooled
//! hyper client with rustls, the leaf of a gateway), `metrics` (a Prometheus sink for usage),
//! `persist` and `sqlite` (admin changes across restarts, a request log), `testing`
//! ([`testing::FakeGemini`], a faithful fake upstream with fault injection), `full` (all).
//! Every feature builds alone.
//!
//! Always there: [`facts`] (what layers know about a request), [`credential`] (where a
//! credential hides and how it is stripped), [`error`] (one error type, JSON errors in each
//! dialect), [`body`], [`sse`], [`gemini`] (wire types), [`tokens`] (token counts and the one
//! scanner that reads them from answers) and [`secret`] (masked keys).
//!
//! # The order, and why
//!
//! ```text
//! Facts ─► RequestId ─► AccessLog ─► Usage ─► BearerAuth ─► BodyLimit ─► OpenAiToGemini ─► AnthropicToGemini ─► RequestPolicy
//!   ─► RateLimit ─► StreamResume ─► KeyRotation ─► HTTP client ─► Gemini
//! ```
//!
//! - Facts first: every later layer reads the request's [`facts`] and reports into its
//!   [`facts::Report`]; usage and the access log read that report when the answer comes back.
//! - RequestId before everything that can refuse, so every answer, a 401 included, has an id.
//! - BearerAuth before anything that spends money, and it strips the client's credential.
//! - The OpenAI and Anthropic fronts before the policy: inside them everything speaks Gemini,
//!   and the policy resolves an alias once for every dialect (the facts carry the resolved
//!   model down).
//! - RateLimit after the policy (it counts the real model) and before any upstream key is spent.
//! - StreamResume above KeyRotation, so a resumed stream may continue on another key.
//!
//! [`gateway::Gateway::builder`] stacks them in this order; use it unless you need another.
//!
//! # Mount the gateway in an axum app
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use axum::{Router, routing::get};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_gemini::{Body, auth::MemoryTokenStore, gateway::Gateway, secret::ApiKey};
//! use tower_gemini::{client::UpstreamClient, testing::FakeGemini};
//!
//! // A fake Gemini on a loopback port stands in for Google here.
//! let fake = FakeGemini::start(["AIzaSyFake-upstream-key-000000000000001"]).await.unwrap();
//! let gateway = Gateway::builder()
//!     .tokens(MemoryTokenStore::new().with_token("client-token-0001", "alice"))
//!     .upstream_key(ApiKey::new("AIzaSyFake-upstream-key-000000000000001"))
//!     .build(UpstreamClient::new(fake.url()).unwrap());
//!
//! // Your own routes, with the gateway behind everything else.
//! let app = Router::new()
//!     .route("/hello", get(|| async { "hi" }))
//!     .fallback_service(gateway);
//!
//! let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .header("x-goog-api-key", "client-token-0001")
//!     .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
//!     .unwrap();
//! let res = app.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! // The client's token went nowhere; the upstream key did.
//! assert_eq!(fake.last_received().unwrap().api_key().as_deref(), Some("AIzaSyFake-upstream-key-000000000000001"));
//!
//! let res = app.oneshot(Request::get("/hello").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! # });
//! ```
//!
//! # Key rotation around a client, no proxy in between
//!
//! Any `Service<http::Request<Body>>` can be the leaf: the crate's [`client::UpstreamClient`], or
//! reqwest behind a small adapter (`examples/client.rs` has one).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, BoxError, key_rotation::{KeyPool, KeyRotationLayer}};
//! use tower_gemini::testing::{FakeGemini, KeyBehavior};
//!
//! let (tired, good) = ("AIzaSyTired-key-000000000000000000001", "AIzaSyGood-key-0000000000000000000002");
//! let fake = FakeGemini::start([tired, good]).await.unwrap();
//! fake.set_key(tired, KeyBehavior::exhausted(Duration::from_secs(60)));
//!
//! // reqwest as a tower service.
//! let http = reqwest::Client::new();
//! let base = fake.url();
//! let reqwest_service = service_fn(move |req: Request<Body>| {
//!     let (http, base) = (http.clone(), base.clone());
//!     async move {
//!         let (parts, body) = req.into_parts();
//!         let body = tower_gemini::body::collect_limited(body, 1 << 20).await?;
//!         let url = format!("{base}{}", parts.uri.path_and_query().unwrap());
//!         let res = http.request(parts.method, url).headers(parts.headers).body(body).send().await?;
//!         Ok::<_, BoxError>(http::Response::from(res).map(Body::new))
//!     }
//! });
//!
//! let pool = KeyPool::builder().keys([tired, good]).build().unwrap();
//! let gemini = ServiceBuilder::new()
//!     .layer(KeyRotationLayer::new(pool.clone()))
//!     .service(reqwest_service);
//! let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
//!     .unwrap();
//! let res = gemini.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK); // the tired key answered 429; the good one served
//! assert_eq!(pool.snapshot().iter().filter(|k| !k.cooling.is_empty()).count(), 1);
//! # });
//! ```
//!
//! # The full gateway
//!
//! `examples/full_proxy` reads its configuration from the environment, builds a
//! [`gateway::Gateway`] with every layer, mounts it in axum next to its admin API and page, and
//! serves it: README.md has its variables and routes.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[macro_use]
mod macros;

pub mod access_log;
#[cfg(feature = "accounts")]
#[cfg_attr(docsrs, doc(cfg(feature = "accounts")))]
pub mod accounts;
#[cfg(feature = "affinity")]
#[cfg_attr(docsrs, doc(cfg(feature = "affinity")))]
pub mod affinity;
#[cfg(feature = "anthropic")]
#[cfg_attr(docsrs, doc(cfg(feature = "anthropic")))]
pub mod anthropic;
#[cfg(any(feature = "openai", feature = "anthropic", feature = "testing"))]
mod base64;
pub mod body;
pub mod credential;
pub mod error;
pub mod facts;
pub mod gemini;
#[cfg(feature = "key-rotation")]
#[cfg_attr(docsrs, doc(cfg(feature = "key-rotation")))]
pub mod key_rotation;
pub mod secret;
pub mod sse;
pub mod tokens;

#[cfg(feature = "bearer-auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "bearer-auth")))]
pub mod auth;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
#[cfg(all(feature = "request-id", feature = "bearer-auth"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "request-id", feature = "bearer-auth"))))]
pub mod gateway;
#[cfg(feature = "live")]
#[cfg_attr(docsrs, doc(cfg(feature = "live")))]
pub mod live;
#[cfg(feature = "openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "openai")))]
pub mod openai;
#[cfg(feature = "persist")]
#[cfg_attr(docsrs, doc(cfg(feature = "persist")))]
pub mod persist;
#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod policy;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
#[cfg(all(
    feature = "redis",
    any(
        feature = "key-rotation",
        feature = "persist",
        feature = "rate-limit",
        feature = "affinity",
        feature = "openai",
        feature = "accounts"
    )
))]
mod redis_util;
#[cfg(all(
    feature = "redis",
    any(
        feature = "key-rotation",
        feature = "persist",
        feature = "rate-limit",
        feature = "affinity",
        feature = "openai",
        feature = "accounts"
    )
))]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_util::{RedisConfig, RedisConnection};
#[cfg(feature = "request-id")]
#[cfg_attr(docsrs, doc(cfg(feature = "request-id")))]
pub mod request_id;
#[allow(dead_code)] // each function is used by some features only
mod rfc3339;
#[cfg(any(feature = "client", feature = "live"))]
mod tls;
#[cfg(any(feature = "openai", feature = "anthropic"))]
mod translate;

#[cfg(feature = "stream-resume")]
#[cfg_attr(docsrs, doc(cfg(feature = "stream-resume")))]
pub mod stream_resume;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "usage")]
#[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
pub mod usage;

pub use body::{Body, BoxError};
pub use error::{ApiError, Dialect, Error};
