//! One key with its counters and health, and the pool's key list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::KeyId;
use crate::secret::ApiKey;

/// One key and its state. The counters are atomics; the health sits behind a per-key mutex
/// that the pick path only takes when `clean` is false.
pub(crate) struct KeyEntry {
    pub(crate) key: ApiKey,
    pub(crate) id: KeyId,
    pub(crate) weight: u32,
    pub(super) in_flight: AtomicU32,
    pub(super) total: AtomicU64,
    /// `(window << 32) | count`: requests in the current one-minute window.
    pub(super) recent: AtomicU64,
    /// True when the key is enabled and cools for no model: usable without locking.
    pub(super) clean: AtomicBool,
    pub(super) health: Mutex<Health>,
}

#[derive(Default)]
pub(super) struct Health {
    pub(super) failures: u32,
    pub(super) disabled: Option<Disabled>,
    pub(super) probing: bool,
    pub(super) cooling: HashMap<Box<str>, Cooling>,
    /// 5xx or transport failures in a row (any other answer resets it).
    pub(super) transient: u32,
    /// Out of rotation for every model until then, after repeated transient failures.
    pub(super) resting_until: Option<Instant>,
    pub(super) last_error: Option<String>,
}

pub(super) struct Disabled {
    pub(super) reason: String,
    pub(super) since: Instant,
    pub(super) reprobe_at: Instant,
}

#[derive(Clone, Copy)]
pub(super) struct Cooling {
    pub(super) until: Instant,
    /// 429s without a success in between, for the backoff.
    pub(super) strikes: u32,
    /// Set aside because the model is refused to this key (a 404 naming it), not for quota.
    pub(super) model_unavailable: bool,
}

impl Health {
    fn is_clean(&self) -> bool {
        self.disabled.is_none()
            && self.cooling.is_empty()
            && self.resting_until.is_none()
            && !self.probing
    }

    /// The upstream answered something other than a 5xx: the transient streak ends.
    pub(super) fn end_transient_streak(&mut self) {
        self.transient = 0;
        self.resting_until = None;
    }
}

impl KeyEntry {
    pub(super) fn new(key: ApiKey, id: KeyId, weight: u32) -> Self {
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

    pub(super) fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn update_clean(&self, h: &Health) {
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

    pub(super) fn count_request(&self, window: u32) {
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
    pub(super) fn usable_for(&self, model: &str, now: Instant) -> bool {
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
    /// Running sums of the weights, for
    /// [`Strategy::Weighted`](crate::key_rotation::Strategy::Weighted).
    pub(crate) prefix: Vec<u64>,
}

impl KeyList {
    pub(super) fn new(entries: Vec<Arc<KeyEntry>>) -> Self {
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
