//! [`AffinityRedisStore`]: resource pins in Redis, shared by every instance of a fleet.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::store::{AffinityStore, Pinned, StoreFuture};
use crate::Error;
use crate::redis_util::{self, RedisConfig, RedisConnection};

const DEFAULT_PREFIX: &str = "tower-gemini:affinity";
/// The longest a request waits on Redis for one pin call; past it the call is a miss.
const BUDGET: Duration = Duration::from_millis(500);

/// Resource pins in Redis (features `affinity` and `redis`): `{prefix}:pin:{name}` holds the
/// entry as JSON and expires with the resource; `{prefix}:idx:{collection}` is a sorted set of
/// names by creation time, for lists. A call that fails or takes longer than 500 ms is
/// logged and treated as a miss (the request goes on without a pin).
///
/// On a Redis Cluster the prefix is wrapped in a hash tag (`{tower-gemini:affinity}:pin:...`)
/// so that a pin and its index change in one transaction and a list reads its pins in one
/// `MGET`; on one node the names are the untagged ones earlier versions wrote, so pins survive
/// an upgrade (see [`RedisConfig`] for the URL forms).
#[derive(Clone)]
pub struct AffinityRedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl fmt::Debug for AffinityRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityRedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl AffinityRedisStore {
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

    /// Sets the key prefix (default `tower-gemini:affinity`; `{tower-gemini:affinity}` on a
    /// Cluster, where a prefix without a hash tag gets one).
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = redis_util::store_prefix(self.conn.is_cluster(), prefix.as_ref());
        self
    }

    fn pin_key(&self, name: &str) -> String {
        format!("{}:pin:{name}", self.prefix)
    }

    fn index_key(&self, name: &str) -> String {
        let collection = name.split('/').next().unwrap_or_default();
        format!("{}:idx:{collection}", self.prefix)
    }
}

fn warn(e: &Error) {
    tracing::warn!(error = %e, "resource pin store (Redis) failed");
}

fn parse(json: Option<String>, now: u64) -> Option<Pinned> {
    json.and_then(|j| serde_json::from_str::<Pinned>(&j).ok())
        .filter(|e| e.expires_at > now)
}

impl AffinityStore for AffinityRedisStore {
    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Pinned>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.pin_key(name));
            let call = cmd.query_async::<Option<String>>(&mut conn);
            match crate::redis_util::within(BUDGET, call).await {
                Ok(json) => parse(json, crate::rfc3339::now()),
                Err(e) => {
                    warn(&e);
                    None
                }
            }
        })
    }

    fn put(&self, entry: Pinned) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let Ok(json) = serde_json::to_string(&entry) else {
                return;
            };
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(self.pin_key(&entry.name))
                .arg(json)
                .arg("EXAT")
                .arg(entry.expires_at.max(1))
                .ignore()
                .cmd("ZADD")
                .arg(self.index_key(&entry.name))
                .arg(entry.created_at)
                .arg(&entry.name)
                .ignore();
            if let Err(e) =
                crate::redis_util::within(BUDGET, pipe.query_async::<()>(&mut conn)).await
            {
                warn(&e);
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("DEL")
                .arg(self.pin_key(name))
                .ignore()
                .cmd("ZREM")
                .arg(self.index_key(name))
                .arg(name)
                .ignore();
            if let Err(e) =
                crate::redis_util::within(BUDGET, pipe.query_async::<()>(&mut conn)).await
            {
                warn(&e);
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str, owner: Option<&'a str>) -> StoreFuture<'a, Vec<Pinned>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let index = self.index_key(prefix);
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(&index).arg(0).arg(-1);
            let names = cmd.query_async::<Vec<String>>(&mut conn);
            let names = match crate::redis_util::within(BUDGET, names).await {
                Ok(n) => n,
                Err(e) => {
                    warn(&e);
                    return Vec::new();
                }
            };
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .collect();
            if names.is_empty() {
                return Vec::new();
            }
            let keys: Vec<String> = names.iter().map(|n| self.pin_key(n)).collect();
            let mut cmd = redis::cmd("MGET");
            cmd.arg(&keys);
            let values = cmd.query_async::<Vec<Option<String>>>(&mut conn);
            let values = match crate::redis_util::within(BUDGET, values).await {
                Ok(v) => v,
                Err(e) => {
                    warn(&e);
                    return Vec::new();
                }
            };
            let now = crate::rfc3339::now();
            let mut gone = Vec::new();
            let mut out = Vec::new();
            for (name, value) in names.iter().zip(values) {
                match parse(value, now) {
                    Some(e) if owner.is_none_or(|o| e.owner == o) => out.push(e),
                    Some(_) => {}
                    None => gone.push(name.clone()),
                }
            }
            if !gone.is_empty() {
                // Expired pins leave the index too.
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(&index).arg(&gone);
                let call = cmd.query_async::<()>(&mut conn);
                if let Err(e) = crate::redis_util::within(BUDGET, call).await {
                    warn(&e);
                }
            }
            out.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
            out
        })
    }
}
