//! The `KeyRotationLayer`, its service and response future.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tower::{Layer, Service, ServiceExt};
use tracing::{Instrument, field};

use super::classify::Outcome;
use super::pool::{KeyId, KeyPool, Lease, Pick};
use crate::body::{Body, BoxError, BoxFuture};
use crate::error::{ApiError, Dialect, UpstreamError};
use crate::gemini::GeminiError;
use crate::secret::{ApiKey, ClientKey, scrub_known};

const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;
const MAX_DEFAULT_ATTEMPTS: usize = 5;
use crate::credential::X_GOOG_API_KEY;

#[derive(Clone, Copy, Debug)]
struct Config {
    max_attempts: Option<usize>,
    retry_backoff: Duration,
    max_error_body: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_attempts: None,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            max_error_body: DEFAULT_MAX_ERROR_BODY,
        }
    }
}

// === impl KeyRotationLayer ===

/// Sets the upstream API key on each request from a [`KeyPool`], and retries on another key
/// when the upstream blames the key (quota, invalid key) or fails on its side.
#[derive(Clone, Debug)]
pub struct KeyRotationLayer {
    pool: Arc<KeyPool>,
    config: Config,
}

impl KeyRotationLayer {
    /// A layer drawing keys from `pool`.
    pub fn new(pool: Arc<KeyPool>) -> Self {
        Self {
            pool,
            config: Config::default(),
        }
    }

    /// A layer over a new round-robin pool of `keys` with default settings.
    pub fn round_robin<I, K>(keys: I) -> Result<Self, crate::Error>
    where
        I: IntoIterator<Item = K>,
        K: Into<ApiKey>,
    {
        Ok(Self::new(KeyPool::new(keys)?))
    }

    /// Upstream attempts per request, at least 1. Default: the number of usable keys, at most 5.
    /// A request whose body is not buffered gets one attempt whatever this says.
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.config.max_attempts = Some(n.max(1));
        self
    }

    /// First pause before retrying after a 5xx or a transport error (doubling on each further
    /// retry). Quota and key failures are retried at once. Default: 100 ms.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.config.retry_backoff = backoff;
        self
    }

    /// The most bytes of an upstream error body read to classify and scrub it. Larger error
    /// bodies are replaced by a short error of the same status. Default: 64 KiB.
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.config.max_error_body = bytes;
        self
    }

    /// The pool (for `/health`, admin routes and snapshots).
    pub fn pool(&self) -> &Arc<KeyPool> {
        &self.pool
    }
}

impl<S> Layer<S> for KeyRotationLayer {
    type Service = KeyRotation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyRotation {
            inner,
            pool: self.pool.clone(),
            config: self.config,
        }
    }
}

// === impl KeyRotation ===

/// The service made by [`KeyRotationLayer`].
#[derive(Clone, Debug)]
pub struct KeyRotation<S> {
    inner: S,
    pool: Arc<KeyPool>,
    config: Config,
}

impl<S> KeyRotation<S> {
    /// Wraps `inner` with keys from `pool` and default settings.
    pub fn new(inner: S, pool: Arc<KeyPool>) -> Self {
        KeyRotationLayer::new(pool).layer(inner)
    }

    /// A layer drawing keys from `pool`.
    pub fn layer(pool: Arc<KeyPool>) -> KeyRotationLayer {
        KeyRotationLayer::new(pool)
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<KeyPool> {
        &self.pool
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for KeyRotation<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The ready inner service goes into the future; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        crate::facts::resolve_call(&mut req);
        // The model as the layers above resolved it (an alias renamed): cool-downs are per
        // real model.
        let model = crate::facts::model(&req).unwrap_or_default().to_owned();
        // A model method (not `models.get`): a 404 naming the model is the key's, not the
        // request's.
        let model_call = crate::facts::gemini_call(&req).is_some_and(|c| c.method.is_some());
        let dialect = Dialect::of(&req);
        let pin = req.extensions().get::<crate::facts::KeyPin>().cloned();
        let names_resource = crate::facts::names_resource(&req);
        // Debug level: the attempt and key that served the request are recorded once on the
        // enclosing request span (`RequestIdLayer` declares `attempt` and `key.id`), so the
        // access line names them without a second span per request to create, format and
        // close; this span, when enabled, also records every attempt and upstream status.
        let request_span = tracing::Span::current();
        let span = tracing::debug_span!(
            "key_rotation",
            gemini.model = %crate::secret::scrub(&model),
            attempt = field::Empty,
            key.id = field::Empty,
            status = field::Empty,
        );
        let (parts, body) = req.into_parts();
        let attempt = Attempts {
            pool: self.pool.clone(),
            config: self.config,
            parts,
            model,
            model_call,
            dialect,
            pin,
            names_resource,
            span: span.clone(),
            request_span,
        };
        BoxFuture(Box::pin(
            attempt.run(inner, Body::new(body)).instrument(span),
        ))
    }
}

/// Response future of [`KeyRotation`]: one boxed future type for every layer whose work is `async`.
pub type ResponseFuture<E> = crate::body::BoxFuture<Result<Response<Body>, E>>;

/// One request's way through the keys.
struct Attempts {
    pool: Arc<KeyPool>,
    config: Config,
    parts: Parts,
    model: String,
    /// Whether the request calls a model method (`:generateContent`, ...).
    model_call: bool,
    dialect: Dialect,
    /// The one key this request may use (it names a resource of that key's project).
    pin: Option<crate::facts::KeyPin>,
    /// The request names a project-bound resource: a 403 or 404 is its own fault.
    names_resource: bool,
    /// The `key_rotation` span (disabled unless debug is on): every attempt and status.
    span: tracing::Span,
    /// The span around the request: the attempt and key that served it, recorded once.
    request_span: tracing::Span,
}

/// The attempt that served a request and its key (`None`: the client's own key).
type Served = Option<(usize, Option<KeyId>)>;

impl Attempts {
    async fn run<S, ResB>(mut self, inner: S, body: Body) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let request_span = std::mem::replace(&mut self.request_span, tracing::Span::none());
        let mut served: Served = None;
        let res = self.run_attempts(inner, body, &mut served).await;
        if let Some((attempt, key)) = served {
            request_span.record("attempt", attempt);
            request_span.record("key.id", key.as_ref().map_or("client", KeyId::as_str));
        }
        res
    }

    async fn run_attempts<S, ResB>(
        mut self,
        mut inner: S,
        body: Body,
        served: &mut Served,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        crate::credential::strip_parts(&mut self.parts);
        if let Some(own) = self.parts.extensions.get::<ClientKey>().cloned() {
            *served = Some((1, None));
            return self.run_own_key(inner, body, own.key()).await;
        }
        self.pool.maybe_sync();
        let budget = if body.as_bytes().is_some() {
            self.config
                .max_attempts
                .unwrap_or_else(|| self.pool.usable_up_to(MAX_DEFAULT_ATTEMPTS).max(1))
        } else {
            1
        };
        let span = self.span.clone();
        let mut body = Some(body);
        let mut tried: Vec<KeyId> = Vec::new();
        let mut last: Option<Response<Body>> = None;
        // The shortest `RetryInfo` delay of the 429s seen, for the client's `Retry-After`.
        let mut retry_hint: Option<Duration> = None;
        let mut last_transient = false;
        let mut inner_ready = true;

        for attempt in 1..=budget {
            let picked = match &self.pin {
                Some(pin) => match self.pool.pick_pinned(pin.key_id()) {
                    Ok(lease) => Ok(lease),
                    Err(miss) => {
                        if let Some(res) = last {
                            return Ok(self.with_retry_after(res, retry_hint));
                        }
                        tracing::debug!(?miss, "the key a resource pins is not usable");
                        return Ok(miss
                            .to_api_error(pin.resource())
                            .into_response(self.dialect));
                    }
                },
                None => self.pick(&tried, last_transient),
            };
            let mut lease = match picked {
                Ok(lease) => lease,
                Err(why) => {
                    if let Some(res) = last {
                        return Ok(self.with_retry_after(res, retry_hint));
                    }
                    tracing::debug!(reason = ?why, "no key can serve this request");
                    return Ok(why.to_api_error(&self.model).into_response(self.dialect));
                }
            };
            span.record("attempt", attempt);
            span.record("key.id", lease.id().as_str());
            *served = Some((attempt, Some(lease.id().clone())));
            if let Some(report) = self.parts.extensions.get::<crate::facts::Report>() {
                report.record_key(lease.id().as_str());
            }

            let req_body = if attempt == budget {
                body.take()
            } else {
                body.as_ref().and_then(Body::try_clone)
            };
            let Some(req) =
                self.request(req_body.unwrap_or_default(), lease.key(), Some(lease.id()))
            else {
                // A key that cannot be sent in a header: count it, try another.
                let outcome = Outcome::KeyFailure {
                    reason: "key is not a valid header value".to_owned(),
                };
                self.pool
                    .report(&mut lease, &self.model, &outcome, None)
                    .await;
                tried.push(lease.id().clone());
                continue;
            };

            if !inner_ready {
                ServiceExt::<Request<Body>>::ready(&mut inner).await?;
            }
            inner_ready = false;

            match inner.call(req).await {
                Ok(res) => {
                    let status = res.status();
                    span.record("status", status.as_u16());
                    if status.as_u16() < 400 {
                        let outcome = if status.is_success() {
                            Outcome::Success
                        } else {
                            Outcome::Final
                        };
                        self.pool
                            .report(&mut lease, &self.model, &outcome, None)
                            .await;
                        let (parts, res_body) = res.into_parts();
                        let body = hold_lease(Body::new(res_body), lease);
                        return Ok(Response::from_parts(parts, body));
                    }
                    let upstream = UpstreamError::read(res, self.config.max_error_body).await;
                    let error = upstream.body().and_then(GeminiError::parse);
                    let outcome = if self.model_call && !self.names_resource {
                        Outcome::classify_model_call(status, error.as_ref(), &self.model)
                    } else {
                        Outcome::classify_for(status, error.as_ref(), self.names_resource)
                    };
                    let short =
                        (outcome != Outcome::Final).then(|| short_error(status, error.as_ref()));
                    self.pool
                        .report(&mut lease, &self.model, &outcome, short)
                        .await;
                    let key = lease.key().clone();
                    tried.push(lease.id().clone());
                    drop(lease);
                    let res = self.relay_error(upstream, &key);
                    // A pinned request has no other key to try: only a transient failure
                    // is worth another attempt, on the same key.
                    if self.pin.is_some() && outcome != Outcome::Transient {
                        return Ok(self.with_retry_after(res, retry_hint));
                    }
                    match outcome {
                        Outcome::Exhausted { retry_delay, .. } => {
                            if let Some(d) = retry_delay {
                                retry_hint = Some(retry_hint.map_or(d, |h| h.min(d)));
                            }
                            last_transient = false;
                        }
                        Outcome::KeyFailure { .. } | Outcome::ModelUnavailable => {
                            last_transient = false;
                        }
                        Outcome::Transient => {
                            tracing::debug!(
                                status = status.as_u16(),
                                "upstream failed on its side, retrying"
                            );
                            last_transient = true;
                            if attempt < budget {
                                tokio::time::sleep(self.backoff(attempt)).await;
                            }
                        }
                        Outcome::Success | Outcome::Final => return Ok(res),
                    }
                    last = Some(res);
                }
                Err(e) => {
                    let e: BoxError = e.into();
                    let key = lease.key().clone();
                    tracing::debug!(
                        error = %scrub_known(&e.to_string(), &[key.expose()]),
                        "upstream transport error, retrying"
                    );
                    let outcome = Outcome::Transient;
                    self.pool
                        .report(
                            &mut lease,
                            &self.model,
                            &outcome,
                            Some("transport error".into()),
                        )
                        .await;
                    tried.push(lease.id().clone());
                    drop(lease);
                    let answer = ApiError::from_transport(&*e);
                    last = Some(answer.into_response(self.dialect));
                    last_transient = true;
                    if attempt < budget {
                        tokio::time::sleep(self.backoff(attempt)).await;
                    }
                }
            }
        }
        Ok(match last {
            Some(res) => self.with_retry_after(res, retry_hint),
            None => ApiError::service_unavailable("no upstream API key could serve the request")
                .into_response(self.dialect),
        })
    }

    /// An upstream 429 relayed as the final answer always says when to come back: its own
    /// `Retry-After`, else the shortest `RetryInfo` delay seen on this request, else the time
    /// until the pool's first key can serve the model again, else one second.
    fn with_retry_after(&self, mut res: Response<Body>, hint: Option<Duration>) -> Response<Body> {
        if res.status() != StatusCode::TOO_MANY_REQUESTS
            || res.headers().contains_key(http::header::RETRY_AFTER)
        {
            return res;
        }
        let wait = hint.or_else(|| self.pool.free_after(&self.model));
        let secs = wait.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        res.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(secs.max(1)),
        );
        res
    }

    /// Own-key mode: one attempt with the client's own key, which is never drawn from, reported
    /// to or kept by the pool. Its errors are relayed (scrubbed of every key) for the client to
    /// act on; a retry on a pool key would spend the gateway's keys on someone else's request.
    async fn run_own_key<S, ResB>(
        self,
        mut inner: S,
        body: Body,
        key: &ApiKey,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let span = self.span.clone();
        span.record("attempt", 1);
        span.record("key.id", "client");
        let Some(req) = self.request(body, key, None) else {
            return Ok(
                ApiError::bad_request("the API key is not a valid header value")
                    .into_response(self.dialect),
            );
        };
        match inner.call(req).await {
            Ok(res) => {
                span.record("status", res.status().as_u16());
                if res.status().as_u16() < 400 {
                    return Ok(res.map(Body::new));
                }
                let upstream = UpstreamError::read(res, self.config.max_error_body).await;
                Ok(self.relay_error(upstream, key))
            }
            Err(e) => {
                let e: BoxError = e.into();
                tracing::debug!(
                    error = %scrub_known(&e.to_string(), &[key.expose()]),
                    "upstream transport error on the client's own key"
                );
                Ok(ApiError::from_transport(&*e).into_response(self.dialect))
            }
        }
    }

    /// Picks an untried key; after a transient failure a tried key may serve again.
    fn pick(
        &self,
        tried: &[KeyId],
        last_transient: bool,
    ) -> Result<Lease, super::pool::Unavailable> {
        match self.pool.pick(&self.model, tried) {
            Pick::Key(lease) => Ok(lease),
            Pick::Unavailable(why) if last_transient => match self.pool.pick(&self.model, &[]) {
                Pick::Key(lease) => Ok(lease),
                Pick::Unavailable(_) => Err(why),
            },
            Pick::Unavailable(why) => Err(why),
        }
    }

    /// The attempt's request: the client's parts with `key` as the upstream credential and,
    /// for a pool key, its [`UpstreamKey`](crate::facts::UpstreamKey) fact.
    fn request(&self, body: Body, key: &ApiKey, pool_key: Option<&KeyId>) -> Option<Request<Body>> {
        let value = crate::credential::upstream_key_value(key)?;
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        *req.extensions_mut() = self.parts.extensions.clone();
        req.headers_mut().insert(X_GOOG_API_KEY.clone(), value);
        if let Some(id) = pool_key {
            req.extensions_mut()
                .insert(crate::facts::UpstreamKey::new(id));
        }
        Some(req)
    }

    fn backoff(&self, attempt: usize) -> Duration {
        let exp = (attempt.saturating_sub(1)).min(4) as u32;
        self.config.retry_backoff.saturating_mul(1 << exp)
    }

    /// The upstream error as relayed to the client: the body scrubbed of every key of the
    /// pool and the one used.
    fn relay_error(&self, upstream: UpstreamError, used: &ApiKey) -> Response<Body> {
        let list = self.pool.secrets();
        let mut secrets: Vec<&str> = list.entries.iter().map(|e| e.key.expose()).collect();
        secrets.push(used.expose());
        upstream.into_response(&secrets, self.dialect)
    }
}

/// A short, secret-free description of an upstream error for the key's state.
fn short_error(status: StatusCode, error: Option<&GeminiError>) -> String {
    let name = error
        .and_then(|e| e.reason().or(Some(e.status()).filter(|s| !s.is_empty())))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '.'))
        .take(64)
        .collect();
    format!("{} {name}", status.as_u16())
}

/// Keeps the key counted in flight until a streamed body is done.
fn hold_lease(body: Body, lease: Lease) -> Body {
    if body.as_bytes().is_some() {
        return body; // buffered: nothing left in flight
    }
    Body::new(LeaseBody {
        inner: body,
        lease: Some(lease),
    })
}

struct LeaseBody {
    inner: Body,
    lease: Option<Lease>,
}

impl http_body::Body for LeaseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.lease = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl ResponseFuture ===
