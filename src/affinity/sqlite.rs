//! [`AffinitySqliteStore`]: resource pins in a SQLite file, shared by the instances of one
//! host and kept across restarts.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::store::{AffinityStore, Pinned};
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

impl AffinityStore for AffinitySqliteStore {
    fn get(&self, name: &str) -> Option<Pinned> {
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

    fn put(&self, e: Pinned) {
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

    fn remove(&self, name: &str) {
        let _ = self
            .conn()
            .execute("DELETE FROM resource_pins WHERE name = ?1", params![name])
            .map_err(warn);
    }

    fn list(&self, prefix: &str, owner: Option<&str>) -> Vec<Pinned> {
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
        store.put(e("files/a", "alice", now + 60));
        store.put(e("files/b", "bob", now + 60));
        store.put(e("files/old", "alice", now - 1));
        assert_eq!(store.get("files/a").unwrap().key_id, "k1");
        assert!(store.get("files/old").is_none());
        assert_eq!(store.list("files/", Some("alice")).len(), 1);
        assert_eq!(store.list("files/", None).len(), 2);
        store.remove("files/a");
        assert!(store.get("files/a").is_none());
        drop(store);
        let _ = std::fs::remove_file(&dir);
    }
}
