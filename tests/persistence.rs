//! What full_proxy keeps across restarts (`DATABASE_PATH`, `REDIS_URL`): admin changes, one
//! row per request, backups; over loopback against FakeGemini.
//!
//! The Redis test needs a Redis at `REDIS_URL`; without one it prints "skipping: ..." and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use support::{Captured, Proxy, redis_url, send, status_and_text};
use tower_gemini::Body;
use tower_gemini::auth::TokenDigest;
use tower_gemini::secret::ApiKey;
use tower_gemini::testing::{FakeGemini, KeyBehavior};

const KEY: &str = "AIzaSyPersist-test-key-number-one-0001";
const KEY2: &str = "AIzaSyPersist-test-key-number-two-0002";
const CLIENT: &str = "test-client-token-1";
const ADMIN: &str = "test-admin-token-1";

// === helpers ===

/// A fresh directory for one test's database.
fn temp_dir(test: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "tower-gemini-persistence-{test}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn json_of(res: Response<Body>) -> (StatusCode, Value) {
    let (status, body) = status_and_text(res).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn generate(token: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from(
        json!({"contents": [{"role": "user", "parts": [{"text": "tell me about bees"}]}]})
            .to_string(),
    ))
    .unwrap()
}

fn admin(method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    admin_as(ADMIN, method, path, body)
}

fn admin_as(token: &str, method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

async fn key_ids(proxy: &Proxy) -> Vec<String> {
    let (status, v) = json_of(send(proxy, admin("GET", "/admin/keys", None)).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut ids: Vec<String> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn create_token(proxy: &Proxy, name: &str) -> (String, String) {
    let (status, v) = json_of(
        send(
            proxy,
            admin("POST", "/admin/tokens", Some(json!({ "name": name }))),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// The variables of a proxy on `fake` keeping its state in `db`.
fn vars<'a>(url: &'a str, db: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url),
        ("DATABASE_PATH", db),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    v.extend_from_slice(extra);
    v
}

/// The rows of the request log, as JSON objects (waits until there are at least `n`).
async fn rows(db: &Path, n: usize) -> Vec<Value> {
    for _ in 0..250 {
        let rows = read_rows(db);
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read_rows(db)
}

fn read_rows(db: &Path) -> Vec<Value> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT * FROM requests ORDER BY rowid")
        .unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    stmt.query_map([], |r| {
        let mut obj = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let v = match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(n) => json!(n),
                rusqlite::types::ValueRef::Real(f) => json!(f),
                rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                rusqlite::types::ValueRef::Blob(_) => json!("<blob>"),
            };
            obj.insert(name.clone(), v);
        }
        Ok(Value::Object(obj))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Every byte of every file in `dir` (the database, its WAL and shared memory, backups).
fn all_bytes(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        out.push_str(&String::from_utf8_lossy(&bytes));
    }
    out
}

async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let (_, m) =
        status_and_text(send(proxy, Request::get("/metrics").body(Body::empty()).unwrap()).await)
            .await;
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{m}"))
}

// === admin changes ===

#[tokio::test]
async fn a_key_and_a_token_added_through_the_admin_api_survive_a_restart() {
    let fake = FakeGemini::start([KEY, KEY2]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("survive");
    let db = dir.join("gateway.db");
    let db_s = db.to_str().unwrap();
    let vars = vars(&url, db_s, &[]);
    let proxy = Proxy::start(&vars).await;

    let (status, v) = json_of(
        send(
            &proxy,
            admin("POST", "/admin/keys", Some(json!({ "key": KEY2 }))),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (token, _) = create_token(&proxy, "my-app").await;

    let proxy = proxy.restart(&vars).await;
    let k1 = ApiKey::new(KEY).fingerprint();
    let k2 = ApiKey::new(KEY2).fingerprint();
    let mut want = vec![k1.clone(), k2.clone()];
    want.sort();
    assert_eq!(key_ids(&proxy).await, want);
    let (status, body) = status_and_text(send(&proxy, generate(Some(&token))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A configured key removed through the API stays out after a restart; the added key serves.
    let res = send(&proxy, admin("DELETE", &format!("/admin/keys/{k1}"), None)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let proxy = proxy.restart(&vars).await;
    assert_eq!(key_ids(&proxy).await, vec![k2]);
    let before = fake.requests_for(KEY2);
    let (status, body) = status_and_text(send(&proxy, generate(Some(&token))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.requests_for(KEY2), before + 1);

    let (_, status_page) = json_of(send(&proxy, admin("GET", "/status", None)).await).await;
    assert_eq!(
        status_page["persistence"]["store"], "sqlite",
        "{status_page}"
    );
    assert_eq!(status_page["persistence"]["durable"], true);
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

/// Thinking and prompt-injection changes made through the compatibility routes are settings
/// in the store: the next start applies them on top of the configured policy.
#[tokio::test]
async fn policy_changes_through_the_admin_api_survive_a_restart() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("policy");
    let db = dir.join("gateway.db");
    let vars = vars(&url, db.to_str().unwrap(), &[]);
    let proxy = Proxy::start(&vars).await;
    for (path, body) in [
        (
            "/admin/config/thinking",
            json!({"enabled": true, "budget": 321}),
        ),
        (
            "/admin/config/inject-prompt",
            json!({"enabled": true, "content": "Answer like a pirate.", "position": "user_prefix"}),
        ),
    ] {
        let (status, v) = json_of(send(&proxy, admin("POST", path, Some(body))).await).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
    }

    let proxy = proxy.restart(&vars).await;
    let (status, body) = status_and_text(send(&proxy, generate(Some(CLIENT))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = fake.last_received().unwrap().json();
    assert_eq!(
        seen["generationConfig"]["thinkingConfig"]["thinkingBudget"], 321,
        "{seen}"
    );
    let first = seen["contents"][0]["parts"][0]["text"].as_str().unwrap();
    assert!(first.starts_with("Answer like a pirate."), "{seen}");

    // Switched off, it stays off after the next restart too.
    let off = json!({"enabled": false});
    let (status, _) = json_of(
        send(
            &proxy,
            admin("POST", "/admin/config/inject-prompt", Some(off)),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let proxy = proxy.restart(&vars).await;
    status_and_text(send(&proxy, generate(Some(CLIENT))).await).await;
    let seen = fake.last_received().unwrap().json();
    assert_eq!(
        seen["contents"][0]["parts"][0]["text"],
        "tell me about bees"
    );
    assert_eq!(
        seen["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        321
    );
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_revoked_token_stays_revoked_after_restart() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("revoked");
    let db = dir.join("gateway.db");
    let vars = vars(&url, db.to_str().unwrap(), &[]);
    let proxy = Proxy::start(&vars).await;

    let (token, id) = create_token(&proxy, "short-lived").await;
    let (kept, _) = create_token(&proxy, "kept").await;
    for revoke in [id, TokenDigest::of(CLIENT).id()] {
        let res = send(
            &proxy,
            admin("DELETE", &format!("/admin/tokens/{revoke}"), None),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        send(&proxy, generate(Some(&token))).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let proxy = proxy.restart(&vars).await;
    // Created then revoked, and configured (ALLOWED_TOKENS) then revoked: both stay out.
    for t in [token.as_str(), CLIENT] {
        assert_eq!(
            send(&proxy, generate(Some(t))).await.status(),
            StatusCode::UNAUTHORIZED,
            "{t} is back"
        );
    }
    assert_eq!(
        send(&proxy, generate(Some(&kept))).await.status(),
        StatusCode::OK
    );
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_is_private_and_never_holds_a_client_token_in_clear() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("no-clear-token");
    let db = dir.join("gateway.db");
    let vars = vars(&url, db.to_str().unwrap(), &[]);
    let proxy = Proxy::start(&vars).await;

    let (token, id) = create_token(&proxy, "app").await;
    let (revoked, revoked_id) = create_token(&proxy, "gone").await;
    send(
        &proxy,
        admin("DELETE", &format!("/admin/tokens/{revoked_id}"), None),
    )
    .await;
    for t in [token.as_str(), CLIENT] {
        assert_eq!(
            send(&proxy, generate(Some(t))).await.status(),
            StatusCode::OK
        );
    }
    let res = send(&proxy, admin("POST", "/admin/backup", None)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(rows(&db, 2).await.len() >= 2);
    let proxy = proxy.restart(&vars).await; // the WAL is checkpointed into the file
    drop(proxy);

    let everything = all_bytes(&dir);
    for secret in [token.as_str(), revoked.as_str(), CLIENT, ADMIN] {
        assert!(
            !everything.contains(secret),
            "a client token is in the database"
        );
    }
    assert!(
        everything.contains(&id),
        "the masked id is what identifies a token"
    );
    let mode = std::fs::metadata(&db).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the database holds upstream keys: owner only"
    );
    std::fs::remove_dir_all(dir).ok();
}

// === request log ===

#[tokio::test]
async fn request_rows_have_the_right_counts_and_tokens_and_no_secret() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("rows");
    let db = dir.join("gateway.db");
    let vars = vars(&url, db.to_str().unwrap(), &[]);
    let proxy = Proxy::start(&vars).await;

    let res = send(&proxy, generate(Some(CLIENT))).await;
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (status, answer) = json_of(res).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = status_and_text(send(&proxy, generate(Some(CLIENT))).await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = status_and_text(send(&proxy, generate(None)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let rows = rows(&db, 3).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let first = rows
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .expect("a row for the first request");
    let usage = &answer["usageMetadata"];
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "generateContent");
    assert_eq!(first["model"], "gemini-2.5-flash");
    assert_eq!(first["client_id"], TokenDigest::of(CLIENT).id().as_str());
    assert_eq!(first["client_name"], "client-1");
    assert_eq!(first["key_id"], ApiKey::new(KEY).fingerprint().as_str());
    assert_eq!(first["prompt_tokens"], usage["promptTokenCount"]);
    assert_eq!(first["output_tokens"], usage["candidatesTokenCount"]);
    assert_eq!(first["total_tokens"], usage["totalTokenCount"]);
    assert_eq!(first["resumes"], 0);
    assert_eq!(first["key_retries"], 0);
    assert_eq!(first["request_body"], Value::Null, "no prompt unless asked");
    assert_eq!(rows.iter().filter(|r| r["status"] == 200).count(), 2);
    assert_eq!(rows.iter().filter(|r| r["status"] == 401).count(), 1);
    let text = serde_json::to_string(&rows).unwrap();
    for secret in [KEY, CLIENT, ADMIN, "tell me about bees"] {
        assert!(!text.contains(secret), "`{secret}` is in a row: {text}");
    }
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_model_version_that_served_is_kept_beside_the_model_asked_for() {
    // `gemini-flash-latest` is an alias Google serves with a dated model; the answer's
    // `modelVersion` says which. Native unary, native stream and a streamed OpenAI chat.
    const SERVED: &str = "gemini-2.5-flash-preview-09-2025";
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("model-version");
    let db = dir.join("gateway.db");
    let proxy = Proxy::start(&vars(&url, db.to_str().unwrap(), &[])).await;
    let contents = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let calls = [
        (
            "/v1beta/models/gemini-flash-latest:generateContent",
            contents.clone(),
        ),
        (
            "/v1beta/models/gemini-flash-latest:streamGenerateContent?alt=sse",
            contents,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gemini-flash-latest", "stream": true,
                   "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in calls {
        let req = Request::post(path)
            .header("authorization", format!("Bearer {CLIENT}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, text) = status_and_text(send(&proxy, req).await).await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
    }
    let rows = rows(&db, 3).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(row["model"], "gemini-flash-latest", "{row}");
        assert_eq!(row["model_version"], SERVED, "{row}");
    }
    let (status, stats) = json_of(send(&proxy, admin("GET", "/admin/stats", None)).await).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        stats["model_versions"][SERVED]["day"]["requests"], 3,
        "{stats}"
    );
    assert_eq!(
        stats["models"]["gemini-flash-latest"]["day"]["requests"], 3,
        "{stats}"
    );
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_request_retried_on_another_key_has_its_key_retries_in_its_row() {
    let fake = FakeGemini::start([KEY, KEY2]).await.unwrap();
    // The first key is refused by the upstream (400 API_KEY_INVALID): a request that draws it
    // first is retried on the second key.
    fake.set_key(KEY, KeyBehavior::Invalid);
    let url = fake.url();
    let dir = temp_dir("retries");
    let db = dir.join("gateway.db");
    let keys = format!("{KEY},{KEY2}");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("DATABASE_PATH", db.to_str().unwrap()),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ])
    .await;
    // Round robin over two keys: one of two requests draws the invalid key first.
    for _ in 0..2 {
        let (status, body) = status_and_text(send(&proxy, generate(Some(CLIENT))).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let drew_invalid = fake.requests_for(KEY);
    assert!(drew_invalid >= 1, "the invalid key was never drawn");
    assert_eq!(
        fake.requests_for(KEY2),
        2,
        "every request ended on the good key"
    );

    let rows = rows(&db, 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let retried: Vec<&Value> = rows.iter().filter(|r| r["key_retries"] != 0).collect();
    assert_eq!(retried.len() as u64, drew_invalid, "{rows:?}");
    for row in &retried {
        assert_eq!(row["key_retries"], 1, "{row}");
        assert_eq!(row["upstream_attempts"], 2, "{row}");
        assert_eq!(row["status"], 200, "{row}");
        assert_eq!(row["key_id"], ApiKey::new(KEY2).fingerprint().as_str());
    }
    for row in rows.iter().filter(|r| r["key_retries"] == 0) {
        assert_eq!(row["upstream_attempts"], 1, "{row}");
    }
    let text = serde_json::to_string(&rows).unwrap();
    for secret in [KEY, KEY2, CLIENT] {
        assert!(!text.contains(secret), "`{secret}` is in a row: {text}");
    }
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn without_a_database_or_redis_the_start_warns_that_admin_changes_are_lost_on_restart() {
    let (logs, _guard) = Captured::start();
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())]).await;
    assert!(proxy.app_config.persist.database_path.is_none());
    assert!(proxy.app_config.redis_url.is_none());
    let logs = logs.text();
    let warning = logs
        .lines()
        .find(|l| l.contains("kept in memory only and LOST ON RESTART"))
        .unwrap_or_else(|| panic!("no memory-only warning in:\n{logs}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("DATABASE_PATH") && warning.contains("REDIS_URL"),
        "{warning}"
    );
    assert_eq!(logs.matches("LOST ON RESTART").count(), 1, "{logs}");
    drop(proxy);

    // With a database there is no such warning.
    let (logs, _guard) = Captured::start();
    let dir = temp_dir("no-warning");
    let db = dir.join("gateway.db");
    let proxy = Proxy::start(&vars(&url, db.to_str().unwrap(), &[])).await;
    let logs = logs.text();
    assert!(!logs.contains("LOST ON RESTART"), "{logs}");
    assert!(logs.contains("kept in SQLite"), "{logs}");
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn request_bodies_are_logged_only_with_log_request_bodies() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("bodies");
    let db = dir.join("gateway.db");
    let vars = vars(
        &url,
        db.to_str().unwrap(),
        &[("LOG_REQUEST_BODIES", "true")],
    );
    let proxy = Proxy::start(&vars).await;
    assert_eq!(
        send(&proxy, generate(Some(CLIENT))).await.status(),
        StatusCode::OK
    );
    let rows = rows(&db, 1).await;
    assert!(
        rows[0]["request_body"]
            .as_str()
            .unwrap()
            .contains("tell me about bees")
    );
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_retention_cleanup_removes_old_rows() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("retention");
    let db = dir.join("gateway.db");
    let vars = vars(
        &url,
        db.to_str().unwrap(),
        &[
            ("LOG_RETENTION_DAYS", "1"),
            ("LOG_CLEANUP_INTERVAL_SECONDS", "1"),
        ],
    );
    let proxy = Proxy::start(&vars).await;
    let two_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 86_400_000;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO requests (time_ms, request_id, model, route, status, stream, latency_ms,
                 duration_ms, resumes, upstream_attempts, key_retries, rate_limited, completed)
             VALUES (?1, 'old-row', 'm', 'r', 200, 0, 1, 1, 0, 1, 0, 0, 1)",
            [two_days_ago],
        )
        .unwrap();
    assert_eq!(
        send(&proxy, generate(Some(CLIENT))).await.status(),
        StatusCode::OK
    );

    let mut left = Vec::new();
    for _ in 0..150 {
        left = read_rows(&db);
        if left.len() == 1 && left[0]["request_id"] != "old-row" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["request_id"], "old-row");
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn backup_makes_a_readable_copy_with_the_rows() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("backup");
    let db = dir.join("gateway.db");
    let vars = vars(&url, db.to_str().unwrap(), &[]);
    let proxy = Proxy::start(&vars).await;
    for _ in 0..3 {
        assert_eq!(
            send(&proxy, generate(Some(CLIENT))).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(rows(&db, 3).await.len(), 3);

    let res = send(&proxy, admin_as(CLIENT, "POST", "/admin/backup", None)).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "client tokens may not back up"
    );
    let (status, v) = json_of(send(&proxy, admin("POST", "/admin/backup", None)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let path = PathBuf::from(v["path"].as_str().unwrap());
    assert_eq!(path.parent(), Some(dir.as_path()), "next to the database");
    assert_eq!(
        v["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&path).unwrap().len()
    );
    assert_eq!(read_rows(&path).len(), 3);
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn backup_without_a_database_says_what_is_missing() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())]).await;
    let (status, body) =
        status_and_text(send(&proxy, admin("POST", "/admin/backup", None)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("DATABASE_PATH"), "{body}");
    let (_, s) = json_of(send(&proxy, admin("GET", "/status", None)).await).await;
    assert_eq!(s["persistence"]["store"], "memory", "{s}");
    assert_eq!(s["persistence"]["durable"], false);
}

#[tokio::test]
async fn a_locked_database_neither_fails_nor_holds_up_requests() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let dir = temp_dir("locked");
    let db = dir.join("gateway.db");
    let vars = vars(
        &url,
        db.to_str().unwrap(),
        &[("REQUEST_LOG_QUEUE_SIZE", "2")],
    );
    let proxy = Proxy::start(&vars).await;

    // Another process holds the write lock: the log's writer waits, its queue fills up.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let dropped = r#"gemini_gateway_request_log_rows_total{outcome="dropped"}"#;
    let mut sent = 0;
    while metric(&proxy, dropped).await == 0.0 {
        assert!(sent < 2000, "no row was ever dropped");
        let (status, body) = status_and_text(send(&proxy, generate(Some(CLIENT))).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        sent += 1;
    }
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    // Once the lock is gone, new requests are logged again. The writer first finishes the
    // batch it was holding and the queue may still be full for a moment, so a request sent
    // right now may be dropped too: keep sending until one of them is written.
    let mut ids = Vec::new();
    let mut found = false;
    for _ in 0..200 {
        let res = send(&proxy, generate(Some(CLIENT))).await;
        assert_eq!(res.status(), StatusCode::OK);
        ids.push(res.headers()["x-request-id"].to_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rows = read_rows(&db);
        if rows
            .iter()
            .any(|r| ids.iter().any(|id| r["request_id"] == id.as_str()))
        {
            found = true;
            break;
        }
    }
    assert!(found, "the log did not recover after the lock was released");
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}

// === Redis ===

#[tokio::test]
async fn with_redis_a_key_and_a_token_survive_a_restart_and_revocations_stick() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let fake = FakeGemini::start([KEY, KEY2]).await.unwrap();
    let url = fake.url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("tower-gemini-test:persist:{}:{nanos}", std::process::id());
    let vars = [
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let proxy = Proxy::start(&vars).await;
    let (status, v) = json_of(
        send(
            &proxy,
            admin("POST", "/admin/keys", Some(json!({ "key": KEY2 }))),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (token, _) = create_token(&proxy, "redis-app").await;
    let (gone, gone_id) = create_token(&proxy, "redis-gone").await;
    let res = send(
        &proxy,
        admin("DELETE", &format!("/admin/tokens/{gone_id}"), None),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let proxy = proxy.restart(&vars).await;
    assert_eq!(key_ids(&proxy).await.len(), 2);
    assert_eq!(
        send(&proxy, generate(Some(&token))).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&proxy, generate(Some(&gone))).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, s) = json_of(send(&proxy, admin("GET", "/status", None)).await).await;
    assert_eq!(s["persistence"]["store"], "redis", "{s}");

    // Nothing of the client tokens in clear in Redis.
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let tokens: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:admin:tokens"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let dump = format!("{tokens:?}");
    assert_eq!(tokens.len(), 2);
    assert!(!dump.contains(&token) && !dump.contains(&gone), "{dump}");
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:admin:keys"))
        .arg(format!("{prefix}:admin:tokens"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
