//! The [`KeyPool`]: its settings, its keys, and adding, removing and enabling them at run time.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{KeyEntry, KeyList};
use super::{KeyId, KeyPoolBuilder};
use crate::Error;
use crate::key_rotation::store::KeyStateStore;
use crate::key_rotation::strategy::SelectKey;
use crate::secret::ApiKey;

/// The reason of a key an operator disabled.
const DISABLED_BY_OPERATOR: &str = "disabled by operator";

/// Length of the "recent requests" window used by
/// [`Strategy::LeastUsed`](crate::key_rotation::Strategy::LeastUsed).
const RECENT_WINDOW_MS: u64 = 60_000;

/// A pool of upstream API keys with per-key health: cool-downs per model, failure counts,
/// disabling and re-probing. Shared by every clone of
/// [`KeyRotationLayer`](crate::key_rotation::KeyRotationLayer).
pub struct KeyPool {
    pub(super) keys: RwLock<Arc<KeyList>>,
    pub(super) selector: Arc<dyn SelectKey>,
    pub(super) strategy_name: &'static str,
    pub(super) max_failures: u32,
    pub(super) max_transient_failures: u32,
    pub(super) cooldown: Duration,
    pub(super) reprobe_after: Duration,
    pub(super) store: Option<Arc<dyn KeyStateStore>>,
    pub(super) sync_interval: Duration,
    pub(super) epoch: Instant,
    /// Milliseconds since `epoch` of the earliest due probe (`u64::MAX`: none).
    pub(super) next_probe: AtomicU64,
    pub(super) probe_lock: Mutex<()>,
    /// Milliseconds since `epoch` of the last store sync, plus one (0: never).
    pub(super) last_sync: AtomicU64,
    /// A store call failed: the store may have missed changes, or lost everything (a Redis
    /// restarted empty). The local state is sent again once the store answers.
    pub(super) store_stale: AtomicBool,
    /// The queue to the task that talks to the store (started with the first request).
    pub(super) writer: std::sync::OnceLock<tokio::sync::mpsc::Sender<super::sync::StoreOp>>,
    /// State changes not sent to the store because its queue was full.
    pub(super) store_dropped: AtomicU64,
    /// This pool, for the store task (which must not keep it alive).
    pub(super) this: std::sync::Weak<KeyPool>,
}

impl fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPool")
            .field("keys", &self.len())
            .field("strategy", &self.strategy_name)
            .field("max_failures", &self.max_failures)
            .field("max_transient_failures", &self.max_transient_failures)
            .field("cooldown", &self.cooldown)
            .field("reprobe_after", &self.reprobe_after)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl KeyPool {
    /// A builder with the defaults: round robin, 3 failures, 3 transient failures, 60 s
    /// cool-down, 3600 s re-probe.
    pub fn builder() -> KeyPoolBuilder {
        KeyPoolBuilder::default()
    }

    /// A round-robin pool of `keys` with default settings.
    pub fn new<I, K>(keys: I) -> Result<Arc<KeyPool>, Error>
    where
        I: IntoIterator<Item = K>,
        K: Into<ApiKey>,
    {
        Self::builder().keys(keys).build()
    }

    pub(super) fn list(&self) -> Arc<KeyList> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.list().entries.len()
    }

    /// Whether the pool has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of keys not disabled (whatever their cool-downs): what `/health` reports.
    pub fn usable_count(&self) -> usize {
        self.list()
            .entries
            .iter()
            .filter(|e| e.clean.load(Ordering::Acquire) || e.health().disabled.is_none())
            .count()
    }

    /// The number of keys not disabled, counting no further than `cap` (cheap for big pools).
    pub(crate) fn usable_up_to(&self, cap: usize) -> usize {
        self.list()
            .entries
            .iter()
            .filter(|e| e.clean.load(Ordering::Acquire) || e.health().disabled.is_none())
            .take(cap)
            .count()
    }

    /// The number of keys that could serve `model` right now.
    pub fn usable_count_for(&self, model: &str) -> usize {
        let now = Instant::now();
        self.list()
            .entries
            .iter()
            .filter(|e| e.usable_for(model, now))
            .count()
    }

    /// The ids of the keys, in pool order.
    pub fn ids(&self) -> Vec<KeyId> {
        self.list().entries.iter().map(|e| e.id.clone()).collect()
    }

    /// The secrets of every key, for scrubbing text that may echo one.
    pub(crate) fn secrets(&self) -> Arc<KeyList> {
        self.list()
    }

    /// Adds a key at run time and returns its id. Adding a key that is already in the pool
    /// returns the existing id and changes nothing. Fails on an empty key or one that cannot
    /// be sent in a header.
    pub fn add_key(&self, key: impl Into<ApiKey>) -> Result<KeyId, Error> {
        let key = key.into();
        check_key(&key)?;
        Ok(self.add_weighted(key, 1))
    }

    pub(super) fn add_weighted(&self, key: ApiKey, weight: u32) -> KeyId {
        let mut guard = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = guard.entries.iter().find(|e| e.key == key) {
            return e.id.clone();
        }
        let id = unique_id(&key, &guard.entries);
        let mut entries = guard.entries.clone();
        entries.push(Arc::new(KeyEntry::new(key, id.clone(), weight)));
        *guard = Arc::new(KeyList::new(entries));
        tracing::debug!(key.id = %id, "key added to the pool");
        id
    }

    /// Removes a key at run time. Requests already using it finish normally.
    pub fn remove_key(&self, id: &str) -> bool {
        let mut guard = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let before = guard.entries.len();
        let entries: Vec<_> = guard
            .entries
            .iter()
            .filter(|e| e.id.as_str() != id)
            .cloned()
            .collect();
        if entries.len() == before {
            return false;
        }
        *guard = Arc::new(KeyList::new(entries));
        tracing::debug!(key.id = %id, "key removed from the pool");
        true
    }

    /// Enables a key again (clears its failures, disabled flag and any rest after transient
    /// failures; per-model cool-downs stay).
    /// Returns false when no key has this id.
    pub async fn enable(&self, id: &str) -> bool {
        let Some(entry) = self.entry(id) else {
            return false;
        };
        {
            let mut h = entry.health();
            h.failures = 0;
            h.disabled = None;
            h.probing = false;
            h.end_transient_streak();
            entry.update_clean(&h);
        }
        tracing::info!(key.id = %entry.id, "key enabled by operator");
        // Sent at once (not queued): the operator's change must hold on every instance, and
        // the admin path may wait for the store.
        if let Some(store) = &self.store {
            self.store_outcome(store.enable(&entry.id).await);
        }
        true
    }

    /// Takes a key out of rotation until an operator [enables](Self::enable) it again: it is
    /// never re-probed. Shared through the store at once, so every pool sharing it skips the
    /// key too, and a restart keeps it out. Returns false when no key has this id.
    pub async fn disable(&self, id: &str) -> bool {
        let Some(entry) = self.entry(id) else {
            return false;
        };
        let now = Instant::now();
        let reprobe_at = super::report::later(now, Duration::MAX);
        {
            let mut h = entry.health();
            h.disabled = Some(super::entry::Disabled {
                reason: DISABLED_BY_OPERATOR.to_owned(),
                since: now,
                reprobe_at,
            });
            h.probing = false;
            entry.update_clean(&h);
        }
        tracing::info!(key.id = %entry.id, "key disabled by operator");
        if let Some(store) = &self.store {
            let at = super::sync::to_system(reprobe_at);
            self.store_outcome(store.disable(&entry.id, DISABLED_BY_OPERATOR, at).await);
        }
        true
    }

    fn entry(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.list()
            .entries
            .iter()
            .find(|e| e.id.as_str() == id)
            .cloned()
    }

    pub(super) fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub(super) fn window(&self, now: Instant) -> u32 {
        (self.now_ms(now) / RECENT_WINDOW_MS) as u32
    }
}

pub(super) fn check_key(key: &ApiKey) -> Result<(), Error> {
    if key.expose().is_empty() {
        return Err(Error::config("an API key cannot be empty"));
    }
    if http::HeaderValue::from_str(key.expose()).is_err() {
        return Err(Error::config(format!(
            "API key {} contains characters not allowed in a header",
            key.masked()
        )));
    }
    Ok(())
}

fn unique_id(key: &ApiKey, entries: &[Arc<KeyEntry>]) -> KeyId {
    let fp = key.fingerprint();
    let taken = |id: &str| entries.iter().any(|e| e.id.as_str() == id);
    if !taken(&fp) {
        return KeyId::new(fp);
    }
    (2..)
        .map(|n| format!("{fp}-{n}"))
        .find(|id| !taken(id))
        .map(KeyId::new)
        .unwrap_or_else(|| KeyId::new(fp))
}
