//! The models the fake knows, and the paged models list.

use http::Response;
use serde_json::{Value, json};

use super::response::json_response;
use crate::body::Body;
use crate::credential::query_param;

const MODELS: &[(&str, &str, u64, u64, bool, bool)] = &[
    // (id, display name, input limit, output limit, thinking, embedding)
    (
        "gemini-2.5-pro",
        "Gemini 2.5 Pro",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-2.5-flash",
        "Gemini 2.5 Flash",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-2.5-flash-lite",
        "Gemini 2.5 Flash-Lite",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-2.0-flash",
        "Gemini 2.0 Flash",
        1_048_576,
        8_192,
        false,
        false,
    ),
    (
        "gemini-2.5-flash-image",
        "Gemini 2.5 Flash Image",
        32_768,
        32_768,
        false,
        false,
    ),
    (
        "gemini-3-pro-preview",
        "Gemini 3 Pro Preview",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-flash-latest",
        "Gemini Flash Latest",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "text-embedding-004",
        "Text Embedding 004",
        2_048,
        1,
        false,
        true,
    ),
    (
        "gemini-embedding-001",
        "Gemini Embedding 001",
        2_048,
        1,
        false,
        true,
    ),
];

/// The `modelVersion` an answer from `model` carries: the model itself, or for an alias
/// the dated model Google routes it to, as the real API names it.
pub(super) fn model_version(model: &str) -> &str {
    match model {
        "gemini-flash-latest" => "gemini-2.5-flash-preview-09-2025",
        other => other,
    }
}

pub(super) fn model(id: &str) -> Option<Value> {
    MODELS
        .iter()
        .find(|m| m.0 == id)
        .map(|&(id, name, input, output, thinking, embed)| {
            let methods: Vec<&str> = if embed {
                vec!["embedContent", "batchEmbedContents", "countTokens"]
            } else {
                vec!["generateContent", "streamGenerateContent", "countTokens"]
            };
            let mut m = json!({
                "name": format!("models/{id}"),
                "version": "001",
                "displayName": name,
                "description": format!("{name}, served by FakeGemini"),
                "inputTokenLimit": input,
                "outputTokenLimit": output,
                "supportedGenerationMethods": methods,
            });
            if !embed {
                m["temperature"] = json!(1.0);
                m["topP"] = json!(0.95);
                m["topK"] = json!(64);
                m["maxTemperature"] = json!(2.0);
                m["thinking"] = json!(thinking);
            }
            m
        })
}

pub(super) fn list_models(query: Option<&str>) -> Response<Body> {
    let size = query
        .and_then(|q| query_param(q, "pageSize"))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(50)
        .min(1000);
    let start = query
        .and_then(|q| query_param(q, "pageToken"))
        .and_then(|t| {
            t.strip_prefix("page-")
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(0);
    let models: Vec<Value> = MODELS
        .iter()
        .skip(start)
        .take(size)
        .filter_map(|m| model(m.0))
        .collect();
    let mut out = json!({ "models": models });
    if start + size < MODELS.len() {
        out["nextPageToken"] = json!(format!("page-{}", start + size));
    }
    json_response(200, &out)
}
