//! The upstream fault matrix through full_proxy: every fault has a defined outcome for the
//! client — retried on another key, resumed, or a clear error in the route's dialect — within the
//! configured time, and no key in sight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use support::Proxy;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault};

const K1: &str = "AIzaSyFault-matrix-key-one-0000000001";
const K2: &str = "AIzaSyFault-matrix-key-two-0000000002";

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
        !text.contains(K1) && !text.contains(K2),
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

#[tokio::test]
async fn connection_refused_is_a_502() {
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let proxy = Proxy::start(&[("GEMINI_API_KEYS", K1), ("UPSTREAM_URL", &url)]).await;
    let (status, v) = read(send(&proxy, generate(&proxy, "generateContent", "x")).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(v["error"]["code"], 502);
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
