//! Every Redis store on Redis as people run it: a real local Redis Cluster (three masters,
//! started here), with a password, over TLS with a private CA, and one node behind TLS.
//!
//! Each test starts its own servers in a temporary directory (tests/support/redis_servers.rs)
//! and kills them at the end; without `redis-server` and `redis-cli` on the PATH they print
//! "skipping: ..." and pass. The shared Redis on 127.0.0.1:6379 is never touched.
#![cfg(all(
    feature = "redis",
    feature = "persist",
    feature = "key-rotation",
    feature = "rate-limit",
    feature = "affinity",
    feature = "openai",
    feature = "accounts"
))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::redis_servers::{RedisCluster, RedisOptions, TlsRedis};
use tower_gemini::accounts::{BudgetRedisStore, BudgetStore, Period};
use tower_gemini::affinity::{AffinityRedisStore, AffinityStore, Pinned};
use tower_gemini::key_rotation::{KeyId, KeyStateRedisStore, KeyStateStore};
use tower_gemini::openai::responses::{ResponseRedisStore, ResponseStore, StoredResponse};
use tower_gemini::persist::{AdminRedisStore, AdminStore, KeyRecord, TokenRecord};
use tower_gemini::rate_limit::{Check, RateLimitRedisStore, RateLimitStore};
use tower_gemini::{RedisConfig, RedisConnection};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A raw connection to check what the stores wrote, key by key.
async fn raw(redis: &RedisConfig) -> RedisConnection {
    redis.connect().await.expect("connects")
}

async fn exists(conn: &mut RedisConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<u64>(conn)
        .await
        .unwrap()
        == 1
}

/// The name a store's key has: on a Cluster under a hash-tagged prefix, on one node as before.
fn named(cluster: bool, prefix: &str, rest: &str) -> String {
    if cluster {
        format!("{{{prefix}}}{rest}")
    } else {
        format!("{prefix}{rest}")
    }
}

/// Admin changes round-trip through Redis, seen by a second connection (another instance).
async fn admin_store(redis: &RedisConfig) {
    let prefix = "tg-test:admin";
    let store =
        AdminRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let key = KeyRecord::new("AIzaSyCluster-test-key-00000000000001");
    let gone = KeyRecord::new("AIzaSyCluster-test-key-00000000000002");
    store.put_key(&key).await.unwrap();
    store.put_key(&gone).await.unwrap();
    store.remove_key(&gone.id).await.unwrap();
    let alice = TokenRecord::new("sk-cluster-alice-0000000001", "alice", false);
    let bob = TokenRecord::new("sk-cluster-bob-000000000002", "bob", true);
    store.put_token(&alice).await.unwrap();
    store.put_token(&bob).await.unwrap();
    store.revoke_token(&bob).await.unwrap();
    store.put_setting("policy", &json!({"a": 1})).await.unwrap();
    store.put_setting("gone", &json!(2)).await.unwrap();
    store.delete_setting("gone").await.unwrap();

    let other =
        AdminRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let state = other.load().await.unwrap();
    assert_eq!(state.keys, vec![key]);
    assert_eq!(state.removed_keys, vec![gone.id.clone()]);
    assert_eq!(state.tokens, vec![alice]);
    assert_eq!(state.revoked_tokens, vec![bob]);
    assert_eq!(state.settings.len(), 1);
    assert_eq!(state.settings["policy"], json!({"a": 1}));

    let mut conn = raw(redis).await;
    for hash in [":keys", ":tokens", ":settings"] {
        let name = named(redis.is_cluster(), prefix, hash);
        assert!(exists(&mut conn, &name).await, "{name}");
    }
}

/// Cool-downs and disabled flags are shared, and re-enabling clears the flag everywhere.
async fn key_state_store(redis: &RedisConfig) {
    let prefix = "tg-test:keys";
    let a = KeyStateRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let b = KeyStateRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let hot = KeyId::new("k-hot");
    let bad = KeyId::new("k-bad");
    let until = SystemTime::now() + Duration::from_secs(60);
    a.cool_down(&hot, "gemini-2.5-flash", until).await.unwrap();
    a.disable(
        &bad,
        "API key not valid",
        SystemTime::now() + Duration::from_secs(300),
    )
    .await
    .unwrap();
    let seen = b.load().await.unwrap();
    let cooling = &seen[&hot].cooling;
    assert_eq!(cooling.len(), 1);
    assert_eq!(cooling[0].0, "gemini-2.5-flash");
    let off_by = cooling[0]
        .1
        .duration_since(until)
        .unwrap_or_else(|e| e.duration());
    assert!(off_by < Duration::from_millis(2), "{off_by:?}");
    assert_eq!(
        seen[&bad].disabled.as_ref().map(|d| d.0.as_str()),
        Some("API key not valid")
    );
    b.enable(&bad).await.unwrap();
    let seen = a.load().await.unwrap();
    assert!(seen.get(&bad).is_none_or(|s| s.disabled.is_none()));
    assert_eq!(seen[&hot].cooling.len(), 1);

    let mut conn = raw(redis).await;
    let name = named(redis.is_cluster(), prefix, ":cooling");
    assert!(exists(&mut conn, &name).await, "{name}");
}

/// N concurrent checks from two instances against a limit of L admit exactly L, each check
/// spanning three buckets (client, model, global) in one script.
async fn rate_limit_store(redis: &RedisConfig) {
    const LIMIT: u64 = 7;
    const N: usize = 40;
    let prefix = "tg-test:rl:";
    let store = || {
        RateLimitRedisStore::from_config(redis)
            .key_prefix(prefix)
            // The checks below race each other on a busy machine: this test is about
            // exactness, the 50 ms default is tested with a stalled cluster.
            .timeout(Duration::from_secs(2))
    };
    let stores = [std::sync::Arc::new(store()), std::sync::Arc::new(store())];
    let checks = |client: &str| {
        vec![
            Check {
                key: format!("r|c={client}"),
                interval: Duration::from_secs(60) / LIMIT as u32,
                capacity: LIMIT,
                cost: 1,
            },
            Check {
                key: "r|m=gemini-2.5-flash".to_owned(),
                interval: Duration::from_millis(600),
                capacity: 100,
                cost: 1,
            },
            Check {
                key: "r|g".to_owned(),
                interval: Duration::from_millis(600),
                capacity: 100,
                cost: 1,
            },
        ]
    };
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = stores[i % 2].clone();
        let checks = checks("alice");
        tasks.push(tokio::spawn(async move { store.check(&checks).await }));
    }
    let mut admitted = 0;
    for t in tasks {
        let out = t.await.unwrap().expect("every check answers");
        assert_eq!(out.len(), 3);
        if out.iter().all(|o| o.allowed) {
            admitted += 1;
        } else {
            assert!(
                !out[0].allowed,
                "only the client's bucket is spent: {out:?}"
            );
        }
    }
    assert_eq!(admitted, LIMIT, "exactly the limit, across both instances");
    // All or nothing: the refused checks charged neither shared bucket.
    let out = stores[0].check(&checks("bob")).await.unwrap();
    assert!(out.iter().all(|o| o.allowed), "{out:?}");
    assert_eq!(out[1].remaining, 100 - LIMIT - 1, "{out:?}");
    assert_eq!(out[2].remaining, 100 - LIMIT - 1, "{out:?}");

    let mut conn = raw(redis).await;
    for rest in ["r|c=alice", "r|c=bob", "r|g"] {
        let name = named(redis.is_cluster(), prefix, rest);
        assert!(exists(&mut conn, &name).await, "{name}");
    }
}

fn pin(name: &str, owner: &str, created_at: u64) -> Pinned {
    Pinned {
        name: name.to_owned(),
        key_id: "k-1".to_owned(),
        owner: owner.to_owned(),
        created_at,
        expires_at: unix_now() + 3600,
        meta: format!(r#"{{"name":"{name}"}}"#),
    }
}

/// Pins are shared; lists read a collection's pins in one go, filtered by owner.
async fn affinity_store(redis: &RedisConfig) {
    let prefix = "tg-test:affinity";
    let a = AffinityRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let b = AffinityRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let now = unix_now();
    a.put(pin("files/one", "alice", now)).await;
    a.put(pin("files/two", "bob", now + 1)).await;
    a.put(pin("cachedContents/x", "alice", now)).await;
    assert_eq!(
        b.get("files/one").await,
        Some(pin("files/one", "alice", now))
    );
    let names = |list: Vec<Pinned>| list.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(
        names(b.list("files/", None).await),
        ["files/one", "files/two"]
    );
    assert_eq!(names(b.list("files/", Some("bob")).await), ["files/two"]);
    b.remove("files/one").await;
    assert_eq!(a.get("files/one").await, None);
    assert_eq!(names(a.list("files/", None).await), ["files/two"]);

    let mut conn = raw(redis).await;
    let name = named(redis.is_cluster(), prefix, ":pin:files/two");
    assert!(exists(&mut conn, &name).await, "{name}");
}

/// Stored responses are shared; on a Cluster they spread over the nodes (no hash tag).
async fn response_store(redis: &RedisConfig) {
    let prefix = "tg-test:responses";
    let a = ResponseRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let b = ResponseRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let mut ids = Vec::new();
    for i in 0..12 {
        let entry = StoredResponse {
            id: format!("resp_{i}"),
            owner: "alice".to_owned(),
            model: "gemini-2.5-flash".to_owned(),
            created_at: unix_now(),
            expires_at: unix_now() + 3600,
            input: vec![json!({"role": "user", "content": format!("hello {i}")})],
            response: json!({"id": format!("resp_{i}"), "output": []}),
        };
        a.put(entry.clone()).await;
        assert_eq!(b.get(&entry.id).await, Some(entry));
        ids.push(format!("resp_{i}"));
    }
    assert!(b.remove("resp_0").await);
    assert_eq!(a.get("resp_0").await, None);
    assert!(!a.remove("resp_0").await);

    let mut conn = raw(redis).await;
    let name = format!("{prefix}:resp:resp_1");
    assert!(exists(&mut conn, &name).await, "{name}");
    if redis.is_cluster() {
        // Untagged names hash over the slots: twelve responses land on more than one slot.
        let mut slots = BTreeSet::new();
        for id in &ids {
            let slot: u64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(format!("{prefix}:resp:{id}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            slots.insert(slot);
        }
        assert!(slots.len() > 1, "{slots:?}");
    }
}

/// Token budgets count across instances, both periods in one round trip.
async fn budget_store(redis: &RedisConfig) {
    let prefix = "tg-test:budget";
    let a = BudgetRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let b = BudgetRedisStore::from_connection(redis.connect().await.unwrap()).with_prefix(prefix);
    let now = unix_now();
    a.record("tok-1", 100, now).await.unwrap();
    b.record("tok-1", 50, now).await.unwrap();
    let usage = a.usage("tok-1", now).await.unwrap();
    assert_eq!((usage.day.requests, usage.day.tokens), (2, 150));
    assert_eq!((usage.month.requests, usage.month.tokens), (2, 150));
    assert_eq!(b.usage("tok-2", now).await.unwrap().day.requests, 0);

    let mut conn = raw(redis).await;
    let rest = format!(":tok-1:d{}", Period::Day.label(now));
    let name = named(redis.is_cluster(), prefix, &rest);
    assert!(exists(&mut conn, &name).await, "{name}");
}

async fn every_store(redis: &RedisConfig) {
    budget_store(redis).await;
    admin_store(redis).await;
    key_state_store(redis).await;
    rate_limit_store(redis).await;
    affinity_store(redis).await;
    response_store(redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_works_on_a_cluster_with_a_password() {
    let Some(cluster) = RedisCluster::start_with(RedisOptions {
        password: Some("cluster-secret-1".to_owned()),
        tls: false,
    }) else {
        return;
    };
    let redis = RedisConfig::from_url(&cluster.url()).unwrap();
    assert!(redis.is_cluster());
    every_store(&redis).await;
    // The stores' keys are spread over the masters by their tags: more than one node holds
    // some (a store's keys share one slot, the stores differ).
    let holding = (0..3)
        .filter(|&i| {
            cluster
                .cli(i, &["DBSIZE"])
                .is_some_and(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
        })
        .count();
    assert!(holding > 1, "{holding} node(s) hold keys");
    // A wrong password is refused, not ignored.
    let wrong = cluster.url().replace("cluster-secret-1", "nope");
    let refused = RedisConfig::from_url(&wrong).unwrap().connect().await;
    assert!(refused.is_err());
    assert!(!refused.unwrap_err().to_string().contains("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_marked_cluster_true_finds_the_whole_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let redis = RedisConfig::from_url(&cluster.single_seed_url()).unwrap();
    assert!(redis.is_cluster());
    rate_limit_store(&redis).await;
    affinity_store(&redis).await;
    // Without the mark, the same URL is one node: multi-key calls across slots are refused
    // (CROSSSLOT) or redirected (MOVED), which the store reports as an error.
    let one = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.ports()[0])).unwrap();
    let plain = RateLimitRedisStore::from_connection(
        redis::aio::ConnectionManager::new(one)
            .await
            .unwrap()
            .into(),
    )
    .key_prefix("tg-test:plain:")
    .timeout(Duration::from_secs(2));
    let mut failed = 0;
    for client in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let checks = [
            Check {
                key: format!("r|c={client}"),
                interval: Duration::from_secs(1),
                capacity: 5,
                cost: 1,
            },
            Check {
                key: format!("r|m={client}"),
                interval: Duration::from_secs(1),
                capacity: 5,
                cost: 1,
            },
        ];
        failed += usize::from(plain.check(&checks).await.is_err());
    }
    assert!(
        failed > 0,
        "untagged keys on a Cluster must not all land on one node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_works_on_a_tls_cluster_with_a_private_ca() {
    let Some(cluster) = RedisCluster::start_with(RedisOptions {
        password: Some("tls-cluster-secret".to_owned()),
        tls: true,
    }) else {
        return;
    };
    assert!(cluster.url().starts_with("rediss://"));
    let redis = RedisConfig::from_url(&cluster.url())
        .unwrap()
        .with_root_certificates(cluster.ca_pem().unwrap())
        .unwrap();
    every_store(&redis).await;
    // Without the CA the certificate is not trusted.
    let untrusted = RedisConfig::from_url(&cluster.url())
        .unwrap()
        .connect()
        .await;
    assert!(untrusted.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_works_on_one_tls_node_under_the_old_names() {
    let Some(node) = TlsRedis::start(Some("tls-secret-1")) else {
        return;
    };
    let redis = RedisConfig::from_url(&node.url())
        .unwrap()
        .with_root_certificates(node.ca_pem())
        .unwrap();
    assert!(!redis.is_cluster() && redis.is_tls());
    // Untagged names on one node: what earlier versions wrote, checked key by key inside.
    every_store(&redis).await;
    // The stores' own `connect(url)` speaks TLS too (here Mozilla's roots do not know the
    // test CA, so it fails on the certificate, not on the protocol).
    let err = AdminRedisStore::connect(&node.url()).await.unwrap_err();
    assert!(!err.to_string().contains("tls-secret-1"), "{err}");
    // Plain text to a TLS port is no connection at all.
    let plain = node.url().replace("rediss://", "redis://");
    assert!(
        tokio::time::timeout(Duration::from_secs(6), AdminRedisStore::connect(&plain))
            .await
            .map_or(true, |r| r.is_err())
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cluster_costs_a_rate_limit_check_at_most_its_budget() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let redis = RedisConfig::from_url(&cluster.url()).unwrap();
    let store = RateLimitRedisStore::from_config(&redis).key_prefix("tg-test:stall:");
    let checks = [Check {
        key: "r|c=alice".to_owned(),
        interval: Duration::from_secs(1),
        capacity: 1000,
        cost: 1,
    }];
    // Warm: connected, slot map known, script loaded (the first calls may spend the budget
    // on connecting).
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.check(&checks).await.is_err() {
        assert!(Instant::now() < deadline, "the cluster never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pid in cluster.node_pids() {
        signal(pid, "-STOP");
    }
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let out = store.check(&checks).await;
        worst = worst.max(started.elapsed());
        assert!(out.unwrap_err().is_redis());
    }
    for pid in cluster.node_pids() {
        signal(pid, "-CONT");
    }
    // The 50 ms budget, plus scheduling slack on a busy machine.
    assert!(worst < Duration::from_millis(50 + 100), "{worst:?}");
    // And it recovers once the nodes answer again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.check(&checks).await.is_err() {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === full_proxy: REDIS_URL forms and REDIS_CA_FILE ===

mod full_proxy {
    use http::{Request, StatusCode};
    use serde_json::{Value, json};
    use tower_gemini::Body;
    use tower_gemini::testing::FakeGemini;

    use super::support::redis_servers::{RedisCluster, RedisOptions};
    use super::support::{Config, Proxy, send, status_and_text};

    const KEY: &str = "AIzaSyCluster-proxy-test-key-0000001";
    const KEY2: &str = "AIzaSyCluster-proxy-test-key-0000002";
    const ADMIN: &str = "cluster-admin-token-1";

    fn generate(token: &str) -> Request<Body> {
        Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(
                json!({"contents": [{"parts": [{"text": "hello"}]}]}).to_string(),
            ))
            .unwrap()
    }

    fn vars(map: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        map.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn redis_variables_are_checked_at_start_and_never_echo_a_password() {
        let bad =
            Config::from_map(&vars(&[("REDIS_URL", "redis://:hunter2@a:1,http://b")])).unwrap_err();
        assert!(bad.0.starts_with("REDIS_URL: "), "{}", bad.0);
        assert!(!bad.0.contains("hunter2"), "{}", bad.0);
        let alone = Config::from_map(&vars(&[("REDIS_CA_FILE", "/nonexistent.pem")])).unwrap_err();
        assert!(alone.0.starts_with("REDIS_CA_FILE: "), "{}", alone.0);
        let missing = Config::from_map(&vars(&[
            ("REDIS_URL", "rediss://a:1"),
            ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
        ]))
        .unwrap_err();
        assert!(missing.0.starts_with("REDIS_CA_FILE: "), "{}", missing.0);

        let dir = std::env::temp_dir().join(format!("tg-redis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["a".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let ca = ca.display().to_string();
        let plain = Config::from_map(&vars(&[
            ("REDIS_URL", "redis://a:1"),
            ("REDIS_CA_FILE", ca.as_str()),
        ]))
        .unwrap_err();
        assert!(
            plain.0.starts_with("REDIS_CA_FILE: ") && plain.0.contains("rediss://"),
            "{}",
            plain.0
        );
        let seeds = "rediss://:hunter2@a:1,rediss://:hunter2@b:2";
        let ok = Config::from_map(&vars(&[
            ("REDIS_URL", seeds),
            ("REDIS_CA_FILE", ca.as_str()),
        ]))
        .unwrap();
        let redis = ok.redis.as_ref().unwrap();
        assert!(redis.is_cluster() && redis.is_tls());
        let view = ok.to_json().to_string();
        assert!(!view.contains("hunter2"), "{view}");
        assert!(!format!("{ok:?}").contains("hunter2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two full_proxy instances on a password-protected TLS Cluster whose CA is given by
    /// REDIS_CA_FILE: one per-client quota, and admin changes kept in the Cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_share_a_tls_cluster_through_redis_ca_file() {
        let Some(cluster) = RedisCluster::start_with(RedisOptions {
            password: Some("proxy-cluster-secret".to_owned()),
            tls: true,
        }) else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("tg-redis-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cluster.ca_pem().unwrap()).unwrap();
        let ca = ca.display().to_string();
        let fake = FakeGemini::start([KEY, KEY2]).await.unwrap();
        let upstream = fake.url();
        let seeds = cluster.url();
        let vars = [
            ("GEMINI_API_KEYS", KEY),
            ("UPSTREAM_URL", upstream.as_str()),
            ("ALLOWED_TOKENS", "client-token-alice"),
            ("ADMIN_TOKEN", ADMIN),
            ("MAX_REQUESTS_PER_MINUTE", "3"),
            ("REDIS_URL", seeds.as_str()),
            ("REDIS_CA_FILE", ca.as_str()),
            ("REDIS_KEY_PREFIX", "tg-proxy"),
        ];
        let a = Proxy::start(&vars).await;
        let b = Proxy::start(&vars).await;
        let mut allowed = 0;
        for i in 0..8 {
            let proxy = if i % 2 == 0 { &a } else { &b };
            match send(proxy, generate("client-token-alice")).await.status() {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(allowed, 3, "one quota for both instances");

        let add = Request::post("/admin/keys")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Body::from(json!({ "key": KEY2 }).to_string()))
            .unwrap();
        let (status, text) = status_and_text(send(&a, add).await).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        let status = Request::get("/status")
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        let (_, text) = status_and_text(send(&b, status).await).await;
        let s: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s["persistence"]["store"], "redis", "{s}");
        // In the Cluster, under the tagged admin prefix.
        let redis = tower_gemini::RedisConfig::from_url(&seeds)
            .unwrap()
            .with_root_certificates(cluster.ca_pem().unwrap())
            .unwrap();
        let mut conn = redis.connect().await.unwrap();
        let keys: u64 = redis::cmd("HLEN")
            .arg("{tg-proxy:admin}:keys")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
