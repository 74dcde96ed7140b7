//! Anthropic Messages API wire types: the request as clients send it.
//!
//! Only what the translation reads is typed; unknown fields (`cache_control`, `citations`,
//! `metadata`, `service_tier`, ...) are accepted and ignored.

use serde::Deserialize;
use serde_json::Value;

/// A `POST /v1/messages` (or `/v1/messages/count_tokens`) request body.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MessagesRequest {
    /// The model: a Gemini model id, or a name the policy below resolves (`MODEL_ALIASES`).
    #[serde(default)]
    pub model: String,
    /// The conversation, alternating `user` and `assistant` turns.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// The system prompt: a string or a list of text blocks.
    #[serde(default)]
    pub system: Option<MessageContent>,
    /// The most tokens to generate (`maxOutputTokens`).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: Option<u64>,
    /// Sequences that end the answer (`stopSequences`).
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    /// Whether the answer is streamed as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    /// How the model may use the tools: `{"type": "auto" | "any" | "tool" | "none"}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Extended thinking: `{"type": "enabled", "budget_tokens": N}`, `{"type": "disabled"}`
    /// (or `{"type": "adaptive"}`).
    #[serde(default)]
    pub thinking: Option<Value>,
    /// Accepted and ignored (Gemini has no per-request user id).
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl MessagesRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }
}

/// One turn of the conversation.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// A string or a list of content blocks.
    pub content: MessageContent,
}

/// Content: a plain string or a list of blocks.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// A string (one text block).
    Text(String),
    /// Content blocks.
    Blocks(Vec<ContentBlock>),
}

/// A content block of a request: `text`, `image`, `document`, `tool_use`, `tool_result`,
/// `thinking` or `redacted_thinking`. The fields a type does not use stay `None`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContentBlock {
    /// The block type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `text`: the text.
    #[serde(default)]
    pub text: Option<String>,
    /// `image` / `document`: where the data is (`base64`, `url`, `text`, `file`, `content`).
    #[serde(default)]
    pub source: Option<Value>,
    /// `tool_use`: the call id.
    #[serde(default)]
    pub id: Option<String>,
    /// `tool_use`: the tool name.
    #[serde(default)]
    pub name: Option<String>,
    /// `tool_use`: the arguments (a JSON object).
    #[serde(default)]
    pub input: Option<Value>,
    /// `tool_result`: the id of the `tool_use` it answers.
    #[serde(default)]
    pub tool_use_id: Option<String>,
    /// `tool_result`: a string or a list of `text` / `image` blocks.
    #[serde(default)]
    pub content: Option<Value>,
    /// `tool_result`: whether the tool failed.
    #[serde(default)]
    pub is_error: Option<bool>,
    /// `thinking`: the thought text (not sent back to Gemini).
    #[serde(default)]
    pub thinking: Option<String>,
    /// `thinking`: the signature (Gemini's thought signature).
    #[serde(default)]
    pub signature: Option<String>,
    /// `redacted_thinking`: opaque data.
    #[serde(default)]
    pub data: Option<String>,
}

/// A tool definition.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Tool {
    /// Absent or `custom` for client tools; server tools have a dated type
    /// (`web_search_20250305`, ...).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The tool name.
    #[serde(default)]
    pub name: String,
    /// What the tool does.
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON Schema of the tool's input.
    #[serde(default)]
    pub input_schema: Option<Value>,
}
