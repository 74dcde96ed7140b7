//! The upstream fault matrix through full_proxy: every fault has a defined outcome for the
//! client — retried on another key, resumed, or a clear error in the route's dialect — within the
//! configured time, and no key in sight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault};

const K1: &str = "AIzaSyFault-matrix-key-one-0000000001";
const K2: &str = "AIzaSyFault-matrix-key-two-0000000002";
const K3: &str = "AIzaSyFault-matrix-key-three-00000003";

async fn send(proxy: &Proxy, req: Request<Body>) -> Response<Body> {
    let call = UpstreamClient::new(proxy.url()).unwrap().oneshot(req);
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("an answer within the configured time")
        .unwrap()
}

fn generate(proxy: &Proxy, method: &str, prompt: &str) -> Request<Body> {
    Request::post(format!("/v1beta/models/gemini-2.5-flash:{method}"))
        .header("authorization", format!("Bearer {}", proxy.token))
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).to_string(),
        ))
        .unwrap()
}

async fn read(res: Response<Body>) -> (StatusCode, Value) {
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        !text.contains(K1) && !text.contains(K2) && !text.contains(K3),
        "a key leaked: {text}"
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, v)
}

async fn two_keys(vars: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([K1, K2]).await.unwrap();
    let keys = format!("{K1},{K2}");
    let url = fake.url();
    let mut all = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    (fake, Proxy::start(&all).await)
}

#[tokio::test]
async fn server_errors_are_retried_on_another_key() {
    let (fake, proxy) = two_keys(&[]).await;
    for status in [500, 502, 503, 504] {
        fake.push_fault(Fault::HttpError {
            status,
            message: "upstream trouble".into(),
        });
        let (got, v) = read(send(&proxy, generate(&proxy, "generateContent", "x")).await).await;
        assert_eq!(got, StatusCode::OK, "{status} retried: {v}");
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"],
            FakeGemini::passage("x")
        );
    }
}

#[tokio::test]
async fn server_errors_that_persist_reach_the_client_in_its_dialect() {
    let (fake, proxy) = two_keys(&[]).await;
    for _ in 0..4 {
        fake.push_fault(Fault::HttpError {
            status: 503,
            message: "The model is overloaded.".into(),
        });
    }
    let (status, v) = read(send(&proxy, generate(&proxy, "generateContent", "x")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"]["code"], 503);
    assert!(v["error"]["message"].is_string());
}

/// A chat completion on the OpenAI route.
fn chat(proxy: &Proxy, prompt: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", proxy.token))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": "gemini-2.5-flash",
                   "messages": [{"role": "user", "content": prompt}]})
            .to_string(),
        ))
        .unwrap()
}

/// Asserts the error of a failed upstream call in both dialects: `status`, Gemini's
/// `google.rpc` name on the native route, OpenAI's shape on `/v1/chat/completions`, and a
/// message that names neither the upstream's address nor a query string.
async fn assert_upstream_failure(proxy: &Proxy, upstream: &str, status: StatusCode, rpc: &str) {
    let (got, v) = read(send(proxy, generate(proxy, "generateContent", "x")).await).await;
    assert_eq!(got, status, "{v}");
    assert_eq!(v["error"]["code"], status.as_u16(), "{v}");
    assert_eq!(v["error"]["status"], rpc, "{v}");
    let gemini_message = v["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();

    let (got, v) = read(send(proxy, chat(proxy, "x")).await).await;
    assert_eq!(got, status, "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert!(v["error"].get("param").is_some(), "OpenAI's shape: {v}");
    let openai_message = v["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();

    for message in [gemini_message, openai_message] {
        assert!(!message.is_empty());
        let host = upstream.trim_start_matches("http://");
        assert!(
            !message.contains(host) && !message.contains("key=") && !message.contains("http"),
            "{message}"
        );
    }
}

/// A port on 127.0.0.1 with nothing listening.
fn closed_port_url() -> String {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    format!("http://127.0.0.1:{port}")
}

/// An upstream that accepts connections and reads requests but never sends a byte back, and
/// the upstream keys it has seen requests with.
async fn silent_upstream() -> (String, Arc<Mutex<HashSet<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let keys = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                // Read until the gateway hangs up; answer nothing.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    for line in text.lines() {
                        if let Some(key) = line.strip_prefix("x-goog-api-key:") {
                            keys.lock().unwrap().insert(key.trim().to_owned());
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_connect_failure_is_a_502_in_both_dialects() {
    let url = closed_port_url();
    let keys = format!("{K1},{K2}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &url)]).await;
    assert_upstream_failure(&proxy, &url, StatusCode::BAD_GATEWAY, "UNAVAILABLE").await;
}

#[tokio::test]
async fn a_header_timeout_is_a_504_in_both_dialects_after_every_key_timed_out() {
    let (url, seen) = silent_upstream().await;
    let keys = format!("{K1},{K2},{K3}");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", &keys),
        ("UPSTREAM_URL", &url),
        ("REQUEST_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    assert_upstream_failure(
        &proxy,
        &url,
        StatusCode::GATEWAY_TIMEOUT,
        "DEADLINE_EXCEEDED",
    )
    .await;
    // A timeout is the upstream's trouble, not the key's: each request went to every key in
    // turn before the client heard of it.
    let seen = seen.lock().unwrap().clone();
    let expected: HashSet<String> = [K1, K2, K3]
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_tls_failure_is_a_502() {
    // An https:// upstream that does not speak TLS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nplain text, not TLS")
                .await;
        }
    });
    let url = format!("https://{addr}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", K1), ("UPSTREAM_URL", &url)]).await;
    let (status, v) = read(send(&proxy, generate(&proxy, "generateContent", "x")).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
}

#[tokio::test]
async fn a_reset_mid_headers_is_retried_then_a_502() {
    // An upstream that accepts and closes at once, every time.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 20").await;
            drop(s);
        }
    });
    let url = format!("http://{addr}");
    let keys = format!("{K1},{K2}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", &keys), ("UPSTREAM_URL", &url)]).await;
    let (status, v) = read(send(&proxy, generate(&proxy, "generateContent", "x")).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
}

#[tokio::test]
async fn a_stall_before_headers_is_a_504_after_the_request_timeout() {
    let fake = FakeGemini::start([K1]).await.unwrap();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", K1),
        ("UPSTREAM_URL", &fake.url()),
        ("REQUEST_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    // Every attempt stalls (a retry of a stalled call is a defined outcome too).
    for _ in 0..8 {
        fake.push_fault(Fault::StallAfter {
            chunks: 0,
            pause: Duration::from_secs(60),
        });
    }
    let (status, v) = read(send(&proxy, generate(&proxy, "generateContent", "x")).await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], 504);
}

#[tokio::test]
async fn resets_and_stalls_mid_stream_are_resumed() {
    let (fake, proxy) = two_keys(&[("STREAM_IDLE_TIMEOUT_SECONDS", "1")]).await;
    fake.push_fault(Fault::DropAfter(1));
    fake.push_fault(Fault::StallAfter {
        chunks: 1,
        pause: Duration::from_secs(60),
    });
    let res = send(
        &proxy,
        generate(&proxy, "streamGenerateContent?alt=sse", "mid"),
    )
    .await;
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    let text: String = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, FakeGemini::passage("mid"));
}

#[tokio::test]
async fn garbage_and_truncated_bodies_get_a_clear_error_not_a_broken_200() {
    let (fake, proxy) = two_keys(&[]).await;
    for fault in [Fault::Garbage, Fault::TruncatedJson] {
        for _ in 0..6 {
            fake.push_fault(fault.clone());
        }
        let res = send(&proxy, generate(&proxy, "generateContent", "x")).await;
        let (status, v) = read(res).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{fault:?}: {v}");
        assert_eq!(v["error"]["code"], 502);
        assert_eq!(fake.pending_faults(), 0, "retried whole before giving up");
    }
    // One bad body among good ones is retried away.
    fake.push_fault(Fault::Garbage);
    let (status, v) = read(send(&proxy, generate(&proxy, "generateContent", "y")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        FakeGemini::passage("y")
    );
}
