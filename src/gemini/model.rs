//! `models.list` and `models.get`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::path::strip_models_prefix;

/// A model as listed by `GET /v1beta/models` or returned by `GET /v1beta/models/{model}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// The resource name, `models/{model}`.
    #[serde(default)]
    pub name: String,
    /// The base model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_id: Option<String>,
    /// The version, e.g. `2.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A short description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token_limit: Option<u32>,
    /// The maximum output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_token_limit: Option<u32>,
    /// Methods the model supports, e.g. `generateContent`, `countTokens`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_generation_methods: Vec<String>,
    /// Whether the model thinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<bool>,
    /// Default temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Maximum temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature: Option<f64>,
    /// Default top-p.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Default top-k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Model {
    /// The model id without the `models/` prefix, e.g. `gemini-2.5-flash`.
    pub fn id(&self) -> &str {
        strip_models_prefix(&self.name)
    }

    /// Whether the model lists a method (e.g. `"generateContent"`) as supported.
    pub fn supports(&self, method: &str) -> bool {
        self.supported_generation_methods
            .iter()
            .any(|m| m == method)
    }
}

/// The body of `GET /v1beta/models`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListModelsResponse {
    /// The models on this page.
    #[serde(default)]
    pub models: Vec<Model>,
    /// The token for the next page, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
