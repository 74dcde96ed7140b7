//! The OpenAI API as full_proxy's users meet it: the `async-openai` client against full_proxy
//! (every layer on) over loopback, FakeGemini upstream. What only the whole gateway does:
//! client tokens, seamless resumed streams, the key pool's errors, policy and limits on the
//! OpenAI dialect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::pin::Pin;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{CreateChatCompletionRequest, FinishReason};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::Proxy;
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault, KeyBehavior};

const KEY: &str = "AIzaSyOpenAi-proxy-test-key-00000001";
const MODEL: &str = "gemini-2.5-flash";

async fn setup(vars: &[(&str, &str)]) -> (FakeGemini, Proxy, Client<OpenAIConfig>) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let mut all = vec![
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    let proxy = Proxy::start(&all).await;
    let client = client_for(&proxy, &proxy.token.clone());
    (fake, proxy, client)
}

fn client_for(proxy: &Proxy, token: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", proxy.url()))
            .with_api_key(token),
    )
}

fn hello(prompt: &str) -> CreateChatCompletionRequest {
    serde_json::from_value(
        json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}]}),
    )
    .unwrap()
}

async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// Raw POST of a chat request, for what the typed client hides (status, raw fields).
async fn raw_chat(proxy: &Proxy, token: &str, body: Value) -> (StatusCode, String) {
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn chat_through_the_gateway_with_a_client_token() {
    let (fake, _proxy, client) = setup(&[]).await;
    let res = client.chat().create(hello("hi there")).await.unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(FakeGemini::passage("hi there").as_str())
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let got = fake.last_received().unwrap();
    assert_eq!(got.headers["x-goog-api-key"], KEY);
    assert!(got.headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_wrong_token_is_an_openai_401() {
    let (fake, proxy, _) = setup(&[]).await;
    let err = client_for(&proxy, "not-a-token")
        .chat()
        .create(hello("x"))
        .await
        .unwrap_err();
    match err {
        OpenAIError::ApiError(e) => assert!(!e.to_string().is_empty()),
        other => panic!("expected an API error, got {other:?}"),
    }
    let (status, body) = raw_chat(
        &proxy,
        "not-a-token",
        json!({"model": MODEL, "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["type"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn an_interrupted_stream_reaches_an_openai_client_seamless_with_one_finish_reason() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::DropAfter(2));
    fake.push_fault(Fault::FinishAfter {
        chunks: 1,
        reason: "OTHER".into(),
    });
    let mut req = hello("a river's long journey");
    req.stream_options = serde_json::from_value(json!({"include_usage": true})).unwrap();
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finishes = Vec::new();
    let mut usage = None;
    while let Some(chunk) = next(&mut stream).await {
        let chunk = chunk.unwrap();
        for c in &chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
            finishes.extend(c.finish_reason);
        }
        usage = chunk.usage.or(usage);
    }
    assert_eq!(text, FakeGemini::passage("a river's long journey"));
    assert_eq!(finishes, vec![FinishReason::Stop]);
    assert!(usage.unwrap().completion_tokens > 0);
    assert_eq!(fake.pending_faults(), 0);
}

#[tokio::test]
async fn every_key_cooling_is_an_openai_429_with_retry_after() {
    // (Raw HTTP: async-openai retries 429s with backoff on its own.)
    let (fake, proxy, _client) = setup(&[]).await;
    fake.set_key(KEY, KeyBehavior::exhausted(Duration::from_secs(40)));
    // The first call meets the 429; the second is answered by the gateway alone.
    let _ = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", proxy.token))
        .body(Body::from(
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).to_string(),
        ))
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=40).contains(&retry), "{retry}");
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(KEY));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "{v}"
    );
    assert_eq!(fake.total_requests(), 1);
}

#[tokio::test]
async fn policy_applies_on_the_openai_route() {
    let (fake, proxy, client) = setup(&[
        ("INJECT_PROMPT", "Answer as a ship's captain."),
        ("SHOW_THINKING_PROCESS", "false"),
        ("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro"),
    ])
    .await;
    let req = serde_json::from_value(json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"}
    ]}))
    .unwrap();
    client.chat().create(req).await.unwrap();
    let got = fake.last_received().unwrap();
    assert_eq!(got.path, "/v1beta/models/gemini-2.5-pro:generateContent");
    let system: Vec<String> = got.json()["systemInstruction"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        system.contains(&"Answer as a ship's captain.".to_owned()),
        "{system:?}"
    );
    assert!(system.iter().any(|t| t.contains("Be brief.")), "{system:?}");

    // Thoughts hidden: no reasoning_content at all.
    fake.push_fault(Fault::Thoughts);
    let (status, body) = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "think"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{v}"
    );
    assert_eq!(
        v["choices"][0]["message"]["content"],
        FakeGemini::passage("think")
    );
}

#[tokio::test]
async fn models_and_embeddings_through_the_gateway() {
    let (_fake, _proxy, client) = setup(&[("MODEL_SEARCH", MODEL)]).await;
    let models = client.models().list().await.unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&MODEL), "{ids:?}");
    assert!(ids.contains(&"gemini-2.5-flash-search"), "{ids:?}");
    let req =
        serde_json::from_value(json!({"model": "text-embedding-004", "input": ["one", "two"]}))
            .unwrap();
    let emb = client.embeddings().create(req).await.unwrap();
    assert_eq!(emb.data.len(), 2);
    assert!(!emb.data[0].embedding.is_empty());
}

#[tokio::test]
async fn bad_requests_are_openai_400s_that_never_reach_upstream() {
    let (fake, proxy, _) = setup(&[]).await;
    for body in [
        json!({"messages": [{"role": "user", "content": "no model"}]}),
        json!({"model": MODEL, "messages": "not a list"}),
        json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
    ] {
        let (status, text) = raw_chat(&proxy, &proxy.token, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn the_rate_limit_counts_both_apis_for_one_token() {
    let (_fake, proxy, client) = setup(&[("MAX_REQUESTS_PER_MINUTE", "2")]).await;
    client.chat().create(hello("one")).await.unwrap();
    let req = Request::post(format!("/v1beta/models/{MODEL}:generateContent"))
        .header("x-goog-api-key", proxy.token.as_str())
        .body(Body::from(r#"{"contents":[{"parts":[{"text":"two"}]}]}"#))
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, body) = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "three"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["type"].is_string(), "OpenAI's error shape: {v}");
}
