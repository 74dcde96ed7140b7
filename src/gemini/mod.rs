//! Gemini wire types (serde, camelCase, unknown fields kept), model-path parsing and the error body.
//!
//! The types mirror Google's v1beta REST JSON. Every struct keeps the fields it does not know
//! in an `extra` map and writes them back, so a body parsed and serialized again is the same
//! JSON, even when Google adds fields. Enum-like fields are plain strings, except the two
//! that layers branch on, [`FinishReason`] and [`BlockReason`], which keep unknown values in
//! an `Unknown(String)` variant instead of failing. A [`Part`] is one flat struct of optional
//! fields, as on the wire.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use tower_gemini::gemini::{FinishReason, GeminiError, GeminiPath, GenerateContentResponse};
//!
//! let path = GeminiPath::parse("/v1beta/models/gemini-2.5-flash:generateContent").unwrap();
//! assert_eq!(path.model, "gemini-2.5-flash");
//!
//! let chunk: GenerateContentResponse = serde_json::from_str(r#"{
//!     "candidates": [{
//!         "content": {"role": "model", "parts": [
//!             {"text": "Considering the question...", "thought": true},
//!             {"text": "Hello!"}
//!         ]},
//!         "finishReason": "STOP"
//!     }],
//!     "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2,
//!                       "thoughtsTokenCount": 9, "totalTokenCount": 15}
//! }"#).unwrap();
//! assert_eq!(chunk.visible_text(), "Hello!");
//! assert_eq!(chunk.thought_text(), "Considering the question...");
//! assert_eq!(chunk.finish_reason(), Some(&FinishReason::Stop));
//!
//! let err = GeminiError::parse(br#"{"error": {"code": 429, "message": "Quota exceeded",
//!     "status": "RESOURCE_EXHAUSTED", "details": [
//!     {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}"#).unwrap();
//! assert_eq!(err.retry_delay(), Some(Duration::from_secs(12)));
//! assert!(GeminiError::parse(b"<html>oops</html>").is_none());
//! ```

/// Defines a string enum of known wire values plus `Unknown(String)`, which round-trips any
/// other value unchanged.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this crate does not know, kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )*
                    Self::Unknown(other) => other,
                }
            }

            /// Whether this is a value this crate does not know.
            pub fn is_unknown(&self) -> bool {
                matches!(self, Self::Unknown(_))
            }
        }

        impl From<&str> for $name {
            fn from(wire: &str) -> Self {
                match wire {
                    $( $wire => Self::$variant, )*
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(wire: String) -> Self {
                match Self::from(wire.as_str()) {
                    Self::Unknown(_) => Self::Unknown(wire),
                    known => known,
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;

            fn from_str(wire: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(wire))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
            }
        }
    };
}

mod content;
mod embed;
mod error;
mod model;
mod path;
#[cfg(any(feature = "stream-resume", feature = "openai"))]
pub(crate) mod peek;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod thinking;

pub use content::{
    Blob, CodeExecutionResult, Content, ExecutableCode, FileData, FunctionCall, FunctionResponse,
    Part,
};
pub use embed::{
    BatchEmbedContentsRequest, BatchEmbedContentsResponse, ContentEmbedding, CountTokensRequest,
    CountTokensResponse, EmbedContentRequest, EmbedContentResponse,
};
pub use error::{
    ErrorDetail, ErrorInfo, ErrorStatus, GeminiError, QuotaFailure, QuotaViolation, RetryInfo,
    parse_duration,
};
pub use model::{ListModelsResponse, Model};
pub use path::{GeminiPath, GeminiPathRef, Method, strip_models_prefix};
pub use request::{
    FunctionCallingConfig, FunctionDeclaration, GenerateContentRequest, GenerationConfig,
    SafetySetting, ThinkingConfig, Tool, ToolConfig,
};
pub use response::{
    BlockReason, Candidate, FinishReason, GenerateContentResponse, GroundingChunk,
    GroundingMetadata, ModalityTokenCount, PromptFeedback, SafetyRating, UsageMetadata, WebSource,
};
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub(crate) use thinking::is_gemini_3;
pub use thinking::{ThinkingKind, ThinkingLevel};
