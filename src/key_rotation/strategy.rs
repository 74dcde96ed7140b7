//! Key selection: the [`SelectKey`] plug point and the built-in [`Strategy`] set.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::pool::KeyList;

/// The built-in ways to share load between healthy keys, chosen at build time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// Each key in turn (the default).
    #[default]
    RoundRobin,
    /// A uniformly random usable key.
    Random,
    /// The key with the fewest requests in flight, then the fewest requests in the last minute.
    LeastUsed,
    /// Each key in turn, as many times per cycle as its weight
    /// ([`KeyPoolBuilder::weighted_key`](super::KeyPoolBuilder::weighted_key)).
    Weighted,
}

impl Strategy {
    /// The selector implementing this strategy.
    pub fn selector(self) -> Arc<dyn SelectKey> {
        match self {
            Strategy::RoundRobin => Arc::new(RoundRobin::default()),
            Strategy::Random => Arc::new(Random),
            Strategy::LeastUsed => Arc::new(LeastUsed),
            Strategy::Weighted => Arc::new(Weighted::default()),
        }
    }

    /// The strategy's configuration name (`round_robin`, `random`, `least_used`, `weighted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::LeastUsed => "least_used",
            Strategy::Weighted => "weighted",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = crate::Error;

    /// Parses `round_robin`, `random`, `least_used` or `weighted` (case and `-`/`_` ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        match norm.as_str() {
            "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            "leastused" | "leastloaded" => Ok(Strategy::LeastUsed),
            "weighted" => Ok(Strategy::Weighted),
            _ => Err(crate::Error::config(format!(
                "unknown key strategy {s:?} (expected round_robin, random, least_used or weighted)"
            ))),
        }
    }
}

/// Chooses which key serves the next request: the plug point behind [`Strategy`].
///
/// `select` is on every request's path: keep it cheap and lock-free. It returns an index into
/// `keys` for which [`Candidates::is_usable`] is true, or `None` when none is.
pub trait SelectKey: Send + Sync + fmt::Debug + 'static {
    /// Chooses a usable key.
    fn select(&self, keys: &Candidates<'_>) -> Option<usize>;
}

/// The pool's keys as a strategy sees them: counters and a usability check, never the secret.
pub struct Candidates<'a> {
    pub(crate) list: &'a KeyList,
    pub(crate) usable: &'a dyn Fn(usize) -> bool,
    pub(crate) window: u32,
}

impl Candidates<'_> {
    /// The number of keys (usable or not).
    pub fn len(&self) -> usize {
        self.list.entries.len()
    }

    /// Whether the pool has no key.
    pub fn is_empty(&self) -> bool {
        self.list.entries.is_empty()
    }

    /// Whether key `i` can serve this request now (enabled, not cooling for the model, not
    /// already tried by this request). Takes a short per-key lock when the key has state.
    pub fn is_usable(&self, i: usize) -> bool {
        i < self.len() && (self.usable)(i)
    }

    /// Requests in flight on key `i`.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.list.entries[i].in_flight()
    }

    /// Requests sent with key `i` in the current one-minute window.
    pub fn recent(&self, i: usize) -> u32 {
        self.list.entries[i].recent(self.window)
    }

    /// The weight of key `i` (1 unless configured).
    pub fn weight(&self, i: usize) -> u32 {
        self.list.entries[i].weight
    }

    /// The sum of all weights.
    pub fn total_weight(&self) -> u64 {
        self.list.prefix.last().copied().unwrap_or(0)
    }

    /// The key owning `point` (taken modulo the total weight) when each key owns a run of
    /// points as long as its weight.
    pub fn by_weight(&self, point: u64) -> usize {
        let total = self.total_weight().max(1);
        let point = point % total;
        // prefix[i] is the sum of weights up to and including key i.
        self.list.prefix.partition_point(|&end| end <= point)
    }

    /// The first usable key at or after `start`, wrapping around.
    pub fn first_usable_from(&self, start: usize) -> Option<usize> {
        let n = self.len();
        (0..n).map(|k| (start + k) % n).find(|&i| self.is_usable(i))
    }
}

impl fmt::Debug for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidates")
            .field("len", &self.len())
            .finish()
    }
}

// === impl RoundRobin ===

/// Each key in turn.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl SelectKey for RoundRobin {
    fn select(&self, keys: &Candidates<'_>) -> Option<usize> {
        if keys.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % keys.len();
        let i = keys.first_usable_from(start)?;
        if i != start {
            // Skipped unusable keys: continue after the chosen one so the turn stays fair.
            self.next.store(i + 1, Ordering::Relaxed);
        }
        Some(i)
    }
}

// === impl Random ===

/// A uniformly random usable key.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Random;

impl SelectKey for Random {
    fn select(&self, keys: &Candidates<'_>) -> Option<usize> {
        if keys.is_empty() {
            return None;
        }
        let start = (fast_random() % keys.len() as u64) as usize;
        if keys.is_usable(start) {
            return Some(start);
        }
        // Collect the usable ones so that skipping unusable keys does not favour their
        // neighbours. Rare: only when some keys are cooling or disabled.
        let usable: Vec<usize> = (0..keys.len()).filter(|&i| keys.is_usable(i)).collect();
        if usable.is_empty() {
            return None;
        }
        Some(usable[(fast_random() % usable.len() as u64) as usize])
    }
}

// === impl LeastUsed ===

/// The key with the fewest requests in flight, then the fewest requests in the last minute;
/// ties go to the lowest index.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LeastUsed;

impl SelectKey for LeastUsed {
    fn select(&self, keys: &Candidates<'_>) -> Option<usize> {
        let mut best: Option<(u32, u32, usize)> = None;
        for i in 0..keys.len() {
            let score = (keys.in_flight(i), keys.recent(i));
            if best.is_some_and(|(f, r, _)| (f, r) <= score) {
                continue;
            }
            // Check usability only for a key that would win.
            if keys.is_usable(i) {
                best = Some((score.0, score.1, i));
            }
        }
        best.map(|(_, _, i)| i)
    }
}

// === impl Weighted ===

/// Each key in turn, as many times per cycle as its weight.
#[derive(Debug, Default)]
pub(crate) struct Weighted {
    next: AtomicU64,
}

impl SelectKey for Weighted {
    fn select(&self, keys: &Candidates<'_>) -> Option<usize> {
        if keys.is_empty() {
            return None;
        }
        let point = self.next.fetch_add(1, Ordering::Relaxed);
        let i = keys.by_weight(point);
        if keys.is_usable(i) {
            return Some(i);
        }
        keys.first_usable_from(i)
    }
}

/// A fast non-cryptographic random number (wyrand, per thread, randomly seeded).
pub(crate) fn fast_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0x5eed_u64) | 1);
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A random fraction in `[0, 1)`.
pub(crate) fn random_fraction() -> f64 {
    (fast_random() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_strategy_names() {
        assert_eq!(
            "round_robin".parse::<Strategy>().unwrap(),
            Strategy::RoundRobin
        );
        assert_eq!(
            "least-used".parse::<Strategy>().unwrap(),
            Strategy::LeastUsed
        );
        assert_eq!("Weighted".parse::<Strategy>().unwrap(), Strategy::Weighted);
        assert!("fastest".parse::<Strategy>().is_err());
    }

    #[test]
    fn random_fraction_is_in_range() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
