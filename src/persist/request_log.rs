//! [`RequestLog`]: one SQLite row per request, written in batches off the request path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use super::sqlite;
use crate::Error;
use crate::usage::{UsageRecord, UsageSink};

/// A [`UsageSink`] that keeps one row per request in the `requests` table of a SQLite file
/// (feature `sqlite`).
///
/// A row holds the time, request id, client (name and masked id), key id (a fingerprint),
/// model (and the `modelVersion` that served), route, status, latency, prompt/output/thought/cached/total tokens, resumes, upstream
/// attempts and key retries. It holds no secret and no prompt unless
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
                     model_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
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
            ])
            .map_err(Error::store)?;
        }
    }
    tx.commit().map_err(Error::store)
}
