//! The Redis store: one limit shared by every gateway instance.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::store::{Check, Outcome, RateLimitStore, Settlement, StoreFuture};
use crate::Error;
use crate::redis_util;

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
/// idle. Every call is bounded by a timeout (default 250 ms); a failure or timeout is an
/// [`Error`] the layer turns into fail-open or fail-closed.
///
/// The connection is made on first use (inside the Tokio runtime) and re-made in the
/// background when it breaks. The keys of one request must live on one node: use a single
/// Redis (or a `{hash tag}` in the key prefix on a cluster).
///
/// ```no_run
/// # fn main() -> Result<(), tower_gemini::Error> {
/// use std::time::Duration;
/// use tower_gemini::rate_limit::{RateLimitLayer, RateLimitRedisStore, Rule};
///
/// let store = RateLimitRedisStore::new("redis://127.0.0.1:6379")?
///     .key_prefix("gateway:rl:")
///     .timeout(Duration::from_millis(250));
/// let layer = RateLimitLayer::builder()
///     .rule(Rule::per_client().requests_per_minute(60))
///     .store(store)
///     .fail_open(false)
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
pub struct RateLimitRedisStore {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    check: redis::Script,
    settle: redis::Script,
}

impl RateLimitRedisStore {
    /// A store for a `redis://` (or `rediss://`, `unix://`) URL. Only parses the URL; the
    /// connection is made on first use.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|_| {
            // The URL may hold a password: never echo it.
            Error::config("REDIS_URL is not a valid redis:// URL")
        })?;
        Ok(Self {
            client,
            conn: OnceLock::new(),
            prefix: "tower-gemini:rl:".to_owned(),
            timeout: Duration::from_millis(250),
            check: redis::Script::new(CHECK),
            settle: redis::Script::new(SETTLE),
        })
    }

    /// The prefix of every key (default `tower-gemini:rl:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a Redis call may take before it counts as a failure (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn connection(&self) -> Result<ConnectionManager, Error> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(Error::redis)?;
        Ok(self.conn.get_or_init(|| conn).clone())
    }
}

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
