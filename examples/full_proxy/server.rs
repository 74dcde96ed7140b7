//! The HTTP server: hyper's HTTP/1.1 and cleartext HTTP/2 connections with the limits that
//! keep slow and hostile clients from holding the gateway, and graceful shutdown.
//!
//! - The protocol is told by peeking at the first bytes for the HTTP/2 preface, so hyper
//!   reads the request from the socket itself. HTTP/1.1 connections are served with upgrades,
//!   for the Live API's WebSocket; an upgraded connection leaves hyper's graceful shutdown, so
//!   what runs on it registers a drain hook ([`ServerStats::on_drain`]). (hyper-util's `auto` builder reads the first
//!   bytes into its own buffer and replays them, which makes hyper's read buffer grow to
//!   16 KiB on the first request: about 10 KiB more per open connection, `BENCHMARKS.md`.)
//! - A connection that does not send its request headers within `header_read_timeout` is
//!   closed (slowloris); request bodies are bounded by the gateway's body read timeout.
//! - At most `max_connections` connections are served at once; past that, new connections get
//!   one `503` with a JSON error and are closed, so load is shed rather than queued.
//! - On shutdown, listening stops at once, in-flight requests and streams run on for `grace`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_gemini::error::{ApiError, Dialect};

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
}

/// What the server has seen, for `/status` and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Connections closed because their request headers were too slow.
    pub slow_clients_closed: AtomicU64,
    /// Connections answered 503 because `max_connections` were open.
    pub connections_shed: AtomicU64,
    /// What must end before the server stops, started when shutdown begins.
    drain_hooks: DrainHooks,
    /// Shutdown began: readiness answers 503 from now on.
    draining: std::sync::atomic::AtomicBool,
}

/// A future to await when the server drains.
pub type Drain = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct DrainHooks(Mutex<Vec<Box<dyn FnOnce() -> Drain + Send>>>);

impl std::fmt::Debug for DrainHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |h| h.len());
        f.debug_struct("DrainHooks").field("hooks", &n).finish()
    }
}

impl ServerStats {
    /// Runs `hook` when shutdown begins; the server waits for its future (within the grace
    /// period) as it waits for in-flight requests. For work on upgraded connections, which
    /// hyper's graceful shutdown no longer sees: the Live API's sessions.
    pub fn on_drain(&self, hook: impl FnOnce() -> Drain + Send + 'static) {
        self.drain_hooks
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Whether shutdown began (in-flight requests and streams are finishing).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn take_drain_hooks(&self) -> Vec<Box<dyn FnOnce() -> Drain + Send>> {
        std::mem::take(&mut *self.drain_hooks.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains for `limits.grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    // A semaphore holds at most MAX_PERMITS; more connections than that is no limit at all.
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builders = Arc::new((h1, h2));
    // Each HTTP/1.1 connection holds a clone until it ends: the server waits for them all.
    let (open_tx, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    // Tells connections still waiting for their first bytes that the server is stopping.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.connections_shed.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(shed(TokioIo::new(stream), limits.header_read_timeout));
            continue;
        };
        let svc = router
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let svc = TowerToHyperService::new(svc);
        let watcher = graceful.watcher();
        let open = open_tx.clone();
        let builders = builders.clone();
        let mut stopping = stopping.clone();
        let stats = stats.clone();
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _open = open;
            let started = tokio::time::Instant::now();
            let sniffed = tokio::select! {
                sniffed = sniff(&stream, limits.header_read_timeout) => sniffed,
                // Nothing sent yet: nothing to finish, so the connection just closes.
                _ = stopping.wait_for(|stop| *stop) => Err(Sniff::Stopping),
            };
            let served = match sniffed {
                Ok(Protocol::Http1) => {
                    // The header timeout covers the wait for the first bytes too, so a slow
                    // client has `header_read_timeout` in all, not twice that.
                    let left = limits
                        .header_read_timeout
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_millis(1));
                    let mut h1 = builders.0.clone();
                    h1.header_read_timeout(left);
                    // Upgrades: the Live API's WebSocket. hyper-util's graceful watcher does
                    // not take an upgradeable connection, so shutdown is told to it here, and
                    // `_open` tells the server when it has ended.
                    drop(watcher);
                    let conn = h1
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        served = conn.as_mut() => served,
                        () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
                Ok(Protocol::Http2) => {
                    let conn = builders.1.serve_connection(TokioIo::new(stream), svc);
                    watcher.watch(conn).await
                }
                Err(Sniff::TooSlow) => {
                    stats.slow_clients_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, "closed a connection too slow to send its request headers");
                    Ok(())
                }
                Err(Sniff::Io(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended before a request");
                    Ok(())
                }
                Err(Sniff::Stopping) => Ok(()),
            };
            if let Err(e) = served {
                if is_header_timeout(&e) {
                    stats.slow_clients_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, "closed a connection too slow to send its request headers");
                } else {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            stats.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }

    stats.draining.store(true, Ordering::Relaxed);
    drop(listener);
    let _ = stopping_tx.send(true);
    let mut drains = tokio::task::JoinSet::new();
    for hook in stats.take_drain_hooks() {
        drains.spawn(hook());
    }
    drop(open_tx);
    let finished = async {
        graceful.shutdown().await;
        let _ = all_closed.recv().await;
        while drains.join_next().await.is_some() {}
    };
    tokio::select! {
        () = finished => tracing::info!("every connection finished"),
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!("grace period over; closing the connections still open");
        }
    }
}

/// The protocol a connection speaks.
enum Protocol {
    Http1,
    Http2,
}

/// Why a connection's protocol could not be told.
enum Sniff {
    /// No decisive byte within the header read timeout.
    TooSlow,
    /// The socket failed.
    Io(std::io::Error),
    /// The server is shutting down.
    Stopping,
}

/// Tells HTTP/2 with prior knowledge from HTTP/1.1 by peeking, so the bytes stay in the
/// socket for hyper. The HTTP/2 preface begins with `PRI`, a method HTTP/1.1 reserves for just
/// this, so three bytes decide (hyper's HTTP/2 side checks the rest of the preface), and one
/// byte that differs from `PRI` decides HTTP/1.1. A connection that closes before sending
/// anything goes to HTTP/1.1, which ends it quietly.
async fn sniff(stream: &TcpStream, within: Duration) -> Result<Protocol, Sniff> {
    const PRI: &[u8; 3] = b"PRI";
    let decide = async {
        let mut buf = [0u8; 3];
        let mut pause = Duration::from_millis(2);
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 || buf[..n] != PRI[..n] {
                return Ok(Protocol::Http1);
            }
            if n == PRI.len() {
                return Ok(Protocol::Http2);
            }
            // One or two bytes of `PRI` so far: peeking again at once would return the same
            // bytes, so wait for the rest, longer each time.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    };
    match tokio::time::timeout(within, decide).await {
        Ok(decided) => decided.map_err(Sniff::Io),
        Err(_) => Err(Sniff::TooSlow),
    }
}

/// Answers one request on an over-limit connection with 503 and closes it.
async fn shed(io: TokioIo<tokio::net::TcpStream>, header_read_timeout: Duration) {
    let svc = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
        let res =
            ApiError::service_unavailable("the gateway is at its connection limit; retry shortly")
                .with_retry_after(Duration::from_secs(1))
                .into_response(Dialect::Gemini);
        Ok::<_, Infallible>(res)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(false)
        .serve_connection(io, svc);
    let _ = tokio::time::timeout(header_read_timeout + Duration::from_secs(1), conn).await;
}

/// Whether a connection error is hyper's header read timeout.
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
