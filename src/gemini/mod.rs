//! Gemini wire types (serde, camelCase, unknown fields kept), model-path parsing and the error body.
//!
//! # Example
//! ```
//! use tower_gemini::gemini::GeminiPath;
//!
//! let path = GeminiPath::parse("/v1beta/models/gemini-2.5-flash:generateContent").unwrap();
//! assert_eq!(path.model, "gemini-2.5-flash");
//! ```

mod path;

pub use path::{GeminiPath, Method, strip_models_prefix};
