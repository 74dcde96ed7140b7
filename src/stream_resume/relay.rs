//! The relay: forwards a Gemini stream event by event and resumes it when it breaks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::{Body as _, Frame};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::layer::Config;
use super::seam::overlap;
use crate::body::{Body, BoxError, collect_limited};
use crate::gemini::peek::{self, First, borrowed_str, present};
use crate::sse::{Decoder, JsonArrayDecoder, JsonArrayEncoder, LineEnding, RawSpan, encode_data};

/// The stream format of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `alt=sse`
    Sse,
    /// A streamed JSON array.
    JsonArray,
    /// `:generateContent`
    Unary,
}

// === Requests ===

/// Bodies up to this size are copied into the template (see [`RequestTemplate::new`]); a
/// larger one filled its read buffer on its own, so keeping it pins little else.
const OWN_BODY_UP_TO: usize = 64 * 1024;

/// A header value in its own allocation rather than a slice of the connection's buffer.
fn owned_value(value: &HeaderValue) -> HeaderValue {
    let mut owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    owned.set_sensitive(value.is_sensitive());
    owned
}

/// What is needed to issue the original request again, or a continuation of it.
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: http::Extensions,
    original: Bytes,
}

impl RequestTemplate {
    /// With `own`, the template owns its bytes, for a template that outlives the request by
    /// as long as a stream is open: the server parses the head and a small body as slices of
    /// its connection read buffer, and a clone of those slices would keep that buffer (8 KiB
    /// or more) alive per open stream while the connection allocates another.
    pub(crate) fn new(parts: &Parts, original: Bytes, own: bool) -> Self {
        if !own {
            let mut headers = parts.headers.clone();
            headers.remove(header::CONTENT_LENGTH);
            return Self {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers,
                extensions: parts.extensions.clone(),
                original,
            };
        }
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if name != header::CONTENT_LENGTH {
                headers.append(name.clone(), owned_value(value));
            }
        }
        let uri = Uri::try_from(parts.uri.to_string()).unwrap_or_else(|_| parts.uri.clone());
        let original = if original.len() <= OWN_BODY_UP_TO {
            Bytes::copy_from_slice(&original)
        } else {
            original
        };
        Self {
            method: parts.method.clone(),
            uri,
            version: parts.version,
            headers,
            extensions: parts.extensions.clone(),
            original,
        }
    }

    fn with_body(&self, body: Bytes) -> Request<Body> {
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }

    /// Tells an outer `UsageLayer` that the answer is being resumed.
    fn note_resume(&self) {
        if let Some(report) = self.extensions.get::<crate::facts::Report>() {
            report.record_resume();
        }
    }

    /// The original request again.
    pub(crate) fn original(&self) -> Request<Body> {
        self.with_body(self.original.clone())
    }

    /// The original request plus a `model` turn holding `sent` and a `user` turn asking to
    /// continue. System instruction, tools and generation config are kept as they were.
    fn continuation(&self, sent: &str, instruction: &str) -> Request<Body> {
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&self.original) else {
            return self.original();
        };
        let contents = body.entry("contents").or_insert_with(|| json!([]));
        if let Value::Array(turns) = contents {
            turns.push(json!({ "role": "model", "parts": [{ "text": sent }] }));
            turns.push(json!({ "role": "user", "parts": [{ "text": instruction }] }));
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| self.original.to_vec());
        self.with_body(Bytes::from(bytes))
    }
}

/// Calls a service once it is ready.
pub(crate) async fn call<S, B>(svc: &mut S, req: Request<Body>) -> Result<Response<B>, S::Error>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    svc.ready().await?.call(req).await
}

// === Streams ===

/// The response the client gets for a 200 stream: the same head, and a [`Relay`] body that
/// forwards `first`'s events and resumes the answer when it breaks.
pub(crate) fn respond<S, B>(
    inner: S,
    template: RequestTemplate,
    first: Response<Body>,
    mode: Mode,
    config: Arc<Config>,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = first.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let relay = Relay {
        inner: Some(inner),
        template,
        out: Output {
            queue: VecDeque::new(),
            run: None,
            mode,
            array: JsonArrayEncoder::new(),
        },
        answer: Answer {
            sent: Sent::new(config.max_resume_text_bytes),
            ..Answer::default()
        },
        attempt: Attempt::new(body, &config),
        stalls: 0,
        attempts: 1,
        why: None,
        state: State::Pumping,
        span: tracing::Span::current(),
        config,
    };
    Response::from_parts(parts, Body::new(relay))
}

/// Writes events to the client in the stream's format: frames wait in a queue that the body
/// hands out before it reads on.
struct Output {
    queue: VecDeque<Bytes>,
    /// SSE events passed on as they came, not queued yet: those that follow each other in one
    /// upstream buffer become one frame, sliced from it without a copy.
    run: Option<RawSpan>,
    mode: Mode,
    array: JsonArrayEncoder,
}

impl Output {
    /// Passes an event on unchanged: its own bytes when the decoder kept them.
    fn send_original(&mut self, json: &Bytes, raw: Option<RawSpan>) {
        let Some(raw) = raw else {
            return self.send(json);
        };
        if let Some(run) = &mut self.run {
            if run.join(&raw) {
                return;
            }
        }
        self.flush();
        self.run = Some(raw);
    }

    /// Queues the events held in the run.
    fn flush(&mut self) {
        if let Some(run) = self.run.take() {
            self.queue.push_back(run.bytes());
        }
    }

    fn send(&mut self, json: &[u8]) {
        self.flush();
        let bytes = match self.mode {
            Mode::JsonArray => self.array.element(json),
            _ => encode_data(json, LineEnding::CrLf),
        };
        self.queue.push_back(bytes);
    }

    fn close(&mut self) {
        self.flush();
        if self.mode == Mode::JsonArray {
            let end = self.array.close();
            self.queue.push_back(end);
        }
    }

    /// Ends the stream with an explicit Gemini error event.
    fn fail(&mut self, code: u16, status: &str, message: &str) {
        let err = json!({ "error": { "code": code, "message": message, "status": status } });
        let bytes = serde_json::to_vec(&err).unwrap_or_default();
        self.send(&bytes);
        self.close();
    }
}

/// Why an attempt ended early.
#[derive(Debug)]
enum Interruption {
    Dropped,
    EndedWithoutFinish,
    Stalled,
    Finish(#[allow(dead_code, reason = "read through Debug in logs")] String),
    ErrorEvent,
    Malformed,
}

enum Outcome {
    Finished,
    Interrupted(Interruption),
}

/// An attempt's `usageMetadata`: as it came (its JSON, copied into a buffer reused from event
/// to event: a slice of the event would keep the whole upstream frame), or already read.
enum Usage {
    Raw(Vec<u8>),
    Map(Map<String, Value>),
}

impl Usage {
    /// The usage object; `None` when the raw JSON is not one.
    fn into_map(self) -> Option<Map<String, Value>> {
        match self {
            Usage::Raw(raw) => serde_json::from_slice(&raw).ok(),
            Usage::Map(map) => Some(map),
        }
    }
}

/// What the relay knows about the answer so far.
#[derive(Default)]
struct Answer {
    /// Visible (non-thought) text sent to the client.
    sent: Sent,
    /// Usage of finished (interrupted) attempts, summed.
    usage_total: Option<Map<String, Value>>,
    /// The last usage of the current attempt.
    attempt_usage: Option<Usage>,
    function_called: bool,
    resumed: bool,
    /// Continuation text held until the seam is de-duplicated.
    seam: Option<String>,
    progress: bool,
}

/// The visible text sent to the client, kept for a continuation request up to a cap, so a
/// long stream is relayed in bounded memory.
#[derive(Default)]
struct Sent {
    text: String,
    /// Bytes sent in all, kept or not.
    total: usize,
    cap: usize,
    /// The text outgrew the cap and was dropped: this answer can no longer be resumed.
    dropped: bool,
}

impl Sent {
    fn new(cap: usize) -> Self {
        Sent {
            cap,
            ..Sent::default()
        }
    }

    fn push_str(&mut self, s: &str) {
        self.total += s.len();
        if self.dropped {
            return;
        }
        if self.text.len() + s.len() > self.cap {
            self.dropped = true;
            self.text = String::new();
            return;
        }
        self.text.push_str(s);
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn len(&self) -> usize {
        self.total
    }

    fn as_str(&self) -> &str {
        &self.text
    }
}

/// One upstream answer being read: its body, the decoder of its format, and its idle clock.
struct Attempt {
    body: Body,
    sse: Decoder,
    array: JsonArrayDecoder,
    ended: bool,
    /// When the last frame arrived; the idle timer is only moved when it fires early, so a
    /// busy stream does not touch the timer wheel per frame.
    last_frame: Instant,
    idle: Option<Pin<Box<Sleep>>>,
}

impl Attempt {
    fn new(body: Body, config: &Config) -> Self {
        Attempt {
            body,
            sse: Decoder::new()
                .max_event_bytes(config.max_event_bytes)
                .keep_raw(),
            array: JsonArrayDecoder::new().max_element_bytes(config.max_event_bytes),
            ended: false,
            last_frame: Instant::now(),
            idle: None,
        }
    }

    /// The next event of this attempt (with its bytes as they came, when kept), or why it
    /// ended without a finish; `Ok(None)` when no event is buffered and `may_read` is false.
    #[allow(clippy::type_complexity, reason = "one private call site")]
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        mode: Mode,
        idle: Option<Duration>,
        may_read: bool,
    ) -> Poll<Result<Option<(Bytes, Option<RawSpan>)>, Interruption>> {
        loop {
            let next = match mode {
                Mode::JsonArray => self.array.next_element().map(|e| e.map(|e| (e, None))),
                _ => self
                    .sse
                    .next_event()
                    .map(|e| e.map(|e| (e.data, self.sse.take_raw()))),
            };
            match next {
                Ok(Some(event)) => return Poll::Ready(Ok(Some(event))),
                Ok(None) if self.ended => {
                    return Poll::Ready(Err(Interruption::EndedWithoutFinish));
                }
                Ok(None) if !may_read => return Poll::Ready(Ok(None)),
                Ok(None) => {}
                Err(_) => return Poll::Ready(Err(Interruption::Malformed)),
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => {
                    let Some(t) = idle else {
                        return Poll::Pending;
                    };
                    let deadline = self.last_frame + t;
                    let sleep = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Err(Interruption::Stalled));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    self.sse.finish();
                    self.array.finish();
                }
                Poll::Ready(Some(Err(e))) => {
                    let timeout = e
                        .downcast_ref::<crate::Error>()
                        .is_some_and(crate::Error::is_timeout);
                    return Poll::Ready(Err(if timeout {
                        Interruption::Stalled
                    } else {
                        Interruption::Dropped
                    }));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if idle.is_some() {
                        self.last_frame = Instant::now();
                    }
                    if let Ok(d) = frame.into_data() {
                        match mode {
                            Mode::JsonArray => self.array.push(d),
                            _ => self.sse.push(d),
                        }
                    }
                }
            }
        }
    }
}

type CallFuture<S> =
    Pin<Box<dyn Future<Output = (S, Result<Response<Body>, BoxError>)> + Send + 'static>>;

enum State<S> {
    /// Reading the current attempt.
    Pumping,
    /// Waiting `retry_delay` before the next attempt.
    Waiting(Pin<Box<Sleep>>),
    /// The next attempt's request is on its way.
    Calling(CallFuture<S>),
    Done,
}

/// The body of a relayed stream. It is driven by the client's connection polling it: events
/// already read are handed out back to back (so the connection writes them in one go), nothing
/// runs in a task of its own, and dropping the body (the client went away) drops the upstream
/// answer at once.
pub(crate) struct Relay<S> {
    inner: Option<S>,
    template: RequestTemplate,
    config: Arc<Config>,
    out: Output,
    answer: Answer,
    attempt: Attempt,
    stalls: u32,
    attempts: u32,
    why: Option<Interruption>,
    state: State<S>,
    span: tracing::Span,
}

// `S` is never pinned: the body only moves it in and out of its call futures.
impl<S> Unpin for Relay<S> {}

impl<S, B> Relay<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// The current attempt broke: flush what is held, then give up or wait for the next one.
    fn interrupted(&mut self, why: Interruption) {
        flush_seam(&mut self.out, &mut self.answer, &self.config);
        fold_usage(&mut self.answer);
        if self.answer.function_called {
            tracing::warn!(
                ?why,
                "stream broke after a function call; it cannot be resumed"
            );
            self.out.fail(
                502,
                "UNAVAILABLE",
                "the upstream stream broke after a function call and cannot be resumed",
            );
            self.state = State::Done;
            return;
        }
        if self.answer.sent.dropped {
            tracing::warn!(
                ?why,
                chars = self.answer.sent.len(),
                "stream broke after more text than a continuation may carry; it cannot be resumed"
            );
            let msg = format!(
                "the upstream stream broke after more than {} bytes of answer, too long to resume",
                self.config.max_resume_text_bytes
            );
            self.out.fail(502, "UNAVAILABLE", &msg);
            self.state = State::Done;
            return;
        }
        if self.answer.progress {
            self.stalls = 0;
        }
        self.stalls += 1;
        self.why = Some(why);
        self.next_attempt();
    }

    /// Waits for the next attempt, within the budget of attempts without progress.
    fn next_attempt(&mut self) {
        if self.stalls > self.config.max_consecutive_retries {
            tracing::warn!(
                attempts = self.attempts,
                chars = self.answer.sent.len(),
                "stream could not be resumed; giving up"
            );
            let msg = format!(
                "the upstream stream was interrupted and {} attempts to resume it made no progress; the answer is incomplete",
                self.config.max_consecutive_retries
            );
            self.out.fail(503, "UNAVAILABLE", &msg);
            self.state = State::Done;
            return;
        }
        self.state = State::Waiting(Box::pin(tokio::time::sleep(self.config.retry_delay)));
    }

    /// Sends the next attempt: the original request, or a continuation of the answer so far.
    fn call_next(&mut self) {
        self.attempts += 1;
        let attempt = self.attempts;
        self.template.note_resume();
        tracing::info!(attempt, reason = ?self.why, chars = self.answer.sent.len(), "resuming interrupted stream");
        let req = if self.answer.sent.is_empty() {
            self.template.original()
        } else {
            self.template
                .continuation(self.answer.sent.as_str(), &self.config.continue_instruction)
        };
        let Some(mut inner) = self.inner.take() else {
            self.state = State::Done;
            return;
        };
        // Polled inside the request's span: this is it.
        let span = tracing::Span::current();
        self.state = State::Calling(Box::pin(
            async move {
                let res = call(&mut inner, req)
                    .await
                    .map(|r| r.map(Body::new))
                    .map_err(Into::into);
                (inner, res)
            }
            .instrument(span),
        ));
    }

    /// The next attempt answered.
    fn answered(&mut self, res: Result<Response<Body>, BoxError>) {
        let attempt = self.attempts;
        match res {
            Ok(res) if res.status() == http::StatusCode::OK => {
                self.attempt = Attempt::new(res.into_body(), &self.config);
                self.answer.resumed = true;
                self.answer.progress = false;
                self.answer.seam = (!self.answer.sent.is_empty()).then(String::new);
                self.state = State::Pumping;
            }
            Ok(res) => {
                let status = res.status();
                tracing::warn!(
                    attempt,
                    status = status.as_u16(),
                    "resume attempt refused by upstream"
                );
                if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
                    let msg = format!(
                        "the upstream refused to resume the interrupted stream (HTTP {})",
                        status.as_u16()
                    );
                    self.out.fail(
                        status.as_u16(),
                        crate::error::gemini_status_name(status),
                        &msg,
                    );
                    self.state = State::Done;
                    return;
                }
                self.stalls += 1;
                self.next_attempt();
            }
            Err(e) => {
                tracing::warn!(attempt, error = %crate::secret::scrub(&e.to_string()), "resume attempt failed");
                self.stalls += 1;
                self.next_attempt();
            }
        }
    }
}

impl<S, B> http_body::Body for Relay<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Every poll runs in the request's span (taken out for the borrow checker).
        let span = std::mem::replace(&mut this.span, tracing::Span::none());
        let polled = span.in_scope(|| this.poll_relay(cx));
        this.span = span;
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.out.queue.is_empty() && self.out.run.is_none()
    }
}

impl<S, B> Relay<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        loop {
            if let Some(bytes) = this.out.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.out.run.is_some() && !matches!(this.state, State::Pumping) {
                this.out.flush();
                continue;
            }
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Pumping => {
                    // Events already buffered join the run; it goes out before reading on.
                    let may_read = this.out.run.is_none();
                    let event = this.attempt.poll_event(
                        cx,
                        this.out.mode,
                        this.config.idle_timeout,
                        may_read,
                    );
                    let step = match ready!(event) {
                        Ok(Some((data, raw))) => {
                            handle_event(data, raw, &mut this.out, &mut this.answer, &this.config)
                        }
                        Ok(None) => {
                            this.out.flush();
                            Step::Continue
                        }
                        Err(why) => Step::Done(Outcome::Interrupted(why)),
                    };
                    match step {
                        Step::Continue => {}
                        Step::Done(Outcome::Finished) => {
                            this.out.close();
                            if this.answer.resumed {
                                tracing::info!(
                                    attempts = this.attempts,
                                    chars = this.answer.sent.len(),
                                    "resumed stream completed"
                                );
                            }
                            this.state = State::Done;
                        }
                        Step::Done(Outcome::Interrupted(why)) => this.interrupted(why),
                    }
                }
                State::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.call_next();
                }
                State::Calling(fut) => {
                    let (inner, res) = ready!(fut.as_mut().poll(cx));
                    this.inner = Some(inner);
                    this.answered(res);
                }
            }
        }
    }
}

/// Sends continuation text still held for the seam (the attempt broke before the seam window
/// filled): it is real progress.
fn flush_seam(out: &mut Output, answer: &mut Answer, config: &Config) {
    let Some(held) = answer.seam.take().filter(|h| !h.is_empty()) else {
        return;
    };
    let cut = overlap(answer.sent.as_str(), &held, config.min_overlap);
    let text = &held[cut..];
    if text.is_empty() {
        return;
    }
    answer.sent.push_str(text);
    answer.progress = true;
    let chunk = json!({ "candidates": [{ "content": { "parts": [{ "text": text }], "role": "model" }, "index": 0 }] });
    out.send(&serde_json::to_vec(&chunk).unwrap_or_default());
}

fn fold_usage(answer: &mut Answer) {
    if let Some(u) = answer.attempt_usage.take().and_then(Usage::into_map) {
        answer.usage_total = Some(match answer.usage_total.take() {
            None => u,
            Some(total) => add_usage(total, &u),
        });
    }
}

/// Adds every numeric count of `b` into `a` (prompt, candidates, thoughts, cached, tool use,
/// total), keeping `total = prompt + candidates + thoughts + toolUsePrompt` when both held it.
fn add_usage(mut a: Map<String, Value>, b: &Map<String, Value>) -> Map<String, Value> {
    for (k, v) in b {
        if let Some(n) = v.as_u64() {
            let sum = a.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
            a.insert(k.clone(), json!(sum));
        } else if !a.contains_key(k) {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

// === Events ===

/// Just what the relay needs of a common event, read without building a JSON tree: anything
/// this does not describe (an error, a finishReason, a blocked prompt, odd types) is handled
/// by the full reading in [`handle_event`].
///
/// Reading one allocates nothing: only the first candidate is kept, its parts are folded into
/// a [`peek::Parts`] as they are read, and the usage stays raw JSON until something sums it.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    candidates: First<PeekCandidate<'a>>,
    #[serde(default, deserialize_with = "present")]
    error: bool,
    #[serde(rename = "usageMetadata", default, borrow)]
    usage: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct PeekCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<PeekContent<'a>>,
    #[serde(rename = "finishReason", default, deserialize_with = "present")]
    finish_reason: bool,
}

#[derive(Deserialize)]
struct PeekContent<'a> {
    #[serde(default, borrow)]
    parts: peek::Parts<'a>,
}

/// Just what [`unary_needs_retry`] needs of a `:generateContent` answer.
#[derive(Deserialize)]
struct UnaryPeek<'a> {
    #[serde(default, borrow)]
    candidates: First<UnaryCandidate<'a>>,
}

#[derive(Deserialize)]
struct UnaryCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<PeekContent<'a>>,
    #[serde(
        rename = "finishReason",
        default,
        borrow,
        deserialize_with = "borrowed_str"
    )]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

/// Relays an event of a healthy, never-resumed stream that neither ends nor breaks it, as it
/// came; `false` when the event needs the full reading.
fn pass_through(
    data: &Bytes,
    raw: &mut Option<RawSpan>,
    out: &mut Output,
    answer: &mut Answer,
) -> bool {
    if answer.resumed || answer.seam.is_some() {
        return false;
    }
    let Ok(peek) = serde_json::from_slice::<Peek<'_>>(data) else {
        return false;
    };
    let Some(candidate) = peek.candidates.first() else {
        return false;
    };
    if peek.error || candidate.finish_reason {
        return false;
    }
    // Only an object counts as usage (the full reading ignores anything else too).
    if let Some(u) = peek.usage.filter(|u| u.get().starts_with('{')) {
        let raw = u.get().as_bytes();
        match &mut answer.attempt_usage {
            Some(Usage::Raw(buf)) => {
                buf.clear();
                buf.extend_from_slice(raw);
            }
            other => *other = Some(Usage::Raw(raw.to_vec())),
        }
    }
    if let Some(parts) = candidate.content.as_ref().map(|c| &c.parts) {
        answer.function_called |= parts.function_call;
        answer.sent.push_str(&parts.text);
        answer.progress |= !parts.text.is_empty();
        if parts.count > 0 {
            out.send_original(data, raw.take());
        }
    }
    true
}

enum Step {
    Continue,
    Done(Outcome),
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool) == Some(true)
}

fn visible_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| !is_thought(p))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// Handles one event: classifies it, rewrites it when needed, and forwards it.
fn handle_event(
    data: Bytes,
    mut raw: Option<RawSpan>,
    out: &mut Output,
    answer: &mut Answer,
    config: &Config,
) -> Step {
    if pass_through(&data, &mut raw, out, answer) {
        return Step::Continue;
    }
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(&data) else {
        return Step::Done(Outcome::Interrupted(Interruption::Malformed));
    };
    if event.contains_key("error") {
        tracing::warn!(error = %crate::secret::scrub(&event["error"].to_string()), "error event inside the stream");
        return Step::Done(Outcome::Interrupted(Interruption::ErrorEvent));
    }
    let mut modified = answer.resumed;
    if let Some(Value::Object(u)) = event.remove("usageMetadata") {
        answer.attempt_usage = Some(Usage::Map(u));
    }
    let candidate = event
        .get_mut("candidates")
        .and_then(Value::as_array_mut)
        .and_then(|c| c.first_mut())
        .and_then(Value::as_object_mut);
    let Some(candidate) = candidate else {
        // No candidate: a blocked prompt (final) or a usage-only chunk.
        let blocked = event
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some();
        if blocked {
            let original = (!modified).then_some((&data, raw));
            return finish(event, original, out, answer);
        }
        if answer.attempt_usage.is_some() && !answer.resumed {
            // Forward as it came (usage is re-added on the final chunk otherwise).
            out.send_original(&data, raw);
            return Step::Continue;
        }
        return Step::Continue;
    };

    let mut parts: Vec<Value> = candidate
        .get_mut("content")
        .and_then(|c| c.get_mut("parts"))
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    if answer.resumed && config.swallow_thoughts_after_retry {
        parts.retain(|p| !is_thought(p));
    }
    if parts.iter().any(|p| p.get("functionCall").is_some()) {
        answer.function_called = true;
    }
    let mut visible = visible_text(&parts);
    let finish_reason = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let retryable = finish_reason.as_deref().is_some_and(|f| {
        config.retryable_finish_reasons.contains(f)
            || (f == "STOP"
                && config.empty_stop_is_retryable
                && answer.sent.is_empty()
                && visible.is_empty()
                && !answer.function_called)
    });
    if retryable {
        candidate.remove("finishReason");
        modified = true;
    }

    // After a resume, hold the continuation's first text until the repeated tail can be cut.
    if let Some(seam) = answer.seam.as_mut() {
        seam.push_str(&visible);
        let other_parts = parts
            .iter()
            .any(|p| p.get("text").is_none() || is_thought(p));
        if seam.len() < config.seam_window && finish_reason.is_none() && !other_parts {
            return Step::Continue;
        }
        let held = answer.seam.take().unwrap_or_default();
        let cut = overlap(answer.sent.as_str(), &held, config.min_overlap);
        if cut > 0 {
            tracing::debug!(chars = cut, "dropped the repeated tail at the seam");
        }
        visible = held[cut..].to_owned();
        parts.retain(|p| p.get("text").is_none() || is_thought(p));
        if !visible.is_empty() {
            parts.insert(0, json!({ "text": visible }));
        }
        modified = true;
    }

    let has_content = !parts.is_empty();
    if let Some(content) = candidate.get_mut("content").and_then(Value::as_object_mut) {
        content.insert("parts".into(), Value::Array(parts));
    }
    answer.sent.push_str(&visible);
    if !visible.is_empty() {
        answer.progress = true;
    }

    if finish_reason.is_some() && !retryable {
        let original = (!modified).then_some((&data, raw));
        return finish(event, original, out, answer);
    }
    if has_content {
        if modified {
            out.send(&serde_json::to_vec(&event).unwrap_or_default());
        } else {
            out.send_original(&data, raw);
        }
    }
    if retryable {
        return Step::Done(Outcome::Interrupted(Interruption::Finish(
            finish_reason.unwrap_or_default(),
        )));
    }
    Step::Continue
}

/// Sends the final event with the usage of the whole answer (the event exactly as it came when
/// nothing was resumed).
fn finish(
    mut event: Map<String, Value>,
    original: Option<(&Bytes, Option<RawSpan>)>,
    out: &mut Output,
    answer: &mut Answer,
) -> Step {
    match original {
        Some((data, raw)) => out.send_original(data, raw),
        None => {
            fold_usage(answer);
            if let Some(u) = answer.usage_total.take() {
                event.insert("usageMetadata".into(), Value::Object(u));
            }
            out.send(&serde_json::to_vec(&event).unwrap_or_default());
        }
    }
    Step::Done(Outcome::Finished)
}

// === Unary ===

/// The answer of a `:generateContent` call, retried whole while it is empty or cut off.
pub(crate) async fn retry_unary<S, B>(
    mut inner: S,
    template: RequestTemplate,
    mut res: Response<Body>,
    config: std::sync::Arc<Config>,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut attempts = 0;
    loop {
        if res.status() != http::StatusCode::OK {
            return res;
        }
        let (parts, body) = res.into_parts();
        let Ok(bytes) = collect_limited(body, 64 * 1024 * 1024).await else {
            return crate::ApiError::bad_gateway("the upstream answer could not be read")
                .into_response(crate::Dialect::Gemini);
        };
        let again = unary_needs_retry(&bytes, &config);
        if again.is_none() || attempts >= config.max_consecutive_retries {
            if again == Some(NOT_JSON) {
                return not_json();
            }
            return Response::from_parts(parts, Body::from(bytes));
        }
        attempts += 1;
        template.note_resume();
        tracing::info!(
            attempt = attempts + 1,
            reason = again.unwrap_or_default(),
            "retrying an empty or cut-off answer"
        );
        tokio::time::sleep(config.retry_delay).await;
        res = match call(&mut inner, template.original()).await {
            Ok(r) => r.map(Body::new),
            Err(_) if again == Some(NOT_JSON) => return not_json(),
            Err(_) => return Response::from_parts(parts, Body::from(bytes)),
        };
    }
}

/// The retry reason of a 200 whose body is not JSON (an HTML error page from a middlebox, a
/// body cut short).
const NOT_JSON: &str = "not JSON";

fn not_json() -> Response<Body> {
    tracing::warn!("the upstream answered 200 with a body that is not JSON");
    crate::ApiError::bad_gateway("the upstream answered with a body that is not valid JSON")
        .into_response(crate::Dialect::Gemini)
}

fn unary_needs_retry(bytes: &[u8], config: &Config) -> Option<&'static str> {
    // The common answer, read into borrowed structs without building a JSON tree; anything
    // they do not describe (odd types, duplicate keys, not JSON) gets the full reading.
    if let Ok(peek) = serde_json::from_slice::<UnaryPeek<'_>>(bytes) {
        let c = peek.candidates.first()?;
        let finish = c.finish_reason.as_deref();
        if finish.is_some_and(|f| config.retryable_finish_reasons.contains(f)) {
            return Some("finish reason");
        }
        let has_call = c.content.as_ref().is_some_and(|c| c.parts.function_call);
        let has_text = c.content.as_ref().is_some_and(|c| !c.parts.text.is_empty());
        if !has_text
            && !has_call
            && finish.is_none_or(|f| f == "STOP")
            && config.empty_stop_is_retryable
        {
            return Some("empty answer");
        }
        return None;
    }
    unary_needs_retry_tree(bytes, config)
}

/// [`unary_needs_retry`] on a JSON tree: for answers the borrowed reading does not describe.
fn unary_needs_retry_tree(bytes: &[u8], config: &Config) -> Option<&'static str> {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Some(NOT_JSON);
    };
    let c = v.get("candidates")?.get(0)?;
    let parts = c
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    let finish = c.get("finishReason").and_then(Value::as_str);
    let has_call = parts.is_some_and(|p| p.iter().any(|p| p.get("functionCall").is_some()));
    let text = parts.map(|p| visible_text(p)).unwrap_or_default();
    if finish.is_some_and(|f| config.retryable_finish_reasons.contains(f)) {
        return Some("finish reason");
    }
    if text.is_empty()
        && !has_call
        && finish.is_none_or(|f| f == "STOP")
        && config.empty_stop_is_retryable
    {
        return Some("empty answer");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_unary_check_agrees_with_the_tree() {
        let config = Config::default();
        let bodies = [
            r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":true}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":false}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":null}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"cut"}]},"finishReason":"MAX_TOKENS"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"MALFORMED_FUNCTION_CALL"}]}"#,
            r#"{"candidates":[{"content":null,"finishReason":"SAFETY"}]}"#,
            r#"{"candidates":[{"finishReason":null}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"\u0041"}]}}]}"#,
            r#"{"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}"#,
            r#"{"usageMetadata":{"totalTokenCount":1}}"#,
        ];
        for body in bodies {
            assert!(
                serde_json::from_slice::<UnaryPeek<'_>>(body.as_bytes()).is_ok(),
                "{body}"
            );
            assert_eq!(
                unary_needs_retry(body.as_bytes(), &config),
                unary_needs_retry_tree(body.as_bytes(), &config),
                "{body}"
            );
        }
        // What the borrowed reading refuses still gets an answer, from the tree.
        for body in [
            r#"{"candidates":[{"content":{"parts":[{"text":3}]}}]}"#,
            r#"{"candidates":null}"#,
            "<html>",
        ] {
            assert_eq!(
                unary_needs_retry(body.as_bytes(), &config),
                unary_needs_retry_tree(body.as_bytes(), &config),
                "{body}"
            );
        }
        assert_eq!(unary_needs_retry(b"<html>", &config), Some(NOT_JSON));
    }
}
