//! Tower middleware for Gemini API gateways.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod error;
pub mod gemini;
#[cfg(feature = "key-rotation")]
#[cfg_attr(docsrs, doc(cfg(feature = "key-rotation")))]
pub mod key_rotation;
pub mod secret;

pub use body::{Body, BoxError};
pub use error::{ApiError, Dialect, Error};
