//! Choosing a key for a request: the strategy, due re-probes, and why no key can serve.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{KeyEntry, KeyList};
use super::{KeyId, KeyPool, Lease};
use crate::error::ApiError;
use crate::key_rotation::strategy::Candidates;

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
    /// Every enabled key answered 404 for the model (refused to it, e.g. "no longer available
    /// to new users"); they are tried again after this long.
    ModelRefused(Duration),
}

impl Unavailable {
    /// The answer for a request that no key can serve (names no key).
    pub(crate) fn to_api_error(&self, model: &str) -> ApiError {
        let for_model = if model.is_empty() {
            String::new()
        } else {
            format!(" for model {}", crate::secret::scrub(model))
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
            Unavailable::ModelRefused(after) => ApiError::new(
                http::StatusCode::NOT_FOUND,
                format!(
                    "no upstream API key of the gateway can use the model{for_model} (Google \
                     answered 404 for it on each); they are tried again in {} s",
                    after.as_secs() + u64::from(after.subsec_nanos() > 0)
                ),
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

/// Why a pinned request cannot use its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PinMiss {
    /// The key is no longer in the pool.
    Gone,
    /// The key is disabled.
    Disabled,
}

impl PinMiss {
    /// The answer naming the resource (and no key).
    pub(crate) fn to_api_error(self, resource: &str) -> ApiError {
        match self {
            PinMiss::Gone => ApiError::new(
                http::StatusCode::NOT_FOUND,
                format!(
                    "{resource} lives in the project of an upstream API key that was removed from the gateway; it cannot be reached any more"
                ),
            ),
            PinMiss::Disabled => ApiError::service_unavailable(format!(
                "{resource} lives in the project of an upstream API key that is disabled; it can be reached again once the operator re-enables that key"
            )),
        }
    }
}

impl KeyPool {
    /// The key of id `id` for a request pinned to it, whatever its cool-downs (the upstream
    /// says when a quota is spent); never another key.
    pub(crate) fn pick_pinned(self: &Arc<Self>, id: &str) -> Result<Lease, PinMiss> {
        let list = self.list();
        let entry = list
            .entries
            .iter()
            .find(|e| e.id.as_str() == id)
            .ok_or(PinMiss::Gone)?;
        if !entry.clean.load(Ordering::Acquire) && entry.health().disabled.is_some() {
            return Err(PinMiss::Disabled);
        }
        Ok(self.lease(entry.clone(), false, Instant::now()))
    }

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

    /// How long until some key can serve `model` again when none can now (every enabled key
    /// cooling for it or resting); `None` when one can serve now or none ever will.
    pub(crate) fn free_after(&self, model: &str) -> Option<Duration> {
        let list = self.list();
        match self.why_unavailable(&list, model, Instant::now(), &[]) {
            Unavailable::AllCooling(d)
            | Unavailable::AllResting(d)
            | Unavailable::ModelRefused(d) => Some(d),
            _ => None,
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

    pub(super) fn schedule_probe(&self, at: Instant) {
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
        // Every key that is neither disabled nor tried has the model set aside as refused.
        let mut only_refused = true;
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
            let entry = h.cooling.get(model).filter(|c| c.until > now);
            let cooling = entry.map(|c| c.until);
            any_quota |= entry.is_some_and(|c| !c.model_unavailable);
            only_refused &= entry.is_some_and(|c| c.model_unavailable) && resting.is_none();
            match resting.max(cooling) {
                Some(free_at) => {
                    earliest = Some(earliest.map_or(free_at, |x| x.min(free_at)));
                }
                // Usable after all (a race with a cool-down ending): let the caller retry.
                None => return Unavailable::AllTried,
            }
        }
        match earliest {
            Some(at) if only_refused => {
                Unavailable::ModelRefused((at - now).max(Duration::from_millis(1)))
            }
            Some(at) if any_quota => {
                Unavailable::AllCooling((at - now).max(Duration::from_millis(1)))
            }
            Some(at) => Unavailable::AllResting((at - now).max(Duration::from_millis(1))),
            None if any_tried => Unavailable::AllTried,
            None => Unavailable::AllDisabled,
        }
    }
}
