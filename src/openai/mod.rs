//! An OpenAI-compatible front for a Gemini service: chat completions (streamed or not), models,
//! embeddings and image generation.
//!
//! [`OpenAiToGeminiLayer`] owns five routes and lets every other request through untouched, so
//! native Gemini routes keep working behind it:
//!
//! | OpenAI route | inner Gemini request |
//! |---|---|
//! | `POST /v1/chat/completions` | `POST /v1beta/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse` with `stream: true` |
//! | `GET /v1/models` | `GET /v1beta/models?pageSize=1000&pageToken=…`, every page |
//! | `GET /v1/models/{id}` | `GET /v1beta/models/{id}` |
//! | `POST /v1/embeddings` | `POST /v1beta/models/{model}:batchEmbedContents` |
//! | `POST /v1/responses` | like chat completions; `GET`/`DELETE /v1/responses/{id}` read the [`responses`] store |
//! | `POST /v1/images/generations` | `POST /v1beta/models/{model}:generateContent` with `responseModalities: ["IMAGE"]`, once per image (`n`); answers `{"created","data":[{"b64_json"}],"usage"}` (`response_format: url` is refused: nothing hosts the image) |
//!
//! The inner request carries the original request's extensions and headers (except client
//! credentials such as `Authorization`, and headers describing the old body), a parsed
//! [`GeminiPath`](crate::gemini::GeminiPath) extension and [`Dialect::Gemini`](crate::Dialect),
//! so deeper layers answer in Gemini's shape; this layer turns every error answer (upstream
//! ones and the 429/503 of deeper layers) into OpenAI's
//! `{"error":{"message","type","param","code"}}` with the same status and `Retry-After`.
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
//! let req = Request::post("/v1/chat/completions")
//!     .body(Body::from(r#"{"model":"gemini-2.5-flash",
//!                          "messages":[{"role":"user","content":"Hello"}]}"#))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
//! let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(v["object"], "chat.completion");
//! assert_eq!(v["choices"][0]["message"]["content"], "Hi!");
//! assert_eq!(v["choices"][0]["finish_reason"], "stop");
//! # });
//! ```
//!
//! # Requests
//! `system`/`developer` messages become `systemInstruction`; `user` → `user`; `assistant` →
//! `model` (text and `tool_calls` as `functionCall` parts); `tool` → `functionResponse` named
//! after the call its `tool_call_id` answers; consecutive turns of one role are merged.
//! Content parts: `text`, `image_url` (data URLs → `inlineData`, http(s) URLs → `fileData`),
//! `input_audio`, `file`. Sampling fields map one to one (`n` → `candidateCount`,
//! `max_completion_tokens`/`max_tokens` → `maxOutputTokens`, `stop` → `stopSequences`,
//! `logprobs`/`top_logprobs`, `seed`, penalties); `response_format` `json_object` → JSON MIME
//! type, `json_schema` → `responseJsonSchema` cleaned of the keywords Gemini rejects; `tools` →
//! `parametersJsonSchema`; `tool_choice` → `functionCallingConfig`; `reasoning_effort` →
//! `thinkingConfig` ([`ReasoningBudgets`]), overridden by an explicit `thinking_config`
//! (top level, `extra_body.google` or `google`). Unknown fields are ignored; what cannot be
//! expressed for Gemini is a 400 that says why.
//!
//! # Answers
//! Thought parts go to `reasoning_content`, never `content`; generated code and its results
//! reach `content` as fenced markdown blocks (`` ```python `` / `` ```output ``); function calls
//! become `tool_calls` with unique ids and JSON-string arguments. Generated images (inline
//! data with an image MIME type) go to `message.images` (streamed: `delta.images`, each image
//! whole in one chunk) as `{"type":"image_url","image_url":{"url":"data:image/png;base64,..."}}`,
//! the shape OpenRouter and LiteLLM use, never into `content`; an assistant turn's `images`
//! sent back go upstream as its inline data. A call's thought signature
//! travels in `extra_content.google.thought_signature` and, by default, in the id
//! (`call_<id>__thought__<sig>`), and both are read back, so tool conversations with thinking
//! models keep working through clients that drop unknown fields. A blocked prompt is
//! `content_filter` with a `refusal`; a malformed call, an upstream error event or a stream
//! that ends without a finish reason is an error (an OpenAI error event in streams, after
//! what already arrived), never a clean `stop`.
//!
//! # Ordering
//! Put it after authentication and request ids and before rate limits, key rotation and
//! stream resume: everything below it speaks Gemini.

mod layer;
mod request;
mod response;
pub mod responses;
mod stream;
pub mod types;

#[cfg(test)]
mod tests;

pub use layer::{DEFAULT_MAX_RESPONSE_BYTES, OpenAiToGemini, OpenAiToGeminiLayer, ResponseFuture};
pub use request::{ReasoningBudgets, TranslateOptions, to_gemini_request};
pub use response::{ChatContext, to_chat_completion};
pub use stream::StreamTranslator;
pub use types::{ChatCompletion, ChatCompletionRequest};
