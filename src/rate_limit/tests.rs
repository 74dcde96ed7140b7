//! Layer tests: the public stack driven with `ServiceBuilder` + `service_fn`, on Tokio's
//! paused clock.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::Error;
use crate::body::{Body, collect_limited};
use crate::facts::Identity;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const FLASH_STREAM: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";

type Svc = tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>;

fn req(uri: &str, client: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .body(body.into())
        .unwrap();
    if let Some(c) = client {
        req.extensions_mut()
            .insert(Identity::new(c, format!("sk-{c}…0001"), false));
    }
    req
}

/// A service answering `answer()` and counting its calls.
fn service<F>(layer: RateLimitLayer, answer: F) -> (Svc, Arc<AtomicUsize>)
where
    F: Fn() -> Response<Body> + Clone + Send + Sync + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_req: Request<Body>| {
            c.fetch_add(1, Ordering::SeqCst);
            let res = answer();
            async move { Ok::<_, Infallible>(res) }
        }));
    (Svc::new(svc), calls)
}

fn ok() -> Response<Body> {
    Response::new(Body::from("ok"))
}

fn layer(rules: impl IntoIterator<Item = Rule>) -> RateLimitLayer {
    RateLimitLayer::builder().rules(rules).build().unwrap()
}

async fn status(svc: &Svc, r: Request<Body>) -> StatusCode {
    svc.clone().oneshot(r).await.unwrap().status()
}

fn header(res: &Response<Body>, name: &str) -> String {
    res.headers()[name].to_str().unwrap().to_owned()
}

async fn json(res: Response<Body>) -> serde_json::Value {
    serde_json::from_slice(&collect_limited(res.into_body(), 1 << 20).await.unwrap()).unwrap()
}

/// The `x-ratelimit-remaining` of a fresh request: shows what earlier requests were charged.
async fn remaining(svc: &Svc, r: Request<Body>) -> u64 {
    let res = svc.clone().oneshot(r).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    header(&res, "x-ratelimit-remaining").parse().unwrap()
}

// === Requests ===

#[tokio::test(start_paused = true)]
async fn client_over_its_limit_gets_429_with_headers_while_others_pass() {
    let (svc, _) = service(layer([Rule::per_client().requests_per_minute(3)]), ok);
    for _ in 0..3 {
        assert_eq!(
            status(&svc, req(FLASH, Some("alice"), "")).await,
            StatusCode::OK
        );
    }
    let res = svc
        .clone()
        .oneshot(req(FLASH, Some("alice"), ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "20");
    assert_eq!(header(&res, "x-ratelimit-limit"), "3");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&res, "x-ratelimit-reset"), "60");
    let v = json(res).await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        v["error"]["message"],
        "rate limit of 3 requests per minute per client exceeded; retry in 20 s"
    );
    assert_eq!(
        status(&svc, req(FLASH, Some("bob"), "")).await,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn inner_service_is_not_called_when_refused() {
    let (svc, calls) = service(layer([Rule::global().requests_per_second(1)]), ok);
    assert_eq!(status(&svc, req(FLASH, None, "")).await, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(
            status(&svc, req(FLASH, None, "")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn allowed_responses_carry_the_tightest_quota() {
    let (svc, _) = service(
        layer([
            Rule::per_client().requests_per_minute(100),
            Rule::per_client().requests_per_day(4),
        ]),
        ok,
    );
    let res = svc
        .clone()
        .oneshot(req(FLASH, Some("alice"), ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-limit"), "4");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "3");
    assert_eq!(header(&res, "x-ratelimit-reset"), "21600");
}

#[tokio::test(start_paused = true)]
async fn burst_then_steady_rate() {
    let (svc, _) = service(
        layer([Rule::per_client().requests_per_minute(60).burst(5)]),
        ok,
    );
    let alice = || req(FLASH, Some("alice"), "");
    for _ in 0..5 {
        assert_eq!(status(&svc, alice()).await, StatusCode::OK);
    }
    assert_eq!(status(&svc, alice()).await, StatusCode::TOO_MANY_REQUESTS);
    // Then one per second, smoothly: never a second one within the same second.
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(status(&svc, alice()).await, StatusCode::OK);
        assert_eq!(status(&svc, alice()).await, StatusCode::TOO_MANY_REQUESTS);
    }
    // Idle for the burst's length: the whole burst is back.
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..5 {
        assert_eq!(status(&svc, alice()).await, StatusCode::OK);
    }
    assert_eq!(status(&svc, alice()).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn day_quota_rolls_over() {
    let (svc, _) = service(layer([Rule::per_client().requests_per_day(100)]), ok);
    let alice = || req(FLASH, Some("alice"), "");
    for _ in 0..100 {
        assert_eq!(status(&svc, alice()).await, StatusCode::OK);
    }
    let res = svc.clone().oneshot(alice()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "864"); // a day / 100
    // One request comes back every 864 s ...
    tokio::time::advance(Duration::from_secs(864)).await;
    assert_eq!(status(&svc, alice()).await, StatusCode::OK);
    assert_eq!(status(&svc, alice()).await, StatusCode::TOO_MANY_REQUESTS);
    // ... and a day later the whole quota.
    tokio::time::advance(Duration::from_secs(86_400)).await;
    for _ in 0..100 {
        assert_eq!(status(&svc, alice()).await, StatusCode::OK);
    }
    assert_eq!(status(&svc, alice()).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_quota() {
    let layer = layer([Rule::global().requests_per_minute(2)]);
    let (a, _) = service(layer.clone(), ok);
    let (b, _) = service(layer, ok);
    assert_eq!(status(&a, req(FLASH, None, "")).await, StatusCode::OK);
    assert_eq!(
        status(&b.clone(), req(FLASH, None, "")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&a.clone(), req(FLASH, None, "")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn model_rules_count_only_their_model() {
    let (svc, _) = service(
        layer([
            Rule::per_model("gemini-2.5-pro").requests_per_minute(1),
            Rule::per_client().and_model().requests_per_minute(2),
        ]),
        ok,
    );
    let pro = "/v1beta/models/gemini-2.5-pro:generateContent";
    assert_eq!(status(&svc, req(pro, Some("a"), "")).await, StatusCode::OK);
    let res = svc.clone().oneshot(req(pro, Some("b"), "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        json(res).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 requests per minute for model gemini-2.5-pro")
    );
    // Flash: only the (client, model) rule.
    assert_eq!(
        status(&svc, req(FLASH, Some("a"), "")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&svc, req(FLASH, Some("a"), "")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&svc, req(FLASH, Some("a"), "")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Paths without a model are not counted by model rules: no limit applies, no headers.
    let res = svc
        .clone()
        .oneshot(req("/v1beta/models", Some("a"), ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
}

#[tokio::test(start_paused = true)]
async fn openai_routes_get_an_openai_shaped_429() {
    let (svc, _) = service(layer([Rule::per_client().requests_per_minute(1)]), ok);
    let chat = "/v1/chat/completions";
    assert_eq!(status(&svc, req(chat, Some("a"), "")).await, StatusCode::OK);
    let res = svc.clone().oneshot(req(chat, Some("a"), "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let v = json(res).await;
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(start_paused = true)]
async fn per_ip_rules_read_the_peer_or_a_trusted_header() {
    let layer = RateLimitLayer::builder()
        .rule(Rule::per_ip().requests_per_minute(1))
        .forwarded_header("x-forwarded-for")
        .trusted_proxies(["10.0.0.0/8"])
        .build()
        .unwrap();
    let (svc, _) = service(layer, ok);
    let from = |peer: &str, xff: Option<&str>| {
        let mut r = req(FLASH, None, "");
        r.extensions_mut().insert(ClientAddr(peer.parse().unwrap()));
        if let Some(x) = xff {
            r.headers_mut()
                .insert("x-forwarded-for", x.parse().unwrap());
        }
        r
    };
    assert_eq!(status(&svc, from("1.1.1.1:1", None)).await, StatusCode::OK);
    assert_eq!(
        status(&svc, from("1.1.1.1:2", None)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Through the trusted proxy: the forwarded client counts.
    assert_eq!(
        status(&svc, from("10.0.0.2:1", Some("2.2.2.2, 10.0.0.9"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&svc, from("10.0.0.3:1", Some("2.2.2.2"))).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An untrusted peer cannot escape its limit with a header.
    assert_eq!(
        status(&svc, from("1.1.1.1:3", Some("3.3.3.3"))).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // No address at all: the per-IP rule does not apply.
    assert_eq!(status(&svc, req(FLASH, None, "")).await, StatusCode::OK);
}

// === Tokens ===

fn answer_with_usage(total: u64) -> impl Fn() -> Response<Body> + Clone + Send + Sync {
    move || {
        let mut res = Response::new(Body::from(format!(
            r#"{{"candidates":[],"usageMetadata":{{"promptTokenCount":1,"totalTokenCount":{total}}}}}"#
        )));
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        res
    }
}

/// A 400-byte request body: an estimate of 100 tokens.
fn body_400() -> String {
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "x".repeat(362)
    );
    assert_eq!(body.len(), 400);
    body
}

fn tpm_1000() -> RateLimitLayer {
    layer([Rule::per_client().tokens_per_minute(1000)])
}

#[tokio::test(start_paused = true)]
async fn non_streamed_usage_settles_the_estimate() {
    let (svc, _) = service(tpm_1000(), answer_with_usage(700));
    // Charged 100 (400 bytes / 4) before the call ...
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        900
    );
    // ... settled to 700 after it: this one sees 1000 - 700 - 100.
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        200
    );
    // 700 + 100 more does not fit in what is left.
    let res = svc
        .clone()
        .oneshot(req(FLASH, Some("a"), body_400()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        json(res).await["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("rate limit of 1000 tokens per minute per client exceeded")
    );
}

#[tokio::test(start_paused = true)]
async fn non_streamed_body_reaches_the_client_unchanged() {
    let (svc, _) = service(tpm_1000(), answer_with_usage(5));
    let res = svc
        .clone()
        .oneshot(req(FLASH, Some("a"), body_400()))
        .await
        .unwrap();
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    assert_eq!(
        &body[..],
        br#"{"candidates":[],"usageMetadata":{"promptTokenCount":1,"totalTokenCount":5}}"#
    );
}

#[tokio::test(start_paused = true)]
async fn large_non_streamed_answers_are_relayed_and_still_settled() {
    let layer = RateLimitLayer::builder()
        .rule(Rule::per_client().tokens_per_minute(1000))
        .max_buffered_response(10)
        .build()
        .unwrap();
    let (svc, _) = service(layer, answer_with_usage(300));
    let res = svc
        .clone()
        .oneshot(req(FLASH, Some("a"), body_400()))
        .await
        .unwrap();
    assert!(res.body().as_bytes().is_none(), "relayed, not buffered");
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    assert!(body.ends_with(br#""totalTokenCount":300}}"#));
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        600
    );
}

#[tokio::test(start_paused = true)]
async fn failed_calls_give_the_estimate_back() {
    let (svc, _) = service(tpm_1000(), || {
        let mut res = Response::new(Body::from(r#"{"error":{"code":503}}"#));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        res
    });
    for _ in 0..20 {
        let res = svc
            .clone()
            .oneshot(req(FLASH, Some("a"), body_400()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&res, "x-ratelimit-remaining"), "900");
    }
}

#[tokio::test(start_paused = true)]
async fn token_quotas_skip_calls_that_spend_none() {
    let (svc, _) = service(tpm_1000(), answer_with_usage(999));
    let count = "/v1beta/models/gemini-2.5-flash:countTokens";
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(req(count, Some("a"), body_400()))
            .await
            .unwrap();
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        900
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_refill_over_the_minute() {
    let (svc, _) = service(tpm_1000(), answer_with_usage(1000));
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        900
    );
    let res = svc
        .clone()
        .oneshot(req(FLASH, Some("a"), body_400()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "6"); // 100 tokens at 1000 per minute
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(remaining(&svc, req(FLASH, Some("a"), body_400())).await, 0);
}

/// An SSE answer sent frame by frame through a channel, as a real upstream would.
fn sse_answer(
    rx: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Bytes>>>>,
) -> impl Fn() -> Response<Body> + Clone + Send + Sync {
    move || {
        let Some(rx) = rx.lock().unwrap().take() else {
            // Later calls (that only read headers) get a plain answer without usage.
            return Response::new(Body::from("{}"));
        };
        let stream = futures_stream(rx);
        let mut res = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        res
    }
}

struct ChannelStream(tokio::sync::mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<Frame<Bytes>, BoxError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn futures_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ChannelStream {
    ChannelStream(rx)
}

#[tokio::test(start_paused = true)]
async fn streamed_usage_settles_from_the_last_event_without_buffering() {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let (svc, _) = service(tpm_1000(), sse_answer(rx));
    let mut res = svc
        .clone()
        .oneshot(req(FLASH_STREAM, Some("a"), body_400()))
        .await
        .unwrap();
    assert_eq!(header(&res, "x-ratelimit-remaining"), "900");
    let events = [
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}],\"usageMetadata\":{\"promptTokenCount\":90,\"totalTokenCount\":95}}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":90,\"totalTok",
        "enCount\":450}}\r\n\r\n",
    ];
    let mut seen = Vec::new();
    for e in events {
        tx.send(Bytes::from_static(e.as_bytes())).await.unwrap();
        // Each frame comes out before the next one is even sent.
        let frame = res.body_mut().frame().await.unwrap().unwrap();
        seen.extend_from_slice(frame.data_ref().unwrap());
    }
    drop(tx);
    assert!(res.body_mut().frame().await.is_none());
    assert_eq!(seen, events.concat().as_bytes());
    drop(res);
    // Settled to 450: 1000 - 450 - 100.
    assert_eq!(
        remaining(&svc, req(FLASH, Some("b"), body_400())).await,
        900
    );
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        450
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_midway_settles_with_the_usage_seen() {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let (svc, _) = service(tpm_1000(), sse_answer(rx));
    let mut res = svc
        .clone()
        .oneshot(req(FLASH_STREAM, Some("a"), body_400()))
        .await
        .unwrap();
    tx.send(Bytes::from_static(
        b"data: {\"usageMetadata\":{\"totalTokenCount\":300}}\r\n\r\n",
    ))
    .await
    .unwrap();
    res.body_mut().frame().await.unwrap().unwrap();
    drop(res); // the client hangs up
    assert_eq!(
        remaining(&svc, req(FLASH, Some("a"), body_400())).await,
        600
    );
}

// === Stores and configuration ===

struct DownStore;

impl RateLimitStore for DownStore {
    fn check<'a>(&'a self, _: &'a [Check]) -> StoreFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(async { Err(Error::redis("connection refused")) })
    }

    fn settle(&self, _: Vec<Settlement>) -> StoreFuture<'static, Result<(), Error>> {
        Box::pin(async { Err(Error::redis("connection refused")) })
    }
}

#[tokio::test]
async fn a_failing_store_fails_open_by_default() {
    let layer = RateLimitLayer::builder()
        .rule(Rule::global().requests_per_second(1))
        .store(DownStore)
        .build()
        .unwrap();
    let (svc, calls) = service(layer, ok);
    for _ in 0..3 {
        let res = svc.clone().oneshot(req(FLASH, None, "")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failing_store_fails_closed_when_asked() {
    let layer = RateLimitLayer::builder()
        .rule(Rule::global().requests_per_second(1))
        .store(DownStore)
        .fail_open(false)
        .build()
        .unwrap();
    let (svc, calls) = service(layer, ok);
    let res = svc.clone().oneshot(req(FLASH, None, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, "retry-after"), "1");
    let v = json(res).await;
    assert_eq!(v["error"]["status"], "UNAVAILABLE");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn one_store_can_back_several_layers() {
    let store = Arc::new(RateLimitMemoryStore::new());
    let build = || {
        RateLimitLayer::builder()
            .rule(Rule::per_client().requests_per_minute(3))
            .store(store.clone())
            .build()
            .unwrap()
    };
    let (a, _) = service(build(), ok);
    let (b, _) = service(build(), ok);
    let mut allowed = 0;
    for i in 0..10 {
        let svc = if i % 2 == 0 { &a } else { &b };
        if status(svc, req(FLASH, Some("x"), "")).await == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3);
    assert_eq!(store.len(), 1);
}

#[test]
fn build_rejects_bad_configuration() {
    let cases: [(RateLimitLayerBuilder, &str); 6] = [
        (
            RateLimitLayer::builder().rule(Rule::per_client()),
            "rule 1 (per client) has no quota",
        ),
        (
            RateLimitLayer::builder().rule(Rule::global().requests_per_minute(0)),
            "amount of 0",
        ),
        (
            RateLimitLayer::builder().rule(Rule::global().requests_per_minute(5).burst(0)),
            "burst of 0",
        ),
        (
            RateLimitLayer::builder().trusted_proxies(["10.0.0.0/99"]),
            "trusted proxy `10.0.0.0/99`",
        ),
        (
            RateLimitLayer::builder().forwarded_header("bad header"),
            "`bad header` is not a valid forwarding header name",
        ),
        (
            RateLimitLayer::builder().bytes_per_token(0),
            "bytes per token",
        ),
    ];
    for (builder, want) in cases {
        let err = builder.build().unwrap_err();
        assert!(err.is_config());
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[tokio::test]
async fn poll_ready_is_forwarded() {
    let mut svc = ServiceBuilder::new()
        .layer(layer([Rule::global().requests_per_second(1)]))
        .service(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(ok())
        }));
    std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let res = svc.call(req(FLASH, None, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
