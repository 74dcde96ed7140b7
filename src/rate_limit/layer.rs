//! `RateLimitLayer`, its builder, the `RateLimit` service and its response future.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::body::{ResponseBody, Settler, buffer_and_settle};
use super::key::{IpNet, IpSource, Subject};
use super::rule::{Quota, QuotaKind, Rule, Scope};
use super::store::{Check, Outcome, RateLimitMemoryStore, RateLimitStore};
use crate::Error;
use crate::body::{Body, BoxError, BoxFuture};
use crate::error::{ApiError, Dialect};

/// `x-ratelimit-limit`: the amount of the tightest quota.
pub(crate) static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`: what is left of the tightest quota.
pub(crate) static X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`: whole seconds until the tightest quota is whole again.
pub(crate) static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

// === RateLimitLayer ===

/// Applies [`RateLimit`]: quotas per client, IP address, model or for the whole gateway.
///
/// Built with [`RateLimitLayer::builder`]. The store (and so every quota) is shared by all
/// clones of the layer and of its services.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

struct Shared {
    rules: Vec<CompiledRule>,
    store: Arc<dyn RateLimitStore>,
    fail_open: bool,
    ip: IpSource,
    max_buffer: usize,
    bytes_per_token: u64,
}

struct CompiledRule {
    scope: Scope,
    quotas: Vec<CompiledQuota>,
}

struct CompiledQuota {
    quota: Quota,
    /// The bucket key's prefix: rule index and quota, so that changing a quota starts afresh.
    tag: String,
    interval: Duration,
    capacity: u64,
}

impl RateLimitLayer {
    /// A builder with no rules, the in-memory store and fail-open.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::default()
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self
            .shared
            .rules
            .iter()
            .map(|r| {
                let q: Vec<String> = r.quotas.iter().map(|q| q.quota.to_string()).collect();
                format!("{}: {}", r.scope, q.join(", "))
            })
            .collect();
        f.debug_struct("RateLimitLayer")
            .field("rules", &rules)
            .field("fail_open", &self.shared.fail_open)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === RateLimitLayerBuilder ===

/// Builds a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
pub struct RateLimitLayerBuilder {
    rules: Vec<Rule>,
    store: Option<Arc<dyn RateLimitStore>>,
    fail_open: bool,
    forwarded_header: Option<String>,
    trusted_proxies: Vec<String>,
    max_buffer: usize,
    bytes_per_token: u64,
}

impl Default for RateLimitLayerBuilder {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            store: None,
            fail_open: true,
            forwarded_header: None,
            trusted_proxies: Vec::new(),
            max_buffer: 4 << 20,
            bytes_per_token: 4,
        }
    }
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("rules", &self.rules)
            .field("fail_open", &self.fail_open)
            .field("forwarded_header", &self.forwarded_header)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_buffer", &self.max_buffer)
            .field("bytes_per_token", &self.bytes_per_token)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Adds a rule. Every rule that applies to a request must allow it.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds rules (e.g. [`ModelLimits::rules`](super::ModelLimits::rules)).
    pub fn rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.rules.extend(rules);
        self
    }

    /// The store (default: a new [`RateLimitMemoryStore`]). Pass an `Arc` to share one store between
    /// several layers.
    pub fn store(mut self, store: impl RateLimitStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// What to do when the store fails (Redis unreachable or slow): `true` (the default) lets
    /// requests through without limits, `false` answers 503. Either way it is logged with
    /// `warn!`.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Takes the client IP from a forwarding header set by a proxy in front of the gateway
    /// (e.g. `x-forwarded-for`): its right-most entry that is not a
    /// [trusted proxy](Self::trusted_proxies). Default: none, the connection's peer address is
    /// the client ([`ClientAddr`](super::ClientAddr) or a `SocketAddr` extension).
    pub fn forwarded_header(mut self, name: impl Into<String>) -> Self {
        self.forwarded_header = Some(name.into());
        self
    }

    /// Proxies whose entries in the forwarding header are skipped (`10.0.0.0/8`, `::1`, ...).
    /// When set, a header from a peer that is not one of them is ignored.
    pub fn trusted_proxies<I, T>(mut self, nets: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.trusted_proxies
            .extend(nets.into_iter().map(Into::into));
        self
    }

    /// The largest non-streamed answer buffered to read its token usage (default 4 MiB);
    /// larger ones are relayed as they come and scanned on the way.
    pub fn max_buffered_response(mut self, bytes: usize) -> Self {
        self.max_buffer = bytes;
        self
    }

    /// Request-body bytes per estimated token, for the charge made before the call
    /// (default 4). The charge is settled with the real count after it.
    pub fn bytes_per_token(mut self, bytes: u64) -> Self {
        self.bytes_per_token = bytes;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, Error> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let quotas = rule.quotas();
            if quotas.is_empty() {
                return Err(Error::config(format!(
                    "rate limit rule {} ({}) has no quota",
                    i + 1,
                    rule.scope
                )));
            }
            let mut compiled = Vec::with_capacity(quotas.len());
            for quota in quotas {
                quota.validate().map_err(|e| {
                    Error::config(format!("rate limit rule {} ({}): {e}", i + 1, rule.scope))
                })?;
                let kind = match quota.kind() {
                    QuotaKind::Requests => 'r',
                    QuotaKind::Tokens => 't',
                };
                compiled.push(CompiledQuota {
                    tag: format!(
                        "{i}:{kind}{}/{}ms+{}",
                        quota.amount(),
                        quota.period().as_millis(),
                        quota.burst()
                    ),
                    interval: quota.interval(),
                    capacity: quota.burst(),
                    quota,
                });
            }
            rules.push(CompiledRule {
                scope: rule.scope.clone(),
                quotas: compiled,
            });
        }
        let header = match &self.forwarded_header {
            None => None,
            Some(h) => Some(HeaderName::try_from(h.trim()).map_err(|_| {
                Error::config(format!("`{h}` is not a valid forwarding header name"))
            })?),
        };
        let trusted = self
            .trusted_proxies
            .iter()
            .map(|t| {
                IpNet::parse(t).ok_or_else(|| {
                    Error::config(format!(
                        "trusted proxy `{t}` is not an IP address or network (e.g. `10.0.0.0/8`)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.bytes_per_token == 0 {
            return Err(Error::config("bytes per token must be at least 1"));
        }
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                rules,
                store: self
                    .store
                    .unwrap_or_else(|| Arc::new(RateLimitMemoryStore::new())),
                fail_open: self.fail_open,
                ip: IpSource { header, trusted },
                max_buffer: self.max_buffer,
                bytes_per_token: self.bytes_per_token,
            }),
        })
    }
}

// === Plan: the buckets of one request ===

struct Planned<'r> {
    /// Who the bucket counts, for the refusal's message (`per client`, ...).
    scope: &'r (dyn fmt::Display + Sync),
    quota: Quota,
}

/// How a token's own quotas are named in a refusal.
const ACCOUNT_SCOPE: &str = "of this client token";

struct Plan<'r> {
    checks: Vec<Check>,
    planned: Vec<Planned<'r>>,
}

impl Shared {
    fn plan(&self, subject: &Subject, body_bytes: Option<u64>) -> Plan<'_> {
        let mut plan = Plan {
            checks: Vec::new(),
            planned: Vec::new(),
        };
        let estimate = body_bytes.unwrap_or(0) / self.bytes_per_token;
        let estimate = estimate.max(1);
        let mut suffix = String::new();
        for rule in &self.rules {
            suffix.clear();
            if subject.key(&rule.scope, &mut suffix).is_none() {
                continue;
            }
            for quota in &rule.quotas {
                // A token's own quota of the same kind and period replaces the global
                // per-client one.
                if rule.scope.is_client_only()
                    && subject.account_quotas.iter().any(|q| {
                        q.kind() == quota.quota.kind() && q.period() == quota.quota.period()
                    })
                {
                    continue;
                }
                let cost = match quota.quota.kind() {
                    QuotaKind::Requests => 1,
                    QuotaKind::Tokens if subject.spends_tokens => {
                        // A single request larger than the whole bucket could never pass:
                        // charge at most a full bucket, the settlement charges the rest.
                        estimate.min(quota.capacity)
                    }
                    QuotaKind::Tokens => continue,
                };
                let mut key = String::with_capacity(quota.tag.len() + suffix.len());
                key.push_str(&quota.tag);
                key.push_str(&suffix);
                plan.checks.push(Check {
                    key,
                    interval: quota.interval,
                    capacity: quota.capacity,
                    cost,
                });
                plan.planned.push(Planned {
                    scope: &rule.scope,
                    quota: quota.quota,
                });
            }
        }
        if let Some(client) = &subject.client {
            for quota in &subject.account_quotas {
                let cost = match quota.kind() {
                    QuotaKind::Requests => 1,
                    QuotaKind::Tokens if subject.spends_tokens => estimate.min(quota.burst()),
                    QuotaKind::Tokens => continue,
                };
                let kind = match quota.kind() {
                    QuotaKind::Requests => 'r',
                    QuotaKind::Tokens => 't',
                };
                plan.checks.push(Check {
                    // The amount is part of the bucket: a changed limit starts a fresh one.
                    key: format!(
                        "acct:{kind}{}/{}ms|c={client}",
                        quota.amount(),
                        quota.period().as_millis()
                    ),
                    interval: quota.interval(),
                    capacity: quota.burst(),
                    cost,
                });
                plan.planned.push(Planned {
                    scope: &ACCOUNT_SCOPE,
                    quota: *quota,
                });
            }
        }
        plan
    }
}

impl Plan<'_> {
    /// The refused bucket that frees up last, if any bucket refused.
    fn refused(&self, outcomes: &[Outcome]) -> Option<usize> {
        (0..outcomes.len())
            .filter(|&i| !outcomes[i].allowed)
            .max_by_key(|&i| outcomes[i].retry_after)
    }

    /// The bucket with the smallest share left (`remaining / capacity`, compared by
    /// cross-multiplication); on a tie, the one that takes longest to refill.
    fn tightest(&self, outcomes: &[Outcome]) -> Option<usize> {
        (0..outcomes.len()).min_by(|&a, &b| {
            let (oa, ob) = (&outcomes[a], &outcomes[b]);
            let lhs = u128::from(oa.remaining) * u128::from(self.checks[b].capacity);
            let rhs = u128::from(ob.remaining) * u128::from(self.checks[a].capacity);
            lhs.cmp(&rhs).then(ob.reset.cmp(&oa.reset))
        })
    }

    fn headers(&self, i: usize, outcome: &Outcome, headers: &mut HeaderMap) {
        let amount = self.planned[i].quota.amount();
        headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(amount));
        headers.insert(
            X_RATELIMIT_REMAINING.clone(),
            HeaderValue::from(outcome.remaining),
        );
        headers.insert(
            X_RATELIMIT_RESET.clone(),
            HeaderValue::from(ceil_secs(outcome.reset)),
        );
    }

    fn settler(&self, store: &Arc<dyn RateLimitStore>) -> Option<Settler> {
        let charged: Vec<(String, Duration, u64)> = self
            .checks
            .iter()
            .zip(&self.planned)
            .filter(|(_, p)| p.quota.kind() == QuotaKind::Tokens)
            .map(|(c, _)| (c.key.clone(), c.interval, c.cost))
            .collect();
        (!charged.is_empty()).then(|| Settler {
            store: store.clone(),
            charged,
        })
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

// === RateLimit ===

/// Enforces quotas; see the [module docs](super).
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with the rules and store of `layer`.
    pub fn new(inner: S, layer: &RateLimitLayer) -> Self {
        layer.layer(inner)
    }

    /// A builder for the layer (same as [`RateLimitLayer::builder`]).
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayer::builder()
    }

    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
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
        let shared = self.shared.clone();
        let mut req = req.map(Body::new);
        crate::facts::resolve_call(&mut req);
        BoxFuture(Box::pin(async move {
            let subject = Subject::of(&req, &shared.ip);
            // File bytes on their way to an upload are no prompt: they estimate no tokens.
            let body_bytes = if req.uri().path().starts_with("/upload/") {
                None
            } else {
                http_body::Body::size_hint(req.body())
                    .exact()
                    .or_else(|| content_length(&req))
            };
            let plan = shared.plan(&subject, body_bytes);
            if plan.checks.is_empty() {
                return inner.call(req).await.map(|res| res.map(Body::new));
            }
            let dialect = Dialect::of(&req);
            let outcomes = match shared.store.check(&plan.checks).await {
                Ok(o) if o.len() == plan.checks.len() => Some(o),
                Ok(o) => {
                    tracing::warn!(
                        expected = plan.checks.len(),
                        got = o.len(),
                        "rate limit store answered the wrong number of outcomes"
                    );
                    None
                }
                Err(e) => {
                    let detail = std::error::Error::source(&e)
                        .map(|s| crate::secret::scrub(&s.to_string()).into_owned());
                    tracing::warn!(
                        error = %e,
                        detail = detail.as_deref().unwrap_or(""),
                        fail_open = shared.fail_open,
                        "rate limit store failed"
                    );
                    None
                }
            };
            let Some(outcomes) = outcomes else {
                if shared.fail_open {
                    return inner.call(req).await.map(|res| res.map(Body::new));
                }
                return Ok(ApiError::service_unavailable(
                    "the rate limiter is unavailable; try again shortly",
                )
                .with_retry_after(Duration::from_secs(1))
                .into_response(dialect));
            };
            if let Some(i) = plan.refused(&outcomes) {
                let o = &outcomes[i];
                let p = &plan.planned[i];
                let wait = ceil_secs(o.retry_after).max(1);
                let message = format!(
                    "rate limit of {} {} exceeded; retry in {wait} s",
                    p.quota, p.scope
                );
                tracing::debug!(limit = %message, "request refused");
                if let Some(report) = crate::facts::Report::of(&req) {
                    report.record_rate_limited();
                }
                let mut res =
                    ApiError::too_many_requests(message, o.retry_after).into_response(dialect);
                plan.headers(i, o, res.headers_mut());
                return Ok(res);
            }
            let settler = plan.settler(&shared.store);
            let res = match inner.call(req).await {
                Ok(res) => res,
                Err(e) => {
                    // Nothing was generated: give the estimate back.
                    if let Some(s) = settler {
                        s.finish(Some(0));
                    }
                    return Err(e);
                }
            };
            let mut res = res.map(Body::new);
            if let Some(i) = plan.tightest(&outcomes) {
                plan.headers(i, &outcomes[i], res.headers_mut());
            }
            let Some(settler) = settler else {
                return Ok(res);
            };
            if !res.status().is_success() {
                // Failed calls spend no tokens upstream.
                settler.finish(Some(0));
                return Ok(res);
            }
            let streams = subject.streams || is_event_stream(&res);
            let (parts, body) = res.into_parts();
            let body = if streams {
                Body::new(ResponseBody::new(body, settler))
            } else {
                buffer_and_settle(body, settler, shared.max_buffer).await
            };
            Ok(Response::from_parts(parts, body))
        }))
    }
}

/// Response future of [`RateLimit`]: one boxed future type for every layer whose work is `async`.
pub type ResponseFuture<E> = crate::body::BoxFuture<Result<Response<Body>, E>>;

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_event_stream<B>(res: &Response<B>) -> bool {
    res.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}
