//! [`RequestLog`]: one SQLite row per request, written in batches off the request path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

use super::sqlite;
use crate::Error;
use crate::usage::{UsageRecord, UsageSink};

/// A [`UsageSink`] that keeps one row per request in the `requests` table of a SQLite file
/// (feature `sqlite`).
///
/// A row holds the time, request id, client (name and masked id), key id (a fingerprint),
/// model (and the `modelVersion` that served), route, status, latency, prompt/output/thought/cached/total tokens, resumes, upstream
/// attempts and key retries, and for an error answer its message
/// ([`UsageRecord::error`](crate::usage::UsageRecord::error), keys masked). It holds no secret
/// and no prompt unless
/// [`RequestLogBuilder::log_bodies`] is on (then the start of the request body kept by
/// [`UsageLayer::request_bodies`](crate::usage::UsageLayer::request_bodies)).
///
/// `record` only queues the row (a bounded queue, never waiting): a writer thread inserts
/// rows in batches, one transaction each. When the queue is full (a slow or locked disk) rows
/// are dropped and counted ([`RequestLogStats::dropped`]); a batch the database refuses is
/// counted in [`RequestLogStats::failed`]. Requests are never slowed or failed by the log.
/// The same thread removes rows older than the retention period, at start and then
/// periodically.
///
/// [`RequestLog::query`] reads the rows back, newest first, filtered (status, model, key,
/// account), on a read-only connection of its own.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use tower_gemini::persist::RequestLog;
/// use tower_gemini::usage::{UsageLayer, UsageStats};
///
/// let log = RequestLog::builder("gateway.db")
///     .retention(Some(Duration::from_secs(30 * 24 * 3600)))
///     .open()?;
/// let usage = UsageLayer::new(UsageStats::new()).sink(log.clone());
/// # Ok::<_, tower_gemini::Error>(())
/// ```
#[derive(Clone)]
pub struct RequestLog {
    tx: SyncSender<Row>,
    counters: Arc<Counters>,
    path: Arc<Path>,
    log_bodies: bool,
    /// The read-only connection of [`RequestLog::query`], opened on first use.
    reader: Arc<Mutex<Option<Connection>>>,
}

/// Counters of a [`RequestLog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestLogStats {
    /// Rows written.
    pub written: u64,
    /// Rows dropped because the queue was full.
    pub dropped: u64,
    /// Rows lost because the database refused their batch.
    pub failed: u64,
    /// Rows removed by the retention cleanup.
    pub removed: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    removed: AtomicU64,
}

/// Builds a [`RequestLog`].
#[derive(Clone, Debug)]
pub struct RequestLogBuilder {
    path: PathBuf,
    queue: usize,
    batch: usize,
    flush_interval: Duration,
    retention: Option<Duration>,
    cleanup_interval: Duration,
    log_bodies: bool,
}

impl RequestLogBuilder {
    /// Rows waiting to be written before new ones are dropped. Default: 10 000.
    pub fn queue(mut self, rows: usize) -> Self {
        self.queue = rows;
        self
    }

    /// Rows written per transaction at most. Default: 500.
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows;
        self
    }

    /// How long a row may wait for others to share its transaction. Default: 500 ms.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// Rows older than this are removed (`None`: kept forever). Default: 30 days.
    pub fn retention(mut self, keep: Option<Duration>) -> Self {
        self.retention = keep;
        self
    }

    /// How often the retention cleanup runs. Default: one hour.
    pub fn cleanup_interval(mut self, every: Duration) -> Self {
        self.cleanup_interval = every;
        self
    }

    /// Also keep the start of each request body (prompts!). Default: off.
    pub fn log_bodies(mut self, on: bool) -> Self {
        self.log_bodies = on;
        self
    }

    /// Opens the database (creating it with mode 0600) and starts the writer thread.
    pub fn open(self) -> Result<RequestLog, Error> {
        if self.queue == 0 || self.batch == 0 {
            return Err(Error::config(
                "request log: queue and batch must be at least 1",
            ));
        }
        if self.cleanup_interval.is_zero() {
            return Err(Error::config(
                "request log: the cleanup interval must not be 0",
            ));
        }
        let conn = sqlite::open(&self.path)?;
        prepare(&conn)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(self.queue);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            conn,
            rx,
            counters: counters.clone(),
            batch: self.batch,
            flush_interval: self.flush_interval,
            retention: self.retention,
            cleanup_interval: self.cleanup_interval,
        };
        std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || writer.run())
            .map_err(Error::store)?;
        Ok(RequestLog {
            tx,
            counters,
            path: Arc::from(self.path.as_path()),
            log_bodies: self.log_bodies,
            reader: Arc::default(),
        })
    }
}

// === RequestLog ===

impl RequestLog {
    /// A builder for a log in the SQLite file at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> RequestLogBuilder {
        RequestLogBuilder {
            path: path.into(),
            queue: 10_000,
            batch: 500,
            flush_interval: Duration::from_millis(500),
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            cleanup_interval: Duration::from_secs(3600),
            log_bodies: false,
        }
    }

    /// A log at `path` with the default settings.
    pub fn open(path: impl Into<PathBuf>) -> Result<RequestLog, Error> {
        Self::builder(path).open()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows written, dropped, failed and removed so far.
    pub fn stats(&self) -> RequestLogStats {
        let c = &self.counters;
        RequestLogStats {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
        }
    }

    /// Removes rows older than `age` now, on a connection of its own (blocking: call it from a
    /// blocking context). Returns how many. The writer thread does this periodically.
    pub fn remove_older_than(&self, age: Duration) -> Result<u64, Error> {
        let conn = sqlite::open(&self.path)?;
        let n = remove_older_than(&conn, age)?;
        self.counters.removed.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
    /// The rows `query` asks for, newest first, never a request body (blocking: call it from
    /// a blocking context, e.g. `tokio::task::spawn_blocking`). Reads on a read-only
    /// connection of its own, so it never waits for the writer (the file is in WAL mode).
    /// Rows reach the table up to the flush interval (500 ms) after their request ended.
    pub fn query(&self, query: &RequestQuery) -> Result<Vec<LoggedRequest>, Error> {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if reader.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(Error::store)?;
            conn.busy_timeout(sqlite::BUSY_TIMEOUT)
                .map_err(Error::store)?;
            *reader = Some(conn);
        }
        let result = reader.as_ref().map_or(Ok(Vec::new()), |c| select(c, query));
        if result.is_err() {
            *reader = None; // opened again by the next query
        }
        result
    }
}

// === Reading the log ===

/// Which statuses [`RequestQuery::status`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// This status exactly (`429`).
    Exact(u16),
    /// A class: `Class(4)` is every 4xx.
    Class(u16),
}

impl StatusFilter {
    /// `429` (an exact status, 100 to 599) or `4xx` (a class, `1xx` to `5xx`); `None` for
    /// anything else.
    pub fn parse(text: &str) -> Option<StatusFilter> {
        let text = text.trim();
        if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            let c: u16 = class.parse().ok()?;
            return (class.len() == 1 && (1..=5).contains(&c)).then_some(StatusFilter::Class(c));
        }
        let n: u16 = text.parse().ok()?;
        (text.len() == 3 && (100..=599).contains(&n)).then_some(StatusFilter::Exact(n))
    }
}

/// Which errors [`RequestQuery::errors`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorFilter {
    /// Every answer with a status of 400 or more.
    Any,
    /// Those upstream trouble causes: 5xx, and 429 not sent by the gateway's own rate limits
    /// (as [`Point::upstream_errors`](crate::usage::Point::upstream_errors) counts them).
    Upstream,
}

/// What [`RequestLog::query`] reads: the newest `limit` rows (default 100, at most
/// [`RequestQuery::MAX_LIMIT`]) older than `before`, matching every filter given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestQuery {
    limit: usize,
    before: Option<i64>,
    status: Option<StatusFilter>,
    errors: Option<ErrorFilter>,
    model: Option<String>,
    key_id: Option<String>,
    account: Option<String>,
}

impl Default for RequestQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestQuery {
    /// The most rows one query returns.
    pub const MAX_LIMIT: usize = 1000;

    /// The newest 100 rows.
    pub fn new() -> Self {
        Self {
            limit: 100,
            before: None,
            status: None,
            errors: None,
            model: None,
            key_id: None,
            account: None,
        }
    }

    /// At most `n` rows (1 to [`MAX_LIMIT`](Self::MAX_LIMIT); clamped).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n.clamp(1, Self::MAX_LIMIT);
        self
    }

    /// Only rows older than the row with this [`LoggedRequest::id`] (the next page).
    pub fn before(mut self, id: i64) -> Self {
        self.before = Some(id);
        self
    }

    /// Only rows with this status (or status class).
    pub fn status(mut self, status: StatusFilter) -> Self {
        self.status = Some(status);
        self
    }

    /// Only error answers (all, or those upstream trouble causes).
    pub fn errors(mut self, errors: ErrorFilter) -> Self {
        self.errors = Some(errors);
        self
    }

    /// Only rows for this model (as logged: without `models/`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Only rows served by the key with this id (a fingerprint).
    pub fn key(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Only rows of this account: the client's id (the token's id, never the token).
    pub fn account(mut self, client_id: impl Into<String>) -> Self {
        self.account = Some(client_id.into());
        self
    }
}

/// One row of the request log, as [`RequestLog::query`] reads it (never the request body).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedRequest {
    /// The row's id: larger is newer; [`RequestQuery::before`] pages with it.
    pub id: i64,
    /// When the request started, in Unix milliseconds.
    pub time_ms: i64,
    /// Its `x-request-id`.
    pub request_id: Option<String>,
    /// The client's id (the token's id, never the token) and name.
    pub client_id: Option<String>,
    /// See [`client_id`](Self::client_id).
    pub client_name: Option<String>,
    /// The id (a fingerprint) of the key that answered.
    pub key_id: Option<String>,
    /// The model asked for.
    pub model: String,
    /// The `modelVersion` that served.
    pub model_version: Option<String>,
    /// The route (`generateContent`, `openai.chat.completions`, ...).
    pub route: String,
    /// The status sent to the client.
    pub status: u16,
    /// Whether the answer was a stream.
    pub stream: bool,
    /// Time to the response head.
    pub latency_ms: i64,
    /// Time to the end of the body.
    pub duration_ms: i64,
    /// Token counts, when the answer carried them.
    pub tokens: Option<crate::usage::Tokens>,
    /// Stream resumes.
    pub resumes: u32,
    /// Upstream calls made.
    pub upstream_attempts: u32,
    /// Retries on another key.
    pub key_retries: u32,
    /// Whether the gateway's rate limits refused it.
    pub rate_limited: bool,
    /// False when the body ended early.
    pub completed: bool,
    /// The error answer's message (keys masked).
    pub error: Option<String>,
}

impl LoggedRequest {
    /// `{"id", "time_ms", "request_id", "route", "model", "model_version", "status", "stream",
    /// "key_id", "account": {"id", "name"} | null, "latency_ms", "duration_ms",
    /// "tokens": {"prompt", "output", "thoughts", "cached", "total"} | null, "resumes",
    /// "upstream_attempts", "key_retries", "rate_limited", "completed", "error"}`.
    pub fn to_json(&self) -> Value {
        let account = match (&self.client_id, &self.client_name) {
            (None, None) => Value::Null,
            (id, name) => json!({ "id": id, "name": name }),
        };
        let tokens = self.tokens.map(|t| {
            json!({
                "prompt": t.prompt,
                "output": t.output,
                "thoughts": t.thoughts,
                "cached": t.cached,
                "total": t.total,
            })
        });
        json!({
            "id": self.id,
            "time_ms": self.time_ms,
            "request_id": self.request_id,
            "route": self.route,
            "model": self.model,
            "model_version": self.model_version,
            "status": self.status,
            "stream": self.stream,
            "key_id": self.key_id,
            "account": account,
            "latency_ms": self.latency_ms,
            "duration_ms": self.duration_ms,
            "tokens": tokens,
            "resumes": self.resumes,
            "upstream_attempts": self.upstream_attempts,
            "key_retries": self.key_retries,
            "rate_limited": self.rate_limited,
            "completed": self.completed,
            "error": self.error,
        })
    }
}

fn select(conn: &Connection, q: &RequestQuery) -> Result<Vec<LoggedRequest>, Error> {
    use rusqlite::types::Value as Sql;
    let mut sql = String::from(
        "SELECT rowid, time_ms, request_id, client_id, client_name, key_id, model,
             model_version, route, status, stream, latency_ms, duration_ms, prompt_tokens,
             output_tokens, thought_tokens, cached_tokens, total_tokens, resumes,
             upstream_attempts, key_retries, rate_limited, completed, error
         FROM requests WHERE 1 = 1",
    );
    let mut args: Vec<Sql> = Vec::new();
    if let Some(before) = q.before {
        sql.push_str(" AND rowid < ?");
        args.push(Sql::Integer(before));
    }
    match q.status {
        Some(StatusFilter::Exact(n)) => {
            sql.push_str(" AND status = ?");
            args.push(Sql::Integer(i64::from(n)));
        }
        Some(StatusFilter::Class(c)) => {
            sql.push_str(" AND status >= ? AND status < ?");
            args.push(Sql::Integer(i64::from(c) * 100));
            args.push(Sql::Integer(i64::from(c) * 100 + 100));
        }
        None => {}
    }
    match q.errors {
        Some(ErrorFilter::Any) => sql.push_str(" AND status >= 400"),
        Some(ErrorFilter::Upstream) => {
            sql.push_str(" AND (status >= 500 OR (status = 429 AND rate_limited = 0))");
        }
        None => {}
    }
    for (column, value) in [
        ("model", &q.model),
        ("key_id", &q.key_id),
        ("client_id", &q.account),
    ] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            args.push(Sql::Text(v.clone()));
        }
    }
    sql.push_str(" ORDER BY rowid DESC LIMIT ?");
    args.push(Sql::Integer(i64::try_from(q.limit).unwrap_or(100)));
    let mut stmt = conn.prepare(&sql).map_err(Error::store)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |row| {
            let count = |i: usize| -> rusqlite::Result<Option<u64>> {
                Ok(row
                    .get::<_, Option<i64>>(i)?
                    .map(|n| u64::try_from(n).unwrap_or(0)))
            };
            let total = count(17)?;
            let tokens = total.map(|total| -> rusqlite::Result<crate::usage::Tokens> {
                Ok(crate::usage::Tokens {
                    prompt: count(13)?.unwrap_or(0),
                    output: count(14)?.unwrap_or(0),
                    thoughts: count(15)?.unwrap_or(0),
                    cached: count(16)?.unwrap_or(0),
                    total,
                })
            });
            Ok(LoggedRequest {
                id: row.get(0)?,
                time_ms: row.get(1)?,
                request_id: row.get(2)?,
                client_id: row.get(3)?,
                client_name: row.get(4)?,
                key_id: row.get(5)?,
                model: row.get(6)?,
                model_version: row.get(7)?,
                route: row.get(8)?,
                status: row.get(9)?,
                stream: row.get(10)?,
                latency_ms: row.get(11)?,
                duration_ms: row.get(12)?,
                tokens: tokens.transpose()?,
                resumes: row.get(18)?,
                upstream_attempts: row.get(19)?,
                key_retries: row.get(20)?,
                rate_limited: row.get(21)?,
                completed: row.get(22)?,
                error: row.get(23)?,
            })
        })
        .map_err(Error::store)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(Error::store)
}

impl fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLog")
            .field("path", &self.path)
            .field("log_bodies", &self.log_bodies)
            .field("stats", &self.stats())
            .finish()
    }
}

impl UsageSink for RequestLog {
    fn record(&self, record: &UsageRecord) {
        let row = Row::new(record, self.log_bodies);
        match self.tx.try_send(row) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let before = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() || before == 0 {
                    tracing::warn!(
                        dropped = before + 1,
                        "request log: queue full, rows dropped (the database is slow or locked)"
                    );
                }
            }
        }
    }
}

/// The request log's own additions to the `requests` table: the `error` column, and the
/// indexes [`RequestLog::query`]'s filters use (built once, when a log made before them is
/// opened).
fn prepare(conn: &Connection) -> Result<(), Error> {
    let present: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('requests') WHERE name = 'error'",
            [],
            |row| row.get(0),
        )
        .map_err(Error::store)?;
    if !present {
        conn.execute_batch("ALTER TABLE requests ADD COLUMN error TEXT")
            .map_err(Error::store)?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS requests_status ON requests (status);
         CREATE INDEX IF NOT EXISTS requests_model ON requests (model);
         CREATE INDEX IF NOT EXISTS requests_key ON requests (key_id);
         CREATE INDEX IF NOT EXISTS requests_client ON requests (client_id);",
    )
    .map_err(Error::store)
}

fn remove_older_than(conn: &Connection, age: Duration) -> Result<u64, Error> {
    let cutoff = unix_ms(SystemTime::now())
        .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    conn.execute("DELETE FROM requests WHERE time_ms < ?1", params![cutoff])
        .map(|n| n as u64)
        .map_err(Error::store)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// === Row ===

/// One request, as it goes into the table.
struct Row {
    time_ms: i64,
    request_id: Option<String>,
    client_id: Option<String>,
    client_name: Option<String>,
    key_id: Option<String>,
    model: String,
    model_version: Option<String>,
    route: String,
    status: u16,
    stream: bool,
    latency_ms: i64,
    duration_ms: i64,
    tokens: Option<crate::usage::Tokens>,
    resumes: u32,
    upstream_attempts: u32,
    key_retries: u32,
    rate_limited: bool,
    completed: bool,
    request_body: Option<String>,
    error: Option<String>,
}

impl Row {
    fn new(r: &UsageRecord, log_bodies: bool) -> Row {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        // The request started `duration` before it was recorded.
        let started = SystemTime::now()
            .checked_sub(r.duration)
            .unwrap_or_else(SystemTime::now);
        Row {
            time_ms: unix_ms(started),
            request_id: r.request_id.clone(),
            client_id: r.client.as_ref().map(|c| c.id.clone()),
            client_name: r.client.as_ref().map(|c| c.name.clone()),
            key_id: r.key_id.clone(),
            model: r.model.clone(),
            model_version: r.model_version.clone(),
            route: r.route.clone(),
            status: r.status,
            stream: r.stream,
            latency_ms: ms(r.latency),
            duration_ms: ms(r.duration),
            tokens: r.tokens,
            resumes: r.resumes,
            upstream_attempts: r.upstream_attempts,
            key_retries: r
                .upstream_attempts
                .saturating_sub(1)
                .saturating_sub(r.resumes),
            rate_limited: r.rate_limited,
            completed: r.completed,
            request_body: r
                .request_body
                .as_ref()
                .filter(|_| log_bodies)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            error: r.error.clone(),
        }
    }
}

// === Writer ===

struct Writer {
    conn: Connection,
    rx: Receiver<Row>,
    counters: Arc<Counters>,
    batch: usize,
    flush_interval: Duration,
    retention: Option<Duration>,
    cleanup_interval: Duration,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Row> = Vec::with_capacity(self.batch);
        // `None`: no cleanup is ever due (no retention, or an interval past the end of time).
        let mut next_cleanup = self.retention.map(|_| Instant::now());
        loop {
            if let (Some(keep), Some(due)) = (self.retention, next_cleanup) {
                if Instant::now() >= due {
                    self.cleanup(keep);
                    next_cleanup = Instant::now().checked_add(self.cleanup_interval);
                }
            }
            let wait = match next_cleanup {
                Some(due) => due.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            match self.rx.recv_timeout(wait) {
                Ok(row) => batch.push(row),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Let a few more rows join this transaction.
            let started = Instant::now();
            let mut open = true;
            while batch.len() < self.batch {
                match self
                    .rx
                    .recv_timeout(self.flush_interval.saturating_sub(started.elapsed()))
                {
                    Ok(row) => batch.push(row),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.write(&mut batch);
            if !open {
                return;
            }
        }
    }

    fn cleanup(&self, keep: Duration) {
        match remove_older_than(&self.conn, keep) {
            Ok(0) => {}
            Ok(n) => {
                self.counters.removed.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(rows = n, "request log: old rows removed");
            }
            Err(e) => tracing::warn!(error = %e, "request log: retention cleanup failed"),
        }
    }

    fn write(&mut self, batch: &mut Vec<Row>) {
        let n = batch.len() as u64;
        match insert(&mut self.conn, batch) {
            Ok(()) => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, rows = n, "request log: a batch could not be written");
            }
        }
        batch.clear();
    }
}

fn insert(conn: &mut Connection, batch: &[Row]) -> Result<(), Error> {
    let tx = conn.transaction().map_err(Error::store)?;
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO requests (time_ms, request_id, client_id, client_name, key_id,
                     model, route, status, stream, latency_ms, duration_ms, prompt_tokens,
                     output_tokens, thought_tokens, cached_tokens, total_tokens, resumes,
                     upstream_attempts, key_retries, rate_limited, completed, request_body,
                     model_version, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
            )
            .map_err(Error::store)?;
        for r in batch {
            let t = |f: fn(&crate::usage::Tokens) -> u64| {
                r.tokens
                    .as_ref()
                    .map(|tokens| i64::try_from(f(tokens)).unwrap_or(i64::MAX))
            };
            stmt.execute(params![
                r.time_ms,
                r.request_id,
                r.client_id,
                r.client_name,
                r.key_id,
                r.model,
                r.route,
                r.status,
                r.stream,
                r.latency_ms,
                r.duration_ms,
                t(|t| t.prompt),
                t(|t| t.output),
                t(|t| t.thoughts),
                t(|t| t.cached),
                t(|t| t.total),
                r.resumes,
                r.upstream_attempts,
                r.key_retries,
                r.rate_limited,
                r.completed,
                r.request_body,
                r.model_version,
                r.error,
            ])
            .map_err(Error::store)?;
        }
    }
    tx.commit().map_err(Error::store)
}
