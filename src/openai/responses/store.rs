//! Where stored responses are kept: the [`ResponseStore`] trait and its memory store.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The future of a [`ResponseStore`] call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One stored response: what `GET /v1/responses/{id}` answers and what a later request naming
/// it in `previous_response_id` continues from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The response id (`resp_…`).
    pub id: String,
    /// Who created it ([`Identity::subject`](crate::facts::Identity::subject)); no other
    /// client reaches it.
    pub owner: String,
    /// The model it was asked of.
    pub model: String,
    /// When it was stored (Unix seconds).
    pub created_at: u64,
    /// When it is forgotten (Unix seconds).
    pub expires_at: u64,
    /// Every input item of the conversation up to this response: the history it continued
    /// (earlier inputs and outputs) followed by its own input.
    pub input: Vec<Value>,
    /// The response object as it was answered (its `output` items end the history).
    pub response: Value,
}

impl StoredResponse {
    /// The conversation a response continuing this one starts from: its input items, then its
    /// output items.
    pub fn history(&self) -> Vec<Value> {
        let mut items = self.input.clone();
        if let Some(output) = self.response["output"].as_array() {
            items.extend(output.iter().cloned());
        }
        items
    }
}

/// Keeps stored responses. Calls are on the request path: implementations bound their waits
/// (a store that cannot answer in time answers a miss and logs why); expired entries are never
/// returned.
pub trait ResponseStore: Send + Sync + fmt::Debug + 'static {
    /// The live entry for `id`.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>>;
    /// Records (or replaces) an entry.
    fn put(&self, entry: StoredResponse) -> StoreFuture<'_, ()>;
    /// Forgets `id`; whether it was there.
    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
}

/// The default bound of a [`MemoryResponseStore`]: 10,000 responses.
pub const DEFAULT_MEMORY_CAPACITY: usize = 10_000;

/// The default byte bound of a [`MemoryResponseStore`]: 256 MiB of stored JSON.
pub const DEFAULT_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Responses in this process's memory: the default, for one instance. Holds at most
/// `capacity` responses and about `max_bytes` of them (their JSON size); the oldest go first.
#[derive(Debug)]
pub struct MemoryResponseStore {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    entries: HashMap<String, (StoredResponse, usize)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Memory {
    fn remove(&mut self, id: &str) -> bool {
        match self.entries.remove(id) {
            Some((_, size)) => {
                self.bytes = self.bytes.saturating_sub(size);
                true
            }
            None => false,
        }
    }
}

impl Default for MemoryResponseStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryResponseStore {
    /// An empty store holding at most [`DEFAULT_MEMORY_CAPACITY`] responses.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_MEMORY_CAPACITY)
    }

    /// An empty store holding at most `capacity` responses (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            max_bytes: DEFAULT_MEMORY_BYTES,
            inner: Mutex::new(Memory::default()),
        }
    }

    /// Sets about how many bytes (of stored JSON) it holds at most (default
    /// [`DEFAULT_MEMORY_BYTES`]); a single larger response is not kept.
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// How many responses it holds now (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_now(&self, id: &str) -> Option<StoredResponse> {
        let now = super::super::response::unix_now();
        self.lock()
            .entries
            .get(id)
            .map(|(e, _)| e)
            .filter(|e| e.expires_at > now)
            .cloned()
    }

    fn put_now(&self, entry: StoredResponse) {
        let size = serde_json::to_vec(&entry).map_or(usize::MAX, |v| v.len());
        let now = super::super::response::unix_now();
        let mut m = self.lock();
        if m.remove(&entry.id) {
            m.order.retain(|id| *id != entry.id);
        }
        if size > self.max_bytes {
            tracing::debug!(id = %entry.id, size, "a response larger than the store's bound is not kept");
            return;
        }
        if m.order.len() % 256 == 255 {
            let expired: Vec<String> = m
                .entries
                .iter()
                .filter(|(_, (e, _))| e.expires_at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                m.remove(&id);
            }
        }
        // Ids removed early stay in the order until it grows well past the entries.
        if m.order.len() > 2 * m.entries.len() + 16 {
            let Memory { entries, order, .. } = &mut *m;
            order.retain(|id| entries.contains_key(id));
        }
        m.order.push_back(entry.id.clone());
        m.entries.insert(entry.id.clone(), (entry, size));
        m.bytes += size;
        while m.entries.len() > self.capacity || m.bytes > self.max_bytes {
            let Some(oldest) = m.order.pop_front() else {
                break;
            };
            m.remove(&oldest);
        }
    }

    fn remove_now(&self, id: &str) -> bool {
        self.lock().remove(id)
    }
}

impl ResponseStore for MemoryResponseStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>> {
        Box::pin(std::future::ready(self.get_now(id)))
    }

    fn put(&self, entry: StoredResponse) -> StoreFuture<'_, ()> {
        self.put_now(entry);
        Box::pin(std::future::ready(()))
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(self.remove_now(id)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(id: &str, expires_in: i64) -> StoredResponse {
        let now = super::super::super::response::unix_now() as i64;
        StoredResponse {
            id: id.into(),
            owner: "alice".into(),
            model: "gemini-2.5-flash".into(),
            created_at: now as u64,
            expires_at: (now + expires_in).max(0) as u64,
            input: vec![serde_json::json!({"role": "user", "content": "hi"})],
            response: serde_json::json!({"id": id, "output": [{"type": "message"}]}),
        }
    }

    #[test]
    fn keeps_forgets_and_expires() {
        let s = MemoryResponseStore::new();
        s.put_now(entry("resp_a", 60));
        s.put_now(entry("resp_old", -1));
        assert_eq!(s.get_now("resp_a").unwrap().history().len(), 2);
        assert!(s.get_now("resp_old").is_none());
        assert!(s.remove_now("resp_a"));
        assert!(!s.remove_now("resp_a"));
        assert!(s.get_now("resp_a").is_none());
    }

    #[test]
    fn holds_at_most_its_capacity_dropping_the_oldest() {
        let s = MemoryResponseStore::with_capacity(2);
        for id in ["resp_1", "resp_2", "resp_3"] {
            s.put_now(entry(id, 60));
        }
        assert_eq!(s.len(), 2);
        assert!(s.get_now("resp_1").is_none());
        assert!(s.get_now("resp_3").is_some());
    }

    #[test]
    fn holds_about_its_byte_bound() {
        let one = serde_json::to_vec(&entry("resp_1", 60)).unwrap().len();
        let s = MemoryResponseStore::new().max_bytes(one * 2 + one / 2);
        for id in ["resp_1", "resp_2", "resp_3"] {
            s.put_now(entry(id, 60));
        }
        assert_eq!(s.len(), 2);
        assert!(s.get_now("resp_1").is_none());
        let tiny = MemoryResponseStore::new().max_bytes(10);
        tiny.put_now(entry("resp_big", 60));
        assert!(tiny.is_empty());
    }
}
