//! Backpressure through full_proxy: a client that opens a big stream and stops reading makes
//! the gateway stop reading the upstream (the upstream's writes stall well short of the stream),
//! instead of buffering the rest; when the client reads again, everything arrives intact.
//!
//! The upstream is a minimal HTTP/1.1 server on a raw socket that serves one large SSE answer
//! and counts the bytes the socket accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const KEY: &str = "AIzaSyBackpressure-test-key-00000001";
/// Text per event and events in the answer: 48 MiB of text in all.
const EVENT_TEXT: usize = 16 * 1024;
const EVENTS: usize = 3 * 1024;
const STREAM_BYTES: u64 = (EVENT_TEXT * EVENTS) as u64;

fn event_text(i: usize) -> String {
    let word = format!("w{i:07} ");
    word.repeat(EVENT_TEXT / word.len())
}

fn expected_text() -> String {
    (0..EVENTS).map(event_text).collect()
}

fn event(i: usize) -> String {
    let mut v = json!({"candidates": [{"content": {"parts": [{"text": event_text(i)}],
        "role": "model"}, "index": 0}]});
    if i + 1 == EVENTS {
        v["candidates"][0]["finishReason"] = json!("STOP");
        v["usageMetadata"] = json!({"promptTokenCount": 1, "candidatesTokenCount": EVENTS, "totalTokenCount": EVENTS + 1});
    }
    format!("data: {v}\r\n\r\n")
}

/// Serves every request with the big SSE answer; `written` counts body bytes the socket took.
async fn big_stream_upstream() -> (String, Arc<AtomicU64>) {
    // A small, fixed send buffer (inherited by accepted sockets) keeps the kernel's share of
    // the in-flight bytes small, so what the counter shows is mostly the gateway's doing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let written = counter.clone();
            tokio::spawn(async move {
                // Read the request head and its body (Content-Length).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let body_start = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < body_start + length {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..EVENTS {
                    let e = event(i);
                    let framed = format!("{:x}\r\n{e}\r\n", e.len());
                    if sock.write_all(framed.as_bytes()).await.is_err() {
                        return;
                    }
                    written.fetch_add(e.len() as u64, Ordering::SeqCst);
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (url, written)
}

/// Waits until `written` has not moved for a while (the upstream is blocked), bounded.
async fn settled(written: &AtomicU64) -> u64 {
    let wait = async {
        let mut last = written.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = written.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the upstream's writes stall while the client does not read")
}

async fn a_client_that_stops_reading_throttles_the_upstream(path: &str, body: Value) {
    let (url, written) = big_stream_upstream().await;
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        // A short idle timeout: a client that does not read must not look like a stalled
        // upstream (which would be resumed and duplicated).
        ("STREAM_IDLE_TIMEOUT_SECONDS", "1"),
    ])
    .await;

    // The client: HTTP/1.1 over a socket with a small receive buffer.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = socket.connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", "gateway")
        .header("authorization", format!("Bearer {}", proxy.token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();

    // Read one frame, then stop reading for a while.
    let first = body.frame().await.unwrap().unwrap();
    let mut received = first.into_data().unwrap().to_vec();
    let stalled_at = settled(&written).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = written.load(Ordering::SeqCst);
    assert_eq!(stalled_at, still, "the upstream stays blocked");
    println!("upstream blocked after {still} of {STREAM_BYTES} bytes");
    assert!(
        still < STREAM_BYTES / 3,
        "the gateway read {still} of {STREAM_BYTES} bytes for a client that read nothing"
    );

    // Read the rest: everything arrives, once, in order.
    let rest = tokio::time::timeout(Duration::from_secs(120), body.collect())
        .await
        .expect("the stream completes")
        .unwrap()
        .to_bytes();
    received.extend_from_slice(&rest);
    let total: u64 = (0..EVENTS).map(|i| event(i).len() as u64).sum();
    assert_eq!(
        written.load(Ordering::SeqCst),
        total,
        "the upstream sent it all"
    );
    let text = String::from_utf8(received).unwrap();
    let mut answer = String::new();
    let mut finishes = 0;
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["candidates"][0]["content"]["parts"][0]["text"].as_str() {
            answer.push_str(t);
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            answer.push_str(t);
        }
        if v["candidates"][0]["finishReason"].is_string()
            || v["choices"][0]["finish_reason"].is_string()
        {
            finishes += 1;
        }
    }
    assert_eq!(finishes, 1);
    assert!(answer == expected_text(), "the text arrived intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_stream_client_that_stops_reading_throttles_the_upstream() {
    a_client_that_stops_reading_throttles_the_upstream(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json!({"contents": [{"role": "user", "parts": [{"text": "a long one"}]}]}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_client_that_stops_reading_throttles_the_upstream() {
    a_client_that_stops_reading_throttles_the_upstream(
        "/v1/chat/completions",
        json!({"model": "gemini-2.5-flash", "stream": true,
            "messages": [{"role": "user", "content": "a long one"}]}),
    )
    .await;
}
