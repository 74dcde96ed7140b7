//! Builds full_proxy from its [`Config`]: the upstream (real or demo), the layer stack and the
//! router with the few routes of its own (`/health`).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use tower_gemini::auth::{MemoryTokenStore, mint_token};
use tower_gemini::client::UpstreamClient;
use tower_gemini::gateway::Gateway;
use tower_gemini::secret::ApiKey;
use tower_gemini::testing::FakeGemini;

use super::config::Config;

/// A built gateway, ready to serve.
pub struct App {
    pub router: Router,
    pub config: Config,
    /// The in-process fake upstream in demo mode (kept alive as long as the app).
    pub demo: Option<FakeGemini>,
    /// Client tokens minted because `ALLOWED_TOKENS` was unset (print them once).
    pub minted_token: Option<String>,
    /// The admin token minted because `ADMIN_TOKEN` was unset.
    pub minted_admin_token: Option<String>,
}

#[derive(Clone)]
struct Shared {
    demo: bool,
    keys: usize,
    started: Instant,
}

impl App {
    /// Builds the gateway. Never touches the network: keys are not probed at start.
    pub async fn build(config: Config) -> Result<App, String> {
        let (upstream_url, keys, demo) = if config.is_demo() {
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
            let keys = config.gemini_api_keys.iter().map(ApiKey::new).collect();
            (config.upstream_url.clone(), keys, None)
        };

        let tokens = Arc::new(MemoryTokenStore::new());
        let minted_token = if config.allowed_tokens.is_empty() {
            let t = mint_token("sk-");
            tokens.insert(&t, "minted", false);
            Some(t)
        } else {
            for (i, t) in config.allowed_tokens.iter().enumerate() {
                tokens.insert(t, format!("client-{}", i + 1), false);
            }
            None
        };
        let minted_admin_token = match &config.admin_token {
            Some(t) => {
                tokens.insert(t, "admin", true);
                None
            }
            None => {
                let t = mint_token("sk-admin-");
                tokens.insert(&t, "admin", true);
                Some(t)
            }
        };

        let client = UpstreamClient::builder()
            .base_url(upstream_url)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mut builder = Gateway::builder()
            .token_store(tokens.clone())
            .max_body_bytes(config.max_body_bytes);
        // Until key rotation lands, the first key serves every request.
        if let Some(first) = keys.first() {
            builder = builder.upstream_key(first.clone());
        }
        let gateway = builder.build(client);

        let shared = Shared {
            demo: demo.is_some(),
            keys: keys.len(),
            started: Instant::now(),
        };
        let router = Router::new()
            .route("/health", get(health))
            .with_state(shared)
            .fallback_service(gateway);
        Ok(App {
            router,
            config,
            demo,
            minted_token,
            minted_admin_token,
        })
    }
}

async fn health(State(s): State<Shared>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "mode": if s.demo { "demo" } else { "upstream" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "keys": { "total": s.keys, "usable": s.keys },
        "available_keys": s.keys,
    }))
}
