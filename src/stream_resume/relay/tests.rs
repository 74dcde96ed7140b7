//! The relay body driven directly: a scripted first answer, a scripted inner service for the
//! attempts after it, and the events the client reads. End-to-end cases over loopback live in
//! `tests/stream_resume.rs`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use serde_json::{Value, json};
use tower::service_fn;

use super::{Mode, RequestTemplate, respond};
use crate::body::{Body, BoxError, collect_limited};
use crate::stream_resume::layer::Config;

const URI: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";

/// An upstream body: hands out its frames in order, then ends cleanly, unless it is cut.
struct Script {
    frames: VecDeque<Bytes>,
    cut: bool,
}

impl http_body::Body for Script {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(match self.frames.pop_front() {
            Some(b) => Some(Ok(Frame::data(b))),
            None if self.cut => Some(Err("connection reset by peer".into())),
            None => None,
        })
    }
}

/// A 200 SSE answer with these events; `cut` breaks the connection after the last one.
fn answer(events: &[Value], cut: bool) -> Response<Body> {
    let frames = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\r\n\r\n")))
        .collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::new(Script { frames, cut }))
        .unwrap()
}

fn event(parts: Value, finish: Option<&str>) -> Value {
    let mut candidate = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    json!({ "candidates": [candidate] })
}

fn text(t: &str) -> Value {
    event(json!([{ "text": t }]), None)
}

fn thought(t: &str) -> Value {
    event(json!([{ "text": t, "thought": true }]), None)
}

fn last(t: &str, finish: &str) -> Value {
    event(json!([{ "text": t }]), Some(finish))
}

/// The inner service: answers each attempt after the first with the next scripted answer
/// (a cut with no event once the script runs out) and keeps the request bodies it got.
#[derive(Clone, Default)]
struct Upstream {
    answers: Arc<Mutex<VecDeque<Response<Body>>>>,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Upstream {
    fn new(answers: Vec<Response<Body>>) -> Self {
        Self {
            answers: Arc::new(Mutex::new(answers.into())),
            got: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// Relays `first`, resuming through `upstream`, and returns the events the client read.
async fn relay(first: Response<Body>, upstream: &Upstream, config: Config) -> Vec<Value> {
    let (parts, ()) = Request::post(URI).body(()).unwrap().into_parts();
    let original = json!({ "contents": [{ "role": "user", "parts": [{ "text": "rivers" }] }] });
    let template = RequestTemplate::new(&parts, Bytes::from(original.to_string()), false);
    let up = upstream.clone();
    let inner = service_fn(move |req: Request<Body>| {
        let up = up.clone();
        async move {
            let body = collect_limited(req.into_body(), 1 << 20).await.unwrap();
            up.got
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let next = up.answers.lock().unwrap().pop_front();
            Ok::<_, Infallible>(next.unwrap_or_else(|| answer(&[], true)))
        }
    });
    let res = respond(inner, template, first, Mode::Sse, Arc::new(config));
    let bytes = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

fn parts(events: &[Value]) -> impl Iterator<Item = &Value> {
    events.iter().flat_map(|e| {
        e["candidates"][0]["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
    })
}

fn visible(events: &[Value]) -> String {
    parts(events)
        .filter(|p| p["thought"] != true)
        .filter_map(|p| p["text"].as_str())
        .collect()
}

fn thoughts(events: &[Value]) -> Vec<&str> {
    parts(events)
        .filter(|p| p["thought"] == true)
        .filter_map(|p| p["text"].as_str())
        .collect()
}

fn finish_reasons(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["candidates"][0]["finishReason"].as_str())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_drop_mid_stream_is_resumed_and_the_text_is_seen_once() {
    let upstream = Upstream::new(vec![answer(
        &[text("to the "), last("sea.", "STOP")],
        false,
    )]);
    let first = answer(&[text("Rivers "), text("run ")], true);
    let events = relay(first, &upstream, Config::default()).await;
    assert_eq!(visible(&events), "Rivers run to the sea.");
    assert_eq!(upstream.calls(), 1);
    let turns = &upstream.got.lock().unwrap()[0]["contents"];
    assert_eq!(turns[1]["role"], "model");
    assert_eq!(turns[1]["parts"][0]["text"], "Rivers run ");
}

#[tokio::test(start_paused = true)]
async fn the_repeated_tail_at_the_seam_is_dropped() {
    // The continuation starts by repeating "runs ", which the client already has.
    let upstream = Upstream::new(vec![answer(
        &[text("runs to "), last("the sea.", "STOP")],
        false,
    )]);
    let first = answer(&[text("The river "), text("runs ")], true);
    let events = relay(first, &upstream, Config::default()).await;
    assert_eq!(visible(&events), "The river runs to the sea.");
}

#[tokio::test(start_paused = true)]
async fn exactly_one_finish_reason_reaches_the_client() {
    // `OTHER` in mid-sentence is resumed: it must not reach the client, the final STOP must.
    let upstream = Upstream::new(vec![answer(&[last("to the sea.", "STOP")], false)]);
    let first = answer(&[text("Rivers "), last("run ", "OTHER")], false);
    let events = relay(first, &upstream, Config::default()).await;
    assert_eq!(finish_reasons(&events), ["STOP"]);
    assert_eq!(visible(&events), "Rivers run to the sea.");
}

#[tokio::test(start_paused = true)]
async fn retries_without_progress_end_in_an_error_event_not_a_stop() {
    // Every attempt breaks before its first event.
    let upstream = Upstream::default();
    let config = Config {
        max_consecutive_retries: 2,
        retry_delay: Duration::from_secs(1),
        ..Config::default()
    };
    let start = tokio::time::Instant::now();
    let events = relay(answer(&[], true), &upstream, config).await;
    assert_eq!(upstream.calls(), 2, "max_consecutive_retries attempts");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "a delay before each"
    );
    assert!(finish_reasons(&events).is_empty(), "never a STOP");
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], 503);
    assert_eq!(error["status"], "UNAVAILABLE");
}

#[tokio::test(start_paused = true)]
async fn thoughts_after_a_retry_are_dropped_when_swallow_is_on() {
    let upstream = Upstream::new(vec![answer(
        &[thought("Where was I?"), last("run.", "STOP")],
        false,
    )]);
    let first = answer(&[thought("Rivers, then."), text("Rivers ")], true);
    let config = Config {
        swallow_thoughts_after_retry: true,
        ..Config::default()
    };
    let events = relay(first, &upstream, config).await;
    assert_eq!(thoughts(&events), ["Rivers, then."]);
    assert_eq!(visible(&events), "Rivers run.");
}

#[tokio::test(start_paused = true)]
async fn thoughts_after_a_retry_pass_when_swallow_is_off() {
    let upstream = Upstream::new(vec![answer(
        &[thought("Where was I?"), last("run.", "STOP")],
        false,
    )]);
    let first = answer(&[thought("Rivers, then."), text("Rivers ")], true);
    let config = Config {
        swallow_thoughts_after_retry: false,
        ..Config::default()
    };
    let events = relay(first, &upstream, config).await;
    assert_eq!(thoughts(&events), ["Rivers, then.", "Where was I?"]);
    assert_eq!(visible(&events), "Rivers run.");
}
