//! full_proxy's configuration: read once from the environment (and `.env`) into a plain struct.
//!
//! Every variable is documented in README's configuration table; keep the two in step.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tower_gemini::key_rotation::Strategy;
use tower_gemini::policy::{InjectPosition, PolicyConfig, ThinkingBudget};
use tower_gemini::rate_limit::ModelLimits;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Reads a CA file (`UPSTREAM_CA_FILE`, `REDIS_CA_FILE`): a regular file (never a device or a
/// pipe that would block the start), of at most 4 MiB (Mozilla's whole bundle is about 200 KiB).
fn read_ca_file(var: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    const MAX: u64 = 4 << 20;
    let refuse = |why: String| ConfigError(format!("{var}: `{path}` {why}"));
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    if meta.len() > MAX {
        return Err(refuse("is larger than 4 MiB".into()));
    }
    let mut pem = Vec::new();
    file.take(MAX)
        .read_to_end(&mut pem)
        .map_err(|e| refuse(format!("cannot be read: {e}")))?;
    Ok(pem)
}

/// Everything full_proxy can be told.
#[derive(Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub upstream_url: String,
    /// `UPSTREAM_CA_FILE`: its path, and the PEM bundle read from it at start-up: roots trusted
    /// for the upstream beside the built-in ones (a private CA, an egress proxy).
    pub upstream_ca_file: Option<String>,
    pub upstream_ca_pem: Option<Vec<u8>>,
    pub gemini_api_keys: Vec<String>,
    pub allowed_tokens: Vec<String>,
    pub admin_token: Option<String>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// `MAX_EVENT_BYTES`: the cap on one event of a streamed answer, for every decoder.
    pub max_event_bytes: usize,
    /// `MAX_UPLOAD_BYTES`: the most bytes of one file upload (streamed, never buffered).
    pub max_upload_bytes: u64,
    /// `RESOURCE_TTL_SECONDS`: how long batches and operations stay pinned to their key.
    pub resource_ttl: Duration,
    /// `RESPONSES_TTL_SECONDS`: how long a stored `/v1/responses` answer is kept.
    pub responses_ttl: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub client_read_timeout: Duration,
    pub max_connections: usize,
    // Key pool.
    pub max_failures: u32,
    pub max_transient_failures: u32,
    pub key_strategy: Strategy,
    pub key_cooldown: Duration,
    pub key_reprobe: Duration,
    // Stream resume.
    pub max_consecutive_retries: u32,
    pub max_resume_attempts: u32,
    pub retry_delay: Duration,
    pub swallow_thoughts_after_retry: bool,
    pub stream_idle_timeout: Duration,
    // Rate limits (all off unless set).
    pub max_requests_per_minute: Option<u64>,
    pub max_requests_per_day_per_ip: Option<u64>,
    pub model_limits: Option<ModelLimits>,
    pub trusted_proxies: Vec<String>,
    /// `CORS_ALLOWED_ORIGINS`: origins a browser may call from (`*` for any); empty: no CORS.
    pub cors_allowed_origins: Vec<String>,
    pub redis_url: Option<String>,
    /// `REDIS_CA_FILE`: a private CA (PEM) trusted for a `rediss://` `REDIS_URL`.
    pub redis_ca_file: Option<String>,
    /// `REDIS_URL` parsed (one node, or a Cluster's seed nodes), with `REDIS_CA_FILE`'s roots.
    pub redis: Option<tower_gemini::RedisConfig>,
    pub redis_prefix: String,
    /// When the rate limit store (Redis) fails: let requests through (`true`) or answer 503.
    pub rate_limit_fail_open: bool,
    /// `REDIS_TIMEOUT_MS`: the most a request waits on Redis (a rate-limit check) before
    /// `RATE_LIMIT_FAIL_OPEN` decides.
    pub redis_timeout: Duration,
    /// `FLEET_SYNC_MS`: how often the shared admin state's version is checked.
    pub fleet_sync: Duration,
    /// `TOKENS_FILE`: client tokens and their accounts, seeded from TOML.
    pub tokens_file: Option<std::path::PathBuf>,
    // Log files (LOG_DIR, LOG_ROTATION, MAX_LOG_SIZE, MAX_LOG_BACKUPS, LOG_RETENTION_DAYS).
    pub ops: super::ops::OpsConfig,
    // Request policy (INJECT_PROMPT, MODEL_ALIASES, ...; see tower_gemini::policy).
    pub policy: PolicyConfig,
    /// `CLIENT_KEY_PASSTHROUGH`: a credential that is not one of our tokens is the client's
    /// own Gemini key, sent upstream for that request only.
    pub client_key_passthrough: bool,
    /// One line per old-style variable read (or ignored), to log once at start.
    pub alias_notes: Vec<String>,
    // Persistence (DATABASE_PATH, LOG_REQUEST_BODIES, LOG_CLEANUP_INTERVAL_SECONDS, ...).
    pub persist: super::persist::PersistConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use tower_gemini::secret::mask;
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("upstream_url", &self.upstream_url)
            .field("upstream_ca_file", &self.upstream_ca_file)
            .field(
                "gemini_api_keys",
                &self
                    .gemini_api_keys
                    .iter()
                    .map(|k| mask(k))
                    .collect::<Vec<_>>(),
            )
            .field(
                "allowed_tokens",
                &self
                    .allowed_tokens
                    .iter()
                    .map(|k| mask(k))
                    .collect::<Vec<_>>(),
            )
            .field("admin_token", &self.admin_token.as_deref().map(mask))
            .field("request_timeout", &self.request_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("client_read_timeout", &self.client_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_failures", &self.max_failures)
            .field("max_transient_failures", &self.max_transient_failures)
            .field("key_strategy", &self.key_strategy)
            .field("key_cooldown", &self.key_cooldown)
            .field("key_reprobe", &self.key_reprobe)
            .field("max_consecutive_retries", &self.max_consecutive_retries)
            .field("max_resume_attempts", &self.max_resume_attempts)
            .field("retry_delay", &self.retry_delay)
            .field(
                "swallow_thoughts_after_retry",
                &self.swallow_thoughts_after_retry,
            )
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("max_requests_per_minute", &self.max_requests_per_minute)
            .field(
                "max_requests_per_day_per_ip",
                &self.max_requests_per_day_per_ip,
            )
            .field("model_limits", &self.model_limits)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            // A Redis URL may hold a password.
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_prefix", &self.redis_prefix)
            .field("rate_limit_fail_open", &self.rate_limit_fail_open)
            .field("redis_timeout", &self.redis_timeout)
            .field("fleet_sync", &self.fleet_sync)
            .field("tokens_file", &self.tokens_file)
            .field("ops", &self.ops)
            .field("policy", &self.policy)
            .field("client_key_passthrough", &self.client_key_passthrough)
            .field("alias_notes", &self.alias_notes)
            .field("persist", &self.persist)
            .finish()
    }
}

impl Config {
    /// Logs each old-style variable name used (`API_KEYS`, `PASSWORD`, ...) once, as a hint to
    /// rename it. Called by [`App::build`](super::app::App::build), once per start.
    pub fn log_alias_notes(&self) {
        for note in &self.alias_notes {
            tracing::warn!("configuration: {note}");
        }
    }

    /// The configuration as `GET /admin/config` shows it: every secret masked (keys and tokens
    /// as `AIza…9xQk`), a Redis URL or an upstream URL with a password reduced to its host.
    pub fn to_json(&self) -> serde_json::Value {
        use tower_gemini::secret::mask;
        let masked = |list: &[String]| list.iter().map(|k| mask(k)).collect::<Vec<_>>();
        let secs = |d: Duration| d.as_secs_f64();
        // A Cluster's seed list: every URL may hold the password.
        let redis_url = self.redis_url.as_deref().map(|url| {
            url.split(',')
                .map(without_userinfo)
                .collect::<Vec<_>>()
                .join(",")
        });
        let mut view = serde_json::json!({
            "listen_addr": self.listen_addr.to_string(),
            "upstream_url": without_userinfo(&self.upstream_url),
            "upstream_ca_file": self.upstream_ca_file,
            "gemini_api_keys": masked(&self.gemini_api_keys),
            "allowed_tokens": masked(&self.allowed_tokens),
            "admin_token": self.admin_token.as_deref().map(mask),
            "client_key_passthrough": self.client_key_passthrough,
            "request_timeout_seconds": secs(self.request_timeout),
            "max_body_bytes": self.max_body_bytes,
            "max_event_bytes": self.max_event_bytes,
            "max_upload_bytes": self.max_upload_bytes,
            "resource_ttl_seconds": secs(self.resource_ttl),
            "responses_ttl_seconds": secs(self.responses_ttl),
            "log_level": self.log_level,
            "log_format": format!("{:?}", self.log_format).to_lowercase(),
            "shutdown_grace_seconds": secs(self.shutdown_grace),
            "client_read_timeout_seconds": secs(self.client_read_timeout),
            "max_connections": self.max_connections,
            "key_strategy": format!("{:?}", self.key_strategy),
            "max_failures": self.max_failures,
            "max_transient_failures": self.max_transient_failures,
            "key_cooldown_seconds": secs(self.key_cooldown),
            "key_reprobe_seconds": secs(self.key_reprobe),
            "max_consecutive_retries": self.max_consecutive_retries,
            "max_resume_attempts": self.max_resume_attempts,
            "retry_delay_ms": self.retry_delay.as_millis() as u64,
            "swallow_thoughts_after_retry": self.swallow_thoughts_after_retry,
            "stream_idle_timeout_seconds": secs(self.stream_idle_timeout),
            "max_requests_per_minute": self.max_requests_per_minute,
            "max_requests_per_day_per_ip": self.max_requests_per_day_per_ip,
            "model_limits": self.model_limits.as_ref().map(|m| format!("{m:?}")),
            "trusted_proxies": self.trusted_proxies,
            "cors_allowed_origins": self.cors_allowed_origins,
            "redis_url": redis_url,
            "redis_key_prefix": self.redis_prefix,
            "rate_limit_fail_open": self.rate_limit_fail_open,
            "redis_timeout_ms": self.redis_timeout.as_millis() as u64,
            "fleet": {
                "sync_ms": self.fleet_sync.as_millis() as u64,
                "tokens_file": self.tokens_file.as_ref().map(|p| p.display().to_string()),
            },
            "log_files": format!("{:?}", self.ops),
            "persistence": format!("{:?}", self.persist),
            "old_variable_names": self.alias_notes,
        });
        // Past json!'s recursion limit for one object.
        view["redis_ca_file"] = serde_json::json!(self.redis_ca_file);
        view
    }
}

/// A URL without its `user:password@` part (`redis://:pw@host:6379` → `redis://<redacted>@host:6379`).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// `REDIS_URL` (one node, or a Redis Cluster's comma-separated seed nodes, or one seed with
/// `?cluster=true`) and `REDIS_CA_FILE` (a private CA for `rediss://`), checked at start.
fn redis_config(
    url: Option<&str>,
    ca_file: Option<&str>,
) -> Result<Option<tower_gemini::RedisConfig>, ConfigError> {
    let Some(url) = url else {
        return match ca_file {
            Some(_) => Err(ConfigError("REDIS_CA_FILE: set without REDIS_URL".into())),
            None => Ok(None),
        };
    };
    // The error never repeats the URL: it may hold a password.
    let redis = tower_gemini::RedisConfig::from_url(url)
        .map_err(|e| ConfigError(format!("REDIS_URL: {e}")))?;
    let Some(path) = ca_file else {
        return Ok(Some(redis));
    };
    let pem = read_ca_file("REDIS_CA_FILE", path)?;
    redis
        .with_root_certificates(pem)
        .map(Some)
        .map_err(|e| ConfigError(format!("REDIS_CA_FILE: `{path}`: {e}")))
}

/// A start-up error that names the variable at fault.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `.env` (if present in the working directory) and then the process environment;
    /// variables already set in the environment win over `.env`.
    pub fn from_env() -> Result<Config, ConfigError> {
        let _ = dotenvy::dotenv();
        Config::from_map(&std::env::vars().collect())
    }

    /// Reads the configuration from a map of variables (tests use this directly).
    pub fn from_map(original: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let (env, alias_notes) = resolve_aliases(original)?;
        let env = &env;
        let get = |name: &str| env_value(env, name);
        let listen_addr = match get("LISTEN_ADDR") {
            Some(v) => v.parse().map_err(|_| {
                ConfigError(format!(
                    "LISTEN_ADDR: `{v}` is not an address like 127.0.0.1:8080"
                ))
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let upstream_url = strip_api_version(
            get("UPSTREAM_URL").unwrap_or("https://generativelanguage.googleapis.com"),
        );
        if !(upstream_url.starts_with("http://") || upstream_url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "UPSTREAM_URL: `{upstream_url}` must start with http:// or https://"
            )));
        }
        let upstream_ca_file = get("UPSTREAM_CA_FILE").map(str::to_owned);
        let upstream_ca_pem = match &upstream_ca_file {
            Some(path) => Some(read_ca_file("UPSTREAM_CA_FILE", path)?),
            None => None,
        };
        let log_format = match get("LOG_FORMAT").map(str::to_ascii_lowercase).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError(format!(
                    "LOG_FORMAT: `{other}` is not `text` or `json`"
                )));
            }
        };
        let request_timeout = seconds(env, "REQUEST_TIMEOUT_SECONDS", 300)?;
        let key_strategy = match get("KEY_STRATEGY") {
            None => Strategy::RoundRobin,
            Some(v) => v.parse().map_err(|_| {
                ConfigError(format!(
                    "KEY_STRATEGY: `{v}` is not round_robin, random, least_used or weighted"
                ))
            })?,
        };
        let model_limits = match get("MODEL_LIMITS") {
            None => None,
            Some(v) => {
                Some(ModelLimits::parse(v).map_err(|e| ConfigError(format!("MODEL_LIMITS: {e}")))?)
            }
        };
        let max_failures = number(env, "MAX_FAILURES", 3)?;
        if max_failures == 0 {
            return Err(ConfigError("MAX_FAILURES: must be at least 1".into()));
        }
        let ops = super::ops::OpsConfig::from_map(env).map_err(ConfigError)?;
        let gemini_api_keys = list(env, "GEMINI_API_KEYS")?;
        let allowed_tokens = list(env, "ALLOWED_TOKENS")?;
        let admin_token = get("ADMIN_TOKEN").map(str::to_owned);
        let client_key_passthrough = boolean(env, "CLIENT_KEY_PASSTHROUGH", false)?;
        if let Some(admin) = &admin_token {
            if allowed_tokens.iter().any(|t| t == admin) {
                return Err(ConfigError(format!(
                    "ADMIN_TOKEN{}: is also a client token in ALLOWED_TOKENS{}, which would make \
                     every holder of that token an admin; give the admin its own token, or unset \
                     it to have one minted",
                    via(original, "ADMIN_TOKEN", "AUTH_TOKEN"),
                    via(original, "ALLOWED_TOKENS", "PASSWORD"),
                )));
            }
        }
        if client_key_passthrough && !gemini_api_keys.is_empty() && allowed_tokens.is_empty() {
            return Err(ConfigError(
                "CLIENT_KEY_PASSTHROUGH: cannot be combined with GEMINI_API_KEYS unless \
                 ALLOWED_TOKENS names the clients that may use those keys (in own-key mode every \
                 other credential is taken as the client's own Gemini key)"
                    .into(),
            ));
        }
        let persist = super::persist::PersistConfig::from_map(env).map_err(ConfigError)?;
        Ok(Config {
            client_key_passthrough,
            alias_notes,
            ops,
            persist,
            listen_addr,
            upstream_url,
            upstream_ca_file,
            upstream_ca_pem,
            gemini_api_keys,
            allowed_tokens,
            admin_token,
            request_timeout,
            max_body_bytes: number(env, "MAX_BODY_BYTES", 20 * 1024 * 1024)? as usize,
            max_event_bytes: max_event_bytes(env)?,
            max_upload_bytes: number(env, "MAX_UPLOAD_BYTES", 2 * 1024 * 1024 * 1024)?,
            resource_ttl: seconds(env, "RESOURCE_TTL_SECONDS", 7 * 24 * 3600)?,
            responses_ttl: seconds(env, "RESPONSES_TTL_SECONDS", 30 * 24 * 3600)?,
            log_level: get("LOG_LEVEL").unwrap_or("info").to_owned(),
            log_format,
            shutdown_grace: seconds(env, "SHUTDOWN_GRACE_SECONDS", 30)?,
            client_read_timeout: seconds(env, "CLIENT_READ_TIMEOUT_SECONDS", 30)?
                .max(Duration::from_secs(1)),
            max_connections: (number(env, "MAX_CONNECTIONS", 4096)? as usize).max(1),
            max_failures: u32::try_from(max_failures)
                .map_err(|_| ConfigError("MAX_FAILURES: too large".into()))?,
            max_transient_failures: u32::try_from(number(env, "MAX_TRANSIENT_FAILURES", 3)?)
                .map_err(|_| ConfigError("MAX_TRANSIENT_FAILURES: too large".into()))?,
            key_strategy,
            key_cooldown: seconds(env, "KEY_COOLDOWN_SECONDS", 60)?,
            key_reprobe: seconds(env, "KEY_REPROBE_SECONDS", 3600)?,
            max_consecutive_retries: u32::try_from(number(env, "MAX_CONSECUTIVE_RETRIES", 5)?)
                .map_err(|_| ConfigError("MAX_CONSECUTIVE_RETRIES: too large".into()))?,
            max_resume_attempts: u32::try_from(number(
                env,
                "MAX_RESUME_ATTEMPTS",
                u64::from(tower_gemini::stream_resume::DEFAULT_MAX_RESUME_ATTEMPTS),
            )?)
            .map_err(|_| ConfigError("MAX_RESUME_ATTEMPTS: too large".into()))?,
            retry_delay: Duration::from_millis(number(env, "RETRY_DELAY_MS", 500)?).min(FOREVER),
            swallow_thoughts_after_retry: boolean(env, "SWALLOW_THOUGHTS_AFTER_RETRY", true)?,
            stream_idle_timeout: match get("STREAM_IDLE_TIMEOUT_SECONDS") {
                None => request_timeout,
                Some(_) => seconds(env, "STREAM_IDLE_TIMEOUT_SECONDS", 0)?,
            },
            max_requests_per_minute: positive(env, "MAX_REQUESTS_PER_MINUTE")?,
            max_requests_per_day_per_ip: positive(env, "MAX_REQUESTS_PER_DAY_PER_IP")?,
            model_limits,
            trusted_proxies: list(env, "TRUSTED_PROXIES")?,
            cors_allowed_origins: origins(env)?,
            redis_url: get("REDIS_URL").map(str::to_owned),
            redis_ca_file: get("REDIS_CA_FILE").map(str::to_owned),
            redis: redis_config(get("REDIS_URL"), get("REDIS_CA_FILE"))?,
            policy: policy_from_env(env)?,
            redis_prefix: get("REDIS_KEY_PREFIX").unwrap_or("tower-gemini").to_owned(),
            rate_limit_fail_open: boolean(env, "RATE_LIMIT_FAIL_OPEN", true)?,
            redis_timeout: Duration::from_millis(bounded(env, "REDIS_TIMEOUT_MS", 50, 1, 60_000)?),
            fleet_sync: Duration::from_millis(bounded(env, "FLEET_SYNC_MS", 200, 10, 60_000)?),
            tokens_file: get("TOKENS_FILE").map(std::path::PathBuf::from),
        })
    }

    /// Demo mode: no upstream keys (and no client keys to forward), so the built-in
    /// FakeGemini answers.
    pub fn is_demo(&self) -> bool {
        self.gemini_api_keys.is_empty() && !self.client_key_passthrough
    }
}

// === Aliases: the variable names of other Gemini proxies ===

/// Old names read as ours: `(old, ours)`. Ours win when both are set.
pub const ALIASES: &[(&str, &str)] = &[
    ("API_KEYS", "GEMINI_API_KEYS"),
    ("PASSWORD", "ALLOWED_TOKENS"),
    ("AUTH_TOKEN", "ADMIN_TOKEN"),
    ("UPSTREAM_URL_BASE", "UPSTREAM_URL"),
    ("BASE_URL", "UPSTREAM_URL"),
    ("PORT", "LISTEN_ADDR"),
    ("DEBUG", "LOG_LEVEL"),
    ("DEBUG_MODE", "LOG_LEVEL"),
    ("LOG_ROTATION_INTERVAL", "LOG_ROTATION"),
];

/// The variables with every old-style alias turned into our name (ours win when both are set),
/// and one note per alias seen, for the start-up log.
pub fn resolve_aliases(
    env: &HashMap<String, String>,
) -> Result<(HashMap<String, String>, Vec<String>), ConfigError> {
    let set = |name: &str| env_value(env, name);
    let mut out = env.clone();
    let mut notes = Vec::new();
    for &(old, ours) in ALIASES {
        let Some(raw) = set(old) else { continue };
        let value = match old {
            "PORT" => match raw.parse::<u16>() {
                Ok(port) if port > 0 => format!("0.0.0.0:{port}"),
                _ => {
                    return Err(ConfigError(format!(
                        "PORT: `{raw}` is not a port number (read as LISTEN_ADDR=0.0.0.0:PORT)"
                    )));
                }
            },
            "DEBUG" | "DEBUG_MODE" => match boolean(env, old, false)? {
                true => "debug".to_owned(),
                false => continue,
            },
            "LOG_ROTATION_INTERVAL" => match raw.to_ascii_lowercase().as_str() {
                "midnight" | "d" | "daily" => "daily".to_owned(),
                "h" | "hourly" => "hourly".to_owned(),
                _ => {
                    return Err(ConfigError(format!(
                        "LOG_ROTATION_INTERVAL: `{raw}` is not midnight, h or d (read as LOG_ROTATION)"
                    )));
                }
            },
            "API_KEYS" | "PASSWORD" => {
                // Checked here so that an error names the variable the user wrote.
                list(env, old)?;
                raw.to_owned()
            }
            "UPSTREAM_URL_BASE" | "BASE_URL" => {
                if !(raw.starts_with("http://") || raw.starts_with("https://")) {
                    return Err(ConfigError(format!(
                        "{old}: `{raw}` must start with http:// or https:// (read as UPSTREAM_URL)"
                    )));
                }
                raw.to_owned()
            }
            _ => raw.to_owned(),
        };
        if set(ours).is_some() {
            notes.push(format!("{old} is ignored: {ours} is set and wins"));
            continue;
        }
        if out
            .get(ours)
            .map(|v| v.trim())
            .is_some_and(|v| !v.is_empty())
        {
            // A first alias (e.g. UPSTREAM_URL_BASE before BASE_URL) already set it.
            notes.push(format!("{old} is ignored: {ours} is already set"));
            continue;
        }
        out.insert(ours.to_owned(), value);
        notes.push(format!("{old} is read as {ours}; rename it to {ours}"));
    }
    Ok((out, notes))
}

/// ` (set as OLD)` when `ours` came from its alias `old`, for error messages; `original` is
/// the environment before aliases were resolved.
fn via(original: &HashMap<String, String>, ours: &str, old: &str) -> String {
    let set = |name: &str| original.get(name).is_some_and(|v| !v.trim().is_empty());
    if !set(ours) && set(old) {
        format!(" (set as {old})")
    } else {
        String::new()
    }
}

/// An upstream base URL without a trailing `/`, `/v1beta` or `/v1` (old proxies took the
/// versioned URL; the gateway adds the version itself).
pub fn strip_api_version(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url
        .strip_suffix("/v1beta")
        .or_else(|| url.strip_suffix("/v1"))
        .unwrap_or(url);
    url.trim_end_matches('/').to_owned()
}

/// A variable's value trimmed of whitespace; `None` when it is unset or blank.
pub fn env_value<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A number between `min` and `max` (inclusive), `default` when unset.
pub fn bounded(
    env: &HashMap<String, String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let n = number(env, name, default)?;
    if n < min || n > max {
        return Err(ConfigError(format!(
            "{name}: `{n}` is outside {min}..={max}"
        )));
    }
    Ok(n)
}

/// A whole number, or the default when unset.
pub fn number(env: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ConfigError> {
    match env_value(env, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError(format!("{name}: `{v}` is not a whole number"))),
    }
}

/// Smallest `MAX_EVENT_BYTES`: an event this size still holds a few sentences of answer.
const MIN_EVENT_BYTES: u64 = 4096;
/// Largest `MAX_EVENT_BYTES` (4 GiB): one event held in memory, never more.
const MAX_EVENT_BYTES: u64 = 4 << 30;

/// `MAX_EVENT_BYTES`, checked: from 4 KiB to 4 GiB, default
/// [`DEFAULT_MAX_EVENT_BYTES`](tower_gemini::sse::DEFAULT_MAX_EVENT_BYTES).
fn max_event_bytes(env: &HashMap<String, String>) -> Result<usize, ConfigError> {
    let default = tower_gemini::sse::DEFAULT_MAX_EVENT_BYTES as u64;
    let n = number(env, "MAX_EVENT_BYTES", default)?;
    if !(MIN_EVENT_BYTES..=MAX_EVENT_BYTES).contains(&n) {
        return Err(ConfigError(format!(
            "MAX_EVENT_BYTES: `{n}` is out of range: from {MIN_EVENT_BYTES} (4 KiB) to \
             {MAX_EVENT_BYTES} (4 GiB); the default, 64 MiB, holds a generated 4K image"
        )));
    }
    usize::try_from(n).map_err(|_| ConfigError("MAX_EVENT_BYTES: too large".into()))
}

/// The longest duration any variable sets (100 years): a larger value means "never" just as
/// well, and timers, `Instant` arithmetic and the libraries below panic on overflow.
pub const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A number of seconds (at most [`FOREVER`]), or the default when unset.
pub fn seconds(
    env: &HashMap<String, String>,
    name: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(number(env, name, default)?).min(FOREVER))
}

/// An optional limit: unset or `0` means off.
pub fn positive(env: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ConfigError> {
    Ok(Some(number(env, name, 0)?).filter(|n| *n > 0))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or the default when unset.
pub fn boolean(
    env: &HashMap<String, String>,
    name: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match env
        .get(name)
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .as_deref()
    {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError(format!("{name}: `{v}` is not true or false"))),
    }
}

/// A list given as `a,b,c` or as a JSON list `["a","b"]`; items trimmed of whitespace and quotes.
/// An empty item or a malformed list is an error naming the variable, never a silently empty list.
pub fn list(env: &HashMap<String, String>, name: &str) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = env_value(env, name) else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = if raw.starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(raw)
            .map_err(|_| ConfigError(format!("{name}: not a valid JSON list of strings")))?;
        values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(ConfigError(format!(
                    "{name}: every item of the JSON list must be a string"
                ))),
            })
            .collect::<Result<_, _>>()?
    } else {
        raw.split(',').map(str::to_owned).collect()
    };
    let items: Vec<String> = items
        .iter()
        .map(|s| {
            s.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .trim()
                .to_owned()
        })
        .collect();
    if let Some(pos) = items.iter().position(String::is_empty) {
        return Err(ConfigError(format!(
            "{name}: item {} of the list is empty",
            pos + 1
        )));
    }
    Ok(items)
}

/// `CORS_ALLOWED_ORIGINS`: `*` alone, or origins such as `https://app.example.com`.
fn origins(env: &HashMap<String, String>) -> Result<Vec<String>, ConfigError> {
    let origins = list(env, "CORS_ALLOWED_ORIGINS")?;
    if origins.len() > 1 && origins.iter().any(|o| o == "*") {
        return Err(ConfigError(
            "CORS_ALLOWED_ORIGINS: `*` stands alone (any origin) or not at all".into(),
        ));
    }
    for o in origins.iter().filter(|o| *o != "*") {
        let valid = (o.starts_with("http://") || o.starts_with("https://"))
            && !o.ends_with('/')
            && http::HeaderValue::from_str(o).is_ok();
        if !valid {
            return Err(ConfigError(format!(
                "CORS_ALLOWED_ORIGINS: `{o}` is not an origin such as https://app.example.com"
            )));
        }
    }
    Ok(origins)
}

// === The request policy's variables ===

/// The request policy's variables (`INJECT_PROMPT`, `MODEL_ALIASES`, ...; README's "Request
/// policy" rows), read into the library's [`PolicyConfig`].
pub fn policy_from_env(env: &HashMap<String, String>) -> Result<PolicyConfig, ConfigError> {
    let inject_prompt = env_value(env, "INJECT_PROMPT").map(str::to_owned);
    let inject_prompt_position = match env_value(env, "INJECT_PROMPT_POSITION") {
        None => InjectPosition::default(),
        Some(v) => InjectPosition::parse(v).ok_or_else(|| {
            ConfigError(format!(
                "INJECT_PROMPT_POSITION: `{v}` is not one of system, user_prefix, user_suffix"
            ))
        })?,
    };
    let thinking_models = models(list(env, "THINKING_MODELS")?);
    let thinking_budget = match env_value(env, "THINKING_BUDGET") {
        None => ThinkingBudget::None,
        Some(v) if v.contains('=') || v.starts_with('{') => ThinkingBudget::PerModel(
            pairs(env, "THINKING_BUDGET")?
                .into_iter()
                .map(|(m, b)| Ok((m, budget("THINKING_BUDGET", &b)?)))
                .collect::<Result<_, ConfigError>>()?,
        ),
        Some(v) => ThinkingBudget::All(budget("THINKING_BUDGET", v)?),
    };
    let model_aliases = pairs(env, "MODEL_ALIASES")?;
    for (alias, target) in &model_aliases {
        if alias == target {
            return Err(ConfigError(format!(
                "MODEL_ALIASES: `{alias}` is an alias of itself"
            )));
        }
    }
    Ok(PolicyConfig {
        inject_prompt,
        inject_prompt_position,
        disable_safety_filtering: boolean(env, "DISABLE_SAFETY_FILTERING", false)?,
        thinking_budget,
        thinking_models,
        show_thinking_process: optional_boolean(env, "SHOW_THINKING_PROCESS")?,
        model_search: models(list(env, "MODEL_SEARCH")?),
        show_search_link: boolean(env, "SHOW_SEARCH_LINK", false)?,
        tools_code_execution_enabled: boolean(env, "TOOLS_CODE_EXECUTION_ENABLED", false)?,
        model_aliases,
        allowed_models: models(list(env, "ALLOWED_MODELS")?),
    })
}

fn budget(name: &str, v: &str) -> Result<i32, ConfigError> {
    match v.trim().parse::<i32>() {
        Ok(b) if b >= -1 => Ok(b),
        _ => Err(ConfigError(format!(
            "{name}: `{v}` is not a thinking budget (-1 for dynamic, 0 for off, or a token count)"
        ))),
    }
}

fn models(list: Vec<String>) -> Vec<String> {
    list.iter()
        .map(|m| tower_gemini::gemini::strip_models_prefix(m).to_owned())
        .collect()
}

/// `a=b,c=d` or a JSON object of strings (or numbers, for budgets).
fn pairs(env: &HashMap<String, String>, name: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(raw) = env_value(env, name) else {
        return Ok(Vec::new());
    };
    let raw_pairs: Vec<(String, String)> = if raw.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|_| ConfigError(format!("{name}: not a valid JSON object")))?;
        map.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                _ => Err(ConfigError(format!(
                    "{name}: the value of `{k}` must be a string"
                ))),
            })
            .collect::<Result<_, _>>()?
    } else {
        raw.split(',')
            .map(|item| {
                item.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "{name}: `{}` is not of the form name=value",
                            item.trim()
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut out: Vec<(String, String)> = Vec::with_capacity(raw_pairs.len());
    for (k, v) in raw_pairs {
        let clean = |s: &str| {
            tower_gemini::gemini::strip_models_prefix(s.trim().trim_matches(['"', '\'']).trim())
                .to_owned()
        };
        let (k, v) = (clean(&k), clean(&v));
        if k.is_empty() || v.is_empty() {
            return Err(ConfigError(format!("{name}: `{k}={v}` has an empty side")));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ConfigError(format!("{name}: `{k}` is given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// `boolean` for a variable whose absence means something of its own.
fn optional_boolean(
    env: &HashMap<String, String>,
    name: &str,
) -> Result<Option<bool>, ConfigError> {
    match env_value(env, name) {
        None => Ok(None),
        Some(_) => boolean(env, name, false).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_map(&env(&[])).unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.upstream_url, "https://generativelanguage.googleapis.com");
        assert!(c.is_demo());
        assert_eq!(c.request_timeout, Duration::from_secs(300));
        assert_eq!(c.stream_idle_timeout, c.request_timeout);
        assert_eq!(c.max_failures, 3);
        assert_eq!(c.max_transient_failures, 3);
        assert_eq!(c.key_strategy, Strategy::RoundRobin);
        assert_eq!(c.key_reprobe, Duration::from_secs(3600));
        assert_eq!(c.max_consecutive_retries, 5);
        assert_eq!(c.max_resume_attempts, 10);
        assert_eq!(c.max_event_bytes, 64 * 1024 * 1024);
        assert!(c.swallow_thoughts_after_retry);
        assert_eq!(c.max_requests_per_minute, None);
        assert!(c.model_limits.is_none() && c.redis_url.is_none());
        assert!(c.rate_limit_fail_open);
    }

    #[test]
    fn idle_timeout_follows_the_request_timeout_unless_set() {
        let c = Config::from_map(&env(&[("REQUEST_TIMEOUT_SECONDS", "42")])).unwrap();
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(42));
        let c = Config::from_map(&env(&[
            ("REQUEST_TIMEOUT_SECONDS", "42"),
            ("STREAM_IDLE_TIMEOUT_SECONDS", "7"),
        ]))
        .unwrap();
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(7));
    }

    #[test]
    fn lists_in_both_styles() {
        let c = Config::from_map(&env(&[
            ("GEMINI_API_KEYS", " a , 'b',\"c\" "),
            ("ALLOWED_TOKENS", r#"["x", " y "]"#),
        ]))
        .unwrap();
        assert_eq!(c.gemini_api_keys, ["a", "b", "c"]);
        assert_eq!(c.allowed_tokens, ["x", "y"]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("GEMINI_API_KEYS", "a,,b"),
            ("ALLOWED_TOKENS", "[\"a\""),
            ("MAX_BODY_BYTES", "ten"),
            ("MAX_EVENT_BYTES", "0"),
            ("MAX_EVENT_BYTES", "1024"),
            ("MAX_EVENT_BYTES", "99999999999"),
            ("MAX_EVENT_BYTES", "64MiB"),
            ("MAX_RESUME_ATTEMPTS", "-1"),
            ("LISTEN_ADDR", "nowhere"),
            ("UPSTREAM_URL", "ftp://x"),
            ("KEY_STRATEGY", "fastest"),
            ("MAX_FAILURES", "0"),
            ("SWALLOW_THOUGHTS_AFTER_RETRY", "maybe"),
            ("MODEL_LIMITS", "gemini-2.5-pro=5rpx"),
            ("MAX_REQUESTS_PER_MINUTE", "-1"),
            ("RATE_LIMIT_FAIL_OPEN", "sometimes"),
            ("CORS_ALLOWED_ORIGINS", "*,https://a.example"),
            ("CORS_ALLOWED_ORIGINS", "app.example.com"),
            ("CORS_ALLOWED_ORIGINS", "https://a.example/"),
            ("SHOW_THINKING_PROCESS", "perhaps"),
            ("INJECT_PROMPT_POSITION", "middle"),
            ("LOG_REQUEST_BODIES", "sometimes"),
            ("REQUEST_LOG_QUEUE_SIZE", "0"),
        ] {
            let err = Config::from_map(&env(&[(k, v)])).err().unwrap();
            assert!(err.0.starts_with(k), "{err}");
        }
    }

    // === The request policy's variables ===
    #[test]
    fn policy_empty_env_has_no_rules() {
        let cfg = policy_from_env(&HashMap::new()).unwrap();
        assert_eq!(cfg, PolicyConfig::default());
        assert!(!cfg.is_active());
        assert!(cfg.layer().rules().is_empty());
    }

    #[test]
    fn policy_reads_every_variable() {
        let cfg = policy_from_env(&env(&[
            ("INJECT_PROMPT", "Be brief."),
            ("INJECT_PROMPT_POSITION", "USER_SUFFIX"),
            ("DISABLE_SAFETY_FILTERING", "1"),
            ("THINKING_BUDGET", "-1"),
            (
                "THINKING_MODELS",
                r#"["gemini-2.5-flash", "models/gemini-2.5-pro"]"#,
            ),
            ("SHOW_THINKING_PROCESS", "false"),
            ("MODEL_SEARCH", "gemini-2.5-flash, gemini-2.5-pro"),
            ("SHOW_SEARCH_LINK", "yes"),
            ("TOOLS_CODE_EXECUTION_ENABLED", "on"),
            (
                "MODEL_ALIASES",
                "gpt-4o=gemini-2.5-pro, gpt-4o-mini = models/gemini-2.5-flash",
            ),
            ("ALLOWED_MODELS", "gpt-4o,gemini-2.5-flash"),
        ]))
        .unwrap();
        assert_eq!(cfg.inject_prompt.as_deref(), Some("Be brief."));
        assert_eq!(cfg.inject_prompt_position, InjectPosition::UserSuffix);
        assert!(cfg.disable_safety_filtering);
        assert_eq!(cfg.thinking_budget, ThinkingBudget::All(-1));
        assert_eq!(cfg.thinking_models, ["gemini-2.5-flash", "gemini-2.5-pro"]);
        assert_eq!(cfg.show_thinking_process, Some(false));
        assert_eq!(cfg.model_search, ["gemini-2.5-flash", "gemini-2.5-pro"]);
        assert!(cfg.show_search_link && cfg.tools_code_execution_enabled);
        assert_eq!(
            cfg.model_aliases,
            [
                ("gpt-4o".to_owned(), "gemini-2.5-pro".to_owned()),
                ("gpt-4o-mini".to_owned(), "gemini-2.5-flash".to_owned())
            ]
        );
        assert_eq!(cfg.allowed_models, ["gpt-4o", "gemini-2.5-flash"]);
        assert_eq!(cfg.layer().rules().len(), 8);
    }

    #[test]
    fn policy_thinking_budget_per_model_and_json_aliases() {
        let cfg = policy_from_env(&env(&[
            ("THINKING_BUDGET", "gemini-2.5-pro=2048,gemini-2.5-flash=0"),
            ("MODEL_ALIASES", r#"{"gpt-4o": "gemini-2.5-pro"}"#),
        ]))
        .unwrap();
        assert_eq!(
            cfg.thinking_budget,
            ThinkingBudget::PerModel(vec![
                ("gemini-2.5-pro".into(), 2048),
                ("gemini-2.5-flash".into(), 0)
            ])
        );
        assert_eq!(
            cfg.model_aliases,
            [("gpt-4o".into(), "gemini-2.5-pro".into())]
        );
    }

    #[test]
    fn policy_bad_values_name_the_variable() {
        for (name, value) in [
            ("DISABLE_SAFETY_FILTERING", "maybe"),
            ("SHOW_THINKING_PROCESS", "2"),
            ("SHOW_SEARCH_LINK", "y e s"),
            ("TOOLS_CODE_EXECUTION_ENABLED", "enabled"),
            ("INJECT_PROMPT_POSITION", "middle"),
            ("THINKING_BUDGET", "lots"),
            ("THINKING_BUDGET", "-2"),
            ("THINKING_BUDGET", "gemini-2.5-pro=x"),
            ("THINKING_MODELS", "a,,b"),
            ("MODEL_SEARCH", "[1, 2]"),
            ("MODEL_ALIASES", "gpt-4o"),
            ("MODEL_ALIASES", "gpt-4o=,x=y"),
            ("MODEL_ALIASES", "a=b,a=c"),
            ("MODEL_ALIASES", "a=a"),
            ("MODEL_ALIASES", "{not json"),
            ("ALLOWED_MODELS", "[\"a\""),
        ] {
            let err = policy_from_env(&env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn policy_empty_values_are_unset() {
        let cfg = policy_from_env(&env(&[
            ("INJECT_PROMPT", "  "),
            ("DISABLE_SAFETY_FILTERING", ""),
            ("MODEL_ALIASES", ""),
        ]))
        .unwrap();
        assert!(!cfg.is_active());
    }
}
