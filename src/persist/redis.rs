//! [`AdminRedisStore`]: the admin store in Redis hashes (feature `redis`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AdminState, AdminStore, KeyRecord, StoreFuture, TokenRecord};
use crate::Error;
use crate::redis_util::{self, RedisConfig, RedisConnection};
use crate::secret::ApiKey;
use crate::secret::TokenDigest;

const DEFAULT_PREFIX: &str = "tower-gemini:admin";

/// An [`AdminStore`] in Redis (feature `redis`), for gateways that already share state there.
///
/// Layout under the prefix (default `tower-gemini:admin`): hashes `{prefix}:keys` (key id →
/// JSON `{"key", "removed"}`), `{prefix}:tokens` (token digest → JSON `{"id", "name",
/// "admin", "revoked"}`) and `{prefix}:settings` (name → JSON), and a counter
/// `{prefix}:version` that every write increments in the same transaction, so that instances
/// sharing the store notice a change with one `GET` (see [`AdminStore::version`]), and a hash
/// `{prefix}:instances` of each instance's last applied version (see
/// [`AdminStore::report_applied`]). The keys hash holds upstream
/// keys in clear: protect the Redis (password, TLS, network) accordingly. Client tokens are
/// stored as SHA-256 digests only.
///
/// On a Redis Cluster the prefix is wrapped in a hash tag (`{tower-gemini:admin}:keys`, ...)
/// so that the hashes share one slot and `load` reads them in one pipeline; on one node the
/// names are the untagged ones earlier versions wrote, so an upgrade keeps the keys, tokens and
/// settings added at run time (see [`RedisConfig`] for the URL forms).
#[derive(Clone)]
pub struct AdminRedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    key: Option<String>,
    removed: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    id: String,
    name: String,
    admin: bool,
    revoked: bool,
    #[serde(default, skip_serializing_if = "crate::facts::Account::is_empty")]
    account: crate::facts::Account,
}

impl AdminRedisStore {
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

    /// Sets the key prefix. Default: `tower-gemini:admin` (`{tower-gemini:admin}` on a
    /// Cluster, where a prefix without a hash tag gets one).
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = redis_util::store_prefix(self.conn.is_cluster(), prefix.as_ref());
        self
    }

    fn hash(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn hset<'a>(&'a self, hash: &'static str, field: String, value: String) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(self.hash(hash))
                .arg(field)
                .arg(value)
                .ignore()
                .cmd("INCR")
                .arg(self.hash("version"))
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }
}

impl fmt::Debug for AdminRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminRedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl AdminStore for AdminRedisStore {
    fn load(&self) -> StoreFuture<'_, AdminState> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            type Hash = HashMap<String, String>;
            let (keys, tokens, settings): (Hash, Hash, Hash) = redis::pipe()
                .cmd("HGETALL")
                .arg(self.hash("keys"))
                .cmd("HGETALL")
                .arg(self.hash("tokens"))
                .cmd("HGETALL")
                .arg(self.hash("settings"))
                .query_async(&mut conn)
                .await
                .map_err(Error::redis)?;
            let mut state = AdminState::default();
            for (id, value) in keys {
                match serde_json::from_str::<StoredKey>(&value) {
                    Ok(StoredKey {
                        key: Some(key),
                        removed: false,
                    }) => state.keys.push(KeyRecord {
                        id,
                        key: ApiKey::new(key),
                    }),
                    Ok(_) => state.removed_keys.push(id),
                    Err(_) => tracing::warn!(key = %id, "admin store: skipping a malformed key"),
                }
            }
            for (digest, value) in tokens {
                let (Some(digest), Ok(t)) = (
                    TokenDigest::from_hex(&digest),
                    serde_json::from_str::<StoredToken>(&value),
                ) else {
                    tracing::warn!("admin store: skipping a malformed token");
                    continue;
                };
                let record = TokenRecord {
                    id: t.id,
                    name: t.name,
                    admin: t.admin,
                    digest,
                    account: t.account,
                };
                if t.revoked {
                    state.revoked_tokens.push(record);
                } else {
                    state.tokens.push(record);
                }
            }
            for (name, value) in settings {
                match serde_json::from_str(&value) {
                    Ok(v) => {
                        state.settings.insert(name, v);
                    }
                    Err(_) => tracing::warn!(setting = %name, "admin store: skipping bad JSON"),
                }
            }
            state.sort();
            Ok(state)
        })
    }

    fn put_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()> {
        let value = json(&StoredKey {
            key: Some(key.key.expose().to_owned()),
            removed: false,
        });
        self.hset("keys", key.id.clone(), value)
    }

    fn remove_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let value = json(&StoredKey {
            key: None,
            removed: true,
        });
        self.hset("keys", id.to_owned(), value)
    }

    fn put_token<'a>(&'a self, t: &'a TokenRecord) -> StoreFuture<'a, ()> {
        let value = json(&StoredToken {
            id: t.id.clone(),
            name: t.name.clone(),
            admin: t.admin,
            revoked: false,
            account: t.account.clone(),
        });
        self.hset("tokens", t.digest.to_hex(), value)
    }

    fn revoke_token<'a>(&'a self, t: &'a TokenRecord) -> StoreFuture<'a, ()> {
        let value = json(&StoredToken {
            id: t.id.clone(),
            name: t.name.clone(),
            admin: t.admin,
            revoked: true,
            account: t.account.clone(),
        });
        self.hset("tokens", t.digest.to_hex(), value)
    }

    fn put_setting<'a>(&'a self, name: &'a str, value: &'a Value) -> StoreFuture<'a, ()> {
        self.hset("settings", name.to_owned(), value.to_string())
    }

    fn delete_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::pipe()
                .atomic()
                .cmd("HDEL")
                .arg(self.hash("settings"))
                .arg(name)
                .ignore()
                .cmd("INCR")
                .arg(self.hash("version"))
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn version(&self) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let v: Option<u64> = redis::cmd("GET")
                .arg(self.hash("version"))
                .query_async(&mut conn)
                .await
                .map_err(Error::redis)?;
            // A store written before versions existed (or emptied) reads as version 0.
            Ok(Some(v.unwrap_or(0)))
        })
    }

    fn report_applied<'a>(&'a self, instance: &'a str, version: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            redis::cmd("HSET")
                .arg(self.hash("instances"))
                .arg(instance)
                .arg(format!("{version} {now}"))
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn applied(&self) -> StoreFuture<'_, Vec<(String, u64, u64)>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let all: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(self.hash("instances"))
                .query_async(&mut conn)
                .await
                .map_err(Error::redis)?;
            let mut out: Vec<(String, u64, u64)> = all
                .into_iter()
                .filter_map(|(instance, v)| {
                    let (version, at) = v.split_once(' ')?;
                    Some((instance, version.parse().ok()?, at.parse().ok()?))
                })
                .collect();
            out.sort();
            Ok(out)
        })
    }

    fn forget_instance<'a>(&'a self, instance: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("HDEL")
                .arg(self.hash("instances"))
                .arg(instance)
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::redis)
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
