//! Tower middleware for Gemini API gateways.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod error;
pub mod gemini;
pub mod secret;

pub use body::{Body, BoxError};
pub use error::{ApiError, Dialect, Error};
