//! Soak: mixed load (native streams, unary calls, OpenAI chat streamed and not, token counts)
//! through full_proxy against FakeGemini, checking that the process's resident memory and open
//! file descriptors stop growing after warm-up.
//!
//! `a_short_soak_...` runs in CI (a few hundred requests). The long one is ignored by default:
//! `SOAK_SECONDS=600 cargo test --all-features --test soak -- --ignored --nocapture`
//! (default 180 s). Linux only (it reads `/proc/self`); elsewhere they print "skipping" and pass.
//! Nothing here asserts on wall time: the duration only decides how long the load runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use serde_json::json;
use support::Proxy;
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::FakeGemini;

const KEY_1: &str = "AIzaSySoak-test-key-number-one-0000001";
const KEY_2: &str = "AIzaSySoak-test-key-number-two-0000002";
const WORKERS: usize = 8;

/// Soak tests measure the whole process: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory in bytes and open file descriptors of this process.
fn usage() -> Option<(u64, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((rss_kb * 1024, fds))
}

/// Request `n` of the mix, and a piece its answer must contain.
fn request(token: &str, n: usize) -> (Request<Body>, String) {
    let prompt = format!("soak prompt {}", n % 50);
    let passage = FakeGemini::passage(&prompt);
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).to_string();
    let openai = |stream: bool| {
        json!({"model": "gemini-2.5-flash", "stream": stream,
            "messages": [{"role": "user", "content": prompt}]})
        .to_string()
    };
    // Text that needs no JSON escaping, so it shows as is in every answer's body.
    let first_word = passage.split_whitespace().next().unwrap().to_owned();
    let opening: String = passage
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ");
    let (path, body, expect) = match n % 5 {
        0 => (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gemini,
            first_word,
        ),
        1 => (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            gemini,
            opening.clone(),
        ),
        2 => ("/v1/chat/completions", openai(true), "[DONE]".to_owned()),
        3 => ("/v1/chat/completions", openai(false), opening),
        _ => (
            "/v1beta/models/gemini-2.5-flash:countTokens",
            gemini,
            "totalTokens".to_owned(),
        ),
    };
    let req = Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    (req, expect)
}

/// Runs the mix with `WORKERS` concurrent clients while `go` says so; returns the requests made.
async fn load(proxy: &Proxy, go: Arc<dyn Fn(usize) -> bool + Send + Sync>) -> usize {
    let client = UpstreamClient::new(proxy.url()).unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (client, counter, go) = (client.clone(), counter.clone(), go.clone());
        let token = proxy.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if !go(n) {
                    return done;
                }
                let (req, expect) = request(&token, n);
                let call = client.clone().oneshot(req);
                let res = tokio::time::timeout(Duration::from_secs(60), call)
                    .await
                    .expect("an answer")
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK, "request {n}");
                let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains(&expect), "request {n}: {text}");
                done += 1;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

#[derive(Debug)]
struct Sample {
    rss: u64,
    fds: usize,
}

/// Samples the process once the fake upstream has forgotten what it received (its request log
/// is the test's memory, not the gateway's); returns how many requests it had received.
async fn sample(fake: &FakeGemini) -> (Sample, u64) {
    let received = fake.total_requests();
    fake.clear_received();
    // Let closed connections and finished tasks be reaped first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss, fds) = usage().unwrap();
    (Sample { rss, fds }, received)
}

const MB: u64 = 1024 * 1024;

/// Warms up with one phase of load, then runs `phases` more, sampling after each: resident
/// memory and descriptors after every phase stay within bounds of the warmed-up state, and the
/// last phase adds next to nothing over the middle one.
async fn soak(phases: usize, phase: impl Fn() -> Arc<dyn Fn(usize) -> bool + Send + Sync>) {
    let _one = ONE_AT_A_TIME.lock().await;
    if usage().is_none() {
        println!("skipping: no /proc/self (not Linux)");
        return;
    }
    let fake = FakeGemini::start([KEY_1, KEY_2]).await.unwrap();
    let keys = format!("{KEY_1},{KEY_2}");
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
    ])
    .await;

    let warm_requests = load(&proxy, phase()).await;
    let (warm, mut upstream) = sample(&fake).await;
    println!("after warm-up ({warm_requests} requests): {warm:?}");
    let mut samples = Vec::new();
    let mut total = warm_requests;
    for i in 0..phases {
        total += load(&proxy, phase()).await;
        let (s, received) = sample(&fake).await;
        upstream += received;
        println!("after phase {} ({total} requests in all): {s:?}", i + 1);
        samples.push(s);
    }
    let last = samples.last().unwrap();
    let mid = &samples[samples.len() / 2];
    // Descriptors: the pools hold at most a few connections per worker.
    for s in &samples {
        assert!(
            s.fds <= warm.fds + 2 * WORKERS,
            "open descriptors grew from {} to {}",
            warm.fds,
            s.fds
        );
    }
    // Memory: allocator slack is allowed, steady growth is not.
    assert!(
        last.rss <= warm.rss + 48 * MB,
        "resident memory grew from {} MB to {} MB",
        warm.rss / MB,
        last.rss / MB
    );
    if phases >= 4 {
        assert!(
            last.rss <= mid.rss + 16 * MB,
            "resident memory still growing late: {} MB at mid-run, {} MB at the end",
            mid.rss / MB,
            last.rss / MB
        );
    }
    assert!(
        upstream as usize >= total,
        "every request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_holds_memory_and_descriptors_steady() {
    // Warm-up and three phases of 100 requests each.
    soak(3, || Arc::new(|n| n < 100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs for minutes: SOAK_SECONDS (default 180)"]
async fn a_long_soak_holds_memory_and_descriptors_steady() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    // Warm-up and ten phases, each a tenth of the time.
    let each = Duration::from_secs(seconds) / 11;
    soak(10, move || {
        let until = Instant::now() + each;
        Arc::new(move |_| Instant::now() < until)
    })
    .await;
}
