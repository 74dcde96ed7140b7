//! What the layers of a gateway know about one request: worked out once, by the first layer
//! that can, and carried in the request's extensions.
//!
//! Several layers need the same facts: rate limits count per client and per model, key
//! rotation cools a key down for a model, usage and the access log name the client, the model
//! and the serving key. Each fact has one home here, and one layer that puts it there; the
//! others read it. A layer that changes a fact (the request policy resolving an alias, the
//! OpenAI front translating a chat request) updates it here, so every layer below sees the new
//! value and every layer above reads it from the [`Report`] when the answer comes back.
//!
//! | Fact | Where | Put in by | Read by |
//! |---|---|---|---|
//! | who the client is | [`Identity`] | `BearerAuth` | rate limits, usage, request log |
//! | the client's address | [`ClientAddr`] | the server (`full_proxy`, axum's `ConnectInfo`) | per-IP limits |
//! | the route's dialect | [`Dialect`](crate::Dialect) | `BearerAuth`, the OpenAI front | error answers |
//! | the Gemini call: model and method | [`GeminiPath`] (see [`gemini_call`]) | [`FactsLayer`] from the path; the OpenAI front from the body; the request policy when it resolves an alias ([`set_model`]) | rate limits, key rotation, stream resume, usage |
//! | the path logs may show | [`LogPath`](crate::access_log::LogPath) | the router | access log, request span |
//! | the cap on one event of the streamed answer | [`MaxEventBytes`](crate::sse::MaxEventBytes) | [`FactsLayer::max_event_bytes`] (the gateway's `max_event_bytes`) | every decoder of the answer: stream resume, the OpenAI translation, the request policy |
//! | the key a request must use | [`KeyPin`] | the affinity layer (a resource the request names lives in that key's project) | key rotation |
//! | the pool key this attempt carries | [`UpstreamKey`] | key rotation, on each attempt | the client below it (where and how to send that key) |
//! | what happened | [`Report`] | [`FactsLayer`] or `UsageLayer` | written by `BearerAuth` (client), `KeyRotation` (serving key, attempts), `StreamResume` (resumes), `RateLimit` (refusal), the fronts and the policy (model); read by usage and the access log |
//!
//! A layer used alone (key rotation around a reqwest client) finds no facts and works them
//! out itself, once, with [`resolve_call`].
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, facts::{self, FactsLayer, Report}};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(FactsLayer::new())
//!     .service(service_fn(|mut req: Request<Body>| async move {
//!         // A policy resolving an alias: every later layer reads the new model.
//!         facts::set_model(&mut req, "gemini-2.5-flash");
//!         assert_eq!(facts::model(&req), Some("gemini-2.5-flash"));
//!         let report = req.extensions().get::<Report>().unwrap().clone();
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from(report.model().unwrap())))
//!     }));
//! let req = Request::post("/v1beta/models/my-alias:generateContent").body(Body::empty()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.into_body().as_bytes().unwrap(), "gemini-2.5-flash");
//! # });
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::gemini::{GeminiPath, strip_models_prefix};

// === Identity ===

/// Who a request comes from, stored in request extensions by
/// [`BearerAuth`](crate::auth::BearerAuth) (or any layer of yours that authenticates).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    name: Arc<str>,
    id: Arc<str>,
    subject: Arc<str>,
    admin: bool,
    account: Option<Arc<Account>>,
}

impl Identity {
    /// A client identity; its [`subject`](Self::subject) is `id` until
    /// [`with_subject`](Self::with_subject) says otherwise.
    pub fn new(name: impl Into<Arc<str>>, id: impl Into<Arc<str>>, admin: bool) -> Self {
        let id = id.into();
        Self {
            name: name.into(),
            subject: id.clone(),
            id,
            admin,
            account: None,
        }
    }

    /// Sets what this client may do (models, limits, budgets, expiry).
    pub fn with_account(mut self, account: Option<Arc<Account>>) -> Self {
        self.account = account.filter(|a| !a.is_empty());
        self
    }

    /// What this client may do, when its token carries settings of its own; `None`: the
    /// gateway's global settings apply.
    pub fn account(&self) -> Option<&Account> {
        self.account.as_deref()
    }

    /// The account, shared (no copy).
    #[cfg_attr(not(feature = "bearer-auth"), allow(dead_code))]
    pub(crate) fn account_arc(&self) -> Option<Arc<Account>> {
        self.account.clone()
    }

    /// Sets the subject: what the client's stored things (resource pins, stored responses)
    /// are owned by.
    pub fn with_subject(mut self, subject: impl Into<Arc<str>>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Who owns what this client stores, across restarts and instances: for a token of a
    /// [`MemoryTokenStore`](crate::auth::MemoryTokenStore), `sub-` and a hash of the token's
    /// digest (no secret, and unlike the masked [`id`](Self::id) never shared by two tokens
    /// nor handed to another token after a revocation or a reordered token list).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The client's name (a label, never the token).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A stable id for the client (for a [`MemoryTokenStore`](crate::auth::MemoryTokenStore)
    /// token, [`TokenDigest::id`](crate::auth::TokenDigest::id): `tok_` and 12 hex digits).
    /// Safe for logs, stats and URLs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this client may use admin routes.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("admin", &self.admin)
            .finish()
    }
}

// === Account ===

/// What one client token may do, beyond the gateway's global settings: the models it may use,
/// limits of its own, token budgets, an expiry and free-form labels. Every field is optional;
/// an unset one falls back to the global setting.
///
/// ```
/// use tower_gemini::facts::Account;
/// let a = Account {
///     models: Some(vec!["gemini-2.5-*".into()]),
///     daily_token_budget: Some(1_000),
///     ..Account::default()
/// };
/// assert!(a.allows_model("gemini-2.5-flash") && a.allows_model("models/gemini-2.5-pro"));
/// assert!(!a.allows_model("gemini-3-pro-preview"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Account {
    /// Models the token may use: names, or patterns where `*` stands for any run of
    /// characters. `None`: every model the gateway serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Requests per minute of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests per day of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
    /// Tokens (prompt + output + thoughts) per calendar day (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_token_budget: Option<u64>,
    /// Tokens (prompt + output + thoughts) per calendar month (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_token_budget: Option<u64>,
    /// When the token stops working, in seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Free-form labels (team, project, owner...).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Account {
    /// Whether nothing is set: the global settings apply in full.
    pub fn is_empty(&self) -> bool {
        *self == Account::default()
    }

    /// Whether the token may use `model` (with or without a `models/` prefix).
    pub fn allows_model(&self, model: &str) -> bool {
        let model = strip_models_prefix(model);
        self.models
            .as_ref()
            .is_none_or(|pats| pats.iter().any(|p| glob(strip_models_prefix(p), model)))
    }

    /// Reads an RFC 3339 time (`2027-01-01T00:00:00Z`, an offset, or fractions) as seconds
    /// since the Unix epoch, for [`expires_at`](Self::expires_at).
    pub fn parse_time(s: &str) -> Option<u64> {
        crate::rfc3339::parse(s)
    }

    /// Seconds since the Unix epoch as an RFC 3339 UTC time (`2027-01-01T00:00:00Z`).
    pub fn format_time(unix: u64) -> String {
        crate::rfc3339::format_seconds(unix)
    }

    /// Whether the token has expired at `now` (seconds since the Unix epoch).
    pub fn is_expired_at(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// A request that carries no client credential but a capability a layer in front of
/// authentication checked (the id of a resumable upload session the gateway handed out, which
/// Google's SDKs send without the API key, as Google's own upload URLs need none): it is
/// served as this [`Identity`]. Only a layer can put it in; clients cannot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreAuthorized(pub Identity);

// === ClientAddr ===

/// The peer address of a request's connection, for per-IP rules.
///
/// Servers insert it into request extensions (a plain [`SocketAddr`] extension is read too).
/// With axum, copy `ConnectInfo<SocketAddr>` into it, e.g. in a `map_request` middleware:
/// `req.extensions_mut().insert(ClientAddr(connect_info.0))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

// === The Gemini call ===

/// The Gemini call a request makes (model and method), as the layers above this point
/// resolved it: the [`GeminiPath`] extension. `None` when no layer has set it (see
/// [`resolve_call`]) or the request is not a Gemini call.
pub fn gemini_call<B>(req: &Request<B>) -> Option<&GeminiPath> {
    req.extensions().get::<GeminiPath>()
}

/// The model the request is for (without `models/`), as resolved so far; `None` without a
/// Gemini call or for routes without a model (`GET /v1beta/models`).
pub fn model<B>(req: &Request<B>) -> Option<&str> {
    gemini_call(req)
        .map(|p| strip_models_prefix(&p.model))
        .filter(|m| !m.is_empty())
}

/// The Gemini call of `req`: the extension when an earlier layer set it, else parsed from the
/// path once and stored, so no later layer parses it again.
pub fn resolve_call<B>(req: &mut Request<B>) -> Option<&GeminiPath> {
    if req.extensions().get::<GeminiPath>().is_none() {
        let parsed = GeminiPath::parse(req.uri().path())?;
        if let Some(report) = req.extensions().get::<Report>() {
            report.set_model_if_unset(strip_models_prefix(&parsed.model));
        }
        req.extensions_mut().insert(parsed);
    }
    req.extensions().get::<GeminiPath>()
}

/// Sets the Gemini call a request makes (a front that translated the request knows it from
/// the body), and tells the [`Report`].
pub fn set_call<B>(req: &mut Request<B>, call: GeminiPath) {
    if let Some(report) = req.extensions().get::<Report>() {
        report.set_model(strip_models_prefix(&call.model));
    }
    req.extensions_mut().insert(call);
}

/// The request now goes to `model` (an alias resolved, a search variant mapped to its model):
/// updates the Gemini call, so every later layer limits, cools down and counts the real model,
/// and the [`Report`], so the layers above learn it when the answer comes back.
pub fn set_model<B>(req: &mut Request<B>, model: &str) {
    if req.extensions().get::<GeminiPath>().is_none() {
        resolve_call(req);
    }
    if let Some(call) = req.extensions_mut().get_mut::<GeminiPath>() {
        model.clone_into(&mut call.model);
    }
    if let Some(report) = req.extensions().get::<Report>() {
        report.set_model(model);
    }
}

// === KeyPin ===

/// The one upstream key a request must use: the request names a resource (a file, a cached
/// content, a batch, an operation, an upload session) that lives in the Google project of that
/// key, and any other key would get 403 `PERMISSION_DENIED` for it.
///
/// Put in by the affinity layer (or any layer of yours that knows where a resource lives);
/// key rotation honours it: the request goes to that key only, is never retried on another,
/// and a 403 or 404 on it is relayed without counting against the key. When the key is
/// disabled or no longer in the pool, the client gets an error naming the resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPin {
    key_id: Arc<str>,
    resource: Arc<str>,
}

impl KeyPin {
    /// Pins a request to the key of id `key_id` (a fingerprint, as the pool lists it) because
    /// it names `resource` (e.g. `files/abc`).
    pub fn new(key_id: impl Into<Arc<str>>, resource: impl Into<Arc<str>>) -> Self {
        Self {
            key_id: key_id.into(),
            resource: resource.into(),
        }
    }

    /// The id of the key the request must use.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The resource that pins it, e.g. `files/abc`.
    pub fn resource(&self) -> &str {
        &self.resource
    }
}

// === UpstreamKey ===

/// The pool key one upstream attempt carries, put in by key rotation on the request it sends
/// to the service below it (absent in own-key mode and without key rotation).
///
/// The layers and the client below key rotation read it to treat a key by what it is and where
/// it must go: the client uses it to choose the upstream and the way out for that key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    id: Arc<str>,
}

impl UpstreamKey {
    /// The attempt carries the pool key of id `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self { id: id.into() }
    }

    /// The key's id (a fingerprint, as the pool lists it).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The resources a request names (`files/abc`, `cachedContents/xyz`, ...), as the layer that
/// read its path and body found them. Key rotation reads it to tell a 403 or 404 about a
/// resource (the request's fault) from one about the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedResources(pub Vec<String>);

/// Whether `path` names a resource that lives in one Google project (files, cached contents,
/// batches, operations, uploads), judged from the path alone.
pub fn path_names_resource(path: &str) -> bool {
    const SEGMENTS: [&str; 5] = [
        "/files",
        "/cachedContents",
        "/batches",
        "/operations",
        "/fileSearchStores",
    ];
    path.starts_with("/upload/") || SEGMENTS.iter().any(|s| path.contains(s))
}

/// Whether a request names a project-bound resource: a [`KeyPin`], [`NamedResources`] or its
/// path says so.
pub fn names_resource<B>(req: &Request<B>) -> bool {
    let ext = req.extensions();
    ext.get::<KeyPin>().is_some()
        || ext.get::<NamedResources>().is_some_and(|r| !r.0.is_empty())
        || path_names_resource(req.uri().path())
}

// === ModelResolver ===

/// The model a request's model name will be served by, as a layer below the fronts will
/// resolve it (full_proxy: the request policy's `MODEL_ALIASES`). The translating fronts use
/// it for what depends on the real model (thinking levels and budgets, thought-signature
/// rules, which tools may be mixed) while the request keeps the client's name for the layers
/// below to resolve, police and count.
#[derive(Clone)]
pub struct ModelResolver(Arc<dyn Fn(&str) -> String + Send + Sync>);

impl ModelResolver {
    /// A resolver calling `f` with a model name (without `models/`).
    pub fn new(f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The model `model` will be served by.
    pub fn resolve(&self, model: &str) -> String {
        (self.0)(model)
    }
}

impl fmt::Debug for ModelResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModelResolver")
    }
}

// === Report ===

pub use crate::tokens::Tokens;

/// Who made a request: the name and masked id of its [`Identity`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The client's name (a label such as `client-1`, never the token).
    pub name: String,
    /// The masked token, e.g. `sk-a…9xQk`.
    pub id: String,
}

/// What the layers did with one request in flight, shared by every copy of the request (its
/// retries and resumes too): the client, the serving key, the resolved model, resumes, a
/// refusal, token counts. Put in the request's extensions by [`FactsLayer`] (or a `UsageLayer`
/// when there is none); layers write what they did, usage and logs read it.
///
/// Cloning shares the report. It holds no secret: keys are ids (fingerprints), clients their
/// names and masked tokens.
#[derive(Clone, Default)]
pub struct Report(Arc<Mutex<Reported>>);

/// The report's content.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reported {
    pub(crate) client: Option<Client>,
    pub(crate) key_id: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) resumes: u32,
    pub(crate) rate_limited: bool,
    pub(crate) model: Option<String>,
    /// The `modelVersion` of the answer: the model that served, as Google names it.
    pub(crate) model_version: Option<String>,
    pub(crate) tokens: Option<Tokens>,
    /// A usage tap below reads the answer's token counts.
    pub(crate) tapped: bool,
    /// A recording `UsageLayer` has taken the report (a second one below is a tap).
    pub(crate) claimed: bool,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// The report of `req`, when a layer above put one in.
    pub fn of<B>(req: &Request<B>) -> Option<&Report> {
        req.extensions().get::<Report>()
    }

    fn lock(&self) -> MutexGuard<'_, Reported> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The request was authenticated as `identity`.
    pub fn record_client(&self, identity: &Identity) {
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

    /// The model the request really goes to (after translation or aliasing). Layers that
    /// change the model call [`set_model`], which updates the request too.
    pub fn set_model(&self, model: &str) {
        let mut r = self.lock();
        match &mut r.model {
            Some(m) => model.clone_into(m),
            None => r.model = Some(model.to_owned()),
        }
    }

    fn set_model_if_unset(&self, model: &str) {
        let mut r = self.lock();
        if r.model.is_none() && !model.is_empty() {
            r.model = Some(model.to_owned());
        }
    }

    /// The token counts of the answer, as seen by an inner layer (they win over what an outer
    /// layer reads from a translated answer).
    pub fn record_tokens(&self, tokens: Tokens) {
        self.lock().tokens = Some(tokens);
    }

    /// The answer's `modelVersion`, as seen by an inner layer: the model that served, which
    /// may differ from the model asked for (an alias such as `gemini-flash-latest`, or a
    /// preview Google routes to a dated version).
    pub fn record_model_version(&self, version: &str) {
        let mut r = self.lock();
        if r.model_version.as_deref() != Some(version) {
            r.model_version = Some(version.to_owned());
        }
    }

    /// The `modelVersion` of the answer, when one was seen.
    pub fn model_version(&self) -> Option<String> {
        self.lock().model_version.clone()
    }

    /// The model the request goes to, as resolved so far.
    pub fn model(&self) -> Option<String> {
        self.lock().model.clone()
    }

    /// The id of the key that made the last upstream call, if any.
    pub fn key_id(&self) -> Option<String> {
        self.lock().key_id.clone()
    }

    /// Upstream calls made so far (retries and resumes included).
    pub fn attempts(&self) -> u32 {
        self.lock().attempts
    }

    /// Resumes of an interrupted answer so far.
    pub fn resumes(&self) -> u32 {
        self.lock().resumes
    }

    /// Whether a rate limit of the gateway refused the request.
    pub fn rate_limited(&self) -> bool {
        self.lock().rate_limited
    }

    /// The client the request was authenticated as.
    pub fn client(&self) -> Option<Client> {
        self.lock().client.clone()
    }

    /// A tap below reads the answer it relays and reports its token counts.
    #[cfg_attr(not(feature = "usage"), allow(dead_code))]
    pub(crate) fn record_tapped(&self) {
        self.lock().tapped = true;
    }

    /// Takes the report for a recording layer: false when another one already did.
    #[cfg_attr(not(feature = "usage"), allow(dead_code))]
    pub(crate) fn claim(&self) -> bool {
        !std::mem::replace(&mut self.lock().claimed, true)
    }

    /// Reads the report in place (no copy of its strings).
    #[cfg_attr(not(feature = "usage"), allow(dead_code))]
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Reported) -> T) -> T {
        f(&self.lock())
    }

    /// Takes the content out, for the one layer that completes the record.
    #[cfg_attr(not(feature = "usage"), allow(dead_code))]
    pub(crate) fn take(&self) -> Reported {
        std::mem::take(&mut *self.lock())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Report").field(&*self.lock()).finish()
    }
}

// === FactsLayer ===

/// Puts the facts of each request in at the top of a stack: a fresh [`Report`] and the
/// Gemini call parsed from the path (when the request is one), unless a layer above already
/// did, and the cap on one event of the streamed answer when one is configured.
/// [`Gateway`](crate::gateway::Gateway) puts it first; stack it first in your own.
#[derive(Clone, Copy, Debug, Default)]
pub struct FactsLayer {
    max_event_bytes: Option<usize>,
}

impl FactsLayer {
    /// A new facts layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cap on one event (or JSON array element) of a streamed answer, put in each request
    /// as a [`MaxEventBytes`](crate::sse::MaxEventBytes) extension (unless a layer above did):
    /// the one setting every decoder below applies (stream resume, the OpenAI translation, the
    /// request policy). Default: none put in, so each applies
    /// [`DEFAULT_MAX_EVENT_BYTES`](crate::sse::DEFAULT_MAX_EVENT_BYTES).
    pub fn max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = Some(max.max(1));
        self
    }
}

impl<S> Layer<S> for FactsLayer {
    type Service = Facts<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Facts {
            inner,
            max_event_bytes: self.max_event_bytes,
        }
    }
}

/// The service made by [`FactsLayer`].
#[derive(Clone, Debug)]
pub struct Facts<S> {
    inner: S,
    max_event_bytes: Option<usize>,
}

impl<S> Facts<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            max_event_bytes: None,
        }
    }

    crate::define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for Facts<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if req.extensions().get::<Report>().is_none() {
            req.extensions_mut().insert(Report::new());
        }
        resolve_call(&mut req);
        if let Some(max) = self.max_event_bytes {
            if req
                .extensions()
                .get::<crate::sse::MaxEventBytes>()
                .is_none()
            {
                req.extensions_mut().insert(crate::sse::MaxEventBytes(max));
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn resolve_parses_once_and_set_model_updates_both_homes() {
        let mut req = Request::post("/v1beta/models/gpt-4o:streamGenerateContent")
            .body(())
            .unwrap();
        let report = Report::new();
        req.extensions_mut().insert(report.clone());
        assert_eq!(resolve_call(&mut req).unwrap().model, "gpt-4o");
        assert_eq!(report.model().as_deref(), Some("gpt-4o"));
        // A later path change is not parsed again: the fact is what layers read.
        *req.uri_mut() = "/v1beta/models/other:generateContent".parse().unwrap();
        assert_eq!(model(&req), Some("gpt-4o"));
        set_model(&mut req, "gemini-2.5-flash");
        assert_eq!(model(&req), Some("gemini-2.5-flash"));
        assert_eq!(
            gemini_call(&req).unwrap().method,
            Some(crate::gemini::Method::StreamGenerateContent)
        );
        assert_eq!(report.model().as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn routes_without_a_gemini_call_have_no_model() {
        let mut req = Request::get("/v1/chat/completions").body(()).unwrap();
        assert!(resolve_call(&mut req).is_none());
        assert_eq!(model(&req), None);
        let mut list = Request::get("/v1beta/models").body(()).unwrap();
        assert!(resolve_call(&mut list).is_some());
        assert_eq!(model(&list), None);
    }

    #[tokio::test]
    async fn the_event_cap_is_put_in_once_and_an_outer_one_wins() {
        use crate::sse::MaxEventBytes;
        use tower::{ServiceExt, service_fn};
        let svc = FactsLayer::new().max_event_bytes(4096).layer(service_fn(
            |req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(MaxEventBytes::of(req.extensions()))
            },
        ));
        let req = Request::post("/v1beta/models/m:streamGenerateContent")
            .body(())
            .unwrap();
        assert_eq!(svc.clone().oneshot(req).await.unwrap(), 4096);
        let mut outer = Request::new(());
        outer.extensions_mut().insert(MaxEventBytes(10));
        assert_eq!(svc.oneshot(outer).await.unwrap(), 10);
        let plain = Facts::new(service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(MaxEventBytes::of(req.extensions()))
        }));
        let got = plain.oneshot(Request::new(())).await.unwrap();
        assert_eq!(got, crate::sse::DEFAULT_MAX_EVENT_BYTES);
    }

    #[test]
    fn claim_is_taken_once() {
        let r = Report::new();
        assert!(r.claim());
        assert!(!r.clone().claim());
    }
}
