//! full_proxy's router end to end over loopback, against FakeGemini.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{Proxy, send};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault, KeyBehavior};

const KEY: &str = "upstream-key-aaaa-0001";

async fn fake() -> FakeGemini {
    FakeGemini::start([KEY]).await.unwrap()
}

async fn proxy_for(fake: &FakeGemini) -> Proxy {
    Proxy::start(&[("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", &fake.url())]).await
}

fn post(uri: &str, auth: Option<(&str, &str)>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(uri).header("content-type", "application/json");
    if let Some((k, v)) = auth {
        b = b.header(k, v);
    }
    b.body(body.into()).unwrap()
}

fn prompt(text: &str) -> String {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}).to_string()
}

async fn json_of(res: Response<Body>) -> Value {
    let bytes = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
}

#[tokio::test]
async fn generate_content_returns_the_upstream_answer() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let bearer = format!("Bearer {}", proxy.token);
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("authorization", &bearer)),
            prompt("hi"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_of(res).await;
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        FakeGemini::passage("hi")
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert!(v["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn client_credential_never_reaches_upstream() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let token = proxy.token.clone();
    let styles = [
        post(
            "/v1beta/models/gemini-2.5-flash:countTokens",
            Some(("authorization", &format!("Bearer {token}"))),
            prompt("a"),
        ),
        post(
            "/v1beta/models/gemini-2.5-flash:countTokens",
            Some(("x-goog-api-key", &token)),
            prompt("a"),
        ),
        post(
            &format!("/v1beta/models/gemini-2.5-flash:countTokens?key={token}"),
            None,
            prompt("a"),
        ),
    ];
    for req in styles {
        assert_eq!(send(&proxy, req).await.status(), StatusCode::OK);
    }
    let received = fake.received();
    assert_eq!(received.len(), 3);
    for r in received {
        assert_eq!(r.headers["x-goog-api-key"], KEY);
        assert!(r.headers.get("authorization").is_none());
        assert!(!r.query.unwrap_or_default().contains(&token));
        assert!(!String::from_utf8_lossy(&r.body).contains(&token));
    }
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_and_never_reaches_upstream() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
            prompt("hi"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let v = json_of(res).await;
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");

    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("x-goog-api-key", "wrong-token")),
            prompt("hi"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let res = send(
        &proxy,
        post(
            "/v1/chat/completions",
            Some(("authorization", "Bearer nope")),
            "{}",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let v = json_of(res).await;
    assert_eq!(
        v["error"]["type"], "authentication_error",
        "OpenAI routes answer in OpenAI's shape"
    );
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn oversized_body_is_413_and_never_forwarded() {
    let fake = fake().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("MAX_BODY_BYTES", "1024"),
    ])
    .await;
    let big = prompt(&"x".repeat(4096));
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("x-goog-api-key", &proxy.token)),
            big,
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v = json_of(res).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("1024"));
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn sse_stream_is_relayed_event_by_event() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    // The upstream sends two events and then stalls: a relaying gateway shows them at once,
    // a buffering one shows nothing until the stall ends (never, here).
    fake.push_fault(Fault::StallAfter {
        chunks: 2,
        pause: Duration::MAX,
    });
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Some(("x-goog-api-key", &proxy.token)),
            prompt("Tell me about rivers"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut seen = String::new();
    let expected: String = FakeGemini::passage_chunks("Tell me about rivers", 4)[..2].concat();
    let got_two = tokio::time::timeout(Duration::from_secs(20), async {
        while seen.matches("data: ").count() < 2 {
            let frame = body.frame().await.expect("stream open").expect("no error");
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await;
    assert!(
        got_two.is_ok(),
        "the first events did not arrive while the upstream stalled: {seen:?}"
    );
    let text: String = seen
        .split("\r\n\r\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, expected);
}

#[tokio::test]
async fn whole_streams_arrive_intact_in_both_stream_formats() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    for uri in [
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    ] {
        let direct = UpstreamClient::new(fake.url())
            .unwrap()
            .oneshot(post(uri, Some(("x-goog-api-key", KEY)), prompt("bees")))
            .await
            .unwrap();
        let direct: Bytes = collect_limited(direct.into_body(), 1 << 24).await.unwrap();
        let via = send(
            &proxy,
            post(uri, Some(("x-goog-api-key", &proxy.token)), prompt("bees")),
        )
        .await;
        assert_eq!(via.status(), StatusCode::OK);
        let via: Bytes = collect_limited(via.into_body(), 1 << 24).await.unwrap();
        assert_eq!(via, direct, "{uri} relayed byte for byte");
    }
}

#[tokio::test]
async fn request_id_is_kept_forwarded_and_returned() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let mut req = post(
        "/v1beta/models/gemini-2.5-flash:countTokens",
        Some(("x-goog-api-key", &proxy.token)),
        prompt("a"),
    );
    req.headers_mut()
        .insert("x-request-id", "client-chosen-id-7".parse().unwrap());
    let res = send(&proxy, req).await;
    assert_eq!(res.headers()["x-request-id"], "client-chosen-id-7");
    assert_eq!(
        fake.last_received().unwrap().headers["x-request-id"],
        "client-chosen-id-7"
    );

    let res = send(&proxy, post("/v1beta/models/x:countTokens", None, "{}")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["x-request-id"].len(),
        36,
        "a rejected request still gets a minted id"
    );
}

#[tokio::test]
async fn health_needs_no_credential() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let res = send(&proxy, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_of(res).await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["available_keys"], 1);
    assert_eq!(fake.total_requests(), 0, "health does not call upstream");
}

/// The gateway's own routes carry `x-request-id` like the proxied ones: the client's when
/// valid, else a minted one.
#[tokio::test]
async fn the_gateways_own_routes_carry_a_request_id() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let res = send(&proxy, Request::get("/health").body(Body::empty()).unwrap()).await;
    let minted = res.headers()["x-request-id"].to_str().unwrap();
    assert!(minted.len() >= 16, "{minted}");
    for path in [
        "/health",
        "/metrics",
        "/admin/keys",
        "/admin/tokens/some-token-id",
    ] {
        let req = Request::builder()
            .method(if path.contains("tokens") {
                "DELETE"
            } else {
                "GET"
            })
            .uri(path)
            .header("x-request-id", "trace-me-42")
            .header("authorization", format!("Bearer {}", proxy.admin_token))
            .body(Body::empty())
            .unwrap();
        let res = send(&proxy, req).await;
        assert_eq!(res.headers()["x-request-id"], "trace-me-42", "{path}");
    }
}

/// A path outside the Gemini and OpenAI APIs is a 404 in the route's dialect, answered by the
/// gateway without spending a key; without a token it is a 401 first.
#[tokio::test]
async fn unknown_paths_are_404_in_their_dialect_without_an_upstream_call() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let bearer = format!("Bearer {}", proxy.token);
    for (path, openai) in [
        ("/foo", false),
        ("/v1/nothing", true),
        ("/v1/completions", true),
        ("/favicon.ico", false),
    ] {
        let res = send(&proxy, post(path, Some(("authorization", &bearer)), "{}")).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let v = json_of(res).await;
        assert_eq!(v["error"]["type"].is_string(), openai, "{path}: {v}");
        assert_eq!(v["error"]["status"].is_string(), !openai, "{path}: {v}");
        let res = send(&proxy, post(path, None, "{}")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(fake.total_requests(), 0, "no key was spent");
    // Gemini's own namespaces are still forwarded (the upstream knows its API best).
    let res = send(
        &proxy,
        Request::get("/v1beta/tunedModels")
            .header("authorization", &bearer)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(res.status().is_client_error() || res.status().is_success());
    assert_eq!(fake.total_requests(), 1);
}

#[tokio::test]
async fn upstream_errors_pass_through_in_gemini_shape_and_never_show_the_key() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let res = send(
        &proxy,
        post(
            "/v1beta/models/no-such-model:generateContent",
            Some(("x-goog-api-key", &proxy.token)),
            prompt("hi"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let v = json_of(res).await;
    assert_eq!(v["error"]["status"], "NOT_FOUND");

    // The upstream rejects the key and echoes it in its error body.
    fake.set_key(KEY, KeyBehavior::Invalid);
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("x-goog-api-key", &proxy.token)),
            prompt("hi"),
        ),
    )
    .await;
    let status = res.status();
    let headers = format!("{:?}", res.headers());
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(status.is_client_error() || status.is_server_error());
    assert!(!body.contains(KEY), "key leaked in body: {body}");
    assert!(!headers.contains(KEY));
}

#[tokio::test]
async fn models_list_pages_and_get() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let get = |uri: &str| {
        Request::get(uri)
            .header("x-goog-api-key", proxy.token.as_str())
            .body(Body::empty())
            .unwrap()
    };
    let v = json_of(send(&proxy, get("/v1beta/models?pageSize=2")).await).await;
    assert_eq!(v["models"].as_array().unwrap().len(), 2);
    let next = v["nextPageToken"].as_str().unwrap().to_owned();
    let v2 = json_of(
        send(
            &proxy,
            get(&format!("/v1beta/models?pageSize=2&pageToken={next}")),
        )
        .await,
    )
    .await;
    assert_ne!(v["models"][0]["name"], v2["models"][0]["name"]);
    let m = json_of(send(&proxy, get("/v1beta/models/gemini-2.5-pro")).await).await;
    assert_eq!(m["name"], "models/gemini-2.5-pro");
}

/// `GET /v1/models` is in both APIs: google-genai (which defaults to `/v1`) gets Gemini's list,
/// an OpenAI client gets OpenAI's, on the same path.
#[tokio::test]
async fn v1_models_answers_each_client_in_its_own_shape() {
    let fake = fake().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("MODEL_SEARCH", "gemini-2.5-flash"),
    ])
    .await;
    let get = |uri: &str, header: &str, value: String| {
        Request::get(uri)
            .header(header, value)
            .body(Body::empty())
            .unwrap()
    };
    let token = proxy.token.clone();
    let gemini =
        json_of(send(&proxy, get("/v1/models", "x-goog-api-key", token.clone())).await).await;
    let names: Vec<&str> = gemini["models"]
        .as_array()
        .expect("Gemini's shape")
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"models/gemini-2.5-flash"), "{names:?}");
    assert!(
        names.contains(&"models/gemini-2.5-flash-search"),
        "{names:?}"
    );
    let one = json_of(
        send(
            &proxy,
            get(
                "/v1/models/gemini-2.5-pro?key=",
                "x-goog-api-client",
                "genai-sdk".into(),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(
        one["error"]["code"], 401,
        "no credential: refused in Gemini's shape: {one}"
    );
    let one = json_of(
        send(
            &proxy,
            get(
                &format!("/v1/models/gemini-2.5-pro?key={token}"),
                "x-goog-api-client",
                "genai-sdk".into(),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(one["name"], "models/gemini-2.5-pro");

    let openai = json_of(
        send(
            &proxy,
            get("/v1/models", "authorization", format!("Bearer {token}")),
        )
        .await,
    )
    .await;
    assert_eq!(openai["object"], "list");
    assert!(
        openai["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gemini-2.5-flash")
    );
    let missing =
        json_of(send(&proxy, get("/v1/models", "x-request-id", "abc".into())).await).await;
    assert!(
        missing["error"]["type"].is_string() && missing["error"].get("status").is_none(),
        "OpenAI's shape: {missing}"
    );
}

#[tokio::test]
async fn demo_mode_answers_without_any_key() {
    let proxy = Proxy::start(&[]).await;
    assert!(proxy.demo.is_some());
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("authorization", &format!("Bearer {}", proxy.token))),
            prompt("hi"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_of(res).await;
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        FakeGemini::passage("hi")
    );
}

#[tokio::test]
async fn malformed_json_is_400_in_gemini_shape() {
    let fake = fake().await;
    let proxy = proxy_for(&fake).await;
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("x-goog-api-key", &proxy.token)),
            "{not json",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(res).await["error"]["status"], "INVALID_ARGUMENT");
}

/// The visible text and the finishReasons of a streamed answer (SSE or JSON array).
fn stream_text(body: &[u8], sse: bool) -> (String, Vec<String>, Vec<Value>) {
    let events: Vec<Value> = if sse {
        String::from_utf8_lossy(body)
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect()
    } else {
        serde_json::from_slice(body).unwrap()
    };
    let mut text = String::new();
    let mut finishes = Vec::new();
    let mut errors = Vec::new();
    for e in &events {
        if e.get("error").is_some() {
            errors.push(e.clone());
        }
        let Some(c) = e["candidates"].get(0) else {
            continue;
        };
        for p in c["content"]["parts"].as_array().into_iter().flatten() {
            if p["thought"] != true {
                text.push_str(p["text"].as_str().unwrap_or_default());
            }
        }
        if let Some(f) = c["finishReason"].as_str() {
            finishes.push(f.to_owned());
        }
    }
    (text, finishes, errors)
}

#[tokio::test]
async fn interrupted_streams_reach_the_client_whole_in_both_formats() {
    let fake = fake().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("RETRY_DELAY_MS", "0"),
    ])
    .await;
    for (uri, sse) in [
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            true,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            false,
        ),
    ] {
        fake.push_fault(Fault::DropAfter(2));
        fake.push_fault(Fault::FinishAfter {
            chunks: 1,
            reason: "OTHER".into(),
        });
        fake.push_fault(Fault::EndWithoutFinish(1));
        let res = send(
            &proxy,
            post(
                uri,
                Some(("x-goog-api-key", &proxy.token)),
                prompt("a tale of bees"),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
        let (text, finishes, errors) = stream_text(&body, sse);
        assert_eq!(text, FakeGemini::passage("a tale of bees"), "{uri}");
        assert_eq!(finishes, ["STOP"], "{uri}: exactly one final finishReason");
        assert!(errors.is_empty());
        assert_eq!(fake.pending_faults(), 0);
    }
}

#[tokio::test]
async fn a_stream_that_never_recovers_ends_with_an_explicit_error() {
    let fake = fake().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("RETRY_DELAY_MS", "0"),
        ("MAX_CONSECUTIVE_RETRIES", "2"),
    ])
    .await;
    // Some text, then attempts that add nothing.
    fake.push_fault(Fault::DropAfter(1));
    for _ in 0..4 {
        fake.push_fault(Fault::DropAfter(0));
    }
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Some(("x-goog-api-key", &proxy.token)),
            prompt("endless"),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    let (text, finishes, errors) = stream_text(&body, true);
    assert!(FakeGemini::passage("endless").starts_with(&text));
    assert!(finishes.is_empty(), "never a silent STOP: {finishes:?}");
    assert_eq!(errors.len(), 1, "{}", String::from_utf8_lossy(&body));
    assert_eq!(errors[0]["error"]["status"], "UNAVAILABLE");
}

#[tokio::test]
async fn a_stalled_stream_is_resumed_after_stream_idle_timeout_seconds() {
    let fake = fake().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("RETRY_DELAY_MS", "0"),
        ("STREAM_IDLE_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    fake.push_fault(Fault::StallAfter {
        chunks: 2,
        pause: Duration::from_secs(30),
    });
    let res = send(
        &proxy,
        post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Some(("x-goog-api-key", &proxy.token)),
            prompt("slow bees"),
        ),
    )
    .await;
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    let (text, finishes, _) = stream_text(&body, true);
    assert_eq!(text, FakeGemini::passage("slow bees"));
    assert_eq!(finishes, ["STOP"]);
}

#[tokio::test]
async fn a_stream_ending_with_an_empty_stop_is_resumed_in_both_formats() {
    let fake = fake().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("RETRY_DELAY_MS", "0"),
    ])
    .await;
    for (uri, sse) in [
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            true,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            false,
        ),
    ] {
        fake.clear_received();
        // No text at all, then STOP.
        fake.push_fault(Fault::Empty);
        let res = send(
            &proxy,
            post(
                uri,
                Some(("x-goog-api-key", &proxy.token)),
                prompt("an empty net"),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
        let (text, finishes, errors) = stream_text(&body, sse);
        assert_eq!(text, FakeGemini::passage("an empty net"), "{uri}");
        assert_eq!(finishes, ["STOP"], "{uri}: exactly one final finishReason");
        assert!(errors.is_empty(), "{uri}");
        assert_eq!(fake.pending_faults(), 0);
        assert_eq!(fake.received().len(), 2, "{uri}: one resume");
    }
}

#[tokio::test]
async fn browser_origins_get_cors_only_when_configured() {
    const APP: &str = "https://app.example.com";
    let fake = fake().await;
    let preflight = || {
        Request::options("/v1/chat/completions")
            .header("origin", APP)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };

    // Off by default: no CORS header on any answer, and no token-free preflight.
    let plain = proxy_for(&fake).await;
    let res = send(&plain, preflight()).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(fake.total_requests(), 0);

    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", &fake.url()),
        ("CORS_ALLOWED_ORIGINS", APP),
    ])
    .await;
    // A preflight carries no token and is answered by the gateway itself.
    let res = send(&proxy, preflight()).await;
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(res.headers()["access-control-allow-origin"], APP);
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("x-goog-api-key"));
    assert_eq!(
        fake.total_requests(),
        0,
        "a preflight never reaches upstream"
    );

    // The call itself still needs a token, and its answer names the origin and exposes the id.
    let call = |token: Option<&str>, origin: &str| {
        let mut b = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
            .header("origin", origin)
            .header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("x-goog-api-key", t);
        }
        b.body(Body::from(prompt("hi"))).unwrap()
    };
    let res = send(&proxy, call(None, APP)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send(&proxy, call(Some(&proxy.token), APP)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], APP);
    assert!(
        res.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
    // Another origin is not named.
    let res = send(&proxy, call(Some(&proxy.token), "https://evil.example")).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
}
