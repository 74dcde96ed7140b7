//! What operators see of a key: [`KeySnapshot`], [`KeyState`] and [`CoolingSnapshot`].

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{KeyId, KeyPool};

impl KeyPool {
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
                            // The model is the client's text: a key pasted there is masked.
                            model: crate::secret::scrub(m).into_owned(),
                            remaining,
                            until: wall + remaining,
                            model_unavailable: c.model_unavailable,
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
}

/// A key's state as shown to operators. Holds the masked key only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySnapshot {
    /// The key's stable id.
    pub id: KeyId,
    /// The key masked (`AIza…9xQk`).
    pub masked: String,
    /// The key's weight for [`Strategy::Weighted`](crate::key_rotation::Strategy::Weighted).
    pub weight: u32,
    /// Enabled, disabled or being re-probed.
    pub state: KeyState,
    /// Key failures (invalid key, permission denied) in a row.
    pub consecutive_failures: u32,
    /// Transient failures (500, 502, 503, 504, transport errors, timeouts) in a row with this
    /// key; any other answer resets it.
    pub consecutive_transient_failures: u32,
    /// Time left in a rest for every model after
    /// [`max_transient_failures`](super::KeyPoolBuilder::max_transient_failures) transient failures
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
                    "reason": if c.model_unavailable { "model_not_available_to_key" } else { "quota" },
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
    /// The model is refused to this key (Google's 404 "no longer available to new users"),
    /// not a quota: the key is tried for it again when this ends.
    pub model_unavailable: bool,
}
