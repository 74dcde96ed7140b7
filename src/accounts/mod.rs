//! Client tokens as accounts: the models a token may use and its token budgets.
//!
//! A token's [`Account`](crate::facts::Account) (carried by its [`Identity`]) says what it may
//! do beyond the gateway's global settings. This module enforces what needs the request's
//! model or the token's usage so far:
//! - [`AccountLayer`]: a model outside the token's `models` → 403 naming the model; a spent
//!   daily or monthly token budget → 429 with `Retry-After` until the period resets (UTC
//!   midnight, the first of the next month) and the period in the message. Both before any
//!   upstream call, in the route's dialect. Mount it after the layers that resolve the model
//!   (the request policy's aliases), e.g. with
//!   [`GatewayBuilder::accounts`](crate::gateway::GatewayBuilder::accounts).
//! - [`BudgetRecorder`]: a usage sink that adds each answer's tokens (prompt + output +
//!   thoughts, streams included, as [`UsageLayer`](crate::usage::UsageLayer) counts them) to
//!   the token's day and month in a [`BudgetStore`].
//! - [`BudgetStore`]: where usage per token and period is counted: [`MemoryBudgetStore`] for
//!   one process, `BudgetRedisStore` (feature `redis`) for a fleet, so a budget holds across
//!   instances.
//!
//! Expiry (`expires_at` → 401) is enforced where tokens are checked (`BearerAuth`, the Live
//! API's handshake); per-token `rpm`/`tpm`/`rpd` by the rate limiter, which gives a token's
//! own quotas precedence over the global per-client ones.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tower_gemini::accounts::{BudgetStore, MemoryBudgetStore};
//!
//! let store = MemoryBudgetStore::new();
//! let now = 1_796_256_000; // 2026-12-03T00:00:00Z
//! store.record("tok_0123456789ab", 700, now).await.unwrap();
//! store.record("tok_0123456789ab", 400, now + 60).await.unwrap();
//! let used = store.usage("tok_0123456789ab", now + 120).await.unwrap();
//! assert_eq!((used.day.requests, used.day.tokens), (2, 1_100));
//! // The next day starts from zero; the month keeps counting.
//! let tomorrow = store.usage("tok_0123456789ab", now + 86_400).await.unwrap();
//! assert_eq!((tomorrow.day.tokens, tomorrow.month.tokens), (0, 1_100));
//! # });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::Error;
use crate::body::{Body, BoxError};
use crate::error::{ApiError, Dialect};
use crate::facts::{Account, Identity};
use crate::usage::{UsageRecord, UsageSink};

#[cfg(feature = "redis")]
mod redis;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::BudgetRedisStore;

/// The future of a [`BudgetStore`] call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

// === Periods ===

/// Requests and tokens counted in one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests answered for the token.
    pub requests: u64,
    /// Tokens its answers used (prompt + output + thoughts).
    pub tokens: u64,
}

/// A token's usage in the current day and month (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodUsage {
    /// Since midnight UTC.
    pub day: Usage,
    /// Since the first of the month, UTC.
    pub month: Usage,
}

/// The calendar periods budgets count in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl Period {
    /// The period's name in messages: `daily`, `monthly`.
    pub fn adjective(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Month => "monthly",
        }
    }

    /// The label of the period holding `unix` seconds: `20261203` for a day, `202612` for a
    /// month (what stores key their counters by).
    pub fn label(self, unix: u64) -> u32 {
        let (y, m, d) = crate::rfc3339::civil(unix);
        let ym = (y.clamp(0, 9999) as u32) * 100 + m;
        match self {
            Period::Day => ym * 100 + d,
            Period::Month => ym,
        }
    }

    /// Unix seconds when the period holding `unix` ends (the next one begins).
    pub fn reset(self, unix: u64) -> u64 {
        match self {
            Period::Day => (unix / 86_400 + 1) * 86_400,
            Period::Month => {
                let (y, m, _) = crate::rfc3339::civil(unix);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                crate::rfc3339::unix_of_date(y, m, 1)
            }
        }
    }
}

// === BudgetStore ===

/// Where requests and tokens per client token and period are counted.
pub trait BudgetStore: Send + Sync + 'static {
    /// The usage of token `id` in the day and month holding `now` (Unix seconds).
    fn usage<'a>(&'a self, id: &'a str, now: u64) -> StoreFuture<'a, PeriodUsage>;
    /// Counts one request of token `id` that used `tokens`, at `now`.
    fn record<'a>(&'a self, id: &'a str, tokens: u64, now: u64) -> StoreFuture<'a, ()>;
    /// What kind of store this is (`memory`, `redis`), for status pages.
    fn kind(&self) -> &'static str;
}

impl<T: BudgetStore + ?Sized> BudgetStore for Arc<T> {
    fn usage<'a>(&'a self, id: &'a str, now: u64) -> StoreFuture<'a, PeriodUsage> {
        (**self).usage(id, now)
    }
    fn record<'a>(&'a self, id: &'a str, tokens: u64, now: u64) -> StoreFuture<'a, ()> {
        (**self).record(id, tokens, now)
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
}

/// A [`BudgetStore`] in memory: counts for this process only, lost on restart. Keeps the
/// current and the previous period of each kind per token.
#[derive(Default)]
pub struct MemoryBudgetStore {
    counts: Mutex<HashMap<(String, Period, u32), Usage>>,
}

impl MemoryBudgetStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryBudgetStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.counts.lock().map_or(0, |c| c.len());
        f.debug_struct("MemoryBudgetStore")
            .field("counters", &n)
            .finish()
    }
}

impl BudgetStore for MemoryBudgetStore {
    fn usage<'a>(&'a self, id: &'a str, now: u64) -> StoreFuture<'a, PeriodUsage> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let get = |p: Period| {
            counts
                .get(&(id.to_owned(), p, p.label(now)))
                .copied()
                .unwrap_or_default()
        };
        let usage = PeriodUsage {
            day: get(Period::Day),
            month: get(Period::Month),
        };
        Box::pin(std::future::ready(Ok(usage)))
    }

    fn record<'a>(&'a self, id: &'a str, tokens: u64, now: u64) -> StoreFuture<'a, ()> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (day, month) = (Period::Day.label(now), Period::Month.label(now));
        // Old periods go: nothing reads them again.
        counts.retain(|(_, p, label), _| match p {
            Period::Day => *label >= day.saturating_sub(1),
            Period::Month => *label >= month.saturating_sub(1),
        });
        for (p, label) in [(Period::Day, day), (Period::Month, month)] {
            let u = counts.entry((id.to_owned(), p, label)).or_default();
            u.requests = u.requests.saturating_add(1);
            u.tokens = u.tokens.saturating_add(tokens);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

// === BudgetRecorder ===

/// A usage sink that counts each client's requests and tokens in a [`BudgetStore`] (off the
/// request path: each record is sent by a task). Records without a client (refused before
/// authentication) or refused before any upstream call are not counted.
#[derive(Clone)]
pub struct BudgetRecorder {
    store: Arc<dyn BudgetStore>,
}

impl BudgetRecorder {
    /// Counts into `store`.
    pub fn new(store: Arc<dyn BudgetStore>) -> Self {
        Self { store }
    }
}

impl fmt::Debug for BudgetRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetRecorder")
            .field("store", &self.store.kind())
            .finish()
    }
}

impl UsageSink for BudgetRecorder {
    fn record(&self, record: &UsageRecord) {
        let Some(client) = &record.client else { return };
        let tokens = record
            .tokens
            .as_ref()
            .map_or(0, crate::facts::Tokens::billable);
        // Requests refused before any upstream call (a limit, a budget, a model) used
        // nothing: they are not the token's usage.
        if record.upstream_attempts == 0 && tokens == 0 {
            return;
        }
        let store = self.store.clone();
        let id = client.id.clone();
        let now = crate::rfc3339::now();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if let Err(e) = store.record(&id, tokens, now).await {
                tracing::warn!(error = %e, client = %id, "token usage not counted");
            }
        });
    }
}

// === AccountLayer ===

/// Enforces a token's models and budgets; see the [module docs](self).
#[derive(Clone)]
pub struct AccountLayer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn BudgetStore>,
    timeout: Duration,
    fail_open: bool,
}

impl AccountLayer {
    /// Budgets counted in `store`; a store that fails or answers slower than 50 ms lets the
    /// request through (logged).
    pub fn new(store: Arc<dyn BudgetStore>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                timeout: Duration::from_millis(50),
                fail_open: true,
            }),
        }
    }

    /// The most a request waits for the budget store. Default: 50 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shared_mut().timeout = timeout;
        self
    }

    /// When the budget store fails or is too slow: serve the request (`true`, the default) or
    /// answer 503.
    pub fn fail_open(mut self, yes: bool) -> Self {
        self.shared_mut().fail_open = yes;
        self
    }

    /// The store the budgets are counted in.
    pub fn store(&self) -> &Arc<dyn BudgetStore> {
        &self.shared.store
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared).expect("AccountLayer is configured before it is cloned")
    }
}

impl fmt::Debug for AccountLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountLayer")
            .field("store", &self.shared.store.kind())
            .field("timeout", &self.shared.timeout)
            .field("fail_open", &self.shared.fail_open)
            .finish()
    }
}

impl<S> Layer<S> for AccountLayer {
    type Service = Accounts<S>;

    fn layer(&self, inner: S) -> Accounts<S> {
        Accounts {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`AccountLayer`].
#[derive(Clone)]
pub struct Accounts<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Accounts<S> {
    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Accounts<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ResBody> Service<Request<Body>> for Accounts<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = crate::body::BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        crate::facts::resolve_call(&mut req);
        crate::body::BoxFuture(Box::pin(async move {
            let account = req
                .extensions()
                .get::<Identity>()
                .and_then(|i| Some((i.id().to_owned(), i.account_arc()?)));
            if let Some((id, account)) = account {
                let model = crate::facts::model(&req).map(str::to_owned);
                let report = crate::facts::Report::of(&req).cloned();
                let dialect = Dialect::of(&req);
                if let Some(refused) = shared
                    .refusal(model.as_deref(), report.as_ref(), &id, &account)
                    .await
                {
                    return Ok(refused.into_response(dialect));
                }
            }
            inner.call(req).await.map(|res| res.map(Body::new))
        }))
    }
}

impl Shared {
    /// Why this request of token `id` may not go on, if it may not.
    async fn refusal(
        &self,
        model: Option<&str>,
        report: Option<&crate::facts::Report>,
        id: &str,
        account: &Account,
    ) -> Option<ApiError> {
        if let Some(model) = model {
            if !account.allows_model(model) {
                let allowed = account.models.as_deref().unwrap_or_default().join(", ");
                return Some(ApiError::forbidden(format!(
                    "model `{model}` is not allowed for this client token (allowed: {allowed})"
                )));
            }
        }
        let budgets = [
            (Period::Day, account.daily_token_budget),
            (Period::Month, account.monthly_token_budget),
        ];
        if budgets.iter().all(|(_, b)| b.is_none()) {
            return None;
        }
        let now = crate::rfc3339::now();
        let usage = match tokio::time::timeout(self.timeout, self.store.usage(id, now)).await {
            Ok(Ok(usage)) => usage,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.timeout),
                };
                tracing::warn!(client = %id, error = %why, fail_open = self.fail_open, "budget store failed");
                if self.fail_open {
                    return None;
                }
                return Some(
                    ApiError::service_unavailable(
                        "token budgets cannot be checked right now; try again shortly",
                    )
                    .with_retry_after(Duration::from_secs(1)),
                );
            }
        };
        for (period, budget) in budgets {
            let Some(budget) = budget else { continue };
            let used = match period {
                Period::Day => usage.day.tokens,
                Period::Month => usage.month.tokens,
            };
            if used >= budget {
                let reset = period.reset(now);
                if let Some(report) = report {
                    report.record_rate_limited();
                }
                return Some(ApiError::too_many_requests(
                    format!(
                        "the {} token budget of this client token ({budget} tokens) is spent \
                         ({used} used); it resets at {}",
                        period.adjective(),
                        Account::format_time(reset)
                    ),
                    Duration::from_secs(reset.saturating_sub(now).max(1)),
                ));
            }
        }
        None
    }
}
