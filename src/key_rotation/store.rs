//! Shared key state: the [`KeyStateStore`] plug point and the in-process [`KeyStateMemoryStore`].
//!
//! Every [`KeyPool`](super::KeyPool) keeps its keys' state in memory, per key, so picking a
//! key never waits on a store. A store shares the state that matters across pools: cool-downs
//! per (key, model) and disabled flags. The pool publishes each change to its store and pulls
//! the shared view at most once per [sync interval](super::KeyPoolBuilder::sync_interval).
//! Times are wall-clock (`SystemTime`) because they cross processes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

use super::pool::KeyId;
use crate::Error;

/// The future returned by [`KeyStateStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The shared state of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedKeyState {
    /// Models the key is cooling down for, and until when.
    pub cooling: Vec<(String, SystemTime)>,
    /// Why the key is disabled and when it should be probed again.
    pub disabled: Option<(String, SystemTime)>,
}

/// Where a key pool shares cool-downs and disabled flags with other pools (other instances of
/// the proxy, with `KeyStateRedisStore`).
///
/// Calls are made off the key-picking path: on state changes and on periodic syncs. A store
/// error is logged and ignored (the pool keeps working on its local state); once the store
/// answers again, the pool sends it its live cool-downs and disabled flags again, so what it
/// learnt meanwhile (or what a store restarted empty lost) is shared again.
pub trait KeyStateStore: Send + Sync + fmt::Debug + 'static {
    /// Records that `key` cools down for `model` until `until` (a later time wins).
    fn cool_down<'a>(
        &'a self,
        key: &'a KeyId,
        model: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()>;

    /// Records that `key` is disabled, why, and when to probe it again.
    fn disable<'a>(
        &'a self,
        key: &'a KeyId,
        reason: &'a str,
        reprobe_at: SystemTime,
    ) -> StoreFuture<'a, ()>;

    /// Records that `key` is enabled again (revived by a probe or by an operator).
    fn enable<'a>(&'a self, key: &'a KeyId) -> StoreFuture<'a, ()>;

    /// The shared state of every key that has some (cool-downs not yet over, disabled flags).
    fn load(&self) -> StoreFuture<'_, HashMap<KeyId, SharedKeyState>>;
}

/// An in-process store: pools built with the same `Arc<KeyStateMemoryStore>` share cool-downs and
/// disabled flags. A pool built without a store keeps its state to itself.
#[derive(Debug, Default)]
pub struct KeyStateMemoryStore {
    keys: Mutex<HashMap<KeyId, SharedKeyState>>,
}

impl KeyStateMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<KeyId, SharedKeyState>) -> T) -> T {
        let mut guard = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl KeyStateStore for KeyStateMemoryStore {
    fn cool_down<'a>(
        &'a self,
        key: &'a KeyId,
        model: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        self.with(|keys| {
            let state = keys.entry(key.clone()).or_default();
            match state.cooling.iter_mut().find(|(m, _)| m == model) {
                Some((_, u)) => *u = (*u).max(until),
                None => state.cooling.push((model.to_owned(), until)),
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn disable<'a>(
        &'a self,
        key: &'a KeyId,
        reason: &'a str,
        reprobe_at: SystemTime,
    ) -> StoreFuture<'a, ()> {
        self.with(|keys| {
            keys.entry(key.clone()).or_default().disabled = Some((reason.to_owned(), reprobe_at));
        });
        Box::pin(async { Ok(()) })
    }

    fn enable<'a>(&'a self, key: &'a KeyId) -> StoreFuture<'a, ()> {
        self.with(|keys| {
            if let Some(state) = keys.get_mut(key) {
                state.disabled = None;
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn load(&self) -> StoreFuture<'_, HashMap<KeyId, SharedKeyState>> {
        let now = SystemTime::now();
        let out = self.with(|keys| {
            keys.retain(|_, s| {
                s.cooling.retain(|(_, until)| *until > now);
                !s.cooling.is_empty() || s.disabled.is_some()
            });
            keys.clone()
        });
        Box::pin(async move { Ok(out) })
    }
}
