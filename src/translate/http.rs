//! HTTP plumbing the fronts share: reading the client's JSON body, copying headers both ways,
//! JSON answers.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::body::{Body, BoxError, LimitError, collect_limited};
use crate::error::{ApiError, Dialect};

/// Reads and parses a front's JSON request body, or answers 400/413 in `dialect`.
pub(crate) async fn read_json<T: DeserializeOwned, B>(
    headers: &HeaderMap,
    max: usize,
    body: B,
    dialect: Dialect,
) -> Result<T, Response<Body>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::payload_too_large(max).into_response(dialect));
    }
    let bytes = match collect_limited(body, max).await {
        Ok(b) => b,
        Err(LimitError::TooLarge { .. }) => {
            return Err(ApiError::payload_too_large(max).into_response(dialect));
        }
        Err(LimitError::Body(e)) => {
            tracing::debug!(error = %e, "request body failed");
            return Err(
                ApiError::bad_request("the request body could not be read").into_response(dialect)
            );
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("the request body is not a valid request: {e}"))
            .into_response(dialect)
    })
}

/// Headers never copied onto the inner request: client credentials, hop-by-hop headers and
/// those that describe the original body.
const DROPPED_HEADERS: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::TRANSFER_ENCODING,
    header::CONTENT_ENCODING,
    header::ACCEPT_ENCODING,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::UPGRADE,
    header::EXPECT,
];

pub(crate) fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if DROPPED_HEADERS.contains(name)
            || name.as_str() == "x-goog-api-key"
            || name.as_str() == "x-api-key"
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// A JSON response with a status, keeping the useful headers of an upstream answer.
pub(crate) fn json_response(
    status: StatusCode,
    body: &Value,
    upstream: Option<&HeaderMap>,
) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(Body::from(bytes));
    *res.status_mut() = status;
    if let Some(h) = upstream {
        copy_response_headers(h, res.headers_mut());
    }
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Copies an upstream answer's headers except those that describe its body.
pub(crate) fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if name == header::CONTENT_LENGTH
            || name == header::CONTENT_TYPE
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_ENCODING
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters kept).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a whole upstream answer (at most `max` bytes) as `T`, with its headers; an error
/// status becomes the front's error answer: `translate` turns the status and body into the
/// front's error JSON and the retry delay it names, sent as `Retry-After` when the upstream
/// set none. A body past `max`, one that broke off, or one that is not `T` is a 502 in
/// `dialect`.
pub(crate) async fn read_answer<T, R>(
    res: Response<R>,
    max: usize,
    dialect: Dialect,
    translate: impl FnOnce(StatusCode, &[u8]) -> (Value, Option<u64>),
) -> Result<(T, HeaderMap), Response<Body>>
where
    T: DeserializeOwned,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    let (parts, body) = res.into_parts();
    let bytes = match collect_limited(body, max).await {
        Ok(b) => b,
        Err(LimitError::TooLarge { limit }) => {
            return Err(ApiError::bad_gateway(format!(
                "the upstream answer is larger than {limit} bytes"
            ))
            .into_response(dialect));
        }
        Err(LimitError::Body(e)) => {
            tracing::debug!(error = %crate::secret::scrub(&e.to_string()), "upstream body failed");
            return Err(ApiError::bad_gateway(
                "the upstream answer broke off before it was complete",
            )
            .into_response(dialect));
        }
    };
    if !parts.status.is_success() {
        let (json, retry) = translate(parts.status, &bytes);
        let mut res = json_response(parts.status, &json, Some(&parts.headers));
        if !res.headers().contains_key(header::RETRY_AFTER)
            && let Some(secs) = retry
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        return Err(res);
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok((v, parts.headers)),
        Err(_) => Err(ApiError::bad_gateway(
            "the upstream answered with a body that is not a Gemini response",
        )
        .into_response(dialect)),
    }
}
