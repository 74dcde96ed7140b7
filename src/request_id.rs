//! Accept or mint an `x-request-id`, and carry it through the span, the upstream call and the
//! response.
//!
//! A valid incoming id (1 to 128 characters of `A-Z a-z 0-9 - _ . : / + = @`) is kept; an invalid
//! one is replaced (the request is never rejected for it); a missing one is minted as a UUIDv4.
//! The id is stored in the request extensions as [`RequestId`], set on the request passed to the
//! inner service (so the upstream sees it), recorded in a `request` tracing span entered around
//! every poll of the inner future, and set on the response.
//!
//! Why not tower-http's `SetRequestIdLayer`/`PropagateRequestIdLayer`: they pass any client
//! value on to logs and upstream; this layer checks it first and opens the request's span.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, request_id::{RequestId, RequestIdLayer}};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service(service_fn(|req: Request<Body>| async move {
//!         let id = req.extensions().get::<RequestId>().unwrap().clone();
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from(id.to_string())))
//!     }));
//!
//! let req = Request::builder().header("x-request-id", "abc-123").body(Body::empty()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

/// The `x-request-id` header name.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, stored in request extensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Wraps a header value (assumed valid; see [`is_valid_request_id`]).
    pub fn new(value: HeaderValue) -> Self {
        Self(value)
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Valid ids are ASCII by construction.
        self.0.to_str().unwrap_or("")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an incoming id is kept: 1 to 128 characters of `A-Z a-z 0-9 - _ . : / + = @`.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Makes new request ids: the plug point for other id schemes.
pub trait MakeRequestId: Send + Sync + 'static {
    /// A fresh id; it must pass [`is_valid_request_id`].
    fn make_request_id(&self) -> HeaderValue;
}

/// Mints UUIDv4 ids (the default).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UuidRequestId;

impl MakeRequestId for UuidRequestId {
    fn make_request_id(&self) -> HeaderValue {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

impl<F> MakeRequestId for F
where
    F: Fn() -> HeaderValue + Send + Sync + 'static,
{
    fn make_request_id(&self) -> HeaderValue {
        self()
    }
}

// === RequestIdLayer ===

/// Applies [`SetRequestId`]: keep or mint `x-request-id`.
#[derive(Clone)]
pub struct RequestIdLayer {
    make: Arc<dyn MakeRequestId>,
}

impl RequestIdLayer {
    /// UUIDv4 ids for requests without a valid one.
    pub fn new() -> Self {
        Self {
            make: Arc::new(UuidRequestId),
        }
    }

    /// Uses another id scheme.
    pub fn with_maker(make: impl MakeRequestId) -> Self {
        Self {
            make: Arc::new(make),
        }
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RequestIdLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId {
            inner,
            make: self.make.clone(),
        }
    }
}

// === SetRequestId ===

/// Keeps or mints `x-request-id` around an inner service.
#[derive(Clone)]
pub struct SetRequestId<S> {
    inner: S,
    make: Arc<dyn MakeRequestId>,
}

impl<S> SetRequestId<S> {
    /// Wraps `inner` with UUIDv4 ids.
    pub fn new(inner: S) -> Self {
        RequestIdLayer::new().layer(inner)
    }

    /// The [`RequestIdLayer`] for this service.
    pub fn layer() -> RequestIdLayer {
        RequestIdLayer::new()
    }

    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for SetRequestId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestId")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SetRequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if is_valid_request_id(v.as_bytes()) => v.clone(),
            _ => self.make.make_request_id(),
        };
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        let id = RequestId(id);
        // The one span per request; later layers record the empty fields as they learn them.
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %req.method(),
            path = %crate::access_log::log_path(&req),
            client = tracing::field::Empty,
            model = tracing::field::Empty,
            key.id = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        req.extensions_mut().insert(id.clone());
        let inner = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: inner.instrument(span),
            id: Some(id.0),
        }
    }
}

pin_project! {
    /// Response future of [`SetRequestId`]: sets `x-request-id` on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<HeaderValue>,
    }
}

impl<F> ResponseFuture<F> {
    /// The span the inner future runs in.
    pub fn span(&self) -> &Span {
        self.inner.span()
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("id", &self.id)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Body;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    async fn run(header: Option<&str>) -> (Option<HeaderValue>, Response<Body>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service(service_fn(move |req: Request<Body>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(req.headers().get(&X_REQUEST_ID).cloned());
                    Ok::<_, Infallible>(Response::new(Body::empty()))
                }
            }));
        let mut req = Request::builder();
        if let Some(h) = header {
            req = req.header("x-request-id", h);
        }
        let res = svc.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        (rx.recv().unwrap(), res)
    }

    #[tokio::test]
    async fn does_not_override_existing_id() {
        let (upstream, res) = run(Some("client-id.1")).await;
        assert_eq!(upstream.unwrap(), "client-id.1");
        assert_eq!(res.headers()["x-request-id"], "client-id.1");
    }

    #[tokio::test]
    async fn mints_an_id_when_missing() {
        let (upstream, res) = run(None).await;
        let id = res.headers()["x-request-id"].clone();
        assert_eq!(id.len(), 36);
        assert_eq!(upstream.unwrap(), id);
    }

    #[tokio::test]
    async fn replaces_an_invalid_id() {
        let (upstream, res) = run(Some("bad id with spaces")).await;
        let id = res.headers()["x-request-id"].clone();
        assert_ne!(id, "bad id with spaces");
        assert!(is_valid_request_id(id.as_bytes()));
        assert_eq!(upstream.unwrap(), id);
    }

    #[test]
    fn validity_rules() {
        assert!(is_valid_request_id(b"a"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(!is_valid_request_id("é".as_bytes()));
    }
}
