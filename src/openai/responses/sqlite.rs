//! [`ResponseSqliteStore`]: stored responses in a SQLite file, shared by the instances of one
//! host and kept across restarts.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::store::{ResponseStore, StoreFuture, StoredResponse};
use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stored_responses (
    id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS stored_responses_expiry ON stored_responses (expires_at);
";

/// The default bound of a [`ResponseSqliteStore`]: 100,000 responses.
pub const DEFAULT_SQLITE_CAPACITY: usize = 100_000;

/// Stored responses in a SQLite file (feature `sqlite`), at most `capacity` of them (the ones
/// expiring first go first). A failing statement is logged; a read then answers a miss.
#[derive(Clone)]
pub struct ResponseSqliteStore {
    conn: Arc<Mutex<Connection>>,
    capacity: usize,
}

impl fmt::Debug for ResponseSqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseSqliteStore")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ResponseSqliteStore {
    /// Opens (creating when missing, readable by its owner only) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let conn = crate::persist::sqlite::open(path.as_ref())?;
        conn.execute_batch(SCHEMA).map_err(Error::store)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            capacity: DEFAULT_SQLITE_CAPACITY,
        })
    }

    /// Sets how many responses it keeps at most (default [`DEFAULT_SQLITE_CAPACITY`]).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_now(&self, id: &str) -> Option<StoredResponse> {
        let now = super::super::response::unix_now() as i64;
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT entry FROM stored_responses WHERE id = ?1 AND expires_at > ?2",
                params![id, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(warn)
            .ok()
            .flatten();
        json.and_then(|j| serde_json::from_str(&j).ok())
    }

    fn put_now(&self, e: &StoredResponse) {
        let Ok(json) = serde_json::to_string(e) else {
            return;
        };
        let conn = self.conn();
        let now = super::super::response::unix_now() as i64;
        let _ = conn
            .execute(
                "DELETE FROM stored_responses WHERE expires_at <= ?1",
                params![now],
            )
            .map_err(warn);
        let _ = conn
            .execute(
                "INSERT OR REPLACE INTO stored_responses (id, expires_at, entry) VALUES (?1, ?2, ?3)",
                params![e.id, e.expires_at as i64, json],
            )
            .map_err(warn);
        let _ = conn
            .execute(
                "DELETE FROM stored_responses WHERE id IN (SELECT id FROM stored_responses
                 ORDER BY expires_at DESC LIMIT -1 OFFSET ?1)",
                params![self.capacity as i64],
            )
            .map_err(warn);
    }

    fn remove_now(&self, id: &str) -> bool {
        self.conn()
            .execute("DELETE FROM stored_responses WHERE id = ?1", params![id])
            .map_err(warn)
            .is_ok_and(|n| n > 0)
    }
}

fn warn(e: rusqlite::Error) {
    tracing::warn!(error = %e, "response store (SQLite) failed");
}

// A stored response may be megabytes of JSON: the statements run on the blocking pool, never
// on a runtime worker.
impl ResponseSqliteStore {
    fn off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ResponseSqliteStore) -> T + Send + 'static,
        fallback: T,
    ) -> StoreFuture<'static, T> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .unwrap_or(fallback)
        })
    }
}

impl ResponseStore for ResponseSqliteStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>> {
        let id = id.to_owned();
        self.off_runtime(move |s| s.get_now(&id), None)
    }

    fn put(&self, entry: StoredResponse) -> StoreFuture<'_, ()> {
        self.off_runtime(move |s| s.put_now(&entry), ())
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let id = id.to_owned();
        self.off_runtime(move |s| s.remove_now(&id), false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_forgets_expires_and_stays_bounded() {
        let path = std::env::temp_dir().join(format!("resp-{}.db", std::process::id()));
        let store = ResponseSqliteStore::open(&path).unwrap().capacity(2);
        let now = super::super::super::response::unix_now();
        let e = |id: &str, exp: u64| StoredResponse {
            id: id.into(),
            owner: "alice".into(),
            model: "m".into(),
            created_at: now,
            expires_at: exp,
            input: vec![serde_json::json!({"role": "user", "content": "hi"})],
            response: serde_json::json!({"id": id, "output": []}),
        };
        store.put_now(&e("resp_a", now + 60));
        store.put_now(&e("resp_old", now - 1));
        assert_eq!(store.get_now("resp_a").unwrap().owner, "alice");
        assert!(store.get_now("resp_old").is_none());
        store.put_now(&e("resp_b", now + 70));
        store.put_now(&e("resp_c", now + 80));
        assert!(
            store.get_now("resp_a").is_none(),
            "the bound drops the first to expire"
        );
        assert!(store.remove_now("resp_c"));
        assert!(!store.remove_now("resp_c"));
        drop(store);
        let _ = std::fs::remove_file(&path);
    }
}
