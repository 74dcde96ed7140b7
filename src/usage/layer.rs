//! `UsageLayer`, its service, response future and body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::record::{UsageRecord, UsageSink};
use crate::body::{Body, BoxError};
use crate::facts::{Client, Identity, Report, Reported};
use crate::gemini::{Method, strip_models_prefix};
use crate::tokens::TokenScanner;

// === UsageLayer ===

/// Records every request it sees and hands the record to its [`UsageSink`]s when the response
/// body ends; see the [module docs](super).
#[derive(Clone)]
pub struct UsageLayer {
    sinks: Arc<[Arc<dyn UsageSink>]>,
    in_flight: Arc<AtomicUsize>,
    request_bodies: usize,
}

impl UsageLayer {
    /// A layer recording into `sink`.
    pub fn new(sink: impl UsageSink) -> Self {
        Self {
            sinks: Arc::from([Arc::new(sink) as Arc<dyn UsageSink>]),
            in_flight: Arc::default(),
            request_bodies: 0,
        }
    }

    /// A layer with no sink (only counting requests in flight, or serving as a tap under an
    /// outer `UsageLayer`).
    pub fn tap() -> Self {
        Self {
            sinks: Arc::from([]),
            in_flight: Arc::default(),
            request_bodies: 0,
        }
    }

    /// Also records into `sink` (sinks are called in the order added).
    pub fn sink(mut self, sink: impl UsageSink) -> Self {
        let mut sinks: Vec<Arc<dyn UsageSink>> = self.sinks.iter().cloned().collect();
        sinks.push(Arc::new(sink));
        self.sinks = sinks.into();
        self
    }

    /// Keeps the first `max_bytes` of each request body in its record's
    /// [`request_body`](UsageRecord::request_body), for sinks that log prompts. Default: 0,
    /// nothing kept. The body is copied as it streams through; it is never buffered whole.
    pub fn request_bodies(mut self, max_bytes: usize) -> Self {
        self.request_bodies = max_bytes;
        self
    }

    /// Requests that have entered the layer and whose response body has not ended yet
    /// (shared by every service this layer made).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Hands a record made elsewhere to every sink, as if a request had passed the layer: for
    /// traffic that is no request/response pair, such as a Live API session's turns.
    pub fn record(&self, record: &UsageRecord) {
        for sink in self.sinks.iter() {
            sink.record(record);
        }
    }
}

impl fmt::Debug for UsageLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageLayer")
            .field("sinks", &self.sinks.len())
            .field("in_flight", &self.in_flight())
            .field("request_bodies", &self.request_bodies)
            .finish()
    }
}

impl<S> Layer<S> for UsageLayer {
    type Service = Usage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Usage {
            inner,
            layer: self.clone(),
        }
    }
}

// === Usage ===

/// The service made by [`UsageLayer`].
#[derive(Clone, Debug)]
pub struct Usage<S> {
    inner: S,
    layer: UsageLayer,
}

impl<S> Usage<S> {
    /// Wraps `inner`, recording into `sink`.
    pub fn new(inner: S, sink: impl UsageSink) -> Self {
        UsageLayer::new(sink).layer(inner)
    }

    /// A layer recording into `sink`.
    pub fn layer(sink: impl UsageSink) -> UsageLayer {
        UsageLayer::new(sink)
    }

    crate::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for Usage<S>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut req = req.map(Body::new);
        let report = match Report::of(&req) {
            Some(report) => report.clone(),
            None => {
                let report = Report::new();
                req.extensions_mut().insert(report.clone());
                report
            }
        };
        crate::facts::resolve_call(&mut req);
        if !report.claim() {
            // Under an outer UsageLayer: report the inner view (the Gemini token counts).
            report.record_tapped();
            return ResponseFuture {
                inner: self.inner.call(req),
                pending: Some(Pending::Tap(report)),
            };
        }
        let handle = report;
        let (route, model) = route_and_model(&req);
        let client = req.extensions().get::<Identity>().map(|id| Client {
            name: id.name().to_owned(),
            id: id.id().to_owned(),
        });
        let mut record = UsageRecord::new(route, model);
        record.client = client;
        record.request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = if self.layer.request_bodies > 0 {
            let copy = BodyCopy::default();
            let max = self.layer.request_bodies;
            req = req.map(|b| copy.tee(b, max));
            Some(copy)
        } else {
            None
        };
        let pending = Recording {
            record,
            body,
            error_body: None,
            handle,
            start: Instant::now(),
            sinks: self.layer.sinks.clone(),
            guard: InFlight::enter(&self.layer.in_flight),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            pending: Some(Pending::Record(Box::new(pending))),
        }
    }
}

/// The route label and model of a request.
fn route_and_model(req: &Request<Body>) -> (String, String) {
    let path = req.uri().path();
    let openai = match path {
        _ if crate::Dialect::of(req) == crate::Dialect::Gemini => None,
        p if crate::Dialect::of(req) == crate::Dialect::Anthropic
            && p.starts_with("/v1/models") =>
        {
            Some("anthropic.models")
        }
        "/v1/chat/completions" => Some("openai.chat.completions"),
        "/v1/embeddings" => Some("openai.embeddings"),
        "/v1/images/generations" => Some("openai.images.generations"),
        "/v1/responses" => Some("openai.responses"),
        p if p.starts_with("/v1/responses/") => Some("openai.responses"),
        "/v1/models" => Some("openai.models"),
        p if p.starts_with("/v1/models/") && !p.contains(':') => Some("openai.models"),
        "/v1/messages" => Some("anthropic.messages"),
        "/v1/messages/count_tokens" => Some("anthropic.count_tokens"),
        _ => None,
    };
    if let Some(route) = openai {
        let model = match path.strip_prefix("/v1/models/") {
            Some(id) => id.to_owned(),
            None => req
                .body()
                .as_bytes()
                .and_then(|b| serde_json::from_slice::<ModelField>(b).ok())
                .and_then(|m| m.model)
                .unwrap_or_default(),
        };
        return (route.to_owned(), model);
    }
    // The Gemini call as the layers above resolved it.
    let Some(call) = crate::facts::gemini_call(req) else {
        return ("other".to_owned(), String::new());
    };
    let (model, method) = (strip_models_prefix(&call.model).to_owned(), call.method);
    let route = match method {
        Some(Method::Other) => "other",
        Some(m) => m.as_str(),
        None if model.is_empty() => "models.list",
        None => "models.get",
    };
    (route.to_owned(), model)
}

#[derive(serde::Deserialize)]
struct ModelField {
    model: Option<String>,
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request being recorded.
struct Recording {
    record: UsageRecord,
    /// The copy of the request body's start, when asked for.
    body: Option<BodyCopy>,
    /// The start of an error answer (status 400 or more), for [`UsageRecord::error`].
    error_body: Option<Vec<u8>>,
    handle: Report,
    start: Instant,
    sinks: Arc<[Arc<dyn UsageSink>]>,
    #[allow(dead_code, reason = "held for its Drop")]
    guard: InFlight,
}

/// Bytes of an error answer read for its message.
const ERROR_BODY_BYTES: usize = 16 * 1024;

impl Recording {
    /// Keeps the start of an error answer as it passes.
    fn capture(&mut self, data: &[u8]) {
        if let Some(buf) = &mut self.error_body {
            let room = ERROR_BODY_BYTES.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..room.min(data.len())]);
        }
    }

    /// Completes the record with what deeper layers reported and what the body showed.
    fn finish(mut self, scanned: Option<&TokenScanner>, completed: bool) {
        let Reported {
            client,
            key_id,
            attempts,
            resumes,
            rate_limited,
            model,
            model_version,
            tokens,
            tapped: _,
            claimed: _,
        } = self.handle.take();
        let r = &mut self.record;
        r.duration = self.start.elapsed();
        r.completed = completed;
        if r.key_id.is_none() {
            r.key_id = key_id;
        }
        if r.client.is_none() {
            r.client = client;
        }
        r.upstream_attempts = attempts;
        r.resumes = resumes;
        r.rate_limited = rate_limited;
        if let Some(m) = model {
            r.model = m;
        }
        // The model is the client's text: a key pasted there is masked before any sink sees it.
        if let std::borrow::Cow::Owned(masked) = crate::secret::scrub(&r.model) {
            r.model = masked;
        }
        r.tokens = tokens.or_else(|| scanned.and_then(TokenScanner::tokens));
        r.model_version = model_version
            .or_else(|| {
                scanned
                    .and_then(TokenScanner::model_version)
                    .map(str::to_owned)
            })
            .map(|v| crate::secret::scrub(&v).into_owned());
        if let Some(body) = &self.body {
            r.request_body = Some(body.take());
        }
        if let Some(answer) = self.error_body.take() {
            r.error = error_message(&answer);
        }
        for sink in self.sinks.iter() {
            sink.record(&self.record);
        }
    }
}

/// The start of a request body, copied as the body is read.
#[derive(Clone, Default)]
struct BodyCopy(Arc<std::sync::Mutex<bytes::BytesMut>>);

impl BodyCopy {
    /// The request body, copying its first `max` bytes here as they pass.
    fn tee(&self, body: Body, max: usize) -> Body {
        if let Some(bytes) = body.as_bytes() {
            self.push(bytes, max);
            return body;
        }
        Body::new(TeeBody {
            inner: body,
            copy: self.clone(),
            max,
        })
    }

    fn push(&self, data: &[u8], max: usize) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..room.min(data.len())]);
    }

    fn take(&self) -> Bytes {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *buf).freeze()
    }
}

/// A request body that copies its first bytes into a [`BodyCopy`].
struct TeeBody {
    inner: Body,
    copy: BodyCopy,
    max: usize,
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                self.copy.push(data, self.max);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Pending {
    Record(Box<Recording>),
    Tap(Report),
}

// === ResponseFuture ===

pin_project! {
    /// Response future of [`Usage`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(result.map(|res| res.map(Body::new)));
        };
        let res = match result {
            Ok(res) => res.map(Body::new),
            Err(e) => {
                if let Pending::Record(mut rec) = pending {
                    // The inner service failed without an answer: hyper drops the connection.
                    rec.record.status = 500;
                    rec.record.latency = rec.start.elapsed();
                    rec.finish(None, false);
                }
                return Poll::Ready(Err(e));
            }
        };
        let stream = is_stream(&res);
        let (parts, body) = res.into_parts();
        let mut scan = true;
        let sink = match pending {
            Pending::Tap(handle) => Sink::Tap(handle),
            Pending::Record(mut rec) => {
                rec.record.status = parts.status.as_u16();
                if rec.record.status >= 400 {
                    rec.error_body = Some(Vec::new());
                }
                rec.record.stream = stream;
                rec.record.latency = rec.start.elapsed();
                let (key_id, tapped) = rec.handle.with(|r| (r.key_id.clone(), r.tapped));
                if let Some(k) = key_id {
                    rec.record.key_id = Some(k); // the key whose answer is relayed
                }
                // A tap below reads these very bytes (a Gemini answer is relayed unchanged
                // through the layers between) and its counts win: reading them twice is
                // waste. A translated (OpenAI) answer is still read here, in case the Gemini
                // one carried no counts.
                if tapped && !rec.record.route.starts_with("openai.") {
                    scan = false;
                }
                Sink::Record(rec)
            }
        };
        if let Some(bytes) = body.as_bytes() {
            // A buffered answer: read it now and keep the body as it is.
            let mut sink = sink;
            sink.capture(bytes);
            let scanner = scan.then(|| {
                let mut scanner = TokenScanner::new();
                scanner.feed(bytes);
                scanner
            });
            sink.finish(scanner.as_ref(), true);
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        }
        let body = Body::new(ResponseBody {
            inner: body,
            scanner: scan.then(TokenScanner::new),
            sink: Some(sink),
        });
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// The message of an error answer: `error.message` (after `error.status` when there is one)
/// of a Gemini, OpenAI or Anthropic error body (or the first of a JSON array of them), else the
/// start of a text answer; whitespace collapsed, cut to
/// [`MAX_ERROR_CHARS`](super::record::MAX_ERROR_CHARS), anything like a key masked.
pub(crate) fn error_message(answer: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    let parsed = serde_json::from_str::<serde_json::Value>(text.trim()).ok();
    let parsed = match parsed {
        Some(serde_json::Value::Array(mut items)) if !items.is_empty() => Some(items.remove(0)),
        other => other,
    };
    let message = match &parsed {
        Some(v) => {
            let e = &v["error"];
            let message = e["message"]
                .as_str()
                .or_else(|| e.as_str())
                .or_else(|| v["message"].as_str())?;
            match e["status"].as_str().or_else(|| e["type"].as_str()) {
                Some(status) if !status.is_empty() => format!("{status}: {message}"),
                _ => message.to_owned(),
            }
        }
        // Not JSON (a proxy's HTML page, a cut-off body): its text, if it has any.
        None if text.trim_start().starts_with('<') => return None,
        None => text.into_owned(),
    };
    // Masked before it is cut, so no cut can leave part of a key unrecognised.
    let collapsed = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let collapsed = crate::secret::scrub(&collapsed).into_owned();
    if collapsed.is_empty() {
        return None;
    }
    let max = super::record::MAX_ERROR_CHARS;
    let cut: String = if collapsed.chars().count() > max {
        let mut s: String = collapsed.chars().take(max - 1).collect();
        s.push('…');
        s
    } else {
        collapsed
    };
    Some(cut)
}

fn is_stream<B>(res: &Response<B>) -> bool {
    res.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// Where the end of a body is reported.
enum Sink {
    Record(Box<Recording>),
    Tap(Report),
}

impl Sink {
    fn capture(&mut self, data: &[u8]) {
        if let Sink::Record(rec) = self {
            rec.capture(data);
        }
    }

    fn finish(self, scanned: Option<&TokenScanner>, completed: bool) {
        match self {
            Sink::Record(rec) => rec.finish(scanned, completed),
            Sink::Tap(handle) => {
                if let Some(t) = scanned.and_then(TokenScanner::tokens) {
                    handle.record_tokens(t);
                }
                if let Some(v) = scanned.and_then(TokenScanner::model_version) {
                    handle.record_model_version(v);
                }
            }
        }
    }
}

// === ResponseBody ===

/// Relays the answer frame by frame, scanning it for token counts, and records the request
/// when it ends (or is dropped).
struct ResponseBody {
    inner: Body,
    /// `None` when a tap below reads the token counts.
    scanner: Option<TokenScanner>,
    sink: Option<Sink>,
}

impl ResponseBody {
    fn finish(&mut self, completed: bool) {
        if let Some(sink) = self.sink.take() {
            // The body is over (or abandoned): let the layers below finish first, so that a
            // tap there has reported what it read before the record is made.
            drop(std::mem::take(&mut self.inner));
            sink.finish(self.scanner.as_ref(), completed);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    if let Some(scanner) = &mut self.scanner {
                        scanner.feed(data);
                    }
                    if let Some(sink) = &mut self.sink {
                        sink.capture(data);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => self.finish(false),
            None => self.finish(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}
