//! The crate's body type, bounded collection and the request-body limit layer.
//!
//! Every layer that creates or rewrites a body speaks [`Body`]: a body that is either fully
//! buffered ([`Bytes`], cheap to clone and so replayable for retries) or a boxed streaming body
//! relayed frame by frame. Layers accept any `http_body::Body<Data = Bytes>` and convert it with
//! [`Body::new`], which is free when the body already is a [`Body`].
//!
//! # Example
//! ```
//! # tokio_test_block_on(async {
//! use tower_gemini::body::{self, Body};
//!
//! let body = Body::from("hello");
//! assert_eq!(body.as_bytes().map(|b| &b[..]), Some(&b"hello"[..]));
//! let bytes = body::collect_limited(body, 1024).await.unwrap();
//! assert_eq!(&bytes[..], b"hello");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// A boxed error, the error type of [`Body`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used inside the gateway stack.
pub struct Body {
    kind: Kind,
}

enum Kind {
    /// Fully buffered; `None` once the bytes were yielded.
    Full(Option<Bytes>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    /// Wraps any body. A [`Body`] passed in is returned as it is (no extra box).
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match try_downcast::<Body, B>(body) {
            Ok(body) => body,
            Err(body) => Self {
                kind: Kind::Boxed(body.map_err(Into::into).boxed_unsync()),
            },
        }
    }

    /// The whole body when it is buffered in memory (and not yet consumed).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(Some(bytes)) => Some(bytes),
            Kind::Full(None) => Some(empty_bytes()),
            Kind::Boxed(_) => None,
        }
    }

    /// A copy of this body when it is buffered: the cheap clone retries replay.
    pub fn try_clone(&self) -> Option<Body> {
        self.as_bytes().map(|b| Body::from(b.clone()))
    }

    /// Buffers the body in memory, up to `max` bytes, so that it can be replayed.
    ///
    /// A body that is already buffered is returned at once.
    pub async fn buffer(self, max: usize) -> Result<Body, LimitError> {
        match self.kind {
            Kind::Full(Some(ref b)) if b.len() > max => Err(LimitError::TooLarge { limit: max }),
            Kind::Full(_) => Ok(self),
            Kind::Boxed(_) => collect_limited(self, max).await.map(Body::from),
        }
    }
}

fn empty_bytes() -> &'static Bytes {
    static EMPTY: Bytes = Bytes::from_static(b"");
    &EMPTY
}

fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut k = Some(k);
    if let Some(k) = <dyn std::any::Any>::downcast_mut::<Option<T>>(&mut k) {
        Ok(k.take().expect("value is present"))
    } else {
        Err(k.expect("value is present"))
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_struct("Body")
                .field("buffered", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Boxed(_) => f.debug_struct("Body").field("streaming", &true).finish(),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return Self::empty();
        }
        Self {
            kind: Kind::Full(Some(bytes)),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Bytes::from(s).into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s).into()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

/// Why a body could not be collected.
#[derive(Debug)]
pub enum LimitError {
    /// The body is larger than the limit.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading the body failed.
    Body(BoxError),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::TooLarge { limit } => write!(f, "body is larger than {limit} bytes"),
            LimitError::Body(e) => write!(f, "failed to read body: {e}"),
        }
    }
}

impl std::error::Error for LimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LimitError::TooLarge { .. } => None,
            LimitError::Body(e) => Some(&**e),
        }
    }
}

/// Collects a body into memory, failing as soon as it passes `max` bytes.
///
/// Memory held never exceeds `max` plus one frame.
pub async fn collect_limited<B>(body: B, max: usize) -> Result<Bytes, LimitError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > max as u64 {
        return Err(LimitError::TooLarge { limit: max });
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| LimitError::Body(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if held + data.len() > max {
            return Err(LimitError::TooLarge { limit: max });
        }
        match first.take() {
            // The common case, one frame: keep it without copying.
            None if buf.is_empty() => first = Some(data),
            prev => {
                if let Some(prev) = prev {
                    buf.extend_from_slice(&prev);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

// === BodyLimit ===

/// The default cap on a request body, for every layer that reads or buffers one (the
/// gateway's body limit, the OpenAI front, the request policy): 20 MiB, room for a few inline
/// images. `full_proxy`'s `MAX_BODY_BYTES` sets it for all of them at once.
pub const DEFAULT_MAX_BODY_BYTES: usize = 20 * 1024 * 1024;

/// Applies [`BodyLimit`]: buffers request bodies up to a limit, answering 413 past it.
///
/// Why not tower-http's `RequestBodyLimitLayer`: it streams and answers 413 in plain text; this
/// one buffers (so key retries and stream resumes can replay the body), bounds the read time
/// (408) and answers in the route's JSON dialect.
///
/// Requests reach the inner service with a buffered [`Body`], which retries can replay. A
/// `Content-Length` over the limit is refused before a byte is read; a chunked body is refused
/// as soon as it passes the limit. Refusals are JSON in the route's [`Dialect`](crate::Dialect).
///
/// # Example
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_gemini::body::{Body, BodyLimitLayer};
///
/// let svc = ServiceBuilder::new()
///     .layer(BodyLimitLayer::new(4))
///     .service(service_fn(|req: Request<Body>| async move {
///         assert!(req.body().as_bytes().is_some()); // buffered, replayable
///         Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
///     }));
/// let res = svc.oneshot(Request::new(Body::from("too long"))).await.unwrap();
/// assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
/// # });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    max: usize,
    read_timeout: Option<Duration>,
    uploads: Option<u64>,
}

impl BodyLimitLayer {
    /// Buffers bodies of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            read_timeout: None,
            uploads: None,
        }
    }

    /// Streams the bodies of upload routes (paths under `/upload/`: file bytes, up to 2 GB at
    /// Google; not a resumable upload's `start`, which holds metadata only) instead of
    /// buffering them, refusing with 413 those declared larger than `max`
    /// and failing those that grow past it (default: uploads are buffered like any body).
    pub fn stream_uploads(mut self, max: u64) -> Self {
        self.uploads = Some(max);
        self
    }

    /// Bounds the time to receive a whole request body: a client that sends too slowly, or a
    /// chunked body that never ends, gets 408 instead of holding the request open (default:
    /// no bound).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max: self.max,
            read_timeout: self.read_timeout,
            uploads: self.uploads,
        }
    }
}

/// Buffers request bodies up to a limit; see [`BodyLimitLayer`].
#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    max: usize,
    read_timeout: Option<Duration>,
    uploads: Option<u64>,
}

impl<S> BodyLimit<S> {
    /// Wraps `inner` with a limit of `max` bytes.
    pub fn new(inner: S, max: usize) -> Self {
        Self {
            inner,
            max,
            read_timeout: None,
            uploads: None,
        }
    }

    crate::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for BodyLimit<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max;
        let read_timeout = self.read_timeout;
        let dialect = crate::Dialect::of(&req);
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A resumable upload's `start` carries only the file's metadata: buffered like any
        // body, so key rotation can retry it.
        let starts_a_session = req
            .headers()
            .get("x-goog-upload-command")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.to_ascii_lowercase().contains("start"));
        if let Some(upload_max) = self
            .uploads
            .filter(|_| req.uri().path().starts_with("/upload/") && !starts_a_session)
        {
            // Upload bytes stream through, bounded as they come: never whole in memory.
            if declared.is_some_and(|n| n > upload_max) {
                let res = crate::ApiError::payload_too_large(
                    usize::try_from(upload_max).unwrap_or(usize::MAX),
                )
                .into_response(dialect);
                return BoxFuture(Box::pin(async move { Ok(res) }));
            }
            let limit = usize::try_from(upload_max).unwrap_or(usize::MAX);
            let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
            let fut = inner.call(req);
            return BoxFuture(Box::pin(async move { fut.await.map(|r| r.map(Body::new)) }));
        }
        BoxFuture(Box::pin(async move {
            if declared.is_some_and(|n| n > max as u64) {
                return Ok(crate::ApiError::payload_too_large(max).into_response(dialect));
            }
            let (parts, body) = req.into_parts();
            let buffering = Body::new(body).buffer(max);
            let buffered = match read_timeout {
                None => buffering.await,
                Some(d) => match tokio::time::timeout(d, buffering).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::info!(
                            timeout_ms = d.as_millis() as u64,
                            "request body too slow; refused"
                        );
                        return Ok(crate::ApiError::new(
                            http::StatusCode::REQUEST_TIMEOUT,
                            format!(
                                "the request body did not arrive within {} s",
                                d.as_secs_f64()
                            ),
                        )
                        .into_response(dialect));
                    }
                },
            };
            let body = match buffered {
                Ok(body) => body,
                Err(LimitError::TooLarge { .. }) => {
                    return Ok(crate::ApiError::payload_too_large(max).into_response(dialect));
                }
                Err(LimitError::Body(e)) => {
                    tracing::debug!(error = %e, "request body failed");
                    return Ok(
                        crate::ApiError::bad_request("the request body could not be read")
                            .into_response(dialect),
                    );
                }
            };
            let res = inner.call(http::Request::from_parts(parts, body)).await?;
            Ok(res.map(Body::new))
        }))
    }
}

/// A boxed `Send` future in a named type, for layers whose work is naturally `async`: the
/// `ResponseFuture` of `RateLimit`, `StreamResume`, `KeyRotation`, `RequestPolicy` and the
/// upstream client (one implementation, five names).
pub struct BoxFuture<T>(pub(crate) Pin<Box<dyn std::future::Future<Output = T> + Send>>);

impl<T> std::future::Future for BoxFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.0.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for BoxFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxFuture")
    }
}

// === IdleTimeout ===

pin_project_lite::pin_project! {
    /// A body that fails with [`Error::timeout`](crate::Error::timeout) when no frame arrives
    /// for a while: it bounds the silence between stream chunks, not the length of a healthy
    /// stream.
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: std::time::Duration,
        // When the last frame came. The timer is moved only when it fires early, so a busy
        // stream does not lock the timer wheel once per frame.
        last_frame: tokio::time::Instant,
    }
}

// Only the `client` leaf wraps bodies with it.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
impl<B> IdleTimeout<B> {
    /// Wraps `inner`, failing after `idle` without a frame.
    pub(crate) fn new(inner: B, idle: std::time::Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
            last_frame: tokio::time::Instant::now(),
        }
    }
}

impl<B> fmt::Debug for IdleTimeout<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("idle", &self.idle)
            .finish()
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.last_frame = tokio::time::Instant::now();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => loop {
                match this.sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let deadline = *this.last_frame + *this.idle;
                        if deadline <= tokio::time::Instant::now() {
                            return Poll::Ready(Some(Err(crate::Error::timeout().into())));
                        }
                        // Frames came since the timer was set: wait for the rest of the idle time.
                        this.sleep.as_mut().reset(deadline);
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunked(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        Body::new(StreamBody::new(futures_util_stream(frames)))
    }

    fn futures_util_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
        struct Iter<T>(std::vec::IntoIter<T>);
        impl<T: Unpin> futures_core::Stream for Iter<T> {
            type Item = T;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
                Poll::Ready(self.0.next())
            }
        }
        Iter(items.into_iter())
    }

    #[tokio::test]
    async fn new_does_not_rebox_a_body() {
        let body = Body::new(Body::from("abc"));
        assert_eq!(body.as_bytes().map(|b| &b[..]), Some(&b"abc"[..]));
    }

    #[tokio::test]
    async fn collects_frames_under_the_limit() {
        let bytes = collect_limited(chunked(&["ab", "cd", "e"]), 5)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"abcde");
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit() {
        let err = collect_limited(chunked(&["ab", "cd", "ef"]), 5)
            .await
            .unwrap_err();
        assert!(matches!(err, LimitError::TooLarge { limit: 5 }));
    }

    #[tokio::test]
    async fn refuses_by_size_hint_before_reading() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert!(collect_limited(body, 4).await.is_err());
    }

    /// A body that sends one chunk and then nothing, forever.
    struct Endless(bool);

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"contents\":")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_gets_408_after_the_read_timeout() {
        use tower::{Layer, ServiceExt, service_fn};
        let svc = BodyLimitLayer::new(1024)
            .read_timeout(Duration::from_secs(5))
            .layer(service_fn(|_req: http::Request<Body>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("reached")))
            }));
        let req = http::Request::post("/v1beta/models/m:generateContent")
            .body(Endless(false))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::REQUEST_TIMEOUT);
        let v: serde_json::Value =
            serde_json::from_slice(&collect_limited(res.into_body(), 4096).await.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], 408);
    }

    #[tokio::test]
    async fn buffered_body_is_replayable() {
        let body = chunked(&["x", "y"]).buffer(10).await.unwrap();
        let copy = body.try_clone().unwrap();
        assert_eq!(&collect_limited(copy, 10).await.unwrap()[..], b"xy");
        assert_eq!(&collect_limited(body, 10).await.unwrap()[..], b"xy");
    }

    #[tokio::test]
    async fn body_limit_answers_413_in_the_route_dialect() {
        use tower::{ServiceExt, service_fn};
        let svc = tower::Layer::layer(
            &BodyLimitLayer::new(3),
            service_fn(|_req: http::Request<Body>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("reached")))
            }),
        );
        let req = http::Request::builder()
            .uri("/v1/chat/completions")
            .body(chunked(&["ab", "cd"]))
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        let v: serde_json::Value =
            serde_json::from_slice(&collect_limited(res.into_body(), 4096).await.unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let req = http::Request::builder()
            .uri("/v1beta/models")
            .body(chunked(&["ab"]))
            .unwrap();
        assert_eq!(
            svc.oneshot(req).await.unwrap().status(),
            http::StatusCode::OK
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_silent_body() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = IdleTimeout::new(
            StreamBody::new(Receiver(rx)),
            std::time::Duration::from_secs(5),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let mut body = std::pin::pin!(body);
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.downcast_ref::<crate::Error>().unwrap().is_timeout());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_lets_a_body_with_steady_frames_run_past_the_first_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = IdleTimeout::new(
            StreamBody::new(Receiver(rx)),
            std::time::Duration::from_secs(5),
        );
        let mut body = std::pin::pin!(body);
        let start = tokio::time::Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(std::time::Duration::from_secs(4)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
                    .await
                    .unwrap();
            }
            // Then silence, with the sender kept open.
            std::future::pending::<()>().await;
        });
        for _ in 0..3 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.downcast_ref::<crate::Error>().unwrap().is_timeout());
        // The last frame came at 12 s (paused clock): the timeout is 5 s after it.
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(17));
        feeder.abort();
    }

    struct Receiver<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Receiver<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
