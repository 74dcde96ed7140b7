//! Sharing cool-downs and disabled flags with other pools through a `KeyStateStore`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::entry::{Cooling, Disabled};
use super::report::later;
use super::{KeyId, KeyPool};
use crate::Error;
use crate::key_rotation::store::{KeyStateStore, SharedKeyState};

/// The model name under which a key's rest (out of rotation for every model, after repeated
/// transient failures) is shared as a cool-down: not a model name Gemini uses.
pub(crate) const REST: &str = "*";

/// State changes waiting for the store task at most; past it they are dropped (counted) and
/// the whole local state is sent again once the store keeps up.
const QUEUE: usize = 1024;

/// A change for the shared store, sent by the store task.
pub(crate) enum StoreOp {
    Cool(KeyId, Box<str>, SystemTime),
    Disable(KeyId, String, SystemTime),
    Enable(KeyId),
    /// Answered once every change queued before it was sent.
    Flush(oneshot::Sender<()>),
}

impl KeyPool {
    /// Makes sure the task that shares state with the store runs (started lazily, with the
    /// first request, because building a pool needs no runtime). The request path never
    /// waits on the store: changes are queued, the shared view is pulled by that task every
    /// [sync interval](super::KeyPoolBuilder::sync_interval).
    pub(crate) fn maybe_sync(&self) {
        let _ = self.writer();
    }

    /// Queues a change for the store; a full queue drops it (counted) and marks the store
    /// stale, so the local state is sent again whole once the store keeps up.
    pub(super) fn publish(&self, op: StoreOp) {
        let Some(tx) = self.writer() else { return };
        if tx.try_send(op).is_err() {
            self.store_dropped.fetch_add(1, Ordering::Relaxed);
            self.store_stale.store(true, Ordering::Release);
        }
    }

    /// State changes that were not sent to the store because its queue was full (a store
    /// that stalls); the pool sent its whole state again once the store answered.
    pub fn store_writes_dropped(&self) -> u64 {
        self.store_dropped.load(Ordering::Relaxed)
    }

    /// Waits until every state change queued for the store so far has been sent (or failed).
    pub async fn flush(&self) {
        let Some(tx) = self.writer() else { return };
        let (done, wait) = oneshot::channel();
        if tx.send(StoreOp::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn writer(&self) -> Option<&mpsc::Sender<StoreOp>> {
        let store = self.store.as_ref()?;
        Some(self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(store_task(
                        self.this.clone(),
                        rx,
                        store.clone(),
                        self.sync_interval,
                    ));
                }
                // Without a runtime the queue has no reader: changes are dropped, counted.
                Err(_) => {
                    tracing::warn!("key pool used outside a tokio runtime: state is not shared")
                }
            }
            tx
        }))
    }

    /// Syncs with the store now: sends what is queued, then pulls the shared view.
    pub async fn sync(&self) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        self.flush().await;
        self.last_sync
            .store(self.now_ms(Instant::now()) + 1, Ordering::Release);
        self.load_and_merge(store).await.inspect_err(|_| {
            self.store_stale.store(true, Ordering::Release);
        })
    }

    async fn send(&self, store: &Arc<dyn KeyStateStore>, op: StoreOp) {
        let r = match op {
            StoreOp::Cool(id, model, until) => store.cool_down(&id, &model, until).await,
            StoreOp::Disable(id, reason, at) => store.disable(&id, &reason, at).await,
            StoreOp::Enable(id) => store.enable(&id).await,
            StoreOp::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        self.store_outcome(r);
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
                    .chain(
                        h.resting_until
                            .filter(|t| *t > now)
                            .map(|t| (Box::from(REST), t)),
                    )
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
                if model == REST {
                    if h.resting_until.is_none_or(|t| t < until) {
                        tracing::debug!(key.id = %e.id, "key rests after another instance's failures");
                        h.resting_until = Some(until);
                    }
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

/// The store task: sends queued changes in order and pulls the shared view every `every`.
/// Ends when the pool is dropped.
async fn store_task(
    pool: std::sync::Weak<KeyPool>,
    mut rx: mpsc::Receiver<StoreOp>,
    store: Arc<dyn KeyStateStore>,
    every: std::time::Duration,
) {
    let mut next = Instant::now();
    loop {
        match tokio::time::timeout_at(next, rx.recv()).await {
            Ok(Some(op)) => {
                let Some(pool) = pool.upgrade() else { return };
                pool.send(&store, op).await;
            }
            Ok(None) => return,
            Err(_) => {
                next = Instant::now() + every;
                let Some(pool) = pool.upgrade() else { return };
                pool.last_sync
                    .store(pool.now_ms(Instant::now()) + 1, Ordering::Release);
                if let Err(e) = pool.load_and_merge(&store).await {
                    pool.store_outcome(Err(e));
                }
            }
        }
    }
}
