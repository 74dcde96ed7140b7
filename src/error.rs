//! The crate's error type and every error response the gateway sends, in both dialects.
//!
//! Rejections are responses, not errors: a layer that refuses a request (401, 413, 429, 503)
//! answers with an [`ApiError`] rendered in the dialect of the route ([`Dialect`]): Gemini's
//! `{"error":{"code","message","status"}}` on native routes, OpenAI's
//! `{"error":{"message","type","param","code"}}` on `/v1/...` OpenAI routes.
//!
//! [`Error`] is the one opaque error type for failures that are not answers (transport errors,
//! timeouts); its `Display` never carries a secret or a query string.
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
}

impl Dialect {
    /// The dialect of a request path.
    ///
    /// `/v1/...` is OpenAI unless it names a Gemini method (`/v1/models/x:generateContent`);
    /// everything else is Gemini.
    pub fn from_path(path: &str) -> Dialect {
        match path.strip_prefix("/v1/") {
            Some(rest) if !rest.contains(':') => Dialect::OpenAi,
            _ => Dialect::Gemini,
        }
    }

    /// The dialect of a request: an explicit [`Dialect`] extension wins, else the path decides,
    /// except for `GET /v1/models[/{id}]`, which both APIs have: a request that carries a
    /// Gemini client's marks (`x-goog-api-key`, `?key=`, or the `x-goog-api-client` header the
    /// google-genai SDKs send, which default to `/v1`) is Gemini's.
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
            d => d,
        }
    }
}

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

/// Gemini's (google.rpc) status name for an HTTP status.
pub fn gemini_status_name(status: StatusCode) -> &'static str {
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

    /// The answer a client gets for this error, in a dialect.
    pub fn to_api_error(&self) -> ApiError {
        match self.inner.kind {
            Kind::Timeout => ApiError::gateway_timeout("the upstream did not answer in time"),
            Kind::Upstream => ApiError::bad_gateway("the upstream could not be reached"),
            Kind::Body => ApiError::bad_gateway("the upstream body failed"),
            Kind::Config => ApiError::internal("the gateway is misconfigured"),
            Kind::Redis => {
                ApiError::service_unavailable("the gateway's shared store is unavailable")
            }
            Kind::Store => ApiError::service_unavailable("the gateway's database is unavailable"),
        }
    }

    /// Maps any boxed error to an answer: a crate [`Error`] answers for itself, anything
    /// else is a 502.
    pub fn api_error_of(err: &(dyn std::error::Error + 'static)) -> ApiError {
        if let Some(e) = err.downcast_ref::<Error>() {
            return e.to_api_error();
        }
        if let Some(e) = err.downcast_ref::<ApiError>() {
            return e.clone();
        }
        ApiError::bad_gateway("the upstream could not be reached")
    }
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

    #[test]
    fn display_never_shows_the_source() {
        let e = Error::upstream("connect to https://x/?key=AIzaSECRETSECRETSECRET failed");
        assert_eq!(e.to_string(), "upstream request failed");
        assert!(!format!("{e:?}").contains("SECRETSECRET"));
    }
}
