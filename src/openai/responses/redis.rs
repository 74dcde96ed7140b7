//! [`ResponseRedisStore`]: stored responses in Redis, shared by every instance of a fleet.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::store::{ResponseStore, StoreFuture, StoredResponse};
use crate::Error;
use crate::redis_util::{RedisConfig, RedisConnection};

const DEFAULT_PREFIX: &str = "tower-gemini:responses";
/// The longest a request waits on Redis for one call; past it a read is a miss.
const BUDGET: Duration = Duration::from_millis(1000);

/// Stored responses in Redis (features `openai` and `redis`): `{prefix}:resp:{id}` holds the
/// entry as JSON and expires with it. A call that fails or takes longer than a second is
/// logged; a read then answers a miss.
///
/// Every call touches one key, so on a Redis Cluster the names need no hash tag and the
/// responses spread over the nodes (see [`RedisConfig`] for the URL forms).
#[derive(Clone)]
pub struct ResponseRedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl fmt::Debug for ResponseRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseRedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ResponseRedisStore {
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
        Self {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
        }
    }

    /// Sets the key prefix (default `tower-gemini:responses`).
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = Arc::from(prefix.as_ref());
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}:resp:{id}", self.prefix)
    }
}

fn warn(e: &Error) {
    tracing::warn!(error = %e, "response store (Redis) failed");
}

impl ResponseStore for ResponseRedisStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.key(id));
            match crate::redis_util::within(BUDGET, cmd.query_async::<Option<String>>(&mut conn))
                .await
            {
                Ok(json) => {
                    let now = super::super::response::unix_now();
                    json.and_then(|j| serde_json::from_str::<StoredResponse>(&j).ok())
                        .filter(|e| e.expires_at > now)
                }
                Err(e) => {
                    warn(&e);
                    None
                }
            }
        })
    }

    fn put(&self, entry: StoredResponse) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let Ok(json) = serde_json::to_string(&entry) else {
                return;
            };
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(&entry.id))
                .arg(json)
                .arg("EXAT")
                .arg(entry.expires_at.max(1));
            if let Err(e) =
                crate::redis_util::within(BUDGET, cmd.query_async::<()>(&mut conn)).await
            {
                warn(&e);
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("DEL");
            cmd.arg(self.key(id));
            match crate::redis_util::within(BUDGET, cmd.query_async::<u64>(&mut conn)).await {
                Ok(n) => n > 0,
                Err(e) => {
                    warn(&e);
                    false
                }
            }
        })
    }
}
