//! The relay: forwards a Gemini stream event by event and resumes it when it breaks.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, Uri, Version, header};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::layer::Config;
use super::seam::overlap;
use crate::body::{Body, BoxError, collect_limited};
use crate::sse::{Decoder, JsonArrayDecoder, JsonArrayEncoder, LineEnding, encode_data};

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
    pub(crate) fn new(parts: &Parts, original: Bytes) -> Self {
        let mut headers = parts.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
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

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// Starts relaying `first` (a 200 stream) and returns the response the client gets: the same
/// head, and a body fed by the relay task.
pub(crate) fn spawn<S, B>(
    inner: S,
    template: RequestTemplate,
    first: Response<Body>,
    mode: Mode,
    config: std::sync::Arc<Config>,
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
    let (tx, rx) = mpsc::channel::<FrameResult>(2);
    let out = Output {
        tx,
        mode,
        array: JsonArrayEncoder::new(),
    };
    let task = relay(inner, template, body, out, config);
    tokio::spawn(task.instrument(tracing::Span::current()));
    Response::from_parts(
        parts,
        Body::new(http_body_util::StreamBody::new(Receiver(rx))),
    )
}

struct Receiver(mpsc::Receiver<FrameResult>);

impl futures_core::Stream for Receiver {
    type Item = FrameResult;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<FrameResult>> {
        self.0.poll_recv(cx)
    }
}

/// Writes events to the client in the stream's format.
struct Output {
    tx: mpsc::Sender<FrameResult>,
    mode: Mode,
    array: JsonArrayEncoder,
}

impl Output {
    /// Sends one event; false when the client has gone.
    async fn send(&mut self, json: &[u8]) -> bool {
        let bytes = match self.mode {
            Mode::JsonArray => self.array.element(json),
            _ => encode_data(json, LineEnding::CrLf),
        };
        self.tx.send(Ok(Frame::data(bytes))).await.is_ok()
    }

    async fn close(&mut self) {
        if self.mode == Mode::JsonArray {
            let end = self.array.close();
            let _ = self.tx.send(Ok(Frame::data(end))).await;
        }
    }

    /// Ends the stream with an explicit Gemini error event.
    async fn fail(&mut self, code: u16, status: &str, message: &str) {
        let err = json!({ "error": { "code": code, "message": message, "status": status } });
        let bytes = serde_json::to_vec(&err).unwrap_or_default();
        self.send(&bytes).await;
        self.close().await;
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
    ClientGone,
    Interrupted(Interruption),
}

/// What the relay knows about the answer so far.
#[derive(Default)]
struct Answer {
    /// Visible (non-thought) text sent to the client.
    sent: String,
    /// Usage of finished (interrupted) attempts, summed.
    usage_total: Option<Map<String, Value>>,
    /// The last usage of the current attempt.
    attempt_usage: Option<Map<String, Value>>,
    function_called: bool,
    resumed: bool,
    /// Continuation text held until the seam is de-duplicated.
    seam: Option<String>,
    progress: bool,
}

async fn relay<S, B>(
    mut inner: S,
    template: RequestTemplate,
    mut body: Body,
    mut out: Output,
    config: std::sync::Arc<Config>,
) where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut answer = Answer::default();
    let mut stalls: u32 = 0;
    let mut attempt: u32 = 1;
    loop {
        let why = match pump(&mut body, &mut out, &mut answer, &config).await {
            Outcome::Finished => {
                out.close().await;
                if answer.resumed {
                    tracing::info!(
                        attempts = attempt,
                        chars = answer.sent.len(),
                        "resumed stream completed"
                    );
                }
                return;
            }
            Outcome::ClientGone => return,
            Outcome::Interrupted(why) => why,
        };
        if !flush_seam(&mut out, &mut answer, &config).await {
            return;
        }
        fold_usage(&mut answer);
        if answer.function_called {
            tracing::warn!(
                ?why,
                "stream broke after a function call; it cannot be resumed"
            );
            out.fail(
                502,
                "UNAVAILABLE",
                "the upstream stream broke after a function call and cannot be resumed",
            )
            .await;
            return;
        }
        if answer.progress {
            stalls = 0;
        }
        stalls += 1;
        // Start attempts until one streams, within the budget of attempts without progress.
        loop {
            if stalls > config.max_consecutive_retries {
                tracing::warn!(
                    attempts = attempt,
                    chars = answer.sent.len(),
                    "stream could not be resumed; giving up"
                );
                let msg = format!(
                    "the upstream stream was interrupted and {} attempts to resume it made no progress; the answer is incomplete",
                    config.max_consecutive_retries
                );
                out.fail(503, "UNAVAILABLE", &msg).await;
                return;
            }
            tokio::time::sleep(config.retry_delay).await;
            if out.tx.is_closed() {
                return;
            }
            attempt += 1;
            tracing::info!(attempt, reason = ?why, chars = answer.sent.len(), "resuming interrupted stream");
            let req = if answer.sent.is_empty() {
                template.original()
            } else {
                template.continuation(&answer.sent, &config.continue_instruction)
            };
            match call(&mut inner, req).await {
                Ok(res) if res.status() == http::StatusCode::OK => {
                    body = Body::new(res.into_body());
                    answer.resumed = true;
                    answer.progress = false;
                    answer.seam = (!answer.sent.is_empty()).then(String::new);
                    break;
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
                        out.fail(
                            status.as_u16(),
                            crate::error::gemini_status_name(status),
                            &msg,
                        )
                        .await;
                        return;
                    }
                    stalls += 1;
                }
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::warn!(attempt, error = %crate::secret::scrub(&e.to_string()), "resume attempt failed");
                    stalls += 1;
                }
            }
        }
    }
}

/// Sends continuation text still held for the seam (the attempt broke before the seam window
/// filled): it is real progress. Returns false when the client has gone.
async fn flush_seam(out: &mut Output, answer: &mut Answer, config: &Config) -> bool {
    let Some(held) = answer.seam.take().filter(|h| !h.is_empty()) else {
        return true;
    };
    let cut = overlap(&answer.sent, &held, config.min_overlap);
    let text = &held[cut..];
    if text.is_empty() {
        return true;
    }
    answer.sent.push_str(text);
    answer.progress = true;
    let chunk = json!({ "candidates": [{ "content": { "parts": [{ "text": text }], "role": "model" }, "index": 0 }] });
    out.send(&serde_json::to_vec(&chunk).unwrap_or_default())
        .await
}

fn fold_usage(answer: &mut Answer) {
    if let Some(u) = answer.attempt_usage.take() {
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

/// Reads one attempt's events and relays them until the answer finishes or breaks.
async fn pump(body: &mut Body, out: &mut Output, answer: &mut Answer, config: &Config) -> Outcome {
    let mut sse = Decoder::new().max_event_bytes(config.max_event_bytes);
    let mut array = JsonArrayDecoder::new().max_element_bytes(config.max_event_bytes);
    let mut ended = false;
    loop {
        let next = match out.mode {
            Mode::JsonArray => array.next_element(),
            _ => sse.next_event().map(|e| e.map(|e| e.data)),
        };
        let data = match next {
            Ok(Some(data)) => data,
            Ok(None) if ended => return Outcome::Interrupted(Interruption::EndedWithoutFinish),
            Ok(None) => {
                let frame = match config.idle_timeout {
                    Some(t) => match tokio::time::timeout(t, body.frame()).await {
                        Ok(f) => f,
                        Err(_) => return Outcome::Interrupted(Interruption::Stalled),
                    },
                    None => body.frame().await,
                };
                match frame {
                    None => {
                        ended = true;
                        sse.finish();
                        array.finish();
                    }
                    Some(Err(e)) => {
                        let timeout = e
                            .downcast_ref::<crate::Error>()
                            .is_some_and(crate::Error::is_timeout);
                        return Outcome::Interrupted(if timeout {
                            Interruption::Stalled
                        } else {
                            Interruption::Dropped
                        });
                    }
                    Some(Ok(frame)) => {
                        if let Ok(d) = frame.into_data() {
                            match out.mode {
                                Mode::JsonArray => array.push(d),
                                _ => sse.push(d),
                            }
                        }
                    }
                }
                continue;
            }
            Err(_) => return Outcome::Interrupted(Interruption::Malformed),
        };
        match handle_event(data, out, answer, config).await {
            Step::Continue => {}
            Step::Done(outcome) => return outcome,
        }
    }
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
async fn handle_event(data: Bytes, out: &mut Output, answer: &mut Answer, config: &Config) -> Step {
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(&data) else {
        return Step::Done(Outcome::Interrupted(Interruption::Malformed));
    };
    if event.contains_key("error") {
        tracing::warn!(error = %crate::secret::scrub(&event["error"].to_string()), "error event inside the stream");
        return Step::Done(Outcome::Interrupted(Interruption::ErrorEvent));
    }
    let mut modified = answer.resumed;
    if let Some(Value::Object(u)) = event.remove("usageMetadata") {
        answer.attempt_usage = Some(u);
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
            let original = (!modified).then_some(&data);
            return finish(event, original, out, answer).await;
        }
        if answer.attempt_usage.is_some() && !answer.resumed {
            // Forward as it came (usage is re-added on the final chunk otherwise).
            return if out.send(&data).await {
                Step::Continue
            } else {
                Step::Done(Outcome::ClientGone)
            };
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
        let cut = overlap(&answer.sent, &held, config.min_overlap);
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
        let original = (!modified).then_some(&data);
        return finish(event, original, out, answer).await;
    }
    if has_content {
        let ok = if modified {
            out.send(&serde_json::to_vec(&event).unwrap_or_default())
                .await
        } else {
            out.send(&data).await
        };
        if !ok {
            return Step::Done(Outcome::ClientGone);
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
async fn finish(
    mut event: Map<String, Value>,
    original: Option<&Bytes>,
    out: &mut Output,
    answer: &mut Answer,
) -> Step {
    let sent = match original {
        Some(data) => out.send(data).await,
        None => {
            fold_usage(answer);
            if let Some(u) = answer.usage_total.take() {
                event.insert("usageMetadata".into(), Value::Object(u));
            }
            out.send(&serde_json::to_vec(&event).unwrap_or_default())
                .await
        }
    };
    if sent {
        Step::Done(Outcome::Finished)
    } else {
        Step::Done(Outcome::ClientGone)
    }
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
