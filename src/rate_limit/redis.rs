//! The Redis store: one limit shared by every gateway instance.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::store::{Check, Outcome, RateLimitStore, Settlement, StoreFuture};
use crate::Error;
use crate::redis_util::{self, RedisConfig, RedisConnection};

/// GCRA for every bucket of a request, all or nothing, in one round trip.
///
/// KEYS: the buckets. ARGV: per bucket `interval_us, capacity, cost`. Time is Redis's `TIME`
/// in microseconds (fractions kept in arithmetic, whole microseconds stored). Returns per
/// bucket `allowed (0/1), remaining, reset_us, retry_us`.
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local new = {}
local ok = true
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local tau = capacity * interval
  local nt = tat + cost * interval
  local allow_at = nt - tau
  local b = 4 * i
  if allow_at > now then
    ok = false
    local used = tat - now
    local rem = 0
    if used < tau then rem = math.floor((tau - used) / interval) end
    out[b - 3] = 0
    out[b - 2] = rem
    out[b - 1] = math.ceil(used)
    out[b] = math.ceil(allow_at - now)
  else
    new[i] = nt
    out[b - 3] = 1
    out[b - 2] = math.floor((tau - (nt - now)) / interval)
    out[b - 1] = math.ceil(nt - now)
    out[b] = 0
  end
end
if ok then
  for i = 1, #KEYS do
    local ttl = math.ceil((new[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', math.ceil(new[i])), 'PX', ttl)
  end
end
return out
";

/// Token settlements. KEYS: the buckets. ARGV: per bucket `interval_us, delta`.
const SETTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local delta = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local nt = tat + delta * interval
  if nt > now then
    local ttl = math.ceil((nt - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', math.ceil(nt)), 'PX', ttl)
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
";

/// A [`RateLimitStore`] in Redis, so that several gateway instances enforce one limit.
///
/// Each check is **one** `EVALSHA` of a Lua script that runs GCRA for every bucket of the
/// request atomically (the script is loaded on first use and after a Redis restart). Time is
/// the Redis server's `TIME`, so the instances' clocks need not agree. Buckets expire when
/// idle.
///
/// Every call, whatever Redis does (down, unreachable, or stalled mid-answer), takes at most
/// the store's timeout (default 50 ms): nothing on the request path waits longer, and no retry
/// runs past it. A failure or timeout is an [`Error`] the layer turns into fail-open or
/// fail-closed. The connection is made in the background on first use (inside the Tokio
/// runtime) and re-made when it breaks.
///
/// One node, TLS (`rediss://`) or a Redis Cluster (several comma-separated seed URLs, or
/// `?cluster=true`): see [`RedisConfig`]. On a Cluster the key prefix is wrapped in a hash tag
/// (`{tower-gemini:rl:}...`, unless it has one already), so that the buckets one script
/// touches share a slot; on one node the names are those earlier versions used.
///
/// ```no_run
/// # fn main() -> Result<(), tower_gemini::Error> {
/// use std::time::Duration;
/// use tower_gemini::rate_limit::{RateLimitLayer, RateLimitRedisStore, Rule};
///
/// let store = RateLimitRedisStore::new("redis://127.0.0.1:6379")?
///     .key_prefix("gateway:rl:")
///     .timeout(Duration::from_millis(50));
/// let layer = RateLimitLayer::builder()
///     .rule(Rule::per_client().requests_per_minute(60))
///     .store(store)
///     .fail_open(false)
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
pub struct RateLimitRedisStore {
    config: Option<RedisConfig>,
    conn: OnceLock<RedisConnection>,
    cluster: bool,
    prefix: Arc<str>,
    timeout: Duration,
    check: redis::Script,
    settle: redis::Script,
}

const DEFAULT_PREFIX: &str = "tower-gemini:rl:";

impl RateLimitRedisStore {
    /// A store for a Redis URL (one node, `rediss://`, `unix://`, or a Cluster's seed nodes:
    /// see [`RedisConfig`]). Only parses the URL; the connection is made on first use.
    pub fn new(url: &str) -> Result<Self, Error> {
        Ok(Self::from_config(&RedisConfig::from_url(url)?))
    }

    /// A store for this Redis (with its CA, if any); the connection is made on first use.
    pub fn from_config(config: &RedisConfig) -> Self {
        Self::with(Some(config.clone()), OnceLock::new(), config.is_cluster())
    }

    /// A store on an existing connection (its calls are still bounded by [`Self::timeout`]).
    pub fn from_connection(conn: RedisConnection) -> Self {
        let cluster = conn.is_cluster();
        Self::with(None, OnceLock::from(conn), cluster)
    }

    fn with(config: Option<RedisConfig>, conn: OnceLock<RedisConnection>, cluster: bool) -> Self {
        Self {
            config,
            conn,
            cluster,
            prefix: redis_util::store_prefix(cluster, DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
            check: redis::Script::new(CHECK),
            settle: redis::Script::new(SETTLE),
        }
    }

    /// The prefix of every key (default `tower-gemini:rl:`; on a Cluster a prefix without a
    /// hash tag is wrapped in one: `{tower-gemini:rl:}`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = redis_util::store_prefix(self.cluster, &prefix.into());
        self
    }

    /// The longest a Redis call may take before it counts as a failure (default 50 ms). It
    /// bounds the whole call: connecting, a script reload, a Cluster redirect included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn connection(&self) -> Result<RedisConnection, Error> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| Error::redis("the rate limit store has no Redis connection"))?;
        let conn = config.connect_lazy(self.timeout)?;
        let conn = self.conn.get_or_init(|| conn).clone();
        self.warm_up(conn.clone());
        Ok(conn)
    }

    /// Connects and loads both scripts in the background, so that the first requests' budget
    /// is not spent on connecting (the connection is otherwise made when first awaited).
    fn warm_up(&self, mut conn: RedisConnection) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let scripts = [self.check.clone(), self.settle.clone()];
        runtime.spawn(async move {
            for script in scripts {
                let load = script.load_async(&mut conn);
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(5), load).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
            }
        });
    }
}

/// The default bound on one call: a limiter check is on every request's path.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

fn micros(d: Duration) -> String {
    // Fractions of a microsecond matter for large token quotas; Lua reads the decimal.
    format!("{:.3}", d.as_secs_f64() * 1e6)
}

impl fmt::Debug for RateLimitRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("RateLimitRedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RateLimitStore for RateLimitRedisStore {
    fn check<'a>(&'a self, checks: &'a [Check]) -> StoreFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(async move {
            let mut conn = self.connection()?;
            let mut invocation = self.check.prepare_invoke();
            for c in checks {
                invocation
                    .key(format!("{}{}", self.prefix, c.key))
                    .arg(micros(c.interval))
                    .arg(c.capacity)
                    .arg(c.cost);
            }
            let reply: Vec<i64> =
                redis_util::within(self.timeout, invocation.invoke_async(&mut conn)).await?;
            if reply.len() != checks.len() * 4 {
                return Err(Error::redis(
                    "the rate limit script answered an unexpected shape",
                ));
            }
            let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
            Ok(reply
                .chunks_exact(4)
                .map(|r| Outcome {
                    allowed: r[0] == 1,
                    remaining: u64::try_from(r[1]).unwrap_or(0),
                    reset: us(r[2]),
                    retry_after: us(r[3]),
                })
                .collect())
        })
    }

    fn settle(&self, settlements: Vec<Settlement>) -> StoreFuture<'static, Result<(), Error>> {
        let conn = self.connection();
        let prefix = self.prefix.clone();
        let script = self.settle.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let mut conn = conn?;
            let mut invocation = script.prepare_invoke();
            for s in &settlements {
                invocation
                    .key(format!("{prefix}{}", s.key))
                    .arg(micros(s.interval))
                    .arg(s.delta);
            }
            let _: i64 = redis_util::within(timeout, invocation.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }
}
