//! What full_proxy keeps across restarts: admin changes (keys added or removed, client tokens
//! created or revoked, policy settings) in Redis (`REDIS_URL`: the one view of a fleet), else
//! SQLite (`DATABASE_PATH`), else memory with a start-up warning; and, with `DATABASE_PATH`,
//! one row per request plus `POST /admin/backup`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use serde_json::json;
use tower_gemini::error::{ApiError, Dialect};
use tower_gemini::persist::{
    AdminMemoryStore, AdminRedisStore, AdminSqliteStore, AdminState, AdminStore, KeyRecord,
    RequestLog, StoreFuture, TokenRecord,
};

use super::admin::admin_only;
use super::app::Shared;
use super::config;

/// Bytes of each request body kept in the request log with `LOG_REQUEST_BODIES=true`.
pub const LOGGED_BODY_BYTES: usize = 64 * 1024;

/// The persistence settings.
#[derive(Clone, Debug)]
pub struct PersistConfig {
    /// `DATABASE_PATH`: the SQLite file for admin changes and the request log.
    pub database_path: Option<PathBuf>,
    /// `LOG_REQUEST_BODIES`: keep the start of each request body (prompts) in the request log.
    pub log_request_bodies: bool,
    /// `LOG_CLEANUP_INTERVAL_SECONDS`: how often old request rows are removed.
    pub log_cleanup_interval: Duration,
    /// `REQUEST_LOG_QUEUE_SIZE`: request rows waiting for the disk before new ones are dropped.
    pub request_log_queue: usize,
}

/// The longest request log queue `REQUEST_LOG_QUEUE_SIZE` may ask for.
pub const MAX_REQUEST_LOG_QUEUE: u64 = 100_000;

impl PersistConfig {
    /// Reads the settings from the variables.
    pub fn from_map(env: &HashMap<String, String>) -> Result<PersistConfig, String> {
        let get = |name: &str| config::env_value(env, name);
        let number = |name: &str, default: u64| config::number(env, name, default).map_err(|e| e.0);
        let log_request_bodies =
            config::boolean(env, "LOG_REQUEST_BODIES", false).map_err(|e| e.0)?;
        let log_cleanup_interval = number("LOG_CLEANUP_INTERVAL_SECONDS", 3600)?;
        if log_cleanup_interval == 0 {
            return Err("LOG_CLEANUP_INTERVAL_SECONDS: must be at least 1".into());
        }
        let request_log_queue = number("REQUEST_LOG_QUEUE_SIZE", 10_000)?;
        if request_log_queue == 0 {
            return Err("REQUEST_LOG_QUEUE_SIZE: must be at least 1".into());
        }
        // The queue's slots are allocated up front.
        if request_log_queue > MAX_REQUEST_LOG_QUEUE {
            return Err(format!(
                "REQUEST_LOG_QUEUE_SIZE: `{request_log_queue}` is more than {MAX_REQUEST_LOG_QUEUE} rows"
            ));
        }
        Ok(PersistConfig {
            database_path: get("DATABASE_PATH").map(PathBuf::from),
            log_request_bodies,
            log_cleanup_interval: Duration::from_secs(log_cleanup_interval),
            request_log_queue: usize::try_from(request_log_queue)
                .map_err(|_| "REQUEST_LOG_QUEUE_SIZE: too large".to_owned())?,
        })
    }
}

/// The opened stores.
#[derive(Clone)]
pub struct Persist {
    /// Where admin changes go.
    pub store: Arc<dyn AdminStore>,
    /// The SQLite store, for backups (`DATABASE_PATH` only).
    pub sqlite: Option<AdminSqliteStore>,
    /// The request log (`DATABASE_PATH` only).
    pub request_log: Option<RequestLog>,
}

impl Persist {
    /// Opens the admin store and the request log the configuration asks for. A SQLite file
    /// that cannot be opened stops the start. With `REDIS_URL`, admin changes live in Redis
    /// (the one view of a fleet; connected lazily, so a Redis that is down at start is
    /// followed once it answers) and `DATABASE_PATH` keeps the request log; the admin changes
    /// a SQLite file held before are copied into a Redis that holds none yet.
    pub async fn open(
        config: &PersistConfig,
        redis: Option<&tower_gemini::RedisConfig>,
        redis_prefix: &str,
        log_retention_days: u64,
    ) -> Result<Persist, String> {
        let mut sqlite = None;
        let mut request_log = None;
        if let Some(path) = &config.database_path {
            let db = AdminSqliteStore::open(path)
                .map_err(|e| format!("DATABASE_PATH: `{}`: {e}", path.display()))?;
            let retention = (log_retention_days > 0)
                .then(|| Duration::from_secs(log_retention_days.saturating_mul(86_400)));
            request_log = Some(
                RequestLog::builder(path)
                    .queue(config.request_log_queue)
                    .retention(retention)
                    .cleanup_interval(config.log_cleanup_interval)
                    .log_bodies(config.log_request_bodies)
                    .open()
                    .map_err(|e| format!("DATABASE_PATH: `{}`: {e}", path.display()))?,
            );
            sqlite = Some(db);
        }
        if let Some(redis) = redis {
            let redis = LazyRedis::new(redis, format!("{redis_prefix}:admin"));
            if let Some(db) = &sqlite {
                redis.adopt(db).await;
            }
            tracing::info!(
                "admin changes are kept in Redis and followed by every instance sharing it{}",
                if sqlite.is_some() {
                    "; DATABASE_PATH keeps the request log"
                } else {
                    ""
                }
            );
            return Ok(Persist {
                store: Arc::new(redis),
                sqlite,
                request_log,
            });
        }
        if let (Some(db), Some(path)) = (&sqlite, &config.database_path) {
            tracing::info!(
                path = %path.display(),
                "admin changes and the request log are kept in SQLite"
            );
            return Ok(Persist {
                store: Arc::new(db.clone()),
                sqlite,
                request_log,
            });
        }
        tracing::warn!(
            "admin changes (keys, tokens) are kept in memory only and LOST ON RESTART; \
             set DATABASE_PATH (SQLite) or REDIS_URL to keep them"
        );
        Ok(Persist {
            store: Arc::new(AdminMemoryStore::new()),
            sqlite: None,
            request_log: None,
        })
    }

    /// What the store holds and its version, or `None` (after a warning) when it cannot be
    /// read: the gateway then starts on its configuration alone.
    pub async fn load(&self) -> Option<(AdminState, Option<u64>)> {
        // The version first: a write landing between the two reads is seen again next poll.
        let loaded = match self.store.version().await {
            Ok(version) => self.store.load().await.map(|s| (s, version)),
            Err(e) => Err(e),
        };
        match loaded {
            Ok((state, version)) => {
                tracing::info!(
                    keys = state.keys.len(),
                    tokens = state.tokens.len(),
                    removed_keys = state.removed_keys.len(),
                    revoked_tokens = state.revoked_tokens.len(),
                    store = self.store.kind(),
                    "admin changes restored"
                );
                Some((state, version))
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    store = self.store.kind(),
                    "cannot read saved admin changes: starting on the configuration alone"
                );
                None
            }
        }
    }

    /// `/status`'s view: the store and the request log's counters.
    pub fn status(&self) -> serde_json::Value {
        let log = self.request_log.as_ref().map(|l| {
            let s = l.stats();
            json!({ "written": s.written, "dropped": s.dropped, "failed": s.failed, "removed": s.removed })
        });
        json!({
            "store": self.store.kind(),
            "durable": self.store.is_durable(),
            "request_log": log,
        })
    }

    /// Prometheus lines for the request log's counters (empty without one).
    pub fn metrics(&self) -> String {
        let Some(log) = &self.request_log else {
            return String::new();
        };
        let s = log.stats();
        format!(
            "# HELP gemini_gateway_request_log_rows_total Rows of the SQLite request log, by outcome (dropped: queue full; failed: refused by the database).\n\
             # TYPE gemini_gateway_request_log_rows_total counter\n\
             gemini_gateway_request_log_rows_total{{outcome=\"written\"}} {}\n\
             gemini_gateway_request_log_rows_total{{outcome=\"dropped\"}} {}\n\
             gemini_gateway_request_log_rows_total{{outcome=\"failed\"}} {}\n\
             gemini_gateway_request_log_rows_total{{outcome=\"removed\"}} {}\n",
            s.written, s.dropped, s.failed, s.removed
        )
    }
}

/// An admin change is in effect but could not be saved: say so (500), so the operator knows
/// it will not survive a restart.
pub fn unsaved(what: &str, e: &tower_gemini::Error) -> Response {
    tracing::warn!(error = %e, "admin change not saved: {what}");
    ApiError::internal(format!(
        "{what}: the change could not be saved ({e}) and will not survive a restart"
    ))
    .into_response(Dialect::Gemini)
    .into_response()
}

/// `POST /admin/backup` (admin token), merged into the `/admin` router.
pub fn admin_routes(shared: Shared) -> Router {
    Router::new()
        .route("/backup", post(backup))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            admin_only,
        ))
        .with_state(shared)
}

/// A consistent online copy of the SQLite database next to it: `{"path", "size_bytes"}`.
async fn backup(State(s): State<Shared>) -> Response {
    let Some(sqlite) = &s.persist.sqlite else {
        return ApiError::bad_request(format!(
            "backups need DATABASE_PATH (a SQLite database); this gateway keeps admin changes \
             in {}",
            s.persist.store.kind()
        ))
        .into_response(Dialect::Gemini)
        .into_response();
    };
    match sqlite.backup().await {
        Ok((path, size)) => {
            tracing::info!(path = %path.display(), size, "database backed up");
            (
                StatusCode::CREATED,
                axum::Json(json!({ "path": path.display().to_string(), "size_bytes": size })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "database backup failed");
            ApiError::internal(format!("the backup failed: {e}"))
                .into_response(Dialect::Gemini)
                .into_response()
        }
    }
}

/// The admin store in Redis, connected on first use and again after a failed attempt, so a
/// gateway that starts while Redis is down follows the shared state once it is up.
struct LazyRedis {
    redis: tower_gemini::RedisConfig,
    prefix: String,
    store: tokio::sync::OnceCell<AdminRedisStore>,
}

impl LazyRedis {
    fn new(redis: &tower_gemini::RedisConfig, prefix: String) -> LazyRedis {
        LazyRedis {
            redis: redis.clone(),
            prefix,
            store: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&AdminRedisStore, tower_gemini::Error> {
        self.store
            .get_or_try_init(|| async {
                self.redis
                    .connect()
                    .await
                    .map(|c| AdminRedisStore::from_connection(c).with_prefix(&self.prefix))
            })
            .await
    }

    /// Copies the admin changes of a SQLite store (a gateway that kept them there before it
    /// had Redis) into a Redis that holds none yet.
    async fn adopt(&self, db: &AdminSqliteStore) {
        let Ok(old) = db.load().await else { return };
        if old == AdminState::default() || self.version().await.ok().flatten() != Some(0) {
            return;
        }
        let copied: Result<(), tower_gemini::Error> = async {
            for k in &old.keys {
                self.put_key(k).await?;
            }
            for id in &old.removed_keys {
                self.remove_key(id).await?;
            }
            for t in &old.tokens {
                self.put_token(t).await?;
            }
            for t in &old.revoked_tokens {
                self.revoke_token(t).await?;
            }
            for (name, value) in &old.settings {
                self.put_setting(name, value).await?;
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => tracing::info!(
                keys = old.keys.len(),
                tokens = old.tokens.len(),
                "admin changes copied from DATABASE_PATH into Redis, which now holds them"
            ),
            Err(e) => tracing::warn!(error = %e, "could not copy admin changes into Redis"),
        }
    }
}

impl AdminStore for LazyRedis {
    fn load(&self) -> StoreFuture<'_, AdminState> {
        Box::pin(async move { self.get().await?.load().await })
    }
    fn put_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.put_key(key).await })
    }
    fn remove_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.remove_key(id).await })
    }
    fn put_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.put_token(token).await })
    }
    fn revoke_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.revoke_token(token).await })
    }
    fn put_setting<'a>(&'a self, name: &'a str, value: &'a Value) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.put_setting(name, value).await })
    }
    fn delete_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.delete_setting(name).await })
    }
    fn version(&self) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move { self.get().await?.version().await })
    }
    fn report_applied<'a>(&'a self, instance: &'a str, version: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.report_applied(instance, version).await })
    }
    fn applied(&self) -> StoreFuture<'_, Vec<(String, u64, u64)>> {
        Box::pin(async move { self.get().await?.applied().await })
    }
    fn forget_instance<'a>(&'a self, instance: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.get().await?.forget_instance(instance).await })
    }
    fn kind(&self) -> &'static str {
        "redis"
    }
}
