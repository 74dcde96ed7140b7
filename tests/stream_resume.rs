//! StreamResume against FakeGemini over loopback: every kind of interruption becomes one
//! seamless answer, compared with the deterministic passage character for character.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::stream_resume::StreamResumeLayer;
use tower_gemini::testing::{FakeGemini, Fault};

const KEY: &str = "resume-test-key-0001";
const PROMPT: &str = "Tell me about rivers";

fn layer() -> StreamResumeLayer {
    StreamResumeLayer::new().retry_delay(Duration::ZERO)
}

fn request(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header("x-goog-api-key", KEY)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn prompt_body() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]})
}

/// The chunks a client received, parsed.
struct Received {
    events: Vec<Value>,
}

impl Received {
    fn text(&self) -> String {
        self.events
            .iter()
            .flat_map(|e| {
                e["candidates"][0]["content"]["parts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|p| p["thought"].as_bool() != Some(true))
            .filter_map(|p| p["text"].as_str().map(str::to_owned))
            .collect()
    }

    fn thoughts(&self) -> usize {
        self.events
            .iter()
            .flat_map(|e| {
                e["candidates"][0]["content"]["parts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|p| p["thought"].as_bool() == Some(true))
            .count()
    }

    fn finish_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                e["candidates"][0]["finishReason"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    fn last(&self) -> &Value {
        self.events.last().expect("at least one event")
    }
}

async fn stream(fake: &FakeGemini, layer: StreamResumeLayer, sse: bool, body: Value) -> Received {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(UpstreamClient::new(fake.url()).unwrap());
    let uri = if sse {
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    } else {
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    };
    let res = svc.oneshot(request(uri, body)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let events = if sse {
        text.split("\r\n\r\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                serde_json::from_str(e.strip_prefix("data: ").expect("an SSE data line")).unwrap()
            })
            .collect()
    } else {
        match serde_json::from_str::<Value>(&text)
            .unwrap_or_else(|e| panic!("not a JSON array ({e}): {text}"))
        {
            Value::Array(items) => items,
            other => panic!("not an array: {other}"),
        }
    };
    Received { events }
}

async fn fake() -> FakeGemini {
    FakeGemini::start([KEY]).await.unwrap()
}

#[tokio::test]
async fn a_drop_after_any_number_of_chunks_is_seamless() {
    let fake = fake().await;
    let chunks = FakeGemini::passage_chunks(PROMPT, 4).len();
    for n in 0..=chunks {
        fake.push_fault(Fault::DropAfter(n));
        let got = stream(&fake, layer(), true, prompt_body()).await;
        assert_eq!(
            got.text(),
            FakeGemini::passage(PROMPT),
            "drop after {n} chunks"
        );
        assert_eq!(got.finish_reasons(), ["STOP"], "drop after {n} chunks");
        assert_eq!(fake.pending_faults(), 0);
    }
}

#[tokio::test]
async fn several_drops_in_one_answer_are_seamless() {
    let fake = fake().await;
    for n in [2, 1, 3, 0, 2] {
        fake.push_fault(Fault::DropAfter(n));
    }
    let got = stream(&fake, layer(), true, prompt_body()).await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(got.finish_reasons(), ["STOP"]);
    assert_eq!(fake.total_requests(), 6);
}

#[tokio::test]
async fn a_drop_is_seamless_in_the_json_array_format_too() {
    let fake = fake().await;
    fake.push_fault(Fault::DropAfter(3));
    let got = stream(&fake, layer(), false, prompt_body()).await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(got.finish_reasons(), ["STOP"]);
}

#[tokio::test]
async fn finish_reason_other_mid_answer_is_resumed() {
    let fake = fake().await;
    fake.push_fault(Fault::FinishAfter {
        chunks: 4,
        reason: "OTHER".into(),
    });
    let got = stream(&fake, layer(), true, prompt_body()).await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(
        got.finish_reasons(),
        ["STOP"],
        "OTHER never reaches the client"
    );
}

#[tokio::test]
async fn an_early_end_without_finish_reason_is_resumed() {
    let fake = fake().await;
    fake.push_fault(Fault::EndWithoutFinish(5));
    let got = stream(&fake, layer(), true, prompt_body()).await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(got.finish_reasons(), ["STOP"]);
}

#[tokio::test]
async fn an_error_event_inside_the_stream_is_resumed() {
    let fake = fake().await;
    fake.push_fault(Fault::ErrorEventAfter(2));
    let got = stream(&fake, layer(), true, prompt_body()).await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert!(got.events.iter().all(|e| e.get("error").is_none()));
}

#[tokio::test]
async fn a_stalled_stream_is_resumed_after_the_idle_timeout() {
    let fake = fake().await;
    fake.push_fault(Fault::StallAfter {
        chunks: 3,
        pause: Duration::MAX,
    });
    let got = stream(
        &fake,
        layer().idle_timeout(Duration::from_millis(300)),
        true,
        prompt_body(),
    )
    .await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(got.finish_reasons(), ["STOP"]);
}

#[tokio::test]
async fn a_continuation_that_repeats_the_tail_is_deduplicated() {
    let fake = fake().await;
    fake.push_fault(Fault::DropAfter(5));
    fake.push_fault(Fault::RepeatTail(15));
    let got = stream(&fake, layer(), true, prompt_body()).await;
    assert_eq!(
        got.text(),
        FakeGemini::passage(PROMPT),
        "each character exactly once"
    );
}

#[tokio::test]
async fn the_continuation_request_carries_the_answer_so_far() {
    let fake = fake().await;
    fake.push_fault(Fault::DropAfter(3));
    let body = json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.2},
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
    });
    let _ = stream(&fake, layer(), true, body).await;
    let second = fake.received()[1].json();
    let turns = second["contents"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[1]["role"], "model");
    assert_eq!(
        turns[1]["parts"][0]["text"],
        FakeGemini::passage_chunks(PROMPT, 4)[..3].concat()
    );
    assert_eq!(turns[2]["role"], "user");
    assert_eq!(second["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(second["generationConfig"]["temperature"], 0.2);
}

#[tokio::test]
async fn thoughts_before_a_retry_pass_and_thoughts_after_it_are_swallowed() {
    let fake = fake().await;
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": true}},
    });
    // Three thought chunks come first; drop after two answer chunks.
    fake.push_fault(Fault::DropAfter(2));
    let got = stream(&fake, layer(), true, body.clone()).await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(got.thoughts(), 3, "the first attempt's thoughts only");

    fake.push_fault(Fault::DropAfter(2));
    let got = stream(
        &fake,
        layer().swallow_thoughts_after_retry(false),
        true,
        body,
    )
    .await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
    assert_eq!(got.thoughts(), 6);
}

#[tokio::test]
async fn usage_covers_every_attempt() {
    let fake = fake().await;
    let clean = stream(&fake, layer(), true, prompt_body()).await;
    let clean_usage = clean.last()["usageMetadata"].clone();
    fake.push_fault(Fault::DropAfter(3));
    fake.push_fault(Fault::FinishAfter {
        chunks: 2,
        reason: "OTHER".into(),
    });
    let got = stream(&fake, layer(), true, prompt_body()).await;
    let usage = &got.last()["usageMetadata"];
    let total = usage["totalTokenCount"].as_u64().unwrap();
    let prompt = usage["promptTokenCount"].as_u64().unwrap();
    let candidates = usage["candidatesTokenCount"].as_u64().unwrap();
    assert_eq!(
        total,
        prompt + candidates,
        "the invariant holds for the sum"
    );
    assert!(
        prompt > clean_usage["promptTokenCount"].as_u64().unwrap(),
        "continuations' prompts are counted"
    );
}

#[tokio::test]
async fn a_stream_that_never_recovers_ends_with_an_explicit_error() {
    let fake = fake().await;
    for _ in 0..10 {
        fake.push_fault(Fault::DropAfter(0));
    }
    let got = stream(
        &fake,
        layer().max_consecutive_retries(3),
        true,
        prompt_body(),
    )
    .await;
    assert_eq!(
        fake.total_requests(),
        4,
        "the first attempt and three retries"
    );
    assert!(got.finish_reasons().is_empty(), "never a silent STOP");
    let err = &got.last()["error"];
    assert_eq!(err["status"], "UNAVAILABLE");
    assert!(err["message"].as_str().unwrap().contains("incomplete"));
}

#[tokio::test]
async fn progress_resets_the_retry_budget() {
    let fake = fake().await;
    // Each attempt adds a chunk before dropping: more drops than the budget, all with progress.
    for _ in 0..6 {
        fake.push_fault(Fault::DropAfter(1));
    }
    let got = stream(
        &fake,
        layer().max_consecutive_retries(2),
        true,
        prompt_body(),
    )
    .await;
    assert_eq!(got.text(), FakeGemini::passage(PROMPT));
}

#[tokio::test]
async fn safety_and_max_tokens_are_passed_on_not_resumed() {
    let fake = fake().await;
    for reason in ["SAFETY", "MAX_TOKENS", "RECITATION"] {
        fake.clear_received();
        fake.push_fault(Fault::FinishAfter {
            chunks: 3,
            reason: reason.into(),
        });
        let got = stream(&fake, layer(), true, prompt_body()).await;
        assert_eq!(got.finish_reasons(), [reason]);
        assert_eq!(
            got.text(),
            FakeGemini::passage_chunks(PROMPT, 4)[..3].concat()
        );
        assert_eq!(fake.total_requests(), 1);
    }
}

#[tokio::test]
async fn a_normal_stream_is_untouched_byte_for_byte() {
    let fake = fake().await;
    for sse in [true, false] {
        let uri = if sse {
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        } else {
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        };
        let direct = UpstreamClient::new(fake.url())
            .unwrap()
            .oneshot(request(uri, prompt_body()))
            .await
            .unwrap();
        let direct = collect_limited(direct.into_body(), 1 << 24).await.unwrap();
        let svc = ServiceBuilder::new()
            .layer(layer())
            .service(UpstreamClient::new(fake.url()).unwrap());
        let via = svc.oneshot(request(uri, prompt_body())).await.unwrap();
        let via = collect_limited(via.into_body(), 1 << 24).await.unwrap();
        assert_eq!(via, direct, "sse={sse}");
    }
}

#[tokio::test]
async fn a_function_call_is_never_resumed() {
    let fake = fake().await;
    fake.push_fault(Fault::FunctionCall {
        name: "get_weather".into(),
        args: json!({"city": "Paris"}),
    });
    let got = stream(&fake, layer(), true, prompt_body()).await;
    assert_eq!(fake.total_requests(), 1);
    assert_eq!(
        got.events[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );
    assert_eq!(got.finish_reasons(), ["STOP"]);
}

#[tokio::test]
async fn empty_unary_answers_are_retried_when_enabled() {
    let fake = fake().await;
    fake.push_fault(Fault::Empty);
    fake.push_fault(Fault::FinishAfter {
        chunks: 2,
        reason: "OTHER".into(),
    });
    let svc = ServiceBuilder::new()
        .layer(layer().retry_unary(true))
        .service(UpstreamClient::new(fake.url()).unwrap());
    let res = svc
        .oneshot(request(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            prompt_body(),
        ))
        .await
        .unwrap();
    let v: Value =
        serde_json::from_slice(&collect_limited(res.into_body(), 1 << 24).await.unwrap()).unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        FakeGemini::passage(PROMPT)
    );
    assert_eq!(fake.total_requests(), 3);
}

#[tokio::test]
async fn an_answer_longer_than_the_resume_cap_is_relayed_but_not_resumed() {
    let fake = fake().await;
    fake.push_fault(Fault::DropAfter(3));
    // A cap smaller than the three chunks' text: the relay stops keeping it.
    let got = stream(&fake, layer().max_resume_text_bytes(8), true, prompt_body()).await;
    assert_eq!(fake.total_requests(), 1, "no continuation was sent");
    let sent = FakeGemini::passage_chunks(PROMPT, 4)[..3].concat();
    assert_eq!(
        got.text(),
        sent,
        "what came before the break is relayed whole"
    );
    assert_eq!(got.last()["error"]["code"], 502);
    assert!(
        got.last()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too long to resume")
    );
}

/// An upstream body handing out the given frames one by one.
struct Frames(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Relays an SSE stream sent as `frames` and returns the frames the client got.
async fn relay_frames(frames: Vec<bytes::Bytes>) -> Vec<bytes::Bytes> {
    let upstream = tower::service_fn(move |_req: Request<Body>| {
        let frames = frames.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::new(Frames(frames.into())))
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new().layer(layer()).service(upstream);
    let uri = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let res = svc.oneshot(request(uri, prompt_body())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut out = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.push(data);
        }
    }
    out
}

/// Streams with CRLF and LF line endings and an event whose data spans two `data:` lines.
fn upstream_streams() -> Vec<&'static str> {
    vec![
        concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Rivers \"}],\"role\": \"model\"},\"index\": 0}]}\r\n\r\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"run\"}],\"role\": \"model\"},\"index\": 0}]}\r\n\r\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \".\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"totalTokenCount\": 7}}\r\n\r\n",
        ),
        concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Rivers \"}]}}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"run\",\"thought\":true}]}}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\".\"}]},\"finishReason\":\"STOP\"}]}\n\n",
        ),
        concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":\r\n",
            "data: [{\"text\":\"Rivers \"}]}}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":\n",
            "data: {\"parts\":[{\"text\":\"run.\"}]},\n",
            "data: \"finishReason\":\"STOP\"}]}\n\n",
        ),
    ]
}

#[tokio::test]
async fn a_normal_stream_is_relayed_byte_for_byte_whatever_its_line_endings_and_framing() {
    for stream in upstream_streams() {
        let bytes = bytes::Bytes::from_static(stream.as_bytes());
        for size in [1, 2, 7, 40, stream.len()] {
            let frames = bytes
                .chunks(size)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let got = relay_frames(frames).await.concat();
            assert_eq!(
                String::from_utf8_lossy(&got),
                stream,
                "frames of {size} bytes"
            );
        }
    }
}

#[tokio::test]
async fn events_that_arrive_in_one_frame_go_out_in_one_frame() {
    for stream in upstream_streams() {
        let got = relay_frames(vec![bytes::Bytes::from_static(stream.as_bytes())]).await;
        assert_eq!(got.len(), 1, "{stream}");
        assert_eq!(got[0], stream.as_bytes());
    }
}
