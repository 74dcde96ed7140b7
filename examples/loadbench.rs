//! loadbench: the gateway against calling the upstream directly, in one process, in one run.
//!
//! `cargo run --release --example loadbench` (about 3½ minutes; `-- --smoke` or
//! `LOADBENCH_SMOKE=1` for a few-second run that CI uses to keep it compiling and working).
//! For A/B runs: `LOADBENCH_SCENARIOS=generate,stream` (also `chat`, `chat_stream`) runs only
//! those, `LOADBENCH_MAX_ONLY=1` only the closed loop, `LOADBENCH_ALLOCS_ONLY=1` only the
//! allocation counts (no load; seconds, e.g. under `heaptrack`), and
//! `LOADBENCH_ENV="LOG_LEVEL=warn;K="` changes the gateway's variables (an empty value removes
//! one).
//!
//! It starts a fast mock Gemini (pre-serialized answers: `:generateContent`, a 20-event
//! `:streamGenerateContent?alt=sse`, the models list, a stream that stays open, a 10 MB stream),
//! then full_proxy exactly as `examples/full_proxy` builds it (`App::build` from a `Config`, 3
//! upstream keys, every layer on, a rate limit too high to trigger, access log formatted into
//! a sink), served by full_proxy's own server on `127.0.0.1:0`, and a bare forwarder (hyper's
//! HTTP/1 server handing each request to a pooled hyper-util client, no layers): the floor any
//! proxy that terminates HTTP on both sides pays on this machine.
//!
//! Load: open loop at 500, 1,000 and 2,000 requests per second, then a closed loop for the
//! maximum throughput, straight at the mock, through the bare forwarder and through the gateway, for
//! `generateContent`, `streamGenerateContent` and OpenAI chat (plain and streamed; reported
//! "not available" while `/v1/chat/completions` answers 404). The open loop corrects for
//! coordinated omission: a pacer thread releases request *i* at `start + i / rate` whatever
//! earlier requests are doing, and every latency is measured from that scheduled time.
//!
//! Reported: p50/p90/p99/p99.9 latency and the gateway's overhead at each percentile, max
//! throughput and its ratio to direct, CPU time, read/write system calls and context switches
//! per request, heap allocation calls and bytes per request (1,000 sequential requests per
//! path with the counting allocator on), time to first byte and the added
//! cost per chunk on streams, resident memory idle, under load, per open idle stream (1,000
//! held open) and while a 10 MB stream relays. The markdown table is printed and written with
//! the JSON to `${CARGO_TARGET_DIR:-target}/loadbench.{md,json}`.
//!
//! Memory is this process's RSS: it holds the mock and the load generator too, so "idle" is
//! reported both whole and as the growth when the gateway was built. Idle streams are also
//! measured as live heap (a counting allocator), which RSS's reuse of freed pages cannot show.

#![allow(unreachable_pub, missing_docs, dead_code)]

// full_proxy itself, the one build its example and the tests use.
use full_proxy::{app, config, server};

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::config::Config;

const CLIENT_TOKEN: &str = "loadbench-client-token-0001";
const STREAM_EVENTS: usize = 20;
/// Requests in flight at most in the open loop (a queue beyond this still counts its wait).
const MAX_IN_FLIGHT: usize = 512;
/// Connections of the closed loop.
const CLOSED_CONCURRENCY: usize = 32;

// === Settings ===

#[derive(Clone, Debug)]
struct Settings {
    smoke: bool,
    rates: Vec<u32>,
    open_secs: f64,
    closed_secs: f64,
    warmup_secs: f64,
    /// Direct and gateway alternate this many times per measurement.
    rounds: u32,
    held_streams: usize,
    big_stream_bytes: usize,
    /// Sequential requests per path whose allocations are counted.
    alloc_requests: usize,
    /// Count allocations only, no load runs.
    allocs_only: bool,
}

impl Settings {
    fn from_env() -> Self {
        let smoke = std::env::args().any(|a| a == "--smoke")
            || std::env::var("LOADBENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut s = Self::preset(smoke);
        // `LOADBENCH_ALLOCS_ONLY=1` counts allocations per request and runs no load (a few idle
        // streams only), e.g. under `heaptrack`.
        if std::env::var("LOADBENCH_ALLOCS_ONLY").is_ok_and(|v| v == "1") {
            s.allocs_only = true;
            s.held_streams = s.held_streams.min(10);
        }
        s
    }

    fn preset(smoke: bool) -> Self {
        if smoke {
            Settings {
                smoke,
                rates: vec![200],
                open_secs: 0.3,
                closed_secs: 0.3,
                warmup_secs: 0.1,
                rounds: 1,
                held_streams: 50,
                big_stream_bytes: 1 << 20,
                alloc_requests: 20,
                allocs_only: false,
            }
        } else {
            Settings {
                smoke,
                rates: vec![500, 1_000, 2_000],
                open_secs: 4.0,
                closed_secs: 3.0,
                warmup_secs: 0.3,
                rounds: 4,
                held_streams: 1_000,
                big_stream_bytes: 10 << 20,
                alloc_requests: 1_000,
                allocs_only: false,
            }
        }
    }
}

// === Memory and CPU of this process ===

/// The system allocator, counting live heap bytes while `HEAP_COUNTING` is on. RSS alone
/// cannot say what 1,000 idle streams hold: freed memory is reused, so whichever path is
/// measured second reads low. Counting is off during the load runs (one relaxed load per
/// allocation then) so the throughput numbers do not pay for it.
struct CountingAlloc;

static HEAP_COUNTING: AtomicBool = AtomicBool::new(false);
static HEAP_LIVE: AtomicI64 = AtomicI64::new(0);
/// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) while `HEAP_COUNTING` is on.
static HEAP_CALLS: AtomicU64 = AtomicU64::new(0);
/// Bytes asked for by those calls.
static HEAP_ASKED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if HEAP_COUNTING.load(Ordering::Relaxed) {
            HEAP_LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
            count_call(layout.size());
        }
        // SAFETY: the caller's contract is `System.alloc`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if HEAP_COUNTING.load(Ordering::Relaxed) {
            HEAP_LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is `System.dealloc`'s.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if HEAP_COUNTING.load(Ordering::Relaxed) {
            HEAP_LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
            count_call(layout.size());
        }
        // SAFETY: the caller's contract is `System.alloc_zeroed`'s.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if HEAP_COUNTING.load(Ordering::Relaxed) {
            HEAP_LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            count_call(new_size);
        }
        // SAFETY: the caller's contract is `System.realloc`'s.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn count_call(size: usize) {
    HEAP_CALLS.fetch_add(1, Ordering::Relaxed);
    HEAP_ASKED.fetch_add(size as u64, Ordering::Relaxed);
}

/// Heap allocation calls and bytes per request, for the whole process (client, mock, path).
#[derive(Clone, Copy, Debug, Default)]
struct AllocCount {
    calls: f64,
    bytes: f64,
}

/// Sends `n` requests one after another on one connection with allocation counting on (after
/// a few uncounted ones to fill pools). Unlike time, the count barely moves between runs, so
/// it shows small changes to the request path that the noisy machine hides.
fn alloc_count(rt: &Runtime, client: &HttpClient, target: &Target, n: usize) -> AllocCount {
    rt.block_on(async {
        for _ in 0..20 {
            let _ = one(client, target, Instant::now()).await;
        }
        HEAP_CALLS.store(0, Ordering::Relaxed);
        HEAP_ASKED.store(0, Ordering::Relaxed);
        HEAP_COUNTING.store(true, Ordering::Relaxed);
        for _ in 0..n {
            let _ = one(client, target, Instant::now()).await;
        }
        HEAP_COUNTING.store(false, Ordering::Relaxed);
    });
    let n = n.max(1) as f64;
    AllocCount {
        calls: HEAP_CALLS.load(Ordering::Relaxed) as f64 / n,
        bytes: HEAP_ASKED.load(Ordering::Relaxed) as f64 / n,
    }
}

/// Resident set size in bytes (`/proc/self/statm`, resident pages × 4 KiB pages).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// User + system CPU time of this process (`/proc/self/stat`, clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15; `rest` starts at field 3.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Kernel work of this process: read-like + write-like system calls (`/proc/self/io`) and
/// context switches of all its threads (`/proc/self/task/*/status`).
#[derive(Clone, Copy, Debug, Default)]
struct KernelCounts {
    syscalls: u64,
    switches: u64,
}

impl KernelCounts {
    /// The counts since `earlier`.
    fn since(self, earlier: KernelCounts) -> KernelCounts {
        KernelCounts {
            syscalls: self.syscalls.saturating_sub(earlier.syscalls),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }

    fn add(&mut self, other: KernelCounts) {
        self.syscalls += other.syscalls;
        self.switches += other.switches;
    }
}

/// This process's kernel work so far.
fn kernel_counts() -> KernelCounts {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    };
    let syscalls = field(&io, "syscr:") + field(&io, "syscw:");
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            switches += field(&status, "voluntary_ctxt_switches:")
                + field(&status, "nonvoluntary_ctxt_switches:");
        }
    }
    KernelCounts { syscalls, switches }
}

/// Samples RSS every 20 ms and keeps the peak since the last reset.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { peak, stop }
    }

    fn reset(&self) {
        self.peak.store(rss_bytes(), Ordering::Relaxed);
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(rss_bytes())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// === The mock upstream ===

/// Pre-serialized answers.
struct MockData {
    unary: Bytes,
    events: Vec<Bytes>,
    models: Bytes,
    not_found: Bytes,
    big_event: Bytes,
    big_last: Bytes,
    big_events: usize,
    /// Held streams end when this turns true.
    release: tokio::sync::watch::Receiver<bool>,
}

fn text_of(i: usize) -> String {
    format!("Word {i} of a mock answer, with a little more text to look like a real chunk. ")
}

fn mock_data(big_stream_bytes: usize, release: tokio::sync::watch::Receiver<bool>) -> MockData {
    let unary = json!({
        "candidates": [{
            "content": {"parts": [{"text": (0..4).map(text_of).collect::<String>()}], "role": "model"},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 64, "totalTokenCount": 72},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mock-unary"
    });
    let events = (0..STREAM_EVENTS)
        .map(|i| {
            let mut c = json!({
                "content": {"parts": [{"text": text_of(i)}], "role": "model"},
                "index": 0
            });
            let mut v = json!({"modelVersion": "gemini-2.5-flash", "responseId": "mock-stream"});
            if i + 1 == STREAM_EVENTS {
                c["finishReason"] = "STOP".into();
                v["usageMetadata"] = json!({"promptTokenCount": 8, "candidatesTokenCount": 320, "totalTokenCount": 328});
            }
            v["candidates"] = json!([c]);
            Bytes::from(format!("data: {v}\r\n\r\n"))
        })
        .collect();
    let names = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"];
    let list: Vec<Value> = names
        .iter()
        .map(|m| {
            json!({
                "name": format!("models/{m}"),
                "displayName": m,
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"]
            })
        })
        .collect();
    let models = json!({ "models": list });
    let not_found = json!({"error": {"code": 404, "message": "no such route on the mock", "status": "NOT_FOUND"}});
    let big_chunk = 10 * 1024;
    let big = |finish: bool| {
        let mut c = json!({
            "content": {"parts": [{"text": "x".repeat(big_chunk)}], "role": "model"},
            "index": 0
        });
        if finish {
            c["finishReason"] = "STOP".into();
        }
        Bytes::from(format!("data: {}\r\n\r\n", json!({"candidates": [c]})))
    };
    MockData {
        unary: Bytes::from(unary.to_string()),
        events,
        models: Bytes::from(models.to_string()),
        not_found: Bytes::from(not_found.to_string()),
        big_event: big(false),
        big_last: big(true),
        big_events: (big_stream_bytes / big_chunk).max(1),
        release,
    }
}

/// The mock's response body: pre-made frames, optionally held open until released.
struct MockBody {
    frames: Vec<Bytes>,
    next: usize,
    /// A 10 MB stream: `n` copies of one event, then the last.
    repeat: Option<(Bytes, Bytes, usize)>,
    hold: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl MockBody {
    fn full(b: Bytes) -> Self {
        MockBody {
            frames: vec![b],
            next: 0,
            repeat: None,
            hold: None,
        }
    }
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some((event, last, n)) = &mut this.repeat {
            return Poll::Ready(match *n {
                0 => None,
                1 => {
                    *n = 0;
                    Some(Ok(Frame::data(last.clone())))
                }
                _ => {
                    *n -= 1;
                    Some(Ok(Frame::data(event.clone())))
                }
            });
        }
        if let Some(b) = this.frames.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(b.clone()))));
        }
        match &mut this.hold {
            Some(wait) => wait.as_mut().poll(cx).map(|()| None),
            None => Poll::Ready(None),
        }
    }
}

async fn mock_answer(
    req: Request<Incoming>,
    data: Arc<MockData>,
) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path().to_owned();
    // Read the request body so the connection is reused.
    let _ = req.into_body().collect().await;
    let json = |status: StatusCode, body: MockBody| {
        let mut res = Response::new(body);
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        res
    };
    let sse = |body: MockBody| {
        let mut res = Response::new(body);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        res
    };
    let res = if path == "/v1beta/models" {
        json(StatusCode::OK, MockBody::full(data.models.clone()))
    } else if path.ends_with(":generateContent") {
        json(StatusCode::OK, MockBody::full(data.unary.clone()))
    } else if path.ends_with("gemini-hold:streamGenerateContent") {
        let mut release = data.release.clone();
        sse(MockBody {
            frames: vec![data.events[0].clone()],
            next: 0,
            repeat: None,
            hold: Some(Box::pin(async move {
                let _ = release.wait_for(|r| *r).await;
            })),
        })
    } else if path.ends_with("gemini-big:streamGenerateContent") {
        sse(MockBody {
            frames: Vec::new(),
            next: 0,
            repeat: Some((
                data.big_event.clone(),
                data.big_last.clone(),
                data.big_events,
            )),
            hold: None,
        })
    } else if path.ends_with(":streamGenerateContent") {
        sse(MockBody {
            frames: data.events.clone(),
            next: 0,
            repeat: None,
            hold: None,
        })
    } else {
        json(
            StatusCode::NOT_FOUND,
            MockBody::full(data.not_found.clone()),
        )
    };
    Ok(res)
}

async fn start_mock(data: Arc<MockData>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let data = data.clone();
            let svc = hyper::service::service_fn(move |req| mock_answer(req, data.clone()));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    Ok(addr)
}

// === The gateway ===

fn gateway_config(mock: SocketAddr) -> Result<Config, String> {
    let mut vars: HashMap<String, String> = [
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("UPSTREAM_URL", format!("http://{mock}")),
        (
            "GEMINI_API_KEYS",
            "AIzaLoadBenchKey-one-000000000000000,AIzaLoadBenchKey-two-000000000000000,AIzaLoadBenchKey-three-0000000000000".to_owned(),
        ),
        ("ALLOWED_TOKENS", CLIENT_TOKEN.to_owned()),
        ("ADMIN_TOKEN", "loadbench-admin-token-0001".to_owned()),
        // On, and too high to ever refuse: the limiter runs on every request.
        ("MAX_REQUESTS_PER_MINUTE", "1000000000".to_owned()),
        ("MAX_REQUESTS_PER_DAY_PER_IP", "1000000000000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // `LOADBENCH_ENV="K=V;K2=V2"` changes the gateway's variables, to see what one setting
    // costs (an empty value removes the variable).
    for pair in std::env::var("LOADBENCH_ENV")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((k, v)) = pair.split_once('=') {
            if v.is_empty() {
                vars.remove(k.trim());
            } else {
                vars.insert(k.trim().to_owned(), v.to_owned());
            }
        }
    }
    Config::from_map(&vars).map_err(|e| e.to_string())
}

/// full_proxy's log setup, written into a sink: formatting is paid, the terminal is not
/// (`LOADBENCH_LOG=stderr` shows the lines).
fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false);
    if std::env::var("LOADBENCH_LOG").is_ok_and(|v| v == "stderr") {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.with_writer(std::io::sink).init();
    }
}

async fn start_gateway(config: Config) -> Result<(SocketAddr, App), String> {
    let app = App::build(config.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let limits = server::Limits {
        header_read_timeout: config.client_read_timeout,
        max_connections: config.max_connections,
        grace: config.shutdown_grace,
    };
    let router = app.router.clone();
    let stats = app.server_stats.clone();
    tokio::spawn(async move {
        server::serve(listener, router, limits, stats, std::future::pending()).await;
    });
    Ok((addr, app))
}

// === The floor: a forwarder with no layers ===

/// A proxy that does nothing but forward: hyper's HTTP/1 server, the request's path and body
/// sent on through a pooled hyper-util client, the answer's body streamed back as it comes.
/// No auth, keys, logs, limits or parsing. What it costs is what any proxy that terminates
/// HTTP on both sides pays on this machine, so the report can tell that floor from what the
/// gateway's layers add.
async fn start_bare(mock: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri: Uri = format!("http://{mock}{pq}")
                        .parse()
                        .expect("a loopback address and a request's path make a valid URI");
                    *req.uri_mut() = uri;
                    req.headers_mut().remove(header::AUTHORIZATION);
                    client.request(req).await
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    Ok(addr)
}

// === The load generator ===

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// One kind of request against one address.
#[derive(Clone)]
struct Target {
    uri: Uri,
    body: Bytes,
    auth: Option<HeaderValue>,
}

impl Target {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(a) = &self.auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        req
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Generate,
    Stream,
    Chat,
    ChatStream,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Generate, Kind::Stream, Kind::Chat, Kind::ChatStream];

    fn name(self) -> &'static str {
        match self {
            Kind::Generate => "generateContent",
            Kind::Stream => "streamGenerateContent (SSE, 20 events)",
            Kind::Chat => "OpenAI chat",
            Kind::ChatStream => "OpenAI chat, streamed",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Kind::Generate => "generate",
            Kind::Stream => "stream",
            Kind::Chat => "chat",
            Kind::ChatStream => "chat_stream",
        }
    }

    fn is_stream(self) -> bool {
        matches!(self, Kind::Stream | Kind::ChatStream)
    }

    /// The direct (mock) request an OpenAI request becomes upstream.
    fn direct_kind(self) -> Kind {
        if self.is_stream() {
            Kind::Stream
        } else {
            Kind::Generate
        }
    }

    fn target(self, addr: SocketAddr, auth: bool, model: &str) -> Target {
        let gemini =
            Bytes::from_static(br#"{"contents":[{"role":"user","parts":[{"text":"Say hi"}]}]}"#);
        let (path, body) = match self {
            Kind::Generate => (format!("/v1beta/models/{model}:generateContent"), gemini),
            Kind::Stream => (
                format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
                gemini,
            ),
            Kind::Chat => (
                "/v1/chat/completions".to_owned(),
                Bytes::from(
                    json!({"model": model, "messages": [{"role": "user", "content": "Say hi"}]})
                        .to_string(),
                ),
            ),
            Kind::ChatStream => (
                "/v1/chat/completions".to_owned(),
                Bytes::from(
                    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say hi"}]})
                        .to_string(),
                ),
            ),
        };
        Target {
            uri: format!("http://{addr}{path}")
                .parse()
                .expect("a loopback address and a fixed path make a valid URI"),
            body,
            auth: auth.then(|| {
                HeaderValue::from_str(&format!("Bearer {CLIENT_TOKEN}"))
                    .expect("the token is ASCII")
            }),
        }
    }
}

/// Histograms of one run (nanoseconds).
struct Recorder {
    total: Histogram<u64>,
    ttfb: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Recorder {
    fn new() -> Self {
        let h = || {
            Histogram::new_with_bounds(1_000, 120_000_000_000, 3)
                .expect("fixed histogram bounds are valid")
        };
        Recorder {
            total: h(),
            ttfb: h(),
            ok: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, r: Result<(Duration, Duration), String>) {
        match r {
            Ok((ttfb, total)) => {
                self.ok += 1;
                let _ = self.ttfb.record(ttfb.as_nanos() as u64);
                let _ = self.total.record(total.as_nanos() as u64);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Sends one request and reads the whole answer; times are from `from` (the scheduled send
/// time in the open loop).
async fn one(
    client: &HttpClient,
    target: &Target,
    from: Instant,
) -> Result<(Duration, Duration), String> {
    let res = client
        .request(target.request())
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = res.status();
    let mut body = res.into_body();
    let mut ttfb = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body failed: {e}"))?;
        if ttfb.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            ttfb = Some(from.elapsed());
        }
    }
    let total = from.elapsed();
    if status != StatusCode::OK {
        return Err(format!("HTTP {status}"));
    }
    Ok((ttfb.unwrap_or(total), total))
}

/// Results of one run.
struct RunResult {
    rec: Recorder,
    elapsed: Duration,
    cpu: Duration,
    /// Kernel work during the run (the whole process).
    kernel: KernelCounts,
    peak_rss: u64,
    /// Worst lateness of the pacer against the schedule.
    pacer_lag: Duration,
}

impl RunResult {
    fn empty() -> Self {
        RunResult {
            rec: Recorder::new(),
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            kernel: KernelCounts::default(),
            peak_rss: 0,
            pacer_lag: Duration::ZERO,
        }
    }

    fn merge(&mut self, r: RunResult) {
        let _ = self.rec.total.add(&r.rec.total);
        let _ = self.rec.ttfb.add(&r.rec.ttfb);
        self.rec.ok += r.rec.ok;
        self.rec.errors += r.rec.errors;
        if self.rec.first_error.is_none() {
            self.rec.first_error = r.rec.first_error;
        }
        self.elapsed += r.elapsed;
        self.cpu += r.cpu;
        self.kernel.add(r.kernel);
        self.peak_rss = self.peak_rss.max(r.peak_rss);
        self.pacer_lag = self.pacer_lag.max(r.pacer_lag);
    }

    fn rps(&self) -> f64 {
        self.rec.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// `total` spread over the requests answered.
    fn per_request(&self, total: f64) -> f64 {
        total / self.rec.ok.max(1) as f64
    }

    fn cpu_us_per_request(&self) -> f64 {
        self.per_request(self.cpu.as_secs_f64() * 1e6)
    }

    fn syscalls_per_request(&self) -> f64 {
        self.per_request(self.kernel.syscalls as f64)
    }

    fn switches_per_request(&self) -> f64 {
        self.per_request(self.kernel.switches as f64)
    }
}

/// Open loop: request `i` leaves at `start + i / rate`, never held back by slow answers;
/// its latency counts from that instant (no coordinated omission).
fn open_loop(
    rt: &Runtime,
    client: &HttpClient,
    target: &Target,
    rate: u32,
    secs: f64,
    rss: &RssSampler,
) -> RunResult {
    let n = (f64::from(rate) * secs).round() as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let rec = Arc::new(Mutex::new(Recorder::new()));
    let sem = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    rss.reset();
    let cpu0 = cpu_time();
    let k0 = kernel_counts();
    let start = Instant::now() + Duration::from_millis(5);
    let mut lag = Duration::ZERO;
    for i in 0..n {
        let at = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        } else {
            lag = lag.max(now - at);
        }
        let (client, target, rec, sem, done) = (
            client.clone(),
            target.clone(),
            rec.clone(),
            sem.clone(),
            done_tx.clone(),
        );
        rt.spawn(async move {
            // Waiting for a slot counts: the clock started at `at`.
            let r = match sem.acquire().await {
                Ok(_permit) => one(&client, &target, at).await,
                Err(_) => Err("closed".to_owned()),
            };
            if let Ok(mut rec) = rec.lock() {
                rec.record(r);
            }
            let _ = done.send(());
        });
    }
    drop(done_tx);
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while done_rx.recv().await.is_some() {}
        })
        .await;
    });
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let kernel = kernel_counts().since(k0);
    let rec = Arc::try_unwrap(rec)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_else(Recorder::new);
    RunResult {
        rec,
        elapsed,
        cpu,
        kernel,
        peak_rss: rss.peak(),
        pacer_lag: lag,
    }
}

/// Closed loop: `CLOSED_CONCURRENCY` connections, each sending its next request as soon as the
/// last answer is read; the throughput is the maximum the path serves.
fn closed_loop(
    rt: &Runtime,
    client: &HttpClient,
    target: &Target,
    secs: f64,
    rss: &RssSampler,
) -> RunResult {
    rss.reset();
    let cpu0 = cpu_time();
    let k0 = kernel_counts();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let recs = rt.block_on(async {
        let tasks: Vec<_> = (0..CLOSED_CONCURRENCY)
            .map(|_| {
                let (client, target) = (client.clone(), target.clone());
                tokio::spawn(async move {
                    let mut rec = Recorder::new();
                    while Instant::now() < deadline {
                        let r = one(&client, &target, Instant::now()).await;
                        rec.record(r);
                    }
                    rec
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    });
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let kernel = kernel_counts().since(k0);
    let mut out = RunResult::empty();
    for rec in recs {
        out.merge(RunResult {
            rec,
            ..RunResult::empty()
        });
    }
    out.elapsed = elapsed;
    out.cpu = cpu;
    out.kernel = kernel;
    out.peak_rss = rss.peak();
    out
}

// === Memory: idle streams and a 10 MB stream ===

/// What `n` open idle streams hold, per stream.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    /// Growth of the process's RSS.
    rss: f64,
    /// Live heap bytes allocated while they opened (client, and every server on the path).
    heap: f64,
}

/// Opens `n` streams that stay open after their first event and measures what they hold.
fn held_streams(rt: &Runtime, target: &Target, n: usize) -> Result<Held, String> {
    let client = rt.block_on(async { http_client() });
    let before = rss_bytes();
    HEAP_LIVE.store(0, Ordering::Relaxed);
    HEAP_COUNTING.store(true, Ordering::Relaxed);
    let held = rt.block_on(async {
        let sem = Arc::new(Semaphore::new(64));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (client, target, sem) = (client.clone(), target.clone(), sem.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
                    let res = client
                        .request(target.request())
                        .await
                        .map_err(|e| e.to_string())?;
                    if res.status() != StatusCode::OK {
                        return Err(format!("HTTP {}", res.status()));
                    }
                    let mut body = res.into_body();
                    match body.frame().await {
                        Some(Ok(_)) => Ok(body),
                        _ => Err("the held stream ended early".to_owned()),
                    }
                })
            })
            .collect();
        let mut held = Vec::with_capacity(n);
        for t in tasks {
            held.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(held)
    });
    std::thread::sleep(Duration::from_millis(300));
    let heap = HEAP_LIVE.load(Ordering::Relaxed);
    HEAP_COUNTING.store(false, Ordering::Relaxed);
    let held = held?;
    let after = rss_bytes();
    drop(held);
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    Ok(Held {
        rss: after.saturating_sub(before) as f64 / n as f64,
        heap: heap.max(0) as f64 / n as f64,
    })
}

/// Reads one big stream; returns (bytes read, RSS peak growth during it).
fn big_stream(rt: &Runtime, target: &Target) -> Result<(u64, u64), String> {
    let client = rt.block_on(async { http_client() });
    rt.block_on(async {
        let before = rss_bytes();
        let mut peak = before;
        let res = client
            .request(target.request())
            .await
            .map_err(|e| e.to_string())?;
        if res.status() != StatusCode::OK {
            return Err(format!("HTTP {}", res.status()));
        }
        let mut body = res.into_body();
        let mut read = 0u64;
        let mut frames = 0u64;
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| e.to_string())?;
            read += f.data_ref().map_or(0, |d| d.len() as u64);
            frames += 1;
            if frames % 16 == 0 {
                peak = peak.max(rss_bytes());
            }
        }
        peak = peak.max(rss_bytes());
        Ok((read, peak.saturating_sub(before)))
    })
}

// === The run ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Rate(u32),
    Closed,
}

impl Load {
    fn label(self) -> String {
        match self {
            Load::Rate(r) => format!("{} QPS", thousands(u64::from(r))),
            Load::Closed => format!("max ({CLOSED_CONCURRENCY} conns)"),
        }
    }

    fn id(self) -> String {
        match self {
            Load::Rate(r) => format!("{r}qps"),
            Load::Closed => "max".to_owned(),
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Measured {
    kind: Kind,
    load: Load,
    direct: Option<RunResult>,
    /// The no-layer forwarder on the same Gemini request (native scenarios only).
    bare: Option<RunResult>,
    gateway: RunResult,
}

/// Measures direct, through the bare forwarder (when given) and through the gateway in
/// alternating rounds, so a change in the machine's background load falls on all alike.
fn run_paths(
    rt: &Runtime,
    client: &HttpClient,
    (direct, bare, gateway): (&Target, Option<&Target>, &Target),
    load: Load,
    s: &Settings,
    rss: &RssSampler,
) -> (RunResult, Option<RunResult>, RunResult) {
    let secs = match load {
        Load::Rate(_) => s.open_secs,
        Load::Closed => s.closed_secs,
    } / f64::from(s.rounds);
    let run = |target: &Target, secs: f64| match load {
        Load::Rate(r) => open_loop(rt, client, target, r, secs, rss),
        Load::Closed => closed_loop(rt, client, target, secs, rss),
    };
    let _ = run(direct, s.warmup_secs);
    if let Some(b) = bare {
        let _ = run(b, s.warmup_secs);
    }
    let _ = run(gateway, s.warmup_secs);
    let mut d = RunResult::empty();
    let mut b_out = bare.map(|_| RunResult::empty());
    let mut g = RunResult::empty();
    for _ in 0..s.rounds {
        d.merge(run(direct, secs));
        if let (Some(b), Some(out)) = (bare, b_out.as_mut()) {
            out.merge(run(b, secs));
        }
        g.merge(run(gateway, secs));
    }
    (d, b_out, g)
}

/// Checks a target answers 200 once; the error says what it answered instead.
fn probe(rt: &Runtime, client: &HttpClient, target: &Target) -> Result<(), u16> {
    rt.block_on(async {
        let res = client.request(target.request()).await.map_err(|_| 0u16)?;
        let status = res.status();
        let _ = res.into_body().collect().await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(status.as_u16())
        }
    })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let s = Settings::from_env();
    let started_at = now_utc();
    // The servers (mock and gateway) on two worker threads; the load generator on its own
    // worker; the pacer on the main thread. All share the machine's cores.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("servers")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let rss = RssSampler::start();
    let rss_start = rss_bytes();

    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let data = Arc::new(mock_data(s.big_stream_bytes, release_rx));
    let mock = servers
        .block_on(start_mock(data))
        .map_err(|e| format!("mock: {e}"))?;
    std::thread::sleep(Duration::from_millis(100));
    let rss_mock = rss_bytes();

    let config = gateway_config(mock)?;
    init_tracing(&config);
    let (gw, _app) = servers.block_on(start_gateway(config))?;
    std::thread::sleep(Duration::from_millis(200));
    let rss_gateway_idle = rss_bytes();
    let bare = servers
        .block_on(start_bare(mock))
        .map_err(|e| format!("bare forwarder: {e}"))?;
    eprintln!(
        "loadbench: mock on {mock}, gateway on {gw}, bare forwarder on {bare}; smoke={}",
        s.smoke
    );

    let client = clients.block_on(async { http_client() });
    let direct = |k: Kind| k.target(mock, false, "gemini-2.5-flash");
    let via = |k: Kind, model: &str| k.target(gw, true, model);

    // Which scenarios the gateway serves.
    let mut available = Vec::new();
    let mut unavailable = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::Generate || kind == Kind::Stream {
            probe(&clients, &client, &direct(kind))
                .map_err(|st| format!("the mock answered {st} to {}", kind.name()))?;
            probe(
                &clients,
                &client,
                &kind.target(bare, false, "gemini-2.5-flash"),
            )
            .map_err(|st| format!("the bare forwarder answered {st} to {}", kind.name()))?;
        }
        match probe(&clients, &client, &via(kind, "gemini-2.5-flash")) {
            Ok(()) => available.push(kind),
            Err(404) if matches!(kind, Kind::Chat | Kind::ChatStream) => {
                unavailable.push((kind, "not available (the gateway answers 404)".to_owned()));
            }
            Err(st) => return Err(format!("the gateway answered {st} to {}", kind.name())),
        }
    }

    // Memory before any load (load grows the allocator's pools, which would hide growth).
    eprintln!(
        "loadbench: {} idle streams through the gateway, then direct",
        s.held_streams
    );
    let held_gw = held_streams(&clients, &via(Kind::Stream, "gemini-hold"), s.held_streams)?;
    let held_bare = held_streams(
        &clients,
        &Kind::Stream.target(bare, false, "gemini-hold"),
        s.held_streams,
    )?;
    let held_direct = held_streams(
        &clients,
        &Kind::Stream.target(mock, false, "gemini-hold"),
        s.held_streams,
    )?;
    let _ = release_tx.send(true);
    std::thread::sleep(Duration::from_millis(700));
    let big_direct = big_stream(&clients, &Kind::Stream.target(mock, false, "gemini-big"))?;
    let big_gw = big_stream(&clients, &via(Kind::Stream, "gemini-big"))?;

    // `LOADBENCH_MAX_ONLY=1` skips the fixed rates (for quick comparisons of builds).
    let max_only = std::env::var("LOADBENCH_MAX_ONLY").is_ok_and(|v| v == "1");
    let loads: Vec<Load> = s
        .rates
        .iter()
        .filter(|_| !max_only)
        .map(|r| Load::Rate(*r))
        .chain([Load::Closed])
        .filter(|_| !s.allocs_only)
        .collect();
    let mut allocs = Vec::new();
    let only = std::env::var("LOADBENCH_SCENARIOS").unwrap_or_default();
    let mut measured = Vec::new();
    for kind in available
        .iter()
        .filter(|k| only.is_empty() || only.split(',').any(|o| o == k.id()))
    {
        let bare_gemini =
            (*kind == kind.direct_kind()).then(|| kind.target(bare, false, "gemini-2.5-flash"));
        eprintln!("loadbench: {}: allocations per request", kind.name());
        let n = s.alloc_requests;
        allocs.push(Allocs {
            kind: *kind,
            direct: alloc_count(&clients, &client, &direct(kind.direct_kind()), n),
            bare: bare_gemini
                .as_ref()
                .map(|b| alloc_count(&clients, &client, b, n)),
            gateway: alloc_count(&clients, &client, &via(*kind, "gemini-2.5-flash"), n),
        });
        for load in &loads {
            eprintln!("loadbench: {} @ {}", kind.name(), load.label());
            let bare_target =
                (*kind == kind.direct_kind()).then(|| kind.target(bare, false, "gemini-2.5-flash"));
            let (d, b, g) = run_paths(
                &clients,
                &client,
                (
                    &direct(kind.direct_kind()),
                    bare_target.as_ref(),
                    &via(*kind, "gemini-2.5-flash"),
                ),
                *load,
                &s,
                &rss,
            );
            measured.push(Measured {
                kind: *kind,
                load: *load,
                direct: Some(d),
                bare: b,
                gateway: g,
            });
        }
    }
    let rss_end = rss_bytes();

    let report = Report {
        settings: s.clone(),
        started_at,
        rss_start,
        rss_mock,
        rss_gateway_idle,
        rss_end,
        held: HeldAll {
            direct: held_direct,
            bare: held_bare,
            gateway: held_gw,
        },
        big: (big_direct, big_gw),
        measured,
        allocs,
        unavailable,
    };
    let md = report.markdown();
    let js = report.json();
    println!("{md}");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let _ = std::fs::create_dir_all(&dir);
    let md_path = format!("{dir}/loadbench.md");
    let js_path = format!("{dir}/loadbench.json");
    std::fs::write(&md_path, &md).map_err(|e| format!("{md_path}: {e}"))?;
    std::fs::write(
        &js_path,
        serde_json::to_string_pretty(&js).unwrap_or_default(),
    )
    .map_err(|e| format!("{js_path}: {e}"))?;
    eprintln!("loadbench: wrote {md_path} and {js_path}");
    let errors: u64 = report
        .measured
        .iter()
        .map(|m| m.gateway.rec.errors + m.direct.as_ref().map_or(0, |d| d.rec.errors))
        .sum();
    drop(servers);
    drop(clients);
    if errors > 0 {
        return Err(format!("{errors} requests failed (see the errors column)"));
    }
    Ok(())
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem:.0} GiB RAM, Linux {kernel}")
}

// === Report ===

struct Report {
    settings: Settings,
    started_at: String,
    rss_start: u64,
    rss_mock: u64,
    rss_gateway_idle: u64,
    rss_end: u64,
    /// What one held stream holds on each path.
    held: HeldAll,
    /// (bytes read, RSS growth): (direct, gateway).
    big: ((u64, u64), (u64, u64)),
    measured: Vec<Measured>,
    /// Heap allocations per request on each path, per scenario.
    allocs: Vec<Allocs>,
    unavailable: Vec<(Kind, String)>,
}

/// Allocations per request of one scenario on the three paths.
struct Allocs {
    kind: Kind,
    direct: AllocCount,
    bare: Option<AllocCount>,
    gateway: AllocCount,
}

/// Idle streams measured on the three paths.
struct HeldAll {
    direct: Held,
    bare: Held,
    gateway: Held,
}

impl HeldAll {
    /// Heap bytes per stream the bare forwarder holds beyond the client and the mock.
    fn bare_share(&self) -> f64 {
        self.bare.heap - self.direct.heap
    }

    /// Heap bytes per stream the gateway holds beyond the client and the mock.
    fn gateway_share(&self) -> f64 {
        self.gateway.heap - self.direct.heap
    }
}

const PCTS: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn pct(h: &Histogram<u64>, p: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_percentile(p)
    }
}

fn signed_ms(ns: i64) -> String {
    format!("{:+.3}", ns as f64 / 1e6)
}

impl Report {
    /// p99 overhead at 1,000 QPS, max-throughput ratio, per-chunk overhead for a kind.
    fn overhead(&self, m: &Measured, p: f64) -> Option<i64> {
        let d = m.direct.as_ref()?;
        Some(pct(&m.gateway.rec.total, p) as i64 - pct(&d.rec.total, p) as i64)
    }

    /// Added time per chunk on a stream (µs): (all added time / events, added time after the
    /// first byte / the events after the first), from medians.
    fn per_chunk(&self, m: &Measured) -> Option<(f64, f64)> {
        Self::added_per_chunk(m.direct.as_ref()?, &m.gateway)
    }

    /// `per_chunk` for any path `g` against direct `d`.
    fn added_per_chunk(d: &RunResult, g: &RunResult) -> Option<(f64, f64)> {
        let dt = pct(&g.rec.total, 50.0) as f64 - pct(&d.rec.total, 50.0) as f64;
        let df = pct(&g.rec.ttfb, 50.0) as f64 - pct(&d.rec.ttfb, 50.0) as f64;
        let n = STREAM_EVENTS as f64;
        Some((dt / n / 1e3, (dt - df) / (n - 1.0) / 1e3))
    }

    /// The bare forwarder's run to compare `m` with: its own, or for an OpenAI scenario the
    /// one on the Gemini call it becomes.
    fn bare_for<'a>(&'a self, m: &'a Measured) -> Option<&'a RunResult> {
        m.bare.as_ref().or_else(|| {
            self.find(m.kind.direct_kind(), m.load)
                .and_then(|b| b.bare.as_ref())
        })
    }

    fn find(&self, kind: Kind, load: Load) -> Option<&Measured> {
        self.measured
            .iter()
            .find(|m| m.kind == kind && m.load == load)
    }

    fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "## Load bench: gateway vs direct\n");
        let _ = writeln!(
            o,
            "{} · {} · `cargo run --release --example loadbench`{}\n",
            self.started_at,
            machine(),
            if self.settings.smoke {
                " -- --smoke (SMOKE RUN: numbers are not meaningful)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "One process: mock upstream + full_proxy (3 keys, auth, request id, access log, body limit, rate limit, stream resume, key rotation) + load generator, sharing the cores. Open loop {}s per rate (coordinated-omission corrected), closed loop {}s with {} connections. Latency in ms, from the scheduled send to the last byte.\n",
            self.settings.open_secs, self.settings.closed_secs, CLOSED_CONCURRENCY
        );

        let _ = writeln!(o, "### Latency (ms)\n");
        let _ = writeln!(
            o,
            "| scenario | load | path | p50 | p90 | p99 | p99.9 | achieved rps | errors |"
        );
        let _ = writeln!(o, "|---|---|---|--:|--:|--:|--:|--:|--:|");
        for m in &self.measured {
            let row = |o: &mut String, path: &str, r: &RunResult| {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
                    m.kind.name(),
                    m.load.label(),
                    path,
                    ms(pct(&r.rec.total, 50.0)),
                    ms(pct(&r.rec.total, 90.0)),
                    ms(pct(&r.rec.total, 99.0)),
                    ms(pct(&r.rec.total, 99.9)),
                    r.rps(),
                    r.rec.errors
                );
            };
            if let Some(d) = &m.direct {
                let label = if m.kind == m.kind.direct_kind() {
                    "direct"
                } else {
                    "direct (Gemini call it becomes)"
                };
                row(&mut o, label, d);
            }
            if let Some(b) = &m.bare {
                row(&mut o, "bare forwarder (no layers)", b);
            }
            row(&mut o, "gateway", &m.gateway);
            let ov: Vec<String> = PCTS
                .iter()
                .map(|p| self.overhead(m, *p).map_or("–".into(), signed_ms))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | **overhead** | {} | {} | {} | {} | | |",
                m.kind.name(),
                m.load.label(),
                ov[0],
                ov[1],
                ov[2],
                ov[3]
            );
        }
        for (kind, why) in &self.unavailable {
            let _ = writeln!(o, "| {} | – | gateway | {why} | | | | | |", kind.name());
        }

        let _ = writeln!(o, "\n### Max throughput (closed loop)\n");
        let _ = writeln!(
            o,
            "The bare forwarder (hyper server → hyper-util client, nothing else) is the floor: what any proxy that terminates HTTP on both sides reaches here.\n"
        );
        let _ = writeln!(
            o,
            "| scenario | direct rps | bare forwarder rps (ratio) | gateway rps | ratio | gateway / bare | CPU µs/req direct | bare | gateway |"
        );
        let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for m in self.measured.iter().filter(|m| m.load == Load::Closed) {
            let Some(d) = &m.direct else { continue };
            let (bare_rps, vs_bare, bare_cpu) = match self.bare_for(m) {
                Some(b) => (
                    format!(
                        "{:.0} ({:.0} %)",
                        b.rps(),
                        100.0 * b.rps() / d.rps().max(1.0)
                    ),
                    format!("{:.0} %", 100.0 * m.gateway.rps() / b.rps().max(1.0)),
                    format!("{:.0}", b.cpu_us_per_request()),
                ),
                None => ("–".into(), "–".into(), "–".into()),
            };
            let _ = writeln!(
                o,
                "| {} | {:.0} | {bare_rps} | {:.0} | {:.0} % | {vs_bare} | {:.0} | {bare_cpu} | {:.0} |",
                m.kind.name(),
                d.rps(),
                m.gateway.rps(),
                100.0 * m.gateway.rps() / d.rps().max(1.0),
                d.cpu_us_per_request(),
                m.gateway.cpu_us_per_request()
            );
        }

        let _ = writeln!(
            o,
            "\nKernel work per request in the closed loop (this whole process: load generator, mock and the path; read/write system calls from `/proc/self/io`, context switches of all threads):\n"
        );
        let _ = writeln!(
            o,
            "| scenario | syscalls direct | bare | gateway | context switches direct | bare | gateway |"
        );
        let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|");
        for m in self.measured.iter().filter(|m| m.load == Load::Closed) {
            let Some(d) = &m.direct else { continue };
            let (bs, bc) = m.bare.as_ref().map_or(("–".into(), "–".into()), |b| {
                (
                    format!("{:.1}", b.syscalls_per_request()),
                    format!("{:.1}", b.switches_per_request()),
                )
            });
            let _ = writeln!(
                o,
                "| {} | {:.1} | {bs} | {:.1} | {:.1} | {bc} | {:.1} |",
                m.kind.name(),
                d.syscalls_per_request(),
                m.gateway.syscalls_per_request(),
                d.switches_per_request(),
                m.gateway.switches_per_request(),
            );
        }

        let _ = writeln!(
            o,
            "\nHeap allocations per request ({} requests one after another on one connection; this whole process, so the path's own share is its difference from direct). Unlike time, these counts barely move between runs:\n",
            self.settings.alloc_requests
        );
        let _ = writeln!(
            o,
            "| scenario | allocations direct | bare | gateway | gateway − bare | bytes allocated direct | bare | gateway |"
        );
        let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|");
        for a in &self.allocs {
            let (bc, diff, bb) = a.bare.map_or(("–".into(), "–".into(), "–".into()), |b| {
                (
                    format!("{:.1}", b.calls),
                    format!("{:+.1}", a.gateway.calls - b.calls),
                    format!("{:.0}", b.bytes),
                )
            });
            let _ = writeln!(
                o,
                "| {} | {:.1} | {bc} | {:.1} | {diff} | {:.0} | {bb} | {:.0} |",
                a.kind.name(),
                a.direct.calls,
                a.gateway.calls,
                a.direct.bytes,
                a.gateway.bytes,
            );
        }

        let _ = writeln!(o, "\n### Streams: time to first byte and cost per chunk\n");
        let _ = writeln!(
            o,
            "| scenario | load | TTFB p50 direct | TTFB p50 gateway | TTFB p99 direct | TTFB p99 gateway | added µs/chunk (all / after 1st) | bare forwarder: added µs/chunk |"
        );
        let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|");
        for m in self.measured.iter().filter(|m| m.kind.is_stream()) {
            let Some(d) = &m.direct else { continue };
            let (all, after) = self.per_chunk(m).unwrap_or_default();
            let bare = self
                .bare_for(m)
                .and_then(|b| Self::added_per_chunk(d, b))
                .map_or("–".to_owned(), |(a, f)| format!("{a:.1} / {f:.1}"));
            let _ = writeln!(
                o,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} / {:.1} | {bare} |",
                m.kind.name(),
                m.load.label(),
                ms(pct(&d.rec.ttfb, 50.0)),
                ms(pct(&m.gateway.rec.ttfb, 50.0)),
                ms(pct(&d.rec.ttfb, 99.0)),
                ms(pct(&m.gateway.rec.ttfb, 99.0)),
                all,
                after
            );
        }

        let _ = writeln!(o, "\n### Memory (resident, this whole process)\n");
        let _ = writeln!(o, "| what | value |");
        let _ = writeln!(o, "|---|--:|");
        let _ = writeln!(
            o,
            "| idle: process with mock + load generator | {:.1} MiB |",
            mib(self.rss_mock)
        );
        let _ = writeln!(
            o,
            "| idle: process after the gateway was built (growth) | {:.1} MiB (+{:.1} MiB) |",
            mib(self.rss_gateway_idle),
            mib(self.rss_gateway_idle.saturating_sub(self.rss_mock))
        );
        let peak = self
            .measured
            .iter()
            .map(|m| m.gateway.peak_rss)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "| under load: peak through the gateway | {:.1} MiB |",
            mib(peak)
        );
        let _ = writeln!(o, "| at the end | {:.1} MiB |", mib(self.rss_end));
        let n = self.settings.held_streams;
        let h = &self.held;
        for (path, held) in [
            (format!("direct ({n} held; client + mock)"), h.direct),
            ("through the bare forwarder".to_owned(), h.bare),
            ("through the gateway".to_owned(), h.gateway),
        ] {
            let _ = writeln!(
                o,
                "| per open idle stream, {path}: heap / RSS | {:.1} / {:.1} KiB |",
                held.heap / 1024.0,
                held.rss / 1024.0
            );
        }
        for (path, share) in [
            ("the bare forwarder (bare − direct)", h.bare_share()),
            ("the gateway (gateway − direct)", h.gateway_share()),
        ] {
            let _ = writeln!(
                o,
                "| per open idle stream, heap held by {path} | {:.1} KiB |",
                share / 1024.0
            );
        }
        let ((bd, gd), (bg, gg)) = self.big;
        let _ = writeln!(
            o,
            "| {:.0} MiB stream, direct: RSS growth while reading | {:.1} MiB |",
            mib(bd),
            mib(gd)
        );
        let _ = writeln!(
            o,
            "| {:.0} MiB stream, through the gateway: RSS growth while relaying | {:.1} MiB |",
            mib(bg),
            mib(gg)
        );

        let _ = writeln!(o, "\n### Targets (issue 10)\n");
        let _ = writeln!(o, "| target | measured | met? |");
        let _ = writeln!(o, "|---|---|---|");
        let yes = |b: bool| if b { "yes" } else { "**no**" };
        let at_1000 = Load::Rate(1_000);
        for kind in Kind::ALL {
            if let Some(m) = self.find(kind, at_1000) {
                if let Some(ov) = self.overhead(m, 99.0) {
                    let _ = writeln!(
                        o,
                        "| p99 overhead ≤ 0.5 ms at 1,000 QPS, {} | {} ms | {} |",
                        kind.name(),
                        signed_ms(ov),
                        yes(ov <= 500_000)
                    );
                }
            }
        }
        for m in self.measured.iter().filter(|m| m.load == Load::Closed) {
            if let Some(d) = &m.direct {
                let r = m.gateway.rps() / d.rps().max(1.0);
                let floor = self
                    .bare_for(m)
                    .map(|b| {
                        format!(
                            " (bare forwarder: {:.0} %)",
                            100.0 * b.rps() / d.rps().max(1.0)
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "| max throughput ≥ 50 % of direct, {} | {:.0} %{floor} | {} |",
                    m.kind.name(),
                    100.0 * r,
                    yes(r >= 0.5)
                );
            }
        }
        for kind in [Kind::ChatStream, Kind::Stream] {
            if let Some((all, _)) = self.find(kind, at_1000).and_then(|m| self.per_chunk(m)) {
                let _ = writeln!(
                    o,
                    "| ≤ 2 µs added per chunk, {} (1,000 QPS, all added time / 20) | {all:.1} µs | {} |",
                    kind.name(),
                    yes(all <= 2.0)
                );
            }
        }
        let _ = writeln!(
            o,
            "| a {:.0} MiB stream relays in constant memory | +{:.1} MiB RSS through the gateway (direct +{:.1} MiB) | {} |",
            mib(bg),
            mib(gg),
            mib(gd),
            yes(gg <= gd + (2 << 20))
        );
        let gw_share = self.held.gateway_share() / 1024.0;
        let bare_share = self.held.bare_share() / 1024.0;
        let _ = writeln!(
            o,
            "| ≤ 16 KiB per open idle stream | {gw_share:.1} KiB of heap held by the gateway (the bare forwarder: {bare_share:.1} KiB) | {} |",
            yes(gw_share <= 16.0)
        );
        let growth = self.rss_gateway_idle.saturating_sub(self.rss_mock);
        let _ = writeln!(
            o,
            "| idle RSS of full_proxy ≤ 20 MiB | +{:.1} MiB to build it; whole process {:.1} MiB | {} |",
            mib(growth),
            mib(self.rss_gateway_idle),
            yes(self.rss_gateway_idle <= 20 << 20)
        );
        o
    }

    fn json(&self) -> Value {
        let run = |r: &RunResult| {
            let h = |h: &Histogram<u64>| {
                json!({
                    "p50_ms": ms(pct(h, 50.0)), "p90_ms": ms(pct(h, 90.0)),
                    "p99_ms": ms(pct(h, 99.0)), "p99_9_ms": ms(pct(h, 99.9)),
                    "max_ms": ms(if h.is_empty() { 0 } else { h.max() }),
                })
            };
            json!({
                "latency": h(&r.rec.total),
                "ttfb": h(&r.rec.ttfb),
                "ok": r.rec.ok,
                "errors": r.rec.errors,
                "first_error": r.rec.first_error,
                "rps": r.rps(),
                "cpu_us_per_request": r.cpu_us_per_request(),
                "rw_syscalls_per_request": r.syscalls_per_request(),
                "context_switches_per_request": r.switches_per_request(),
                "peak_rss_bytes": r.peak_rss,
                "pacer_max_lag_ms": r.pacer_lag.as_secs_f64() * 1e3,
            })
        };
        let scenarios: Vec<Value> = self
            .measured
            .iter()
            .map(|m| {
                let overhead: serde_json::Map<String, Value> = PCTS
                    .iter()
                    .zip(["p50_ms", "p90_ms", "p99_ms", "p99_9_ms"])
                    .map(|(p, k)| {
                        (
                            k.to_owned(),
                            json!(self.overhead(m, *p).map(|ns| ns as f64 / 1e6)),
                        )
                    })
                    .collect();
                json!({
                    "scenario": m.kind.id(),
                    "load": m.load.id(),
                    "direct": m.direct.as_ref().map(run),
                    "bare_forwarder": m.bare.as_ref().map(run),
                    "gateway": run(&m.gateway),
                    "overhead": overhead,
                    "per_chunk_us": self.per_chunk(m).filter(|_| m.kind.is_stream()).map(|(a, b)| json!({"all_over_events": a, "after_first_byte": b})),
                })
            })
            .collect();
        json!({
            "date": self.started_at,
            "machine": machine(),
            "smoke": self.settings.smoke,
            "settings": {
                "rates": self.settings.rates,
                "open_secs": self.settings.open_secs,
                "closed_secs": self.settings.closed_secs,
                "closed_concurrency": CLOSED_CONCURRENCY,
                "stream_events": STREAM_EVENTS,
            },
            "scenarios": scenarios,
            "unavailable": self.unavailable.iter().map(|(k, why)| json!({"scenario": k.id(), "why": why})).collect::<Vec<_>>(),
            "allocations_per_request": self.allocs.iter().map(|a| {
                let one = |c: &AllocCount| json!({"calls": c.calls, "bytes": c.bytes});
                json!({
                    "scenario": a.kind.id(),
                    "requests": self.settings.alloc_requests,
                    "direct": one(&a.direct),
                    "bare_forwarder": a.bare.as_ref().map(one),
                    "gateway": one(&a.gateway),
                })
            }).collect::<Vec<_>>(),
            "memory": {
                "rss_start_bytes": self.rss_start,
                "rss_idle_mock_and_loadgen_bytes": self.rss_mock,
                "rss_idle_with_gateway_bytes": self.rss_gateway_idle,
                "rss_end_bytes": self.rss_end,
                "held_streams": self.settings.held_streams,
                "per_idle_stream": {
                    "direct": {"heap_bytes": self.held.direct.heap, "rss_bytes": self.held.direct.rss},
                    "bare_forwarder": {"heap_bytes": self.held.bare.heap, "rss_bytes": self.held.bare.rss},
                    "gateway": {"heap_bytes": self.held.gateway.heap, "rss_bytes": self.held.gateway.rss},
                },
                "big_stream_bytes": {"direct": self.big.0.0, "gateway": self.big.1.0},
                "big_stream_rss_growth_bytes": {"direct": self.big.0.1, "gateway": self.big.1.1},
            },
        })
    }
}
