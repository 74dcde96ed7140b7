//! The [`Relay`] body: hands out events, and breaks, waits and retries attempts as needed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Frame;
use tokio::time::Sleep;
use tower::Service;
use tracing::Instrument;

use super::answer::{Answer, Sent, flush_seam, fold_usage};
use super::attempt::{Attempt, Fault, Interruption};
use super::event::{Outcome, Step, handle_event};
use super::output::Output;
use super::request::{Mode, RequestTemplate, call};
use crate::body::{Body, BoxError};
use crate::sse::JsonArrayEncoder;
use crate::stream_resume::layer::Config;

/// The response the client gets for a 200 stream: the same head, and a [`Relay`] body that
/// forwards `first`'s events and resumes the answer when it breaks. `calls` is how many
/// upstream calls `first` took (it may have followed failed ones); every event is refused
/// past `max_event_bytes`.
pub(crate) fn respond<S, B>(
    inner: S,
    template: RequestTemplate,
    first: Response<Body>,
    mode: Mode,
    config: Arc<Config>,
    calls: u32,
    max_event_bytes: usize,
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
        attempt: Attempt::new(body, max_event_bytes),
        max_event_bytes,
        stalls: 0,
        attempts: calls.max(1),
        why: None,
        state: State::Pumping,
        span: tracing::Span::current(),
        config,
    };
    Response::from_parts(parts, Body::new(relay))
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
    max_event_bytes: usize,
    stalls: u32,
    /// Upstream calls made for this answer (the first included).
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
        if self.answer.media {
            tracing::warn!(
                ?why,
                "stream broke after an image or other inline data; a continuation would generate it again"
            );
            self.out.fail(
                502,
                "UNAVAILABLE",
                "the upstream stream broke after an image was sent; it is not resumed, as that \
                 would generate (and bill) the image again",
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

    /// The stream met a fault that is not an interruption: it ends now with an error event,
    /// and nothing is asked of the upstream again.
    fn faulted(&mut self, fault: Fault) {
        flush_seam(&mut self.out, &mut self.answer, &self.config);
        tracing::warn!(
            ?fault,
            attempt = self.attempts,
            chars = self.answer.sent.len(),
            "stream ended by a fault that is not an interruption; not resumed"
        );
        self.attempt.close();
        self.out.fail(502, "UNAVAILABLE", &fault.message());
        self.state = State::Done;
    }

    /// Waits for the next attempt, within the budget of attempts without progress and the
    /// budget of resumes in all.
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
        let resumes = self.attempts.saturating_sub(1);
        if resumes >= self.config.max_resume_attempts {
            tracing::warn!(
                attempts = self.attempts,
                chars = self.answer.sent.len(),
                "stream interrupted again after the most resume attempts allowed; giving up"
            );
            let msg = format!(
                "the upstream stream was interrupted again after {resumes} attempts to resume \
                 it, the most allowed; the answer is incomplete"
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
                self.attempt = Attempt::new(res.into_body(), self.max_event_bytes);
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
                        Err(why) => Step::Done(why.into()),
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
                        Step::Done(Outcome::Fault(fault)) => this.faulted(fault),
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
