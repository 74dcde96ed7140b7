//! Limiter stores: the [`RateLimitStore`] trait, GCRA and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;

/// The future a [`RateLimitStore`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One bucket to check and charge for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The bucket's key (the rule, its quota and the request's client / IP / model).
    pub key: String,
    /// GCRA's emission interval: the quota's period divided by its amount.
    pub interval: Duration,
    /// The burst: how many units a full bucket holds.
    pub capacity: u64,
    /// The units this request costs (1 for requests, an estimate for tokens).
    pub cost: u64,
}

/// The state of one bucket after a [`Check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the bucket could pay the cost.
    pub allowed: bool,
    /// Units left in the bucket (after the charge when allowed).
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// When refused: time until the cost would be allowed. Zero when allowed.
    pub retry_after: Duration,
}

/// A correction to a bucket after the call: the real token count minus the estimate charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The bucket's key, as in its [`Check`].
    pub key: String,
    /// The bucket's emission interval, as in its [`Check`].
    pub interval: Duration,
    /// Units to add (positive) or give back (negative).
    pub delta: i64,
}

/// Where limiter state lives: the plug point for shared stores.
///
/// Implementations run GCRA (see [`RateLimitMemoryStore`] for the reference). Stores are shared by every
/// clone of the layer (and, for a networked store, by every gateway instance).
pub trait RateLimitStore: Send + Sync + 'static {
    /// Checks every bucket of a request and charges them **all or none**: when any bucket
    /// refuses, nothing is charged. Returns one [`Outcome`] per check, in order.
    fn check<'a>(&'a self, checks: &'a [Check]) -> StoreFuture<'a, Result<Vec<Outcome>, Error>>;

    /// Applies settlements (token corrections). The future owns what it needs, so it can run
    /// on its own task after the response.
    fn settle(&self, settlements: Vec<Settlement>) -> StoreFuture<'static, Result<(), Error>>;
}

impl<T: RateLimitStore + ?Sized> RateLimitStore for Arc<T> {
    fn check<'a>(&'a self, checks: &'a [Check]) -> StoreFuture<'a, Result<Vec<Outcome>, Error>> {
        (**self).check(checks)
    }

    fn settle(&self, settlements: Vec<Settlement>) -> StoreFuture<'static, Result<(), Error>> {
        (**self).settle(settlements)
    }
}

// === GCRA ===

/// GCRA on nanosecond timestamps. `tat` is the bucket's theoretical arrival time (an idle or
/// unknown bucket has `tat <= now`). Returns the outcome and, when allowed, the new `tat`.
pub(crate) fn gcra(tat: u64, now: u64, interval: u64, capacity: u64, cost: u64) -> (Outcome, u64) {
    let interval = interval.max(1);
    let tat = tat.max(now);
    let tau = capacity.saturating_mul(interval);
    let new_tat = tat.saturating_add(cost.saturating_mul(interval));
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at > now {
        let used = tat - now;
        let outcome = Outcome {
            allowed: false,
            remaining: tau.saturating_sub(used) / interval,
            reset: Duration::from_nanos(used),
            retry_after: Duration::from_nanos(allow_at - now),
        };
        (outcome, tat)
    } else {
        let used = new_tat - now;
        let outcome = Outcome {
            allowed: true,
            remaining: tau.saturating_sub(used) / interval,
            reset: Duration::from_nanos(used),
            retry_after: Duration::ZERO,
        };
        (outcome, new_tat)
    }
}

/// A settled `tat`: `delta` units added to (or taken from) the bucket; `None` when the result
/// is an idle (full) bucket.
pub(crate) fn settle_tat(tat: u64, now: u64, interval: u64, delta: i64) -> Option<u64> {
    let base = tat.max(now);
    let change = delta.unsigned_abs().saturating_mul(interval.max(1));
    let new_tat = if delta >= 0 {
        base.saturating_add(change)
    } else {
        base.saturating_sub(change)
    };
    (new_tat > now).then_some(new_tat)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === RateLimitMemoryStore ===

const SHARDS: usize = 64;
const MIN_SWEEP: usize = 64;

/// The in-memory store (the default): one process, no I/O.
///
/// Buckets live in 64 shards, each a `Mutex<HashMap>` picked by the key's hash, so requests of
/// different clients rarely meet on a lock and there is no global lock. A bucket that has filled
/// up again is idle and forgotten: each shard sweeps its idle buckets whenever it has doubled
/// since the last sweep. Memory is bounded by `max_keys` (default 1,000,000, about 100 MB at
/// worst): past it, the buckets closest to full are forgotten first (they start over full).
///
/// Time is [`tokio::time::Instant`], so tests can drive it with `tokio::time::pause()` and
/// `advance()`.
pub struct RateLimitMemoryStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    base: Instant,
}

struct Shard {
    tats: HashMap<Box<str>, u64>,
    sweep_at: usize,
}

impl RateLimitMemoryStore {
    /// A store for up to 1,000,000 buckets.
    pub fn new() -> Self {
        Self::with_max_keys(1_000_000)
    }

    /// A store for up to `max_keys` buckets (at least one per shard).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    tats: HashMap::new(),
                    sweep_at: MIN_SWEEP.min(per_shard),
                })
            })
            .collect();
        Self {
            shards,
            per_shard,
            base: Instant::now(),
        }
    }

    /// Number of buckets held (idle ones included until swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.base))
    }

    fn shard_of(key: &str) -> usize {
        // FNV-1a: cheap, and only spreads keys over locks (the maps hash with SipHash).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h ^ (h >> 32)) as usize % SHARDS
    }

    /// The synchronous check behind [`RateLimitStore::check`].
    pub fn check_now(&self, checks: &[Check]) -> Vec<Outcome> {
        let now = self.now();
        if let [check] = checks {
            // One bucket, one lock.
            let mut shard = lock(&self.shards[Self::shard_of(&check.key)]);
            let tat = shard.tats.get(check.key.as_str()).copied().unwrap_or(0);
            let (outcome, new_tat) =
                gcra(tat, now, nanos(check.interval), check.capacity, check.cost);
            if outcome.allowed {
                shard.store(&check.key, new_tat, now, self.per_shard);
            }
            return vec![outcome];
        }
        // Several buckets: take their locks in shard order (no deadlock), decide, then write.
        let idx: Vec<usize> = checks.iter().map(|c| Self::shard_of(&c.key)).collect();
        let mut order = idx.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
        let mut results = Vec::with_capacity(checks.len());
        for (check, &i) in checks.iter().zip(&idx) {
            let tat = locked(&mut guards, i)
                .tats
                .get(check.key.as_str())
                .copied()
                .unwrap_or(0);
            results.push(gcra(
                tat,
                now,
                nanos(check.interval),
                check.capacity,
                check.cost,
            ));
        }
        if results.iter().all(|(o, _)| o.allowed) {
            for ((check, &i), (_, new_tat)) in checks.iter().zip(&idx).zip(&results) {
                locked(&mut guards, i).store(&check.key, *new_tat, now, self.per_shard);
            }
        }
        results.into_iter().map(|(o, _)| o).collect()
    }

    /// The synchronous settlement behind [`RateLimitStore::settle`].
    pub fn settle_now(&self, settlements: &[Settlement]) {
        let now = self.now();
        for s in settlements {
            let mut shard = lock(&self.shards[Self::shard_of(&s.key)]);
            let tat = shard.tats.get(s.key.as_str()).copied().unwrap_or(0);
            match settle_tat(tat, now, nanos(s.interval), s.delta) {
                Some(new_tat) => shard.store(&s.key, new_tat, now, self.per_shard),
                None => {
                    shard.tats.remove(s.key.as_str());
                }
            }
        }
    }
}

impl Shard {
    fn store(&mut self, key: &str, tat: u64, now: u64, cap: usize) {
        if let Some(t) = self.tats.get_mut(key) {
            *t = tat;
            return;
        }
        if self.tats.len() >= self.sweep_at {
            self.tats.retain(|_, t| *t > now);
            if self.tats.len() >= cap {
                self.evict_closest_to_full(cap);
            }
            self.sweep_at = (self.tats.len() * 2).clamp(MIN_SWEEP.min(cap), cap);
        }
        self.tats.insert(key.into(), tat);
    }

    /// Forgets about an eighth of the buckets: those that will be full soonest.
    fn evict_closest_to_full(&mut self, cap: usize) {
        let mut tats: Vec<u64> = self.tats.values().copied().collect();
        let n = (cap / 8).max(1).min(tats.len());
        let (_, cut, _) = tats.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut budget = n;
        self.tats.retain(|_, t| {
            if *t <= cut && budget > 0 {
                budget -= 1;
                false
            } else {
                true
            }
        });
    }
}

fn locked<'g>(guards: &'g mut [(usize, MutexGuard<'_, Shard>)], shard: usize) -> &'g mut Shard {
    let at = guards
        .iter()
        .position(|(s, _)| *s == shard)
        .expect("every shard of the checks is locked");
    &mut guards[at].1
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for RateLimitMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RateLimitMemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitMemoryStore")
            .field("shards", &self.shards.len())
            .field("max_keys", &(self.per_shard * self.shards.len()))
            .finish()
    }
}

impl RateLimitStore for RateLimitMemoryStore {
    fn check<'a>(&'a self, checks: &'a [Check]) -> StoreFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(std::future::ready(Ok(self.check_now(checks))))
    }

    fn settle(&self, settlements: Vec<Settlement>) -> StoreFuture<'static, Result<(), Error>> {
        self.settle_now(&settlements);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn check(key: &str, per_minute: u64, capacity: u64, cost: u64) -> Check {
        Check {
            key: key.to_owned(),
            interval: Duration::from_secs(60) / per_minute as u32,
            capacity,
            cost,
        }
    }

    #[test]
    fn gcra_allows_a_burst_then_one_per_interval() {
        let mut tat = 0;
        for i in 0..3 {
            let (o, t) = gcra(tat, 10 * SEC, SEC, 3, 1);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 2 - i);
            tat = t;
        }
        let (o, _) = gcra(tat, 10 * SEC, SEC, 3, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, Duration::from_secs(1));
        assert_eq!(o.reset, Duration::from_secs(3));
        let (o, _) = gcra(tat, 11 * SEC, SEC, 3, 1);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
    }

    #[test]
    fn gcra_charges_costs_and_settles_both_ways() {
        let (o, tat) = gcra(0, SEC, 10, 100, 40);
        assert!(o.allowed);
        assert_eq!(o.remaining, 60);
        // 40 estimated, 70 used: 30 more.
        let tat = settle_tat(tat, SEC, 10, 30).unwrap();
        let (o, _) = gcra(tat, SEC, 10, 100, 31);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 30);
        // A refund larger than the charge leaves a full (forgotten) bucket.
        assert_eq!(settle_tat(tat, SEC, 10, -1000), None);
    }

    #[test]
    fn several_buckets_are_all_or_nothing() {
        let store = RateLimitMemoryStore::new();
        let a = check("a", 60, 5, 1);
        let b = check("b", 60, 1, 1);
        let out = store.check_now(&[a.clone(), b.clone()]);
        assert!(out.iter().all(|o| o.allowed));
        let out = store.check_now(&[a.clone(), b]);
        assert!(out[0].allowed && !out[1].allowed);
        // `a` was not charged by the refused request: 4 left before this one.
        assert_eq!(store.check_now(&[a])[0].remaining, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_swept() {
        let store = RateLimitMemoryStore::with_max_keys(SHARDS * 1000);
        for i in 0..5000 {
            store.check_now(&[check(&format!("k{i}"), 60, 1, 1)]);
        }
        assert_eq!(store.len(), 5000);
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..5000 {
            store.check_now(&[check(&format!("new{i}"), 60, 1, 1)]);
        }
        // The old buckets were idle (full again after 1 s) and swept on the way.
        assert!(store.len() < 7000, "{}", store.len());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_under_many_active_keys() {
        let store = RateLimitMemoryStore::with_max_keys(SHARDS * 100);
        for i in 0..50_000 {
            store.check_now(&[check(&format!("k{i}"), 1, 1, 1)]);
        }
        assert!(store.len() <= SHARDS * 100, "{}", store.len());
    }
}
