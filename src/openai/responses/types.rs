//! The Responses API request body, read leniently: input items stay JSON (they are stored and
//! replayed as the client sent them), unknown fields are ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/responses` request body.
///
/// # Example
/// ```
/// use tower_gemini::openai::responses::CreateResponse;
///
/// let req: CreateResponse = serde_json::from_str(r#"{
///     "model": "gemini-2.5-flash", "input": "Hello", "stream": true,
///     "reasoning": {"effort": "low"}, "some_new_field": 1
/// }"#).unwrap();
/// assert!(req.is_stream() && req.is_stored());
/// assert_eq!(req.effort(), Some("low"));
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CreateResponse {
    /// Model id, with or without a `models/` prefix.
    #[serde(default)]
    pub model: String,
    /// A string (one user message) or a list of input items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The system instruction of this request (not carried to a continuation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Tools: `{"type":"function","name","parameters",...}` and `web_search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    /// `"auto" | "none" | "required" | {"type":"function","name":..}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `{"effort": "none"|"minimal"|"low"|"medium"|"high", "summary": ...}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    /// `{"format": {"type": "text"|"json_object"|"json_schema", ...}}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Value>,
    /// Output cap (reasoning included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stream typed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Keep the response for `GET` and `previous_response_id` (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// Continue the conversation of a stored response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    /// Client metadata, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// End-user id (not forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl CreateResponse {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the response is kept (`store`, default `true` as on OpenAI).
    pub fn is_stored(&self) -> bool {
        self.store.unwrap_or(true)
    }

    /// `reasoning.effort`.
    pub fn effort(&self) -> Option<&str> {
        self.reasoning
            .as_ref()
            .and_then(|r| r.get("effort"))
            .and_then(Value::as_str)
    }
}
