//! Usage accounting: who used which key and model, with what result and how many tokens.
//!
//! [`UsageLayer`] records each request it sees as a [`UsageRecord`] (client, upstream key id,
//! model, route, status, latency, prompt/output/thought/cached tokens, resumes, upstream
//! attempts) and hands it to its [`UsageSink`]s once the response body has ended.
//! [`UsageStats`] is the in-memory sink behind `/admin/stats`: per model, key and client over
//! the last minute, hour and day; [`UsageSeries`] the sink behind `/admin/timeseries`: requests,
//! errors and tokens per minute over the last hour and per hour over the last day, per key and
//! per account. With the `metrics` feature, `MetricsSink` feeds the same
//! records to Prometheus.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::Body;
//! use tower_gemini::usage::{UsageLayer, UsageStats};
//!
//! let upstream = service_fn(|_req: Request<Body>| async {
//!     let answer = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":7,"totalTokenCount":12}}"#;
//!     Ok::<_, std::convert::Infallible>(Response::new(Body::from(answer)))
//! });
//! let stats = Arc::new(UsageStats::new());
//! let svc = ServiceBuilder::new()
//!     .layer(UsageLayer::new(stats.clone()))
//!     .service(upstream);
//!
//! let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .body(Body::from("{}"))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//!
//! let json = stats.to_json();
//! assert_eq!(json["models"]["gemini-2.5-flash"]["minute"]["requests"], 1);
//! assert_eq!(json["models"]["gemini-2.5-flash"]["minute"]["tokens"], 12);
//! # });
//! ```
//!
//! # Where it goes
//! Put it before authentication and everything else that can answer on its own (body limit,
//! OpenAI translation, rate limits, key rotation), so every answer, a 401 included, is counted
//! exactly once; `BearerAuth` reports the client's [`Identity`](crate::facts::Identity) to it
//! (an `Identity` already in the request's extensions is used too).
//! `Gateway::builder().usage(layer)` puts it there.
//!
//! The layer reads the request's [`Report`](crate::facts::Report) (and puts one in when no
//! [`FactsLayer`](crate::facts::FactsLayer) above did). Deeper layers write to it whatever
//! features are on: `KeyRotation` the key of each upstream call, `StreamResume` each resume,
//! `RateLimit` a refusal, `BearerAuth` the client, the OpenAI front and the request policy the
//! model the request really goes to. A second `UsageLayer` deeper in the stack (for instance
//! [`UsageLayer::tap`] under the OpenAI translation) finds the report taken and only reports
//! the Gemini token counts to it, which win over what the outer layer reads from the
//! translated answer.
//!
//! # Tokens
//! Token counts are read as the answer passes, with a
//! [`TokenScanner`](crate::tokens::TokenScanner): nothing is buffered, a stream's last
//! `usageMetadata` wins. Gemini's `usageMetadata` and OpenAI's `usage` are both understood;
//! an OpenAI stream without `stream_options.include_usage` carries no usage, so only a tap
//! under the translation can count it.
//!
//! # Secrets
//! A record holds no secret: the key is its id (a fingerprint), the client its name and
//! masked token.

mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod record;
mod series;
mod stats;

pub use layer::{ResponseFuture, Usage, UsageLayer};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::MetricsSink;
pub use record::{Client, MAX_ERROR_CHARS, Tokens, UsageRecord, UsageSink};
pub use series::{Named, Point, SeriesView, Span, UsageSeries};
pub use stats::{Dimension, OTHER, Totals, UsageStats, Window};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
