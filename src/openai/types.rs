//! OpenAI wire types of chat completions: the request ([`ChatCompletionRequest`]) and the
//! answer ([`ChatCompletion`]) the translation functions take and return. Requests are parsed
//! leniently (unknown fields ignored, strings or parts for content); answers are serialized
//! exactly as OpenAI's SDKs expect.
//!
//! # Example
//! ```
//! use tower_gemini::openai::types::{ChatCompletionRequest, MessageContent};
//!
//! let req: ChatCompletionRequest = serde_json::from_str(r#"{
//!     "model": "models/gemini-2.5-flash", "stream": true, "some_new_field": 1,
//!     "stream_options": {"include_usage": true},
//!     "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
//! }"#).unwrap();
//! assert!(req.is_stream() && req.include_usage());
//! assert!(matches!(req.messages[0].content, Some(MessageContent::Parts(_))));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

// === Chat completion request ===

/// `POST /v1/chat/completions` request body.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatCompletionRequest {
    /// Model id, with or without a `models/` prefix.
    pub model: String,
    /// The conversation.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Legacy output cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output cap (reasoning included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Stop sequences: a string or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Whether to return log probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// How many top log probabilities per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// `{"type":"text"|"json_object"|"json_schema", "json_schema": {...}}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Function tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"auto" | "none" | "required" | {"type":"function","function":{"name":..}}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `none | minimal | low | medium | high`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Stream `chat.completion.chunk` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// `{"include_usage": true}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// End-user id (not forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `{"thinking_budget": n, "include_thoughts": b}` at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<Value>,
    /// `{"google": {"thinking_config": {...}}}` as Google's compatibility docs send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_body: Option<Value>,
    /// `{"thinking_config": {...}, ...}` (an `extra_body` already merged by the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google: Option<Value>,
}

impl ChatCompletionRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the last stream chunk should carry usage.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// Stop sequences: one string or a list.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several sequences.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct StreamOptions {
    /// Send a last chunk with `choices: []` and `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// `response_format`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The schema for `json_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct JsonSchemaFormat {
    /// Schema name.
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Strict mode (no Gemini equivalent; dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A function tool.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function.
    #[serde(default)]
    pub function: FunctionDef,
}

fn function_type() -> String {
    "function".to_owned()
}

/// A function declaration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Strict mode (dropped for Gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A message of the conversation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant`, `tool` (or legacy `function`).
    pub role: String,
    /// A string, a list of parts, or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Participant or function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Calls made by an assistant turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `tool` messages: the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Reasoning text a client echoes back (dropped upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Images an assistant turn generated, echoed back (sent upstream as the model turn's
    /// inline data, so the model can edit them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageOutput>>,
}

/// Message content: a string or a list of parts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// A content part. Kept as a flat struct so unknown part types never fail parsing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ContentPart {
    /// `text`, `image_url`, `input_audio`, `file`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// For `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For `image_url`: `{"url": ..., "detail": ...}` (or a bare string from lax clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<Value>,
    /// For `input_audio`: `{"data": base64, "format": "wav"|"mp3"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_audio: Option<Value>,
    /// For `file`: `{"file_data": data-url or base64, "file_id", "filename"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Value>,
}

/// A tool call of an assistant message (and of a response).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ToolCall {
    /// Call id.
    #[serde(default)]
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The call.
    #[serde(default)]
    pub function: FunctionCall,
    /// Google's carrier for thought signatures:
    /// `{"google": {"thought_signature": "..."}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_content: Option<Value>,
}

/// A function call: name and JSON-encoded arguments.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FunctionCall {
    /// Function name.
    #[serde(default)]
    pub name: String,
    /// Arguments as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

// === Chat completion response ===

/// `chat.completion`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatCompletion {
    /// Completion id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model id.
    pub model: String,
    /// Choices.
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A choice of a `chat.completion`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Choice {
    /// Index.
    pub index: u32,
    /// The message.
    pub message: ResponseMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: Option<String>,
    /// Log probabilities (passed through when present).
    pub logprobs: Option<Value>,
}

/// The assistant message of a choice.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// Visible text (null when there is none).
    pub content: Option<String>,
    /// Thought text, kept out of `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Refusal text (always null here; OpenAI SDKs read it).
    pub refusal: Option<String>,
    /// Generated images, as OpenRouter and LiteLLM send them (never pasted into `content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageOutput>>,
}

/// A generated image on an assistant message (`images`) or a stream delta, in the shape
/// OpenRouter and LiteLLM use: `{"type": "image_url", "image_url": {"url":
/// "data:image/png;base64,..."}}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ImageOutput {
    /// Always `image_url`.
    #[serde(rename = "type", default = "image_url_type")]
    pub kind: String,
    /// The image as a data URL.
    pub image_url: ImageUrl,
}

fn image_url_type() -> String {
    "image_url".to_owned()
}

impl ImageOutput {
    /// An image of this MIME type from its base64 bytes, as a data URL.
    pub fn from_base64(mime_type: &str, data: &str) -> Self {
        let mut url = String::with_capacity(mime_type.len() + data.len() + 13);
        url.push_str("data:");
        url.push_str(mime_type);
        url.push_str(";base64,");
        url.push_str(data);
        Self {
            kind: image_url_type(),
            image_url: ImageUrl { url },
        }
    }
}

/// `{"url": ...}`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ImageUrl {
    /// A data URL (`data:image/png;base64,...`) or an http(s) URL.
    pub url: String,
}

/// Token usage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Output tokens, reasoning included.
    pub completion_tokens: u64,
    /// Total.
    pub total_tokens: u64,
    /// `{"cached_tokens": n}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// `{"reasoning_tokens": n}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// `usage.prompt_tokens_details`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PromptTokensDetails {
    /// Tokens read from the context cache.
    pub cached_tokens: u64,
}

/// `usage.completion_tokens_details`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CompletionTokensDetails {
    /// Thinking tokens.
    pub reasoning_tokens: u64,
}

// === Chunks ===

/// A tool call delta.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct ToolCallDelta {
    /// Position of the call in the message.
    pub index: u32,
    /// Call id (first delta of a call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first delta of a call).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument fragments.
    pub function: FunctionCallDelta,
    /// Google's thought-signature carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_content: Option<Value>,
}

/// Function name and arguments fragment.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct FunctionCallDelta {
    /// Name (first delta of a call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Arguments fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

// === Models ===

/// `GET /v1/models`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<Model>,
}

/// A model.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct Model {
    /// Model id (without `models/`).
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Owner.
    pub owned_by: String,
}

// === Embeddings ===

/// `POST /v1/embeddings`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub(crate) struct EmbeddingRequest {
    /// Model id.
    pub model: String,
    /// A string, a list of strings (token arrays are refused: Gemini takes text).
    pub input: EmbeddingInput,
    /// Output dimensionality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// End-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Embedding input.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// Anything else (token arrays): refused with a 400.
    Other(Value),
}

/// `POST /v1/embeddings` response.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    /// One embedding per input.
    pub data: Vec<Embedding>,
    /// Model id.
    pub model: String,
    /// Usage.
    pub usage: EmbeddingUsage,
}

/// One embedding.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Index of the input.
    pub index: u32,
    /// Floats, or a base64 string of little-endian f32 with `encoding_format: base64`.
    pub embedding: Value,
}

/// Embedding usage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct EmbeddingUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

// === Images ===

/// `POST /v1/images/generations` request. Only `b64_json` answers are made (the gateway hosts
/// no image for a `url` to point at).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ImageGenerationRequest {
    /// A Gemini image model, e.g. `gemini-2.5-flash-image` (required: there is no default).
    #[serde(default)]
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Images to make, 1 to 10 (default 1): one `generateContent` call each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `b64_json` (the default here); `url` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// `WIDTHxHEIGHT` or `auto`: the nearest aspect ratio Gemini offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// End-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `POST /v1/images/generations` response.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ImagesResponse {
    /// Unix seconds.
    pub created: u64,
    /// The images.
    pub data: Vec<ImageData>,
    /// Tokens of every call, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ImagesUsage>,
}

/// One generated image.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ImageData {
    /// The image bytes, base64-encoded.
    pub b64_json: String,
    /// Text the model wrote along with the image, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

/// Token usage of an images answer (as OpenAI's `gpt-image-1` reports it).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ImagesUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Image (and text) tokens produced.
    pub output_tokens: u64,
    /// Total.
    pub total_tokens: u64,
}
