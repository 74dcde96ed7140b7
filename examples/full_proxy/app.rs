//! Builds full_proxy from its [`Config`]: the upstream (real or demo), the key pool, the layer
//! stack and the router with the few routes of its own (`/health`, `/admin/...`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_gemini::affinity::{
    AffinityLayer, AffinityRedisStore, AffinitySqliteStore, AffinityStore, MemoryAffinityStore,
};
use tower_gemini::anthropic::AnthropicToGeminiLayer;
use tower_gemini::auth::{MemoryTokenStore, mint_token};
use tower_gemini::client::UpstreamClient;
use tower_gemini::gateway::{Gateway, GatewayService};
use tower_gemini::key_rotation::{KeyPool, KeyRotationLayer};
use tower_gemini::live::{LIVE_PATHS, LiveProxy};
use tower_gemini::openai::OpenAiToGeminiLayer;
use tower_gemini::openai::responses::{
    MemoryResponseStore, ResponseRedisStore, ResponseSqliteStore, ResponseStore,
};
use tower_gemini::policy::{PolicyConfig, PolicyHandle, RequestPolicyLayer};
use tower_gemini::rate_limit::{ClientAddr, RateLimitLayer, Rule};
use tower_gemini::secret::ApiKey;
use tower_gemini::stream_resume::StreamResumeLayer;
use tower_gemini::testing::FakeGemini;

use super::admin;
use super::config::Config;
use super::fleet;
use super::ops::{self, Ops};
use super::persist::{self, Persist};
use super::server::ServerStats;

/// A built gateway, ready to serve.
pub struct App {
    pub router: Router,
    pub config: Config,
    /// The upstream key pool (shared with the admin routes).
    pub pool: Arc<KeyPool>,
    /// Connection counters of the server (slow clients closed, connections shed).
    pub server_stats: Arc<ServerStats>,
    /// The in-process fake upstream in demo mode (kept alive as long as the app).
    pub demo: Option<FakeGemini>,
    /// Client tokens minted because `ALLOWED_TOKENS` was unset (print them once).
    pub minted_token: Option<String>,
    /// The admin token minted because `ADMIN_TOKEN` was unset.
    pub minted_admin_token: Option<String>,
    /// The Live API's sessions (closed by the server's drain at shutdown).
    pub live: LiveProxy,
}

/// What the gateway's own routes share.
#[derive(Clone)]
pub struct Shared {
    pub demo: bool,
    pub pool: Arc<KeyPool>,
    pub tokens: Arc<MemoryTokenStore>,
    pub started: Instant,
    /// Own-key mode (`CLIENT_KEY_PASSTHROUGH`).
    pub client_key_passthrough: bool,
    /// The request policy as configured now (start-up variables, then admin changes) and the
    /// handle that puts a changed one into force from the next request.
    pub policy: Arc<Mutex<PolicyConfig>>,
    pub policy_handle: PolicyHandle,
    /// Where admin changes are saved (and the request log, with `DATABASE_PATH`).
    pub persist: Persist,
    /// The start-up configuration, secrets masked, for `GET /admin/config`.
    pub config_view: Arc<serde_json::Value>,
    /// This instance's follower of the shared admin state.
    pub fleet: Arc<fleet::Fleet>,
    /// The server's counters (and whether it drains, for readiness).
    pub server_stats: Arc<ServerStats>,
    /// Where token budgets are counted.
    pub budgets: Arc<dyn tower_gemini::accounts::BudgetStore>,
}

impl App {
    /// Builds the gateway. Never touches the network, except to connect to `REDIS_URL`
    /// (bounded; the gateway starts without shared key state when Redis is down). Logs each
    /// old-style variable name used once, and where admin changes are kept.
    pub async fn build(config: Config) -> Result<App, String> {
        config.log_alias_notes();
        let persist = Persist::open(
            &config.persist,
            config.redis.as_ref(),
            &config.redis_prefix,
            config.ops.log_retention_days,
        )
        .await?;
        let loaded = persist.load().await;
        let started_on = loaded.as_ref().map(|(_, version)| *version);
        let saved = loaded.map(|(state, _)| state).unwrap_or_default();
        // Keys added through the admin API count as configured keys; keys removed through it
        // stay out even when GEMINI_API_KEYS still lists them.
        let saved_keys: Vec<ApiKey> = saved.keys.iter().map(|k| k.key.clone()).collect();
        let (upstream_url, keys, demo) = if config.is_demo() && saved_keys.is_empty() {
            let fake = FakeGemini::builder()
                .accept_any_key(true)
                .start()
                .await
                .map_err(|e| format!("could not start the demo upstream: {e}"))?;
            (
                fake.url(),
                vec![ApiKey::new("demo-key-not-a-real-gemini-key")],
                Some(fake),
            )
        } else {
            let keys = config
                .gemini_api_keys
                .iter()
                .map(ApiKey::new)
                .filter(|k| !saved.is_key_removed(&k.fingerprint()))
                .chain(saved_keys)
                .collect();
            (config.upstream_url.clone(), keys, None)
        };

        // What the configuration gives, before admin changes: what every reload of the shared
        // state starts from.
        let mut base = fleet::Base {
            keys: if demo.is_some() {
                keys.clone()
            } else {
                config.gemini_api_keys.iter().map(ApiKey::new).collect()
            },
            policy: config.policy.clone(),
            ..fleet::Base::default()
        };
        // Tokens seeded from TOKENS_FILE count as configured ones (a malformed file stops
        // the start, naming the line).
        let seeded = match &config.tokens_file {
            Some(path) => super::tokens_file::load(path)?,
            None => Vec::new(),
        };
        base.tokens.extend(seeded.iter().cloned());
        let tokens = Arc::new(MemoryTokenStore::new());
        let minted_token = if config.allowed_tokens.is_empty() && config.client_key_passthrough {
            // Own-key mode: every credential is a client's Gemini key; nothing to mint.
            None
        } else if config.allowed_tokens.is_empty() && saved.tokens.is_empty() && seeded.is_empty() {
            let t = mint_token("sk-");
            base.tokens.push(fleet::BaseToken {
                digest: tower_gemini::auth::TokenDigest::of(&t),
                name: "minted".to_owned(),
                account: tower_gemini::facts::Account::default(),
                source: "config",
            });
            Some(t)
        } else {
            for (i, t) in config.allowed_tokens.iter().enumerate() {
                base.tokens.push(fleet::BaseToken {
                    digest: tower_gemini::auth::TokenDigest::of(t),
                    name: format!("client-{}", i + 1),
                    account: tower_gemini::facts::Account::default(),
                    source: "config",
                });
            }
            None
        };
        let minted_admin_token = match &config.admin_token {
            Some(t) => {
                base.admin_token = t.clone();
                None
            }
            None => {
                let t = mint_token("sk-admin-");
                base.admin_token = t.clone();
                Some(t)
            }
        };

        let pool = build_pool(&config, keys).await?;
        let server_stats = Arc::new(ServerStats::default());
        let mut ops = Ops::new(pool.clone(), server_stats.clone());
        if let Some(log) = &persist.request_log {
            let mut usage = ops.usage.clone().sink(log.clone());
            if config.persist.log_request_bodies {
                usage = usage.request_bodies(persist::LOGGED_BODY_BYTES);
            }
            ops.usage = usage;
        }
        ops.persist = Some(persist.clone());
        // Token budgets count each answer's usage: in Redis for a fleet, else in memory.
        let budgets = budget_store(&config).await;
        ops.usage = ops
            .usage
            .clone()
            .sink(tower_gemini::accounts::BudgetRecorder::new(budgets.clone()));
        ops.budgets = Some(budgets.clone());
        // A client token's models and token budgets (REST routes and Live sessions alike).
        let account_layer = tower_gemini::accounts::AccountLayer::new(budgets.clone())
            .timeout(config.redis_timeout)
            .fail_open(config.rate_limit_fail_open);
        let mut client = UpstreamClient::builder()
            .base_url(upstream_url.clone())
            .timeout(config.request_timeout);
        if let Some(pem) = &config.upstream_ca_pem {
            client = client.add_root_certificates_pem(pem.clone());
        }
        let client = client.build().map_err(|e| {
            if config.upstream_ca_pem.is_some() {
                format!("{e} (UPSTREAM_URL, UPSTREAM_CA_FILE)")
            } else {
                e.to_string()
            }
        })?;
        let mut policy = config.policy.clone();
        admin::restore_policy(&mut policy, &saved.settings);
        let policy_handle = PolicyHandle::new(&policy.layer());
        // The Live API: same upstream, keys, tokens and usage sinks as the REST routes.
        // One set of quotas (one store) for the REST routes and the Live sessions.
        let limits = rate_limits(&config)?;
        let mut live = LiveProxy::builder(upstream_url.clone(), pool.clone())
            .token_store(tokens.clone())
            .client_key_passthrough(config.client_key_passthrough)
            .model_policy(policy_model(
                policy_handle.clone(),
                tower_gemini::policy::CallKind::Live,
            ))
            .usage(ops.usage.clone())
            .max_message_bytes(config.max_body_bytes)
            .connect_timeout(
                config
                    .request_timeout
                    .min(std::time::Duration::from_secs(30)),
            );
        if let Some(pem) = &config.upstream_ca_pem {
            live = live.add_root_certificates_pem(pem.clone());
        }
        if let Some(limits) = &limits {
            live = live.quota(live_quota(limits.clone(), account_layer.clone()));
        }
        let live = live.build().map_err(|e| e.to_string())?;
        {
            let live = live.clone();
            server_stats.on_drain(move || Box::pin(async move { live.close_all().await }));
        }
        let mut builder = Gateway::builder()
            .token_store(tokens.clone())
            .client_key_passthrough(config.client_key_passthrough)
            .max_body_bytes(config.max_body_bytes)
            .max_event_bytes(config.max_event_bytes)
            .max_upload_bytes(config.max_upload_bytes)
            .body_read_timeout(config.client_read_timeout)
            .key_rotation(KeyRotationLayer::new(pool.clone()))
            .usage(ops.usage.clone())
            .stream_resume(
                StreamResumeLayer::new()
                    .max_consecutive_retries(config.max_consecutive_retries)
                    .max_resume_attempts(config.max_resume_attempts)
                    .retry_delay(config.retry_delay)
                    .swallow_thoughts_after_retry(config.swallow_thoughts_after_retry)
                    .idle_timeout(
                        (!config.stream_idle_timeout.is_zero())
                            .then_some(config.stream_idle_timeout),
                    )
                    .retry_unary(true),
            );
        // OpenAI's routes are translated first, so the policy, limits, resume and key pool
        // below see one dialect: Gemini's.
        // A whole (non-streamed) answer may hold an image as large as one stream event may.
        let max_answer = config
            .max_event_bytes
            .max(tower_gemini::openai::DEFAULT_MAX_RESPONSE_BYTES);
        builder = builder.layer(
            OpenAiToGeminiLayer::new()
                .max_body_bytes(config.max_body_bytes)
                .max_response_bytes(max_answer)
                .response_store(response_store(&config).await?)
                .response_ttl(config.responses_ttl)
                .model_resolver(served_model(policy_handle.clone())),
        );
        // Anthropic's Messages API (Claude Code, the Anthropic SDKs) beside it; a Claude
        // model name is served through MODEL_ALIASES, and a 404 for one says so.
        builder = builder.layer(
            AnthropicToGeminiLayer::new()
                .max_body_bytes(config.max_body_bytes)
                .max_response_bytes(max_answer)
                .unknown_model_hint(
                    "map it to a Gemini model in MODEL_ALIASES (e.g. \
                     MODEL_ALIASES=claude-sonnet-4-5=gemini-2.5-pro,claude-haiku-4-5=gemini-2.5-flash), \
                     or ask for a Gemini model by its own name",
                )
                .model_resolver(served_model(policy_handle.clone())),
        );
        // What is left must be a Gemini API path; anything else is a 404 here, in the route's
        // dialect, without spending a key on it.
        builder = builder.layer(tower::layer::layer_fn(known_routes_only));
        // Always mounted (an empty policy passes requests through untouched), so the admin
        // API can switch rules on at run time.
        builder = builder.layer(
            RequestPolicyLayer::from_handle(policy_handle.clone())
                .max_body_bytes(config.max_body_bytes),
        );
        // Files, caches, batches and operations live in the project of the key that made them:
        // later calls naming them go to that key, and each client sees only its own.
        builder = builder.affinity(
            AffinityLayer::new(affinity_store(&config).await?).default_ttl(config.resource_ttl),
        );
        // A client token's models and token budgets, after the policy resolved the model.
        builder = builder.accounts(account_layer);
        if let Some(limits) = limits {
            builder = builder.rate_limit(limits);
        }
        let gateway = builder.build(client);

        let policy = Arc::new(Mutex::new(policy));
        // Admin changes made on other instances (and revocations made while this one was cut
        // off) reach this one through the shared store.
        let fleet = fleet::Fleet::new(
            persist.store.clone(),
            base,
            pool.clone(),
            tokens.clone(),
            policy.clone(),
            policy_handle.clone(),
            config.fleet_sync,
            started_on,
        );
        // The tokens in force: the configured ones, then what the store says over them
        // (created, changed, revoked at run time).
        fleet.apply(&saved);
        fleet.spawn();
        ops.fleet = Some(fleet.clone());
        let shared = Shared {
            demo: demo.is_some(),
            pool: pool.clone(),
            tokens: tokens.clone(),
            started: Instant::now(),
            client_key_passthrough: config.client_key_passthrough,
            policy,
            config_view: Arc::new(config.to_json()),
            policy_handle,
            persist,
            fleet,
            server_stats: server_stats.clone(),
            budgets: ops
                .budgets
                .clone()
                .unwrap_or_else(|| Arc::new(tower_gemini::accounts::MemoryBudgetStore::new())),
        };
        let live_route = {
            let live = live.clone();
            get(move |req: Request| async move { live.upgrade(req).map(axum::body::Body::new) })
        };
        let router = Router::new()
            .route("/health", get(health))
            .route("/health/live", get(liveness))
            .with_state(shared.clone())
            .route(LIVE_PATHS[0], live_route.clone())
            .route(LIVE_PATHS[1], live_route.clone())
            .route(LIVE_PATHS[2], live_route)
            .merge(admin::compat_routes(shared.clone()))
            .merge(ops::routes(shared.clone(), ops.clone()))
            .nest(
                "/admin",
                admin::router(shared.clone())
                    .merge(persist::admin_routes(shared.clone()))
                    .merge(super::views::routes(shared.clone(), ops.clone()))
                    .merge(ops::admin_routes(shared, ops)),
            )
            // The gateway's own routes get what the gateway stack gives the proxied ones: an
            // `x-request-id` (the client's or a minted one) and a line in the access log, so
            // admin changes are logged too. `route_layer`: the fallback has its own.
            .route_layer(tower_gemini::access_log::AccessLogLayer::new())
            .route_layer(tower_gemini::request_id::RequestIdLayer::new())
            // Logs show the route's template, never a token in the path (`DELETE
            // /admin/tokens/{id or token}`).
            .route_layer(axum::middleware::map_request(log_route_template))
            .fallback_service(gateway)
            .layer(axum::middleware::map_request(client_addr));
        let router = match cors(&config.cors_allowed_origins) {
            Some(cors) => router.layer(cors),
            None => router,
        };
        Ok(App {
            router,
            config,
            pool,
            server_stats,
            demo,
            minted_token,
            minted_admin_token,
            live,
        })
    }
}

/// The request policy's rules on a model name alone (no body): aliases resolved,
/// `ALLOWED_MODELS` enforced, with the rules current at the call (admin changes apply).
fn policy_model(
    handle: PolicyHandle,
    kind: tower_gemini::policy::CallKind,
) -> impl Fn(&str) -> Result<String, tower_gemini::ApiError> + Send + Sync + 'static {
    use tower_gemini::policy::Call;
    move |model: &str| {
        let mut call = Call::new(kind, model, None);
        for rule in handle.rules() {
            rule.request(&mut call)?;
        }
        Ok(call.model().to_owned())
    }
}

/// The gateway's rate limits on Live sessions: the opening and each turn go through the same
/// `RateLimitLayer` as a REST call for the session's model would (per client, per IP, per
/// model), a turn with its `usageMetadata` as the answer so its tokens are charged.
fn live_quota(
    limits: RateLimitLayer,
    accounts: tower_gemini::accounts::AccountLayer,
) -> impl Fn(
    tower_gemini::live::QuotaCheck,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tower_gemini::ApiError>> + Send>,
> + Send
+ Sync
+ 'static {
    use tower::{Layer, ServiceExt};
    move |check: tower_gemini::live::QuotaCheck| {
        let answer = check.usage.clone().unwrap_or_else(|| "{}".into());
        // The token's own models and budgets first, as on the REST routes.
        let svc = accounts.layer(limits.layer(tower::service_fn(
            move |_req: http::Request<tower_gemini::Body>| {
                let answer = answer.clone();
                async move {
                    let mut res = http::Response::new(tower_gemini::Body::from(answer));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(res)
                }
            },
        )));
        let mut req = http::Request::new(tower_gemini::Body::empty());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = format!("/v1beta/models/{}:generateContent", check.model)
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/v1beta/models/live:generateContent"));
        if let Some(client) = check.client {
            req.extensions_mut().insert(client);
        }
        if let Some(addr) = check.addr {
            req.extensions_mut().insert(ClientAddr(addr));
        }
        Box::pin(async move {
            let Ok(res) = svc.oneshot(req).await;
            let status = res.status();
            if status.is_success() {
                return Ok(());
            }
            let retry = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            let body = tower_gemini::body::collect_limited(res.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "rate limit exceeded".to_owned());
            if status == http::StatusCode::TOO_MANY_REQUESTS {
                Err(tower_gemini::ApiError::too_many_requests(
                    message,
                    std::time::Duration::from_secs(retry),
                ))
            } else {
                Err(tower_gemini::ApiError::new(status, message))
            }
        })
    }
}

/// The model a name is served by under the request policy's current rules (an alias
/// resolved), for the fronts' per-model translation; a name the policy refuses stays as it is
/// (the policy answers it below).
fn served_model(handle: PolicyHandle) -> impl Fn(&str) -> String + Send + Sync + 'static {
    let policy = policy_model(handle, tower_gemini::policy::CallKind::GenerateContent);
    move |model: &str| policy(model).unwrap_or_else(|_| model.to_owned())
}

/// CORS for browser clients (tower-http's layer, outside everything: a preflight carries no
/// token and is answered here), or `None` without `CORS_ALLOWED_ORIGINS`.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked when the configuration was read.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let headers = [
        "authorization",
        "content-type",
        "x-goog-api-key",
        "x-goog-api-client",
        "x-request-id",
        "x-api-key",
        "anthropic-version",
        "openai-beta",
        "x-goog-upload-protocol",
        "x-goog-upload-command",
        "x-goog-upload-offset",
        "x-goog-upload-header-content-length",
        "x-goog-upload-header-content-type",
    ];
    let exposed = [
        "x-request-id",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-goog-upload-url",
        "x-goog-upload-status",
    ];
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(headers.map(HeaderName::from_static))
            .expose_headers(exposed.map(HeaderName::from_static))
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Answers 404 for paths that are not Gemini API paths (after the OpenAI front has taken its
/// own), so `/foo` or `/v1/nothing` is refused here instead of forwarded on a pool key.
fn known_routes_only(inner: GatewayService) -> GatewayService {
    GatewayService::new(tower::service_fn(
        move |req: http::Request<tower_gemini::Body>| {
            let inner = inner.clone();
            async move {
                if is_gemini_api_path(req.uri().path()) {
                    return tower::ServiceExt::oneshot(inner, req).await;
                }
                let dialect = tower_gemini::error::Dialect::of(&req);
                let msg = format!("no route {} {}", req.method(), req.uri().path());
                Ok(tower_gemini::error::ApiError::not_found(msg).into_response(dialect))
            }
        },
    ))
}

/// Whether `path` is in the Gemini API's namespaces: everything under `/v1beta/`,
/// `/v1alpha/`, `/upload/` and `/download/`, and `/v1/` collections Gemini has.
fn is_gemini_api_path(path: &str) -> bool {
    const V1_COLLECTIONS: [&str; 9] = [
        "models",
        "tunedModels",
        "files",
        "cachedContents",
        "batches",
        "operations",
        "corpora",
        "generatedFiles",
        "fileSearchStores",
    ];
    if ["/v1beta/", "/v1alpha/", "/upload/", "/download/"]
        .iter()
        .any(|p| path.starts_with(p))
    {
        return true;
    }
    path.strip_prefix("/v1/").is_some_and(|rest| {
        let first = rest.split(['/', ':']).next().unwrap_or_default();
        V1_COLLECTIONS.contains(&first)
    })
}

/// Puts the matched route's template (`/admin/tokens/{id}`) in place of the path for logs.
async fn log_route_template(mut req: Request) -> Request {
    if let Some(template) = req.extensions().get::<axum::extract::MatchedPath>() {
        let template = tower_gemini::access_log::LogPath(std::sync::Arc::from(template.as_str()));
        req.extensions_mut().insert(template);
    }
    req
}

/// The key pool for `GEMINI_API_KEYS` (or the demo key), sharing cool-downs and disabled
/// flags through Redis when `REDIS_URL` is set.
async fn build_pool(config: &Config, keys: Vec<ApiKey>) -> Result<Arc<KeyPool>, String> {
    let mut builder = KeyPool::builder()
        .keys(keys)
        .strategy(config.key_strategy)
        .max_failures(config.max_failures)
        .max_transient_failures(config.max_transient_failures)
        .cooldown(config.key_cooldown)
        .reprobe_after(config.key_reprobe)
        // Key health is one view for a fleet: pulled as often as the admin state (off the
        // request path; at most once a second).
        .sync_interval(config.fleet_sync.clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(1),
        ));
    if let Some(redis) = &config.redis {
        let store = redis.connect().await;
        match store.map(tower_gemini::key_rotation::KeyStateRedisStore::from_connection) {
            Ok(store) => {
                let store = store.with_prefix(format!("{}:keys", config.redis_prefix));
                builder = builder.store(Arc::new(store));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "REDIS_URL: cannot reach Redis; key cool-downs stay local to this instance"
            ),
        }
    }
    builder.build().map_err(|e| format!("GEMINI_API_KEYS: {e}"))
}

/// Where token budgets are counted: Redis with `REDIS_URL` (one count for the fleet), else
/// memory (this instance; lost on restart).
async fn budget_store(config: &Config) -> Arc<dyn tower_gemini::accounts::BudgetStore> {
    if let Some(url) = &config.redis_url {
        match tower_gemini::accounts::BudgetRedisStore::connect(url).await {
            Ok(store) => {
                return Arc::new(store.with_prefix(format!("{}:budget", config.redis_prefix)));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "REDIS_URL: cannot reach Redis; token budgets count on this instance only"
            ),
        }
    }
    Arc::new(tower_gemini::accounts::MemoryBudgetStore::new())
}

/// Where resource → key pins live: in Redis with `REDIS_URL` (every instance of a fleet sees
/// them), else next to the admin changes in `DATABASE_PATH` (kept across restarts), else in
/// memory.
async fn affinity_store(config: &Config) -> Result<Arc<dyn AffinityStore>, String> {
    if let Some(redis) = &config.redis {
        match redis
            .connect()
            .await
            .map(AffinityRedisStore::from_connection)
        {
            Ok(store) => {
                let store = store.with_prefix(format!("{}:affinity", config.redis_prefix));
                return Ok(Arc::new(store));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "REDIS_URL: cannot reach Redis; resource pins stay local to this instance"
            ),
        }
    }
    match &config.persist.database_path {
        Some(path) => AffinitySqliteStore::open(path)
            .map(|s| Arc::new(s) as Arc<dyn AffinityStore>)
            .map_err(|e| format!("DATABASE_PATH: `{}`: {e}", path.display())),
        None => Ok(Arc::new(MemoryAffinityStore::new())),
    }
}

/// Where `/v1/responses` keeps stored responses, chosen as the resource pins are: Redis with
/// `REDIS_URL` (any instance continues any response), else `DATABASE_PATH`, else memory.
async fn response_store(config: &Config) -> Result<Arc<dyn ResponseStore>, String> {
    if let Some(redis) = &config.redis {
        match redis
            .connect()
            .await
            .map(ResponseRedisStore::from_connection)
        {
            Ok(store) => {
                let store = store.with_prefix(format!("{}:responses", config.redis_prefix));
                return Ok(Arc::new(store));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "REDIS_URL: cannot reach Redis; stored responses stay local to this instance"
            ),
        }
    }
    match &config.persist.database_path {
        Some(path) => ResponseSqliteStore::open(path)
            .map(|s| Arc::new(s) as Arc<dyn ResponseStore>)
            .map_err(|e| format!("DATABASE_PATH: `{}`: {e}", path.display())),
        None => Ok(Arc::new(MemoryResponseStore::new())),
    }
}

/// The rate limits the configuration asks for; `None` when every limit is off.
fn rate_limits(config: &Config) -> Result<Option<RateLimitLayer>, String> {
    let mut rules = Vec::new();
    if let Some(n) = config.max_requests_per_minute {
        rules.push(Rule::per_client().requests_per_minute(n));
    }
    if let Some(n) = config.max_requests_per_day_per_ip {
        rules.push(Rule::per_ip().requests_per_day(n));
    }
    if let Some(limits) = &config.model_limits {
        rules.extend(limits.rules());
    }
    // Mounted even without a global limit: a client token's own `rpm`/`tpm`/`rpd` (its
    // account) are enforced here too. A request with no quota to check passes straight on.
    let mut builder = RateLimitLayer::builder()
        .rules(rules)
        .trusted_proxies(config.trusted_proxies.iter().cloned())
        .fail_open(config.rate_limit_fail_open);
    if !config.trusted_proxies.is_empty() {
        builder = builder.forwarded_header("x-forwarded-for");
    }
    if let Some(redis) = &config.redis {
        let store = tower_gemini::rate_limit::RateLimitRedisStore::from_config(redis)
            .key_prefix(format!("{}:rl:", config.redis_prefix))
            .timeout(config.redis_timeout);
        builder = builder.store(store);
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}

/// Hands the connection's peer address to per-IP rate limits.
async fn client_addr(mut req: Request) -> Request {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(ClientAddr(addr));
    }
    req
}

/// `GET /health/live`: liveness, 200 as long as the process serves requests at all.
async fn liveness() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "live" }))
}

/// `GET /health`: readiness. 200 while the gateway takes requests (`"degraded"` when no key is
/// usable: it still answers every client, with a clear 429 or 503); 503 `"draining"` once
/// shutdown began, so a load balancer still probing sends no new requests.
async fn health(State(s): State<Shared>) -> axum::response::Response {
    let draining = s.server_stats.is_draining();
    let usable = s.pool.usable_count();
    let mode = if s.demo {
        "demo"
    } else if s.client_key_passthrough {
        "client_key_passthrough"
    } else {
        "upstream"
    };
    let status = if draining {
        "draining"
    } else if usable > 0 || s.client_key_passthrough {
        // In own-key mode the clients bring the keys: no pool key is needed to serve.
        "ok"
    } else {
        "degraded"
    };
    let code = if draining {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    let body = axum::Json(serde_json::json!({
        "status": status,
        "mode": mode,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "keys": { "total": s.pool.len(), "usable": usable },
        "available_keys": usable,
        // Milliseconds since the shared admin state (a fleet's Redis) last answered.
        "fleet_sync_age_ms": s.fleet.age_ms(),
    }));
    (code, body).into_response()
}
