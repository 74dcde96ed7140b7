//! Client tokens as accounts, over real sockets against FakeGemini: the admin API takes a
//! token's models, limits, budgets, expiry and labels (and refuses what it does not
//! understand, naming it); a model outside the list is a 403 naming it in the route's dialect,
//! a spent budget a 429 until the period resets, an expired token a 401; usage and what is
//! left of a budget show in `GET /admin/tokens`. Fleet-wide behaviour (a budget spent across
//! instances, a change holding on the very next request elsewhere, `TOKENS_FILE`) is in
//! tests/fleet.rs, which runs several processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, send, status_and_text};
use tower_gemini::Body;
use tower_gemini::testing::FakeGemini;

const KEY: &str = "AIzaSyAccounts-test-key-000000000001";
const ADMIN: &str = "test-admin-token-1";

async fn setup() -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())]).await;
    (fake, proxy)
}

fn admin(method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("/admin{path}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

async fn json_of(proxy: &Proxy, req: Request<Body>) -> (StatusCode, Value) {
    let (status, text) = status_and_text(send(proxy, req).await).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn native(model: &str, token: &str, stream: bool) -> Request<Body> {
    let path = if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    };
    Request::post(path)
        .header("x-goog-api-key", token)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "tell me about bees"}]}]})
                .to_string(),
        ))
        .unwrap()
}

fn openai(model: &str, token: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        ))
        .unwrap()
}

fn anthropic(model: &str, token: &str) -> Request<Body> {
    Request::post("/v1/messages")
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        ))
        .unwrap()
}

async fn create(proxy: &Proxy, body: Value) -> (String, Value) {
    let (status, created) = json_of(proxy, admin("POST", "/tokens", Some(body))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (created["token"].as_str().unwrap().to_owned(), created)
}

#[tokio::test]
async fn a_token_limited_to_one_model_gets_a_403_naming_another_in_every_dialect() {
    let (fake, proxy) = setup().await;
    let (token, created) = create(
        &proxy,
        json!({"name": "flash-only", "models": ["gemini-2.5-flash"]}),
    )
    .await;
    assert_eq!(created["models"], json!(["gemini-2.5-flash"]));

    let (status, _) =
        status_and_text(send(&proxy, native("gemini-2.5-flash", &token, false)).await).await;
    assert_eq!(status, StatusCode::OK);
    let upstream = fake.total_requests();

    let (status, body) = json_of(&proxy, native("gemini-2.5-pro", &token, false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"]["status"], "PERMISSION_DENIED",
        "Gemini's shape: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-2.5-pro")
    );

    let (status, body) = json_of(&proxy, openai("gemini-2.5-pro", &token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["type"].is_string(), "OpenAI's shape: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-2.5-pro")
    );

    let (status, body) = json_of(&proxy, anthropic("gemini-2.5-pro", &token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-2.5-pro")
    );

    assert_eq!(
        fake.total_requests(),
        upstream,
        "no refused request reached upstream"
    );
    let (status, _) = status_and_text(send(&proxy, openai("gemini-2.5-flash", &token)).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_admin_api_refuses_what_it_does_not_understand_and_ids_are_plain_ascii() {
    let (_fake, proxy) = setup().await;
    for (body, field) in [
        (
            json!({"name": "x", "modles": ["gemini-2.5-flash"]}),
            "modles",
        ),
        (json!({"name": "x", "rpm": "sixty"}), "rpm"),
        (json!({"name": "x", "rpm": 0}), "rpm"),
        (
            json!({"name": "x", "expires_at": "next tuesday"}),
            "expires_at",
        ),
        (json!({"name": "x", "labels": {"team": 7}}), "labels"),
        (json!({"models": ["gemini-2.5-flash"]}), "name"),
    ] {
        let (status, answer) = json_of(&proxy, admin("POST", "/tokens", Some(body.clone()))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body} → {message}");
    }
    let (_, listed) = json_of(&proxy, admin("GET", "/tokens", None)).await;
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["name"] != "x"),
        "nothing was created: {listed}"
    );

    let (token, created) = create(&proxy, json!({"name": "ids"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() == 16 && id.starts_with("tok_") && id[4..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(
        !id.contains(&token[3..7]),
        "the id shows nothing of the token"
    );
    let (status, answer) = json_of(
        &proxy,
        admin(
            "PATCH",
            &format!("/tokens/{id}"),
            Some(json!({"rpm": 5, "tmp": 9})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("tmp"));
    let (status, patched) = json_of(
        &proxy,
        admin(
            "PATCH",
            &format!("/tokens/{id}"),
            Some(json!({"rpm": 5, "labels": {"team": "bees"}, "expires_at": "2099-01-01T00:00:00+02:00"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["rpm"], 5);
    assert_eq!(patched["labels"]["team"], "bees");
    assert_eq!(patched["expires_at"], "2098-12-31T22:00:00Z");
    let (status, _) =
        status_and_text(send(&proxy, admin("DELETE", &format!("/tokens/{id}"), None)).await).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) =
        status_and_text(send(&proxy, native("gemini-2.5-flash", &token, false)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_gets_a_401_saying_so() {
    let (fake, proxy) = setup().await;
    let (token, created) = create(
        &proxy,
        json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(created["expired"], true);
    for req in [
        native("gemini-2.5-flash", &token, false),
        openai("gemini-2.5-flash", &token),
        anthropic("gemini-2.5-flash", &token),
    ] {
        let (status, body) = json_of(&proxy, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body.to_string().contains("expired at 2020-01-01T00:00:00Z"),
            "{body}"
        );
    }
    assert_eq!(fake.total_requests(), 0);
    // Extended: works again on the next request.
    let id = created["id"].as_str().unwrap();
    let (status, _) = json_of(
        &proxy,
        admin(
            "PATCH",
            &format!("/tokens/{id}"),
            Some(json!({"expires_at": null})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        status_and_text(send(&proxy, native("gemini-2.5-flash", &token, false)).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_daily_budget_counts_real_usage_streams_included_and_refuses_until_midnight() {
    let (fake, proxy) = setup().await;
    let (token, created) = create(
        &proxy,
        json!({"name": "budget", "daily_token_budget": 1000}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut served = 0;
    let mut refused = None;
    for i in 0..200 {
        let (status, body) = json_of(&proxy, native("gemini-2.5-flash", &token, i % 2 == 1)).await;
        match status {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused = Some(body);
                break;
            }
            other => panic!("{other}: {body}"),
        }
        // Usage is counted when the answer ends, off the request path.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the budget ran out");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("daily token budget") && message.contains("resets at"),
        "{message}"
    );
    let (_, listed) = json_of(&proxy, admin("GET", "/tokens", None)).await;
    let me = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap()
        .clone();
    let used = me["usage"]["day"]["tokens"].as_u64().unwrap();
    assert!(used >= 1000, "{me}");
    assert_eq!(me["remaining"]["day"], 0, "{me}");
    assert_eq!(me["usage"]["day"]["requests"], served, "{me}");
    assert!(
        served >= 2,
        "a stream and a unary answer were both counted: {served}"
    );
    let upstream = fake.total_requests();
    let res = send(&proxy, openai("gemini-2.5-flash", &token)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
    assert_eq!(fake.total_requests(), upstream);
}

#[tokio::test]
async fn a_tokens_own_rpm_replaces_the_global_one() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("MAX_REQUESTS_PER_MINUTE", "2"),
    ])
    .await;
    let (generous, _) = create(&proxy, json!({"name": "generous", "rpm": 5})).await;
    let (plain, _) = create(&proxy, json!({"name": "plain"})).await;
    let mut ok = 0;
    for _ in 0..8 {
        if send(&proxy, native("gemini-2.5-flash", &generous, false))
            .await
            .status()
            == StatusCode::OK
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 5, "its own 5 per minute, not the global 2");
    let mut ok = 0;
    for _ in 0..4 {
        if send(&proxy, native("gemini-2.5-flash", &plain, false))
            .await
            .status()
            == StatusCode::OK
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 2, "a token without its own rpm keeps the global one");
}
