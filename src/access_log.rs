//! One log line per request: method, path (never the query), model, client, status, latency.
//!
//! [`AccessLogLayer`] emits an `INFO` event on target `tower_gemini::access` when the response
//! head is ready (`latency_ms` is the time to response headers; a stream may run on after it).
//! Why not tower-http's `TraceLayer`: its default span and events log the whole URI, query
//! (`?key=`) included; this line shows the path only, and one line per request is cheaper.
//!
//! Put it inside `RequestIdLayer` so the line carries the request span's fields (`request_id`,
//! and `client`, `key.id` as inner layers record them, and `model`, the resolved model it
//! reads from the request's [`Report`]).
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, access_log::AccessLogLayer};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(AccessLogLayer::new())
//!     .service(service_fn(|_: Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
//!     }));
//! let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::facts::Report;

/// The path to show in log lines and spans instead of the request's own, set in request
/// extensions by a router that knows the route's template (`/admin/tokens/{id}`) when the real
/// path may hold a secret (a token being revoked). Read by [`AccessLog`] and
/// [`RequestId`](crate::request_id::RequestId).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPath(pub std::sync::Arc<str>);

/// The path of `req` as logs may show it: its [`LogPath`], else the URI path with any key
/// pasted into it masked. Never the query.
pub(crate) fn log_path<B>(req: &Request<B>) -> String {
    match req.extensions().get::<LogPath>() {
        Some(p) => p.0.to_string(),
        None => crate::secret::scrub(req.uri().path()).into_owned(),
    }
}

/// Applies [`AccessLog`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogLayer {
    _priv: (),
}

impl AccessLogLayer {
    /// A new access log layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

/// Logs one line per request; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S> AccessLog<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    crate::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method().clone();
        // With the line and the request span both off, there is nothing to prepare.
        let span = tracing::Span::current();
        let line = tracing::enabled!(target: "tower_gemini::access", tracing::Level::WARN);
        // A key pasted into the path is masked like any other.
        let path = if line { log_path(&req) } else { String::new() };
        // The model is named once the answer's head is ready: by then the layers below have
        // resolved it (an alias renamed, an OpenAI body read) into the request's report.
        let model = (!span.is_disabled())
            .then(|| Report::of(&req).cloned().map(|report| (report, span)))
            .flatten();
        ResponseFuture {
            inner: self.inner.call(req),
            start: Instant::now(),
            method,
            path,
            model,
        }
    }
}

pin_project! {
    /// Response future of [`AccessLog`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        method: Method,
        path: String,
        model: Option<(Report, tracing::Span)>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("path", &self.path)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some((report, span)) = this.model.take() {
            if let Some(model) = report.model() {
                span.record("model", &*crate::secret::scrub(&model));
            }
        }
        let latency_ms = this.start.elapsed().as_secs_f64() * 1000.0;
        match &out {
            Ok(res) => tracing::info!(
                target: "tower_gemini::access",
                method = %this.method,
                route = %this.path,
                status = res.status().as_u16(),
                latency_ms = format_args!("{latency_ms:.1}"),
                "request"
            ),
            Err(e) => tracing::warn!(
                target: "tower_gemini::access",
                method = %this.method,
                route = %this.path,
                error = %crate::secret::scrub(&e.to_string()),
                latency_ms = format_args!("{latency_ms:.1}"),
                "request failed"
            ),
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::AccessLogLayer;
    use crate::Body;
    use crate::request_id::RequestIdLayer;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_key_pasted_into_the_path_is_masked_in_the_line_and_the_span() {
        const KEY: &str = "AIzaSyA-leaked-key-in-a-model-name00001";
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .layer(AccessLogLayer::new())
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            }));
        let req = Request::post(format!("/v1beta/models/{KEY}:generateContent"))
            .body(Body::empty())
            .unwrap();
        svc.oneshot(req).await.unwrap();
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains(&crate::secret::mask(KEY)), "{text}");
        assert!(!text.contains("leaked-key"), "{text}");
    }
}
