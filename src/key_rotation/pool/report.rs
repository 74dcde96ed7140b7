//! The health state machine: what one upstream answer does to the key that got it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::entry::{Cooling, Disabled};
use super::sync::{REST, StoreOp, to_system};
use super::{KeyPool, Lease};
use crate::key_rotation::classify::Outcome;
use crate::key_rotation::strategy::random_fraction;

/// Models set aside as refused, per key, at most: model names come from clients, so a client
/// naming many unknown models cannot grow a key's state without bound.
const MAX_REFUSED_MODELS: usize = 256;

/// Backoff for repeated 429s without `retryDelay` stops growing here (unless the base is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

impl KeyPool {
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
                    h.cooling.insert(
                        model.into(),
                        Cooling {
                            until,
                            strikes,
                            model_unavailable: false,
                        },
                    );
                    tracing::debug!(
                        key.id = %entry.id,
                        gemini.model = %crate::secret::scrub(model),
                        cooldown_ms = wait.as_millis() as u64,
                        per_day,
                        "quota exhausted: key cools down for this model, rotating"
                    );
                    publish = match publish {
                        Publish::Enable => Publish::EnableAndCool(until),
                        _ => Publish::Cool(until),
                    };
                }
                Outcome::ModelUnavailable
                    if h.cooling
                        .values()
                        .filter(|c| c.model_unavailable && c.until > now)
                        .count()
                        >= MAX_REFUSED_MODELS =>
                {
                    // Model names are the client's text: past the bound, nothing is kept (the
                    // next request for such a model asks this key again).
                }
                Outcome::ModelUnavailable => {
                    // The key is fine; this model is not for it. Set the pair aside until the
                    // key would be re-probed, then try it again with a real request.
                    let until = later(now, self.reprobe_after);
                    h.cooling.insert(
                        model.into(),
                        Cooling {
                            until,
                            strikes: 0,
                            model_unavailable: true,
                        },
                    );
                    tracing::info!(
                        key.id = %entry.id,
                        gemini.model = %crate::secret::scrub(model),
                        retry_in_s = self.reprobe_after.as_secs(),
                        "model not available to this key: the key keeps serving other models"
                    );
                    // Kept on this instance only: the shared store knows cool-downs, and
                    // another instance reading this as one would answer a quota 429 for a
                    // model that is refused (a 404). Each instance learns it with one call.
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
                        publish = Publish::Rest(until);
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
        let id = &entry.id;
        // Queued for the store task: the shared store is never waited on here.
        match publish {
            Publish::Nothing => {}
            Publish::Enable => self.publish(StoreOp::Enable(id.clone())),
            Publish::Cool(until) => {
                self.publish(StoreOp::Cool(id.clone(), model.into(), to_system(until)));
            }
            Publish::EnableAndCool(until) => {
                self.publish(StoreOp::Enable(id.clone()));
                self.publish(StoreOp::Cool(id.clone(), model.into(), to_system(until)));
            }
            Publish::Rest(until) => {
                self.publish(StoreOp::Cool(id.clone(), REST.into(), to_system(until)));
            }
            Publish::Disable(reason, at) => {
                self.publish(StoreOp::Disable(id.clone(), reason, to_system(at)));
            }
        }
    }
}

enum Publish {
    Nothing,
    Enable,
    Cool(Instant),
    EnableAndCool(Instant),
    /// Out of rotation for every model (shared as a cool-down for [`REST`]).
    Rest(Instant),
    Disable(String, Instant),
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
