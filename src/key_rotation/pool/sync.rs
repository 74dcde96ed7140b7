//! Sharing cool-downs and disabled flags with other pools through a `KeyStateStore`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;

use super::entry::{Cooling, Disabled};
use super::report::later;
use super::{KeyId, KeyPool};
use crate::Error;
use crate::key_rotation::store::{KeyStateStore, SharedKeyState};

impl KeyPool {
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
    pub(super) fn store_outcome(&self, r: Result<(), Error>) {
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
                let c = h.cooling.entry(model.as_str().into()).or_insert(Cooling {
                    until,
                    strikes: 1,
                    model_unavailable: false,
                });
                c.until = c.until.max(until);
            }
            e.update_clean(&h);
        }
    }
}

pub(super) fn to_system(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}
