//! [`KeyStateRedisStore`]: key-pool state shared across proxy instances through Redis.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

use super::pool::KeyId;
use super::store::{KeyStateStore, SharedKeyState, StoreFuture};
use crate::Error;
use crate::redis_util::{self, RedisConfig, RedisConnection};

const DEFAULT_PREFIX: &str = "tower-gemini:keys";
const SEP: char = '\t';

/// Shares cool-downs and disabled flags between proxy instances through Redis (feature `redis`).
///
/// Layout under the prefix (default `tower-gemini:keys`): a sorted set `{prefix}:cooling`
/// whose members are `"{key id}\t{model}"` scored by the cool-down's end (Unix ms), and a hash
/// `{prefix}:disabled` from key id to `"{re-probe Unix ms} {reason}"`. No secret is stored:
/// keys are known by their fingerprint ids. Instances should have roughly synchronised clocks.
///
/// On a Redis Cluster the prefix is wrapped in a hash tag (`{tower-gemini:keys}:cooling`) so
/// that both keys share one slot and `load` reads them in one pipeline; on one node the names
/// are the untagged ones earlier versions wrote (see [`RedisConfig`] for the URL forms).
#[derive(Clone)]
pub struct KeyStateRedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl KeyStateRedisStore {
    /// Connects to `url` (one node, `rediss://` for TLS, or a Cluster's comma-separated seed
    /// nodes: see [`RedisConfig`]), failing within a few seconds when Redis is unreachable.
    /// The connection is re-established automatically afterwards.
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

    /// Sets the key prefix, to keep several pools (or test runs) apart.
    /// Default: `tower-gemini:keys` (`{tower-gemini:keys}` on a Cluster, where a prefix
    /// without a hash tag gets one).
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = redis_util::store_prefix(self.conn.is_cluster(), prefix.as_ref());
        self
    }

    /// Deletes everything under the prefix (tests).
    #[cfg(test)]
    pub(crate) async fn clear(&self) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.cooling_key())
            .arg(self.disabled_key())
            .query_async::<()>(&mut conn)
            .await
            .map_err(Error::redis)
    }

    fn cooling_key(&self) -> String {
        format!("{}:cooling", self.prefix)
    }

    fn disabled_key(&self) -> String {
        format!("{}:disabled", self.prefix)
    }
}

impl fmt::Debug for KeyStateRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("KeyStateRedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl KeyStateStore for KeyStateRedisStore {
    fn cool_down<'a>(
        &'a self,
        key: &'a KeyId,
        model: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let now = unix_ms(SystemTime::now());
            let cooling = self.cooling_key();
            redis::pipe()
                .cmd("ZADD")
                .arg(&cooling)
                .arg("GT")
                .arg(unix_ms(until))
                .arg(format!("{key}{SEP}{model}"))
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&cooling)
                .arg("-inf")
                .arg(now)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn disable<'a>(
        &'a self,
        key: &'a KeyId,
        reason: &'a str,
        reprobe_at: SystemTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("HSET")
                .arg(self.disabled_key())
                .arg(key.as_str())
                .arg(format!("{} {reason}", unix_ms(reprobe_at)))
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn enable<'a>(&'a self, key: &'a KeyId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("HDEL")
                .arg(self.disabled_key())
                .arg(key.as_str())
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn load(&self) -> StoreFuture<'_, HashMap<KeyId, SharedKeyState>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let now = unix_ms(SystemTime::now());
            let (cooling, disabled): (Vec<(String, f64)>, HashMap<String, String>) = redis::pipe()
                .cmd("ZRANGEBYSCORE")
                .arg(self.cooling_key())
                .arg(format!("({now}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .cmd("HGETALL")
                .arg(self.disabled_key())
                .query_async(&mut conn)
                .await
                .map_err(Error::redis)?;
            let mut out: HashMap<KeyId, SharedKeyState> = HashMap::new();
            for (member, until) in cooling {
                let Some((id, model)) = member.split_once(SEP) else {
                    continue;
                };
                out.entry(KeyId::new(id))
                    .or_default()
                    .cooling
                    .push((model.to_owned(), from_unix_ms(until as u64)));
            }
            for (id, value) in disabled {
                let (at, reason) = value.split_once(' ').unwrap_or((&value, ""));
                let Ok(at) = at.parse::<u64>() else { continue };
                out.entry(KeyId::new(id)).or_default().disabled =
                    Some((reason.to_owned(), from_unix_ms(at)));
            }
            Ok(out)
        })
    }
}
