//! Tower middleware for Gemini API gateways.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[macro_use]
mod macros;

pub mod access_log;
pub mod body;
pub mod credential;
pub mod error;
pub mod facts;
pub mod gemini;
#[cfg(feature = "key-rotation")]
#[cfg_attr(docsrs, doc(cfg(feature = "key-rotation")))]
pub mod key_rotation;
pub mod secret;
pub mod sse;

#[cfg(feature = "bearer-auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "bearer-auth")))]
pub mod auth;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
#[cfg(all(feature = "request-id", feature = "bearer-auth"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "request-id", feature = "bearer-auth"))))]
pub mod gateway;
#[cfg(feature = "openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "openai")))]
pub mod openai;
#[cfg(feature = "persist")]
#[cfg_attr(docsrs, doc(cfg(feature = "persist")))]
pub mod persist;
#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod policy;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
#[cfg(all(
    feature = "redis",
    any(feature = "key-rotation", feature = "persist", feature = "rate-limit")
))]
mod redis_util;
#[cfg(feature = "request-id")]
#[cfg_attr(docsrs, doc(cfg(feature = "request-id")))]
pub mod request_id;

#[cfg(feature = "stream-resume")]
#[cfg_attr(docsrs, doc(cfg(feature = "stream-resume")))]
pub mod stream_resume;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "usage")]
#[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
pub mod usage;

pub use body::{Body, BoxError};
pub use error::{ApiError, Dialect, Error};
