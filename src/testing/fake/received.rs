//! The requests the fake recorded, and the key a request carries.

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use serde_json::Value;

use crate::credential::query_param;

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: Option<String>,
    /// The HTTP version it came over (`HTTP/2.0` when the client negotiated h2 by ALPN).
    pub version: Version,
    /// Which connection it came on: connections are numbered from 1 in the order accepted.
    pub connection: u64,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl ReceivedRequest {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The upstream key the request carried (`x-goog-api-key` or `?key=`).
    pub fn api_key(&self) -> Option<String> {
        key_of(&self.headers, self.query.as_deref())
    }
}

pub(super) fn key_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.and_then(|q| query_param(q, "key")))
        .filter(|k| !k.is_empty())
}
