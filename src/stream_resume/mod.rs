//! Repair cut-off Gemini streams so the client sees one seamless answer.
//!
//! Gemini streams are often cut short: the connection drops, the stream ends with no
//! finishReason, it stalls, it ends with finishReason `OTHER` in mid-sentence, or an error
//! event arrives inside it. [`StreamResumeLayer`] sits in front of anything that answers
//! `:streamGenerateContent` (SSE or streamed JSON array) and relays every event as it arrives,
//! keeping only what a continuation needs: the visible text sent so far, whether a function
//! call went out, and the usage so far.
//!
//! When a stream breaks, it re-issues the original request with the answer so far appended as
//! a `model` turn and a short `user` turn asking to continue (system instruction, tools and
//! generation config unchanged), waits `retry_delay` between attempts, and splices the
//! continuation in: a repeated tail at the seam is dropped, thoughts of continuations are
//! swallowed (by default), and the client gets exactly one final finishReason with usage
//! summed over every attempt. A cut before any event is a plain retry. After
//! `max_consecutive_retries` attempts without progress, or `max_resume_attempts` resumes in
//! all, the client gets an explicit error event (a Gemini error object), never a silent
//! truncation and never a `STOP`.
//!
//! A normal `STOP`, `MAX_TOKENS`, `SAFETY`-like blocks and function calls are never resumed.
//!
//! # Faults are not interruptions
//! An event larger than the cap on one event (the request's
//! [`MaxEventBytes`](crate::sse::MaxEventBytes)), a stream that is not framed as its format
//! says, or an event that is not a Gemini response is a fault, not a cut: asking again would
//! meet it again and pay for the answer again (an image model bills each image). The stream
//! ends at once with an error event, logged with `warn!`, and the upstream is not called
//! again. A stream that broke after an image went out is not resumed either: the
//! continuation would generate another one.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gemini::{Body, body::collect_limited, client::UpstreamClient};
//! use tower_gemini::stream_resume::StreamResumeLayer;
//! use tower_gemini::testing::{FakeGemini, Fault};
//!
//! let fake = FakeGemini::start(["k"]).await.unwrap();
//! fake.push_fault(Fault::DropAfter(3)); // the first attempt breaks after 3 chunks
//! let svc = ServiceBuilder::new()
//!     .layer(StreamResumeLayer::new().retry_delay(Duration::ZERO))
//!     .service(UpstreamClient::new(fake.url()).unwrap());
//! let req = http::Request::post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
//!     .header("x-goog-api-key", "k")
//!     .body(Body::from(r#"{"contents":[{"role":"user","parts":[{"text":"rivers"}]}]}"#))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
//! let text: String = String::from_utf8_lossy(&body)
//!     .split("\r\n\r\n")
//!     .filter_map(|e| e.strip_prefix("data: "))
//!     .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
//!     .filter_map(|v| v["candidates"][0]["content"]["parts"][0]["text"].as_str().map(str::to_owned))
//!     .collect();
//! assert_eq!(text, FakeGemini::passage("rivers"));
//! # });
//! ```
//!
//! # Ordering
//! Below `OpenAiToGemini` (so OpenAI streams are repaired too) and above key rotation (so a
//! continuation may use another key). Request bodies must be buffered (`BodyLimitLayer`): an
//! unbuffered body passes through without resume.

mod layer;
mod relay;
mod seam;

pub use layer::{DEFAULT_MAX_RESUME_ATTEMPTS, ResponseFuture, StreamResume, StreamResumeLayer};
