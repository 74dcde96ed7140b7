//! A fleet: three `full_proxy` processes on one real Redis behave as one gateway.
//!
//! Each test starts its own `redis-server` on a free loopback port, a FakeGemini in this
//! process, and full_proxy processes (the example's binary, built by `cargo test`, or here
//! when missing) pointed at both, then talks to them over HTTP as a load balancer would:
//! - tokens created on one instance are accepted by the others within 1 s, revoked ones
//!   refused by all within 1 s; keys added on one serve requests on another; a policy change
//!   holds everywhere;
//! - a key disabled by upstream answers on one is skipped by the others; an operator's
//!   re-enable holds everywhere and survives a restart of every instance;
//! - a per-token quota admits exactly its limit across instances;
//! - Redis paused (`SIGSTOP`) for 5 s and then killed: requests keep being served, none waits
//!   anywhere near Redis's own timeouts, nothing panics, and the state converges once Redis
//!   is back (a revocation made during the outage reaches every instance).
//!
//! Without `redis-server` on the PATH the tests print "skipping: ..." and pass.

#![cfg(all(feature = "redis", feature = "testing"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tower_gemini::testing::{FakeGemini, KeyBehavior};

const K1: &str = "AIzaSyFleet-key-0000000000000000000001";
const K2: &str = "AIzaSyFleet-key-0000000000000000000002";
const K3: &str = "AIzaSyFleet-key-0000000000000000000003";
const ADMIN: &str = "fleet-admin-token-0001";
const CLIENT: &str = "fleet-client-token-0001";
/// What the contract promises: a change holds on every instance within this.
const WITHIN: Duration = Duration::from_secs(1);

// === Redis ===

/// A private `redis-server` child on a fixed port (append-only file in a temp dir, so a
/// restart keeps what was written), killed on drop.
struct Redis {
    port: u16,
    dir: tempfile_dir::Dir,
    child: Option<Child>,
}

/// A temp dir without a dependency: removed on drop.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "tower-gemini-{name}-{}-{}",
                std::process::id(),
                super::free_port()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    async fn start() -> Option<Redis> {
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile_dir::Dir::new("fleet-redis"),
            child: None,
        };
        if !redis.spawn().await {
            println!("skipping: redis-server is not installed or did not start");
            return None;
        }
        Some(redis)
    }

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
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("redis runs");
        let ok = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

// === full_proxy processes ===

/// The example's binary: built by `cargo test` next to this test's own executable (in
/// `target/<profile>/examples/`), or built here when this test runs on its own.
fn full_proxy_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("examples").join("full_proxy");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", "full_proxy", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example full_proxy");
    }
    bin
}

/// One full_proxy process, killed on drop. Its stderr goes to a file (checked for panics).
struct Instance {
    port: u16,
    vars: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    async fn start(vars: &[(&str, String)], log_dir: &Path) -> Instance {
        let port = free_port();
        let mut i = Instance {
            port,
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            child: None,
            log: log_dir.join(format!("full_proxy-{port}.log")),
        };
        i.spawn().await;
        i
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(full_proxy_binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .env("LOG_LEVEL", "info")
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.log.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("full_proxy starts"));
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = client
                .get(format!("{}/health/live", self.url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "full_proxy did not start: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        self.spawn().await;
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process still runs and never panicked.
    fn assert_healthy(&mut self) {
        let exited = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(exited.is_none(), "full_proxy exited: {}", self.logs());
        assert!(!self.logs().contains("panicked"), "{}", self.logs());
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn generate(client: &reqwest::Client, at: &Instance, token: &str) -> u16 {
    client
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            at.url()
        ))
        .header("x-goog-api-key", token)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin(
    client: &reqwest::Client,
    at: &Instance,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}/admin{path}", at.url());
    let req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        "PATCH" => client.patch(url),
        other => panic!("{other}"),
    }
    .bearer_auth(ADMIN);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Waits (at most `within`) until `check` holds; how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Fleet {
    redis: Redis,
    fake: FakeGemini,
    instances: Vec<Instance>,
    _logs: tempfile_dir::Dir,
}

async fn fleet(n: usize, keys: &[&str], extra: &[(&str, &str)]) -> Option<Fleet> {
    let redis = Redis::start().await?;
    let fake = FakeGemini::builder()
        .keys([K1, K2, K3])
        .start()
        .await
        .unwrap();
    let logs = tempfile_dir::Dir::new("fleet-logs");
    let mut vars: Vec<(&str, String)> = vec![
        ("UPSTREAM_URL", fake.url()),
        ("GEMINI_API_KEYS", keys.join(",")),
        ("ALLOWED_TOKENS", CLIENT.to_owned()),
        ("ADMIN_TOKEN", ADMIN.to_owned()),
        ("REDIS_URL", redis.url()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(Instance::start(&vars, logs.path()).await);
    }
    Some(Fleet {
        redis,
        fake,
        instances,
        _logs: logs,
    })
}

fn key_state(keys: &Value, id: &str) -> String {
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .map(|k| k["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| "absent".into())
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_on_one_instance_hold_on_every_instance_within_a_second() {
    let Some(mut f) = fleet(3, &[K1], &[]).await else {
        return;
    };
    let c = http();
    let [a, b, cc] = [&f.instances[0], &f.instances[1], &f.instances[2]];

    // A token created on A: accepted by B and C within 1 s.
    let (status, created) = admin(&c, a, "POST", "/tokens", Some(json!({"name": "team-x"}))).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    for other in [b, cc] {
        let took = eventually(WITHIN, "token accepted elsewhere", || async {
            generate(&c, other, &token).await == 200
        })
        .await;
        println!("token created on A accepted on another instance after {took:?}");
    }

    // Revoked on B: refused by all three within 1 s, without an upstream call.
    let (status, _) = admin(&c, b, "DELETE", &format!("/tokens/{token}"), None).await;
    assert_eq!(status, 204);
    for at in [a, b, cc] {
        let took = eventually(WITHIN, "revoked token refused everywhere", || async {
            generate(&c, at, &token).await == 401
        })
        .await;
        println!("token revoked on B refused after {took:?}");
    }
    let upstream = f.fake.total_requests();
    for at in [a, b, cc] {
        assert_eq!(generate(&c, at, &token).await, 401);
    }
    assert_eq!(
        f.fake.total_requests(),
        upstream,
        "a refused token never reaches upstream"
    );

    // A key added on A serves requests on C.
    let (status, added) = admin(&c, a, "POST", "/keys", Some(json!({"key": K2}))).await;
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_str().unwrap().to_owned();
    eventually(WITHIN, "key added on A listed on C", || async {
        key_state(&admin(&c, cc, "GET", "/keys", None).await.1, &id) == "enabled"
    })
    .await;
    let before = f.fake.requests_for(K2);
    for _ in 0..4 {
        assert_eq!(generate(&c, cc, CLIENT).await, 200);
    }
    assert!(
        f.fake.requests_for(K2) > before,
        "C used the key added on A"
    );

    // Removed on C: gone from A and B within 1 s, and from then on never used.
    let (status, _) = admin(&c, cc, "DELETE", &format!("/keys/{id}"), None).await;
    assert_eq!(status, 204);
    for at in [a, b] {
        eventually(WITHIN, "key removed on C gone elsewhere", || async {
            key_state(&admin(&c, at, "GET", "/keys", None).await.1, &id) == "absent"
        })
        .await;
    }
    let before = f.fake.requests_for(K2);
    for at in [a, b, cc] {
        assert_eq!(generate(&c, at, CLIENT).await, 200);
    }
    assert_eq!(f.fake.requests_for(K2), before);

    // A run-time policy change on B holds on A.
    let (status, _) = admin(
        &c,
        b,
        "POST",
        "/config/inject-prompt",
        Some(json!({"enabled": true, "content": "Answer in French.", "position": "system"})),
    )
    .await;
    assert_eq!(status, 200);
    eventually(WITHIN, "policy change on B in force on A", || async {
        let (_, config) = admin(&c, a, "GET", "/config", None).await;
        config["policy"]["inject_prompt"]["content"] == "Answer in French."
    })
    .await;
    assert_eq!(generate(&c, a, CLIENT).await, 200);
    let sent = f.fake.last_received().unwrap();
    assert!(
        String::from_utf8_lossy(&sent.body).contains("Answer in French."),
        "A injects B's prompt"
    );

    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_health_is_one_view_and_a_re_enable_survives_restarts() {
    let Some(mut f) = fleet(3, &[K1, K2], &[("MAX_FAILURES", "1")]).await else {
        return;
    };
    let c = http();
    let (_, keys) = admin(&c, &f.instances[0], "GET", "/keys", None).await;
    let id1 = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| {
            k["key"]
                .as_str()
                .is_some_and(|m| m.ends_with(&K1[K1.len() - 4..]))
        })
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{keys}"));

    // K1 turns invalid upstream; A learns it from answers.
    f.fake.set_key(K1, KeyBehavior::Invalid);
    for _ in 0..4 {
        assert_eq!(generate(&c, &f.instances[0], CLIENT).await, 200);
    }
    assert!(
        key_state(
            &admin(&c, &f.instances[0], "GET", "/keys", None).await.1,
            &id1
        )
        .starts_with("disabled")
    );

    // B and C skip it without ever trying it.
    for i in 1..3 {
        let at = &f.instances[i];
        eventually(
            Duration::from_secs(3),
            "disabled key seen disabled",
            || async {
                key_state(&admin(&c, at, "GET", "/keys", None).await.1, &id1)
                    .starts_with("disabled")
            },
        )
        .await;
    }
    let tried = f.fake.requests_for(K1);
    for _ in 0..6 {
        assert_eq!(generate(&c, &f.instances[1], CLIENT).await, 200);
        assert_eq!(generate(&c, &f.instances[2], CLIENT).await, 200);
    }
    assert_eq!(
        f.fake.requests_for(K1),
        tried,
        "B and C never tried the disabled key"
    );

    // Fixed upstream; an operator re-enables it on C: enabled everywhere, and after every
    // instance restarts.
    f.fake.set_key(K1, KeyBehavior::Valid);
    let (status, _) = admin(
        &c,
        &f.instances[2],
        "POST",
        &format!("/keys/{id1}/enable"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for i in 0..3 {
        let at = &f.instances[i];
        eventually(Duration::from_secs(5), "re-enabled everywhere", || async {
            key_state(&admin(&c, at, "GET", "/keys", None).await.1, &id1) == "enabled"
        })
        .await;
    }
    for i in f.instances.iter_mut() {
        i.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // a key-state sync or more
    for i in 0..3 {
        assert_eq!(
            key_state(
                &admin(&c, &f.instances[i], "GET", "/keys", None).await.1,
                &id1
            ),
            "enabled"
        );
    }
    let before = f.fake.requests_for(K1);
    for _ in 0..4 {
        assert_eq!(generate(&c, &f.instances[0], CLIENT).await, 200);
    }
    assert!(
        f.fake.requests_for(K1) > before,
        "the re-enabled key serves again"
    );
    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_token_quota_admits_exactly_its_limit_across_instances() {
    let Some(mut f) = fleet(3, &[K1], &[("MAX_REQUESTS_PER_MINUTE", "10")]).await else {
        return;
    };
    let c = http();
    let mut calls = Vec::new();
    for round in 0..10 {
        for i in 0..3 {
            let c = c.clone();
            let url = f.instances[i].url();
            let _ = round;
            calls.push(tokio::spawn(async move {
                c.post(format!(
                    "{url}/v1beta/models/gemini-2.5-flash:generateContent"
                ))
                .header("x-goog-api-key", CLIENT)
                .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
            }));
        }
    }
    let mut ok = 0;
    let mut limited = 0;
    for call in calls {
        match call.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (ok, limited),
        (10, 20),
        "exactly the limit across three instances"
    );
    assert_eq!(
        f.fake.total_requests(),
        10,
        "the refused ones never reached upstream"
    );
    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_then_killed_never_stalls_requests_and_state_converges_after() {
    let Some(mut f) = fleet(
        3,
        &[K1, K2],
        &[
            ("MAX_REQUESTS_PER_MINUTE", "100000"),
            ("REDIS_TIMEOUT_MS", "50"),
        ],
    )
    .await
    else {
        return;
    };
    let c = http();
    // A token every instance knows, to be revoked while Redis is gone.
    let (status, created) = admin(
        &c,
        &f.instances[0],
        "POST",
        "/tokens",
        Some(json!({"name": "doomed"})),
    )
    .await;
    assert_eq!(status, 201);
    let doomed = created["token"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let at = &f.instances[i];
        eventually(WITHIN, "token known everywhere", || async {
            generate(&c, at, &doomed).await == 200
        })
        .await;
    }

    // Paused for 5 s: a Redis that stalls rather than refusing connections.
    f.redis.signal("-STOP");
    let paused = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while paused.elapsed() < Duration::from_secs(5) {
        for i in 0..3 {
            let t = Instant::now();
            let status = generate(&c, &f.instances[i], CLIENT).await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(status, 200, "served on the last known state (fail open)");
            served += 1;
        }
    }
    println!("Redis paused: {served} requests served, slowest {slowest:?}");
    // The budget is 50 ms; Redis's own timeouts (2 s) or retries would show here. Generous
    // for a busy 2-core machine, far below what waiting on Redis costs.
    assert!(slowest < Duration::from_millis(1000), "slowest {slowest:?}");

    // Revoked on A while Redis is stalled: refused on A at once, saved once Redis answers.
    let (status, body) = admin(
        &c,
        &f.instances[0],
        "DELETE",
        &format!("/tokens/{doomed}"),
        None,
    )
    .await;
    assert_eq!(
        status, 500,
        "the operator is told it is not saved yet: {body}"
    );
    assert_eq!(generate(&c, &f.instances[0], &doomed).await, 401);

    // Then killed: still served.
    f.redis.signal("-CONT");
    f.redis.kill().await;
    for _ in 0..5 {
        for i in 0..3 {
            let t = Instant::now();
            assert_eq!(generate(&c, &f.instances[i], CLIENT).await, 200);
            slowest = slowest.max(t.elapsed());
        }
    }

    // Back (with what it had written): the pending revocation reaches every instance, and
    // new changes flow again.
    assert!(f.redis.spawn().await, "redis restarts");
    for i in 0..3 {
        let at = &f.instances[i];
        eventually(
            Duration::from_secs(10),
            "revocation made during the outage applies",
            || async { generate(&c, at, &doomed).await == 401 },
        )
        .await;
    }
    let (status, created) = admin(
        &c,
        &f.instances[2],
        "POST",
        "/tokens",
        Some(json!({"name": "after"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let after = created["token"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let at = &f.instances[i];
        eventually(WITHIN, "new token after the outage", || async {
            generate(&c, at, &after).await == 200
        })
        .await;
    }
    let res = c
        .get(format!("{}/status", f.instances[1].url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status: Value = res.json().await.unwrap();
    assert_eq!(status["fleet"]["shared"], true, "{status}");
    assert!(
        status["fleet"]["last_sync_age_ms"].as_u64().unwrap() < 1000,
        "{status}"
    );
    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}

// === Accounts across the fleet ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_spent_on_one_instance_is_spent_on_the_others() {
    let Some(mut f) = fleet(2, &[K1], &[]).await else {
        return;
    };
    let c = http();
    let (status, created) = admin(
        &c,
        &f.instances[0],
        "POST",
        "/tokens",
        Some(json!({"name": "budget", "daily_token_budget": 1000})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    // Spent on A, unary answers and streams alike.
    let mut served = 0;
    loop {
        let status = if served % 2 == 0 {
            generate(&c, &f.instances[0], &token).await
        } else {
            c.post(format!(
                "{}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                f.instances[0].url()
            ))
            .header("x-goog-api-key", &token)
            .json(&json!({"contents": [{"parts": [{"text": "a long story"}]}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
        };
        match status {
            200 => served += 1,
            429 => break,
            other => panic!("{other}"),
        }
        assert!(served < 200, "the budget never ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 2, "{served}");
    // B refuses at once: the count is the fleet's.
    let upstream = f.fake.total_requests();
    let res = c
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            f.instances[1].url()
        ))
        .header("x-goog-api-key", &token)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body = res.text().await.unwrap();
    assert!(body.contains("daily token budget"), "{body}");
    assert_eq!(f.fake.total_requests(), upstream);
    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_a_tokens_limits_holds_on_the_very_next_request_elsewhere() {
    let Some(mut f) = fleet(3, &[K1], &[]).await else {
        return;
    };
    let c = http();
    let (status, created) = admin(
        &c,
        &f.instances[0],
        "POST",
        "/tokens",
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(status, 201);
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    for i in 1..3 {
        assert_eq!(generate(&c, &f.instances[i], &token).await, 200);
    }
    // Changed on A; the very next request on B and C (no waiting) sees it.
    let (status, patched) = admin(
        &c,
        &f.instances[0],
        "PATCH",
        &format!("/tokens/{id}"),
        Some(json!({"models": ["gemini-2.0-flash"]})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    for i in 1..3 {
        assert_eq!(
            generate(&c, &f.instances[i], &token).await,
            403,
            "instance {i}"
        );
    }
    let (status, _) = admin(
        &c,
        &f.instances[2],
        "PATCH",
        &format!("/tokens/{id}"),
        Some(json!({"models": null, "rpm": 1})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(generate(&c, &f.instances[0], &token).await, 200);
    assert_eq!(
        generate(&c, &f.instances[1], &token).await,
        429,
        "rpm 1 across the fleet"
    );
    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_file_seeds_its_tokens_and_a_malformed_one_stops_start_up() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let fake = FakeGemini::builder().keys([K1]).start().await.unwrap();
    let logs = tempfile_dir::Dir::new("fleet-tokens-file");
    let file = logs.path().join("tokens.toml");
    std::fs::write(
        &file,
        "# seeded\n[[token]]\nname = \"ci\"\ntoken = \"sk-seeded-ci-token-0001\"\nmodels = [\"gemini-2.5-flash\"]\n\n[[token]]\nname = \"nightly\"\ntoken_sha256 = \"4ca5fee4bbd2ff4a5a2c46cd8eb3b8046fd35ebf1b9fc4d8f20db7d3d1f0b4e7\"\nexpires_at = 2020-01-01T00:00:00Z\n",
    )
    .unwrap();
    let vars: Vec<(&str, String)> = vec![
        ("UPSTREAM_URL", fake.url()),
        ("GEMINI_API_KEYS", K1.to_owned()),
        ("ADMIN_TOKEN", ADMIN.to_owned()),
        ("REDIS_URL", redis.url()),
        ("TOKENS_FILE", file.display().to_string()),
    ];
    let mut a = Instance::start(&vars, logs.path()).await;
    let c = http();
    assert_eq!(generate(&c, &a, "sk-seeded-ci-token-0001").await, 200);
    let res = c
        .post(format!(
            "{}/v1beta/models/gemini-2.5-pro:generateContent",
            a.url()
        ))
        .header("x-goog-api-key", "sk-seeded-ci-token-0001")
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "the file's model list holds");
    let (_, listed) = admin(&c, &a, "GET", "/tokens", None).await;
    let sources: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["source"] == "file")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["ci", "nightly"], "{listed}");
    assert!(
        !listed.to_string().contains("sk-seeded"),
        "no token in a listing"
    );
    a.assert_healthy();

    // A typo on line 5 stops the start, naming the line.
    std::fs::write(
        &file,
        "[[token]]\nname = \"ci\"\ntoken = \"sk-seeded-ci-token-0001\"\n\nmodles = [\"x\"]\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(full_proxy_binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("UPSTREAM_URL", fake.url())
        .env("GEMINI_API_KEYS", K1)
        .env("TOKENS_FILE", &file)
        .current_dir(logs.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("exits")
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("TOKENS_FILE") && text.contains("line 5") && text.contains("modles"),
        "{text}"
    );
}

// === On a real Redis Cluster ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_redis_cluster_behave_as_one() {
    let Some(cluster) = tokio::task::spawn_blocking(support::redis_servers::RedisCluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    let fake = FakeGemini::builder().keys([K1, K2]).start().await.unwrap();
    let logs = tempfile_dir::Dir::new("fleet-cluster");
    let vars: Vec<(&str, String)> = vec![
        ("UPSTREAM_URL", fake.url()),
        ("GEMINI_API_KEYS", K1.to_owned()),
        ("ALLOWED_TOKENS", CLIENT.to_owned()),
        ("ADMIN_TOKEN", ADMIN.to_owned()),
        ("REDIS_URL", cluster.url()),
        ("MAX_REQUESTS_PER_MINUTE", "6".to_owned()),
    ];
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&vars, logs.path()).await);
    }
    let c = http();
    // A token created on one is accepted by the others within 1 s; revoked, refused by all.
    let (status, created) = admin(
        &c,
        &instances[0],
        "POST",
        "/tokens",
        Some(json!({"name": "cl"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    for at in &instances[1..] {
        eventually(WITHIN, "token accepted on the cluster fleet", || async {
            generate(&c, at, &token).await == 200
        })
        .await;
    }
    let (status, _) = admin(
        &c,
        &instances[2],
        "DELETE",
        &format!("/tokens/{token}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    for at in &instances {
        assert_eq!(
            generate(&c, at, &token).await,
            401,
            "refused at once everywhere"
        );
    }
    // A key added on one serves on another.
    let (status, _) = admin(&c, &instances[1], "POST", "/keys", Some(json!({"key": K2}))).await;
    assert_eq!(status, 201);
    // The shared per-token quota: 6 a minute for CLIENT across the three.
    let mut ok = 0;
    for _ in 0..4 {
        for at in &instances {
            if generate(&c, at, CLIENT).await == 200 {
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 6, "exactly the limit across the cluster fleet");
    assert!(fake.requests_for(K2) > 0, "the key added on B served");
    for i in instances.iter_mut() {
        i.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_disabled_by_an_operator_is_out_everywhere_until_enabled() {
    let Some(mut f) = fleet(3, &[K1, K2], &[]).await else {
        return;
    };
    let c = http();
    let (_, keys) = admin(&c, &f.instances[0], "GET", "/keys", None).await;
    let id2 = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| {
            k["key"]
                .as_str()
                .is_some_and(|m| m.ends_with(&K2[K2.len() - 4..]))
        })
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    let (status, body) = admin(
        &c,
        &f.instances[0],
        "POST",
        &format!("/keys/{id2}/disable"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for at in &f.instances {
        eventually(WITHIN, "operator's disable seen everywhere", || async {
            key_state(&admin(&c, at, "GET", "/keys", None).await.1, &id2).starts_with("disabled")
        })
        .await;
    }
    let before = f.fake.requests_for(K2);
    for _ in 0..4 {
        for at in &f.instances {
            assert_eq!(generate(&c, at, CLIENT).await, 200);
        }
    }
    assert_eq!(
        f.fake.requests_for(K2),
        before,
        "no instance used the disabled key"
    );
    let (status, _) = admin(
        &c,
        &f.instances[2],
        "POST",
        &format!("/keys/{id2}/enable"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for at in &f.instances {
        eventually(WITHIN, "re-enabled everywhere", || async {
            key_state(&admin(&c, at, "GET", "/keys", None).await.1, &id2) == "enabled"
        })
        .await;
    }
    for _ in 0..2 {
        for at in &f.instances {
            assert_eq!(generate(&c, at, CLIENT).await, 200);
        }
    }
    assert!(f.fake.requests_for(K2) > before, "the key serves again");
    for i in f.instances.iter_mut() {
        i.assert_healthy();
    }
}
