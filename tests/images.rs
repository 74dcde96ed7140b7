//! Generated images and other large stream events through full_proxy (three pool keys) over
//! loopback, against FakeGemini: a 20 MiB image arrives whole on both APIs with one upstream
//! call, an event over the configured cap ends the stream at once without a retry, and an
//! upstream that trickles a little text per continuation is stopped by the resume bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Captured, Proxy, send};
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::testing::{FakeGemini, Fault};

const KEYS: [&str; 3] = [
    "upstream-key-img-0001",
    "upstream-key-img-0002",
    "upstream-key-img-0003",
];
const IMAGE_MODEL: &str = "gemini-2.5-flash-image";
const MIB: usize = 1024 * 1024;

async fn fake(image_bytes: usize) -> FakeGemini {
    FakeGemini::builder()
        .keys(KEYS)
        .image_bytes(image_bytes)
        .start()
        .await
        .unwrap()
}

async fn proxy(fake: &FakeGemini, vars: &[(&str, &str)]) -> Proxy {
    let keys = KEYS.join(",");
    let url = fake.url();
    let mut all = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    Proxy::start(&all).await
}

fn native_stream(proxy: &Proxy, model: &str, prompt: &str) -> Request<Body> {
    Request::post(format!(
        "/v1beta/models/{model}:streamGenerateContent?alt=sse"
    ))
    .header("x-goog-api-key", proxy.token.as_str())
    .header("content-type", "application/json")
    .body(Body::from(
        json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).to_string(),
    ))
    .unwrap()
}

fn chat(proxy: &Proxy, model: &str, prompt: &str, stream: bool) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", proxy.token))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": model, "stream": stream,
                   "messages": [{"role": "user", "content": prompt}]})
            .to_string(),
        ))
        .unwrap()
}

/// The JSON data of every SSE event (`[DONE]` as a string).
async fn sse_events(res: http::Response<Body>) -> Vec<Value> {
    assert_eq!(res.status(), StatusCode::OK);
    let body = collect_limited(res.into_body(), 256 * MIB).await.unwrap();
    let text = std::str::from_utf8(&body).unwrap().replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap_or(e);
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
        })
        .collect()
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for quad in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..quad.len()]);
    }
    out
}

fn native_images(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .flat_map(|e| {
            e["candidates"][0]["content"]["parts"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|p| p["inlineData"]["data"].as_str())
        .collect()
}

fn native_finishes(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["candidates"][0]["finishReason"].as_str())
        .collect()
}

fn openai_finishes(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect()
}

#[tokio::test]
async fn a_20_mib_streamed_image_arrives_whole_on_the_native_route_with_one_call() {
    let fake = fake(20 * MIB).await;
    let proxy = proxy(&fake, &[]).await;
    let events =
        sse_events(send(&proxy, native_stream(&proxy, IMAGE_MODEL, "a red fox")).await).await;
    let images = native_images(&events);
    assert_eq!(images.len(), 1);
    assert!(
        decode_base64(images[0]) == FakeGemini::image(20 * MIB),
        "the image bytes differ"
    );
    assert_eq!(native_finishes(&events), ["STOP"]);
    assert!(events.iter().all(|e| e.get("error").is_none()));
    assert_eq!(fake.total_requests(), 1, "one upstream call");
}

#[tokio::test]
async fn a_20_mib_streamed_image_arrives_whole_on_openai_streams_with_one_call() {
    let fake = fake(20 * MIB).await;
    let proxy = proxy(&fake, &[]).await;
    let events = sse_events(send(&proxy, chat(&proxy, IMAGE_MODEL, "a red fox", true)).await).await;
    let urls: Vec<&str> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["images"].as_array())
        .flatten()
        .map(|i| {
            assert_eq!(i["type"], "image_url");
            i["image_url"]["url"].as_str().unwrap()
        })
        .collect();
    assert_eq!(urls.len(), 1);
    let data = urls[0].strip_prefix("data:image/png;base64,").unwrap();
    assert!(
        decode_base64(data) == FakeGemini::image(20 * MIB),
        "the image bytes differ"
    );
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Here is an image of a red fox.");
    assert_eq!(openai_finishes(&events), ["stop"]);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(fake.total_requests(), 1, "one upstream call");
}

#[tokio::test]
async fn a_unary_image_answer_reaches_openai_clients_in_message_images() {
    let fake = fake(2 * MIB).await;
    let proxy = proxy(&fake, &[]).await;
    let res = send(&proxy, chat(&proxy, IMAGE_MODEL, "a red fox", false)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = collect_limited(res.into_body(), 64 * MIB).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let message = &v["choices"][0]["message"];
    assert_eq!(message["content"], "Here is an image of a red fox.");
    let url = message["images"][0]["image_url"]["url"].as_str().unwrap();
    let data = url.strip_prefix("data:image/png;base64,").unwrap();
    assert!(decode_base64(data) == FakeGemini::image(2 * MIB));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(fake.total_requests(), 1);
}

#[tokio::test]
async fn an_event_over_a_small_cap_is_one_clear_error_at_once_without_a_retry() {
    let (logs, _guard) = Captured::start_at(tracing::Level::WARN);
    let fake = fake(MIB).await;
    let proxy = proxy(&fake, &[("MAX_EVENT_BYTES", "65536")]).await;

    let events =
        sse_events(send(&proxy, native_stream(&proxy, IMAGE_MODEL, "a red fox")).await).await;
    assert!(native_images(&events).is_empty());
    assert!(native_finishes(&events).is_empty(), "never a STOP");
    let errors: Vec<&Value> = events.iter().filter_map(|e| e.get("error")).collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["code"], 502);
    assert_eq!(errors[0]["status"], "UNAVAILABLE");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("65536 bytes"), "{message}");
    assert!(message.contains("not retried"), "{message}");
    assert_eq!(fake.total_requests(), 1, "no resume, no retry");

    fake.clear_received();
    let events = sse_events(send(&proxy, chat(&proxy, IMAGE_MODEL, "a red fox", true)).await).await;
    let errors: Vec<&Value> = events.iter().filter_map(|e| e.get("error")).collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("65536 bytes")
    );
    assert!(openai_finishes(&events).is_empty());
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(fake.total_requests(), 1, "no resume, no retry");

    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("not resumed"),
        "a warn! line says why: {text}"
    );
    for key in KEYS {
        assert!(!text.contains(key), "a key in the logs: {text}");
    }
}

#[tokio::test]
async fn an_upstream_trickling_text_is_stopped_by_the_total_resume_bound() {
    // One word per chunk; every call sends one chunk and breaks: each continuation makes
    // progress, so only the total bound stops it.
    let fake = FakeGemini::builder()
        .keys(KEYS)
        .chunk_words(1)
        .start()
        .await
        .unwrap();
    for _ in 0..100 {
        fake.push_fault(Fault::DropAfter(1));
    }
    let proxy = proxy(&fake, &[]).await;
    let events =
        sse_events(send(&proxy, native_stream(&proxy, "gemini-2.5-flash", "rivers")).await).await;
    assert_eq!(fake.total_requests(), 11, "the first call and 10 resumes");
    assert!(native_finishes(&events).is_empty(), "never a STOP");
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], 503, "{events:?}");
    assert!(error["message"].as_str().unwrap().contains("10 attempts"));

    fake.clear_received();
    let proxy = self::proxy(&fake, &[("MAX_RESUME_ATTEMPTS", "3")]).await;
    let events =
        sse_events(send(&proxy, chat(&proxy, "gemini-2.5-flash", "rivers", true)).await).await;
    assert_eq!(fake.total_requests(), 4, "the first call and 3 resumes");
    assert!(openai_finishes(&events).is_empty(), "never a stop");
    let error = &events.last().unwrap()["error"];
    assert!(
        error["message"].as_str().unwrap().contains("3 attempts"),
        "{events:?}"
    );
}

#[tokio::test]
async fn images_generations_answer_b64_json_from_an_image_model() {
    let fake = fake(3 * MIB).await;
    let proxy = proxy(&fake, &[]).await;
    let req = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {}", proxy.token))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": IMAGE_MODEL, "prompt": "a red fox", "n": 2,
                   "response_format": "b64_json", "size": "1024x1024"})
            .to_string(),
        ))
        .unwrap();
    let res = send(&proxy, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = collect_limited(res.into_body(), 64 * MIB).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for image in data {
        let b64 = image["b64_json"].as_str().unwrap();
        assert!(decode_base64(b64) == FakeGemini::image(3 * MIB));
    }
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() >= 2 * 1290);
    assert_eq!(
        fake.total_requests(),
        2,
        "one generateContent call per image"
    );
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    assert_eq!(
        sent["generationConfig"],
        json!({"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "1:1"}})
    );

    let url = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {}", proxy.token))
        .body(Body::from(
            json!({"model": IMAGE_MODEL, "prompt": "x", "response_format": "url"}).to_string(),
        ))
        .unwrap();
    let res = send(&proxy, url).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fake.total_requests(), 2, "refused before any upstream call");
}

#[tokio::test]
async fn a_unary_image_over_64_mib_passes_when_max_event_bytes_allows_it() {
    // 50 MiB of image is 67 MiB of base64: more than the old fixed 64 MiB cap on whole answers
    // in stream resume's unary retry and the policy's rewriting (a search-link rule is on).
    let fake = fake(50 * MIB).await;
    let cap = (80 * MIB).to_string();
    let proxy = proxy(
        &fake,
        &[
            ("MAX_EVENT_BYTES", cap.as_str()),
            ("MODEL_SEARCH", IMAGE_MODEL),
            ("SHOW_SEARCH_LINK", "true"),
        ],
    )
    .await;
    let req = Request::post(format!("/v1beta/models/{IMAGE_MODEL}:generateContent"))
        .header("x-goog-api-key", proxy.token.as_str())
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "a big map"}]}]}).to_string(),
        ))
        .unwrap();
    let res = send(&proxy, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = collect_limited(res.into_body(), 256 * MIB).await.unwrap();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let images = native_images(std::slice::from_ref(&answer));
    assert_eq!(images.len(), 1, "one image");
    assert_eq!(decode_base64(images[0]).len(), 50 * MIB);
    assert_eq!(fake.total_requests(), 1, "one upstream call");
}
