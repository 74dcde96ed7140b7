//! One source of truth per request, seen from outside: an aliased model is limited, cooled
//! down and counted under the model it resolves to, on both routes; a client credential in any
//! place or encoding never reaches upstream, through full_proxy or KeyRotation alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, get, send, status_and_text};
use tower::{ServiceBuilder, ServiceExt};
use tower_gemini::Body;
use tower_gemini::client::UpstreamClient;
use tower_gemini::key_rotation::{KeyPool, KeyRotationLayer};
use tower_gemini::secret::ApiKey;
use tower_gemini::testing::{FakeGemini, KeyBehavior, ReceivedRequest};

const KEY_A: &str = "AIzaSySeams-test-key-number-one-000001";
const KEY_B: &str = "AIzaSySeams-test-key-number-two-000002";
const CLIENT: &str = "test-client-token-1";
const ADMIN: &str = "test-admin-token-1";
const ALIAS: &str = "gpt-4o";
const MODEL: &str = "gemini-2.5-flash";

fn chat(model: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {CLIENT}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": model, "messages": [{"role": "user", "content": "tell me about bees"}]})
                .to_string(),
        ))
        .unwrap()
}

fn native(model: &str) -> Request<Body> {
    Request::post(format!("/v1beta/models/{model}:generateContent"))
        .header("x-goog-api-key", CLIENT)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "tell me about bees"}]}]})
                .to_string(),
        ))
        .unwrap()
}

async fn json_of(proxy: &Proxy, path: &str) -> Value {
    let (status, body) = status_and_text(send(proxy, get(path, Some(ADMIN))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-gemini-seams-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.db")
}

/// The `model` column of the request log, once `n` rows are there.
async fn logged_models(db: &std::path::Path, n: usize) -> Vec<String> {
    let read = || -> Vec<String> {
        let Ok(conn) = rusqlite::Connection::open(db) else {
            return Vec::new();
        };
        let Ok(mut stmt) = conn.prepare("SELECT model FROM requests ORDER BY rowid") else {
            return Vec::new();
        };
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for _ in 0..250 {
        let rows = read();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read()
}

#[tokio::test]
async fn an_alias_is_limited_and_counted_under_the_model_it_resolves_to() {
    let fake = FakeGemini::start([KEY_A]).await.unwrap();
    let url = fake.url();
    let db = temp_db("alias");
    let db_path = db.to_str().unwrap().to_owned();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY_A),
        ("UPSTREAM_URL", url.as_str()),
        ("MODEL_ALIASES", "gpt-4o=gemini-2.5-flash"),
        ("MODEL_LIMITS", "gemini-2.5-flash=2rpm"),
        ("DATABASE_PATH", db_path.as_str()),
        ("ALLOWED_TOKENS", CLIENT),
        ("ADMIN_TOKEN", ADMIN),
    ])
    .await;

    // Four requests as the alias on the OpenAI route, two native ones for the real model:
    // one quota of two for all six.
    let mut statuses = Vec::new();
    for req in [
        chat(ALIAS),
        native(MODEL),
        chat(ALIAS),
        native(MODEL),
        chat(ALIAS),
        chat(ALIAS),
    ] {
        let openai = req.uri().path().starts_with("/v1/chat");
        let (status, body) = status_and_text(send(&proxy, req).await).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let v: Value = serde_json::from_str(&body).unwrap();
            if openai {
                assert_eq!(v["error"]["type"], "rate_limit_error", "{body}");
            } else {
                assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
            }
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    assert_eq!(
        fake.total_requests(),
        2,
        "refused requests never reach upstream"
    );
    for r in fake.received() {
        assert_eq!(r.path, format!("/v1beta/models/{MODEL}:generateContent"));
    }

    // Stats: every request under the real model, none under the alias.
    let mut stats = json_of(&proxy, "/admin/stats").await;
    for _ in 0..50 {
        if stats["models"][MODEL]["minute"]["requests"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = json_of(&proxy, "/admin/stats").await;
    }
    assert_eq!(stats["models"][MODEL]["minute"]["requests"], 6, "{stats}");
    assert!(stats["models"].get(ALIAS).is_none(), "{stats}");

    // Metrics: the model label is the real model.
    let (_, metrics) = status_and_text(send(&proxy, get("/metrics", None)).await).await;
    assert!(
        metrics.contains(&format!("model=\"{MODEL}\"")),
        "no series for the real model:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!("model=\"{ALIAS}\"")),
        "a series names the alias:\n{metrics}"
    );

    // The request log: six rows, each for the real model.
    let models = logged_models(&db, 6).await;
    assert_eq!(models, vec![MODEL.to_owned(); 6]);
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[tokio::test]
async fn a_429_for_an_alias_cools_the_key_down_for_the_real_model() {
    let fake = FakeGemini::start([KEY_A, KEY_B]).await.unwrap();
    fake.set_key_for_model(
        KEY_A,
        MODEL,
        KeyBehavior::exhausted(Duration::from_secs(60)),
    );
    let url = fake.url();
    let keys = format!("{KEY_A},{KEY_B}");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("MODEL_ALIASES", "gpt-4o=gemini-2.5-flash"),
        ("ALLOWED_TOKENS", CLIENT),
    ])
    .await;

    // Round robin starts at the first key: it answers 429, the second serves.
    for _ in 0..2 {
        let (status, body) = status_and_text(send(&proxy, chat(ALIAS)).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let snapshot = proxy.pool.snapshot();
    let tired = snapshot
        .iter()
        .find(|k| !k.cooling.is_empty())
        .expect("one key cools down");
    let models: Vec<&str> = tired.cooling.iter().map(|c| c.model.as_str()).collect();
    assert_eq!(
        models,
        [MODEL],
        "the cool-down is for the model the alias names"
    );
    // Cooling for the real model, the key is skipped for it: the native route goes to the
    // other key at once.
    fake.clear_received();
    let (status, _) = status_and_text(send(&proxy, native(MODEL)).await).await;
    assert_eq!(status, StatusCode::OK);
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].api_key().as_deref(), Some(KEY_B));
}

/// Every way a client can send its credential: header, query, query name percent-encoded.
fn credential_requests(secret: &str) -> Vec<Request<Body>> {
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let body = || {
        Body::from(json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string())
    };
    let mut out = vec![
        Request::post(&path)
            .header("authorization", format!("Bearer {secret}"))
            .body(body())
            .unwrap(),
        Request::post(&path)
            .header("x-goog-api-key", secret)
            .body(body())
            .unwrap(),
    ];
    for query in [
        format!("key={secret}"),
        format!("k%65y={secret}&alt=json"),
        format!("%6B%65%79={secret}"),
        format!("%6b%65%79={secret}&key={secret}"),
    ] {
        out.push(
            Request::post(format!("{path}?{query}"))
                .body(body())
                .unwrap(),
        );
    }
    out
}

fn assert_carries_no_client_secret(r: &ReceivedRequest, secret: &str, key: &str) {
    let query = r.query.as_deref().unwrap_or("");
    assert!(!query.contains(secret), "the query went upstream: {query}");
    assert!(r.headers.get("authorization").is_none(), "{:?}", r.headers);
    for (name, value) in &r.headers {
        assert!(
            !value
                .as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "header {name} carries the client's secret"
        );
    }
    assert!(!String::from_utf8_lossy(&r.body).contains(secret));
    assert_eq!(r.headers["x-goog-api-key"], key);
}

#[tokio::test]
async fn a_client_credential_never_reaches_upstream_through_the_gateway() {
    let fake = FakeGemini::start([KEY_A]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY_A),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", CLIENT),
    ])
    .await;
    let requests = credential_requests(CLIENT);
    let n = requests.len();
    for req in requests {
        let uri = req.uri().clone();
        let (status, body) = status_and_text(send(&proxy, req).await).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    let received = fake.received();
    assert_eq!(received.len(), n);
    for r in &received {
        assert_carries_no_client_secret(r, CLIENT, KEY_A);
    }
}

#[tokio::test]
async fn a_client_credential_never_reaches_upstream_through_key_rotation_alone() {
    const SECRET: &str = "client-secret-that-must-stay-here";
    let fake = FakeGemini::start([KEY_A]).await.unwrap();
    let pool = KeyPool::builder()
        .keys([ApiKey::new(KEY_A)])
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(pool))
        .service(UpstreamClient::new(fake.url()).unwrap());
    let requests = credential_requests(SECRET);
    let n = requests.len();
    for req in requests {
        let uri = req.uri().clone();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
    }
    let received = fake.received();
    assert_eq!(received.len(), n);
    for r in &received {
        assert_carries_no_client_secret(r, SECRET, KEY_A);
    }
}
