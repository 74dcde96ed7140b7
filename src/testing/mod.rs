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
//!
//! # HTTP/2 over TLS
//! With [`FakeGeminiBuilder::tls`] the fake serves TLS on a certificate the test makes,
//! offering `h2` and `http/1.1` by ALPN as Google does, so the production path (rustls,
//! HTTP/2) is what a test drives. [`ReceivedRequest::version`] and
//! [`ReceivedRequest::connection`] tell how each request came;
//! [`FakeGeminiBuilder::max_concurrent_streams`], [`FakeGemini::goaway`],
//! [`Fault::ResetStream`] and [`Fault::ResetAfter`] script what an HTTP/2 server does to its
//! clients, and [`FakeGemini::cancelled_streams`] counts answers the client abandoned.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tower::ServiceExt;
//! use tower_gemini::{Body, client::UpstreamClient, testing::FakeGemini};
//!
//! // A certificate for 127.0.0.1, made here (rcgen), that the client is told to trust.
//! let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
//! let cert = made.cert.der().to_vec();
//! let fake = FakeGemini::builder()
//!     .keys(["key-1"])
//!     .tls(cert.clone(), made.signing_key.serialize_der())
//!     .start()
//!     .await
//!     .unwrap();
//! assert!(fake.url().starts_with("https://"));
//! let client = UpstreamClient::builder()
//!     .base_url(fake.url())
//!     .add_root_certificate(cert)
//!     .build()
//!     .unwrap();
//! let req = http::Request::get("/v1beta/models")
//!     .header("x-goog-api-key", "key-1")
//!     .body(Body::empty())
//!     .unwrap();
//! assert_eq!(client.oneshot(req).await.unwrap().status(), 200);
//! assert_eq!(fake.last_received().unwrap().version, http::Version::HTTP_2);
//! # });
//! ```

mod fake;
mod passage;

pub use fake::{FakeGemini, FakeGeminiBuilder, Fault, KeyBehavior, ReceivedRequest};
