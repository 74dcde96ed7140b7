//! full_proxy: a complete Gemini gateway built from tower-gemini's layers.
//!
//! Run it with `cargo run --example full_proxy`. Everything is configured by environment
//! variables (and a `.env` file in the working directory): see README's configuration table.
//! With no `GEMINI_API_KEYS` it starts in demo mode against the built-in fake Gemini; with no
//! `ALLOWED_TOKENS` it mints a client token and prints a ready curl line.

use std::process::ExitCode;

use full_proxy::app::App;
use full_proxy::config::{Config, LogFormat};
use full_proxy::{ops, server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("full_proxy: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = match init_tracing(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("full_proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // App::build logs the old-style variable names (API_KEYS, PASSWORD, ...) once each.
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("full_proxy: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match TcpListener::bind(app.config.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "full_proxy: cannot listen on {}: {e}",
                app.config.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(app.config.listen_addr);
    print_banner(&app, addr);
    serve(listener, app).await
}

/// Logs to stdout and, with `LOG_DIR`, to rotated files; the guard flushes the files on exit.
fn init_tracing(
    config: &Config,
) -> Result<Option<tracing_appender::non_blocking::WorkerGuard>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let stdout = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let stdout = match config.log_format {
        LogFormat::Json => stdout.json().boxed(),
        LogFormat::Text => stdout.boxed(),
    };
    let (file, guard) = match ops::log_writer(&config.ops)? {
        Some((writer, guard)) => {
            let file = tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(writer);
            let file = match config.log_format {
                LogFormat::Json => file.json().boxed(),
                LogFormat::Text => file.boxed(),
            };
            (Some(file), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stdout)
        .with(file)
        .init();
    Ok(guard)
}

fn print_banner(app: &App, addr: std::net::SocketAddr) {
    let base = format!("http://{addr}");
    if app.demo.is_some() {
        eprintln!();
        eprintln!(
            "================================================================================"
        );
        eprintln!("  DEMO MODE: GEMINI_API_KEYS is not set.");
        eprintln!("  Answers come from the built-in FakeGemini, NOT from Google.");
        eprintln!("  Set GEMINI_API_KEYS=key1,key2 to proxy the real Gemini API.");
        eprintln!(
            "================================================================================"
        );
    }
    if app.config.client_key_passthrough {
        eprintln!();
        eprintln!(
            "================================================================================"
        );
        eprintln!("  OWN-KEY MODE: CLIENT_KEY_PASSTHROUGH=true.");
        if app.config.allowed_tokens.is_empty() {
            eprintln!("  Every client credential is taken as the client's own Gemini key and sent");
            eprintln!("  upstream for that request only (never pooled, stored or logged).");
        } else {
            eprintln!("  Requests with a token of ALLOWED_TOKENS use GEMINI_API_KEYS; any other");
            eprintln!(
                "  credential is taken as the client's own Gemini key, sent upstream for that"
            );
            eprintln!("  request only (never pooled, stored or logged).");
        }
        eprintln!("  Anyone who can reach this port can use it with their own key.");
        eprintln!(
            "================================================================================"
        );
        eprintln!("Try it:");
        eprintln!(
            "  curl -H \"x-goog-api-key: $GEMINI_API_KEY\" {base}/v1beta/models/gemini-2.5-flash:generateContent \\\n       -d '{{\"contents\":[{{\"parts\":[{{\"text\":\"hi\"}}]}}]}}'"
        );
    }
    if let Some(t) = &app.minted_token {
        eprintln!();
        eprintln!("ALLOWED_TOKENS is not set; minted a client token for this run:");
        eprintln!("  {t}");
        eprintln!("Try it:");
        eprintln!(
            "  curl -H \"Authorization: Bearer {t}\" {base}/v1beta/models/gemini-2.5-flash:generateContent \\\n       -d '{{\"contents\":[{{\"parts\":[{{\"text\":\"hi\"}}]}}]}}'"
        );
    }
    if let Some(t) = &app.minted_admin_token {
        eprintln!();
        eprintln!("ADMIN_TOKEN is not set; minted an admin token for this run:");
        eprintln!("  {t}");
    }
    eprintln!();
    tracing::info!(
        %addr,
        demo = app.demo.is_some(),
        keys = app.pool.len(),
        client_key_passthrough = app.config.client_key_passthrough,
        strategy = app.config.key_strategy.as_str(),
        "full_proxy listening on {base}"
    );
}

async fn serve(listener: TcpListener, app: App) -> ExitCode {
    let limits = server::Limits {
        header_read_timeout: app.config.client_read_timeout,
        max_connections: app.config.max_connections,
        grace: app.config.shutdown_grace,
    };
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!(
            grace_seconds = limits.grace.as_secs(),
            "shutting down: finishing in-flight requests"
        );
    };
    server::serve(listener, app.router, limits, app.server_stats, shutdown).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
