//! Operating full_proxy: usage accounting (`/admin/stats`), Prometheus metrics (`/metrics`),
//! the status page (`/status`) and log files (`LOG_DIR`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};
use serde_json::{Value, json};
use tower_gemini::key_rotation::KeyPool;
use tower_gemini::usage::{MetricsSink, UsageLayer, UsageSeries, UsageStats};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

use super::admin::admin_only;
use super::app::Shared;
use super::config;
use super::server::ServerStats;

/// The log file's name in `LOG_DIR`; rotated files are `gateway.log.1`, `gateway.log.2`, ...
pub const LOG_FILE: &str = "gateway.log";

/// How often log files are rolled over by time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogRotation {
    Hourly,
    Daily,
}

/// The operations settings: log files.
#[derive(Clone, Debug)]
pub struct OpsConfig {
    /// `LOG_DIR`: also write logs to files there.
    pub log_dir: Option<PathBuf>,
    /// `LOG_ROTATION`: `hourly` or `daily` (default).
    pub log_rotation: LogRotation,
    /// `MAX_LOG_SIZE`: bytes after which the file rolls over (0: no size limit).
    pub max_log_size: u64,
    /// `MAX_LOG_BACKUPS`: rolled-over files kept.
    pub max_log_backups: usize,
    /// `LOG_RETENTION_DAYS`: rolled-over files older than this are removed (0: never).
    pub log_retention_days: u64,
}

/// The most log backups `MAX_LOG_BACKUPS` may ask for.
pub const MAX_LOG_BACKUPS: u64 = 1000;

impl OpsConfig {
    /// Reads the settings from the variables.
    pub fn from_map(env: &HashMap<String, String>) -> Result<OpsConfig, String> {
        let get = |name: &str| config::env_value(env, name);
        let number = |name: &str, default: u64| config::number(env, name, default).map_err(|e| e.0);
        let log_rotation = match get("LOG_ROTATION").map(str::to_ascii_lowercase).as_deref() {
            None | Some("daily") => LogRotation::Daily,
            Some("hourly") => LogRotation::Hourly,
            Some(other) => {
                return Err(format!(
                    "LOG_ROTATION: `{other}` is not `hourly` or `daily`"
                ));
            }
        };
        // Each roll-over renames every backup slot in turn: a huge count would stall the log
        // writer for good at its first roll-over.
        let max_log_backups = number("MAX_LOG_BACKUPS", 10)?;
        if max_log_backups > MAX_LOG_BACKUPS {
            return Err(format!(
                "MAX_LOG_BACKUPS: `{max_log_backups}` is more than {MAX_LOG_BACKUPS}"
            ));
        }
        Ok(OpsConfig {
            log_dir: get("LOG_DIR").map(PathBuf::from),
            log_rotation,
            max_log_size: number("MAX_LOG_SIZE", 100 * 1024 * 1024)?,
            max_log_backups: usize::try_from(max_log_backups)
                .map_err(|_| "MAX_LOG_BACKUPS: too large".to_owned())?,
            log_retention_days: number("LOG_RETENTION_DAYS", 30)?,
        })
    }
}

// === Usage, metrics, status ===

/// Usage statistics, metrics and what `/status` reports, shared by the routes.
#[derive(Clone)]
pub struct Ops {
    pub stats: Arc<UsageStats>,
    /// Requests, errors and tokens over time, for `/admin/timeseries`.
    pub series: Arc<UsageSeries>,
    pub metrics: Arc<MetricsSink>,
    pub usage: UsageLayer,
    pub pool: Arc<KeyPool>,
    pub server: Arc<ServerStats>,
    pub started: Instant,
    /// The admin store and request log (for `/status` and `/metrics`).
    pub persist: Option<super::persist::Persist>,
    /// The follower of the shared admin state (for `/status` and `/metrics`).
    pub fleet: Option<Arc<super::fleet::Fleet>>,
    /// Where token budgets are counted (for `/admin/stats` and `/admin/tokens`).
    pub budgets: Option<Arc<dyn tower_gemini::accounts::BudgetStore>>,
}

impl Ops {
    pub fn new(pool: Arc<KeyPool>, server: Arc<ServerStats>) -> Ops {
        let stats = Arc::new(UsageStats::new());
        let metrics = Arc::new(MetricsSink::prometheus());
        let series = Arc::new(UsageSeries::new());
        let usage = UsageLayer::new(stats.clone())
            .sink(metrics.clone())
            .sink(series.clone());
        Ops {
            stats,
            series,
            metrics,
            usage,
            pool,
            server,
            started: Instant::now(),
            persist: None,
            fleet: None,
            budgets: None,
        }
    }
}

/// `GET /metrics` (no credential) and `GET /status` (admin token).
pub fn routes(shared: Shared, ops: Ops) -> Router {
    let status = Router::new()
        .route("/status", get(status))
        .route_layer(axum::middleware::from_fn_with_state(shared, admin_only))
        .with_state(ops.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(ops)
        .merge(status)
}

/// `GET /admin/stats` (admin token), merged into the `/admin` router.
pub fn admin_routes(shared: Shared, ops: Ops) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route_layer(axum::middleware::from_fn_with_state(shared, admin_only))
        .with_state(ops)
}

async fn metrics(State(ops): State<Ops>) -> Response {
    ops.metrics.set_in_flight(ops.usage.in_flight());
    ops.metrics.set_key_states(&ops.pool);
    let mut text = ops.metrics.render().unwrap_or_default();
    if let Some(p) = &ops.persist {
        text.push_str(&p.metrics());
    }
    if let Some(f) = &ops.fleet {
        text.push_str(&f.metrics());
    }
    text.push_str(&format!(
        "# HELP gemini_gateway_key_state_writes_dropped_total Key state changes not sent to the shared store because its queue was full (the whole state is resent once it keeps up).\n\
         # TYPE gemini_gateway_key_state_writes_dropped_total counter\n\
         gemini_gateway_key_state_writes_dropped_total {}\n",
        ops.pool.store_writes_dropped()
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn stats(State(ops): State<Ops>) -> Response {
    let mut stats = ops.stats.to_json();
    // Other Gemini proxies' shape, `usage_stats[<model>].{minute,hour,day}.{requests,tokens}`:
    // the same per-model numbers under the name their dashboards read.
    if let Some(o) = stats.as_object_mut() {
        let models = o.get("models").cloned().unwrap_or_else(|| json!({}));
        o.insert("usage_stats".to_owned(), models);
        // Rolling windows are kept in memory: what this instance served. A fleet's totals
        // are the sum of every instance's `/metrics` (docs/scaling.md).
        let shared = ops
            .fleet
            .as_ref()
            .is_some_and(|f| f.status()["shared"] == true);
        o.insert("scope".to_owned(), json!("instance"));
        // Each client's current month (and day), counted where budgets are: for the whole
        // fleet when that is Redis.
        if let (Some(budgets), Some(Value::Object(clients))) = (&ops.budgets, o.get_mut("clients"))
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for (id, v) in clients.iter_mut() {
                let usage = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    budgets.usage(id, now),
                )
                .await;
                if let (Ok(Ok(u)), Value::Object(v)) = (usage, v) {
                    v.insert(
                        "month".to_owned(),
                        json!({ "requests": u.month.requests, "tokens": u.month.tokens, "scope": budgets.kind() }),
                    );
                }
            }
        }
        if shared {
            o.insert(
                "scope_note".to_owned(),
                json!("these counts are this instance's; rate limits and quotas count across the fleet in Redis; sum /metrics over every instance for fleet totals"),
            );
        }
    }
    axum::Json(stats).into_response()
}

async fn status(State(ops): State<Ops>) -> Response {
    let memory = resident_memory_bytes();
    let fleet = match &ops.fleet {
        Some(f) => {
            let mut v = f.status();
            v["instances"] = f.instances().await;
            Some(v)
        }
        None => None,
    };
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ops.started.elapsed().as_secs(),
        "resident_memory_bytes": memory,
        // The same in MiB, as other Gemini proxies report it.
        "memory_usage_mb": memory.map(|b| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0),
        "requests_in_flight": ops.usage.in_flight(),
        "open_connections": ops.server.open_connections.load(std::sync::atomic::Ordering::Relaxed),
        "usable_keys": ops.pool.usable_count(),
        "total_keys": ops.pool.len(),
        "persistence": ops.persist.as_ref().map(|p| p.status()),
        "fleet": fleet,
        "key_state_writes_dropped": ops.pool.store_writes_dropped(),
    }))
    .into_response()
}

/// The process's resident memory, from `/proc/self/status` (`None` where there is none).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

// === Log files ===

/// A non-blocking writer to `LOG_DIR/gateway.log`, rolled over by time and size, and the
/// guard that flushes it when dropped (keep it alive as long as the program). `None` without
/// `LOG_DIR`. Starts a thread that removes rolled-over files older than `LOG_RETENTION_DAYS`.
pub fn log_writer(config: &OpsConfig) -> Result<Option<(NonBlocking, WorkerGuard)>, String> {
    let Some(dir) = &config.log_dir else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("LOG_DIR: cannot create `{}`: {e}", dir.display()))?;
    let mut condition = match config.log_rotation {
        LogRotation::Daily => RollingConditionBasic::new().daily(),
        LogRotation::Hourly => RollingConditionBasic::new().hourly(),
    };
    if config.max_log_size > 0 {
        condition = condition.max_size(config.max_log_size);
    }
    let appender =
        BasicRollingFileAppender::new(dir.join(LOG_FILE), condition, config.max_log_backups)
            .map_err(|e| {
                format!(
                    "LOG_DIR: cannot open a log file in `{}`: {e}",
                    dir.display()
                )
            })?;
    if config.log_retention_days > 0 {
        let dir = dir.clone();
        let max_age = Duration::from_secs(config.log_retention_days.saturating_mul(24 * 3600));
        let spawned = std::thread::Builder::new()
            .name("log-retention".into())
            .spawn(move || {
                loop {
                    if let Err(e) = remove_old_logs(&dir, max_age) {
                        tracing::warn!(error = %e, "could not remove old log files");
                    }
                    std::thread::sleep(Duration::from_secs(3600));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "log retention disabled: cannot start its thread");
        }
    }
    Ok(Some(tracing_appender::non_blocking(appender)))
}

/// Removes rolled-over log files (`gateway.log.N`) last written more than `max_age` ago;
/// returns how many. The current file is never removed.
pub fn remove_old_logs(dir: &Path, max_age: Duration) -> std::io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(suffix) = name
            .to_str()
            .and_then(|n| n.strip_prefix(LOG_FILE))
            .and_then(|s| s.strip_prefix('.'))
        else {
            continue;
        };
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        if now.duration_since(modified).unwrap_or_default() > max_age {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}
