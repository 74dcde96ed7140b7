//! The key pool: keys, their health state machine, selection and snapshots.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::classify::Outcome;
use super::store::{KeyStateStore, SharedKeyState};
use super::strategy::{Candidates, SelectKey, Strategy, random_fraction};
use crate::Error;
use crate::error::ApiError;
use crate::secret::ApiKey;

const DEFAULT_MAX_FAILURES: u32 = 3;
const DEFAULT_MAX_TRANSIENT_FAILURES: u32 = 3;
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
const DEFAULT_REPROBE_AFTER: Duration = Duration::from_secs(3600);
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Backoff for repeated 429s without `retryDelay` stops growing here (unless the base is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Length of the "recent requests" window used by [`Strategy::LeastUsed`].
const RECENT_WINDOW_MS: u64 = 60_000;

// === KeyId ===

/// A key's stable id: its [fingerprint](ApiKey::fingerprint) (a suffix is added in the
/// unlikely case two keys share one). Safe to log, show and use in URLs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// Wraps an id string (for instance one read back from a store or an admin request).
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// === KeyEntry ===

/// One key and its state. The counters are atomics; the health sits behind a per-key mutex
/// that the pick path only takes when `clean` is false.
pub(crate) struct KeyEntry {
    pub(crate) key: ApiKey,
    pub(crate) id: KeyId,
    pub(crate) weight: u32,
    in_flight: AtomicU32,
    total: AtomicU64,
    /// `(window << 32) | count`: requests in the current one-minute window.
    recent: AtomicU64,
    /// True when the key is enabled and cools for no model: usable without locking.
    clean: AtomicBool,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    disabled: Option<Disabled>,
    probing: bool,
    cooling: HashMap<Box<str>, Cooling>,
    /// 5xx or transport failures in a row (any other answer resets it).
    transient: u32,
    /// Out of rotation for every model until then, after repeated transient failures.
    resting_until: Option<Instant>,
    last_error: Option<String>,
}

struct Disabled {
    reason: String,
    since: Instant,
    reprobe_at: Instant,
}

#[derive(Clone, Copy)]
struct Cooling {
    until: Instant,
    /// 429s without a success in between, for the backoff.
    strikes: u32,
}

impl Health {
    fn is_clean(&self) -> bool {
        self.disabled.is_none()
            && self.cooling.is_empty()
            && self.resting_until.is_none()
            && !self.probing
    }

    /// The upstream answered something other than a 5xx: the transient streak ends.
    fn end_transient_streak(&mut self) {
        self.transient = 0;
        self.resting_until = None;
    }
}

impl KeyEntry {
    fn new(key: ApiKey, id: KeyId, weight: u32) -> Self {
        Self {
            key,
            id,
            weight: weight.max(1),
            in_flight: AtomicU32::new(0),
            total: AtomicU64::new(0),
            recent: AtomicU64::new(0),
            clean: AtomicBool::new(true),
            health: Mutex::new(Health::default()),
        }
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_clean(&self, h: &Health) {
        self.clean.store(h.is_clean(), Ordering::Release);
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn recent(&self, window: u32) -> u32 {
        let v = self.recent.load(Ordering::Relaxed);
        if (v >> 32) as u32 == window {
            v as u32
        } else {
            0
        }
    }

    fn count_request(&self, window: u32) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .recent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(if (v >> 32) as u32 == window {
                    v.saturating_add(1)
                } else {
                    (u64::from(window) << 32) | 1
                })
            });
    }

    /// Whether the key can serve `model` now (probes are handled separately).
    fn usable_for(&self, model: &str, now: Instant) -> bool {
        if self.clean.load(Ordering::Acquire) {
            return true;
        }
        let h = self.health();
        h.disabled.is_none()
            && h.resting_until.is_none_or(|t| t <= now)
            && h.cooling.get(model).is_none_or(|c| c.until <= now)
    }
}

/// The pool's keys at one moment; replaced whole when keys are added or removed.
pub(crate) struct KeyList {
    pub(crate) entries: Vec<Arc<KeyEntry>>,
    /// Running sums of the weights, for [`Strategy::Weighted`].
    pub(crate) prefix: Vec<u64>,
}

impl KeyList {
    fn new(entries: Vec<Arc<KeyEntry>>) -> Self {
        let mut sum = 0;
        let prefix = entries
            .iter()
            .map(|e| {
                sum += u64::from(e.weight);
                sum
            })
            .collect();
        Self { entries, prefix }
    }
}

// === KeyPool ===

/// A pool of upstream API keys with per-key health: cool-downs per model, failure counts,
/// disabling and re-probing. Shared by every clone of [`KeyRotationLayer`](super::KeyRotationLayer).
pub struct KeyPool {
    keys: RwLock<Arc<KeyList>>,
    selector: Arc<dyn SelectKey>,
    strategy_name: &'static str,
    max_failures: u32,
    max_transient_failures: u32,
    cooldown: Duration,
    reprobe_after: Duration,
    store: Option<Arc<dyn KeyStateStore>>,
    sync_interval: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` of the earliest due probe (`u64::MAX`: none).
    next_probe: AtomicU64,
    probe_lock: Mutex<()>,
    /// Milliseconds since `epoch` of the last store sync, plus one (0: never).
    last_sync: AtomicU64,
    /// A store call failed: the store may have missed changes, or lost everything (a Redis
    /// restarted empty). The local state is sent again once the store answers.
    store_stale: AtomicBool,
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

/// What a pick gave.
pub(crate) enum Pick {
    /// A key to use.
    Key(Lease),
    /// No key can serve the request now.
    Unavailable(Unavailable),
}

/// Why no key can serve a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// The pool has no key at all.
    NoKeys,
    /// Every key still worth trying is disabled.
    AllDisabled,
    /// Every enabled key is cooling for the model; the earliest is free after this long.
    AllCooling(Duration),
    /// Every enabled key rests after repeated upstream failures (none is cooling for the
    /// model's quota); the earliest is back after this long.
    AllResting(Duration),
    /// Every usable key was already tried by this request.
    AllTried,
}

impl Unavailable {
    /// The answer for a request that no key can serve (names no key).
    pub(crate) fn to_api_error(&self, model: &str) -> ApiError {
        let for_model = if model.is_empty() {
            String::new()
        } else {
            format!(" for model {model}")
        };
        match self {
            Unavailable::NoKeys => {
                ApiError::service_unavailable("the gateway has no upstream API key configured")
            }
            Unavailable::AllDisabled | Unavailable::AllTried => ApiError::service_unavailable(
                "every upstream API key is disabled; try again later or ask the operator to check the keys",
            ),
            Unavailable::AllCooling(after) => ApiError::too_many_requests(
                format!(
                    "every upstream API key has reached its quota{for_model}; retry in {} s",
                    after.as_secs() + u64::from(after.subsec_nanos() > 0)
                ),
                *after,
            ),
            Unavailable::AllResting(after) => ApiError::too_many_requests(
                format!(
                    "the upstream failed repeatedly with every API key{for_model}; retry in {} s",
                    after.as_secs() + u64::from(after.subsec_nanos() > 0)
                ),
                *after,
            ),
        }
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

    fn list(&self) -> Arc<KeyList> {
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

    fn add_weighted(&self, key: ApiKey, weight: u32) -> KeyId {
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
        if let Some(store) = &self.store {
            self.store_outcome(store.enable(&entry.id).await);
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

    /// The state of every key, masked, for admin pages and logs.
    pub fn snapshot(&self) -> Vec<KeySnapshot> {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.list()
            .entries
            .iter()
            .map(|e| {
                let h = e.health();
                let state = match (&h.disabled, h.probing) {
                    (None, _) => KeyState::Enabled,
                    (Some(d), true) => KeyState::Probing {
                        reason: d.reason.clone(),
                    },
                    (Some(d), false) => KeyState::Disabled {
                        reason: d.reason.clone(),
                        reprobe_in: d.reprobe_at.saturating_duration_since(now),
                    },
                };
                let mut cooling: Vec<CoolingSnapshot> = h
                    .cooling
                    .iter()
                    .filter(|(_, c)| c.until > now)
                    .map(|(m, c)| {
                        let remaining = c.until - now;
                        CoolingSnapshot {
                            model: m.to_string(),
                            remaining,
                            until: wall + remaining,
                        }
                    })
                    .collect();
                cooling.sort_by(|a, b| a.model.cmp(&b.model));
                KeySnapshot {
                    id: e.id.clone(),
                    masked: e.key.masked(),
                    weight: e.weight,
                    state,
                    consecutive_failures: h.failures,
                    consecutive_transient_failures: h.transient,
                    resting: h.resting_until.filter(|t| *t > now).map(|t| t - now),
                    cooling,
                    total_requests: e.total.load(Ordering::Relaxed),
                    in_flight: e.in_flight(),
                    last_error: h.last_error.clone(),
                }
            })
            .collect()
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn window(&self, now: Instant) -> u32 {
        (self.now_ms(now) / RECENT_WINDOW_MS) as u32
    }

    // === the state machine ===

    /// Chooses a key for `model`, skipping `tried`. A due re-probe of a disabled key wins
    /// over the strategy, one request at a time.
    pub(crate) fn pick(self: &Arc<Self>, model: &str, tried: &[KeyId]) -> Pick {
        let list = self.list();
        if list.entries.is_empty() {
            return Pick::Unavailable(Unavailable::NoKeys);
        }
        let now = Instant::now();
        if self.now_ms(now) >= self.next_probe.load(Ordering::Acquire) {
            if let Some(entry) = self.claim_probe(&list, now, tried) {
                return Pick::Key(self.lease(entry, true, now));
            }
        }
        let usable = |i: usize| {
            let e = &list.entries[i];
            e.usable_for(model, now) && !tried.contains(&e.id)
        };
        let candidates = Candidates {
            list: &list,
            usable: &usable,
            window: self.window(now),
        };
        match self.selector.select(&candidates) {
            Some(i) if i < list.entries.len() && usable(i) => {
                Pick::Key(self.lease(list.entries[i].clone(), false, now))
            }
            _ => Pick::Unavailable(self.why_unavailable(&list, model, now, tried)),
        }
    }

    /// Picks a key for `model` and releases it at once: the selection cost alone, for the
    /// crate's benches. Not part of the stable API.
    #[doc(hidden)]
    pub fn __bench_pick(self: &Arc<Self>, model: &str) -> bool {
        matches!(self.pick(model, &[]), Pick::Key(_))
    }

    fn lease(self: &Arc<Self>, entry: Arc<KeyEntry>, probe: bool, now: Instant) -> Lease {
        entry.in_flight.fetch_add(1, Ordering::Relaxed);
        entry.count_request(self.window(now));
        Lease {
            pool: self.clone(),
            entry,
            probe,
            reported: false,
        }
    }

    fn claim_probe(&self, list: &KeyList, now: Instant, tried: &[KeyId]) -> Option<Arc<KeyEntry>> {
        let _guard = self.probe_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut claimed = None;
        let mut next = u64::MAX;
        for e in &list.entries {
            if e.clean.load(Ordering::Acquire) {
                continue;
            }
            let mut h = e.health();
            let Some(d) = &h.disabled else { continue };
            if h.probing {
                continue;
            }
            if claimed.is_none() && d.reprobe_at <= now && !tried.contains(&e.id) {
                h.probing = true;
                e.update_clean(&h);
                claimed = Some(e.clone());
            } else {
                next = next.min(self.now_ms(d.reprobe_at));
            }
        }
        self.next_probe.store(next, Ordering::Release);
        if let Some(e) = &claimed {
            tracing::debug!(key.id = %e.id, "re-probing a disabled key with one request");
        }
        claimed
    }

    fn schedule_probe(&self, at: Instant) {
        let _guard = self.probe_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.next_probe.fetch_min(self.now_ms(at), Ordering::AcqRel);
    }

    fn why_unavailable(
        &self,
        list: &KeyList,
        model: &str,
        now: Instant,
        tried: &[KeyId],
    ) -> Unavailable {
        let mut earliest: Option<Instant> = None;
        let mut any_quota = false;
        let mut any_tried = false;
        for e in &list.entries {
            if tried.contains(&e.id) {
                any_tried = true;
                continue;
            }
            let h = e.health();
            if h.disabled.is_some() {
                continue;
            }
            let resting = h.resting_until.filter(|t| *t > now);
            let cooling = h.cooling.get(model).map(|c| c.until).filter(|t| *t > now);
            any_quota |= cooling.is_some();
            match resting.max(cooling) {
                Some(free_at) => {
                    earliest = Some(earliest.map_or(free_at, |x| x.min(free_at)));
                }
                // Usable after all (a race with a cool-down ending): let the caller retry.
                None => return Unavailable::AllTried,
            }
        }
        match earliest {
            Some(at) if any_quota => {
                Unavailable::AllCooling((at - now).max(Duration::from_millis(1)))
            }
            Some(at) => Unavailable::AllResting((at - now).max(Duration::from_millis(1))),
            None if any_tried => Unavailable::AllTried,
            None => Unavailable::AllDisabled,
        }
    }

    /// Applies the outcome of one upstream attempt to the lease's key.
    pub(crate) async fn report(
        &self,
        lease: &mut Lease,
        model: &str,
        outcome: &Outcome,
        error: Option<String>,
    ) {
        lease.reported = true;
        let entry = lease.entry.clone();
        let now = Instant::now();
        let mut publish = Publish::Nothing;
        let mut probe_again = None;
        {
            let mut h = entry.health();
            if error.is_some() {
                h.last_error = error;
            }
            // Only the probe's own lease ends the probe.
            let was_probe = lease.probe && std::mem::take(&mut h.probing);
            if *outcome != Outcome::Transient {
                h.end_transient_streak();
            }
            match outcome {
                Outcome::Success => {
                    h.failures = 0;
                    h.cooling.remove(model);
                    if h.disabled.take().is_some() {
                        tracing::info!(key.id = %entry.id, "disabled key answered: revived");
                        publish = Publish::Enable;
                    }
                }
                Outcome::Exhausted {
                    retry_delay,
                    per_day,
                } => {
                    h.failures = 0;
                    if h.disabled.take().is_some() {
                        tracing::info!(key.id = %entry.id, "disabled key answered 429: revived");
                        publish = Publish::Enable;
                    }
                    let strikes = h.cooling.get(model).map_or(0, |c| c.strikes) + 1;
                    let wait = if *per_day {
                        until_pacific_midnight(SystemTime::now())
                    } else if let Some(d) = retry_delay {
                        (*d).max(Duration::from_secs(1))
                    } else {
                        backoff(self.cooldown, strikes)
                    };
                    let mut until = later(now, wait);
                    if let Some(c) = h.cooling.get(model) {
                        until = until.max(c.until);
                    }
                    h.cooling.insert(model.into(), Cooling { until, strikes });
                    tracing::debug!(
                        key.id = %entry.id,
                        gemini.model = model,
                        cooldown_ms = wait.as_millis() as u64,
                        per_day,
                        "quota exhausted: key cools down for this model, rotating"
                    );
                    publish = match publish {
                        Publish::Enable => Publish::EnableAndCool(until),
                        _ => Publish::Cool(until),
                    };
                }
                Outcome::KeyFailure { reason } => {
                    h.failures = h.failures.saturating_add(1);
                    let disable = was_probe
                        || (h.disabled.is_none() && h.failures >= self.max_failures.max(1));
                    if disable {
                        let reprobe_at = later(now, self.reprobe_after);
                        tracing::warn!(
                            key.id = %entry.id,
                            failures = h.failures,
                            reason = %reason,
                            reprobe_in_s = self.reprobe_after.as_secs(),
                            "key disabled"
                        );
                        h.disabled = Some(Disabled {
                            reason: reason.clone(),
                            since: now,
                            reprobe_at,
                        });
                        probe_again = Some(reprobe_at);
                        publish = Publish::Disable(reason.clone(), reprobe_at);
                    } else {
                        tracing::debug!(
                            key.id = %entry.id,
                            failures = h.failures,
                            reason = %reason,
                            "key failure counted, rotating"
                        );
                    }
                }
                Outcome::Transient if !was_probe && h.disabled.is_none() => {
                    h.transient = h.transient.saturating_add(1);
                    let limit = self.max_transient_failures;
                    if limit > 0 && h.transient >= limit {
                        // The upstream more likely than the key is at fault: a short rest for
                        // every model, not a disabling. After it, one more transient failure
                        // sends the key back to rest; any other answer ends the streak.
                        let until = now + self.cooldown;
                        h.resting_until = Some(h.resting_until.map_or(until, |t| t.max(until)));
                        if h.transient == limit {
                            tracing::warn!(
                                key.id = %entry.id,
                                transient_failures = h.transient,
                                rest_s = self.cooldown.as_secs(),
                                "upstream failed with this key repeatedly: key rests for every model"
                            );
                        } else {
                            tracing::debug!(
                                key.id = %entry.id,
                                transient_failures = h.transient,
                                "upstream still failing with this key: key rests again"
                            );
                        }
                    }
                }
                Outcome::Transient | Outcome::Final => {
                    if was_probe {
                        // Inconclusive: probe again with the next request.
                        probe_again = Some(now);
                    }
                }
            }
            entry.update_clean(&h);
        }
        if let Some(at) = probe_again {
            self.schedule_probe(at);
        }
        let Some(store) = &self.store else { return };
        let id = &entry.id;
        match publish {
            Publish::Nothing => {}
            Publish::Enable => self.store_outcome(store.enable(id).await),
            Publish::Cool(until) => {
                self.store_outcome(store.cool_down(id, model, to_system(until)).await);
            }
            Publish::EnableAndCool(until) => {
                self.store_outcome(store.enable(id).await);
                self.store_outcome(store.cool_down(id, model, to_system(until)).await);
            }
            Publish::Disable(reason, at) => {
                self.store_outcome(store.disable(id, &reason, to_system(at)).await);
            }
        }
    }

    /// Pulls the shared state from the store when a sync is due (at most once per interval).
    pub(crate) async fn maybe_sync(&self) {
        let Some(store) = &self.store else { return };
        let now = Instant::now();
        let now_ms = self.now_ms(now) + 1;
        let last = self.last_sync.load(Ordering::Acquire);
        let interval_ms = self.sync_interval.as_millis() as u64;
        if last != 0 && now_ms < last.saturating_add(interval_ms) {
            return;
        }
        if self
            .last_sync
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // another request is syncing
        }
        if let Err(e) = self.load_and_merge(store).await {
            self.store_outcome(Err(e));
        }
    }

    /// Syncs with the store now, whatever the interval.
    pub async fn sync(&self) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        self.load_and_merge(store).await.inspect_err(|_| {
            self.store_stale.store(true, Ordering::Release);
        })
    }

    /// Pulls the shared state and merges it. After a store failure, the first answer first
    /// gets this pool's cool-downs and disabled flags sent again (what the store missed, or
    /// lost by restarting empty), then the shared view is read again: merging the view from
    /// before would take the missing flags for keys enabled elsewhere.
    async fn load_and_merge(&self, store: &Arc<dyn KeyStateStore>) -> Result<(), Error> {
        let mut shared = store.load().await?;
        if self.store_stale.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.republish(store).await {
                self.store_stale.store(true, Ordering::Release);
                return Err(e);
            }
            shared = store.load().await?;
        }
        self.merge(&shared, Instant::now());
        Ok(())
    }

    /// Sends every live cool-down and disabled flag of this pool to the store.
    async fn republish(&self, store: &Arc<dyn KeyStateStore>) -> Result<(), Error> {
        let now = Instant::now();
        let mut sent = 0usize;
        for e in &self.list().entries {
            let (cooling, disabled) = {
                let h = e.health();
                let cooling: Vec<(Box<str>, Instant)> = h
                    .cooling
                    .iter()
                    .filter(|(_, c)| c.until > now)
                    .map(|(model, c)| (model.clone(), c.until))
                    .collect();
                let disabled = h
                    .disabled
                    .as_ref()
                    .map(|d| (d.reason.clone(), d.reprobe_at));
                (cooling, disabled)
            };
            for (model, until) in cooling {
                store.cool_down(&e.id, &model, to_system(until)).await?;
                sent += 1;
            }
            if let Some((reason, at)) = disabled {
                store.disable(&e.id, &reason, to_system(at)).await?;
                sent += 1;
            }
        }
        tracing::info!(
            entries = sent,
            "key state store answers again; local cool-downs and disabled flags sent again"
        );
        Ok(())
    }

    /// Logs a failed store call (the pool goes on with its local state) and remembers to send
    /// the local state again once the store answers.
    fn store_outcome(&self, r: Result<(), Error>) {
        if let Err(e) = r {
            self.store_stale.store(true, Ordering::Release);
            tracing::warn!(error = %e, "key state store failed; continuing with local state");
        }
    }

    fn merge(&self, shared: &HashMap<KeyId, SharedKeyState>, now: Instant) {
        let wall = SystemTime::now();
        let local_time = |t: SystemTime| later(now, t.duration_since(wall).unwrap_or_default());
        // A local disable younger than this may not have reached the store yet.
        let settle = self.sync_interval * 2;
        for e in &self.list().entries {
            let remote = shared.get(e.id.as_str());
            let mut h = e.health();
            match remote.and_then(|r| r.disabled.as_ref()) {
                Some((reason, at)) if h.disabled.is_none() => {
                    let reprobe_at = local_time(*at);
                    tracing::debug!(key.id = %e.id, "key disabled by another instance");
                    h.disabled = Some(Disabled {
                        reason: reason.clone(),
                        since: now,
                        reprobe_at,
                    });
                    drop(h);
                    self.schedule_probe(reprobe_at);
                    h = e.health();
                }
                None if h.disabled.as_ref().is_some_and(|d| d.since + settle <= now)
                    && !h.probing =>
                {
                    tracing::debug!(key.id = %e.id, "key enabled by another instance");
                    h.disabled = None;
                    h.failures = 0;
                }
                _ => {}
            }
            for (model, until) in remote.map(|r| r.cooling.as_slice()).unwrap_or(&[]) {
                let until = local_time(*until);
                if until <= now {
                    continue;
                }
                let c = h
                    .cooling
                    .entry(model.as_str().into())
                    .or_insert(Cooling { until, strikes: 1 });
                c.until = c.until.max(until);
            }
            e.update_clean(&h);
        }
    }
}

enum Publish {
    Nothing,
    Enable,
    Cool(Instant),
    EnableAndCool(Instant),
    Disable(String, Instant),
}

fn to_system(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

fn check_key(key: &ApiKey) -> Result<(), Error> {
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

/// `now + d`, with an absurd `d` (an upstream `retryDelay` of 10^19 seconds, a cool-down of
/// `Duration::MAX`, a far-future time from the shared store) cut to a century instead of
/// overflowing `Instant`, which panics.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(d.min(CENTURY))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Exponential backoff for repeated 429s without `retryDelay`: `base · 2^(strikes-1)`, capped
/// at an hour (or `base` when longer), plus up to 25 % jitter.
pub(crate) fn backoff(base: Duration, strikes: u32) -> Duration {
    let exp = strikes.saturating_sub(1).min(16);
    let grown = base.saturating_mul(1 << exp).min(MAX_BACKOFF.max(base));
    grown.saturating_add(grown.mul_f64(0.25 * random_fraction()))
}

/// Time until the next midnight Pacific time, when Gemini's daily quotas reset.
///
/// Approximated as UTC-8 (Pacific standard time) all year: during daylight saving time a key
/// is parked one hour longer than needed. This avoids a time-zone database dependency.
pub(crate) fn until_pacific_midnight(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let into_day = (secs - 8 * 3600).rem_euclid(86_400) as u64;
    Duration::from_secs(86_400 - into_day)
}

// === Lease ===

/// One use of a key by one upstream attempt: counts it in flight until dropped.
pub(crate) struct Lease {
    pool: Arc<KeyPool>,
    entry: Arc<KeyEntry>,
    probe: bool,
    reported: bool,
}

impl Lease {
    pub(crate) fn key(&self) -> &ApiKey {
        &self.entry.key
    }

    pub(crate) fn id(&self) -> &KeyId {
        &self.entry.id
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.entry.id)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.entry.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.reported {
            // The probe was abandoned (client gone): let the next request probe instead.
            let mut h = self.entry.health();
            h.probing = false;
            self.entry.update_clean(&h);
            drop(h);
            self.pool.schedule_probe(Instant::now());
        }
    }
}

// === KeySnapshot ===

/// A key's state as shown to operators. Holds the masked key only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySnapshot {
    /// The key's stable id.
    pub id: KeyId,
    /// The key masked (`AIza…9xQk`).
    pub masked: String,
    /// The key's weight for [`Strategy::Weighted`].
    pub weight: u32,
    /// Enabled, disabled or being re-probed.
    pub state: KeyState,
    /// Key failures (invalid key, permission denied) in a row.
    pub consecutive_failures: u32,
    /// Transient failures (500, 502, 503, 504, transport errors, timeouts) in a row with this
    /// key; any other answer resets it.
    pub consecutive_transient_failures: u32,
    /// Time left in a rest for every model after
    /// [`max_transient_failures`](KeyPoolBuilder::max_transient_failures) transient failures
    /// in a row. The key stays enabled and comes back by itself.
    pub resting: Option<Duration>,
    /// Models this key is cooling down for.
    pub cooling: Vec<CoolingSnapshot>,
    /// Requests sent with this key since it joined the pool.
    pub total_requests: u64,
    /// Requests in flight (streams count until they end).
    pub in_flight: u32,
    /// The last upstream error seen with this key: a status and reason, no message text.
    pub last_error: Option<String>,
}

impl KeySnapshot {
    /// The snapshot as JSON for admin APIs: times as seconds remaining and Unix seconds.
    pub fn to_json(&self) -> serde_json::Value {
        let (state, reason, reprobe_in) = match &self.state {
            KeyState::Enabled => ("enabled", None, None),
            KeyState::Disabled { reason, reprobe_in } => {
                ("disabled", Some(reason), Some(reprobe_in.as_secs()))
            }
            KeyState::Probing { reason } => ("probing", Some(reason), None),
        };
        let cooling: Vec<_> = self
            .cooling
            .iter()
            .map(|c| {
                serde_json::json!({
                    "model": c.model,
                    "remaining_seconds": c.remaining.as_secs_f64().ceil() as u64,
                    "until_unix": c.until.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id.as_str(),
            "key": self.masked,
            "weight": self.weight,
            "state": state,
            "disabled_reason": reason,
            "reprobe_in_seconds": reprobe_in,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_transient_failures": self.consecutive_transient_failures,
            "resting_seconds": self.resting.map(|r| r.as_secs_f64().ceil() as u64),
            "cooling": cooling,
            "total_requests": self.total_requests,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
        })
    }
}

/// Whether a key is in use.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// In rotation (it may still be cooling for some models).
    Enabled,
    /// Out of rotation until its re-probe.
    Disabled {
        /// Why (an upstream status or reason name).
        reason: String,
        /// Time until one request re-probes it.
        reprobe_in: Duration,
    },
    /// Disabled, and one request is testing it now.
    Probing {
        /// Why it was disabled.
        reason: String,
    },
}

/// One model a key is cooling down for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoolingSnapshot {
    /// The model (empty for routes without one, like the models list).
    pub model: String,
    /// Time left.
    pub remaining: Duration,
    /// When it ends (wall clock).
    pub until: SystemTime,
}

// === KeyPoolBuilder ===

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

    /// Shares cool-downs and disabled flags through a store ([`MemoryStore`](super::MemoryStore)
    /// for pools in one process, `RedisStore` across processes).
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
        let pool = Arc::new(KeyPool {
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
        });
        for (key, weight) in self.keys {
            if !key.expose().is_empty() {
                pool.add_weighted(key, weight);
            }
        }
        Ok(pool)
    }
}
