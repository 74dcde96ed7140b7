//! The `generateContent` / `streamGenerateContent` request body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::content::Content;

/// The body of `models/{model}:generateContent` and `:streamGenerateContent`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// `models/{model}`; only sent inside `countTokens` and batch requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation so far, oldest turn first.
    #[serde(default)]
    pub contents: Vec<Content>,
    /// The system instruction (a [`Content`] without a role, usually text only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// How the model may use the tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    /// Safety thresholds per harm category.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_settings: Vec<SafetySetting>,
    /// Sampling, output and thinking options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
    /// `cachedContents/{id}` to use as context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_content: Option<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GenerateContentRequest {
    /// A request with these contents and nothing else.
    pub fn new(contents: Vec<Content>) -> Self {
        Self {
            contents,
            ..Self::default()
        }
    }

    /// The thinking configuration, if any.
    pub fn thinking_config(&self) -> Option<&ThinkingConfig> {
        self.generation_config.as_ref()?.thinking_config.as_ref()
    }
}

/// A tool: function declarations and/or one of Google's built-in tools.
///
/// The built-in tools are empty objects on the wire (`"googleSearch": {}`); they are kept as raw
/// JSON so their (rarely used) options round-trip.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub function_declarations: Vec<FunctionDeclaration>,
    /// Grounding with Google Search (Gemini 2.0 and later): `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_search: Option<Value>,
    /// Legacy search grounding (Gemini 1.5): `{"dynamicRetrievalConfig": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_search_retrieval: Option<Value>,
    /// The code-execution tool: `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_execution: Option<Value>,
    /// The URL-context tool: `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_context: Option<Value>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Tool {
    /// A tool holding function declarations.
    pub fn functions(declarations: Vec<FunctionDeclaration>) -> Self {
        Self {
            function_declarations: declarations,
            ..Self::default()
        }
    }
}

/// A function the model may call.
///
/// `parameters` / `response` take Google's OpenAPI subset (no `additionalProperties`, `$ref`,
/// `$schema`, ...); `parametersJsonSchema` / `responseJsonSchema` take JSON Schema. Set one of
/// each pair, not both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    /// The function name.
    #[serde(default)]
    pub name: String,
    /// What the function does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Parameters as an OpenAPI-subset schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Parameters as JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<Value>,
    /// The result as an OpenAPI-subset schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    /// The result as JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<Value>,
    /// Fields this crate does not know (e.g. `behavior`), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `toolConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    /// Function-calling mode and allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_calling_config: Option<FunctionCallingConfig>,
    /// Fields this crate does not know (e.g. `retrievalConfig`), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `toolConfig.functionCallingConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    /// `AUTO`, `ANY`, `NONE` or `VALIDATED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// With `ANY`: the only functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_function_names: Vec<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `safetySettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SafetySetting {
    /// The harm category, e.g. `HARM_CATEGORY_HARASSMENT`.
    #[serde(default)]
    pub category: String,
    /// The threshold, e.g. `BLOCK_NONE`, `OFF`, `BLOCK_MEDIUM_AND_ABOVE`.
    #[serde(default)]
    pub threshold: String,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SafetySetting {
    /// A setting for a category and threshold.
    pub fn new(category: impl Into<String>, threshold: impl Into<String>) -> Self {
        Self {
            category: category.into(),
            threshold: threshold.into(),
            extra: Map::new(),
        }
    }
}

/// `generationConfig`.
///
/// Floating-point fields are `f64`: an integer on the wire (`"temperature": 1`) comes back as
/// `1.0`, which Google reads as the same number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    /// Number of candidates to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_count: Option<i32>,
    /// Maximum output tokens (thinking tokens are counted separately on 2.5 models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<i32>,
    /// Up to five stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Decoding seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Output MIME type: `text/plain`, `application/json`, `text/x.enum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<String>,
    /// Output schema in Google's OpenAPI subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
    /// Output schema as JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<Value>,
    /// Output modalities, e.g. `["TEXT", "IMAGE"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_modalities: Vec<String>,
    /// Whether to return log-probabilities of the chosen tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_logprobs: Option<bool>,
    /// Number of top log-probabilities to return per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i32>,
    /// Thinking options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
    /// Fields this crate does not know (`speechConfig`, `mediaResolution`, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `generationConfig.thinkingConfig`.
///
/// Gemini 2.5 uses `thinkingBudget` (`-1` dynamic, `0` off where the model allows it); Gemini 3
/// uses `thinkingLevel`. Setting both is a 400 upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    /// Thinking-token budget: `-1` dynamic, `0` off, else a token count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<i32>,
    /// Whether to return thought summaries as parts with `"thought": true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_thoughts: Option<bool>,
    /// Gemini 3 thinking level: `minimal`, `low`, `medium`, `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_level: Option<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
