//! Redis stopped mid-run and started again, under full_proxy with a per-client rate limit: while
//! it is down requests follow `RATE_LIMIT_FAIL_OPEN` (through, or 503 without an upstream call)
//! and none hangs; once it is back on the same port, the limit is enforced again.
//!
//! The key pool's shared state (cool-downs, disabled flags) too: while Redis is down a key that
//! gets a 429 still cools down locally and every request is served; once Redis is back, two
//! instances see each other's cool-downs again.
//!
//! Each test runs its own `redis-server` on a free loopback port; without `redis-server` on the
//! PATH they print "skipping: ..." and pass.

#![cfg(all(feature = "rate-limit", feature = "redis"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::Value;
use support::Proxy;
use tokio::process::{Child, Command};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, KeyBehavior};

const KEY: &str = "AIzaSyRedis-outage-test-key-000000001";
const LIMIT: usize = 3;

/// A private `redis-server` child on a fixed port, killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port; `None` (after saying why) when there is no `redis-server`.
    async fn start() -> Option<Redis> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut redis = Redis { port, child: None };
        if !redis.spawn().await {
            println!("skipping: redis-server is not installed or did not start");
            return None;
        }
        Some(redis)
    }

    /// (Re)starts the server on its port; false when it cannot.
    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                port.as_str(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        // Ready when it answers PING.
        for _ in 0..100 {
            if self.ping().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn ping(&self) -> bool {
        let ping = async {
            let client = redis::Client::open(self.url()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), ping).await,
            Ok(Some(_))
        )
    }

    /// Kills the server (SIGKILL: a crash, not a polite shutdown) and waits for it to be gone.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        assert!(!self.ping().await, "redis is down");
    }

    /// The members of the key pool's shared cool-down set (`"{key id}\t{model}"`).
    async fn cooling(&self) -> Vec<String> {
        let read = async {
            let client = redis::Client::open(self.url()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("ZRANGE")
                .arg("tower-gemini:keys:cooling")
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .ok()
        };
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

async fn setup(redis: &Redis, fail_open: &str) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let redis_url = redis.url();
    let limit = LIMIT.to_string();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("MAX_REQUESTS_PER_MINUTE", limit.as_str()),
        ("RATE_LIMIT_FAIL_OPEN", fail_open),
    ])
    .await;
    (fake, proxy)
}

/// One request; it must be answered within a few seconds whatever Redis does.
async fn generate(proxy: &Proxy) -> (StatusCode, Value) {
    generate_with(proxy, "gemini-2.5-flash").await
}

/// One request for `model`; it must be answered within a few seconds whatever Redis does.
async fn generate_with(proxy: &Proxy, model: &str) -> (StatusCode, Value) {
    let req = Request::post(format!("/v1beta/models/{model}:generateContent"))
        .header("authorization", format!("Bearer {}", proxy.token))
        .body(Body::from(
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        ))
        .unwrap();
    let call = UpstreamClient::new(proxy.url()).unwrap().oneshot(req);
    let res: Response<Body> = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("no request hangs on Redis")
        .unwrap();
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Uses the whole quota, then checks the next request is refused.
async fn exhaust(proxy: &Proxy) {
    for i in 0..LIMIT {
        let (s, v) = generate(proxy).await;
        assert_eq!(s, StatusCode::OK, "request {i}: {v}");
    }
    let (s, v) = generate(proxy).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
}

/// Sends requests (a little apart) until one gets `want`; panics after many tries.
async fn until(proxy: &Proxy, want: StatusCode, allowed: &[StatusCode]) -> usize {
    for n in 0..150 {
        let (s, v) = generate(proxy).await;
        if s == want {
            return n;
        }
        assert!(allowed.contains(&s), "unexpected {s}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never got {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_with_503_while_redis_is_down_and_limits_again_after() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let (fake, proxy) = setup(&redis, "false").await;
    exhaust(&proxy).await;
    assert_eq!(fake.total_requests(), LIMIT as u64);

    redis.kill().await;
    for _ in 0..5 {
        let (s, v) = generate(&proxy).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["error"]["code"], 503, "{v}");
    }
    assert_eq!(
        fake.total_requests(),
        LIMIT as u64,
        "a refused request never reaches the upstream"
    );

    // Back on the same port, empty (no persistence): 503 until the gateway reconnects, then
    // exactly a fresh quota and a 429.
    assert!(redis.spawn().await, "redis restarts");
    until(&proxy, StatusCode::OK, &[StatusCode::SERVICE_UNAVAILABLE]).await;
    for i in 1..LIMIT {
        let (s, v) = generate(&proxy).await;
        assert_eq!(s, StatusCode::OK, "request {i} after the restart: {v}");
    }
    let (s, v) = generate(&proxy).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(fake.total_requests(), 2 * LIMIT as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_requests_through_while_redis_is_down_and_limits_again_after() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let (fake, proxy) = setup(&redis, "true").await;
    exhaust(&proxy).await;

    redis.kill().await;
    // Past the quota, yet served: the limiter cannot count, so it lets requests through, and
    // the key pool (whose shared state was on Redis too) keeps serving from local state.
    for _ in 0..(2 * LIMIT) {
        let (s, v) = generate(&proxy).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert_eq!(fake.total_requests(), 3 * LIMIT as u64);

    assert!(redis.spawn().await, "redis restarts");
    // Through until the gateway reconnects; then the fresh quota runs out and 429 comes back.
    let through = until(&proxy, StatusCode::TOO_MANY_REQUESTS, &[StatusCode::OK]).await;
    assert!(through >= LIMIT, "a whole fresh quota first ({through})");
    let (s, v) = generate(&proxy).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let health = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

// === Key pool state ===

const POOL_KEY_1: &str = "AIzaSyRedis-outage-pool-key-one-000001";
const POOL_KEY_2: &str = "AIzaSyRedis-outage-pool-key-two-000002";

/// Two instances of full_proxy sharing one Redis (no rate limit: only the key pool uses it).
async fn two_instances(redis: &Redis) -> (FakeGemini, Proxy, Proxy) {
    let fake = FakeGemini::start([POOL_KEY_1, POOL_KEY_2]).await.unwrap();
    let url = fake.url();
    let redis_url = redis.url();
    let keys = format!("{POOL_KEY_1},{POOL_KEY_2}");
    let vars = [
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("KEY_COOLDOWN_SECONDS", "60"),
        ("RETRY_DELAY_MS", "0"),
    ];
    let a = Proxy::start(&vars).await;
    let b = Proxy::start(&vars).await;
    (fake, a, b)
}

/// Sends requests for `model` through `proxy` until `key` has been tried (and answered 429);
/// every request is served (by the other key).
async fn hit_exhausted_key(fake: &FakeGemini, proxy: &Proxy, key: &str, model: &str) {
    let before = fake.requests_for(key);
    for _ in 0..4 {
        let (s, v) = generate_with(proxy, model).await;
        assert_eq!(s, StatusCode::OK, "served by the other key: {v}");
        if fake.requests_for(key) > before {
            return;
        }
    }
    panic!("the pool never tried {key} for {model}");
}

/// `n` requests for `model` through `proxy`, all served, none of them on `key`.
async fn served_without(fake: &FakeGemini, proxy: &Proxy, key: &str, model: &str, n: usize) {
    let before = fake.requests_for(key);
    for i in 0..n {
        let (s, v) = generate_with(proxy, model).await;
        assert_eq!(s, StatusCode::OK, "request {i}: {v}");
    }
    assert_eq!(
        fake.requests_for(key),
        before,
        "{key} is cooling for {model}, yet it was used"
    );
}

/// Longer than the pool's sync interval (1 s): the next request pulls the shared state.
async fn next_sync() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_cool_downs_stay_local_while_redis_is_down_and_are_shared_again_after() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let (fake, a, b) = two_instances(&redis).await;
    let quota = KeyBehavior::exhausted(Duration::from_secs(60));

    // Redis up: a key exhausted through A is not used by B.
    fake.set_key_for_model(POOL_KEY_1, "gemini-2.5-flash", quota.clone());
    hit_exhausted_key(&fake, &a, POOL_KEY_1, "gemini-2.5-flash").await;
    next_sync().await;
    served_without(&fake, &b, POOL_KEY_1, "gemini-2.5-flash", 4).await;

    // Redis down: every request is served in time, and a key that gets a 429 cools down in
    // the instance that saw it (B, which saw nothing, still knows the cool-down from before).
    redis.kill().await;
    fake.set_key_for_model(POOL_KEY_2, "gemini-2.0-flash", quota.clone());
    hit_exhausted_key(&fake, &a, POOL_KEY_2, "gemini-2.0-flash").await;
    served_without(&fake, &a, POOL_KEY_2, "gemini-2.0-flash", 4).await;
    next_sync().await;
    served_without(&fake, &a, POOL_KEY_2, "gemini-2.0-flash", 2).await;
    served_without(&fake, &b, POOL_KEY_1, "gemini-2.5-flash", 4).await;

    // Redis back on the same port, empty. Ordinary traffic reconnects both instances, and A
    // hands over the cool-down it learnt while Redis was away.
    assert!(redis.spawn().await, "redis restarts");
    let mut shared = Vec::new();
    for _ in 0..20 {
        next_sync().await;
        for proxy in [&a, &b] {
            let (s, v) = generate_with(proxy, "gemini-2.5-flash-lite").await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        shared = redis.cooling().await;
        if shared.iter().any(|m| m.ends_with("\tgemini-2.0-flash")) {
            break;
        }
    }
    assert!(
        shared.iter().any(|m| m.ends_with("\tgemini-2.0-flash")),
        "the cool-down from the outage reaches Redis: {shared:?}"
    );
    next_sync().await;
    served_without(&fake, &b, POOL_KEY_2, "gemini-2.0-flash", 4).await;

    // And a new cool-down is shared as before.
    fake.set_key_for_model(POOL_KEY_1, "gemini-2.5-pro", quota);
    hit_exhausted_key(&fake, &a, POOL_KEY_1, "gemini-2.5-pro").await;
    next_sync().await;
    served_without(&fake, &b, POOL_KEY_1, "gemini-2.5-pro", 4).await;
}
