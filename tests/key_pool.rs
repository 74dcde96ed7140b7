//! The key pool as full_proxy's users meet it: several upstream keys, some tired or broken,
//! behind one endpoint; over loopback against FakeGemini, counting what each key saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use support::{Captured, Proxy, get, send};
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::testing::{FakeGemini, KeyBehavior};

const GOOD_1: &str = "AIzaSyGood-key-number-one-000000000001";
const GOOD_2: &str = "AIzaSyGood-key-number-two-000000000002";
const EXHAUSTED: &str = "AIzaSyTired-key-exhausted-0000000003";
const INVALID: &str = "AIzaSyBroken-key-invalid-00000000004";
const ALL: [&str; 4] = [GOOD_1, GOOD_2, EXHAUSTED, INVALID];

fn generate(proxy: &Proxy, model: &str, text: &str) -> Request<Body> {
    Request::post(format!("/v1beta/models/{model}:generateContent"))
        .header("authorization", format!("Bearer {}", proxy.token))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}).to_string(),
        ))
        .unwrap()
}

/// Status, headers as text, and body text of a response.
async fn read(res: Response<Body>) -> (StatusCode, String, String) {
    let status = res.status();
    let headers = format!("{:?}", res.headers());
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn assert_no_key(text: &str) {
    for key in ALL {
        assert!(!text.contains(key), "a key leaked: {text}");
    }
}

/// A fake with two good keys, one exhausted for a minute and one invalid, and a proxy on it.
async fn setup(extra: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([GOOD_1, GOOD_2, EXHAUSTED])
        .await
        .unwrap();
    fake.set_key(EXHAUSTED, KeyBehavior::exhausted(Duration::from_secs(60)));
    let keys = ALL.join(",");
    let url = fake.url();
    let mut vars = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
    ];
    vars.extend_from_slice(extra);
    let proxy = Proxy::start(&vars).await;
    (fake, proxy)
}

#[tokio::test]
async fn a_burst_succeeds_and_bad_keys_are_touched_only_as_the_rules_allow() {
    let (fake, proxy) = setup(&[("MAX_FAILURES", "2")]).await;
    for i in 0..24 {
        let (status, headers, body) = read(
            send(
                &proxy,
                generate(&proxy, "gemini-2.5-flash", &format!("q{i}")),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert_no_key(&headers);
        assert_no_key(&body);
    }
    // The exhausted key cooled down for a minute after its first 429; the invalid one was
    // disabled after MAX_FAILURES=2 failures in a row.
    assert_eq!(fake.requests_for(EXHAUSTED), 1);
    assert_eq!(fake.requests_for(INVALID), 2);
    assert_eq!(fake.requests_for(GOOD_1) + fake.requests_for(GOOD_2), 24);
    // Round robin shares the load between the healthy keys.
    assert!(fake.requests_for(GOOD_1) >= 8 && fake.requests_for(GOOD_2) >= 8);

    let (status, _, body) = read(send(&proxy, get("/health", None)).await).await;
    assert_eq!(status, StatusCode::OK);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["keys"]["total"], 4);
    // The invalid key is disabled; the exhausted one still counts as usable for other models.
    assert_eq!(health["keys"]["usable"], 3);
}

#[tokio::test]
async fn a_key_exhausted_mid_run_cools_down_and_comes_back() {
    let fake = FakeGemini::start([GOOD_1, GOOD_2]).await.unwrap();
    let keys = format!("{GOOD_1},{GOOD_2}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &fake.url())]).await;
    for i in 0..4 {
        let res = send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("a{i}")),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(fake.requests_for(GOOD_2), 2);

    // The upstream says: retry in one second.
    fake.set_key(GOOD_2, KeyBehavior::exhausted(Duration::from_secs(1)));
    for i in 0..4 {
        let res = send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("b{i}")),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(
        fake.requests_for(GOOD_2),
        3,
        "tried once, then left to cool"
    );
    fake.set_key(GOOD_2, KeyBehavior::Valid);

    // Cooling is visible to operators.
    let (_, _, body) = read(send(&proxy, get("/admin/keys", Some(&proxy.admin_token))).await).await;
    let keys: Value = serde_json::from_str(&body).unwrap();
    let tired = &keys["keys"][1];
    assert_eq!(tired["cooling"][0]["model"], "gemini-2.5-flash");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 0..4 {
        let res = send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("c{i}")),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert!(
        fake.requests_for(GOOD_2) >= 4,
        "the key is back in rotation"
    );
}

#[tokio::test]
async fn a_key_the_upstream_keeps_failing_with_rests_while_the_good_key_serves() {
    let fake = FakeGemini::start([GOOD_1, GOOD_2]).await.unwrap();
    fake.set_key(GOOD_2, KeyBehavior::Unavailable);
    let keys = format!("{GOOD_1},{GOOD_2}");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", &keys),
        ("UPSTREAM_URL", &fake.url()),
        ("MAX_TRANSIENT_FAILURES", "2"),
    ])
    .await;
    for i in 0..10 {
        let (status, headers, body) = read(
            send(
                &proxy,
                generate(&proxy, "gemini-2.5-flash", &format!("q{i}")),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert_no_key(&headers);
        assert_no_key(&body);
    }
    // Round robin sends every other request to the failing key first, until its second 503 in
    // a row rests it; then it is skipped and the good key serves alone.
    assert_eq!(fake.requests_for(GOOD_2), 2);
    assert_eq!(fake.requests_for(GOOD_1), 10);

    let (_, _, body) = read(send(&proxy, get("/admin/keys", Some(&proxy.admin_token))).await).await;
    assert_no_key(&body);
    let v: Value = serde_json::from_str(&body).unwrap();
    let failing = &v["keys"][1];
    assert_eq!(
        failing["state"], "enabled",
        "rested, not disabled: {failing}"
    );
    assert_eq!(failing["consecutive_transient_failures"], 2);
    assert_eq!(failing["consecutive_failures"], 0);
    let rest = failing["resting_seconds"].as_u64().unwrap();
    assert!(rest > 0 && rest <= 60, "{failing}");
    assert_eq!(failing["last_error"], "503 UNAVAILABLE");
    assert!(v["keys"][0]["resting_seconds"].is_null());

    // Still counted usable: it is not the key that is broken.
    let (_, _, body) = read(send(&proxy, get("/health", None)).await).await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["keys"]["usable"], 2);
}

#[tokio::test]
async fn a_429_on_one_model_leaves_the_key_serving_other_models() {
    let fake = FakeGemini::start([GOOD_1]).await.unwrap();
    fake.set_key_for_model(
        GOOD_1,
        "gemini-2.5-pro",
        KeyBehavior::exhausted(Duration::from_secs(30)),
    );
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", GOOD_1), ("UPSTREAM_URL", &fake.url())]).await;

    let (status, headers, body) =
        read(send(&proxy, generate(&proxy, "gemini-2.5-pro", "x")).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_no_key(&headers);
    assert_no_key(&body);

    let res = send(&proxy, generate(&proxy, "gemini-2.5-flash", "y")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(fake.requests_for(GOOD_1), 2);
}

#[tokio::test]
async fn every_key_cooling_is_a_429_with_retry_after_and_no_upstream_call() {
    let fake = FakeGemini::start([GOOD_1, GOOD_2]).await.unwrap();
    fake.set_key(GOOD_1, KeyBehavior::exhausted(Duration::from_secs(30)));
    fake.set_key(GOOD_2, KeyBehavior::exhausted(Duration::from_secs(45)));
    let keys = format!("{GOOD_1},{GOOD_2}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &fake.url())]).await;

    let res = send(&proxy, generate(&proxy, "gemini-2.5-flash", "x")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fake.total_requests(), 2, "each key tried once");

    // Now the gateway knows: it answers at once, with the earliest end of a cool-down.
    let res = send(&proxy, generate(&proxy, "gemini-2.5-flash", "x")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (25..=30).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    let (_, _, body) = read(res).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_no_key(&body);
    assert_eq!(fake.total_requests(), 2, "no upstream call");

    // The OpenAI dialect gets OpenAI's error shape for the same condition.
    let req = Request::post("/v1/models/gemini-2.5-flash:generateContent")
        .header("x-goog-api-key", proxy.token.as_str())
        .body(Body::from(r#"{"contents":[]}"#))
        .unwrap();
    let (status, _, body) = read(send(&proxy, req).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test]
async fn the_first_429_from_every_key_already_says_when_in_both_dialects() {
    for openai in [false, true] {
        let fake = FakeGemini::start([GOOD_1, GOOD_2, EXHAUSTED])
            .await
            .unwrap();
        fake.set_key(GOOD_1, KeyBehavior::exhausted(Duration::from_secs(30)));
        fake.set_key(GOOD_2, KeyBehavior::exhausted(Duration::from_secs(12)));
        fake.set_key(EXHAUSTED, KeyBehavior::exhausted(Duration::from_secs(45)));
        let keys = format!("{GOOD_1},{GOOD_2},{EXHAUSTED}");
        let proxy =
            Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &fake.url())]).await;
        // The very first request: every key answers Google's 429, none was known to cool yet.
        let req = if openai {
            Request::post("/v1/chat/completions")
                .header("authorization", format!("Bearer {}", proxy.token))
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}]})
                        .to_string(),
                ))
                .unwrap()
        } else {
            generate(&proxy, "gemini-2.5-flash", "x")
        };
        let res = send(&proxy, req).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(fake.total_requests(), 3, "each key tried once");
        let retry_after = res
            .headers()
            .get("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After (openai: {openai})"));
        // The shortest RetryInfo seen: 12 s.
        assert_eq!(retry_after, "12", "openai: {openai}");
        let (_, _, body) = read(res).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if openai {
            assert_eq!(v["error"]["type"], "rate_limit_error", "{body}");
        } else {
            assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
        }
        assert_no_key(&body);
    }
}

#[tokio::test]
async fn a_model_refused_to_one_key_is_served_by_the_others_and_the_key_keeps_its_other_models() {
    const MODEL: &str = "gemini-2.5-flash";
    let fake = FakeGemini::start([GOOD_1, GOOD_2]).await.unwrap();
    // The newer key is refused the model ("no longer available to new users").
    fake.set_key_for_model(GOOD_1, MODEL, KeyBehavior::ModelNotForNewUsers);
    let keys = format!("{GOOD_1},{GOOD_2}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &fake.url())]).await;

    for i in 0..6 {
        let res = send(&proxy, generate(&proxy, MODEL, "x")).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
    }
    // One 404 on the refused key, then the pair is set aside: no call to it for the model again.
    let refused: Vec<_> = fake
        .received()
        .into_iter()
        .filter(|r| r.api_key().as_deref() == Some(GOOD_1))
        .collect();
    assert_eq!(refused.len(), 1, "the refused key was asked once");
    // The key stays enabled and serves another model.
    let res = send(&proxy, generate(&proxy, "gemini-2.5-pro", "x")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&proxy, generate(&proxy, "gemini-2.5-pro", "x")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        fake.requests_for(GOOD_1) >= 2,
        "the key still serves other models"
    );
    // /admin/keys shows the pair as a model not available to the key, not a quota.
    let (_, _, body) = read(send(&proxy, get("/admin/keys", Some(&proxy.admin_token))).await).await;
    let keys: Value = serde_json::from_str(&body).unwrap();
    let first = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["cooling"].as_array().is_some_and(|c| !c.is_empty()))
        .unwrap_or_else(|| panic!("no key sets the model aside: {body}"));
    assert_eq!(first["state"], "enabled");
    assert_eq!(first["cooling"][0]["model"], MODEL);
    assert_eq!(first["cooling"][0]["reason"], "model_not_available_to_key");
    assert_no_key(&body);
}

#[tokio::test]
async fn a_model_refused_to_every_key_stays_a_404() {
    const MODEL: &str = "gemini-2.5-flash";
    let fake = FakeGemini::start([GOOD_1, GOOD_2]).await.unwrap();
    fake.set_key_for_model(GOOD_1, MODEL, KeyBehavior::ModelNotForNewUsers);
    fake.set_key_for_model(GOOD_2, MODEL, KeyBehavior::ModelNotForNewUsers);
    let keys = format!("{GOOD_1},{GOOD_2}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &fake.url())]).await;
    // Google's own 404 on the first request (each key asked once)...
    let (status, _, body) = read(send(&proxy, generate(&proxy, MODEL, "x")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no longer available"), "{body}");
    assert_eq!(fake.total_requests(), 2);
    // ...then the gateway's own 404 naming the model, with no upstream call, and no key
    // disabled.
    let (status, _, body) = read(send(&proxy, generate(&proxy, MODEL, "x")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains(MODEL), "{body}");
    assert_eq!(fake.total_requests(), 2);
    assert_eq!(proxy.pool.usable_count(), 2);
    // An unknown model on the other hand is one upstream call per key, then Google's 404 too.
    let (status, _, _) = read(send(&proxy, generate(&proxy, "no-such-model", "x")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_key_invalid_is_a_503_naming_no_key() {
    let fake = FakeGemini::start([GOOD_1]).await.unwrap();
    let keys = format!("{EXHAUSTED},{INVALID}");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", &keys),
        ("UPSTREAM_URL", &fake.url()),
        ("MAX_FAILURES", "1"),
    ])
    .await;
    let (status, _, body) =
        read(send(&proxy, generate(&proxy, "gemini-2.5-flash", "x")).await).await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert_no_key(&body);
    let before = fake.total_requests();
    let (status, headers, body) =
        read(send(&proxy, generate(&proxy, "gemini-2.5-flash", "x")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_no_key(&headers);
    assert_no_key(&body);
    assert_eq!(
        fake.total_requests(),
        before,
        "disabled keys are not called"
    );

    let (_, _, body) = read(send(&proxy, get("/health", None)).await).await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["keys"]["usable"], 0);
    assert_eq!(health["status"], "degraded");
}

#[tokio::test]
async fn admin_keys_lists_masked_keys_for_the_admin_token_only() {
    let (fake, proxy) = setup(&[]).await;
    for i in 0..6 {
        send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("{i}")),
        )
        .await;
    }
    let (status, _, _) = read(send(&proxy, get("/admin/keys", None)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = read(send(&proxy, get("/admin/keys", Some(&proxy.token))).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _, body) =
        read(send(&proxy, get("/admin/keys", Some(&proxy.admin_token))).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_key(&body);
    let v: Value = serde_json::from_str(&body).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0]["key"], "AIza…0001");
    assert_eq!(keys[3]["key"], "AIza…0004");
    let states: Vec<&str> = keys.iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["enabled", "enabled", "enabled", "enabled"]);
    assert_eq!(keys[2]["cooling"][0]["model"], "gemini-2.5-flash");
    assert!(keys[3]["consecutive_failures"].as_u64().unwrap() >= 1);
    let total: u64 = keys
        .iter()
        .map(|k| k["total_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, fake.total_requests());
}

#[tokio::test]
async fn keys_added_and_removed_at_run_time_take_effect_on_the_next_request() {
    let fake = FakeGemini::start([GOOD_1, GOOD_2]).await.unwrap();
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", GOOD_1), ("UPSTREAM_URL", &fake.url())]).await;
    let admin = |req: http::request::Builder| {
        req.header("authorization", format!("Bearer {}", proxy.admin_token))
    };
    let res = send(
        &proxy,
        admin(Request::post("/admin/keys"))
            .body(Body::from(json!({ "key": GOOD_2 }).to_string()))
            .unwrap(),
    )
    .await;
    let (status, _, body) = read(res).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_no_key(&body);
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for i in 0..4 {
        send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("{i}")),
        )
        .await;
    }
    assert_eq!(fake.requests_for(GOOD_2), 2);

    let res = send(
        &proxy,
        admin(Request::delete(format!("/admin/keys/{id}")))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for i in 0..4 {
        send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("{i}")),
        )
        .await;
    }
    assert_eq!(fake.requests_for(GOOD_2), 2, "a removed key is not used");
    assert_eq!(fake.requests_for(GOOD_1), 6);
}

#[tokio::test]
async fn no_key_ever_shows_in_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (fake, proxy) = setup(&[("MAX_FAILURES", "1")]).await;
    fake.set_key_for_model(GOOD_1, "gemini-2.5-pro", KeyBehavior::PermissionDenied);
    for i in 0..6 {
        send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("{i}")),
        )
        .await;
        send(&proxy, generate(&proxy, "gemini-2.5-pro", &format!("{i}"))).await;
    }
    let mut req = generate(&proxy, "gemini-2.5-flash", "query key");
    *req.uri_mut() = format!(
        "/v1beta/models/gemini-2.5-flash:generateContent?key={}",
        proxy.token
    )
    .parse()
    .unwrap();
    req.headers_mut().remove("authorization");
    send(&proxy, req).await;

    let text = logs.text();
    assert!(
        text.contains("gemini-2.5-pro"),
        "logs were captured: {text}"
    );
    assert_no_key(&text);
    assert!(
        !text.contains(&proxy.token),
        "a client token leaked: {text}"
    );
}

#[tokio::test]
async fn the_access_line_names_the_attempt_and_key_that_served_once() {
    // At full_proxy's default level, where the key_rotation span is off.
    let (logs, _guard) = Captured::start_at(tracing::Level::INFO);

    let (_fake, proxy) = setup(&[]).await;
    for i in 0..8 {
        let res = send(
            &proxy,
            generate(&proxy, "gemini-2.5-flash", &format!("{i}")),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let good = [GOOD_1, GOOD_2].map(|k| tower_gemini::secret::ApiKey::new(k).fingerprint());
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(":generateContent") && l.contains("status=200"))
        .collect();
    assert_eq!(lines.len(), 8, "{text}");
    let mut retried = false;
    for line in lines {
        assert_eq!(line.matches("attempt=").count(), 1, "{line}");
        assert_eq!(line.matches("key.id=").count(), 1, "{line}");
        assert!(
            good.iter()
                .any(|fp| line.contains(&format!("key.id=\"{fp}\""))),
            "served by a good key: {line}"
        );
        let attempt: String = line
            .split("attempt=")
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        retried |= attempt.parse::<u32>().unwrap() > 1;
    }
    assert!(
        retried,
        "the exhausted and invalid keys made some request retry: {text}"
    );
}
