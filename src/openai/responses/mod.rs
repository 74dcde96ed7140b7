//! OpenAI's Responses API over a Gemini service: `POST /v1/responses` (streamed or not),
//! `GET /v1/responses/{id}` (and `/input_items`), `DELETE /v1/responses/{id}`, served by
//! [`OpenAiToGeminiLayer`](super::OpenAiToGeminiLayer) beside chat completions.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, body::collect_limited, openai::OpenAiToGeminiLayer};
//!
//! // A Gemini-speaking inner service.
//! let gemini = service_fn(|req: Request<Body>| async move {
//!     assert_eq!(req.uri().path(), "/v1beta/models/gemini-2.5-flash:generateContent");
//!     let answer = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi!"}]},
//!                      "finishReason":"STOP"}]}"#;
//!     Ok::<_, std::convert::Infallible>(Response::new(Body::from(answer)))
//! });
//! let svc = ServiceBuilder::new().layer(OpenAiToGeminiLayer::new()).service(gemini);
//!
//! let req = Request::post("/v1/responses")
//!     .body(Body::from(r#"{"model":"gemini-2.5-flash","input":"Hello"}"#))
//!     .unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
//! let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(v["status"], "completed");
//! assert_eq!(v["output"][0]["content"][0]["text"], "Hi!");
//!
//! // Stored (`store` defaults to true; clones share the store): it can be read back.
//! let id = v["id"].as_str().unwrap();
//! let req = Request::get(format!("/v1/responses/{id}")).body(Body::empty()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # });
//! ```
//!
//! # Requests
//! `input` is a string (one user message) or a list of items: messages (`input_text`,
//! `input_image`, `input_file`, `input_audio` parts; `output_text` on assistant turns),
//! `function_call` and `function_call_output` items, and `reasoning` items whose
//! `encrypted_content` carries a thought signature back to the function call after it.
//! `instructions` become the system instruction (of this request only, as on OpenAI); items
//! go through the chat front's translation, so media, JSON schema cleaning, thought
//! signatures and `reasoning.effort` (as `reasoning_effort`) work the same. Function tools
//! are flat (`{"type":"function","name","parameters"}`); a `namespace` tool's functions are
//! declared as `{namespace}__{name}` and a `custom` (free-text) tool as a function of one
//! `input` string, both answered under the client's names (`namespace` on the call,
//! `custom_tool_call` items); `web_search` (and `web_search_preview`) is Gemini's
//! `googleSearch` tool (left out beside function tools before Gemini 3, which refuses the
//! mix, and with `external_web_access: false`). `text.format` `json_object` / `json_schema` is
//! a JSON answer, `max_output_tokens` the output cap. An `image_generation_call` item sent
//! back is the model's own image again.
//!
//! # Answers
//! Output items in Gemini's order: `reasoning` (thought text as its summary; the thought
//! signature in `encrypted_content`), `message` with one `output_text` (`url_citation`
//! annotations from Google Search grounding), `function_call` (the thought signature also in
//! the `call_id`, `call_<id>__thought__<sig>`, which survives every client and is read back),
//! `image_generation_call` for a generated image (base64 in `result`).
//! `status` is `completed`, or `incomplete` with `incomplete_details.reason`
//! `max_output_tokens` / `content_filter`; usage counts reasoning and cached tokens. A stream
//! is OpenAI's typed events with `sequence_number` from 0: `response.created`,
//! `response.in_progress`, per item `response.output_item.added` …
//! `response.output_item.done` (text: `content_part.added`, `output_text.delta`,
//! `output_text.done`, `content_part.done`; calls: `function_call_arguments.delta`/`.done`;
//! reasoning: `reasoning_summary_part.added`, `reasoning_summary_text.delta`/`.done`,
//! `reasoning_summary_part.done`), then `response.completed` (or `response.incomplete`) with
//! the whole response and usage; an error is `response.failed`.
//!
//! # State
//! With `store` (default `true`) the response, the conversation it continued and its owner
//! (the [`Identity`](crate::facts::Identity) of the client) go to a [`ResponseStore`]:
//! [`MemoryResponseStore`] by default, [`ResponseSqliteStore`] (feature `sqlite`) or
//! [`ResponseRedisStore`] (feature `redis`) so any instance continues any response. A
//! request with `previous_response_id` starts from that response's input and output; an
//! unknown id, an expired one or another client's is a 404. Kept state on the gateway rather
//! than Google's Interactions API: it works with every key of the pool, every model and
//! every instance, and a key rotated away never strands a conversation.

mod handler;
mod output;
mod request;
mod store;
mod types;

#[cfg(all(feature = "redis", feature = "openai"))]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(test)]
mod tests;

pub(crate) use handler::Keeping;
#[cfg(all(feature = "redis", feature = "openai"))]
pub use redis::ResponseRedisStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{DEFAULT_SQLITE_CAPACITY, ResponseSqliteStore};
pub use store::{
    DEFAULT_MEMORY_BYTES, DEFAULT_MEMORY_CAPACITY, MemoryResponseStore, ResponseStore, StoreFuture,
    StoredResponse,
};
pub use types::CreateResponse;

/// The largest conversation (history and answer, as JSON) one stored response keeps by
/// default: 32 MiB.
pub const DEFAULT_MAX_STORED_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How long a stored response is kept by default: 30 days, as on OpenAI.
pub const DEFAULT_RESPONSE_TTL: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);
