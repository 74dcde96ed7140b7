//! Operating full_proxy: `/admin/stats`, `/metrics`, `/status` and log files, over loopback
//! against FakeGemini.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, get, send, status_and_text};
use tower_gemini::Body;
use tower_gemini::secret::ApiKey;
use tower_gemini::testing::{FakeGemini, Fault};

const KEY: &str = "AIzaSyOps-test-key-number-one-00000001";
const CLIENT: &str = "test-client-token-1";
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

fn stream(model: &str) -> Request<Body> {
    Request::post(format!(
        "/v1beta/models/{model}:streamGenerateContent?alt=sse"
    ))
    .header("x-goog-api-key", CLIENT)
    .body(Body::from(
        json!({"contents": [{"role": "user", "parts": [{"text": "a story about rivers"}]}]})
            .to_string(),
    ))
    .unwrap()
}

/// The `totalTokenCount` of the last `usageMetadata` in an answer (unary or SSE).
fn total_tokens(body: &str) -> u64 {
    let last = body
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data: ").or(Some(l)))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["usageMetadata"]["totalTokenCount"].as_u64());
    last.expect("the answer has usage")
}

async fn setup(extra: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let mut vars = vec![("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())];
    vars.extend_from_slice(extra);
    let proxy = Proxy::start(&vars).await;
    (fake, proxy)
}

async fn stats(proxy: &Proxy) -> Value {
    let (status, body) = status_and_text(send(proxy, get("/admin/stats", Some(ADMIN))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits (a little) until `/admin/stats` has seen `n` requests in all.
async fn stats_with(proxy: &Proxy, n: u64) -> Value {
    for _ in 0..50 {
        let s = stats(proxy).await;
        if s["total"]["minute"]["requests"].as_u64() == Some(n) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stats(proxy).await
}

async fn metrics(proxy: &Proxy) -> String {
    let res = send(proxy, get("/metrics", None)).await;
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let (status, body) = status_and_text(res).await;
    assert_eq!(status, StatusCode::OK);
    body
}

fn assert_no_secret(text: &str) {
    for secret in [KEY, CLIENT, ADMIN] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

#[tokio::test]
async fn stats_and_metrics_reflect_a_scripted_run_exactly() {
    let (fake, proxy) = setup(&[]).await;
    let key_id = ApiKey::new(KEY).fingerprint();

    // Two answers and an upstream error on flash, one stream on pro, one request without a token.
    let (s1, a1) =
        status_and_text(send(&proxy, generate("gemini-2.5-flash", Some(CLIENT))).await).await;
    let (s2, a2) =
        status_and_text(send(&proxy, generate("gemini-2.5-flash", Some(CLIENT))).await).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let (s3, a3) = status_and_text(send(&proxy, stream("gemini-2.5-pro")).await).await;
    assert_eq!(s3, StatusCode::OK, "{a3}");
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: "bad request".into(),
    });
    let (s4, _) =
        status_and_text(send(&proxy, generate("gemini-2.5-flash", Some(CLIENT))).await).await;
    assert_eq!(s4, StatusCode::BAD_REQUEST);
    let (s5, _) = status_and_text(send(&proxy, generate("gemini-2.5-flash", None)).await).await;
    assert_eq!(s5, StatusCode::UNAUTHORIZED);
    let flash_tokens = total_tokens(&a1) + total_tokens(&a2);
    let pro_tokens = total_tokens(&a3);

    let s = stats_with(&proxy, 5).await;
    for window in ["minute", "hour", "day"] {
        let flash = &s["models"]["gemini-2.5-flash"][window];
        assert_eq!(flash["requests"], 4, "{s}");
        assert_eq!(flash["errors"], 2, "{s}");
        assert_eq!(flash["tokens"], flash_tokens, "{s}");
        let pro = &s["models"]["gemini-2.5-pro"][window];
        assert_eq!(pro["requests"], 1, "{s}");
        assert_eq!(pro["tokens"], pro_tokens, "{s}");
        assert_eq!(s["keys"][&key_id][window]["requests"], 4, "{s}");
        assert_eq!(
            s["keys"][&key_id][window]["tokens"],
            flash_tokens + pro_tokens
        );
        assert_eq!(s["clients"]["client-1"][window]["requests"], 4, "{s}");
        assert_eq!(s["total"][window]["requests"], 5, "{s}");
    }
    assert_eq!(s["clients"].as_object().unwrap().len(), 1, "{s}");
    assert_no_secret(&s.to_string());

    let m = metrics(&proxy).await;
    let requests = |route: &str, model: &str, status: u16| {
        metric(
            &m,
            &format!(
                r#"gemini_gateway_requests_total{{route="{route}",model="{model}",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(requests("generateContent", "gemini-2.5-flash", 200), 2.0);
    assert_eq!(requests("generateContent", "gemini-2.5-flash", 400), 1.0);
    assert_eq!(requests("generateContent", "gemini-2.5-flash", 401), 1.0);
    assert_eq!(
        requests("streamGenerateContent", "gemini-2.5-pro", 200),
        1.0
    );
    let all: f64 = m
        .lines()
        .filter(|l| l.starts_with("gemini_gateway_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(all, 5.0, "each request counted exactly once:\n{m}");
    assert_eq!(
        metric(
            &m,
            r#"gemini_gateway_tokens_total{model="gemini-2.5-flash",type="total"}"#
        ),
        flash_tokens as f64
    );
    assert_eq!(
        metric(
            &m,
            r#"gemini_gateway_tokens_total{model="gemini-2.5-pro",type="total"}"#
        ),
        pro_tokens as f64
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"gemini_gateway_key_requests_total{{key="{key_id}"}}"#)
        ),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            r#"gemini_gateway_request_duration_seconds_count{route="streamGenerateContent",model="gemini-2.5-pro",status="200"}"#
        ),
        1.0
    );
    assert_eq!(metric(&m, r#"gemini_gateway_keys{state="enabled"}"#), 1.0);
    assert_eq!(metric(&m, "gemini_gateway_requests_in_flight"), 0.0);
    assert_no_secret(&m);
}

#[tokio::test]
async fn metrics_hold_no_key_or_token_whatever_the_credential_style() {
    let fake = FakeGemini::builder()
        .keys([KEY])
        .echo_key_in_errors(true)
        .start()
        .await
        .unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())]).await;
    let query = Request::post(format!(
        "/v1beta/models/gemini-2.5-flash:generateContent?key={CLIENT}"
    ))
    .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
    .unwrap();
    assert_eq!(send(&proxy, query).await.status(), StatusCode::OK);
    let header = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
        .header("x-goog-api-key", CLIENT)
        .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
        .unwrap();
    assert_eq!(send(&proxy, header).await.status(), StatusCode::OK);
    // A key-looking model name and an upstream error that echoes the key.
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: format!("api_key:{KEY} is bad"),
    });
    let odd = generate(KEY, Some(CLIENT));
    send(&proxy, odd).await;
    let wrong = generate(
        "gemini-2.5-flash",
        Some("AIzaSyNot-a-client-token-00000000000009"),
    );
    send(&proxy, wrong).await;
    stats_with(&proxy, 4).await;
    let m = metrics(&proxy).await;
    assert_no_secret(&m);
    assert!(!m.contains("AIzaSy"), "{m}");
    assert!(m.contains(r#"model="invalid""#), "{m}");
}

#[tokio::test]
async fn admin_stats_and_status_refuse_non_admin_tokens() {
    let (_fake, proxy) = setup(&[]).await;
    for path in ["/admin/stats", "/status"] {
        let none = send(&proxy, get(path, None)).await.status();
        assert_eq!(none, StatusCode::UNAUTHORIZED, "{path}");
        let client = send(&proxy, get(path, Some(CLIENT))).await.status();
        assert_eq!(client, StatusCode::FORBIDDEN, "{path}");
        let wrong = send(&proxy, get(path, Some("not-a-token-at-all-0000"))).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
        let admin = send(&proxy, get(path, Some(ADMIN))).await.status();
        assert_eq!(admin, StatusCode::OK, "{path}");
    }
    // /metrics needs no credential.
    assert_eq!(
        send(&proxy, get("/metrics", None)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn status_reports_version_uptime_memory_in_flight_and_keys() {
    let (_fake, proxy) = setup(&[]).await;
    let (status, body) = status_and_text(send(&proxy, get("/status", Some(ADMIN))).await).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    if cfg!(target_os = "linux") {
        assert!(v["resident_memory_bytes"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(v["requests_in_flight"], 0);
    assert_eq!(v["usable_keys"], 1);
    assert_eq!(v["total_keys"], 1);
}

#[tokio::test]
async fn rate_limit_refusals_and_resumes_are_counted() {
    let (fake, proxy) = setup(&[("MAX_REQUESTS_PER_MINUTE", "1"), ("RETRY_DELAY_MS", "10")]).await;
    fake.push_fault(Fault::DropAfter(2));
    let (status, body) = status_and_text(send(&proxy, stream("gemini-2.5-flash")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        status_and_text(send(&proxy, generate("gemini-2.5-flash", Some(CLIENT))).await)
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    stats_with(&proxy, 2).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"gemini_gateway_rate_limited_total{route="generateContent"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"gemini_gateway_stream_resumes_total{model="gemini-2.5-flash"}"#
        ),
        1.0
    );
    // The resumed stream is still one request.
    assert_eq!(
        metric(
            &m,
            r#"gemini_gateway_requests_total{route="streamGenerateContent",model="gemini-2.5-flash",status="200"}"#
        ),
        1.0
    );
    let key_id = ApiKey::new(KEY).fingerprint();
    assert_eq!(
        metric(
            &m,
            &format!(r#"gemini_gateway_upstream_attempts_total{{key="{key_id}"}}"#)
        ),
        2.0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn rotated_log_files_appear_and_hold_no_secret() {
    use tracing_subscriber::layer::SubscriberExt;

    let dir = std::env::temp_dir().join(format!("tower-gemini-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_string_lossy().into_owned();
    let env: std::collections::HashMap<String, String> = [
        ("LOG_DIR", dir_s.as_str()),
        ("MAX_LOG_SIZE", "1500"),
        ("MAX_LOG_BACKUPS", "3"),
        ("LOG_ROTATION", "hourly"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = support::ops::OpsConfig::from_map(&env).unwrap();
    let (writer, guard) = support::ops::log_writer(&config).unwrap().unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("debug"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer),
        );
    let default = tracing::subscriber::set_default(subscriber);

    let fake = FakeGemini::builder()
        .keys([KEY])
        .echo_key_in_errors(true)
        .start()
        .await
        .unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())]).await;
    for i in 0..6 {
        send(&proxy, generate("gemini-2.5-flash", Some(CLIENT))).await;
        let (_, _) = status_and_text(send(&proxy, stream("gemini-2.5-pro")).await).await;
        let query = Request::post(format!(
            "/v1beta/models/gemini-2.5-flash:generateContent?key={CLIENT}&n={i}"
        ))
        .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
        .unwrap();
        send(&proxy, query).await;
        fake.push_fault(Fault::HttpError {
            status: 500,
            message: format!("internal error for key {KEY}"),
        });
        send(&proxy, generate("gemini-2.5-flash", Some(CLIENT))).await;
        send(&proxy, generate("gemini-2.5-flash", Some(ADMIN))).await;
        send(&proxy, get("/admin/stats", Some(ADMIN))).await;
        send(&proxy, get("/status", Some(CLIENT))).await;
    }
    drop(proxy);
    drop(default);
    drop(guard); // flushes the writer

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.contains(&"gateway.log".to_owned()), "{names:?}");
    assert!(names.contains(&"gateway.log.1".to_owned()), "{names:?}");
    assert!(names.len() <= 4, "at most 3 backups: {names:?}");
    let mut all = String::new();
    for n in &names {
        all.push_str(&std::fs::read_to_string(dir.join(n)).unwrap());
    }
    // The files hold the gateway's own lines (access log, key rotation spans, upstream errors).
    assert!(
        all.contains("route=/v1beta/models/gemini-2.5-flash:generateContent"),
        "{all}"
    );
    assert!(all.contains("status=500"), "{all}");
    assert_no_secret(&all);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn old_rotated_log_files_are_removed_the_current_one_kept() {
    let dir = std::env::temp_dir().join(format!("tower-gemini-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    for name in ["gateway.log", "gateway.log.1", "gateway.log.2", "other.log"] {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        if name != "gateway.log.2" {
            f.set_modified(old).unwrap();
        }
    }
    let removed = support::ops::remove_old_logs(&dir, Duration::from_secs(2 * 24 * 3600)).unwrap();
    assert_eq!(removed, 1);
    assert!(dir.join("gateway.log").exists());
    assert!(!dir.join("gateway.log.1").exists());
    assert!(dir.join("gateway.log.2").exists());
    assert!(dir.join("other.log").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn admin_config_shows_the_configuration_with_every_secret_masked() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let redis = "redis://:hunter2-redis-password@127.0.0.1:1/0";
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("REDIS_URL", redis),
        ("MAX_REQUESTS_PER_MINUTE", "77"),
        ("INJECT_PROMPT", "Be kind."),
    ])
    .await;
    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(CLIENT), StatusCode::FORBIDDEN),
    ] {
        let (status, _) = status_and_text(send(&proxy, get("/admin/config", token)).await).await;
        assert_eq!(status, want, "{token:?}");
    }
    let (status, body) =
        status_and_text(send(&proxy, get("/admin/config", Some(ADMIN))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for secret in [KEY, CLIENT, ADMIN, "hunter2-redis-password"] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["gemini_api_keys"][0], tower_gemini::secret::mask(KEY));
    assert_eq!(v["max_requests_per_minute"], 77);
    assert_eq!(v["redis_url"], "redis://<redacted>@127.0.0.1:1/0");
    assert_eq!(v["policy"]["inject_prompt"]["content"], "Be kind.");
    assert_eq!(v["keys"]["total"], 1);
}
