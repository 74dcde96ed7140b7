//! Slow and hostile clients, load and shutdown, against full_proxy's real server over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::FakeGemini;

const KEY: &str = "AIzaSyHostile-client-test-key-0000001";

async fn setup(vars: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let mut all = vec![("GEMINI_API_KEYS", KEY), ("UPSTREAM_URL", url.as_str())];
    all.extend_from_slice(vars);
    (fake, Proxy::start(&all).await)
}

/// Reads until the server closes the connection (bounded, so a bug fails instead of hanging).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The server counted one connection closed for slowness and holds none open.
async fn assert_one_slow_client_closed(proxy: &Proxy) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = &proxy.server_stats;
    assert_eq!(stats.slow_clients_closed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.open_connections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_and_counted() {
    let (_fake, proxy) = setup(&[("CLIENT_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // ... and never the rest of the headers.
    let answer = read_to_close(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_one_slow_client_closed(&proxy).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_and_counted() {
    let (_fake, proxy) = setup(&[("CLIENT_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(answer, "");
    assert_one_slow_client_closed(&proxy).await;
}

/// Sends one authenticated `generateContent` over cleartext HTTP/2 (prior knowledge), writing
/// the connection preface in two pieces when `split` (the server must wait for the rest).
async fn h2c_generate(proxy: &Proxy, split: bool) -> (StatusCode, Value) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if split {
        stream.set_nodelay(true).unwrap();
        stream.write_all(&preface[..2]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&preface[2..]).await.unwrap();
    }
    // hyper's client writes the preface itself; after a split one, strip it from its output.
    let io = hyper_util::rt::TokioIo::new(SkipPreface {
        inner: stream,
        skip: if split { preface.len() } else { 0 },
    });
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!(
        "http://{}/v1beta/models/gemini-2.5-flash:generateContent",
        proxy.addr
    ))
    .header("x-goog-api-key", &proxy.token)
    .header("content-type", "application/json")
    .body(Body::from(
        json!({"contents": [{"role": "user", "parts": [{"text": "over h2c"}]}]}).to_string(),
    ))
    .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let status = res.status();
    let bytes = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

pin_project_lite::pin_project! {
    /// Drops the first `skip` bytes written (a preface already sent by hand).
    struct SkipPreface {
        #[pin]
        inner: TcpStream,
        skip: usize,
    }
}

impl tokio::io::AsyncRead for SkipPreface {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SkipPreface {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        if *this.skip > 0 {
            let n = buf.len().min(*this.skip);
            *this.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        this.inner.poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge_is_served() {
    let (_fake, proxy) = setup(&[]).await;
    for split in [false, true] {
        let (status, body) = h2c_generate(&proxy, split).await;
        assert_eq!(status, StatusCode::OK, "split preface: {split}; {body}");
        let text = body["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(!text.is_empty(), "split preface: {split}; {body}");
    }
}

#[tokio::test]
async fn a_request_body_that_never_ends_gets_408_and_never_reaches_upstream() {
    let (fake, proxy) = setup(&[("CLIENT_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"con\r\n",
        proxy.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":408"), "{answer}");
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn past_max_connections_new_connections_get_a_clear_503() {
    let (_fake, proxy) = setup(&[("MAX_CONNECTIONS", "2")]).await;
    // Two idle connections hold both slots.
    let a = TcpStream::connect(proxy.addr).await.unwrap();
    let b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], 503);
    assert_eq!(
        proxy.server_stats.connections_shed.load(Ordering::Relaxed),
        1
    );

    // A slot frees up when a connection closes.
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let req = Request::get("/health").body(Body::empty()).unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

fn stream_request(proxy: &Proxy, prompt: &str) -> Request<Body> {
    Request::post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        .header("x-goog-api-key", proxy.token.as_str())
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).to_string(),
        ))
        .unwrap()
}

fn sse_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
        .filter_map(|v| {
            v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_all_arrive_intact() {
    let (fake, proxy) = setup(&[]).await;
    fake.set_chunk_delay(Duration::from_millis(5));
    let client = UpstreamClient::new(proxy.url()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let req = stream_request(&proxy, &format!("stream number {i}"));
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let res = client.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
            (i, sse_text(&body))
        }));
    }
    for t in tasks {
        let (i, text) = t.await.unwrap();
        assert_eq!(
            text,
            FakeGemini::passage(&format!("stream number {i}")),
            "stream {i}"
        );
    }
}

fn openai_stream_request(proxy: &Proxy, prompt: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", proxy.token))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({
                "model": "gemini-2.5-flash",
                "stream": true,
                "messages": [{"role": "user", "content": prompt}],
            })
            .to_string(),
        ))
        .unwrap()
}

/// The text of an OpenAI chat stream, which must end with `data: [DONE]`.
fn openai_sse_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_native_and_openai_streams_all_arrive_intact() {
    let (fake, proxy) = setup(&[]).await;
    fake.set_chunk_delay(Duration::from_millis(5));
    let client = UpstreamClient::new(proxy.url()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let openai = i % 2 == 1;
        let prompt = format!("mixed stream number {i}");
        let req = if openai {
            openai_stream_request(&proxy, &prompt)
        } else {
            stream_request(&proxy, &prompt)
        };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let res = client.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "stream {i}");
            let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
            let text = if openai {
                openai_sse_text(&body)
            } else {
                sse_text(&body)
            };
            (i, prompt, text)
        }));
    }
    for t in tasks {
        let (i, prompt, text) = t.await.unwrap();
        assert_eq!(text, FakeGemini::passage(&prompt), "stream {i}");
    }
    assert_eq!(fake.total_requests(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_streams_finish_and_refuses_new_connections() {
    let (fake, mut proxy) = setup(&[("SHUTDOWN_GRACE_SECONDS", "20")]).await;
    fake.set_chunk_delay(Duration::from_millis(40));
    let client = UpstreamClient::new(proxy.url()).unwrap();
    let res = client
        .clone()
        .oneshot(stream_request(&proxy, "a long goodbye"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let reading = tokio::spawn(collect_limited(res.into_body(), 1 << 24));
    tokio::time::sleep(Duration::from_millis(60)).await;

    let addr = proxy.addr;
    let server = proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown began"
    );
    let body = reading.await.unwrap().unwrap();
    assert_eq!(sse_text(&body), FakeGemini::passage("a long goodbye"));
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server drains")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_connections_that_sent_nothing() {
    // A header timeout and a grace period far longer than the bound below: the server must
    // close the silent connection at once instead of waiting for either.
    let (_fake, mut proxy) = setup(&[
        ("CLIENT_READ_TIMEOUT_SECONDS", "600"),
        ("SHUTDOWN_GRACE_SECONDS", "600"),
    ])
    .await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let server = proxy.shutdown();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops without waiting for the silent connection")
        .unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
}
