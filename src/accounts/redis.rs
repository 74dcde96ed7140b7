//! [`BudgetRedisStore`]: token usage per client and period in Redis, one count for a fleet.

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::{BudgetStore, Period, PeriodUsage, StoreFuture, Usage};
use crate::Error;
use crate::redis_util::{self, RedisConfig, RedisConnection};

const DEFAULT_PREFIX: &str = "tower-gemini:budget";

/// Counts requests and tokens per client token and period in Redis (feature `redis`), so a
/// budget holds across every instance sharing it.
///
/// Layout: a hash `{prefix}:{id}:{label}` per token and period (`label`: `d20261203`,
/// `m202612`) with fields `requests` and `tokens`, expiring a day after its period ends. One
/// round trip to read both periods, one to count.
///
/// On a Redis Cluster the prefix is wrapped in a hash tag (`{tower-gemini:budget}:...`) so
/// that both periods' hashes share one slot and each round trip is one pipeline; on one node
/// the names are as written above (see [`RedisConfig`] for the URL forms).
#[derive(Clone)]
pub struct BudgetRedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl BudgetRedisStore {
    /// Connects to `url` (one node, `rediss://` for TLS, or a Cluster's comma-separated seed
    /// nodes: see [`RedisConfig`]), failing within a few seconds when Redis is unreachable;
    /// the connection is re-established automatically afterwards.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self::from_connection(
            RedisConfig::from_url(url)?.connect().await?,
        ))
    }

    /// Uses an existing connection manager (one node).
    pub fn from_manager(conn: ConnectionManager) -> Self {
        Self::from_connection(conn.into())
    }

    /// Uses an existing connection (one node or a Cluster).
    pub fn from_connection(conn: RedisConnection) -> Self {
        let prefix = redis_util::store_prefix(conn.is_cluster(), DEFAULT_PREFIX);
        Self { conn, prefix }
    }

    /// Sets the key prefix. Default: `tower-gemini:budget` (`{tower-gemini:budget}` on a
    /// Cluster, where a prefix without a hash tag gets one).
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = redis_util::store_prefix(self.conn.is_cluster(), prefix.as_ref());
        self
    }

    fn key(&self, id: &str, period: Period, now: u64) -> String {
        let tag = match period {
            Period::Day => 'd',
            Period::Month => 'm',
        };
        format!("{}:{id}:{tag}{}", self.prefix, period.label(now))
    }
}

impl fmt::Debug for BudgetRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetRedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl BudgetStore for BudgetRedisStore {
    fn usage<'a>(&'a self, id: &'a str, now: u64) -> StoreFuture<'a, PeriodUsage> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            type Pair = (Option<u64>, Option<u64>);
            let (day, month): (Pair, Pair) = redis::pipe()
                .cmd("HMGET")
                .arg(self.key(id, Period::Day, now))
                .arg("requests")
                .arg("tokens")
                .cmd("HMGET")
                .arg(self.key(id, Period::Month, now))
                .arg("requests")
                .arg("tokens")
                .query_async(&mut conn)
                .await
                .map_err(Error::redis)?;
            let usage = |(requests, tokens): Pair| Usage {
                requests: requests.unwrap_or(0),
                tokens: tokens.unwrap_or(0),
            };
            Ok(PeriodUsage {
                day: usage(day),
                month: usage(month),
            })
        })
    }

    fn record<'a>(&'a self, id: &'a str, tokens: u64, now: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for period in [Period::Day, Period::Month] {
                let key = self.key(id, period, now);
                let ttl = period.reset(now).saturating_sub(now) + 86_400;
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg("requests")
                    .arg(1)
                    .ignore()
                    .cmd("HINCRBY")
                    .arg(&key)
                    .arg("tokens")
                    .arg(tokens)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
