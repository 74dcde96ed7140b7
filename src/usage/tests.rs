use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::Body;
use crate::facts::Identity;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const STREAM: &str = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse";
const UNARY_ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":7,"thoughtsTokenCount":2,"cachedContentTokenCount":1,"totalTokenCount":14}}"#;

/// A sink keeping every record.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<UsageRecord>>>);

impl UsageSink for Collect {
    fn record(&self, r: &UsageRecord) {
        self.0.lock().unwrap().push(r.clone());
    }
}

impl Collect {
    fn all(&self) -> Vec<UsageRecord> {
        self.0.lock().unwrap().clone()
    }
}

fn unary_upstream()
-> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone {
    service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from(UNARY_ANSWER)))
    })
}

fn post(uri: &str) -> Request<Body> {
    Request::post(uri).body(Body::from("{}")).unwrap()
}

/// A streamed body fed by the returned sender.
fn channel_body() -> (
    tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, crate::BoxError>>,
    Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let stream = futures_stream(rx);
    (tx, Body::new(http_body_util::StreamBody::new(stream)))
}

struct Rx(tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, crate::BoxError>>);

impl futures_core::Stream for Rx {
    type Item = Result<http_body::Frame<Bytes>, crate::BoxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn futures_stream(
    rx: tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, crate::BoxError>>,
) -> Rx {
    Rx(rx)
}

fn sse(json: &str) -> Result<http_body::Frame<Bytes>, crate::BoxError> {
    Ok(http_body::Frame::data(Bytes::from(format!(
        "data: {json}\r\n\r\n"
    ))))
}

#[tokio::test]
async fn records_route_model_status_and_tokens_of_a_unary_answer() {
    let sink = Collect::default();
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .service(unary_upstream());
    let res = svc.oneshot(post(FLASH)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // A buffered answer stays buffered and is recorded at once.
    assert!(res.body().as_bytes().is_some());
    let r = &sink.all()[0];
    assert_eq!(r.route, "generateContent");
    assert_eq!(r.model, "gemini-2.5-flash");
    assert_eq!(r.status, 200);
    assert!(!r.stream);
    assert!(r.completed);
    assert_eq!(
        r.tokens,
        Some(Tokens {
            prompt: 5,
            output: 7,
            thoughts: 2,
            cached: 1,
            total: 14
        })
    );
}

#[tokio::test]
async fn the_client_identity_is_recorded_by_name_and_masked_id() {
    let sink = Collect::default();
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .service(unary_upstream());
    let mut req = post(FLASH);
    req.extensions_mut()
        .insert(Identity::new("alice", "sk-a…0001", false));
    svc.oneshot(req).await.unwrap();
    let client = sink.all()[0].client.clone().unwrap();
    assert_eq!(client.name, "alice");
    assert_eq!(client.id, "sk-a…0001");
}

#[tokio::test]
async fn a_stream_is_recorded_when_it_ends_with_its_last_usage() {
    tokio::time::pause();
    let sink = Collect::default();
    let layer = UsageLayer::new(sink.clone());
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let upstream = service_fn(move |_req: Request<Body>| {
        let body = body.lock().unwrap().take().unwrap();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    let res = svc.oneshot(post(STREAM)).await.unwrap();
    assert_eq!(layer.in_flight(), 1);
    let mut body = res.into_body();
    tx.send(sse(
        r#"{"usageMetadata":{"promptTokenCount":3,"totalTokenCount":3}}"#,
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    assert!(sink.all().is_empty(), "recorded before the end");
    tokio::time::advance(Duration::from_secs(2)).await;
    tx.send(sse(
        r#"{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":8,"totalTokenCount":11}}"#,
    ))
    .await
    .unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    let r = &sink.all()[0];
    assert_eq!(r.route, "streamGenerateContent");
    assert_eq!(r.model, "gemini-2.5-pro");
    assert!(r.stream);
    assert!(r.completed);
    assert_eq!(r.tokens.unwrap().output, 8);
    assert_eq!(r.tokens.unwrap().total, 11);
    assert!(r.duration >= Duration::from_secs(2));
    assert!(r.latency < Duration::from_secs(2));
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test]
async fn a_dropped_stream_is_recorded_once_as_incomplete() {
    let sink = Collect::default();
    let layer = UsageLayer::new(sink.clone());
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let upstream = service_fn(move |_req: Request<Body>| {
        let body = body.lock().unwrap().take().unwrap();
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let svc = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    let res = svc.oneshot(post(STREAM)).await.unwrap();
    tx.send(sse(r#"{"usageMetadata":{"promptTokenCount":3}}"#))
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let all = sink.all();
    assert_eq!(all.len(), 1);
    assert!(!all[0].completed);
    assert_eq!(all[0].tokens.unwrap().prompt, 3);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test]
async fn deeper_layers_report_key_resumes_and_refusals_through_the_handle() {
    let sink = Collect::default();
    let upstream = service_fn(|req: Request<Body>| async move {
        let h = req.extensions().get::<crate::facts::Report>().unwrap();
        h.record_key("0badc0de");
        h.record_key("feedf00d");
        h.record_resume();
        h.record_rate_limited();
        Ok::<_, Infallible>(
            Response::builder()
                .status(429)
                .body(Body::from("{}"))
                .unwrap(),
        )
    });
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .service(upstream);
    svc.oneshot(post(FLASH)).await.unwrap();
    let r = &sink.all()[0];
    assert_eq!(r.key_id.as_deref(), Some("feedf00d"));
    assert_eq!(r.upstream_attempts, 2);
    assert_eq!(r.resumes, 1);
    assert!(r.rate_limited);
    assert_eq!(r.status, 429);
    assert!(r.tokens.is_none());
}

#[tokio::test]
async fn a_tap_reports_the_inner_model_and_tokens_to_the_outer_layer() {
    let sink = Collect::default();
    // An "OpenAI" outer route whose inner request is a Gemini one.
    let translate = tower::layer::layer_fn(|inner| {
        service_fn(move |req: Request<Body>| {
            let inner: tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible> =
                Clone::clone(&inner);
            async move {
                let (parts, _) = req.into_parts();
                let mut gemini = Request::post(FLASH).body(Body::from("{}")).unwrap();
                *gemini.extensions_mut() = parts.extensions;
                let res = inner.oneshot(gemini).await?;
                // The translated answer holds no usage at all.
                let _ = res.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Body::from(r#"{"choices":[]}"#)))
            }
        })
    });
    let inner = tower::util::BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(UsageLayer::tap())
            .service(unary_upstream()),
    );
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .layer(translate)
        .service(inner);
    let req = Request::post("/v1/chat/completions")
        .body(Body::from(r#"{"model":"gpt-alias","messages":[]}"#))
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let all = sink.all();
    assert_eq!(all.len(), 1, "the tap records nothing itself");
    assert_eq!(all[0].route, "openai.chat.completions");
    assert_eq!(all[0].model, "gemini-2.5-flash");
    assert_eq!(all[0].tokens.unwrap().total, 14);
}

/// A native stream through an outer layer and a tap: (the record sink, the client's body, the
/// upstream's sender).
async fn tapped_stream() -> (
    Collect,
    Body,
    tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, crate::BoxError>>,
) {
    let sink = Collect::default();
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let upstream = service_fn(move |_req: Request<Body>| {
        let body = body.lock().unwrap().take().unwrap();
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .layer(UsageLayer::tap())
        .service(upstream);
    let res = svc.oneshot(post(STREAM)).await.unwrap();
    (sink, res.into_body(), tx)
}

#[tokio::test]
async fn a_tapped_native_stream_is_recorded_with_its_last_usage() {
    let (sink, mut body, tx) = tapped_stream().await;
    tx.send(sse(r#"{"usageMetadata":{"promptTokenCount":3}}"#))
        .await
        .unwrap();
    tx.send(sse(
        r#"{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":8,"totalTokenCount":11}}"#,
    ))
    .await
    .unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    let all = sink.all();
    assert_eq!(all.len(), 1);
    assert!(all[0].completed);
    assert_eq!(all[0].tokens.unwrap().output, 8);
    assert_eq!(all[0].tokens.unwrap().total, 11);
}

#[tokio::test]
async fn a_tapped_native_stream_dropped_midway_keeps_the_usage_seen_so_far() {
    let (sink, mut body, tx) = tapped_stream().await;
    tx.send(sse(r#"{"usageMetadata":{"promptTokenCount":3}}"#))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let all = sink.all();
    assert_eq!(all.len(), 1);
    assert!(!all[0].completed);
    assert_eq!(all[0].tokens.unwrap().prompt, 3);
}

#[tokio::test]
async fn openai_routes_take_the_model_from_the_body() {
    let sink = Collect::default();
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .service(unary_upstream());
    let req = Request::post("/v1/chat/completions")
        .body(Body::from(r#"{"model":"gemini-2.5-flash","messages":[]}"#))
        .unwrap();
    svc.clone().oneshot(req).await.unwrap();
    let req = Request::get("/v1/models").body(Body::empty()).unwrap();
    svc.clone().oneshot(req).await.unwrap();
    let req = Request::get("/v1beta/models").body(Body::empty()).unwrap();
    svc.oneshot(req).await.unwrap();
    let all = sink.all();
    assert_eq!(all[0].route, "openai.chat.completions");
    assert_eq!(all[0].model, "gemini-2.5-flash");
    assert_eq!(all[1].route, "openai.models");
    assert_eq!(all[2].route, "models.list");
}

#[tokio::test]
async fn a_key_pasted_as_the_model_is_masked_before_any_sink_sees_it() {
    const KEY: &str = "AIzaSyA-leaked-key-in-a-model-name00001";
    let sink = Collect::default();
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .service(unary_upstream());
    svc.clone()
        .oneshot(post(&format!("/v1beta/models/{KEY}:generateContent")))
        .await
        .unwrap();
    let req = Request::post("/v1/chat/completions")
        .body(Body::from(format!(r#"{{"model":"{KEY}","messages":[]}}"#)))
        .unwrap();
    svc.oneshot(req).await.unwrap();
    for r in sink.all() {
        assert_eq!(r.model, crate::secret::mask(KEY));
    }
}

// === UsageStats ===

fn record(model: &str, key: &str, client: &str, status: u16, total: u64) -> UsageRecord {
    UsageRecord::new("generateContent", model)
        .with_status(status)
        .with_key(key)
        .with_client(client, "sk-…")
        .with_tokens(Tokens {
            total,
            ..Tokens::default()
        })
}

#[tokio::test]
async fn stats_count_per_model_key_and_client() {
    tokio::time::pause();
    let stats = UsageStats::new();
    stats.record(&record("flash", "k1", "alice", 200, 10));
    stats.record(&record("flash", "k2", "bob", 429, 0));
    stats.record(&record("pro", "k1", "alice", 200, 5));
    let w = Window::Minute;
    assert_eq!(stats.totals(Dimension::Model, "flash", w).requests, 2);
    assert_eq!(stats.totals(Dimension::Model, "flash", w).errors, 1);
    assert_eq!(stats.totals(Dimension::Model, "flash", w).tokens, 10);
    assert_eq!(stats.totals(Dimension::Key, "k1", w).tokens, 15);
    assert_eq!(stats.totals(Dimension::Client, "bob", w).requests, 1);
    assert_eq!(stats.overall(w).requests, 3);
    let json = stats.to_json();
    assert_eq!(json["models"]["pro"]["day"]["requests"], 1);
    assert_eq!(json["keys"]["k2"]["hour"]["errors"], 1);
    assert_eq!(json["clients"]["alice"]["minute"]["tokens"], 15);
    assert_eq!(json["total"]["day"]["requests"], 3);
}

#[tokio::test]
async fn the_minute_window_forgets_after_a_minute_the_hour_keeps() {
    tokio::time::pause();
    let stats = UsageStats::new();
    stats.record(&record("flash", "k1", "alice", 200, 10));
    tokio::time::advance(Duration::from_secs(30)).await;
    stats.record(&record("flash", "k1", "alice", 200, 1));
    assert_eq!(stats.overall(Window::Minute).requests, 2);
    tokio::time::advance(Duration::from_secs(31)).await;
    // 61 s after the first request, 31 s after the second.
    assert_eq!(stats.overall(Window::Minute).requests, 1);
    assert_eq!(stats.overall(Window::Minute).tokens, 1);
    assert_eq!(stats.overall(Window::Hour).requests, 2);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(stats.overall(Window::Minute).requests, 0);
    assert_eq!(
        stats.totals(Dimension::Model, "flash", Window::Hour).tokens,
        11
    );
}

#[tokio::test]
async fn the_hour_window_forgets_after_an_hour_the_day_after_a_day() {
    tokio::time::pause();
    let stats = UsageStats::new();
    stats.record(&record("flash", "k1", "alice", 200, 10));
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(stats.overall(Window::Hour).requests, 0);
    assert_eq!(stats.overall(Window::Day).requests, 1);
    tokio::time::advance(Duration::from_secs(23 * 3600)).await;
    assert_eq!(stats.overall(Window::Day).requests, 0);
    // A name idle for a day leaves the JSON.
    assert!(stats.to_json()["models"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn buckets_reused_after_a_full_turn_start_from_zero() {
    tokio::time::pause();
    let stats = UsageStats::new();
    stats.record(&record("flash", "k1", "alice", 200, 10));
    // Exactly one ring turn later the same slot is reused.
    tokio::time::advance(Duration::from_secs(60)).await;
    stats.record(&record("flash", "k1", "alice", 200, 1));
    assert_eq!(stats.overall(Window::Minute).requests, 1);
    assert_eq!(stats.overall(Window::Minute).tokens, 1);
    assert_eq!(stats.overall(Window::Hour).requests, 2);
}

#[tokio::test]
async fn names_past_the_cap_are_counted_under_other() {
    tokio::time::pause();
    let stats = UsageStats::new().max_entries(2);
    for m in ["a", "b", "c", "d"] {
        stats.record(&record(m, "k1", "alice", 200, 1));
    }
    let json = stats.to_json();
    let models = json["models"].as_object().unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(json["models"][OTHER]["minute"]["requests"], 2);
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_each_record_once_and_hold_no_secret() {
    let m = MetricsSink::prometheus();
    m.record(&record("gemini-2.5-flash", "0badc0de", "alice", 200, 12));
    m.record(&record("gemini-2.5-flash", "0badc0de", "alice", 200, 3));
    m.record(&record(
        "AIzaSyA-leaked-key-in-a-model-name00001",
        "0badc0de",
        "alice",
        404,
        0,
    ));
    let text = m.render().unwrap();
    assert!(text.contains(
        r#"gemini_gateway_requests_total{route="generateContent",model="gemini-2.5-flash",status="200"} 2"#
    ), "{text}");
    assert!(
        text.contains(r#"gemini_gateway_tokens_total{model="gemini-2.5-flash",type="total"} 15"#),
        "{text}"
    );
    assert!(text.contains(r#"model="invalid""#), "{text}");
    assert!(!text.contains("AIza"), "{text}");
    assert!(!text.contains("alice"), "{text}");
    // Ids that are not token ids (old masked ids) count as `other`.
    assert!(
        text.contains(r#"gemini_gateway_account_requests_total{account="other"} 3"#),
        "{text}"
    );
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_per_account_by_token_id() {
    let m = MetricsSink::prometheus();
    let used = |prompt, output, thoughts| {
        UsageRecord::new("generateContent", "gemini-2.5-flash")
            .with_status(200)
            .with_client("team-x", "tok_0123456789ab")
            .with_tokens(Tokens {
                prompt,
                output,
                thoughts,
                total: prompt + output + thoughts,
                ..Tokens::default()
            })
    };
    m.record(&used(10, 20, 5));
    m.record(&used(1, 2, 0));
    let text = m.render().unwrap();
    assert!(
        text.contains(r#"gemini_gateway_account_requests_total{account="tok_0123456789ab"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gemini_gateway_account_tokens_total{account="tok_0123456789ab"} 38"#),
        "{text}"
    );
    assert!(!text.contains("team-x"), "names are not labels: {text}");
}

#[tokio::test]
async fn request_bodies_are_kept_only_when_asked_and_capped() {
    let seen: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
    let s = seen.clone();
    let sink = move |r: &UsageRecord| s.lock().unwrap().push(r.clone());
    let upstream = service_fn(|req: Request<Body>| async move {
        let _ = crate::body::collect_limited(req.into_body(), 1 << 20).await;
        Ok::<_, Infallible>(Response::new(Body::from("{}")))
    });
    let with = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()).request_bodies(8))
        .service(upstream);
    let without = ServiceBuilder::new()
        .layer(UsageLayer::new(sink))
        .service(upstream);
    let req = || {
        Request::post("/v1beta/models/m:generateContent")
            .header("x-request-id", "req-1")
            .body(Body::from("0123456789abcdef"))
            .unwrap()
    };
    with.oneshot(req()).await.unwrap();
    without.oneshot(req()).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].request_body.as_deref(), Some(&b"01234567"[..]));
    assert_eq!(seen[0].request_id.as_deref(), Some("req-1"));
    assert_eq!(seen[1].request_body, None);
}

/// The record of one request whose answer is `status` with `body`, streamed in two frames
/// when `streamed`.
async fn error_record(status: u16, body: &'static str, streamed: bool) -> UsageRecord {
    let sink = Collect::default();
    let upstream = service_fn(move |_req: Request<Body>| async move {
        let body = if streamed {
            let (head, tail) = body.split_at(body.len() / 2);
            let (tx, body) = channel_body();
            tx.send(Ok(http_body::Frame::data(Bytes::from_static(
                head.as_bytes(),
            ))))
            .await
            .unwrap();
            tx.send(Ok(http_body::Frame::data(Bytes::from_static(
                tail.as_bytes(),
            ))))
            .await
            .unwrap();
            body
        } else {
            Body::from(body)
        };
        Ok::<_, Infallible>(Response::builder().status(status).body(body).unwrap())
    });
    let svc = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()))
        .service(upstream);
    let res = svc.oneshot(post(FLASH)).await.unwrap();
    // The client reads the answer whole, as it was.
    let got = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, body.as_bytes());
    sink.all().pop().unwrap()
}

#[tokio::test]
async fn an_error_answer_is_recorded_with_its_message_and_never_a_key() {
    let gemini = r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'generate_content' (key AIzaSyAbcdefghijklmnopqrstuvwxyz0123456)","status":"RESOURCE_EXHAUSTED"}}"#;
    for streamed in [false, true] {
        let r = error_record(429, gemini, streamed).await;
        let e = r.error.expect("an error message");
        assert!(
            e.starts_with("RESOURCE_EXHAUSTED: Quota exceeded for quota metric"),
            "{e}"
        );
        assert!(
            !e.contains("AIzaSyAbcdefghijklmnopqrstuvwxyz0123456"),
            "{e}"
        );
    }
    // OpenAI's and Anthropic's shapes, and a JSON array of Gemini errors.
    let openai = r#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#;
    assert_eq!(
        error_record(404, openai, false).await.error.as_deref(),
        Some("invalid_request_error: model not found")
    );
    let array =
        r#"[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]"#;
    assert_eq!(
        error_record(503, array, true).await.error.as_deref(),
        Some("UNAVAILABLE: The model is overloaded.")
    );
    // A text answer is kept (whitespace collapsed), an HTML page is not.
    assert_eq!(
        error_record(502, "bad\n  gateway ", false)
            .await
            .error
            .as_deref(),
        Some("bad gateway")
    );
    assert_eq!(
        error_record(502, "<html><body>502</body></html>", false)
            .await
            .error,
        None
    );
    // Success answers carry none.
    assert_eq!(error_record(200, UNARY_ANSWER, false).await.error, None);
}

#[tokio::test]
async fn a_long_error_message_is_cut() {
    const LONG: &str = concat!(
        r#"{"error":{"message":""#,
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        r#""}}"#
    );
    let e = error_record(400, LONG, false).await.error.unwrap();
    assert_eq!(e.chars().count(), MAX_ERROR_CHARS);
    assert!(e.ends_with('…'));
}
