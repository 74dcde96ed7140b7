//! `embedContent`, `batchEmbedContents` and `countTokens`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::content::Content;
use super::request::GenerateContentRequest;
use super::response::ModalityTokenCount;

/// The body of `models/{model}:embedContent` (and each entry of a batch).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbedContentRequest {
    /// `models/{model}`; required inside `batchEmbedContents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The content to embed (text parts only).
    #[serde(default)]
    pub content: Content,
    /// The task, e.g. `RETRIEVAL_QUERY`, `RETRIEVAL_DOCUMENT`, `SEMANTIC_SIMILARITY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// A title for `RETRIEVAL_DOCUMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Truncate the embedding to this many dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dimensionality: Option<u32>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An embedding vector.
///
/// Values are `f64` so that they round-trip exactly through JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentEmbedding {
    /// The vector.
    #[serde(default)]
    pub values: Vec<f64>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer of `embedContent`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbedContentResponse {
    /// The embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<ContentEmbedding>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `models/{model}:batchEmbedContents`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchEmbedContentsRequest {
    /// One request per input; each names its `model`.
    #[serde(default)]
    pub requests: Vec<EmbedContentRequest>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer of `batchEmbedContents`: one embedding per request, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchEmbedContentsResponse {
    /// The embeddings.
    #[serde(default)]
    pub embeddings: Vec<ContentEmbedding>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `models/{model}:countTokens`: either `contents` or a whole
/// `generateContentRequest` (which must then name its `model`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensRequest {
    /// The contents to count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contents: Vec<Content>,
    /// A whole request to count (system instruction and tools included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_content_request: Option<GenerateContentRequest>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer of `countTokens`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensResponse {
    /// The prompt's token count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u32>,
    /// Tokens of the cached part of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_content_token_count: Option<u32>,
    /// Prompt tokens per modality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_tokens_details: Vec<ModalityTokenCount>,
    /// Cached tokens per modality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_tokens_details: Vec<ModalityTokenCount>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
