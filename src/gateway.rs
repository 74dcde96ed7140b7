//! The whole gateway stack, composed in the one order that works, around any upstream service.
//!
//! [`Gateway::builder`] stacks the layers a Gemini gateway needs in front of a client service
//! (usually [`UpstreamClient`](crate::client::UpstreamClient), or a `FakeGemini` in tests):
//!
//! ```text
//! Facts ─► RequestId ─► AccessLog ─► [Usage] ─► [UploadSessions] ─► BearerAuth ─► BodyLimit ─► [extra layers] ─► [Affinity] ─► [Accounts] ─► RateLimit
//!   ─► StreamResume ─► errors as responses ─► KeyRotation (or one upstream key) ─► client
//! ```
//!
//! Every layer in brackets or named after the body limit is optional: switch it on with its
//! setter ([`rate_limit`](GatewayBuilder::rate_limit), [`stream_resume`](GatewayBuilder::stream_resume),
//! [`key_rotation`](GatewayBuilder::key_rotation)); [`layer`](GatewayBuilder::layer) adds your
//! own (the OpenAI translation, request policy) right after the body limit, in the order given.
//!
//! The result, [`Gateway`], is an infallible, cloneable `Service` that an axum app mounts with
//! `Router::fallback_service` (or `route_service`), exactly as `examples/full_proxy` does.
//! Transport failures of the client become JSON errors in the route's dialect (502, or 504 for
//! a timeout); rejections of the layers are JSON errors too.
//!
//! # Readiness and backpressure
//! [`Gateway`] is always ready (`poll_ready` returns `Ready` at once), and so is each stage
//! inside it. This is deliberate, and cannot be otherwise without losing what the stages are:
//! each request's future owns a clone of the stage below it (a pointer copy, which is what made
//! the stack cheap), and tower's readiness is a reservation held by the *instance* that was
//! polled (a `ConcurrencyLimit` permit, a `Buffer` slot). A `poll_ready` on the shared stage
//! would reserve capacity on an instance that never serves the call. Below key rotation there
//! is not even one service to ask: a request may wait for a retry backoff and try several
//! keys, so "ready" has no single answer before the request is read.
//!
//! Each stage therefore awaits its inner service's readiness inside the request's future,
//! right before calling it: a limit you put *under* the gateway (around the upstream client)
//! queues requests. To shed or bound load, put tower's limits *above* the gateway, where their
//! own readiness is the signal: `ServiceBuilder::new().load_shed().concurrency_limit(n)`
//! around [`Gateway`] answers the request over the limit at once with
//! `tower::load_shed::error::Overloaded` (map it to a 503) instead of queueing it; the test
//! `a_concurrency_limit_above_the_gateway_sheds_load` shows it. `full_proxy` bounds work the
//! same way, above the stack: a connection limit in its server and per-client rate limits.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceExt, service_fn};
//! use tower_gemini::{Body, auth::MemoryTokenStore, gateway::Gateway, secret::ApiKey};
//!
//! let upstream = service_fn(|req: Request<Body>| async move {
//!     // The client's token never arrives here; the upstream key does.
//!     assert_eq!(req.headers()["x-goog-api-key"], "upstream-key-0123456789");
//!     Ok::<_, tower_gemini::Error>(Response::new(Body::from("{}")))
//! });
//! let gateway = Gateway::builder()
//!     .tokens(MemoryTokenStore::new().with_token("client-token-0001", "alice"))
//!     .upstream_key(ApiKey::new("upstream-key-0123456789"))
//!     .build(upstream);
//!
//! let req = Request::builder()
//!     .uri("/v1beta/models/gemini-2.5-flash:generateContent")
//!     .header("authorization", "Bearer client-token-0001")
//!     .body(Body::from("{}"))
//!     .unwrap();
//! let res = gateway.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert!(res.headers().contains_key("x-request-id"));
//! # });
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::access_log::AccessLogLayer;
use crate::auth::{BearerAuthLayer, TokenStore};
use crate::body::{Body, BodyLimitLayer, BoxError};
use crate::error::{ApiError, Dialect, UpstreamError};
use crate::request_id::RequestIdLayer;
use crate::secret::{ApiKey, ClientKey, SecretSet};

use crate::body::DEFAULT_MAX_BODY_BYTES;

/// Builds a [`Gateway`].
#[derive(Clone)]
pub struct GatewayBuilder {
    tokens: Option<Arc<dyn TokenStore>>,
    max_body_bytes: usize,
    max_event_bytes: Option<usize>,
    max_upload_bytes: Option<u64>,
    body_read_timeout: Option<std::time::Duration>,
    upstream_key: Option<ApiKey>,
    client_key_passthrough: bool,
    request_id: bool,
    secrets: SecretSet,
    extra: Vec<Arc<dyn Fn(GatewayService) -> GatewayService + Send + Sync>>,
    #[cfg(feature = "rate-limit")]
    rate_limit: Option<crate::rate_limit::RateLimitLayer>,
    #[cfg(feature = "accounts")]
    accounts: Option<crate::accounts::AccountLayer>,
    #[cfg(feature = "stream-resume")]
    stream_resume: Option<crate::stream_resume::StreamResumeLayer>,
    #[cfg(feature = "key-rotation")]
    key_rotation: Option<crate::key_rotation::KeyRotationLayer>,
    #[cfg(feature = "usage")]
    usage: Option<crate::usage::UsageLayer>,
    #[cfg(feature = "affinity")]
    affinity: Option<crate::affinity::AffinityLayer>,
}

/// One stage of the gateway: a type-erased, infallible service whose clone is a reference
/// count increment.
///
/// Layers that do async work before calling their inner service (the body limit, rate limit,
/// stream resume, key rotation, request policy) move a clone of it into each request's future.
/// With [`tower::util::BoxCloneSyncService`] between the stages, that clone copied every stage
/// below, once per such layer per request; here it copies one pointer. The stage is always
/// ready: the wrapped service's readiness is awaited inside the returned future, right before
/// its `call`.
#[derive(Clone)]
pub struct GatewayService {
    stage: Arc<dyn Stage>,
}

impl GatewayService {
    /// Erases `service`'s type. Each call clones it (so keep its own state behind `Arc`s, as
    /// the crate's layers do), waits until it is ready and calls it.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self {
            stage: Arc::new(StageOf(service)),
        }
    }
}

impl fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayService")
    }
}

impl Service<Request<Body>> for GatewayService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.stage.call(req)
    }
}

/// A service called through a shared reference.
trait Stage: Send + Sync {
    fn call(&self, req: Request<Body>) -> BoxedFuture;
}

struct StageOf<S>(S);

impl<S> Stage for StageOf<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: Request<Body>) -> BoxedFuture {
        Box::pin(self.0.clone().oneshot(req))
    }
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("auth", &self.tokens.is_some())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("upstream_key", &self.upstream_key)
            .field("request_id", &self.request_id)
            .field("extra_layers", &self.extra.len())
            .finish_non_exhaustive()
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            tokens: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: None,
            max_upload_bytes: None,
            body_read_timeout: None,
            upstream_key: None,
            client_key_passthrough: false,
            request_id: true,
            secrets: SecretSet::new(),
            extra: Vec::new(),
            #[cfg(feature = "rate-limit")]
            rate_limit: None,
            #[cfg(feature = "accounts")]
            accounts: None,
            #[cfg(feature = "stream-resume")]
            stream_resume: None,
            #[cfg(feature = "key-rotation")]
            key_rotation: None,
            #[cfg(feature = "usage")]
            usage: None,
            #[cfg(feature = "affinity")]
            affinity: None,
        }
    }
}

impl GatewayBuilder {
    /// Client tokens: every request must carry one (default: no authentication).
    pub fn tokens(mut self, store: impl TokenStore) -> Self {
        self.tokens = Some(Arc::new(store));
        self
    }

    /// A shared token store (so tokens can be added and revoked at run time).
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.tokens = Some(store);
        self
    }

    /// Request bodies larger than this are refused with 413 (default 20 MiB).
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The cap on one event of a streamed answer (default
    /// [`DEFAULT_MAX_EVENT_BYTES`](crate::sse::DEFAULT_MAX_EVENT_BYTES), 64 MiB): the one
    /// setting every layer that decodes a stream applies (see
    /// [`MaxEventBytes`](crate::sse::MaxEventBytes)). A larger event ends the stream with an
    /// error event; it is never resumed.
    pub fn max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = Some(max);
        self
    }

    /// Streams upload bodies (paths under `/upload/`) instead of buffering them, up to `max`
    /// bytes each (413 past it); see [`BodyLimitLayer::stream_uploads`]. Default: uploads are
    /// buffered under [`max_body_bytes`](Self::max_body_bytes) like any body.
    pub fn max_upload_bytes(mut self, max: u64) -> Self {
        self.max_upload_bytes = Some(max);
        self
    }

    /// Bounds the time to receive a whole request body (408 past it; default: no bound), so a
    /// client trickling its body, or a chunked body that never ends, cannot hold a request.
    pub fn body_read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.body_read_timeout = Some(timeout);
        self
    }

    /// The upstream key set on every request as `x-goog-api-key`.
    pub fn upstream_key(mut self, key: ApiKey) -> Self {
        self.secrets.insert(key.expose());
        self.upstream_key = Some(key);
        self
    }

    /// Own-key mode (default off): a credential the token store does not know is taken to be
    /// the client's own Gemini key and sent upstream for that request only, instead of a key of
    /// the pool; see [`BearerAuthLayer::client_key_passthrough`]. Needs a token store.
    pub fn client_key_passthrough(mut self, on: bool) -> Self {
        self.client_key_passthrough = on;
        self
    }

    /// Secrets scrubbed from upstream error bodies (the upstream keys are added for you).
    pub fn secrets(mut self, secrets: SecretSet) -> Self {
        if let Some(k) = &self.upstream_key {
            secrets.insert(k.expose());
        }
        self.secrets = secrets;
        self
    }

    /// Whether to keep or mint `x-request-id` (default on).
    pub fn request_id(mut self, on: bool) -> Self {
        self.request_id = on;
        self
    }

    /// Adds a layer right after the body limit (requests arrive authenticated, with a
    /// bounded, buffered body). Layers added first see requests first: add the OpenAI
    /// translation before a request policy that rewrites Gemini requests.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<GatewayService> + Send + Sync + 'static,
        L::Service: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        self.extra
            .push(Arc::new(move |svc| GatewayService::new(layer.layer(svc))));
        self
    }

    /// Per-token models and token budgets ([`AccountLayer`](crate::accounts::AccountLayer)),
    /// checked after the extra layers resolved the model and before the rate limit.
    #[cfg(feature = "accounts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "accounts")))]
    pub fn accounts(mut self, layer: crate::accounts::AccountLayer) -> Self {
        self.accounts = Some(layer);
        self
    }

    /// Quotas per client, IP or model, checked before any upstream key is spent.
    #[cfg(feature = "rate-limit")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
    pub fn rate_limit(mut self, layer: crate::rate_limit::RateLimitLayer) -> Self {
        self.rate_limit = Some(layer);
        self
    }

    /// Repairs interrupted `:streamGenerateContent` answers.
    #[cfg(feature = "stream-resume")]
    #[cfg_attr(docsrs, doc(cfg(feature = "stream-resume")))]
    pub fn stream_resume(mut self, layer: crate::stream_resume::StreamResumeLayer) -> Self {
        self.stream_resume = Some(layer);
        self
    }

    /// Draws the upstream key of each request from a pool, retrying on another key when the
    /// upstream blames the key. Replaces [`upstream_key`](Self::upstream_key); the pool's keys
    /// are scrubbed from error bodies by the layer itself.
    #[cfg(feature = "key-rotation")]
    #[cfg_attr(docsrs, doc(cfg(feature = "key-rotation")))]
    pub fn key_rotation(mut self, layer: crate::key_rotation::KeyRotationLayer) -> Self {
        self.key_rotation = Some(layer);
        self
    }

    /// Records every request (its client, key, model, route, status, tokens) into the layer's
    /// sinks. The layer goes right before authentication, so every answer, a 401 included, is
    /// counted once (`BearerAuth` reports the client to it); a
    /// [tap](crate::usage::UsageLayer::tap) under the extra layers reports the Gemini model and
    /// token counts of translated requests.
    #[cfg(feature = "usage")]
    #[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
    pub fn usage(mut self, layer: crate::usage::UsageLayer) -> Self {
        self.usage = Some(layer);
        self
    }

    /// Sends requests naming a file, cached content, batch or operation to the key whose
    /// project holds it, and lets the bytes of the gateway's resumable upload sessions in
    /// without a client token (see [`UploadSessionsLayer`](crate::affinity::UploadSessionsLayer)).
    /// The layer goes after the extra layers (it sees Gemini requests) and before the rate limit.
    #[cfg(feature = "affinity")]
    #[cfg_attr(docsrs, doc(cfg(feature = "affinity")))]
    pub fn affinity(mut self, layer: crate::affinity::AffinityLayer) -> Self {
        self.affinity = Some(layer);
        self
    }

    /// Stacks the layers around `upstream`.
    pub fn build<S, ResBody>(self, upstream: S) -> Gateway
    where
        S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let errors = UpstreamErrorsLayer {
            secrets: self.secrets.clone(),
        };
        #[cfg_attr(not(feature = "key-rotation"), allow(unused_mut))]
        let mut rotated: Option<GatewayService> = None;
        #[cfg(feature = "key-rotation")]
        if let Some(rotation) = &self.key_rotation {
            let svc = errors.clone().layer(rotation.layer(upstream.clone()));
            rotated = Some(GatewayService::new(svc));
        }
        let mut svc = rotated.unwrap_or_else(|| {
            GatewayService::new(
                ServiceBuilder::new()
                    .layer(errors)
                    .option_layer(self.upstream_key.map(SetUpstreamKeyLayer))
                    .service(upstream),
            )
        });
        #[cfg(feature = "stream-resume")]
        if let Some(layer) = self.stream_resume {
            svc = GatewayService::new(layer.layer(svc));
        }
        #[cfg(feature = "rate-limit")]
        if let Some(layer) = self.rate_limit {
            svc = GatewayService::new(layer.layer(svc));
        }
        #[cfg(feature = "accounts")]
        if let Some(layer) = self.accounts {
            svc = GatewayService::new(layer.layer(svc));
        }
        #[cfg(feature = "affinity")]
        let sessions = self
            .affinity
            .as_ref()
            .map(|a| crate::affinity::UploadSessionsLayer::new(a.store().clone()));
        #[cfg(feature = "affinity")]
        if let Some(layer) = self.affinity {
            svc = GatewayService::new(layer.layer(svc));
        }
        #[cfg(feature = "usage")]
        if self.usage.is_some() && !self.extra.is_empty() {
            svc = GatewayService::new(crate::usage::UsageLayer::tap().layer(svc));
        }
        for wrap in self.extra.iter().rev() {
            svc = wrap(svc);
        }
        #[cfg(not(feature = "affinity"))]
        let sessions: Option<tower::layer::util::Identity> = None;
        let svc = GatewayService::new(
            ServiceBuilder::new()
                .option_layer(sessions)
                .option_layer(self.tokens.map(|store| {
                    BearerAuthLayer::from_arc(store)
                        .client_key_passthrough(self.client_key_passthrough)
                }))
                .layer({
                    let mut limit = BodyLimitLayer::new(self.max_body_bytes);
                    if let Some(max) = self.max_upload_bytes {
                        limit = limit.stream_uploads(max);
                    }
                    match self.body_read_timeout {
                        Some(d) => limit.read_timeout(d),
                        None => limit,
                    }
                })
                .service(svc),
        );
        #[cfg(feature = "usage")]
        let inner = match self.usage {
            Some(usage) => GatewayService::new(usage.layer(svc)),
            None => svc,
        };
        #[cfg(not(feature = "usage"))]
        let inner = svc;
        let facts = match self.max_event_bytes {
            Some(max) => crate::facts::FactsLayer::new().max_event_bytes(max),
            None => crate::facts::FactsLayer::new(),
        };
        let svc = ServiceBuilder::new()
            .layer(facts)
            .option_layer(self.request_id.then(RequestIdLayer::new))
            .layer(AccessLogLayer::new())
            .service(inner);
        Gateway {
            inner: GatewayService::new(svc),
        }
    }
}

/// The composed gateway stack: an infallible, cloneable service. See the [module docs](self).
#[derive(Clone)]
pub struct Gateway {
    inner: GatewayService,
}

impl Gateway {
    /// A builder with the defaults.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for Gateway
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        GatewayFuture(self.inner.call(req.map(Body::new)))
    }
}

type BoxedFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Response future of [`Gateway`].
pub struct GatewayFuture(BoxedFuture);

impl Future for GatewayFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for GatewayFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayFuture")
    }
}

// === Upstream key ===

/// Sets one upstream key on every request (replacing any client credential).
#[derive(Clone, Debug)]
struct SetUpstreamKeyLayer(ApiKey);

impl<S> Layer<S> for SetUpstreamKeyLayer {
    type Service = SetUpstreamKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetUpstreamKey {
            inner,
            key: self.0.clone(),
            fingerprint: self.0.fingerprint(),
        }
    }
}

#[derive(Clone, Debug)]
struct SetUpstreamKey<S> {
    inner: S,
    key: ApiKey,
    fingerprint: String,
}

impl<S, B> Service<Request<B>> for SetUpstreamKey<S>
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
        // Own-key mode: the client's key, for this request only.
        if let Some(own) = req.extensions().get::<ClientKey>().cloned() {
            crate::credential::set_upstream_key(&mut req, own.key());
        } else {
            crate::credential::set_upstream_key(&mut req, &self.key);
            tracing::Span::current().record("key.id", self.fingerprint.as_str());
            if let Some(report) = crate::facts::Report::of(&req) {
                report.record_key(&self.fingerprint);
            }
        }
        self.inner.call(req)
    }
}

// === Upstream errors ===

/// Largest upstream error body read for scrubbing; a larger one is replaced by a generic error.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// Turns the inner service's errors into JSON error responses in the route's dialect, and
/// scrubs secrets from upstream error bodies (a real 400 can echo `api_key:<KEY>`).
#[derive(Clone, Debug)]
struct UpstreamErrorsLayer {
    secrets: SecretSet,
}

impl<S> Layer<S> for UpstreamErrorsLayer {
    type Service = UpstreamErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UpstreamErrors {
            inner,
            secrets: self.secrets.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct UpstreamErrors<S> {
    inner: S,
    secrets: SecretSet,
}

impl<S, ResBody> Service<Request<Body>> for UpstreamErrors<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner service that cannot become ready is answered per request below.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let dialect = Dialect::of(&req);
        let own = req.extensions().get::<ClientKey>().cloned();
        let fut = self.inner.call(req);
        let secrets = self.secrets.clone();
        GatewayFuture(Box::pin(async move {
            let res = fut.await.map_err(Into::<BoxError>::into);
            match res {
                Ok(res) if res.status().is_client_error() || res.status().is_server_error() => {
                    let upstream = UpstreamError::read(res, MAX_ERROR_BODY).await;
                    let mut known = secrets.snapshot();
                    known.extend(own.map(|k| Arc::from(k.key().expose())));
                    Ok(upstream.into_response(&known, dialect))
                }
                Ok(res) => Ok(res.map(Body::new)),
                Err(e) => {
                    let api = ApiError::from_transport(&*e);
                    tracing::warn!(
                        error = %crate::secret::scrub(&e.to_string()),
                        status = api.status().as_u16(),
                        "upstream call failed"
                    );
                    Ok(api.into_response(dialect))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::auth::MemoryTokenStore;
    use crate::body::collect_limited;
    use http::StatusCode;
    use tower::service_fn;

    /// The supported way to bound the gateway's work: tower's limits above it, whose own
    /// readiness sheds the request over the limit while the gateway itself stays ready.
    #[tokio::test]
    async fn a_concurrency_limit_above_the_gateway_sheds_load() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let release = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(AtomicUsize::new(0));
        let (r, n) = (release.clone(), started.clone());
        let upstream = service_fn(move |_req: Request<Body>| {
            let (r, n) = (r.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                r.notified().await;
                Ok::<_, Error>(Response::new(Body::from("{}")))
            }
        });
        let gateway = Gateway::builder().build(upstream);
        let limited = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(2)
            .service(gateway);
        let req = || {
            Request::post("/v1beta/models/m:generateContent")
                .body(Body::from("{}"))
                .unwrap()
        };
        let a = tokio::spawn(limited.clone().oneshot(req()));
        let b = tokio::spawn(limited.clone().oneshot(req()));
        while started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        // Two in flight: the third is refused at once, never reaching the upstream.
        let shed = limited.clone().oneshot(req()).await.unwrap_err();
        assert!(shed.is::<tower::load_shed::error::Overloaded>(), "{shed}");
        assert_eq!(started.load(Ordering::SeqCst), 2);
        release.notify_waiters();
        for done in [a, b] {
            assert_eq!(done.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        // Capacity is back.
        let again = tokio::spawn(limited.oneshot(req()));
        while started.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        assert_eq!(again.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn transport_errors_become_dialect_errors() {
        let upstream =
            service_fn(|_req: Request<Body>| async { Err::<Response<Body>, _>(Error::timeout()) });
        let gw = Gateway::builder().build(upstream);
        let res = gw
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/v1/chat/completions")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        let v: serde_json::Value =
            serde_json::from_slice(&collect_limited(res.into_body(), 4096).await.unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn a_timeout_inside_a_transport_error_is_a_504_without_key_rotation_too() {
        // Key rotation answered this 504 and the gateway 502 before the one mapping.
        let upstream = service_fn(|_req: Request<Body>| async {
            let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
            Err::<Response<Body>, _>(Error::upstream(slow))
        });
        let gw = Gateway::builder()
            .upstream_key(ApiKey::new("upstream-key-0123456789"))
            .build(upstream);
        let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
            .body(Body::from("{}"))
            .unwrap();
        let res = gw.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        let v: serde_json::Value =
            serde_json::from_slice(&collect_limited(res.into_body(), 4096).await.unwrap()).unwrap();
        assert_eq!(v["error"]["status"], "DEADLINE_EXCEEDED");
    }

    #[tokio::test]
    async fn upstream_error_bodies_are_scrubbed_of_the_upstream_key() {
        let upstream = service_fn(|req: Request<Body>| async move {
            let key = req.headers()["x-goog-api-key"].to_str().unwrap().to_owned();
            let body = format!(
                r#"{{"error":{{"code":403,"message":"key {key} denied","status":"PERMISSION_DENIED"}}}}"#
            );
            let mut res = Response::new(Body::from(body));
            *res.status_mut() = StatusCode::FORBIDDEN;
            Ok::<_, Error>(res)
        });
        let gw = Gateway::builder()
            .upstream_key(ApiKey::new("plain-upstream-key-0123456789"))
            .build(upstream);
        let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
            .body(Body::from("{}"))
            .unwrap();
        let res = gw.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let body = collect_limited(res.into_body(), 4096).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("plain-upstream-key-0123456789"), "{text}");
        assert!(text.contains("PERMISSION_DENIED"), "{text}");
    }

    #[tokio::test]
    async fn unauthenticated_requests_never_reach_upstream() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let upstream = service_fn(move |_req: Request<Body>| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Error>(Response::new(Body::empty())) }
        });
        let gw = Gateway::builder()
            .tokens(MemoryTokenStore::new().with_token("client-token-0001", "a"))
            .build(upstream);
        let res = gw
            .oneshot(
                Request::builder()
                    .uri("/v1beta/models")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().contains_key("x-request-id"));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
