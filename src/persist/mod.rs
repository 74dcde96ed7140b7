//! Admin changes that survive a restart: upstream keys, client tokens and named settings.
//!
//! An [`AdminStore`] is where a gateway writes what its admin API changed at run time, and
//! what it reads back on start to merge with its configuration:
//! - **keys**: upstream keys added (kept *as they are*, since the gateway must use them after a
//!   restart) and tombstones of keys removed (the key itself is erased);
//! - **tokens**: client tokens created, as a [`TokenDigest`] (SHA-256) with their id,
//!   name and admin flag, never the token itself, and tombstones of tokens revoked;
//! - **settings**: named JSON values, for run-time policy changes.
//!
//! Implementations: [`AdminMemoryStore`] (lost on restart), `AdminSqliteStore` (feature `sqlite`, a file
//! created with mode 0600) and `AdminRedisStore` (feature `redis`, hashes under a prefix). A store
//! that holds upstream keys must be protected like the keys themselves.
//!
//! With the `sqlite` feature, `RequestLog` writes one row per request into the same database,
//! in batches off the request path (see its docs).
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tower_gemini::auth::{MemoryTokenStore, TokenStore};
//! use tower_gemini::persist::{AdminStore, AdminMemoryStore, TokenRecord};
//!
//! let store = AdminMemoryStore::new();
//! store.put_token(&TokenRecord::new("sk-secret-client-token", "my-app", false)).await.unwrap();
//!
//! // On the next start: restore the tokens into the gateway's token store.
//! let state = store.load().await.unwrap();
//! let tokens = MemoryTokenStore::new();
//! for t in &state.tokens {
//!     tokens.insert_digest(t.digest, t.id.as_str(), t.name.as_str(), t.admin);
//! }
//! assert_eq!(tokens.authenticate("sk-secret-client-token").unwrap().name(), "my-app");
//! # });
//! ```
//!
//! # Several instances
//! Each instance applies its own admin changes at once and writes them through. Instances
//! sharing a store see each other's changes by polling [`AdminStore::version`] and loading
//! the state again when it moved (full_proxy does so every `FLEET_SYNC_MS`); a store without
//! a version (SQLite) is only seen at start and by a periodic full load.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::Error;
use crate::secret::ApiKey;
use crate::secret::TokenDigest;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod request_log;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::AdminRedisStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use request_log::{
    ErrorFilter, LoggedRequest, RequestLog, RequestLogBuilder, RequestLogStats, RequestQuery,
    StatusFilter,
};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::AdminSqliteStore;

/// The future of an [`AdminStore`] operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

// === Records ===

/// An upstream key added at run time. Its `Debug` masks the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's id in the pool (its fingerprint).
    pub id: String,
    /// The key itself: the gateway needs it after a restart.
    pub key: ApiKey,
}

impl KeyRecord {
    /// A record for `key`, with its fingerprint as id.
    pub fn new(key: impl Into<ApiKey>) -> Self {
        let key = key.into();
        Self {
            id: key.fingerprint(),
            key,
        }
    }

    /// Sets the id (when the pool gave the key another one).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// A client token, known by its digest: the token itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's id in listings ([`TokenDigest::id`]; records written by earlier versions
    /// hold the masked token).
    pub id: String,
    /// The client's name.
    pub name: String,
    /// Whether it is an admin token.
    pub admin: bool,
    /// The token's SHA-256 digest.
    pub digest: TokenDigest,
    /// What the token may do beyond the global settings (models, limits, budgets, expiry).
    pub account: crate::facts::Account,
}

impl TokenRecord {
    /// A record for `token` (which is hashed here, and not kept).
    pub fn new(token: &str, name: impl Into<String>, admin: bool) -> Self {
        let digest = TokenDigest::of(token);
        Self {
            id: digest.id(),
            name: name.into(),
            admin,
            digest,
            account: crate::facts::Account::default(),
        }
    }

    /// Sets the token's account settings.
    pub fn with_account(mut self, account: crate::facts::Account) -> Self {
        self.account = account;
        self
    }
}

#[cfg(feature = "bearer-auth")]
impl From<crate::auth::TokenInfo> for TokenRecord {
    fn from(t: crate::auth::TokenInfo) -> Self {
        Self {
            id: t.id,
            name: t.name,
            admin: t.admin,
            digest: t.digest,
            account: t.account.map(|a| (*a).clone()).unwrap_or_default(),
        }
    }
}

/// Everything an [`AdminStore`] holds, as read on start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdminState {
    /// Keys added at run time (and not removed since).
    pub keys: Vec<KeyRecord>,
    /// Ids of keys removed at run time: a configured key with such an id stays out.
    pub removed_keys: Vec<String>,
    /// Tokens created at run time (and not revoked since).
    pub tokens: Vec<TokenRecord>,
    /// Tokens revoked at run time: a configured token with such a digest stays out.
    pub revoked_tokens: Vec<TokenRecord>,
    /// Named settings.
    pub settings: BTreeMap<String, Value>,
}

impl AdminState {
    /// Whether a key with this id was removed at run time.
    pub fn is_key_removed(&self, id: &str) -> bool {
        self.removed_keys.iter().any(|r| r == id)
    }

    /// Whether `token` was revoked at run time.
    pub fn is_token_revoked(&self, token: &str) -> bool {
        let d = TokenDigest::of(token);
        self.revoked_tokens.iter().any(|r| r.digest == d)
    }
}

// === AdminStore ===

/// Where admin changes are kept: the plug point for databases.
///
/// Writes are idempotent: putting a key or token again replaces it (and clears its tombstone);
/// removing one leaves a tombstone so that the same key or token given in the configuration
/// stays removed after a restart.
pub trait AdminStore: Send + Sync + 'static {
    /// Everything the store holds.
    fn load(&self) -> StoreFuture<'_, AdminState>;
    /// Keeps an upstream key added at run time.
    fn put_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()>;
    /// Forgets a key (erasing it) and remembers that `id` was removed.
    fn remove_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
    /// Keeps a client token created at run time (its digest, never the token).
    fn put_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()>;
    /// Remembers that a token was revoked.
    fn revoke_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()>;
    /// Sets a named setting.
    fn put_setting<'a>(&'a self, name: &'a str, value: &'a Value) -> StoreFuture<'a, ()>;
    /// Removes a named setting.
    fn delete_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()>;
    /// The store's version: a number that changes with every write, from any process sharing
    /// the store. Instances of a fleet poll it to notice each other's admin changes with one
    /// cheap read, and [`load`](Self::load) the whole state only when it moved (a version
    /// that goes *down* means the store lost writes, e.g. a Redis failover: reload too).
    /// `None` (the default): the store cannot tell; only a periodic full load sees changes
    /// made elsewhere.
    fn version(&self) -> StoreFuture<'_, Option<u64>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Records that `instance` (a gateway process sharing the store) has applied the state up
    /// to `version`: a fleet's heartbeat, so that an admin change can wait until every live
    /// instance has it in force. Default: nothing is kept (a store for one process).
    fn report_applied<'a>(&'a self, instance: &'a str, version: u64) -> StoreFuture<'a, ()> {
        let _ = (instance, version);
        done()
    }
    /// Every instance's last [`report_applied`](Self::report_applied): `(instance, version,
    /// Unix milliseconds of the report)`.
    fn applied(&self) -> StoreFuture<'_, Vec<(String, u64, u64)>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// Forgets an instance's reports (one gone for good).
    fn forget_instance<'a>(&'a self, instance: &'a str) -> StoreFuture<'a, ()> {
        let _ = instance;
        done()
    }
    /// What kind of store this is (`memory`, `sqlite`, `redis`), for logs and status pages.
    fn kind(&self) -> &'static str;
    /// Whether what it holds survives a restart of the process.
    fn is_durable(&self) -> bool {
        true
    }
}

impl<T: AdminStore + ?Sized> AdminStore for Arc<T> {
    fn load(&self) -> StoreFuture<'_, AdminState> {
        (**self).load()
    }
    fn put_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()> {
        (**self).put_key(key)
    }
    fn remove_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        (**self).remove_key(id)
    }
    fn put_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        (**self).put_token(token)
    }
    fn revoke_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        (**self).revoke_token(token)
    }
    fn put_setting<'a>(&'a self, name: &'a str, value: &'a Value) -> StoreFuture<'a, ()> {
        (**self).put_setting(name, value)
    }
    fn delete_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        (**self).delete_setting(name)
    }
    fn version(&self) -> StoreFuture<'_, Option<u64>> {
        (**self).version()
    }
    fn report_applied<'a>(&'a self, instance: &'a str, version: u64) -> StoreFuture<'a, ()> {
        (**self).report_applied(instance, version)
    }
    fn applied(&self) -> StoreFuture<'_, Vec<(String, u64, u64)>> {
        (**self).applied()
    }
    fn forget_instance<'a>(&'a self, instance: &'a str) -> StoreFuture<'a, ()> {
        (**self).forget_instance(instance)
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn is_durable(&self) -> bool {
        (**self).is_durable()
    }
}

// === AdminMemoryStore ===

/// An [`AdminStore`] in memory: changes hold while the process runs and are lost on restart.
#[derive(Default)]
pub struct AdminMemoryStore {
    state: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    /// id → key, `None` once removed.
    keys: HashMap<String, Option<ApiKey>>,
    /// digest → (record, revoked)
    tokens: HashMap<TokenDigest, (TokenRecord, bool)>,
    settings: BTreeMap<String, Value>,
    /// Incremented by every write.
    version: u64,
}

impl AdminMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tables, for a write: the version moves.
    fn write(&self) -> MutexGuard<'_, Tables> {
        let mut t = self.lock();
        t.version += 1;
        t
    }
}

impl fmt::Debug for AdminMemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.lock();
        f.debug_struct("AdminMemoryStore")
            .field("keys", &t.keys.len())
            .field("tokens", &t.tokens.len())
            .field("settings", &t.settings.len())
            .finish()
    }
}

impl AdminStore for AdminMemoryStore {
    fn load(&self) -> StoreFuture<'_, AdminState> {
        let t = self.lock();
        let mut state = AdminState {
            settings: t.settings.clone(),
            ..AdminState::default()
        };
        for (id, key) in &t.keys {
            match key {
                Some(key) => state.keys.push(KeyRecord {
                    id: id.clone(),
                    key: key.clone(),
                }),
                None => state.removed_keys.push(id.clone()),
            }
        }
        for (record, revoked) in t.tokens.values() {
            if *revoked {
                state.revoked_tokens.push(record.clone());
            } else {
                state.tokens.push(record.clone());
            }
        }
        state.sort();
        Box::pin(std::future::ready(Ok(state)))
    }

    fn put_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()> {
        self.write()
            .keys
            .insert(key.id.clone(), Some(key.key.clone()));
        done()
    }

    fn remove_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.write().keys.insert(id.to_owned(), None);
        done()
    }

    fn put_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        self.write()
            .tokens
            .insert(token.digest, (token.clone(), false));
        done()
    }

    fn revoke_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        self.write()
            .tokens
            .insert(token.digest, (token.clone(), true));
        done()
    }

    fn put_setting<'a>(&'a self, name: &'a str, value: &'a Value) -> StoreFuture<'a, ()> {
        self.write().settings.insert(name.to_owned(), value.clone());
        done()
    }

    fn delete_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        self.write().settings.remove(name);
        done()
    }

    fn version(&self) -> StoreFuture<'_, Option<u64>> {
        let v = self.lock().version;
        Box::pin(std::future::ready(Ok(Some(v))))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_durable(&self) -> bool {
        false
    }
}

fn done<'a>() -> StoreFuture<'a, ()> {
    Box::pin(std::future::ready(Ok(())))
}

impl AdminState {
    /// A stable order (by id), so listings do not depend on a hash map.
    fn sort(&mut self) {
        self.keys.sort_by(|a, b| a.id.cmp(&b.id));
        self.removed_keys.sort();
        self.tokens.sort_by(|a, b| a.id.cmp(&b.id));
        self.revoked_tokens.sort_by(|a, b| a.id.cmp(&b.id));
    }
}

/// Seconds since the Unix epoch.
#[cfg(feature = "sqlite")]
pub(crate) fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
