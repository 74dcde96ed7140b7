//! HTTP/2 to the upstream, as production runs it: `UpstreamClient` (rustls, ALPN) → FakeGemini
//! over TLS on loopback, with a three-key pool and stream resume in between. Unary answers and
//! streams, resumes, cancellations, concurrency, the server's stream limit, GOAWAY and reset
//! streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::auth::MemoryTokenStore;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::gateway::Gateway;
use tower_gemini::key_rotation::KeyRotationLayer;
use tower_gemini::stream_resume::StreamResumeLayer;
use tower_gemini::testing::{FakeGemini, FakeGeminiBuilder, Fault};

const KEYS: [&str; 3] = [
    "AIzaSyH2-test-key-one-000000000000001",
    "AIzaSyH2-test-key-two-000000000000002",
    "AIzaSyH2-test-key-three-0000000000003",
];
const TOKEN: &str = "h2-client-token-0001";

/// A certificate for `127.0.0.1` made for this test, and its key (DER).
fn certificate() -> (Vec<u8>, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    (cert.der().to_vec(), signing_key.serialize_der())
}

/// A TLS FakeGemini for the three keys, and a client that trusts its certificate.
async fn tls_fake(builder: FakeGeminiBuilder) -> (FakeGemini, UpstreamClient) {
    let (cert, key) = certificate();
    let fake = builder
        .keys(KEYS)
        .tls(cert.clone(), key)
        .start()
        .await
        .unwrap();
    assert!(fake.url().starts_with("https://127.0.0.1:"));
    let client = UpstreamClient::builder()
        .base_url(fake.url())
        .add_root_certificate(cert)
        .build()
        .unwrap();
    (fake, client)
}

/// The gateway's stack over `client`: a round-robin pool of the three keys and stream resume.
fn gateway(client: UpstreamClient) -> Gateway {
    Gateway::builder()
        .tokens(MemoryTokenStore::new().with_token(TOKEN, "h2-test"))
        .key_rotation(
            KeyRotationLayer::round_robin(KEYS)
                .unwrap()
                .retry_backoff(Duration::ZERO),
        )
        .stream_resume(StreamResumeLayer::new().retry_delay(Duration::ZERO))
        .build(client)
}

fn generate(method: &str, prompt: &str) -> Request<Body> {
    let query = if method == "streamGenerateContent" {
        "?alt=sse"
    } else {
        ""
    };
    Request::post(format!("/v1beta/models/gemini-2.5-flash:{method}{query}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).to_string(),
        ))
        .unwrap()
}

async fn call(gateway: &Gateway, req: Request<Body>) -> Response<Body> {
    tokio::time::timeout(Duration::from_secs(30), gateway.clone().oneshot(req))
        .await
        .expect("an answer")
        .unwrap()
}

/// The visible text of a unary answer or of every SSE event, and the finish reasons seen.
async fn text_of(res: Response<Body>) -> (String, Vec<String>) {
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = tokio::time::timeout(
        Duration::from_secs(30),
        collect_limited(res.into_body(), 1 << 24),
    )
    .await
    .expect("the whole body")
    .unwrap();
    let body = String::from_utf8(bytes.to_vec()).unwrap();
    let events: Vec<Value> = match body.strip_prefix("data: ") {
        Some(_) => body
            .split("\r\n\r\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect(),
        None => vec![serde_json::from_str(&body).unwrap()],
    };
    let mut text = String::new();
    let mut finish = Vec::new();
    for e in &events {
        assert!(e.get("error").is_none(), "an error event: {e}");
        let cand = &e["candidates"][0];
        for p in cand["content"]["parts"].as_array().into_iter().flatten() {
            text.push_str(p["text"].as_str().unwrap_or_default());
        }
        if let Some(f) = cand["finishReason"].as_str() {
            finish.push(f.to_owned());
        }
    }
    (text, finish)
}

/// One request, so the pool holds an h2 connection that later concurrent requests multiplex
/// on (a burst on a cold pool opens a connection per request: ALPN is not known before).
async fn warm_up(gw: &Gateway) {
    text_of(call(gw, generate("generateContent", "warm up")).await).await;
}

/// Three streams in flight on the warmed-up connection (the fake has seen four requests), to
/// check that a fault on another stream leaves them alone.
async fn neighbours_in_flight(
    gw: &Gateway,
    fake: &FakeGemini,
) -> Vec<tokio::task::JoinHandle<(String, (String, Vec<String>))>> {
    let neighbours = (0..3)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let prompt = format!("neighbour {i}");
                let res = call(&gw, generate("streamGenerateContent", &prompt)).await;
                (prompt, text_of(res).await)
            })
        })
        .collect();
    eventually("the neighbours are in flight", || {
        fake.total_requests() == 4
    })
    .await;
    neighbours
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn the_client_negotiates_h2_by_alpn_and_trusts_the_extra_root() {
    let (fake, client) = tls_fake(FakeGemini::builder()).await;
    let (text, _) = text_of(call(&gateway(client), generate("generateContent", "hi")).await).await;
    assert_eq!(text, FakeGemini::passage("hi"));
    let got = fake.last_received().unwrap();
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(format!("{:?}", got.version), "HTTP/2.0");
}

#[tokio::test]
async fn the_built_in_roots_alone_refuse_an_unknown_certificate() {
    let (cert, key) = certificate();
    let fake = FakeGemini::builder()
        .keys(KEYS)
        .tls(cert, key)
        .start()
        .await
        .unwrap();
    let client = UpstreamClient::new(fake.url()).unwrap();
    let req = Request::get("/v1beta/models")
        .header("x-goog-api-key", KEYS[0])
        .body(Body::empty())
        .unwrap();
    let err = client.oneshot(req).await.unwrap_err();
    assert!(err.is_upstream(), "{err}");
    assert_eq!(fake.total_requests(), 0);
}

#[test]
fn an_extra_root_that_is_not_a_certificate_is_a_config_error() {
    let built = UpstreamClient::builder()
        .add_root_certificate(b"not a certificate".to_vec())
        .build();
    assert!(built.is_err());
}

#[tokio::test]
async fn plain_http_still_speaks_http_1_1() {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let client = UpstreamClient::new(fake.url()).unwrap();
    let (text, _) = text_of(call(&gateway(client), generate("generateContent", "hi")).await).await;
    assert_eq!(text, FakeGemini::passage("hi"));
    assert_eq!(fake.last_received().unwrap().version, Version::HTTP_11);
}

#[tokio::test]
async fn unary_answers_and_sse_streams_over_h2_through_a_three_key_pool() {
    let (fake, client) = tls_fake(FakeGemini::builder()).await;
    let gw = gateway(client);
    for i in 0..3 {
        let prompt = format!("unary {i}");
        let (text, finish) = text_of(call(&gw, generate("generateContent", &prompt)).await).await;
        assert_eq!(text, FakeGemini::passage(&prompt));
        assert_eq!(finish, ["STOP"]);
        let prompt = format!("stream {i}");
        let (text, finish) =
            text_of(call(&gw, generate("streamGenerateContent", &prompt)).await).await;
        assert_eq!(text, FakeGemini::passage(&prompt));
        assert_eq!(finish, ["STOP"]);
    }
    let received = fake.received();
    assert_eq!(received.len(), 6);
    assert!(received.iter().all(|r| r.version == Version::HTTP_2));
    // Every key served, all on the one pooled connection.
    for key in KEYS {
        assert_eq!(fake.requests_for(key), 2, "round robin");
    }
    assert!(received.iter().all(|r| r.connection == 1));
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn a_dropped_connection_mid_stream_is_resumed_seamlessly_over_h2() {
    let (fake, client) = tls_fake(FakeGemini::builder()).await;
    let gw = gateway(client);
    fake.push_fault(Fault::DropAfter(2));
    let prompt = "Tell me about rivers";
    let (text, finish) = text_of(call(&gw, generate("streamGenerateContent", prompt)).await).await;
    assert_eq!(text, FakeGemini::passage(prompt));
    assert_eq!(finish, ["STOP"]);
    let received = fake.received();
    assert_eq!(received.len(), 2, "one cut, one continuation");
    assert!(received.iter().all(|r| r.version == Version::HTTP_2));
    // The cut took the connection with it; the continuation opened another.
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn a_stream_reset_mid_answer_is_resumed_and_its_neighbours_go_on() {
    let (fake, client) =
        tls_fake(FakeGemini::builder().chunk_delay(Duration::from_millis(20))).await;
    let gw = gateway(client);
    warm_up(&gw).await;
    let neighbours = neighbours_in_flight(&gw, &fake).await;
    fake.push_fault(Fault::ResetAfter(2));
    let prompt = "Tell me about rivers";
    let (text, finish) = text_of(call(&gw, generate("streamGenerateContent", prompt)).await).await;
    assert_eq!(text, FakeGemini::passage(prompt));
    assert_eq!(finish, ["STOP"]);
    for n in neighbours {
        let (prompt, (text, finish)) = n.await.unwrap();
        assert_eq!(text, FakeGemini::passage(&prompt));
        assert_eq!(finish, ["STOP"]);
    }
    // A reset takes one stream, not the connection.
    assert_eq!(fake.connections(), 1);
    assert_eq!(
        fake.total_requests(),
        6,
        "a warm-up, three neighbours, a cut, a continuation"
    );
}

#[tokio::test]
async fn a_client_dropping_a_stream_cancels_the_upstream_h2_stream_only() {
    let (fake, client) =
        tls_fake(FakeGemini::builder().chunk_delay(Duration::from_millis(50))).await;
    let gw = gateway(client);
    let res = call(&gw, generate("streamGenerateContent", "a long story")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    eventually("the fake sees the stream cancelled", || {
        fake.cancelled_streams() == 1
    })
    .await;
    // The connection is still good for the next requests.
    let (text, _) = text_of(call(&gw, generate("generateContent", "after")).await).await;
    assert_eq!(text, FakeGemini::passage("after"));
    assert_eq!(fake.connections(), 1);
    assert!(fake.received().iter().all(|r| r.connection == 1));
    assert_eq!(
        fake.total_requests(),
        2,
        "the cancelled stream was not resumed"
    );
}

#[tokio::test]
async fn many_concurrent_requests_share_one_h2_connection() {
    let (fake, client) =
        tls_fake(FakeGemini::builder().chunk_delay(Duration::from_millis(5))).await;
    let gw = gateway(client);
    warm_up(&gw).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let method = if i % 2 == 0 {
                    "generateContent"
                } else {
                    "streamGenerateContent"
                };
                let prompt = format!("concurrent {i}");
                let (text, _) = text_of(call(&gw, generate(method, &prompt)).await).await;
                assert_eq!(text, FakeGemini::passage(&prompt));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fake.total_requests(), 41);
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn a_limit_of_two_streams_still_serves_twenty_concurrent_requests() {
    let (fake, client) = tls_fake(
        FakeGemini::builder()
            .max_concurrent_streams(2)
            .chunk_delay(Duration::from_millis(5)),
    )
    .await;
    let gw = gateway(client);
    // Warm: the limit binds on one connection (a cold burst would open one per request).
    warm_up(&gw).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let prompt = format!("limited {i}");
                let (text, finish) =
                    text_of(call(&gw, generate("streamGenerateContent", &prompt)).await).await;
                assert_eq!(text, FakeGemini::passage(&prompt));
                assert_eq!(finish, ["STOP"]);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(fake.received().iter().all(|r| r.version == Version::HTTP_2));
    assert_eq!(fake.connections(), 1);
    assert_eq!(
        fake.total_requests(),
        21,
        "no request was refused and retried"
    );
}

#[tokio::test]
async fn after_a_goaway_in_flight_streams_finish_and_new_requests_use_a_new_connection() {
    let (fake, client) =
        tls_fake(FakeGemini::builder().chunk_delay(Duration::from_millis(30))).await;
    let gw = gateway(client);
    warm_up(&gw).await;
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let prompt = format!("in flight {i}");
                let res = call(&gw, generate("streamGenerateContent", &prompt)).await;
                (prompt, text_of(res).await)
            })
        })
        .collect();
    eventually("three streams in flight", || fake.total_requests() == 4).await;
    fake.goaway();
    // New requests while the old connection drains: each succeeds, and once the client has
    // seen the GOAWAY they go to a new connection.
    let mut i = 0;
    loop {
        i += 1;
        let prompt = format!("after goaway {i}");
        let (text, _) = text_of(call(&gw, generate("generateContent", &prompt)).await).await;
        assert_eq!(text, FakeGemini::passage(&prompt));
        if fake.last_received().unwrap().connection == 2 {
            break;
        }
        assert!(i < 100, "no request ever went to a new connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in in_flight {
        let (prompt, (text, finish)) = t.await.unwrap();
        assert_eq!(text, FakeGemini::passage(&prompt));
        assert_eq!(finish, ["STOP"]);
    }
    let received = fake.received();
    assert_eq!(received.len(), 4 + i, "nothing was resumed or retried");
    assert!(received[..4].iter().all(|r| r.connection == 1));
    assert_eq!(fake.connections(), 2);
    // The old connection is gone for good: later requests stay on the new one.
    let (text, _) = text_of(call(&gw, generate("generateContent", "later")).await).await;
    assert_eq!(text, FakeGemini::passage("later"));
    assert_eq!(fake.last_received().unwrap().connection, 2);
}

#[tokio::test]
async fn a_stream_reset_before_the_answer_is_retried_on_another_key() {
    let (fake, client) =
        tls_fake(FakeGemini::builder().chunk_delay(Duration::from_millis(20))).await;
    let gw = gateway(client);
    warm_up(&gw).await;
    let neighbours = neighbours_in_flight(&gw, &fake).await;
    fake.push_fault(Fault::ResetStream);
    let prompt = "reset me";
    let (text, finish) = text_of(call(&gw, generate("generateContent", prompt)).await).await;
    assert_eq!(text, FakeGemini::passage(prompt));
    assert_eq!(finish, ["STOP"]);
    let tries: Vec<_> = fake
        .received()
        .into_iter()
        .filter(|r| r.json()["contents"][0]["parts"][0]["text"] == prompt)
        .collect();
    assert_eq!(tries.len(), 2, "the reset, then one retry");
    assert_ne!(tries[0].api_key(), tries[1].api_key(), "on another key");
    for n in neighbours {
        let (prompt, (text, finish)) = n.await.unwrap();
        assert_eq!(text, FakeGemini::passage(&prompt));
        assert_eq!(finish, ["STOP"]);
    }
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn full_proxy_reaches_a_private_ca_upstream_over_h2_with_upstream_ca_file() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let fake = FakeGemini::builder()
        .keys(KEYS)
        .tls(cert.der().to_vec(), signing_key.serialize_der())
        .start()
        .await
        .unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "tower-gemini-h2-ca-{}-{}.pem",
        std::process::id(),
        fake.addr().port()
    ));
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let keys = KEYS.join(",");
    let url = fake.url();
    let proxy = support::Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("UPSTREAM_CA_FILE", ca_file.to_str().unwrap()),
    ])
    .await;
    let _ = std::fs::remove_file(&ca_file);
    let client = UpstreamClient::new(proxy.url()).unwrap();
    for method in ["generateContent", "streamGenerateContent"] {
        let req = Request::post(format!("/v1beta/models/gemini-2.5-flash:{method}?alt=sse"))
            .header("authorization", format!("Bearer {}", proxy.token))
            .body(Body::from(
                json!({"contents": [{"role": "user", "parts": [{"text": method}]}]}).to_string(),
            ))
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(30), client.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        let (text, finish) = text_of(res).await;
        assert_eq!(text, FakeGemini::passage(method));
        assert_eq!(finish, ["STOP"]);
    }
    let received = fake.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.version == Version::HTTP_2));
}

#[test]
fn upstream_ca_file_must_be_a_readable_pem_file() {
    use support::Config;
    let env = |path: &str| {
        std::collections::HashMap::from([("UPSTREAM_CA_FILE".to_owned(), path.to_owned())])
    };
    for bad in ["/nonexistent/ca.pem", "/", "/dev/null"] {
        let err = Config::from_map(&env(bad)).unwrap_err();
        assert!(err.0.starts_with("UPSTREAM_CA_FILE"), "{}", err.0);
    }
}
