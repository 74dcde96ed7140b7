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
    relay_capped(first, upstream, config, crate::sse::DEFAULT_MAX_EVENT_BYTES).await
}

/// [`relay`] with a cap on one event.
async fn relay_capped(
    first: Response<Body>,
    upstream: &Upstream,
    config: Config,
    max_event_bytes: usize,
) -> Vec<Value> {
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
    let res = respond(
        inner,
        template,
        first,
        Mode::Sse,
        Arc::new(config),
        1,
        max_event_bytes,
    );
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

/// A 200 SSE answer of raw frames, ending cleanly.
fn raw_answer(frames: &[&str]) -> Response<Body> {
    let frames = frames.iter().map(|f| Bytes::from(f.to_string())).collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::new(Script { frames, cut: false }))
        .unwrap()
}

fn image(bytes: usize) -> Value {
    event(
        json!([{ "inlineData": { "mimeType": "image/png", "data": "A".repeat(bytes) } }]),
        None,
    )
}

#[tokio::test(start_paused = true)]
async fn an_event_over_the_cap_ends_the_stream_at_once_and_is_not_resumed() {
    let upstream = Upstream::new(vec![answer(&[last("never asked", "STOP")], false)]);
    let first = answer(
        &[text("Here it is: "), image(4096), last(".", "STOP")],
        false,
    );
    let events = relay_capped(first, &upstream, Config::default(), 1024).await;
    assert_eq!(upstream.calls(), 0, "no continuation, no retry");
    assert_eq!(visible(&events), "Here it is: ");
    assert!(finish_reasons(&events).is_empty(), "never a STOP");
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], 502);
    assert!(
        error["message"].as_str().unwrap().contains("1024 bytes"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_that_is_not_json_is_a_fault_not_a_cut() {
    let upstream = Upstream::new(vec![answer(&[last("never asked", "STOP")], false)]);
    let first = raw_answer(&[
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\r\n\r\n",
        "data: <html>oops</html>\r\n\r\n",
    ]);
    let events = relay(first, &upstream, Config::default()).await;
    assert_eq!(upstream.calls(), 0);
    assert_eq!(events.last().unwrap()["error"]["code"], 502);
}

#[tokio::test(start_paused = true)]
async fn a_last_event_cut_by_the_end_of_the_body_is_still_resumed() {
    let upstream = Upstream::new(vec![answer(&[last("the sea.", "STOP")], false)]);
    let first = raw_answer(&[
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Rivers run to \"}]}}]}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"te",
    ]);
    let events = relay(first, &upstream, Config::default()).await;
    assert_eq!(upstream.calls(), 1);
    assert_eq!(visible(&events), "Rivers run to the sea.");
    assert_eq!(finish_reasons(&events), ["STOP"]);
}

#[tokio::test(start_paused = true)]
async fn an_image_only_answer_with_stop_is_not_an_empty_answer() {
    let upstream = Upstream::new(vec![answer(&[last("never asked", "STOP")], false)]);
    let mut only = image(64);
    only["candidates"][0]["finishReason"] = json!("STOP");
    let events = relay(answer(&[only], false), &upstream, Config::default()).await;
    assert_eq!(upstream.calls(), 0);
    assert_eq!(finish_reasons(&events), ["STOP"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_an_image_is_not_resumed() {
    let upstream = Upstream::new(vec![answer(&[last("never asked", "STOP")], false)]);
    let first = answer(&[text("Here: "), image(64)], true);
    let events = relay(first, &upstream, Config::default()).await;
    assert_eq!(
        upstream.calls(),
        0,
        "a continuation would make another image"
    );
    assert_eq!(events.last().unwrap()["error"]["code"], 502);
}

#[tokio::test(start_paused = true)]
async fn resumes_are_bounded_in_total_even_when_each_makes_progress() {
    // Every continuation adds a word and breaks again: progress each time, so only the total
    // bound stops it.
    let upstream = Upstream::new((0..50).map(|_| answer(&[text("more ")], true)).collect());
    let config = Config {
        max_resume_attempts: 3,
        ..Config::default()
    };
    let events = relay(answer(&[text("Start ")], true), &upstream, config).await;
    assert_eq!(upstream.calls(), 3, "three resumes after the first call");
    assert!(finish_reasons(&events).is_empty(), "never a STOP");
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], 503);
    assert!(
        error["message"].as_str().unwrap().contains("3 attempts"),
        "{error}"
    );
    assert!(visible(&events).starts_with("Start more "));
}
