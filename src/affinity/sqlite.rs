//! [`AffinitySqliteStore`]: resource pins in a SQLite file, shared by the instances of one
//! host and kept across restarts.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::store::{AffinityStore, Pinned, StoreFuture};
use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resource_pins (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS resource_pins_expiry ON resource_pins (expires_at);
";

/// Resource pins in a SQLite file (feature `sqlite`). A failing statement is logged and
/// treated as a miss: the request then goes on without a pin.
pub struct AffinitySqliteStore {
    conn: Mutex<Connection>,
}

impl fmt::Debug for AffinitySqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinitySqliteStore")
            .finish_non_exhaustive()
    }
}

impl AffinitySqliteStore {
    /// Opens (creating when missing, readable by its owner only) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let conn = crate::persist::sqlite::open(path.as_ref())?;
        conn.execute_batch(SCHEMA).map_err(Error::store)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pinned> {
    Ok(Pinned {
        name: r.get(0)?,
        key_id: r.get(1)?,
        owner: r.get(2)?,
        created_at: r.get::<_, i64>(3)?.max(0) as u64,
        expires_at: r.get::<_, i64>(4)?.max(0) as u64,
        meta: r.get(5)?,
    })
}

fn warn(e: rusqlite::Error) {
    tracing::warn!(error = %e, "resource pin store failed");
}

// A local file answers in well under a millisecond: the statements run in place.
impl AffinityStore for AffinitySqliteStore {
    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Pinned>> {
        Box::pin(std::future::ready(self.get_now(name)))
    }

    fn put(&self, entry: Pinned) -> StoreFuture<'_, ()> {
        self.put_now(entry);
        Box::pin(std::future::ready(()))
    }

    fn remove<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        self.remove_now(name);
        Box::pin(std::future::ready(()))
    }

    fn list<'a>(&'a self, prefix: &'a str, owner: Option<&'a str>) -> StoreFuture<'a, Vec<Pinned>> {
        Box::pin(std::future::ready(self.list_now(prefix, owner)))
    }
}

impl AffinitySqliteStore {
    fn get_now(&self, name: &str) -> Option<Pinned> {
        let now = crate::rfc3339::now() as i64;
        self.conn()
            .query_row(
                "SELECT name, key_id, owner, created_at, expires_at, meta FROM resource_pins
                 WHERE name = ?1 AND expires_at > ?2",
                params![name, now],
                row,
            )
            .optional()
            .map_err(warn)
            .ok()
            .flatten()
    }

    fn put_now(&self, e: Pinned) {
        let conn = self.conn();
        let now = crate::rfc3339::now() as i64;
        let _ = conn
            .execute(
                "DELETE FROM resource_pins WHERE expires_at <= ?1",
                params![now],
            )
            .map_err(warn);
        let _ = conn
            .execute(
                "INSERT OR REPLACE INTO resource_pins (name, key_id, owner, created_at, expires_at, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.name,
                    e.key_id,
                    e.owner,
                    e.created_at as i64,
                    e.expires_at as i64,
                    e.meta
                ],
            )
            .map_err(warn);
    }

    fn remove_now(&self, name: &str) {
        let _ = self
            .conn()
            .execute("DELETE FROM resource_pins WHERE name = ?1", params![name])
            .map_err(warn);
    }

    fn list_now(&self, prefix: &str, owner: Option<&str>) -> Vec<Pinned> {
        let now = crate::rfc3339::now() as i64;
        let conn = self.conn();
        let result = conn
            .prepare(
                "SELECT name, key_id, owner, created_at, expires_at, meta FROM resource_pins
                 WHERE expires_at > ?1 AND substr(name, 1, length(?2)) = ?2
                   AND (?3 IS NULL OR owner = ?3)
                 ORDER BY created_at, name",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![now, prefix, owner], row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            });
        result.map_err(warn).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_lists_and_forgets() {
        let dir = std::env::temp_dir().join(format!("aff-{}.db", std::process::id()));
        let store = AffinitySqliteStore::open(&dir).unwrap();
        let now = crate::rfc3339::now();
        let e = |name: &str, owner: &str, exp: u64| Pinned {
            name: name.into(),
            key_id: "k1".into(),
            owner: owner.into(),
            created_at: now,
            expires_at: exp,
            meta: "{}".into(),
        };
        store.put_now(e("files/a", "alice", now + 60));
        store.put_now(e("files/b", "bob", now + 60));
        store.put_now(e("files/old", "alice", now - 1));
        assert_eq!(store.get_now("files/a").unwrap().key_id, "k1");
        assert!(store.get_now("files/old").is_none());
        assert_eq!(store.list_now("files/", Some("alice")).len(), 1);
        assert_eq!(store.list_now("files/", None).len(), 2);
        store.remove_now("files/a");
        assert!(store.get_now("files/a").is_none());
        drop(store);
        let _ = std::fs::remove_file(&dir);
    }
}
