//! What is recorded about one request, where it goes, and the handle inner layers report to.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// === Tokens ===

/// Token counts of one answer, from its `usageMetadata` (or an OpenAI `usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tokens {
    /// `promptTokenCount`.
    pub prompt: u64,
    /// `candidatesTokenCount`: the visible answer.
    pub output: u64,
    /// `thoughtsTokenCount`: thinking tokens.
    pub thoughts: u64,
    /// `cachedContentTokenCount`: prompt tokens served from a cache.
    pub cached: u64,
    /// `totalTokenCount` (the sum of the others when the answer has none).
    pub total: u64,
}

impl Tokens {
    /// Adds `other` into `self`, saturating.
    pub fn add(&mut self, other: &Tokens) {
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.output = self.output.saturating_add(other.output);
        self.thoughts = self.thoughts.saturating_add(other.thoughts);
        self.cached = self.cached.saturating_add(other.cached);
        self.total = self.total.saturating_add(other.total);
    }
}

// === Client ===

/// Who made a request: the name and masked id of its [`Identity`](crate::auth::Identity).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The client's name (a label such as `client-1`, never the token).
    pub name: String,
    /// The masked token, e.g. `sk-a…9xQk`.
    pub id: String,
}

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
    /// The id of the upstream key that answered (see
    /// [`KeyId`](crate::key_rotation::KeyId)), if a key was used.
    pub key_id: Option<String>,
    /// Upstream calls made for the request, retries and stream resumes included.
    pub upstream_attempts: u32,
    /// The model (without `models/`), or empty for routes without one.
    pub model: String,
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
}

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
            route: route.into(),
            status: 0,
            stream: false,
            latency: Duration::ZERO,
            duration: Duration::ZERO,
            tokens: None,
            resumes: 0,
            rate_limited: false,
            completed: true,
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

// === UsageHandle ===

/// The report of one request in flight, put in the request's extensions by
/// [`UsageLayer`](super::UsageLayer) so that deeper layers can say what they did: the key
/// rotation layer the key it used, stream resume each resume, the rate limiter a refusal.
///
/// Cloning shares the report. Layers built without the `usage` feature never look for it.
#[derive(Clone, Default)]
pub struct UsageHandle(Arc<Mutex<Report>>);

/// What deeper layers reported.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub(crate) client: Option<Client>,
    pub(crate) key_id: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) resumes: u32,
    pub(crate) rate_limited: bool,
    pub(crate) model: Option<String>,
    pub(crate) tokens: Option<Tokens>,
    /// A tap below reads the answer's token counts (see [`UsageLayer::tap`](super::UsageLayer::tap)).
    pub(crate) tapped: bool,
}

impl UsageHandle {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Report> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The request was authenticated as `identity` (by [`BearerAuth`](crate::auth::BearerAuth)).
    pub fn record_client(&self, identity: &crate::auth::Identity) {
        self.lock().client = Some(Client {
            name: identity.name().to_owned(),
            id: identity.id().to_owned(),
        });
    }

    /// An upstream call is made with the key of id `key_id` (a fingerprint, never the key).
    pub fn record_key(&self, key_id: &str) {
        let mut r = self.lock();
        r.attempts = r.attempts.saturating_add(1);
        if r.key_id.as_deref() != Some(key_id) {
            r.key_id = Some(key_id.to_owned());
        }
    }

    /// An interrupted answer is being resumed.
    pub fn record_resume(&self) {
        let mut r = self.lock();
        r.resumes = r.resumes.saturating_add(1);
    }

    /// A rate limit of the gateway refused the request.
    pub fn record_rate_limited(&self) {
        self.lock().rate_limited = true;
    }

    /// The model the request really went to (after translation or aliasing).
    pub fn record_model(&self, model: &str) {
        self.lock().model = Some(model.to_owned());
    }

    /// The token counts of the answer, as seen by an inner layer (they win over what the
    /// outer layer reads from the translated answer).
    pub fn record_tokens(&self, tokens: Tokens) {
        self.lock().tokens = Some(tokens);
    }

    /// A tap below reads the answer it relays and reports its token counts.
    pub(crate) fn record_tapped(&self) {
        self.lock().tapped = true;
    }

    /// Reads the report in place (no copy of its strings).
    pub(crate) fn with_report<T>(&self, f: impl FnOnce(&Report) -> T) -> T {
        f(&self.lock())
    }

    /// Takes the report out, for the one layer that completes the record.
    pub(crate) fn take_report(&self) -> Report {
        std::mem::take(&mut *self.lock())
    }
}

impl fmt::Debug for UsageHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UsageHandle").field(&*self.lock()).finish()
    }
}
