//! [`AdminSqliteStore`]: the admin store in a SQLite file (feature `sqlite`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use serde_json::Value;

use super::{AdminState, AdminStore, KeyRecord, StoreFuture, TokenRecord, unix_seconds};
use crate::Error;
use crate::secret::ApiKey;
use crate::secret::TokenDigest;

/// How long a statement waits for another connection's write lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admin_keys (
    id TEXT PRIMARY KEY,
    key TEXT,
    removed INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_tokens (
    digest TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    admin INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    account TEXT
);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    time_ms INTEGER NOT NULL,
    request_id TEXT,
    client_id TEXT,
    client_name TEXT,
    key_id TEXT,
    model TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    prompt_tokens INTEGER,
    output_tokens INTEGER,
    thought_tokens INTEGER,
    cached_tokens INTEGER,
    total_tokens INTEGER,
    resumes INTEGER NOT NULL,
    upstream_attempts INTEGER NOT NULL,
    key_retries INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    request_body TEXT,
    model_version TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time_ms);
";

/// Opens (creating with mode 0600 when missing) the database at `path` and its tables.
pub(crate) fn open(path: &Path) -> Result<Connection, Error> {
    create_private(path)?;
    let conn = Connection::open(path).map_err(Error::store)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(Error::store)?;
    // WAL: readers (backups, the request log's cleanup) never wait for the writer.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(Error::store)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(Error::store)?;
    conn.execute_batch(SCHEMA).map_err(Error::store)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Columns added after a release, with their types: a file made by an older version gains
/// them (SQLite has no `ADD COLUMN IF NOT EXISTS`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("requests", "model_version", "TEXT"),
    ("admin_tokens", "account", "TEXT"),
];

fn migrate(conn: &Connection) -> Result<(), Error> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |row| row.get(0),
            )
            .map_err(Error::store)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(Error::store)?;
        }
    }
    Ok(())
}

/// Creates an empty file readable by its owner only, unless it exists. SQLite gives its
/// `-wal` and `-shm` files the same mode.
pub(crate) fn create_private(path: &Path) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::store(format!(
            "cannot create `{}`: {e}",
            path.display()
        ))),
    }
}

/// Copies the database `conn` is on into `dest` (created 0600, replaced if present) with
/// SQLite's online backup, which gives a consistent snapshot while others keep writing.
/// Returns the copy's size in bytes.
pub(crate) fn backup(conn: &Connection, dest: &Path) -> Result<u64, Error> {
    match std::fs::remove_file(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::store(e)),
    }
    create_private(dest)?;
    conn.backup(rusqlite::MAIN_DB, dest, None)
        .map_err(Error::store)?;
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(Error::store)
}

/// `{db}.backup-YYYYMMDDTHHMMSSZ`, next to the database.
pub(crate) fn backup_path(db: &Path, at: SystemTime) -> PathBuf {
    let secs = unix_seconds(at);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let stamp = format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".backup-{stamp}"));
    db.with_file_name(name)
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// === AdminSqliteStore ===

/// An [`AdminStore`] in a SQLite file (feature `sqlite`).
///
/// The file is created with mode 0600 (owner only): it holds the upstream keys added at run
/// time, in clear, because the gateway needs them after a restart. Client tokens are stored as
/// SHA-256 digests only. Tables: `admin_keys`, `admin_tokens`, `settings` (and `requests`, for
/// a [`RequestLog`](super::RequestLog) on the same file). Calls run on tokio's blocking pool.
#[derive(Clone)]
pub struct AdminSqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl AdminSqliteStore {
    /// Opens the database at `path`, creating the file (mode 0600) and its tables as needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        Ok(Self {
            conn: Arc::new(Mutex::new(open(path)?)),
            path: Arc::from(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes a consistent online backup into `dest` (mode 0600); returns its size in bytes.
    pub async fn backup_to(&self, dest: impl AsRef<Path>) -> Result<u64, Error> {
        let dest = dest.as_ref().to_owned();
        self.blocking(move |conn| backup(conn, &dest)).await
    }

    /// Makes a consistent online backup next to the database, named
    /// `{file}.backup-YYYYMMDDTHHMMSSZ` (UTC); returns its path and size in bytes.
    pub async fn backup(&self) -> Result<(PathBuf, u64), Error> {
        let dest = backup_path(&self.path, SystemTime::now());
        let size = self.backup_to(&dest).await?;
        Ok((dest, size))
    }

    fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&Self::lock(&conn)))
            .await
            .map_err(Error::store)?
    }

    fn execute<P>(&self, sql: &'static str, params: P) -> StoreFuture<'_, ()>
    where
        P: rusqlite::Params + Send + 'static,
    {
        Box::pin(
            self.blocking(move |conn| conn.execute(sql, params).map(drop).map_err(Error::store)),
        )
    }
}

impl fmt::Debug for AdminSqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn load(conn: &Connection) -> Result<AdminState, Error> {
    let mut state = AdminState::default();
    let mut stmt = conn
        .prepare("SELECT id, key, removed FROM admin_keys ORDER BY id")
        .map_err(Error::store)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })
        .map_err(Error::store)?;
    for row in rows {
        match row.map_err(Error::store)? {
            (id, Some(key), false) => state.keys.push(KeyRecord {
                id,
                key: ApiKey::new(key),
            }),
            (id, _, _) => state.removed_keys.push(id),
        }
    }
    let mut stmt = conn
        .prepare("SELECT digest, id, name, admin, revoked, account FROM admin_tokens ORDER BY id")
        .map_err(Error::store)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .map_err(Error::store)?;
    for row in rows {
        let (digest, id, name, admin, revoked, account) = row.map_err(Error::store)?;
        let Some(digest) = TokenDigest::from_hex(&digest) else {
            tracing::warn!(token = %id, "admin_tokens: skipping a row with a malformed digest");
            continue;
        };
        let account = match account.as_deref().map(serde_json::from_str) {
            None => crate::facts::Account::default(),
            Some(Ok(a)) => a,
            Some(Err(_)) => {
                tracing::warn!(token = %id, "admin_tokens: unreadable account settings ignored");
                crate::facts::Account::default()
            }
        };
        let record = TokenRecord {
            id,
            name,
            admin,
            digest,
            account,
        };
        if revoked {
            state.revoked_tokens.push(record);
        } else {
            state.tokens.push(record);
        }
    }
    let mut stmt = conn
        .prepare("SELECT name, value FROM settings ORDER BY name")
        .map_err(Error::store)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(Error::store)?;
    for row in rows {
        let (name, value) = row.map_err(Error::store)?;
        match serde_json::from_str(&value) {
            Ok(v) => {
                state.settings.insert(name, v);
            }
            Err(e) => tracing::warn!(setting = %name, error = %e, "settings: skipping bad JSON"),
        }
    }
    Ok(state)
}

fn now() -> i64 {
    unix_seconds(SystemTime::now())
}

impl AdminStore for AdminSqliteStore {
    fn load(&self) -> StoreFuture<'_, AdminState> {
        Box::pin(self.blocking(load))
    }

    fn put_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()> {
        self.execute(
            "INSERT INTO admin_keys (id, key, removed, updated_at) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (id) DO UPDATE SET key = ?2, removed = 0, updated_at = ?3",
            (key.id.clone(), key.key.expose().to_owned(), now()),
        )
    }

    fn remove_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.execute(
            "INSERT INTO admin_keys (id, key, removed, updated_at) VALUES (?1, NULL, 1, ?2)
             ON CONFLICT (id) DO UPDATE SET key = NULL, removed = 1, updated_at = ?2",
            (id.to_owned(), now()),
        )
    }

    fn put_token<'a>(&'a self, t: &'a TokenRecord) -> StoreFuture<'a, ()> {
        self.execute(
            "INSERT INTO admin_tokens (digest, id, name, admin, revoked, updated_at, account)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)
             ON CONFLICT (digest) DO UPDATE SET id = ?2, name = ?3, admin = ?4, revoked = 0,
                 updated_at = ?5, account = ?6",
            (
                t.digest.to_hex(),
                t.id.clone(),
                t.name.clone(),
                t.admin,
                now(),
                account_json(&t.account),
            ),
        )
    }

    fn revoke_token<'a>(&'a self, t: &'a TokenRecord) -> StoreFuture<'a, ()> {
        self.execute(
            "INSERT INTO admin_tokens (digest, id, name, admin, revoked, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)
             ON CONFLICT (digest) DO UPDATE SET revoked = 1, updated_at = ?5",
            (
                t.digest.to_hex(),
                t.id.clone(),
                t.name.clone(),
                t.admin,
                now(),
            ),
        )
    }

    fn put_setting<'a>(&'a self, name: &'a str, value: &'a Value) -> StoreFuture<'a, ()> {
        self.execute(
            "INSERT INTO settings (name, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET value = ?2, updated_at = ?3",
            (name.to_owned(), value.to_string(), now()),
        )
    }

    fn delete_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        self.execute("DELETE FROM settings WHERE name = ?1", (name.to_owned(),))
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

/// A token's account settings as stored (`NULL` when it has none).
fn account_json(a: &crate::facts::Account) -> Option<String> {
    (!a.is_empty()).then(|| serde_json::to_string(a).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_carry_a_utc_stamp() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = backup_path(Path::new("/data/gateway.db"), at);
        assert_eq!(p, Path::new("/data/gateway.db.backup-20231114T221320Z"));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
