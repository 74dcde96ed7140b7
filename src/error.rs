//! The crate's error type and every error response the gateway sends, in each dialect.
//!
//! Rejections are responses, not errors: a layer that refuses a request (401, 413, 429, 503)
//! answers with an [`ApiError`] rendered in the dialect of the route ([`Dialect`]): Gemini's
//! `{"error":{"code","message","status"}}` on native routes, OpenAI's
//! `{"error":{"message","type","param","code"}}` on `/v1/...` OpenAI routes, Anthropic's
//! `{"type":"error","error":{"type","message"}}` on `/v1/messages`.
//!
//! [`Error`] is the one opaque error type for failures that are not answers (transport errors,
//! timeouts); its `Display` never carries a secret or a query string.
//!
//! # Upstream failures
//!
//! One mapping, [`ApiError::from_transport`], turns a failed upstream call into the client's
//! answer, wherever the call failed (the gateway's error layer, key rotation):
//!
//! | Failure | Answer |
//! |---|---|
//! | A timeout waiting for upstream headers, found anywhere in the error's source chain ([`Error::is_timeout`], an `io::Error` of kind `TimedOut`, tokio's `Elapsed`, a hyper, hyper-util or reqwest timeout) | 504 Gateway Timeout, `DEADLINE_EXCEEDED` |
//! | A connect failure (refused, unreachable, TLS) or any other transport error | 502 Bad Gateway, `UNAVAILABLE` |
//! | An [`ApiError`] or another crate [`Error`] | what it says ([`Error::to_api_error`]) |
//!
//! Either is a JSON error in the route's dialect whose message is fixed text: no secret, no
//! URL, no query string. The error itself is logged once, scrubbed, where it is caught.
//!
//! An error *answer* from the upstream (a 4xx or 5xx with a body) is relayed with its status,
//! its body read up to a bound and every known secret, and anything shaped like a key, masked
//! (see [`crate::secret`]); a body past the bound or unreadable becomes a short error of the
//! same status.
//!
//! # Example
//! ```
//! use http::StatusCode;
//! use tower_gemini::error::{ApiError, Dialect};
//!
//! let res = ApiError::unauthorized("missing client token").into_response(Dialect::OpenAi);
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["content-type"], "application/json");
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::{Body, BoxError};

// === Dialect ===

/// The API dialect a route speaks, which decides the shape of its error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Google's Gemini REST API (`/v1beta/...`, `/v1/models/{model}:{method}`).
    Gemini,
    /// OpenAI's API (`/v1/chat/completions`, `/v1/models`, `/v1/embeddings`, ...).
    OpenAi,
    /// Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`): errors as
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

impl Dialect {
    /// The dialect of a request path.
    ///
    /// `/v1/messages` and what is under it is Anthropic; other `/v1/...` paths are OpenAI
    /// unless they name a Gemini method (`/v1/models/x:generateContent`); everything else is
    /// Gemini.
    pub fn from_path(path: &str) -> Dialect {
        match path.strip_prefix("/v1/") {
            Some(rest)
                if rest.trim_end_matches('/') == "messages" || rest.starts_with("messages/") =>
            {
                Dialect::Anthropic
            }
            Some(rest) if !rest.contains(':') => Dialect::OpenAi,
            _ => Dialect::Gemini,
        }
    }

    /// The dialect of a request: an explicit [`Dialect`] extension wins, else the path decides,
    /// except for `GET /v1/models[/{id}]`, which all three APIs have: a request that carries a
    /// Gemini client's marks (`x-goog-api-key`, `?key=`, or the `x-goog-api-client` header the
    /// google-genai SDKs send, which default to `/v1`) is Gemini's, one with the
    /// `anthropic-version` header every Anthropic client sends is Anthropic's.
    ///
    /// Layers that remove credentials (`BearerAuth`) store the dialect first, so it survives.
    pub fn of<B>(req: &Request<B>) -> Dialect {
        if let Some(d) = req.extensions().get::<Dialect>() {
            return *d;
        }
        let path = req.uri().path();
        match Dialect::from_path(path) {
            Dialect::OpenAi if is_models_path(path) && has_gemini_client_marks(req) => {
                Dialect::Gemini
            }
            Dialect::OpenAi
                if is_models_path(path) && req.headers().contains_key(ANTHROPIC_VERSION) =>
            {
                Dialect::Anthropic
            }
            d => d,
        }
    }
}

/// The header every Anthropic client sends.
const ANTHROPIC_VERSION: &str = "anthropic-version";

/// `/v1/models` or `/v1/models/{id}` (no `:method`).
fn is_models_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/v1/models"
        || path
            .strip_prefix("/v1/models/")
            .is_some_and(|id| !id.contains(':'))
}

/// Whether a request looks like it comes from a Gemini client rather than an OpenAI one.
fn has_gemini_client_marks<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key("x-goog-api-key")
        || h.contains_key("x-goog-api-client")
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "key" || kv.starts_with("key=")))
}

// === ApiError ===

/// An error answer: an HTTP status and a message a user can act on.
///
/// Rendered with [`ApiError::into_response`] in either dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
    openai_code: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            openai_code: None,
        }
    }

    /// 400: the request is malformed or cannot be expressed upstream.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: missing or wrong client credential.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message).with_openai_code("invalid_api_key")
    }

    /// 403: the credential is valid but not allowed here.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: unknown route, model or object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 405: the route exists but not for this method.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, message)
    }

    /// 413: the request body is larger than the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 429 with `Retry-After` (whole seconds, rounded up, at least 1).
    pub fn too_many_requests(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
            .with_retry_after(retry_after)
            .with_openai_code("rate_limit_exceeded")
    }

    /// 500: a bug or an unexpected state in the gateway.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 502: the upstream answered with something unusable or the connection failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, message)
    }

    /// 503: no upstream capacity (all keys disabled, shedding load).
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, message)
    }

    /// Sets `Retry-After` (whole seconds, rounded up, at least 1).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Sets OpenAI's machine-readable `code` field.
    pub fn with_openai_code(mut self, code: &'static str) -> Self {
        self.openai_code = Some(code);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Retry-After` seconds, if any.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// Gemini's (google.rpc) status name for this HTTP status.
    pub fn gemini_status(&self) -> &'static str {
        gemini_status_name(self.status)
    }

    /// OpenAI's error `type` for this HTTP status.
    pub fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// Anthropic's error `type` for this HTTP status.
    pub fn anthropic_type(&self) -> &'static str {
        anthropic_error_type(self.status)
    }

    /// The JSON body in a dialect.
    pub fn to_json(&self, dialect: Dialect) -> serde_json::Value {
        match dialect {
            Dialect::Gemini => serde_json::json!({
                "error": {
                    "code": self.status.as_u16(),
                    "message": self.message,
                    "status": self.gemini_status(),
                }
            }),
            Dialect::OpenAi => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": self.openai_type(),
                    "param": null,
                    "code": self.openai_code,
                }
            }),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {
                    "type": self.anthropic_type(),
                    "message": self.message,
                }
            }),
        }
    }

    /// Renders the error as a JSON response in a dialect.
    pub fn into_response(self, dialect: Dialect) -> Response<Body> {
        let body = serde_json::to_vec(&self.to_json(dialect)).unwrap_or_default();
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// Anthropic's error `type` for an HTTP status (the types its API documents).
pub(crate) fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// Gemini's (google.rpc) status name for an HTTP status.
pub(crate) fn gemini_status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "UNIMPLEMENTED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        400..=499 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

// === Upstream error answers ===

/// An upstream error answer (a 4xx or 5xx), its body read up to a bound: the one way an
/// upstream error reaches a client.
///
/// Read it with [`read`](Self::read), look at it (key rotation classifies the key by it), then
/// relay it with [`into_response`](Self::into_response), which scrubs the body.
#[derive(Debug)]
#[cfg_attr(
    not(any(
        feature = "key-rotation",
        all(feature = "request-id", feature = "bearer-auth")
    )),
    allow(dead_code)
)]
pub(crate) struct UpstreamError {
    parts: http::response::Parts,
    /// `None`: larger than the bound, or the body failed.
    body: Option<Bytes>,
}

#[cfg_attr(
    not(any(
        feature = "key-rotation",
        all(feature = "request-id", feature = "bearer-auth")
    )),
    allow(dead_code)
)]
impl UpstreamError {
    /// Reads an error answer's body, at most `max` bytes.
    pub(crate) async fn read<B>(res: Response<B>, max: usize) -> Self
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = res.into_parts();
        let body = crate::body::collect_limited(body, max).await.ok();
        Self { parts, body }
    }

    /// The body, when it was read whole.
    #[cfg(feature = "key-rotation")]
    pub(crate) fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The answer relayed to the client: the upstream status and headers, and the body with
    /// each of `known` (the keys and tokens the gateway holds) and anything [`scrub`] takes
    /// for a key masked. A body that was not read whole becomes a short error of the same
    /// status in `dialect` (keeping `Retry-After`).
    ///
    /// [`scrub`]: crate::secret::scrub
    pub(crate) fn into_response<S: AsRef<str>>(
        self,
        known: &[S],
        dialect: Dialect,
    ) -> Response<Body> {
        let Self { mut parts, body } = self;
        let Some(bytes) = body else {
            let mut res = ApiError::new(
                parts.status,
                "the upstream answered with an error that could not be relayed",
            )
            .into_response(dialect);
            if let Some(after) = parts.headers.remove(header::RETRY_AFTER) {
                res.headers_mut().insert(header::RETRY_AFTER, after);
            }
            return res;
        };
        let text = String::from_utf8_lossy(&bytes);
        let clean = crate::secret::scrub_known(&text, known);
        // Unchanged text: the original bytes (even when not UTF-8; a key is ASCII and would
        // have shown in the lossy text).
        let bytes = if clean == text {
            bytes
        } else {
            Bytes::from(clean.into_owned())
        };
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Response::from_parts(parts, Body::from(bytes))
    }
}

// === Error ===

/// The crate's opaque error: transport failures, timeouts and other failures that are not
/// answers. Its `Display` is lowercase and never carries a secret or a query string.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Timeout,
    Upstream,
    Body,
    Config,
    Redis,
    Store,
}

impl Error {
    fn new(kind: Kind, source: Option<BoxError>) -> Self {
        Self {
            inner: Box::new(Inner { kind, source }),
        }
    }

    /// The upstream did not answer (or went silent) within the configured time.
    pub fn timeout() -> Self {
        Self::new(Kind::Timeout, None)
    }

    /// The upstream could not be reached or broke the connection.
    pub fn upstream(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Upstream, Some(source.into()))
    }

    /// Reading or writing a body failed.
    pub fn body(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Body, Some(source.into()))
    }

    /// A configuration value is invalid.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, Some(message.into().into()))
    }

    /// The shared-state store (Redis) failed.
    pub fn redis(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Redis, Some(source.into()))
    }

    /// A database of the gateway (an `AdminStore`, the request log) failed.
    pub fn store(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Store, Some(source.into()))
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// Whether the upstream could not be reached or broke the connection.
    pub fn is_upstream(&self) -> bool {
        self.inner.kind == Kind::Upstream
    }

    /// Whether a body failed.
    pub fn is_body(&self) -> bool {
        self.inner.kind == Kind::Body
    }

    /// Whether a configuration value is invalid.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// Whether the shared-state store failed.
    pub fn is_redis(&self) -> bool {
        self.inner.kind == Kind::Redis
    }

    /// Whether a database of the gateway failed.
    pub fn is_store(&self) -> bool {
        self.inner.kind == Kind::Store
    }

    /// The answer a client gets for this error: a timeout, or an upstream or body failure
    /// caused by one, is a 504; any other upstream or body failure a 502 (see the
    /// [module docs](self#upstream-failures)).
    pub fn to_api_error(&self) -> ApiError {
        match self.inner.kind {
            Kind::Timeout => ApiError::gateway_timeout(TIMEOUT_MESSAGE),
            Kind::Upstream | Kind::Body
                if self
                    .inner
                    .source
                    .as_deref()
                    .is_some_and(|e| has_timeout(e as &(dyn std::error::Error + 'static))) =>
            {
                ApiError::gateway_timeout(TIMEOUT_MESSAGE)
            }
            Kind::Upstream => ApiError::bad_gateway(UNREACHABLE_MESSAGE),
            Kind::Body => ApiError::bad_gateway("the upstream body failed"),
            Kind::Config => ApiError::internal("the gateway is misconfigured"),
            Kind::Redis => {
                ApiError::service_unavailable("the gateway's shared store is unavailable")
            }
            Kind::Store => ApiError::service_unavailable("the gateway's database is unavailable"),
        }
    }

    /// Maps any boxed error to an answer.
    #[deprecated(
        since = "0.1.0",
        note = "use `ApiError::from_transport`, the one mapping"
    )]
    pub fn api_error_of(err: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::from_transport(err)
    }
}

// === Transport failures ===

const TIMEOUT_MESSAGE: &str = "the upstream did not answer in time";
const UNREACHABLE_MESSAGE: &str = "the upstream could not be reached";

impl ApiError {
    /// The answer for a failed upstream call (the service's `Err`, not an error status): the
    /// crate's one mapping of transport errors to statuses.
    ///
    /// An [`ApiError`] answers for itself and a crate [`Error`] through
    /// [`Error::to_api_error`]; anything else is a 504 when a timeout is anywhere in its source
    /// chain and a 502 otherwise (see the [module docs](self#upstream-failures)). The message
    /// is fixed text, never the error's own, which may hold a URL with `?key=`.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_gemini::{ApiError, Error};
    ///
    /// let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
    /// assert_eq!(ApiError::from_transport(&Error::upstream(slow)).status(), StatusCode::GATEWAY_TIMEOUT);
    /// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// assert_eq!(ApiError::from_transport(&refused).status(), StatusCode::BAD_GATEWAY);
    /// ```
    pub fn from_transport(err: &(dyn std::error::Error + 'static)) -> ApiError {
        if let Some(api) = err.downcast_ref::<ApiError>() {
            return api.clone();
        }
        if let Some(e) = err.downcast_ref::<Error>() {
            return e.to_api_error();
        }
        if has_timeout(err) {
            ApiError::gateway_timeout(TIMEOUT_MESSAGE)
        } else {
            ApiError::bad_gateway(UNREACHABLE_MESSAGE)
        }
    }
}

/// Whether `err` or any error in its source chain is a timeout.
fn has_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if is_timeout_leaf(e) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether this one error (not its sources) says it is a timeout.
fn is_timeout_leaf(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<Error>() {
        return e.is_timeout();
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        // An io::Error's `source()` skips the error it wraps: look at that one here.
        return io.kind() == std::io::ErrorKind::TimedOut
            || io
                .get_ref()
                .is_some_and(|inner| is_timeout_leaf(inner as &(dyn std::error::Error + 'static)));
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return true;
    }
    #[cfg(any(feature = "client", feature = "testing"))]
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        return h.is_timeout();
    }
    // Errors whose type is private to their crate (reqwest's `TimedOut`, tower's `Elapsed`
    // without its feature) are known by their text.
    let text = e.to_string();
    text.contains("timed out") || text.contains("deadline has elapsed")
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("tower_gemini::Error");
        d.field("kind", &self.inner.kind);
        if let Some(source) = &self.inner.source {
            d.field("source", &crate::secret::scrub(&source.to_string()));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.inner.kind {
            Kind::Timeout => "upstream timed out",
            Kind::Upstream => "upstream request failed",
            Kind::Body => "body error",
            Kind::Config => "invalid configuration",
            Kind::Redis => "shared store error",
            Kind::Store => "database error",
        };
        match &self.inner.source {
            Some(source) if matches!(self.inner.kind, Kind::Config | Kind::Store) => {
                write!(f, "{what}: {}", crate::secret::scrub(&source.to_string()))
            }
            _ => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_follows_the_path() {
        assert_eq!(Dialect::from_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(Dialect::from_path("/v1/models"), Dialect::OpenAi);
        assert_eq!(Dialect::from_path("/v1/messages"), Dialect::Anthropic);
        assert_eq!(
            Dialect::from_path("/v1/messages/count_tokens"),
            Dialect::Anthropic
        );
        assert_eq!(Dialect::from_path("/v1/messagesx"), Dialect::OpenAi);
        let get = |uri: &str, header: Option<&str>| {
            let mut b = Request::get(uri);
            if let Some(h) = header {
                b = b.header(h, "x");
            }
            Dialect::of(&b.body(()).unwrap())
        };
        assert_eq!(get("/v1/models", None), Dialect::OpenAi);
        assert_eq!(
            get("/v1/models/gemini-2.5-pro", Some("authorization")),
            Dialect::OpenAi
        );
        assert_eq!(get("/v1/models", Some("x-goog-api-key")), Dialect::Gemini);
        assert_eq!(
            get("/v1/models/gemini-2.5-pro", Some("x-goog-api-client")),
            Dialect::Gemini
        );
        assert_eq!(get("/v1/models?pageSize=5&key=abc", None), Dialect::Gemini);
        assert_eq!(
            get("/v1/models", Some("anthropic-version")),
            Dialect::Anthropic
        );
        assert_eq!(
            get("/v1/models/gemini-2.5-pro", Some("anthropic-version")),
            Dialect::Anthropic
        );
        assert_eq!(get("/v1/models?monkey=1", None), Dialect::OpenAi);
        assert_eq!(
            get("/v1/chat/completions", Some("x-goog-api-key")),
            Dialect::OpenAi
        );
        assert_eq!(
            Dialect::from_path("/v1/models/gemini-2.5-flash:generateContent"),
            Dialect::Gemini
        );
        assert_eq!(Dialect::from_path("/v1beta/models"), Dialect::Gemini);
        assert_eq!(Dialect::from_path("/health"), Dialect::Gemini);
    }

    #[test]
    fn gemini_shape() {
        let v = ApiError::not_found("no such model").to_json(Dialect::Gemini);
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
        assert_eq!(v["error"]["message"], "no such model");
    }

    #[test]
    fn anthropic_shape() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
        ] {
            let e = ApiError::new(StatusCode::from_u16(status).unwrap(), "why");
            assert_eq!(
                e.to_json(Dialect::Anthropic),
                serde_json::json!({"type": "error", "error": {"type": kind, "message": "why"}})
            );
        }
    }

    #[test]
    fn openai_shape() {
        let v = ApiError::unauthorized("bad token").to_json(Dialect::OpenAi);
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn retry_after_rounds_up() {
        let e = ApiError::too_many_requests("slow down", Duration::from_millis(1500));
        let res = e.into_response(Dialect::Gemini);
        assert_eq!(res.headers()["retry-after"], "2");
    }

    #[derive(Debug)]
    struct Wrapper(BoxError);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (SendRequest)")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn answer(err: impl std::error::Error + 'static) -> ApiError {
        ApiError::from_transport(&err)
    }

    #[test]
    fn a_timeout_anywhere_in_the_chain_is_a_504() {
        let io_timeout = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
        assert_eq!(
            answer(Error::timeout()).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(answer(io_timeout()).status(), StatusCode::GATEWAY_TIMEOUT);
        // The gateway's own error around a timeout, and a foreign wrapper around either.
        assert_eq!(
            answer(Error::upstream(io_timeout())).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            answer(Wrapper(Box::new(Error::timeout()))).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            answer(Wrapper(Box::new(Wrapper(io_timeout().into())))).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        // An error type only known by its text (reqwest's private `TimedOut`).
        assert_eq!(
            answer(Wrapper("operation timed out".into())).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[tokio::test]
    async fn tokio_elapsed_is_a_504() {
        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(answer(elapsed).status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn other_transport_errors_are_a_502() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(answer(refused()).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            answer(Error::upstream(refused())).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            answer(Wrapper(refused().into())).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            answer(Wrapper("tls handshake eof".into())).status(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn answers_carry_no_url_or_secret() {
        const LEAKY: &str = "error sending request for url \
            (http://127.0.0.1:9/v1beta/models?key=AIzaSySECRETSECRETSECRETSECRET0000000)";
        for err in [
            answer(Wrapper(LEAKY.into())),
            answer(Error::upstream(LEAKY)),
            answer(Wrapper(format!("{LEAKY}: operation timed out").into())),
        ] {
            for dialect in [Dialect::Gemini, Dialect::OpenAi] {
                let v = err.to_json(dialect).to_string();
                assert!(
                    !v.contains("SECRET") && !v.contains("127.0.0.1") && !v.contains("key="),
                    "{v}"
                );
            }
        }
        let v = answer(Error::timeout()).to_json(Dialect::Gemini);
        assert_eq!(v["error"]["code"], 504);
        assert_eq!(v["error"]["status"], "DEADLINE_EXCEEDED");
        let v = answer(Error::timeout()).to_json(Dialect::OpenAi);
        assert_eq!(v["error"]["type"], "server_error");
        let v = answer(Wrapper(LEAKY.into())).to_json(Dialect::Gemini);
        assert_eq!(v["error"]["code"], 502);
        assert_eq!(v["error"]["status"], "UNAVAILABLE");
    }

    #[test]
    fn gateway_errors_and_answers_keep_their_own_status() {
        // A Redis timeout is the shared store's failure, not the upstream's.
        let redis = Error::redis(Error::timeout());
        assert_eq!(answer(redis).status(), StatusCode::SERVICE_UNAVAILABLE);
        let config = Error::config("upstream url timed out?");
        assert_eq!(answer(config).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let api = ApiError::too_many_requests("slow down", Duration::from_secs(2));
        assert_eq!(answer(api.clone()), api);
    }

    fn upstream(status: u16, body: impl Into<Body>) -> Response<Body> {
        let mut res = Response::new(body.into());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(1_000_000));
        res
    }

    async fn text_of(res: Response<Body>) -> String {
        let body = crate::body::collect_limited(res.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn relayed_error_bodies_are_scrubbed_of_known_and_shaped_keys() {
        let body = r#"{"error":{"code":403,"message":"api_key:AIzaSyA1234567890abcdefghijklmnopqrstuv and plain-secret-upstream-key-1 denied","status":"PERMISSION_DENIED"}}"#;
        let err = UpstreamError::read(upstream(403, body), 1024).await;
        assert_eq!(err.body(), Some(body.as_bytes()));
        let res = err.into_response(&["plain-secret-upstream-key-1"], Dialect::Gemini);
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let length = res.headers()[header::CONTENT_LENGTH].clone();
        let text = text_of(res).await;
        assert_eq!(length, text.len().to_string().as_str());
        assert!(!text.contains("1234567890abcdefghijkl"), "{text}");
        assert!(!text.contains("plain-secret-upstream-key-1"), "{text}");
        assert!(text.contains("PERMISSION_DENIED"), "{text}");
    }

    #[tokio::test]
    async fn a_clean_error_body_is_relayed_byte_for_byte() {
        let body = &b"{\"error\":{\"code\":404,\"message\":\"no \xff model\"}}"[..];
        let err = UpstreamError::read(upstream(404, Bytes::from_static(body)), 1024).await;
        let res = err.into_response(&["some-known-secret-12345"], Dialect::Gemini);
        let got = crate::body::collect_limited(res.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&got[..], body);
    }

    #[tokio::test]
    async fn an_error_body_past_the_bound_becomes_a_short_error_of_the_same_status() {
        let long = format!("AIzaSyA1234567890abcdefghijklmnopqrstuv{}", "x".repeat(100));
        let mut res = upstream(429, long);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let err = UpstreamError::read(res, 16).await;
        assert_eq!(err.body(), None);
        let res = err.into_response(&[] as &[&str], Dialect::OpenAi);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        let v: serde_json::Value = serde_json::from_str(&text_of(res).await).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn display_never_shows_the_source() {
        let e = Error::upstream("connect to https://x/?key=AIzaSECRETSECRETSECRET failed");
        assert_eq!(e.to_string(), "upstream request failed");
        assert!(!format!("{e:?}").contains("SECRETSECRET"));
    }
}
