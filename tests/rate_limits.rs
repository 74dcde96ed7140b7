//! full_proxy's rate limits from outside: per client, per IP, per model, and one quota shared by
//! two instances through a real Redis (skipped with a printed reason when `REDIS_URL` is unset).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, send};
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::testing::FakeGemini;

const KEY: &str = "AIzaSyRate-limit-test-key-0000000001";

fn generate(model: &str, token: &str) -> Request<Body> {
    Request::post(format!("/v1beta/models/{model}:generateContent"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(
            json!({"contents": [{"parts": [{"text": "hello"}]}]}).to_string(),
        ))
        .unwrap()
}

async fn start(fake: &FakeGemini, vars: &[(&str, &str)]) -> Proxy {
    let url = fake.url();
    let mut all = vec![
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", "client-token-alice,client-token-bob"),
    ];
    all.extend_from_slice(vars);
    Proxy::start(&all).await
}

#[tokio::test]
async fn no_limit_applies_unless_configured() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let proxy = start(&fake, &[]).await;
    for _ in 0..30 {
        let res = send(&proxy, generate("gemini-2.5-flash", "client-token-alice")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_while_another_is_unaffected() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let proxy = start(&fake, &[("MAX_REQUESTS_PER_MINUTE", "3")]).await;
    for left in (0..3).rev() {
        let res = send(&proxy, generate("gemini-2.5-flash", "client-token-alice")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            left.to_string().as_str()
        );
        assert!(res.headers().contains_key("x-ratelimit-reset"));
    }
    let calls = fake.total_requests();
    let res = send(&proxy, generate("gemini-2.5-flash", "client-token-alice")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(fake.total_requests(), calls, "no upstream call");

    // The same client on the OpenAI-style path is counted against the same quota.
    let req = Request::get("/v1/models")
        .header("authorization", "Bearer client-token-alice")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&proxy, req).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let res = send(&proxy, generate("gemini-2.5-flash", "client-token-bob")).await;
    assert_eq!(res.status(), StatusCode::OK, "another client is unaffected");
}

#[tokio::test]
async fn per_ip_and_per_model_limits() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let proxy = start(
        &fake,
        &[
            ("MAX_REQUESTS_PER_DAY_PER_IP", "3"),
            ("MODEL_LIMITS", "gemini-2.5-pro=1rpm"),
        ],
    )
    .await;
    let res = send(&proxy, generate("gemini-2.5-pro", "client-token-alice")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&proxy, generate("gemini-2.5-pro", "client-token-bob")).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one pro request a minute"
    );
    let res = send(&proxy, generate("gemini-2.5-flash", "client-token-bob")).await;
    assert_eq!(res.status(), StatusCode::OK, "other models are not limited");
    // A refused request charges no quota: 2 of this IP's 3 a day are used.
    let res = send(&proxy, generate("gemini-2.5-flash", "client-token-alice")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&proxy, generate("gemini-2.5-flash", "client-token-bob")).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "3 a day from 127.0.0.1"
    );
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after > 3600,
        "a daily quota frees up in hours: {retry_after}"
    );
}

#[tokio::test]
async fn two_instances_sharing_redis_allow_exactly_the_shared_quota() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("skipping: no redis at REDIS_URL (unset)");
        return;
    };
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let prefix = format!("tower-gemini-test-{}", uuid_like());
    let vars = [
        ("MAX_REQUESTS_PER_MINUTE", "5"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let a = start(&fake, &vars).await;
    let b = start(&fake, &vars).await;
    let mut allowed = 0;
    for i in 0..12 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        let res = send(proxy, generate("gemini-2.5-flash", "client-token-alice")).await;
        match res.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 5, "one quota for both instances");
    assert_eq!(fake.total_requests(), 5);
}

/// A unique suffix so runs against one Redis never share buckets.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

/// Two client tokens that mask alike (`team…2024`) are still two clients: one's limit does not
/// spend the other's.
#[tokio::test]
async fn clients_whose_tokens_mask_alike_have_their_own_limits() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", "team-alpha-2024,team-beta-2024"),
        ("MAX_REQUESTS_PER_MINUTE", "1"),
    ])
    .await;
    let res = send(&proxy, generate("gemini-2.5-flash", "team-alpha-2024")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&proxy, generate("gemini-2.5-flash", "team-alpha-2024")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let res = send(&proxy, generate("gemini-2.5-flash", "team-beta-2024")).await;
    assert_eq!(res.status(), StatusCode::OK, "beta has a limit of its own");
}

/// Instances whose token lists differ in order (a rolling change of `ALLOWED_TOKENS`) still
/// keep one quota per token: buckets follow the token, not its display id (`…`, `…#2`).
#[tokio::test]
async fn a_token_has_one_shared_quota_whatever_the_order_of_tokens_on_each_instance() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("skipping: no redis at REDIS_URL (unset)");
        return;
    };
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let upstream = fake.url();
    let prefix = format!("tower-gemini-test-{}", uuid_like());
    let instance = |tokens: &'static str| {
        let (upstream, url, prefix) = (upstream.clone(), url.clone(), prefix.clone());
        async move {
            Proxy::start(&[
                ("GEMINI_API_KEYS", KEY),
                ("UPSTREAM_URL", upstream.as_str()),
                ("ALLOWED_TOKENS", tokens),
                ("MAX_REQUESTS_PER_MINUTE", "4"),
                ("REDIS_URL", url.as_str()),
                ("REDIS_KEY_PREFIX", prefix.as_str()),
            ])
            .await
        }
    };
    let a = instance("ann-1,bob-2").await;
    let b = instance("bob-2,ann-1").await;
    let mut allowed = 0;
    for i in 0..8 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        match send(proxy, generate("gemini-2.5-flash", "ann-1"))
            .await
            .status()
        {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 4, "one quota for ann on both instances");
    // Bob's own quota is untouched by ann's.
    let res = send(&b, generate("gemini-2.5-flash", "bob-2")).await;
    assert_eq!(res.status(), StatusCode::OK);
}
