//! Shared test support: tracing, full_proxy's app served on a loopback port, and the small
//! request/response helpers the test files share.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;

// full_proxy's modules, compiled once in the `full-proxy` crate.
#[allow(unused_imports, reason = "each test file uses its own few of them")]
pub use full_proxy::{admin, app, config, ops, persist, server};

pub mod redis_servers;

pub use app::App;
pub use config::Config;

/// Installs a test-writer tracing subscriber once (logs show with `--nocapture`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// A full_proxy serving on `127.0.0.1:0` until dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub app_config: Config,
    pub token: String,
    pub admin_token: String,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub demo: Option<tower_gemini::testing::FakeGemini>,
    pub pool: std::sync::Arc<tower_gemini::key_rotation::KeyPool>,
    pub server_stats: std::sync::Arc<server::ServerStats>,
}

impl Proxy {
    /// Starts full_proxy with these variables (plus a client and an admin token).
    pub async fn start(vars: &[(&str, &str)]) -> Proxy {
        let mut vars = vars.to_vec();
        if !vars.iter().any(|(k, _)| *k == "ALLOWED_TOKENS") {
            vars.push(("ALLOWED_TOKENS", "test-client-token-1"));
        }
        if !vars.iter().any(|(k, _)| *k == "ADMIN_TOKEN") {
            vars.push(("ADMIN_TOKEN", "test-admin-token-1"));
        }
        Proxy::start_exact(&vars).await
    }

    /// Starts full_proxy with exactly these variables (and `LISTEN_ADDR`); `token` and
    /// `admin_token` are the configured ones or, when unset, the minted ones (`token` is empty
    /// in own-key mode without `ALLOWED_TOKENS`).
    pub async fn start_exact(vars: &[(&str, &str)]) -> Proxy {
        init_tracing();
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
        env.remove("PORT");
        let config = Config::from_map(&env).expect("valid test config");
        let app = App::build(config.clone()).await.expect("app builds");
        let token = config
            .allowed_tokens
            .first()
            .cloned()
            .or_else(|| app.minted_token.clone())
            .unwrap_or_default();
        let admin_token = config
            .admin_token
            .clone()
            .or_else(|| app.minted_admin_token.clone())
            .unwrap_or_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app.router.clone();
        let limits = server::Limits {
            header_read_timeout: config.client_read_timeout,
            max_connections: config.max_connections,
            grace: config.shutdown_grace,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stats = app.server_stats.clone();
        let task = tokio::spawn(async move {
            server::serve(listener, router, limits, stats, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Proxy {
            addr,
            app_config: config,
            token,
            admin_token,
            task,
            stop: Some(stop),
            demo: app.demo,
            pool: app.pool,
            server_stats: app.server_stats,
        }
    }

    /// Begins a graceful shutdown (like SIGTERM); the returned handle ends when the server has
    /// drained or the grace period is over.
    pub fn shutdown(&mut self) -> &mut tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        &mut self.task
    }

    /// Stops this proxy (gracefully, for at most 5 s) and starts a new one with `vars`, as a
    /// restart of the process would (same `DATABASE_PATH`, same Redis).
    pub async fn restart(mut self, vars: &[(&str, &str)]) -> Proxy {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.shutdown()).await;
        drop(self);
        Proxy::start(vars).await
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tiny HTTP client over loopback (hyper-util, HTTP/1.1).
pub fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tower_gemini::Body,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One request to `proxy` over loopback through an `UpstreamClient`.
pub async fn send(proxy: &Proxy, req: Request<Body>) -> Response<Body> {
    UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap()
}

/// A `GET path`, with `Authorization: Bearer <token>` when a token is given.
pub fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

/// Status and body text (lossy UTF-8) of a response.
pub async fn status_and_text(res: Response<Body>) -> (StatusCode, String) {
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The Redis to test against, or `None` (after saying why) when there is none.
pub async fn redis_url() -> Option<String> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("skipping: no redis at REDIS_URL (unset)");
        return None;
    };
    let reachable = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(1), reachable).await {
        Ok(Some(_)) => Some(url),
        _ => {
            println!("skipping: no redis at {url}");
            None
        }
    }
}

/// Log output captured in memory: a `tracing_subscriber` writer (clones share one buffer).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures every log line of this thread (every level, no ANSI colours) until the guard
    /// is dropped.
    pub fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        Captured::start_at(tracing::Level::TRACE)
    }

    /// Like [`start`](Self::start), from `level` up (`INFO` is full_proxy's default).
    pub fn start_at(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything captured so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
