//! `StreamResumeLayer`, its configuration, the service and its response future.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};
use tracing::Instrument;

use super::relay::{self, Mode};
use crate::body::{Body, BoxError, BoxFuture};
use crate::gemini::Method;

/// The default instruction sent with a continuation request.
pub(crate) const DEFAULT_CONTINUE_INSTRUCTION: &str = "Continue exactly where you stopped, without repeating anything you have already written and without any preamble.";

/// The default cap on the answer text kept to resume a stream: 1 MiB, four times the longest
/// answer Gemini writes (65,536 output tokens).
pub(crate) const DEFAULT_MAX_RESUME_TEXT_BYTES: usize = 1024 * 1024;

/// The default bound on resume attempts for one answer, progress or not: 10.
pub const DEFAULT_MAX_RESUME_ATTEMPTS: u32 = 10;

/// How [`StreamResume`] behaves. Built through [`StreamResumeLayer`]'s setters.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) max_consecutive_retries: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) swallow_thoughts_after_retry: bool,
    pub(crate) retryable_finish_reasons: HashSet<String>,
    pub(crate) empty_stop_is_retryable: bool,
    pub(crate) continue_instruction: String,
    pub(crate) retry_unary: bool,
    pub(crate) min_overlap: usize,
    pub(crate) seam_window: usize,
    pub(crate) max_resume_attempts: u32,
    pub(crate) max_resume_text_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_consecutive_retries: 5,
            retry_delay: Duration::from_millis(500),
            idle_timeout: None,
            swallow_thoughts_after_retry: true,
            retryable_finish_reasons: ["OTHER".to_owned()].into_iter().collect(),
            empty_stop_is_retryable: true,
            continue_instruction: DEFAULT_CONTINUE_INSTRUCTION.to_owned(),
            retry_unary: false,
            min_overlap: 4,
            seam_window: 256,
            max_resume_attempts: DEFAULT_MAX_RESUME_ATTEMPTS,
            max_resume_text_bytes: DEFAULT_MAX_RESUME_TEXT_BYTES,
        }
    }
}

// === StreamResumeLayer ===

/// Repairs interrupted `:streamGenerateContent` streams; see the [module docs](super).
#[derive(Clone, Debug, Default)]
pub struct StreamResumeLayer {
    config: Arc<Config>,
}

impl StreamResumeLayer {
    /// The defaults: 5 attempts without progress, 10 resumes in all, 500 ms between attempts,
    /// no idle timeout, thoughts of continuations swallowed, `OTHER` and an empty `STOP`
    /// resumed.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Attempts in a row that add no text before the client gets an error (default 5).
    pub fn max_consecutive_retries(self, n: u32) -> Self {
        self.with(|c| c.max_consecutive_retries = n)
    }

    /// Upstream calls after the first for one answer, whether they made progress or not
    /// (default [`DEFAULT_MAX_RESUME_ATTEMPTS`]): an upstream that adds a little text to each
    /// continuation and breaks again cannot make an answer cost hundreds of calls. Past it the
    /// client gets an error event. Retries of a failed first call count too; `0` never
    /// resumes.
    pub fn max_resume_attempts(self, n: u32) -> Self {
        self.with(|c| c.max_resume_attempts = n)
    }

    /// Wait between attempts (default 500 ms).
    pub fn retry_delay(self, d: Duration) -> Self {
        self.with(|c| c.retry_delay = d)
    }

    /// A stream with no event for this long is interrupted and resumed (default: none).
    pub fn idle_timeout(self, d: impl Into<Option<Duration>>) -> Self {
        let d = d.into();
        self.with(|c| c.idle_timeout = d)
    }

    /// Drop thought parts of continuations (default on).
    pub fn swallow_thoughts_after_retry(self, on: bool) -> Self {
        self.with(|c| c.swallow_thoughts_after_retry = on)
    }

    /// finishReasons that mean "cut off, resume" (default `OTHER`). `SAFETY`-like blocks,
    /// `MAX_TOKENS` and a normal `STOP` are never resumed whatever this says.
    pub fn retryable_finish_reasons<I, S>(self, reasons: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: HashSet<String> = reasons.into_iter().map(Into::into).collect();
        self.with(|c| c.retryable_finish_reasons = set)
    }

    /// Whether a `STOP` with no text at all is resumed (default on).
    pub fn empty_stop_is_retryable(self, on: bool) -> Self {
        self.with(|c| c.empty_stop_is_retryable = on)
    }

    /// The user turn that asks the model to continue.
    pub fn continue_instruction(self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.with(|c| c.continue_instruction = text)
    }

    /// Also retry whole `:generateContent` answers that are empty or end with a retryable
    /// finishReason (default off).
    pub fn retry_unary(self, on: bool) -> Self {
        self.with(|c| c.retry_unary = on)
    }

    /// The answer text kept to build a continuation (default 1 MiB, four times the longest
    /// answer Gemini writes). A stream whose visible text outgrows it is still
    /// relayed, in bounded memory, but if it then breaks the client gets an error event
    /// instead of a resume.
    pub fn max_resume_text_bytes(self, bytes: usize) -> Self {
        self.with(|c| c.max_resume_text_bytes = bytes)
    }

    /// Shortest repeated tail that is dropped at a seam (default 4 characters).
    pub fn min_overlap(self, chars: usize) -> Self {
        self.with(|c| c.min_overlap = chars.max(1))
    }
}

impl<S> Layer<S> for StreamResumeLayer {
    type Service = StreamResume<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamResume {
            inner,
            config: self.config.clone(),
        }
    }
}

// === StreamResume ===

/// Repairs interrupted Gemini streams; see the [module docs](super).
#[derive(Clone)]
pub struct StreamResume<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> StreamResume<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        StreamResumeLayer::new().layer(inner)
    }

    /// A [`StreamResumeLayer`] with the defaults.
    pub fn layer() -> StreamResumeLayer {
        StreamResumeLayer::new()
    }

    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for StreamResume<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamResume")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StreamResume<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut req = req.map(Body::new);
        let method = crate::facts::resolve_call(&mut req).and_then(|p| p.method);
        let max_event_bytes = crate::sse::MaxEventBytes::of(req.extensions());
        let replayable = req.body().as_bytes().cloned();
        let config = self.config.clone();
        let mode = match (method, &replayable) {
            (Some(Method::StreamGenerateContent), Some(_))
                if req.method() == http::Method::POST =>
            {
                let sse = req
                    .uri()
                    .query()
                    .and_then(|q| crate::credential::query_param(q, "alt"))
                    .is_some_and(|alt| alt == "sse");
                Some(if sse { Mode::Sse } else { Mode::JsonArray })
            }
            (Some(Method::GenerateContent), Some(_))
                if config.retry_unary && req.method() == http::Method::POST =>
            {
                Some(Mode::Unary)
            }
            _ => None,
        };
        let Some(mode) = mode else {
            let fut = inner.call(req);
            return BoxFuture(Box::pin(
                async move { fut.await.map(|res| res.map(Body::new)) },
            ));
        };
        let original = replayable.unwrap_or_default();
        let (parts, body) = req.into_parts();
        // A stream's template lives as long as the stream: it must not pin the server's buffer.
        let template = relay::RequestTemplate::new(&parts, original, mode != Mode::Unary);
        let first = inner.call(Request::from_parts(parts, body));
        let span = tracing::Span::current();
        BoxFuture(Box::pin(
            async move {
                // A failure before any byte is a plain retry of the original request.
                let mut res = first.await;
                let mut failures = 0;
                while res.is_err()
                    && mode != Mode::Unary
                    && failures < config.max_consecutive_retries
                    && failures < config.max_resume_attempts
                {
                    failures += 1;
                    tracing::warn!(
                        attempt = failures,
                        "stream request failed before any byte; retrying"
                    );
                    tokio::time::sleep(config.retry_delay).await;
                    res = relay::call(&mut inner, template.original()).await;
                }
                let res = res?.map(Body::new);
                if mode == Mode::Unary {
                    let max = crate::sse::whole_answer_cap(max_event_bytes);
                    return Ok(relay::retry_unary(inner, template, res, config, max).await);
                }
                if res.status() != StatusCode::OK {
                    return Ok(res);
                }
                Ok(relay::respond(
                    inner,
                    template,
                    res,
                    mode,
                    config,
                    failures + 1,
                    max_event_bytes,
                ))
            }
            .instrument(span),
        ))
    }
}

/// Response future of [`StreamResume`]: one boxed future type for every layer whose work is `async`.
pub type ResponseFuture<E> = crate::body::BoxFuture<Result<Response<Body>, E>>;
