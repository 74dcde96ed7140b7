//! Where resource → key pins are kept: the [`AffinityStore`] trait and its memory store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};

/// The future of an [`AffinityStore`] call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One resource created through the gateway: which key's project holds it, which client
/// created it, until when it lives, and the resource's last known JSON (for lists).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    /// The resource's name, e.g. `files/abc`, `cachedContents/x`, `batches/y`,
    /// `models/veo-3/operations/z`, or `uploads/{id}` for a resumable upload session.
    pub name: String,
    /// The id of the key whose project holds it (a fingerprint, never the key).
    pub key_id: String,
    /// The id of the client that created it ([`Identity::id`](crate::facts::Identity::id)).
    pub owner: String,
    /// When it was recorded (Unix seconds): lists are in this order.
    pub created_at: u64,
    /// When it expires (Unix seconds); it is forgotten after.
    pub expires_at: u64,
    /// The resource's JSON as the upstream last described it (an upload session: the
    /// upstream's path and query).
    pub meta: String,
}

/// Keeps resource pins. Calls are on the request path: implementations bound their waits (a
/// store that cannot answer in time answers a miss and logs why); expired entries are never
/// returned.
pub trait AffinityStore: Send + Sync + fmt::Debug + 'static {
    /// The live entry for `name`.
    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Pinned>>;
    /// Records (or replaces) an entry.
    fn put(&self, entry: Pinned) -> StoreFuture<'_, ()>;
    /// Forgets `name`.
    fn remove<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()>;
    /// Live entries whose name starts with `prefix` (a collection such as `files/`), of
    /// `owner` only when given, oldest first (ties by name).
    fn list<'a>(&'a self, prefix: &'a str, owner: Option<&'a str>) -> StoreFuture<'a, Vec<Pinned>>;
}

/// Pins in this process's memory: the default, for one instance.
#[derive(Debug, Default)]
pub struct MemoryAffinityStore {
    entries: Mutex<HashMap<String, Pinned>>,
}

impl MemoryAffinityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pinned>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AffinityStore for MemoryAffinityStore {
    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Pinned>> {
        Box::pin(std::future::ready(self.get_now(name)))
    }

    fn put(&self, entry: Pinned) -> StoreFuture<'_, ()> {
        self.put_now(entry);
        Box::pin(std::future::ready(()))
    }

    fn remove<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        self.lock().remove(name);
        Box::pin(std::future::ready(()))
    }

    fn list<'a>(&'a self, prefix: &'a str, owner: Option<&'a str>) -> StoreFuture<'a, Vec<Pinned>> {
        Box::pin(std::future::ready(self.list_now(prefix, owner)))
    }
}

impl MemoryAffinityStore {
    fn get_now(&self, name: &str) -> Option<Pinned> {
        let now = crate::rfc3339::now();
        self.lock()
            .get(name)
            .filter(|e| e.expires_at > now)
            .cloned()
    }

    fn put_now(&self, entry: Pinned) {
        let now = crate::rfc3339::now();
        let mut map = self.lock();
        // Sweep now and then, so expired pins do not pile up.
        if map.len() % 256 == 255 {
            map.retain(|_, e| e.expires_at > now);
        }
        map.insert(entry.name.clone(), entry);
    }

    fn list_now(&self, prefix: &str, owner: Option<&str>) -> Vec<Pinned> {
        let now = crate::rfc3339::now();
        let mut out: Vec<Pinned> = self
            .lock()
            .values()
            .filter(|e| {
                e.expires_at > now
                    && e.name.starts_with(prefix)
                    && owner.is_none_or(|o| e.owner == o)
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        out
    }
}
