//! An Anthropic Messages API front for a Gemini service: what Claude Code and the Anthropic
//! SDKs speak, served by Gemini models.
//!
//! [`AnthropicToGeminiLayer`] owns these routes and lets every other request through untouched:
//!
//! | Anthropic route | inner Gemini request |
//! |---|---|
//! | `POST /v1/messages` | `POST /v1beta/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse` with `stream: true` |
//! | `POST /v1/messages/count_tokens` | `POST /v1beta/models/{model}:countTokens` with the translated request as `generateContentRequest`: Gemini's own count, not an estimate |
//! | `GET /v1/models` with `anthropic-version` | every page of `GET /v1beta/models`, paged Anthropic's way (`limit`, `after_id`, `before_id`): `{"data":[{"type":"model","id","display_name","created_at"}],"has_more","first_id","last_id"}` |
//! | `GET /v1/models/{id}` with `anthropic-version` | `GET /v1beta/models/{id}` as one such model |
//!
//! `GET /v1/models` without the `anthropic-version` header every Anthropic client sends is
//! left to the OpenAI front (or Gemini's own `/v1` route), so the three fronts share the path.
//!
//! The inner request carries the original request's extensions and headers (except client
//! credentials such as `Authorization` and `x-api-key`, `anthropic-version`, and headers
//! describing the old body), a parsed [`GeminiPath`](crate::gemini::GeminiPath) fact and
//! [`Dialect::Gemini`](crate::Dialect), so deeper layers answer in Gemini's shape; this layer
//! turns every error answer (upstream ones and the 429/503 of deeper layers) into Anthropic's
//! `{"type":"error","error":{"type","message"}}` with the same status and `Retry-After`.
//! Errors of layers above it (a 401 from `BearerAuth`, a 413 from the body limit) are in that
//! shape too, because [`Dialect::of`](crate::Dialect::of) names `/v1/messages` Anthropic's.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, anthropic::AnthropicToGeminiLayer, body::collect_limited};
//!
//! // A Gemini-speaking inner service.
//! let gemini = service_fn(|req: Request<Body>| async move {
//!     assert_eq!(req.uri().path(), "/v1beta/models/gemini-2.5-flash:generateContent");
//!     let answer = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi!"}]},
//!                      "finishReason":"STOP"}],
//!                      "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#;
//!     Ok::<_, std::convert::Infallible>(Response::new(Body::from(answer)))
//! });
//! let svc = ServiceBuilder::new().layer(AnthropicToGeminiLayer::new()).service(gemini);
//!
//! let req = Request::post("/v1/messages")
//!     .header("anthropic-version", "2023-06-01")
//!     .body(Body::from(r#"{"model":"gemini-2.5-flash","max_tokens":100,
//!                          "messages":[{"role":"user","content":"Hello"}]}"#))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
//! let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(v["type"], "message");
//! assert_eq!(v["content"][0]["text"], "Hi!");
//! assert_eq!(v["stop_reason"], "end_turn");
//! assert_eq!(v["usage"]["input_tokens"], 3);
//! # });
//! ```
//!
//! # Requests
//! `system` (a string or text blocks) becomes `systemInstruction`; `user` → `user`,
//! `assistant` → `model`, consecutive turns of one role merged. Blocks: `text`; `image` and
//! `document` with a `base64` source (`inlineData`; PDFs too), a `url` source (`fileData`), a
//! `text` source (text) or a `file` source (`fileData`); `tool_use` → `functionCall`;
//! `tool_result` → `functionResponse` named after the call it answers (`{"result": ...}`, or
//! `{"error": ...}` with `is_error`; images in it follow as inline data). `tools` →
//! `functionDeclarations` with `input_schema` cleaned of what Gemini rejects (as the OpenAI
//! front does), `web_search_*` server tools → Google Search; `tool_choice` `auto`/`any`/`tool`/
//! `none` → `functionCallingConfig` `AUTO`/`ANY` (with the one name)/`NONE`
//! (`disable_parallel_tool_use` keeps only an answer's first call). `max_tokens`,
//! `temperature`, `top_p`, `top_k`, `stop_sequences` map one to one; `thinking` `enabled` with
//! `budget_tokens` → a thinking budget moved into the model's range, or the level for that
//! budget on models that take levels ([`ThinkingKind`](crate::gemini::ThinkingKind)), thoughts
//! shown; `disabled` → the model's least thinking, thoughts hidden; `adaptive` → dynamic.
//! `metadata` and unknown fields are ignored. The model name goes upstream as sent: a request
//! policy below resolves aliases (`claude-sonnet-4-5` → `gemini-2.5-pro`); a 404 for the name
//! itself says how to map it ([`AnthropicToGeminiLayer::unknown_model_hint`]).
//!
//! # Answers
//! Thought parts become a `thinking` block whose `signature` is Gemini's thought signature
//! (text signed with no thoughts shown gets a `thinking` block with only the signature, as
//! Anthropic's omitted thinking looks);
//! function calls become `tool_use` blocks whose ids carry the signature too
//! (`toolu_<id>__thought__<signature>`), and both are read back (a `thinking` block's
//! signature goes on the part after it), so a tool conversation with a thinking model keeps
//! working after a key rotation and through typed clients that drop unknown fields. Gemini 3
//! history without any signature gets Google's documented placeholder. `stop_reason`:
//! `end_turn`, `max_tokens`, `tool_use`, `refusal` (a blocked prompt or answer); Gemini does
//! not say which stop sequence ended an answer, so `stop_sequence` is never reported.
//! `usage`: `input_tokens` (prompt without cached tokens), `output_tokens` (answer and
//! thoughts), `cache_read_input_tokens` (Gemini's cached tokens).
//!
//! # Streams
//! `message_start`, then per block `content_block_start`, deltas (`text_delta`,
//! `thinking_delta`, `signature_delta`, `input_json_delta` pieces that concatenate to the call's
//! JSON arguments) and `content_block_stop`, one `ping` after the first block starts, then
//! `message_delta` with the stop reason and usage, and `message_stop`; see
//! [`MessageStreamTranslator`]. A stream cut before its finish reason, an upstream error event
//! or a malformed call ends with an `error` event after what already arrived. Stream resume
//! below this layer makes a cut Gemini stream one seamless Anthropic stream.
//!
//! # Ordering
//! Put it after authentication and request ids and before rate limits, key rotation and
//! stream resume: everything below it speaks Gemini.

mod layer;
mod request;
mod response;
mod stream;
pub mod types;

#[cfg(test)]
mod tests;

pub use layer::{
    AnthropicToGemini, AnthropicToGeminiLayer, DEFAULT_MAX_RESPONSE_BYTES, ResponseFuture,
};
pub use request::to_gemini_request;
pub use response::{MessageContext, to_message};
pub use stream::MessageStreamTranslator;
pub use types::MessagesRequest;
