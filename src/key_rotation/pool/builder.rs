//! [`KeyPoolBuilder`]: the pool's settings and their defaults.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::KeyPool;
use super::entry::KeyList;
use super::key_pool::check_key;
use crate::Error;
use crate::key_rotation::store::KeyStateStore;
use crate::key_rotation::strategy::{SelectKey, Strategy};
use crate::secret::ApiKey;

const DEFAULT_MAX_FAILURES: u32 = 3;
const DEFAULT_MAX_TRANSIENT_FAILURES: u32 = 3;
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
const DEFAULT_REPROBE_AFTER: Duration = Duration::from_secs(3600);
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Builds a [`KeyPool`]. See [`KeyPool::builder`].
#[derive(Debug)]
pub struct KeyPoolBuilder {
    keys: Vec<(ApiKey, u32)>,
    strategy: Strategy,
    selector: Option<Arc<dyn SelectKey>>,
    max_failures: u32,
    max_transient_failures: u32,
    cooldown: Duration,
    reprobe_after: Duration,
    store: Option<Arc<dyn KeyStateStore>>,
    sync_interval: Duration,
}

impl Default for KeyPoolBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            strategy: Strategy::RoundRobin,
            selector: None,
            max_failures: DEFAULT_MAX_FAILURES,
            max_transient_failures: DEFAULT_MAX_TRANSIENT_FAILURES,
            cooldown: DEFAULT_COOLDOWN,
            reprobe_after: DEFAULT_REPROBE_AFTER,
            store: None,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
    }
}

impl KeyPoolBuilder {
    /// Adds keys (weight 1 each). Blank strings are ignored; duplicates are kept once.
    pub fn keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<ApiKey>,
    {
        self.keys.extend(keys.into_iter().map(|k| (k.into(), 1)));
        self
    }

    /// Adds one key.
    pub fn key(self, key: impl Into<ApiKey>) -> Self {
        self.weighted_key(key, 1)
    }

    /// Adds one key with a weight for [`Strategy::Weighted`] (0 counts as 1).
    pub fn weighted_key(mut self, key: impl Into<ApiKey>, weight: u32) -> Self {
        self.keys.push((key.into(), weight));
        self
    }

    /// How load is shared between healthy keys. Default: [`Strategy::RoundRobin`].
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self.selector = None;
        self
    }

    /// A custom selection strategy instead of a built-in one.
    pub fn selector(mut self, selector: impl SelectKey) -> Self {
        self.selector = Some(Arc::new(selector));
        self
    }

    /// Key failures in a row (invalid key, 401, 403, failed precondition) after which a key is
    /// disabled. Default: 3. Must be at least 1.
    pub fn max_failures(mut self, n: u32) -> Self {
        self.max_failures = n;
        self
    }

    /// Transient failures (500, 502, 503, 504, transport errors, timeouts) in a row with one
    /// key after which that key rests, out of rotation for every model, for the base
    /// [`cooldown`](Self::cooldown). The key is not disabled and counts as usable: the
    /// upstream, not the key, is the likely culprit. After the rest one more transient
    /// failure sends it back to rest; any other answer (a success, a 429, a 4xx) ends the
    /// streak. When every key rests, requests get 429 with `Retry-After` until the first rest
    /// ends. Rests are not shared through the [`store`](Self::store). Default: 3; 0 turns
    /// rests off (transient failures never count).
    pub fn max_transient_failures(mut self, n: u32) -> Self {
        self.max_transient_failures = n;
        self
    }

    /// Base cool-down after a 429 without `retryDelay`, doubled on repeats (with jitter);
    /// also the length of a rest after repeated transient failures (not doubled).
    /// Default: 60 s.
    pub fn cooldown(mut self, base: Duration) -> Self {
        self.cooldown = base;
        self
    }

    /// How long a disabled key rests before one request re-probes it. Default: 3600 s.
    pub fn reprobe_after(mut self, after: Duration) -> Self {
        self.reprobe_after = after;
        self
    }

    /// Shares cool-downs and disabled flags through a store
    /// ([`KeyStateMemoryStore`](crate::key_rotation::KeyStateMemoryStore) for pools in one process, `KeyStateRedisStore`
    /// across processes).
    /// Default: none, the state stays in this pool's memory.
    pub fn store(mut self, store: Arc<dyn KeyStateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// How often the pool pulls the shared state from its store. Default: 1 s.
    pub fn sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every;
        self
    }

    /// Builds the pool. Fails on an invalid setting or a key that cannot be sent in a header.
    /// An empty pool is allowed (keys can be added at run time); it answers 503 meanwhile.
    pub fn build(self) -> Result<Arc<KeyPool>, Error> {
        if self.max_failures == 0 {
            return Err(Error::config("max_failures must be at least 1"));
        }
        if self.cooldown.is_zero() {
            return Err(Error::config("cooldown must be longer than zero"));
        }
        if self.reprobe_after.is_zero() {
            return Err(Error::config("reprobe_after must be longer than zero"));
        }
        for (key, _) in &self.keys {
            if !key.expose().is_empty() {
                check_key(key)?;
            }
        }
        let pool = Arc::new_cyclic(|this| KeyPool {
            keys: RwLock::new(Arc::new(KeyList::new(Vec::new()))),
            selector: self.selector.unwrap_or_else(|| self.strategy.selector()),
            strategy_name: self.strategy.as_str(),
            max_failures: self.max_failures,
            max_transient_failures: self.max_transient_failures,
            cooldown: self.cooldown,
            reprobe_after: self.reprobe_after,
            store: self.store,
            sync_interval: self.sync_interval,
            epoch: Instant::now(),
            next_probe: AtomicU64::new(u64::MAX),
            probe_lock: Mutex::new(()),
            last_sync: AtomicU64::new(0),
            store_stale: AtomicBool::new(false),
            writer: std::sync::OnceLock::new(),
            store_dropped: AtomicU64::new(0),
            this: this.clone(),
        });
        for (key, weight) in self.keys {
            if !key.expose().is_empty() {
                pool.add_weighted(key, weight);
            }
        }
        // With a store, its task starts now when there is a runtime (else with the first
        // request), so the shared view is current before any request asks.
        if tokio::runtime::Handle::try_current().is_ok() {
            pool.maybe_sync();
        }
        Ok(pool)
    }
}
