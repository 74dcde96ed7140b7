//! full_proxy as a drop-in for other Gemini proxies: their variable names, their routes and
//! shapes, and own-key mode (`CLIENT_KEY_PASSTHROUGH`), over loopback against FakeGemini.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use support::{Captured, Config, Proxy, get, send, status_and_text};
use tower_gemini::Body;
use tower_gemini::testing::FakeGemini;

const KEY_1: &str = "AIzaSyDropIn-pool-key-number-one-000001";
const KEY_2: &str = "AIzaSyDropIn-pool-key-number-two-000002";
const OWN_1: &str = "AIzaSyDropIn-clients-own-key-alice-0001";
const OWN_2: &str = "AIzaSyDropIn-clients-own-key-bobby-0002";
const OLD_PASSWORD: &str = "old-proxy-password-0001";
const OLD_ADMIN: &str = "old-proxy-admin-token-0001";

// === Helpers ===

async fn json_of(res: Response<Body>) -> (StatusCode, Value) {
    let (status, body) = status_and_text(res).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, v)
}

/// A credential in one of the three styles: `bearer`, `goog` or `query`.
fn with_credential(path: &str, style: &str, credential: &str) -> http::request::Builder {
    match style {
        "bearer" => Request::post(path).header("authorization", format!("Bearer {credential}")),
        "goog" => Request::post(path).header("x-goog-api-key", credential),
        "query" => {
            let sep = if path.contains('?') { '&' } else { '?' };
            Request::post(format!("{path}{sep}key={credential}"))
        }
        other => panic!("unknown style {other}"),
    }
}

fn generate(style: &str, credential: &str, text: &str) -> Request<Body> {
    with_credential(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        style,
        credential,
    )
    .header("content-type", "application/json")
    .body(Body::from(
        json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}).to_string(),
    ))
    .unwrap()
}

fn chat(credential: &str, extra: Value) -> Request<Body> {
    let mut body = json!({
        "model": "gemini-2.5-flash",
        "messages": [{"role": "user", "content": "tell me about bees"}],
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {credential}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn admin_post(path: &str, token: Option<&str>, body: Value) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The fake's last request body.
fn last_upstream(fake: &FakeGemini) -> Value {
    fake.last_received()
        .expect("a request reached upstream")
        .json()
}

async fn pool_proxy(extra: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY_1, KEY_2]).await.unwrap();
    let url = fake.url();
    let mut vars = vec![("GEMINI_API_KEYS", KEY_1), ("UPSTREAM_URL", url.as_str())];
    vars.extend_from_slice(extra);
    let proxy = Proxy::start(&vars).await;
    (fake, proxy)
}

async fn own_key_proxy(extra: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::builder()
        .keys([OWN_1, OWN_2, KEY_1])
        .echo_key_in_errors(true)
        .start()
        .await
        .unwrap();
    let url = fake.url();
    let mut vars = vec![
        ("CLIENT_KEY_PASSTHROUGH", "true"),
        ("UPSTREAM_URL", url.as_str()),
        ("ADMIN_TOKEN", "test-admin-token-1"),
    ];
    vars.extend_from_slice(extra);
    let proxy = Proxy::start_exact(&vars).await;
    (fake, proxy)
}

// === Old-style configuration ===

#[tokio::test]
async fn a_gateway_on_old_style_variables_serves_both_dialects() {
    let fake = FakeGemini::start([KEY_1, KEY_2]).await.unwrap();
    let base = format!("{}/v1beta/", fake.url());
    let keys = format!(r#"["{KEY_1}", "{KEY_2}"]"#);
    let proxy = Proxy::start_exact(&[
        ("API_KEYS", keys.as_str()),
        ("PASSWORD", OLD_PASSWORD),
        ("AUTH_TOKEN", OLD_ADMIN),
        ("BASE_URL", base.as_str()),
    ])
    .await;
    assert_eq!(proxy.app_config.upstream_url, fake.url());
    assert_eq!(proxy.app_config.gemini_api_keys, [KEY_1, KEY_2]);
    assert_eq!(proxy.pool.len(), 2);
    let notes = proxy.app_config.alias_notes.join("\n");
    for old in ["API_KEYS", "PASSWORD", "AUTH_TOKEN", "BASE_URL"] {
        assert!(notes.contains(&format!("{old} is read as")), "{notes}");
    }

    let (status, body) =
        status_and_text(send(&proxy, generate("goog", OLD_PASSWORD, "hi")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("candidates"), "{body}");
    let (status, v) = json_of(send(&proxy, chat(OLD_PASSWORD, json!({}))).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 10
    );
    assert_eq!(fake.total_requests(), 2);
    assert_eq!(fake.requests_for(KEY_1) + fake.requests_for(KEY_2), 2);

    // AUTH_TOKEN is the admin token; PASSWORD is not.
    let (status, _) = json_of(send(&proxy, get("/admin/keys", Some(OLD_ADMIN))).await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = json_of(send(&proxy, get("/admin/keys", Some(OLD_PASSWORD))).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn each_old_variable_name_used_is_logged_once_at_start() {
    let (logs, _guard) = Captured::start();

    let fake = FakeGemini::start([KEY_1, KEY_2]).await.unwrap();
    let base = format!("{}/v1beta/", fake.url());
    let keys = format!(r#"["{KEY_1}", "{KEY_2}"]"#);
    let proxy = Proxy::start_exact(&[
        ("API_KEYS", keys.as_str()),
        ("PASSWORD", OLD_PASSWORD),
        ("AUTH_TOKEN", OLD_ADMIN),
        ("BASE_URL", base.as_str()),
        ("GEMINI_API_KEYS", KEY_1),
    ])
    .await;
    // Requests log nothing more about the names.
    for i in 0..3 {
        let (status, body) =
            status_and_text(send(&proxy, generate("goog", OLD_PASSWORD, &format!("q{i}"))).await)
                .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let logs = logs.text();
    for old in ["PASSWORD", "AUTH_TOKEN", "BASE_URL"] {
        let line = format!("configuration: {old} is read as");
        assert_eq!(logs.matches(&line).count(), 1, "`{line}` once:\n{logs}");
    }
    // Shadowed by ours: logged once too, as ignored.
    let line = "configuration: API_KEYS is ignored";
    assert_eq!(logs.matches(line).count(), 1, "`{line}` once:\n{logs}");
    assert_eq!(
        logs.matches("configuration: ").count(),
        4,
        "one line per old name:\n{logs}"
    );
    assert!(logs.contains("WARN"), "{logs}");
    for secret in [KEY_1, KEY_2, OLD_PASSWORD, OLD_ADMIN] {
        assert!(!logs.contains(secret), "`{secret}` logged:\n{logs}");
    }
}

#[tokio::test]
async fn our_variables_win_over_their_aliases() {
    let fake = FakeGemini::start([KEY_1]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start_exact(&[
        ("GEMINI_API_KEYS", KEY_1),
        ("API_KEYS", KEY_2),
        ("ALLOWED_TOKENS", "our-client-token-0001"),
        ("PASSWORD", OLD_PASSWORD),
        ("ADMIN_TOKEN", "our-admin-token-0001"),
        ("AUTH_TOKEN", OLD_ADMIN),
        ("UPSTREAM_URL", url.as_str()),
        ("BASE_URL", "http://127.0.0.1:9/v1beta"),
    ])
    .await;
    assert_eq!(proxy.app_config.gemini_api_keys, [KEY_1]);
    let notes = proxy.app_config.alias_notes.join("\n");
    assert!(notes.contains("PASSWORD is ignored"), "{notes}");
    assert!(notes.contains("BASE_URL is ignored"), "{notes}");

    let (status, _) =
        status_and_text(send(&proxy, generate("bearer", "our-client-token-0001", "a")).await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        status_and_text(send(&proxy, generate("bearer", OLD_PASSWORD, "b")).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        status_and_text(send(&proxy, get("/admin/keys", Some(OLD_ADMIN))).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        status_and_text(send(&proxy, get("/admin/keys", Some("our-admin-token-0001"))).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.requests_for(KEY_1), 1);
}

#[test]
fn the_other_aliases_map_onto_ours() {
    let c = Config::from_map(&env(&[
        ("PORT", "7860"),
        ("DEBUG", "true"),
        ("LOG_ROTATION_INTERVAL", "midnight"),
        ("UPSTREAM_URL_BASE", "https://example.test/v1/"),
    ]))
    .unwrap();
    assert_eq!(c.listen_addr.to_string(), "0.0.0.0:7860");
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.upstream_url, "https://example.test");
    assert_eq!(c.alias_notes.len(), 4, "{:?}", c.alias_notes);
    let c = Config::from_map(&env(&[
        ("DEBUG_MODE", "true"),
        ("LOG_ROTATION_INTERVAL", "h"),
    ]))
    .unwrap();
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.ops.log_rotation, support::ops::LogRotation::Hourly);
    // DEBUG=false changes nothing.
    let c = Config::from_map(&env(&[("DEBUG", "false")])).unwrap();
    assert_eq!(c.log_level, "info");
}

#[test]
fn malformed_lists_fail_start_up_naming_the_variable() {
    for (name, value) in [
        ("API_KEYS", r#"["AIza-one", "#),
        ("API_KEYS", "a,,b"),
        ("PASSWORD", r#"["ok", 3]"#),
        ("PASSWORD", "one, ,two"),
        ("GEMINI_API_KEYS", "[]x"),
        ("ALLOWED_TOKENS", r#"["a",""]"#),
        ("PORT", "eighty"),
        ("BASE_URL", "generativelanguage.googleapis.com"),
        ("LOG_ROTATION_INTERVAL", "weekly"),
    ] {
        let err = Config::from_map(&env(&[(name, value)]))
            .err()
            .unwrap_or_else(|| panic!("{name}={value} was accepted"));
        assert!(err.0.starts_with(name), "{name}={value}: {err}");
    }
}

#[test]
fn no_alias_brings_back_an_insecure_default() {
    // An admin token equal to a client token would make every client an admin.
    let err = Config::from_map(&env(&[
        ("PASSWORD", "shared-0001"),
        ("AUTH_TOKEN", "shared-0001"),
    ]))
    .err()
    .unwrap();
    assert!(
        err.0.starts_with("ADMIN_TOKEN (set as AUTH_TOKEN)"),
        "{err}"
    );
    // No default password or admin token: unset ones are minted (tested below over a socket).
    let c = Config::from_map(&env(&[("API_KEYS", KEY_1)])).unwrap();
    assert!(c.allowed_tokens.is_empty() && c.admin_token.is_none());
}

#[tokio::test]
async fn unset_password_and_auth_token_are_minted_not_defaulted() {
    let fake = FakeGemini::start([KEY_1]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start_exact(&[("API_KEYS", KEY_1), ("BASE_URL", url.as_str())]).await;
    assert!(proxy.token.starts_with("sk-") && proxy.token.len() > 40);
    assert!(proxy.admin_token.starts_with("sk-admin-"));
    assert_ne!(proxy.token, proxy.admin_token);
    for guess in ["123", "", "sk-123456", "admin"] {
        let (status, _) = status_and_text(send(&proxy, generate("goog", guess, "x")).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{guess:?}");
    }
    let (status, _) =
        status_and_text(send(&proxy, generate("goog", &proxy.token, "x")).await).await;
    assert_eq!(status, StatusCode::OK);
}

// === Own-key mode ===

#[tokio::test]
async fn own_key_mode_forwards_exactly_the_clients_key() {
    let (fake, proxy) = own_key_proxy(&[]).await;
    assert!(!proxy.app_config.is_demo());
    assert!(proxy.token.is_empty(), "no token is minted in own-key mode");
    for (style, key) in [("goog", OWN_1), ("query", OWN_2), ("bearer", OWN_1)] {
        let (status, body) = status_and_text(send(&proxy, generate(style, key, style)).await).await;
        assert_eq!(status, StatusCode::OK, "{style}: {body}");
        let seen = fake.last_received().unwrap();
        assert_eq!(seen.api_key().as_deref(), Some(key), "{style}");
        assert!(seen.headers.get("authorization").is_none());
        assert!(!seen.query.unwrap_or_default().contains("key="), "{style}");
    }
    let (status, v) = json_of(send(&proxy, chat(OWN_2, json!({}))).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        fake.last_received().unwrap().api_key().as_deref(),
        Some(OWN_2)
    );
    assert_eq!(proxy.pool.len(), 0, "a client's key never joins the pool");

    let (status, _) = status_and_text(
        send(
            &proxy,
            Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a credential is still needed"
    );

    let (status, v) = json_of(send(&proxy, get("/health", None)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["mode"], "client_key_passthrough");
}

#[tokio::test]
async fn own_keys_never_show_in_logs_or_responses() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (fake, proxy) = own_key_proxy(&[]).await;
    let unknown = "AIzaSyDropIn-a-key-google-does-not-know-9";
    let mut bodies = String::new();
    for (style, key) in [("goog", OWN_1), ("query", unknown), ("bearer", unknown)] {
        let res = send(&proxy, generate(style, key, "hello")).await;
        for v in res.headers().values() {
            bodies.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        bodies.push_str(&status_and_text(res).await.1);
    }
    let res = send(&proxy, chat(unknown, json!({}))).await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "the upstream's own 400 passes"
    );
    bodies.push_str(&status_and_text(res).await.1);
    assert!(
        fake.received()
            .iter()
            .any(|r| r.api_key().as_deref() == Some(unknown))
    );
    let (_, stats) =
        status_and_text(send(&proxy, get("/admin/stats", Some("test-admin-token-1"))).await).await;
    bodies.push_str(&stats);

    let logs = logs.text();
    assert!(
        logs.contains("gemini-2.5-flash"),
        "logs were captured: {logs}"
    );
    for key in [OWN_1, unknown] {
        assert!(!bodies.contains(key), "{key} in a response: {bodies}");
        assert!(!logs.contains(key), "{key} in the logs: {logs}");
        // Not even the middle of it.
        assert!(!bodies.contains(&key[8..30]) && !logs.contains(&key[8..30]));
    }
    assert!(
        stats.contains("ownkey-"),
        "clients are told apart by a hash: {stats}"
    );
}

#[tokio::test]
async fn own_key_mode_limits_each_client_key_on_its_own() {
    let (fake, proxy) = own_key_proxy(&[("MAX_REQUESTS_PER_MINUTE", "2")]).await;
    for i in 0..2 {
        let (status, _) =
            status_and_text(send(&proxy, generate("goog", OWN_1, &format!("{i}"))).await).await;
        assert_eq!(status, StatusCode::OK);
    }
    let res = send(&proxy, generate("query", OWN_1, "over")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let (status, _) =
        status_and_text(send(&proxy, generate("goog", OWN_2, "other client")).await).await;
    assert_eq!(status, StatusCode::OK, "another key has its own budget");
    assert_eq!(fake.requests_for(OWN_1), 2);
    assert_eq!(fake.requests_for(OWN_2), 1);
}

#[test]
fn own_key_mode_with_a_pool_needs_allowed_tokens() {
    let err = Config::from_map(&env(&[
        ("CLIENT_KEY_PASSTHROUGH", "true"),
        ("API_KEYS", KEY_1),
    ]))
    .err()
    .unwrap();
    assert!(err.0.starts_with("CLIENT_KEY_PASSTHROUGH"), "{err}");
    let c = Config::from_map(&env(&[
        ("CLIENT_KEY_PASSTHROUGH", "true"),
        ("GEMINI_API_KEYS", KEY_1),
        ("ALLOWED_TOKENS", "pool-user-token-0001"),
    ]))
    .unwrap();
    assert!(c.client_key_passthrough);
}

#[tokio::test]
async fn allowed_tokens_use_the_pool_and_other_credentials_their_own_key() {
    let (fake, proxy) = own_key_proxy(&[
        ("GEMINI_API_KEYS", KEY_1),
        ("ALLOWED_TOKENS", "pool-user-token-0001"),
    ])
    .await;
    let (status, _) =
        status_and_text(send(&proxy, generate("bearer", "pool-user-token-0001", "a")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.last_received().unwrap().api_key().as_deref(),
        Some(KEY_1)
    );
    let (status, _) = status_and_text(send(&proxy, generate("goog", OWN_2, "b")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.last_received().unwrap().api_key().as_deref(),
        Some(OWN_2)
    );
    assert_eq!(proxy.pool.snapshot()[0].total_requests, 1);
}

// === Compatibility routes ===

#[tokio::test]
async fn compatibility_routes_refuse_client_tokens() {
    let (fake, proxy) = pool_proxy(&[]).await;
    let routes: [(&str, Option<Value>); 5] = [
        ("/v1/keys/list", None),
        ("/admin/config/gemini-key", Some(json!({"key": KEY_2}))),
        ("/admin/config/user-key", Some(json!({"name": "x"}))),
        (
            "/admin/config/thinking",
            Some(json!({"enabled": true, "budget": 10})),
        ),
        (
            "/admin/config/inject-prompt",
            Some(json!({"enabled": true, "content": "x"})),
        ),
    ];
    for (path, body) in routes {
        for (token, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some(proxy.token.as_str()), StatusCode::FORBIDDEN),
        ] {
            let req = match &body {
                Some(b) => admin_post(path, token, b.clone()),
                None => get(path, token),
            };
            let (status, v) = json_of(send(&proxy, req).await).await;
            assert_eq!(status, expected, "{path} with {token:?}: {v}");
            assert!(v["error"]["message"].is_string());
        }
    }
    assert_eq!(proxy.pool.len(), 1, "nothing changed");
    assert_eq!(fake.total_requests(), 0, "nothing went upstream");
}

#[tokio::test]
async fn compatibility_routes_answer_in_their_shapes() {
    let (fake, proxy) = pool_proxy(&[]).await;
    let admin = Some(proxy.admin_token.as_str());

    let (status, v) = json_of(
        send(
            &proxy,
            admin_post("/admin/config/gemini-key", admin, json!({"key": KEY_2})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(proxy.pool.len(), 2);
    assert!(!v.to_string().contains(KEY_2), "{v}");

    let (status, v) = json_of(send(&proxy, get("/v1/keys/list", admin)).await).await;
    assert_eq!(status, StatusCode::OK);
    let valid: Vec<&str> = v["valid_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(valid, ["AIza…0001", "AIza…0002"]);
    assert_eq!(v["invalid_keys"], json!([]));

    let (status, v) = json_of(
        send(
            &proxy,
            admin_post("/admin/config/user-key", admin, json!({"name": "app"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    let token = v["token"].as_str().unwrap().to_owned();
    let (status, _) =
        status_and_text(send(&proxy, generate("bearer", &token, "new token")).await).await;
    assert_eq!(status, StatusCode::OK, "the new token works at once");

    let (status, v) = json_of(send(&proxy, get("/health", None)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["available_keys"], 2);

    let (status, v) = json_of(send(&proxy, get("/status", admin)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    if cfg!(target_os = "linux") {
        assert!(v["memory_usage_mb"].as_f64().unwrap() > 0.0, "{v}");
    }

    let mut stats = Value::Null;
    for _ in 0..50 {
        stats = json_of(send(&proxy, get("/admin/stats", admin)).await)
            .await
            .1;
        if stats["usage_stats"]["gemini-2.5-flash"]["minute"]["requests"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for window in ["minute", "hour", "day"] {
        let w = &stats["usage_stats"]["gemini-2.5-flash"][window];
        assert_eq!(w["requests"], 1, "{stats}");
        assert!(w["tokens"].as_u64().unwrap() > 0, "{stats}");
    }
    assert_eq!(fake.total_requests(), 1);
}

#[tokio::test]
async fn a_thinking_change_applies_to_the_very_next_request() {
    let (fake, proxy) = pool_proxy(&[]).await;
    let admin = Some(proxy.admin_token.as_str());
    let token = proxy.token.clone();

    status_and_text(send(&proxy, generate("goog", &token, "before")).await).await;
    assert!(last_upstream(&fake)["generationConfig"]["thinkingConfig"].is_null());

    let (status, v) = json_of(
        send(
            &proxy,
            admin_post(
                "/admin/config/thinking",
                admin,
                json!({"enabled": true, "budget": 1234, "include_thoughts": true}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["thinking"],
        json!({"enabled": true, "budget": 1234, "include_thoughts": true})
    );
    status_and_text(send(&proxy, generate("goog", &token, "after")).await).await;
    assert_eq!(
        last_upstream(&fake)["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1234, "includeThoughts": true})
    );
    // The OpenAI route too.
    json_of(send(&proxy, chat(&token, json!({}))).await).await;
    assert_eq!(
        last_upstream(&fake)["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        1234
    );

    let (status, _) = json_of(
        send(
            &proxy,
            admin_post("/admin/config/thinking", admin, json!({"enabled": false})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    status_and_text(send(&proxy, generate("goog", &token, "off again")).await).await;
    assert!(last_upstream(&fake)["generationConfig"]["thinkingConfig"].is_null());

    let (status, _) = json_of(
        send(
            &proxy,
            admin_post("/admin/config/thinking", admin, json!({"budget": -7})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_prompt_injection_change_applies_to_the_very_next_request() {
    let (fake, proxy) = pool_proxy(&[]).await;
    let admin = Some(proxy.admin_token.as_str());
    let token = proxy.token.clone();

    let (status, v) = json_of(
        send(
            &proxy,
            admin_post(
                "/admin/config/inject-prompt",
                admin,
                json!({"enabled": true, "content": "Answer like a pirate.", "position": "system"}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["inject_prompt"],
        json!({"enabled": true, "content": "Answer like a pirate.", "position": "system"})
    );
    status_and_text(send(&proxy, generate("goog", &token, "hi")).await).await;
    let seen = last_upstream(&fake);
    assert_eq!(
        seen["systemInstruction"]["parts"][0]["text"],
        "Answer like a pirate."
    );
    assert_eq!(seen["contents"][0]["parts"][0]["text"], "hi");

    json_of(
        send(
            &proxy,
            admin_post(
                "/admin/config/inject-prompt",
                admin,
                json!({"content": "(be brief)", "position": "user_suffix"}),
            ),
        )
        .await,
    )
    .await;
    json_of(send(&proxy, chat(&token, json!({}))).await).await;
    let seen = last_upstream(&fake);
    assert!(seen["systemInstruction"].is_null(), "{seen}");
    let last_text = seen["contents"][0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(last_text.ends_with("(be brief)"), "{seen}");

    json_of(
        send(
            &proxy,
            admin_post(
                "/admin/config/inject-prompt",
                admin,
                json!({"enabled": false}),
            ),
        )
        .await,
    )
    .await;
    status_and_text(send(&proxy, generate("goog", &token, "plain")).await).await;
    let seen = last_upstream(&fake);
    assert!(seen["systemInstruction"].is_null());
    assert_eq!(seen["contents"][0]["parts"][0]["text"], "plain");

    let (status, _) = json_of(
        send(
            &proxy,
            admin_post(
                "/admin/config/inject-prompt",
                admin,
                json!({"position": "middle"}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_openai_top_level_thinking_config_reaches_upstream() {
    let (fake, proxy) = pool_proxy(&[]).await;
    let token = proxy.token.clone();
    let (status, v) = json_of(
        send(
            &proxy,
            chat(
                &token,
                json!({"thinking_config": {"thinking_budget": 321, "include_thoughts": false}}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        last_upstream(&fake)["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 321, "includeThoughts": false})
    );
}

#[tokio::test]
async fn a_resumed_stream_stays_on_the_clients_own_key() {
    let (fake, proxy) = own_key_proxy(&[("RETRY_DELAY_MS", "0")]).await;
    fake.push_fault(tower_gemini::testing::Fault::DropAfter(2));
    let req = with_credential(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "goog",
        OWN_1,
    )
    .body(Body::from(
        json!({"contents": [{"role": "user", "parts": [{"text": "a story about rivers"}]}]})
            .to_string(),
    ))
    .unwrap();
    let (status, body) = status_and_text(send(&proxy, req).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"finishReason\":\"STOP\""), "{body}");
    let keys: Vec<Option<String>> = fake.received().iter().map(|r| r.api_key()).collect();
    assert!(keys.len() >= 2, "the stream was resumed: {keys:?}");
    assert!(keys.iter().all(|k| k.as_deref() == Some(OWN_1)), "{keys:?}");
}
