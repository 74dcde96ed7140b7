//! What the admin page shows over time, over loopback against FakeGemini:
//! `/admin/timeseries` (from memory) and `/admin/requests` (the SQLite request log).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, get, send, status_and_text};
use tower_gemini::Body;
use tower_gemini::secret::{ApiKey, mask};
use tower_gemini::testing::{FakeGemini, Fault};

const KEY_1: &str = "AIzaSyViews-test-key-number-one-0000001";
const KEY_2: &str = "AIzaSyViews-test-key-number-two-0000002";
const CLIENT: &str = "test-client-token-1";
const CLIENT_2: &str = "views-second-client-token-2";
const ADMIN: &str = "test-admin-token-1";

fn generate(model: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::post(format!("/v1beta/models/{model}:generateContent"))
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

fn temp_db(test: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "tower-gemini-views-{test}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.db")
}

async fn setup(db: Option<&str>) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY_1, KEY_2]).await.unwrap();
    let url = fake.url();
    let keys = format!("{KEY_1},{KEY_2}");
    let tokens = format!("{CLIENT},{CLIENT_2}");
    let mut vars = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", tokens.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    if let Some(db) = db {
        vars.push(("DATABASE_PATH", db));
    }
    let proxy = Proxy::start(&vars).await;
    (fake, proxy)
}

async fn admin_json(proxy: &Proxy, path: &str) -> (StatusCode, Value, String) {
    let (status, body) = status_and_text(send(proxy, get(path, Some(ADMIN))).await).await;
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, v, body)
}

/// The `totalTokenCount` of an answer.
fn total_tokens(body: &str) -> u64 {
    serde_json::from_str::<Value>(body).unwrap()["usageMetadata"]["totalTokenCount"]
        .as_u64()
        .expect("the answer has usage")
}

/// The mask of the key with this id (one of the two).
fn masked_key(id: &Value) -> Value {
    let id = id.as_str().expect("a key id");
    let key = [KEY_1, KEY_2]
        .into_iter()
        .find(|k| ApiKey::new(*k).fingerprint() == id)
        .unwrap_or_else(|| panic!("no key with id {id}"));
    json!(mask(key))
}

/// The sum of one field over a series' points.
fn sum(points: &Value, field: &str) -> u64 {
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_u64().unwrap())
        .sum()
}

/// The token ids the admin API lists for the two client tokens.
async fn client_ids(proxy: &Proxy) -> (String, String) {
    let (_, v, _) = admin_json(proxy, "/admin/tokens").await;
    let id_of = |name: &str| {
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no token {name} in {v}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    (id_of("client-1"), id_of("client-2"))
}

/// A known run: three answers (two by client 1 on flash, one by client 2 on pro), an upstream
/// 400 and an upstream 503 on flash by client 1, a request without a token. Returns the
/// tokens the answers carried (client 1's, client 2's).
async fn scripted_run(fake: &FakeGemini, proxy: &Proxy) -> (u64, u64) {
    let mut tokens_1 = 0;
    for _ in 0..2 {
        let (s, a) =
            status_and_text(send(proxy, generate("gemini-2.5-flash", Some(CLIENT))).await).await;
        assert_eq!(s, StatusCode::OK, "{a}");
        tokens_1 += total_tokens(&a);
    }
    let (s, a) =
        status_and_text(send(proxy, generate("gemini-2.5-pro", Some(CLIENT_2))).await).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let tokens_2 = total_tokens(&a);
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: format!("bad request for key {KEY_1}"),
    });
    let (s, _) =
        status_and_text(send(proxy, generate("gemini-2.5-flash", Some(CLIENT))).await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A 503 on both keys: the gateway retries on the other key, then gives up with a 503.
    for _ in 0..2 {
        fake.push_fault(Fault::HttpError {
            status: 503,
            message: "The model is overloaded.".into(),
        });
    }
    let (s, body) =
        status_and_text(send(proxy, generate("gemini-2.5-flash", Some(CLIENT))).await).await;
    assert!(s.is_server_error(), "{s} {body}");
    assert_eq!(fake.pending_faults(), 0, "every fault was used");
    let (s, _) = status_and_text(send(proxy, generate("gemini-2.5-flash", None)).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    (tokens_1, tokens_2)
}

/// `/admin/timeseries` once it has counted `n` requests.
async fn series_with(proxy: &Proxy, range: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, v, body) =
            admin_json(proxy, &format!("/admin/timeseries?range={range}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if v["total"]["sum"]["requests"].as_u64() == Some(n) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} requests: {last}");
}

#[tokio::test]
async fn timeseries_count_requests_errors_and_tokens_exactly() {
    let (fake, proxy) = setup(None).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (tokens_1, tokens_2) = scripted_run(&fake, &proxy).await;
    let (id_1, id_2) = client_ids(&proxy).await;
    let key_1 = ApiKey::new(KEY_1).fingerprint();

    for (range, buckets, width) in [("hour", 60, 60), ("day", 24, 3600)] {
        let v = series_with(&proxy, range, 6).await;
        assert_eq!(v["scope"], "instance", "{v}");
        assert_eq!(v["range"], range);
        assert_eq!(v["bucket_seconds"], width);
        let points = &v["total"]["points"];
        assert_eq!(points.as_array().unwrap().len(), buckets);
        // Buckets start on whole minutes (hours), one after the other, the last one now.
        let ts: Vec<u64> = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["t"].as_u64().unwrap())
            .collect();
        assert!(ts.iter().all(|t| t % width == 0), "{ts:?}");
        assert!(ts.windows(2).all(|w| w[1] == w[0] + width));
        let last = *ts.last().unwrap();
        assert!(
            last <= before + 60 && last + width > before,
            "{last} vs {before}"
        );
        // 6 requests: 3 answers, a 400 and a 503 from upstream, a 401 from the gateway.
        assert_eq!(sum(points, "requests"), 6, "{v}");
        assert_eq!(sum(points, "errors"), 3, "{v}");
        assert_eq!(sum(points, "upstream_errors"), 1, "{v}");
        assert_eq!(sum(points, "client_errors"), 2, "{v}");
        assert_eq!(sum(points, "tokens"), tokens_1 + tokens_2, "{v}");
        assert_eq!(v["total"]["sum"]["tokens"], tokens_1 + tokens_2);

        // Per account: client 1 made 4 requests (2 errors), client 2 one; by id, with names.
        let accounts = v["accounts"].as_array().unwrap();
        assert_eq!(accounts.len(), 2, "{v}");
        assert_eq!(accounts[0]["id"], id_1.as_str());
        assert_eq!(accounts[0]["name"], "client-1");
        assert_eq!(sum(&accounts[0]["points"], "requests"), 4);
        assert_eq!(sum(&accounts[0]["points"], "errors"), 2);
        assert_eq!(sum(&accounts[0]["points"], "tokens"), tokens_1);
        assert_eq!(accounts[1]["id"], id_2.as_str());
        assert_eq!(sum(&accounts[1]["points"], "requests"), 1);
        assert_eq!(sum(&accounts[1]["points"], "tokens"), tokens_2);

        // Per key: by id and mask, summing to every request that reached a key.
        let keys = v["keys"].as_array().unwrap();
        let on_keys: u64 = keys.iter().map(|k| sum(&k["points"], "requests")).sum();
        assert_eq!(on_keys, 5, "{v}");
        let on_keys: u64 = keys.iter().map(|k| sum(&k["points"], "tokens")).sum();
        assert_eq!(on_keys, tokens_1 + tokens_2, "{v}");
        for k in keys {
            assert_eq!(k["key"], masked_key(&k["id"]), "{k}");
        }
        assert!(keys.iter().any(|k| k["id"] == key_1.as_str()), "{v}");
    }

    // Narrowed to one account and one key, and limited.
    let (_, v, _) = admin_json(
        &proxy,
        &format!("/admin/timeseries?range=hour&account={id_2}&key={key_1}"),
    )
    .await;
    assert_eq!(v["accounts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["accounts"][0]["id"], id_2.as_str());
    assert_eq!(v["keys"].as_array().unwrap().len(), 1);
    assert_eq!(v["accounts_total"], 2);
    let (_, v, _) = admin_json(&proxy, "/admin/timeseries?limit=1").await;
    assert_eq!(v["range"], "hour");
    assert_eq!(v["accounts"].as_array().unwrap().len(), 1);

    // Never a key or a token anywhere in it.
    let (_, _, body) = admin_json(&proxy, "/admin/timeseries?range=day").await;
    for secret in [KEY_1, KEY_2, CLIENT, CLIENT_2, ADMIN] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
}

#[tokio::test]
async fn request_log_view_filters_pages_and_shows_no_secret() {
    let db = temp_db("requests");
    let (fake, proxy) = setup(Some(db.to_str().unwrap())).await;
    let (tokens_1, _) = scripted_run(&fake, &proxy).await;
    let (id_1, id_2) = client_ids(&proxy).await;
    let key_1 = ApiKey::new(KEY_1).fingerprint();

    // Rows reach the table in batches: wait for all six.
    let mut all = Value::Null;
    for _ in 0..100 {
        let (status, v, body) = admin_json(&proxy, "/admin/requests").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if v["rows"].as_array().map(Vec::len) == Some(6) {
            all = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(all["available"], true, "{all}");
    let rows = all["rows"].as_array().expect("six rows");
    let statuses: Vec<u64> = rows.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses[0], 401, "newest first: {statuses:?}");
    assert_eq!(statuses[5], 200);
    assert_eq!(all["next_before"], Value::Null, "one page holds them all");
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let first = &rows[5];
    assert_eq!(first["route"], "generateContent");
    assert_eq!(first["model"], "gemini-2.5-flash");
    assert_eq!(first["account"]["id"], id_1.as_str());
    assert_eq!(first["account"]["name"], "client-1");
    assert_eq!(first["key"], masked_key(&first["key_id"]));
    assert!(first["latency_ms"].is_u64());
    assert_eq!(first["resumes"], 0);
    assert!(first["request_id"].is_string());
    assert!(first.get("request_body").is_none());
    let logged_tokens: u64 = rows
        .iter()
        .filter(|r| r["account"]["id"] == id_1.as_str())
        .filter_map(|r| r["tokens"]["total"].as_u64())
        .sum();
    assert_eq!(logged_tokens, tokens_1);

    // The upstream errors keep their message, the key in it masked.
    let bad = rows.iter().find(|r| r["status"] == 400).unwrap();
    let message = bad["error"].as_str().expect("an error message");
    assert!(message.contains("bad request for key"), "{message}");
    let overloaded = rows
        .iter()
        .find(|r| r["status"].as_u64() >= Some(500))
        .unwrap();
    assert!(
        overloaded["error"].as_str().unwrap().contains("overloaded"),
        "{overloaded}"
    );

    // Filters.
    let statuses_of = |v: &Value| -> Vec<u64> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect()
    };
    let (_, v, _) = admin_json(&proxy, "/admin/requests?status=400").await;
    assert_eq!(statuses_of(&v), [400]);
    let (_, v, _) = admin_json(&proxy, "/admin/requests?status=2xx").await;
    assert_eq!(statuses_of(&v), [200, 200, 200]);
    let (_, v, _) = admin_json(&proxy, "/admin/requests?errors=true").await;
    assert_eq!(statuses_of(&v).len(), 3);
    let (_, v, _) = admin_json(&proxy, "/admin/requests?errors=upstream").await;
    assert_eq!(statuses_of(&v).len(), 1);
    assert!(statuses_of(&v)[0] >= 500);
    let (_, v, _) = admin_json(&proxy, "/admin/requests?model=gemini-2.5-pro").await;
    assert_eq!(statuses_of(&v), [200]);
    let (_, v, _) = admin_json(&proxy, "/admin/requests?model=models/gemini-2.5-pro").await;
    assert_eq!(statuses_of(&v), [200]);
    let (_, v, _) = admin_json(&proxy, &format!("/admin/requests?account={id_2}")).await;
    assert_eq!(statuses_of(&v), [200]);
    assert_eq!(v["rows"][0]["model"], "gemini-2.5-pro");
    let (_, v, _) = admin_json(
        &proxy,
        &format!("/admin/requests?account={id_1}&errors=true&model=gemini-2.5-flash"),
    )
    .await;
    assert_eq!(statuses_of(&v).len(), 2);
    let (_, v, _) = admin_json(&proxy, &format!("/admin/requests?key={key_1}")).await;
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["key_id"] == key_1.as_str())
    );
    assert!(!statuses_of(&v).is_empty());
    // Empty values are no filter (an empty form field).
    let (_, v, _) = admin_json(&proxy, "/admin/requests?status=&model=&key=&account=").await;
    assert_eq!(statuses_of(&v).len(), 6);

    // Paging: two rows a page, each page older than the one before.
    let mut paged = Vec::new();
    let mut before: Option<i64> = None;
    for _ in 0..4 {
        let path = match before {
            Some(b) => format!("/admin/requests?limit=2&before={b}"),
            None => "/admin/requests?limit=2".to_owned(),
        };
        let (_, v, _) = admin_json(&proxy, &path).await;
        paged.extend(
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match v["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    // Three full pages, then one empty page whose `next_before` is null.
    assert_eq!(paged, ids);

    // Never a key, a token or a prompt in any of it.
    let (_, _, body) = admin_json(&proxy, "/admin/requests?limit=1000").await;
    for secret in [KEY_1, KEY_2, CLIENT, CLIENT_2, ADMIN, "tell me about bees"] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    drop(proxy);
    std::fs::remove_dir_all(db.parent().unwrap()).ok();
}

#[tokio::test]
async fn request_log_view_without_a_database_says_how_to_get_one() {
    let (_fake, proxy) = setup(None).await;
    let (status, v, body) = admin_json(&proxy, "/admin/requests?status=429").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        v,
        json!({
            "rows": [],
            "available": false,
            "reason": "set DATABASE_PATH to keep a request log",
        })
    );
}

#[tokio::test]
async fn bad_filters_are_refused_with_a_json_error() {
    let db = temp_db("bad-filters");
    let (_fake, proxy) = setup(Some(db.to_str().unwrap())).await;
    let long = "m".repeat(201);
    for path in [
        "/admin/requests?status=42".to_owned(),
        "/admin/requests?status=600".to_owned(),
        "/admin/requests?status=abc".to_owned(),
        "/admin/requests?errors=maybe".to_owned(),
        "/admin/requests?limit=0".to_owned(),
        "/admin/requests?limit=1001".to_owned(),
        "/admin/requests?limit=ten".to_owned(),
        "/admin/requests?before=-3".to_owned(),
        "/admin/requests?before=x".to_owned(),
        "/admin/requests?colour=red".to_owned(),
        "/admin/requests?status=429&status=500".to_owned(),
        format!("/admin/requests?model={long}"),
        "/admin/timeseries?range=week".to_owned(),
        "/admin/timeseries?limit=0".to_owned(),
        "/admin/timeseries?since=1".to_owned(),
        format!("/admin/timeseries?range={KEY_1}"),
    ] {
        let (status, v, body) = admin_json(&proxy, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{path}: {body}");
        assert!(!body.contains(KEY_1), "{path}: {body}");
    }
    let (_, v, _) = admin_json(&proxy, "/admin/requests?colour=red").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    drop(proxy);
    std::fs::remove_dir_all(db.parent().unwrap()).ok();
}

#[tokio::test]
async fn the_views_need_the_admin_token() {
    let (fake, proxy) = setup(None).await;
    for path in ["/admin/timeseries", "/admin/requests"] {
        let res = send(&proxy, get(path, None)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let res = send(&proxy, get(path, Some(CLIENT))).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
        let res = send(&proxy, get(path, Some("not-a-token-at-all"))).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let res = send(&proxy, get(path, Some(ADMIN))).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(fake.total_requests(), 0, "nothing went upstream");
}
