//! FakeGemini: a faithful fake of the Gemini REST API on a loopback socket, with fault injection.
//!
//! It answers like the real API on the wire: key checks (`API_KEY_INVALID`, `RESOURCE_EXHAUSTED`
//! with `RetryInfo` and `QuotaFailure`, `PERMISSION_DENIED`; switchable per key and per model at
//! run time), the models list with paging, `generateContent`, `streamGenerateContent` (SSE with
//! `alt=sse`, a streamed JSON array without), `countTokens`, `embedContent`,
//! `batchEmbedContents`, the Live API's WebSocket (`setup`, text and audio turns, `usageMetadata`),
//! usage metadata, Google Search grounding (`groundingMetadata` on the
//! answer when the request has the `googleSearch` tool), code execution (`executableCode` and
//! `codeExecutionResult` parts before the text with the `codeExecution` tool), generated images of
//! any size (a model whose name holds `image` answers an `inlineData` PNG of
//! [`FakeGeminiBuilder::image_bytes`], streamed as one event; see [`FakeGemini::image`]), per-key
//! request counters and a log of what it received.
//!
//! Answers are deterministic: [`FakeGemini::passage`] is the text for a prompt, so tests compare
//! what a client received character for character. A request that continues a partial answer
//! (`[user(prompt), model(partial), user(continue)]`) gets the rest of the passage, which is how
//! a resuming gateway is checked end to end. [`Fault`]s script what goes wrong next.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tower::ServiceExt;
//! use tower_gemini::{Body, body::collect_limited, client::UpstreamClient, testing::FakeGemini};
//!
//! let fake = FakeGemini::start(["key-1"]).await.unwrap();
//! let client = UpstreamClient::new(fake.url()).unwrap();
//! let req = http::Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .header("x-goog-api-key", "key-1")
//!     .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
//!     .unwrap();
//! let res = client.oneshot(req).await.unwrap();
//! let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
//! let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], FakeGemini::passage("hi"));
//! assert_eq!(fake.requests_for("key-1"), 1);
//! # });
//! ```

mod fake;
mod passage;

pub use fake::{FakeGemini, FakeGeminiBuilder, Fault, KeyBehavior, ReceivedRequest};
