//! What is recorded about one request, where it goes, and the handle inner layers report to.

use std::sync::Arc;
use std::time::Duration;

pub use crate::facts::{Client, Tokens};

// === UsageRecord ===

/// Everything recorded about one finished request. Holds no secret: the key is its id (a
/// fingerprint), the client its name and masked token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The request's `x-request-id`, when it has one (set by `RequestIdLayer` outside).
    pub request_id: Option<String>,
    /// The start of the request's first `capture` bytes, when the layer was asked to keep
    /// request bodies ([`UsageLayer::request_bodies`](super::UsageLayer::request_bodies)).
    /// It is what the client sent: prompts included.
    pub request_body: Option<bytes::Bytes>,
    /// The authenticated client, if any.
    pub client: Option<Client>,
    /// The id of the upstream key that answered (a fingerprint), if a key was used.
    pub key_id: Option<String>,
    /// Upstream calls made for the request, retries and stream resumes included.
    pub upstream_attempts: u32,
    /// The model (without `models/`), or empty for routes without one.
    pub model: String,
    /// The answer's `modelVersion`: the model that served as Google names it (a dated version
    /// for an alias or preview), when the answer carried one.
    pub model_version: Option<String>,
    /// The route: a native method (`generateContent`, `streamGenerateContent`, `countTokens`,
    /// `models.list`, `models.get`, ...) or an OpenAI route (`openai.chat.completions`,
    /// `openai.embeddings`, `openai.models`), else `other`.
    pub route: String,
    /// The response status sent to the client.
    pub status: u16,
    /// Whether the answer was a stream.
    pub stream: bool,
    /// Time until the response head.
    pub latency: Duration,
    /// Time until the response body ended (or was dropped).
    pub duration: Duration,
    /// Token counts of the answer (`None` when the answer carried none).
    pub tokens: Option<Tokens>,
    /// Interrupted streams (or cut-off answers) resumed by `StreamResume`.
    pub resumes: u32,
    /// Whether a rate limit of the gateway refused the request.
    pub rate_limited: bool,
    /// False when the body ended early: the client went away or the stream failed.
    pub completed: bool,
    /// For an answer with a status of 400 or more: the message of its error body
    /// (`error.message`, with `error.status` before it when there is one), at most
    /// [`MAX_ERROR_CHARS`] characters, anything that looks like a key masked.
    pub error: Option<String>,
}

/// The longest [`UsageRecord::error`] kept, in characters.
pub const MAX_ERROR_CHARS: usize = 300;

impl UsageRecord {
    /// An empty record for `route` and `model` (status 0); used by tests and custom layers.
    pub fn new(route: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            request_id: None,
            request_body: None,
            client: None,
            key_id: None,
            upstream_attempts: 0,
            model: model.into(),
            model_version: None,
            route: route.into(),
            status: 0,
            stream: false,
            latency: Duration::ZERO,
            duration: Duration::ZERO,
            tokens: None,
            resumes: 0,
            rate_limited: false,
            completed: true,
            error: None,
        }
    }

    /// Sets the status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Sets the client.
    pub fn with_client(mut self, name: impl Into<String>, id: impl Into<String>) -> Self {
        self.client = Some(Client {
            name: name.into(),
            id: id.into(),
        });
        self
    }

    /// Sets the upstream key id.
    pub fn with_key(mut self, id: impl Into<String>) -> Self {
        self.key_id = Some(id.into());
        self.upstream_attempts = self.upstream_attempts.max(1);
        self
    }

    /// Sets the token counts.
    pub fn with_tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = Some(tokens);
        self
    }
}

// === UsageSink ===

/// Where finished requests go: an in-memory aggregate ([`UsageStats`](super::UsageStats)),
/// metrics, a database. Called once per request when its body has ended, on the task that
/// polled the body, so it must be quick (hand slow work to a queue).
pub trait UsageSink: Send + Sync + 'static {
    /// Records one finished request.
    fn record(&self, record: &UsageRecord);
}

impl<F> UsageSink for F
where
    F: Fn(&UsageRecord) + Send + Sync + 'static,
{
    fn record(&self, record: &UsageRecord) {
        self(record)
    }
}

impl<T: UsageSink + ?Sized> UsageSink for Arc<T> {
    fn record(&self, record: &UsageRecord) {
        (**self).record(record)
    }
}
