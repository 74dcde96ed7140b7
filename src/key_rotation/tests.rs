//! Tests of the key pool's state machine (paused clock) and of the layer over mock upstreams.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

use super::classify::Outcome;
use super::pool::{Lease, Pick, Unavailable, backoff, until_pacific_midnight};
use super::*;
use crate::body::{Body, collect_limited};

// === helpers ===

fn key(i: usize) -> String {
    // "AIza" + 35 characters: the shape `secret::scrub` recognises.
    format!("AIzaSyTestKey{i:0>26}")
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(key).collect()
}

fn pool_of(n: usize) -> Arc<KeyPool> {
    KeyPool::builder().keys(keys(n)).build().unwrap()
}

fn lease(pool: &Arc<KeyPool>, model: &str) -> Lease {
    match pool.pick(model, &[]) {
        Pick::Key(l) => l,
        Pick::Unavailable(why) => panic!("no key: {why:?}"),
    }
}

fn unavailable(pool: &Arc<KeyPool>, model: &str) -> Unavailable {
    match pool.pick(model, &[]) {
        Pick::Key(l) => panic!("got key {}", l.id()),
        Pick::Unavailable(why) => why,
    }
}

fn exhausted(delay: Option<Duration>) -> Outcome {
    Outcome::Exhausted {
        retry_delay: delay,
        per_day: false,
    }
}

fn key_failure() -> Outcome {
    Outcome::KeyFailure {
        reason: "API_KEY_INVALID".into(),
    }
}

fn state(pool: &KeyPool, i: usize) -> KeySnapshot {
    pool.snapshot().remove(i)
}

const MODEL: &str = "gemini-2.5-flash";
const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

fn json(status: u16, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.into()))
        .unwrap()
}

fn ok_answer() -> Response<Body> {
    json(
        200,
        r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}]}"#,
    )
}

fn quota_429(retry_delay: Option<&str>, quota_id: &str) -> Response<Body> {
    let retry = retry_delay
        .map(|d| {
            format!(r#",{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{d}"}}"#)
        })
        .unwrap_or_default();
    json(
        429,
        format!(
            r#"{{"error":{{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"{quota_id}","quotaDimensions":{{"location":"global","model":"{MODEL}"}},"quotaValue":"10"}}]}}{retry}]}}}}"#
        ),
    )
}

fn invalid_key_400(echoed: &str) -> Response<Body> {
    json(
        400,
        format!(
            r#"{{"error":{{"code":400,"message":"API key not valid. Please pass a valid API key. api_key:{echoed}","status":"INVALID_ARGUMENT","details":[{{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{{"service":"generativelanguage.googleapis.com"}}}}]}}}}"#
        ),
    )
}

const BAD_REQUEST_400: &str = r#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"foo\": Cannot find field.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"description":"Invalid JSON payload received. Unknown name \"foo\": Cannot find field."}]}]}}"#;

const OVERLOADED_503: &str = r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;

/// One request as the mock upstream saw it.
#[derive(Clone, Debug)]
struct Call {
    key: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn keys(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.key.clone())
            .collect()
    }
    fn get(&self, i: usize) -> Call {
        self.0.lock().unwrap()[i].clone()
    }
}

type Upstream = tower::util::BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// A mock upstream answering each request with `answer(call, index of the call)`.
fn upstream<F>(calls: &Calls, answer: F) -> Upstream
where
    F: Fn(&Call, usize) -> Result<Response<Body>, BoxError> + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    let svc = service_fn(move |req: Request<Body>| {
        let calls = calls.clone();
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = collect_limited(body, 1 << 20).await?;
            let call = Call {
                key: parts
                    .headers
                    .get("x-goog-api-key")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            };
            let n = {
                let mut calls = calls.0.lock().unwrap();
                calls.push(call.clone());
                calls.len() - 1
            };
            answer(&call, n)
        }
    });
    tower::util::BoxCloneService::new(svc)
}

fn stack(
    layer: KeyRotationLayer,
    up: Upstream,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone {
    ServiceBuilder::new().layer(layer).service(up)
}

async fn send<S>(svc: &S, req: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

fn post(path: &str, body: &'static str) -> Request<Body> {
    Request::post(path).body(Body::from(body)).unwrap()
}

async fn text(res: Response<Body>) -> String {
    String::from_utf8(
        collect_limited(res.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

// === state machine ===

#[tokio::test(start_paused = true)]
async fn cooldown_is_per_model_and_expires() {
    let pool = pool_of(1);
    let mut l = lease(&pool, MODEL);
    pool.report(
        &mut l,
        MODEL,
        &exhausted(Some(Duration::from_secs(10))),
        None,
    )
    .await;
    drop(l);
    assert_eq!(
        unavailable(&pool, MODEL),
        Unavailable::AllCooling(Duration::from_secs(10))
    );
    // Another model still uses the key.
    drop(lease(&pool, "gemini-2.5-pro"));
    tokio::time::advance(Duration::from_secs(10)).await;
    drop(lease(&pool, MODEL));
}

#[tokio::test(start_paused = true)]
async fn retry_delay_under_a_second_still_cools_a_second() {
    let pool = pool_of(1);
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &exhausted(Some(Duration::ZERO)), None)
        .await;
    assert!(matches!(
        unavailable(&pool, MODEL),
        Unavailable::AllCooling(d) if d == Duration::from_secs(1)
    ));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_on_repeated_429_without_retry_delay() {
    let pool = KeyPool::builder()
        .keys(keys(1))
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &exhausted(None), None).await;
    let first = state(&pool, 0).cooling[0].remaining;
    assert!(
        first >= Duration::from_secs(60) && first <= Duration::from_secs(75),
        "{first:?}"
    );

    tokio::time::advance(first).await;
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &exhausted(None), None).await;
    let second = state(&pool, 0).cooling[0].remaining;
    assert!(
        second >= Duration::from_secs(120) && second <= Duration::from_secs(150),
        "{second:?}"
    );

    // A success resets the backoff.
    tokio::time::advance(second).await;
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &Outcome::Success, None).await;
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &exhausted(None), None).await;
    assert!(state(&pool, 0).cooling[0].remaining <= Duration::from_secs(75));
}

#[test]
fn backoff_is_capped_at_an_hour() {
    let d = backoff(Duration::from_secs(60), 30);
    assert!(
        d >= Duration::from_secs(3600) && d <= Duration::from_secs(4500),
        "{d:?}"
    );
}

#[test]
fn daily_quota_resets_at_midnight_pacific() {
    // 2026-01-15T08:00:00Z is midnight in UTC-8.
    let midnight = UNIX_EPOCH + Duration::from_secs(1_768_464_000);
    assert_eq!(
        until_pacific_midnight(midnight),
        Duration::from_secs(86_400)
    );
    let before = midnight - Duration::from_secs(90);
    assert_eq!(until_pacific_midnight(before), Duration::from_secs(90));
    let after = midnight + Duration::from_secs(3600);
    assert_eq!(until_pacific_midnight(after), Duration::from_secs(82_800));
}

#[tokio::test(start_paused = true)]
async fn per_day_quota_parks_the_key_for_the_model_until_the_reset() {
    let pool = pool_of(1);
    let mut l = lease(&pool, MODEL);
    let per_day = Outcome::Exhausted {
        retry_delay: Some(Duration::from_secs(5)),
        per_day: true,
    };
    pool.report(&mut l, MODEL, &per_day, None).await;
    let expected = until_pacific_midnight(SystemTime::now());
    let remaining = state(&pool, 0).cooling[0].remaining;
    assert!(remaining + Duration::from_secs(2) >= expected && remaining <= expected);
    drop(lease(&pool, "gemini-2.5-pro"));
}

#[tokio::test(start_paused = true)]
async fn key_is_disabled_after_max_failures_in_a_row() {
    let pool = pool_of(1);
    for _ in 0..2 {
        let mut l = lease(&pool, MODEL);
        pool.report(
            &mut l,
            MODEL,
            &key_failure(),
            Some("400 API_KEY_INVALID".into()),
        )
        .await;
    }
    assert_eq!(state(&pool, 0).state, KeyState::Enabled);
    assert_eq!(state(&pool, 0).consecutive_failures, 2);
    assert_eq!(pool.usable_count(), 1);

    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &key_failure(), None).await;
    drop(l);
    assert!(matches!(state(&pool, 0).state, KeyState::Disabled { .. }));
    assert_eq!(pool.usable_count(), 0);
    assert_eq!(unavailable(&pool, MODEL), Unavailable::AllDisabled);
    assert_eq!(
        state(&pool, 0).last_error.as_deref(),
        Some("400 API_KEY_INVALID")
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_failure_count() {
    let pool = pool_of(1);
    for outcome in [
        key_failure(),
        key_failure(),
        Outcome::Success,
        key_failure(),
    ] {
        let mut l = lease(&pool, MODEL);
        pool.report(&mut l, MODEL, &outcome, None).await;
    }
    assert_eq!(state(&pool, 0).consecutive_failures, 1);
    assert_eq!(state(&pool, 0).state, KeyState::Enabled);
}

#[tokio::test(start_paused = true)]
async fn one_off_server_errors_and_client_errors_never_count_against_a_key() {
    let pool = pool_of(1);
    for outcome in [Outcome::Transient, Outcome::Final].iter().cycle().take(10) {
        let mut l = lease(&pool, MODEL);
        pool.report(&mut l, MODEL, outcome, None).await;
    }
    let s = state(&pool, 0);
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.consecutive_transient_failures, 0);
    assert_eq!(s.state, KeyState::Enabled);
    assert!(s.cooling.is_empty());
    assert_eq!(s.resting, None);
    drop(lease(&pool, MODEL));
}

fn resting_pool(keys_n: usize) -> Arc<KeyPool> {
    KeyPool::builder()
        .keys(keys(keys_n))
        .max_transient_failures(3)
        .cooldown(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn report_on(pool: &Arc<KeyPool>, i: usize, outcome: Outcome) {
    let id = pool.ids()[i].clone();
    let others: Vec<KeyId> = pool.ids().into_iter().filter(|k| *k != id).collect();
    let mut l = match pool.pick(MODEL, &others) {
        Pick::Key(l) => l,
        Pick::Unavailable(why) => panic!("key {i} unavailable: {why:?}"),
    };
    assert_eq!(l.id(), &id);
    pool.report(&mut l, MODEL, &outcome, Some("503 UNAVAILABLE".into()))
        .await;
}

#[tokio::test(start_paused = true)]
async fn repeated_server_errors_rest_the_key_for_every_model_then_it_comes_back() {
    let pool = resting_pool(1);
    for _ in 0..2 {
        report_on(&pool, 0, Outcome::Transient).await;
    }
    assert_eq!(state(&pool, 0).consecutive_transient_failures, 2);
    assert_eq!(state(&pool, 0).resting, None);
    drop(lease(&pool, MODEL));

    report_on(&pool, 0, Outcome::Transient).await;
    let s = state(&pool, 0);
    assert_eq!(s.state, KeyState::Enabled, "rested, not disabled");
    assert_eq!(s.resting, Some(Duration::from_secs(10)));
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.last_error.as_deref(), Some("503 UNAVAILABLE"));
    let json = s.to_json();
    assert_eq!(json["resting_seconds"], 10);
    assert_eq!(json["consecutive_transient_failures"], 3);
    // Out for every model, answered as a local 429 with the time left, still counted usable.
    assert_eq!(
        unavailable(&pool, MODEL),
        Unavailable::AllResting(Duration::from_secs(10))
    );
    assert!(matches!(
        unavailable(&pool, "gemini-2.5-pro"),
        Unavailable::AllResting(_)
    ));
    assert_eq!(pool.usable_count(), 1);

    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(
        unavailable(&pool, MODEL),
        Unavailable::AllResting(Duration::from_secs(1))
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(state(&pool, 0).resting, None);
    // Back: still failing, one more transient failure sends it back to rest at once.
    report_on(&pool, 0, Outcome::Transient).await;
    assert_eq!(state(&pool, 0).resting, Some(Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(10)).await;
    // Healthy again: a success ends the streak.
    report_on(&pool, 0, Outcome::Success).await;
    let s = state(&pool, 0);
    assert_eq!(s.consecutive_transient_failures, 0);
    assert_eq!(s.resting, None);
    report_on(&pool, 0, Outcome::Transient).await;
    assert_eq!(state(&pool, 0).resting, None);
}

#[tokio::test(start_paused = true)]
async fn a_success_between_server_errors_resets_the_streak() {
    let pool = resting_pool(1);
    for outcome in [
        Outcome::Transient,
        Outcome::Transient,
        Outcome::Success,
        Outcome::Transient,
        Outcome::Transient,
    ] {
        report_on(&pool, 0, outcome).await;
    }
    let s = state(&pool, 0);
    assert_eq!(s.consecutive_transient_failures, 2);
    assert_eq!(s.resting, None);
    drop(lease(&pool, MODEL));
}

#[tokio::test(start_paused = true)]
async fn a_resting_key_is_skipped_while_the_others_serve() {
    let pool = resting_pool(2);
    for _ in 0..3 {
        report_on(&pool, 0, Outcome::Transient).await;
    }
    for _ in 0..4 {
        let l = lease(&pool, MODEL);
        assert_eq!(l.id(), &pool.ids()[1]);
    }
    // Cooling for a model's quota wins the answer's wording when both apply.
    report_on(&pool, 1, exhausted(Some(Duration::from_secs(3)))).await;
    assert_eq!(
        unavailable(&pool, MODEL),
        Unavailable::AllCooling(Duration::from_secs(3))
    );
}

#[tokio::test(start_paused = true)]
async fn zero_max_transient_failures_never_rests_a_key() {
    let pool = KeyPool::builder()
        .keys(keys(1))
        .max_transient_failures(0)
        .build()
        .unwrap();
    for _ in 0..10 {
        report_on(&pool, 0, Outcome::Transient).await;
    }
    assert_eq!(state(&pool, 0).resting, None);
    drop(lease(&pool, MODEL));
}

#[tokio::test(start_paused = true)]
async fn enabling_a_resting_key_ends_its_rest() {
    let pool = resting_pool(1);
    for _ in 0..3 {
        report_on(&pool, 0, Outcome::Transient).await;
    }
    assert!(pool.enable(pool.ids()[0].as_str()).await);
    assert_eq!(state(&pool, 0).resting, None);
    drop(lease(&pool, MODEL));
}

async fn disabled_pool(reprobe: Duration) -> Arc<KeyPool> {
    let pool = KeyPool::builder()
        .keys(keys(1))
        .max_failures(1)
        .reprobe_after(reprobe)
        .build()
        .unwrap();
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &key_failure(), None).await;
    pool
}

#[tokio::test(start_paused = true)]
async fn disabled_key_is_reprobed_with_one_request_and_revived() {
    let pool = disabled_pool(Duration::from_secs(3600)).await;
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert_eq!(unavailable(&pool, MODEL), Unavailable::AllDisabled);

    tokio::time::advance(Duration::from_secs(1)).await;
    let mut probe = lease(&pool, MODEL);
    assert!(matches!(state(&pool, 0).state, KeyState::Probing { .. }));
    // Only one request probes: the next ones are refused meanwhile.
    for _ in 0..3 {
        assert_eq!(unavailable(&pool, MODEL), Unavailable::AllDisabled);
    }
    pool.report(&mut probe, MODEL, &Outcome::Success, None)
        .await;
    drop(probe);
    assert_eq!(state(&pool, 0).state, KeyState::Enabled);
    assert_eq!(state(&pool, 0).consecutive_failures, 0);
    drop(lease(&pool, MODEL));
}

#[tokio::test(start_paused = true)]
async fn failed_probe_disables_the_key_for_another_period() {
    let pool = disabled_pool(Duration::from_secs(100)).await;
    tokio::time::advance(Duration::from_secs(100)).await;
    let mut probe = lease(&pool, MODEL);
    pool.report(&mut probe, MODEL, &key_failure(), None).await;
    drop(probe);
    match state(&pool, 0).state {
        KeyState::Disabled { reprobe_in, .. } => assert_eq!(reprobe_in, Duration::from_secs(100)),
        other => panic!("{other:?}"),
    }
    tokio::time::advance(Duration::from_secs(99)).await;
    assert_eq!(unavailable(&pool, MODEL), Unavailable::AllDisabled);
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(lease(&pool, MODEL));
}

#[tokio::test(start_paused = true)]
async fn abandoned_or_inconclusive_probe_lets_the_next_request_probe() {
    let pool = disabled_pool(Duration::from_secs(10)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    drop(lease(&pool, MODEL)); // client went away mid-probe
    let mut probe = lease(&pool, MODEL);
    pool.report(&mut probe, MODEL, &Outcome::Transient, None)
        .await;
    drop(probe);
    assert!(matches!(state(&pool, 0).state, KeyState::Disabled { .. }));
    let mut probe = lease(&pool, MODEL);
    pool.report(&mut probe, MODEL, &Outcome::Success, None)
        .await;
    assert_eq!(state(&pool, 0).state, KeyState::Enabled);
}

#[tokio::test(start_paused = true)]
async fn keys_are_added_removed_and_enabled_at_run_time() {
    let pool = KeyPool::builder().max_failures(1).build().unwrap();
    assert_eq!(unavailable(&pool, MODEL), Unavailable::NoKeys);
    let id = pool.add_key(key(1)).unwrap();
    assert_eq!(pool.add_key(key(1)).unwrap(), id, "same key, same id");
    assert!(pool.add_key("").is_err());
    assert_eq!(
        id.as_str(),
        crate::secret::ApiKey::new(key(1)).fingerprint()
    );
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &key_failure(), None).await;
    drop(l);
    assert_eq!(pool.usable_count(), 0);
    assert!(pool.enable(id.as_str()).await);
    assert_eq!(pool.usable_count(), 1);
    assert!(pool.remove_key(id.as_str()));
    assert!(!pool.remove_key(id.as_str()));
    assert!(!pool.enable(id.as_str()).await);
    assert!(pool.is_empty());
}

#[tokio::test(start_paused = true)]
async fn snapshot_masks_keys_and_counts_requests() {
    let pool = pool_of(2);
    let held = lease(&pool, MODEL);
    let snap = pool.snapshot();
    assert_eq!(snap[0].masked, "AIza…0000");
    assert_eq!(snap[0].in_flight, 1);
    assert_eq!(snap[0].total_requests, 1);
    assert_eq!(snap[1].total_requests, 0);
    let json = snap[0].to_json().to_string();
    assert!(!json.contains(&key(0)), "{json}");
    assert!(json.contains(r#""state":"enabled""#), "{json}");
    drop(held);
    assert_eq!(state(&pool, 0).in_flight, 0);
    assert!(!format!("{pool:?}").contains("SyTestKey"));
}

#[tokio::test(start_paused = true)]
async fn pools_sharing_a_store_share_cooldowns_and_disabled_flags() {
    let store = Arc::new(KeyStateMemoryStore::new());
    let build = || {
        KeyPool::builder()
            .keys(keys(2))
            .max_failures(1)
            .store(store.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let mut l = lease(&a, MODEL); // key 0
    a.report(
        &mut l,
        MODEL,
        &exhausted(Some(Duration::from_secs(30))),
        None,
    )
    .await;
    let mut l = lease(&a, MODEL); // key 1
    a.report(&mut l, MODEL, &key_failure(), None).await;

    a.flush().await;
    b.sync().await.unwrap();
    let snap = b.snapshot();
    assert_eq!(snap[0].cooling.len(), 1);
    assert!(snap[0].cooling[0].remaining > Duration::from_secs(28));
    assert!(matches!(snap[1].state, KeyState::Disabled { .. }));
    assert!(matches!(unavailable(&b, MODEL), Unavailable::AllCooling(_)));

    // An operator enabling the key on one instance enables it everywhere.
    assert!(a.enable(snap[1].id.as_str()).await);
    tokio::time::advance(Duration::from_secs(5)).await;
    a.flush().await;
    b.sync().await.unwrap();
    assert_eq!(state(&b, 1).state, KeyState::Enabled);
}

#[tokio::test(start_paused = true)]
async fn a_rest_after_repeated_failures_is_shared_too() {
    let store = Arc::new(KeyStateMemoryStore::new());
    let build = || {
        KeyPool::builder()
            .keys(keys(1))
            .max_transient_failures(3)
            .cooldown(Duration::from_secs(10))
            .store(store.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    for _ in 0..3 {
        report_on(&a, 0, Outcome::Transient).await;
    }
    assert!(state(&a, 0).resting.is_some());
    a.flush().await;
    b.sync().await.unwrap();
    let s = state(&b, 0);
    assert!(
        s.resting.is_some_and(|r| r > Duration::from_secs(8)),
        "{s:?}"
    );
    assert!(
        s.cooling.is_empty(),
        "a rest is not a model's cool-down: {s:?}"
    );
    assert!(matches!(unavailable(&b, MODEL), Unavailable::AllResting(_)));
}

/// A store whose calls never finish (a Redis that stalls).
#[derive(Debug, Default)]
struct StalledStore;

impl KeyStateStore for StalledStore {
    fn cool_down<'a>(&'a self, _: &'a KeyId, _: &'a str, _: SystemTime) -> StoreFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
    fn disable<'a>(&'a self, _: &'a KeyId, _: &'a str, _: SystemTime) -> StoreFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
    fn enable<'a>(&'a self, _: &'a KeyId) -> StoreFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
    fn load(&self) -> StoreFuture<'_, std::collections::HashMap<KeyId, SharedKeyState>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_stalled_store_never_holds_up_a_request() {
    let pool = KeyPool::builder()
        .keys(keys(2))
        .store(Arc::new(StalledStore))
        .build()
        .unwrap();
    pool.maybe_sync();
    // Thousands of state changes while the store answers nothing: each report returns at
    // once, the key state is right locally, and what the queue could not hold is counted.
    for i in 0..3000 {
        let model = format!("gemini-test-{i}");
        let mut l = lease(&pool, &model);
        let outcome = exhausted(Some(Duration::from_secs(60)));
        let report = pool.report(&mut l, &model, &outcome, None);
        tokio::time::timeout(Duration::from_secs(5), report)
            .await
            .expect("report never waits on the store");
    }
    assert!(pool.store_writes_dropped() > 0);
    assert!(pool.store_writes_dropped() < 3000);
}

/// A shared store that can go down and come back empty (a Redis restarted without persistence).
#[derive(Debug, Default)]
struct FlakyStore {
    inner: Mutex<Arc<KeyStateMemoryStore>>,
    down: std::sync::atomic::AtomicBool,
}

impl FlakyStore {
    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn restart_empty(&self) {
        *self.inner.lock().unwrap() = Arc::new(KeyStateMemoryStore::new());
        self.set_down(false);
    }

    /// The store now, or the error of a store that is down.
    fn inner(&self) -> Result<Arc<KeyStateMemoryStore>, crate::Error> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::Error::store("connection refused"));
        }
        Ok(self.inner.lock().unwrap().clone())
    }
}

impl KeyStateStore for FlakyStore {
    fn cool_down<'a>(
        &'a self,
        key: &'a KeyId,
        model: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        let inner = self.inner();
        Box::pin(async move { inner?.cool_down(key, model, until).await })
    }
    fn disable<'a>(
        &'a self,
        key: &'a KeyId,
        reason: &'a str,
        reprobe_at: SystemTime,
    ) -> StoreFuture<'a, ()> {
        let inner = self.inner();
        Box::pin(async move { inner?.disable(key, reason, reprobe_at).await })
    }
    fn enable<'a>(&'a self, key: &'a KeyId) -> StoreFuture<'a, ()> {
        let inner = self.inner();
        Box::pin(async move { inner?.enable(key).await })
    }
    fn load(&self) -> StoreFuture<'_, std::collections::HashMap<KeyId, SharedKeyState>> {
        let inner = self.inner();
        Box::pin(async move { inner?.load().await })
    }
}

#[tokio::test(start_paused = true)]
async fn state_learnt_while_the_store_was_down_is_shared_once_it_is_back() {
    let store = Arc::new(FlakyStore::default());
    let build = || {
        KeyPool::builder()
            .keys(keys(2))
            .max_failures(1)
            .store(store.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    store.set_down(true);
    let mut l = lease(&a, MODEL); // key 0
    a.report(
        &mut l,
        MODEL,
        &exhausted(Some(Duration::from_secs(30))),
        None,
    )
    .await;
    let mut l = lease(&a, MODEL); // key 1
    a.report(&mut l, MODEL, &key_failure(), None).await;
    a.flush().await;
    assert!(b.sync().await.is_err());
    assert_eq!(b.usable_count(), 2, "b heard nothing");

    // Back, empty: a sends what it learnt, and keeps its own disabled flag (an empty view is
    // no operator's enable).
    store.restart_empty();
    tokio::time::advance(Duration::from_secs(5)).await;
    a.sync().await.unwrap();
    assert!(matches!(state(&a, 1).state, KeyState::Disabled { .. }));
    a.flush().await;
    b.sync().await.unwrap();
    let snap = b.snapshot();
    assert_eq!(snap[0].cooling.len(), 1, "{snap:?}");
    assert!(matches!(snap[1].state, KeyState::Disabled { .. }));
    assert!(matches!(unavailable(&b, MODEL), Unavailable::AllCooling(_)));
}

// === layer ===

#[tokio::test(start_paused = true)]
async fn rotates_on_429() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| {
        Ok(if c.key == key(0) {
            quota_429(
                Some("12s"),
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            )
        } else {
            ok_answer()
        })
    });
    let pool = pool_of(2);
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    let res = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.keys(), [key(0), key(1)]);
    let cooling = &state(&pool, 0).cooling;
    assert_eq!(cooling[0].model, MODEL);
    assert_eq!(cooling[0].remaining, Duration::from_secs(12));
}

#[tokio::test(start_paused = true)]
async fn quota_on_one_model_does_not_stop_the_key_on_another() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| {
        Ok(if c.uri.contains("gemini-2.5-pro") {
            quota_429(Some("30s"), "GenerateRequestsPerMinutePerProjectPerModel")
        } else {
            ok_answer()
        })
    });
    let svc = stack(KeyRotationLayer::round_robin(keys(1)).unwrap(), up);
    let pro = "/v1beta/models/gemini-2.5-pro:generateContent";
    assert_eq!(send(&svc, post(pro, "{}")).await.status(), 429);
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 200);
    // Pro is refused locally now, without an upstream call.
    let res = send(&svc, post(pro, "{}")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(calls.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn all_cooling_answers_429_with_retry_after_without_calling_upstream() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| {
        Ok(if c.key == key(0) {
            quota_429(Some("20s"), "GenerateRequestsPerMinutePerProjectPerModel")
        } else {
            quota_429(Some("7.5s"), "GenerateRequestsPerMinutePerProjectPerModel")
        })
    });
    let pool = pool_of(2);
    let svc = stack(KeyRotationLayer::new(pool), up);
    // The first request tries both keys and relays the last 429.
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 429);
    assert_eq!(calls.len(), 2);

    let res = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "8");
    let body = text(res).await;
    assert!(body.contains("RESOURCE_EXHAUSTED"), "{body}");
    assert!(!body.contains("AIza"), "{body}");
    assert_eq!(calls.len(), 2, "no upstream call");
}

#[tokio::test(start_paused = true)]
async fn upstream_failing_with_every_key_answers_429_until_the_rests_end() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(json(503, OVERLOADED_503)));
    let pool = KeyPool::builder()
        .keys(keys(2))
        .cooldown(Duration::from_secs(30))
        .build()
        .unwrap();
    let svc = stack(
        KeyRotationLayer::new(pool.clone()).retry_backoff(Duration::from_millis(10)),
        up,
    );
    // Default threshold 3: three requests, each trying both keys, relay the upstream's 503.
    for _ in 0..3 {
        assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 503);
    }
    assert_eq!(calls.len(), 6);
    assert!(pool.snapshot().iter().all(|s| s.resting.is_some()));

    let res = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "30");
    let body = text(res).await;
    assert!(body.contains("failed repeatedly"), "{body}");
    assert!(!body.contains("AIza"), "{body}");
    assert_eq!(calls.len(), 6, "no upstream call while every key rests");

    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 503);
    assert!(calls.len() > 6, "the keys came back");
}

#[tokio::test(start_paused = true)]
async fn all_disabled_answers_503_in_the_route_dialect() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| Ok(invalid_key_400(&c.key)));
    let pool = KeyPool::builder()
        .keys(keys(2))
        .max_failures(1)
        .build()
        .unwrap();
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 400);
    assert_eq!(calls.len(), 2);
    assert_eq!(pool.usable_count(), 0);

    let res = send(&svc, post("/v1/chat/completions", "{}")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(
        body["error"]["type"], "server_error",
        "OpenAI shape: {body}"
    );
    assert!(!body.to_string().contains("AIza"));
    assert_eq!(calls.len(), 2, "no upstream call");
}

#[tokio::test(start_paused = true)]
async fn clients_400_passes_through_untouched_without_retry() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(json(400, BAD_REQUEST_400)));
    let pool = pool_of(3);
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    for _ in 0..5 {
        let res = send(&svc, post(GENERATE, "{\"foo\":1}")).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(text(res).await, BAD_REQUEST_400);
    }
    assert_eq!(calls.len(), 5, "one attempt per request");
    for s in pool.snapshot() {
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.state, KeyState::Enabled);
    }
}

#[tokio::test(start_paused = true)]
async fn a_404_that_names_no_model_is_relayed_without_retry() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| {
        Ok(json(
            404,
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#,
        ))
    });
    let svc = stack(KeyRotationLayer::round_robin(keys(3)).unwrap(), up);
    let res = send(&svc, post("/v1beta/models/nope:generateContent", "{}")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(calls.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_404_naming_the_model_tries_each_key_once_then_relays_googles_404() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| {
        Ok(json(
            404,
            r#"{"error":{"code":404,"message":"models/nope is not found","status":"NOT_FOUND"}}"#,
        ))
    });
    let pool = pool_of(3);
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    let res = send(&svc, post("/v1beta/models/nope:generateContent", "{}")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        text(res).await,
        r#"{"error":{"code":404,"message":"models/nope is not found","status":"NOT_FOUND"}}"#
    );
    assert_eq!(
        calls.len(),
        3,
        "a model one key cannot use may serve on another"
    );
    // Set aside per (key, model), never disabled: the next request is answered here.
    let res = send(&svc, post("/v1beta/models/nope:generateContent", "{}")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(calls.len(), 3);
    for s in pool.snapshot() {
        assert_eq!(s.state, KeyState::Enabled);
    }
}

#[tokio::test(start_paused = true)]
async fn refused_models_kept_per_key_are_bounded() {
    let calls = Calls::default();
    let up = upstream(&calls, |call, _| {
        let model = call.uri.split('/').nth(3).unwrap_or("");
        let model = model.split(':').next().unwrap_or("");
        Ok(json(
            404,
            format!(
                r#"{{"error":{{"code":404,"message":"models/{model} is not found","status":"NOT_FOUND"}}}}"#
            ),
        ))
    });
    let pool = pool_of(1);
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    for i in 0..300 {
        let path = format!("/v1beta/models/m{i}:generateContent");
        let res = send(&svc, post(&path, "{}")).await;
        assert_eq!(res.status(), 404);
    }
    let kept = pool.snapshot()[0].cooling.len();
    assert_eq!(
        kept, 256,
        "a client naming many models cannot grow a key's state without bound"
    );
}

#[tokio::test(start_paused = true)]
async fn key_echoed_in_an_error_body_is_scrubbed() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| Ok(invalid_key_400(&c.key)));
    let pool = pool_of(2);
    let svc = stack(KeyRotationLayer::new(pool), up);
    let res = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(res.status(), 400);
    let len: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = text(res).await;
    assert_eq!(len, body.len());
    assert!(!body.contains(&key(0)) && !body.contains(&key(1)), "{body}");
    assert!(!body.contains("SyTestKey0000"), "{body}");
    assert!(body.contains("api_key:AIza…0001"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn client_credentials_never_reach_upstream() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(ok_answer()));
    let svc = stack(KeyRotationLayer::round_robin(keys(1)).unwrap(), up);
    let req = Request::post(format!("{GENERATE}?key=client-token-123&alt=sse"))
        .header("authorization", "Bearer client-token-123")
        .header("x-goog-api-key", "client-token-123")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&svc, req).await.status(), 200);
    let call = calls.get(0);
    assert_eq!(call.uri, format!("{GENERATE}?alt=sse"));
    assert!(call.headers.get("authorization").is_none());
    assert_eq!(call.headers.get_all("x-goog-api-key").iter().count(), 1);
    assert_eq!(call.key, key(0));
    assert!(call.headers["x-goog-api-key"].is_sensitive());
}

#[tokio::test(start_paused = true)]
async fn body_is_replayed_identically_on_retry() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, n| {
        Ok(match n {
            0 => quota_429(None, "GenerateRequestsPerMinutePerProjectPerModel"),
            1 => invalid_key_400("x"),
            2 => json(503, OVERLOADED_503),
            _ => ok_answer(),
        })
    });
    let svc = stack(KeyRotationLayer::round_robin(keys(4)).unwrap(), up);
    let payload = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;
    let req = Request::post(GENERATE)
        .header("content-type", "application/json")
        .body(Body::from(payload))
        .unwrap();
    assert_eq!(send(&svc, req).await.status(), 200);
    assert_eq!(calls.len(), 4);
    for i in 0..4 {
        assert_eq!(calls.get(i).body, payload.as_bytes());
        assert_eq!(calls.get(i).headers["content-type"], "application/json");
    }
    assert_eq!(calls.keys(), keys(4));
}

#[tokio::test(start_paused = true)]
async fn streaming_request_body_gets_one_attempt() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| {
        Ok(quota_429(
            None,
            "GenerateRequestsPerMinutePerProjectPerModel",
        ))
    });
    let svc = stack(KeyRotationLayer::round_robin(keys(3)).unwrap(), up);
    let frames = vec![Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{}")))];
    let body = Body::new(StreamBody::new(tokio_stream(frames)));
    let res = send(&svc, Request::post(GENERATE).body(body).unwrap()).await;
    assert_eq!(res.status(), 429);
    assert_eq!(calls.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn ok_stream_is_not_retried() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"data: {}\r\n\r\n"))),
            Err::<Frame<Bytes>, BoxError>("connection reset".into()),
        ];
        Ok(Response::new(Body::new(StreamBody::new(tokio_stream(
            frames,
        )))))
    });
    let svc = stack(KeyRotationLayer::round_robin(keys(3)).unwrap(), up);
    let res = send(
        &svc,
        post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "{}",
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(collect_limited(res.into_body(), 1024).await.is_err());
    assert_eq!(calls.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_backoff_and_leave_keys_alone() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, n| {
        Ok(if n < 2 {
            json(503, OVERLOADED_503)
        } else {
            ok_answer()
        })
    });
    let pool = pool_of(3);
    let svc = stack(
        KeyRotationLayer::new(pool.clone()).retry_backoff(Duration::from_secs(1)),
        up,
    );
    let start = tokio::time::Instant::now();
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 200);
    assert_eq!(calls.len(), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(3), "1 s then 2 s");
    for s in pool.snapshot() {
        assert_eq!(s.state, KeyState::Enabled);
        assert_eq!(s.consecutive_failures, 0);
        assert!(s.cooling.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn single_key_is_retried_after_a_server_error() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, n| {
        Ok(if n == 0 {
            json(
                500,
                r#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#,
            )
        } else {
            ok_answer()
        })
    });
    let svc = stack(
        KeyRotationLayer::round_robin(keys(1))
            .unwrap()
            .max_attempts(2),
        up,
    );
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 200);
    assert_eq!(calls.keys(), [key(0), key(0)]);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_then_answered_502() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| {
        Err(
            "connection refused to https://upstream/?key=AIzaSyTestKey00000000000000000000000000"
                .into(),
        )
    });
    let pool = pool_of(2);
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    let res = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(!text(res).await.contains("SyTestKey"));
    assert_eq!(calls.len(), 2);
    assert!(pool.snapshot().iter().all(|s| s.consecutive_failures == 0));
}

#[tokio::test(start_paused = true)]
async fn invalid_key_is_disabled_and_the_client_never_notices() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| {
        Ok(if c.key == key(0) {
            invalid_key_400(&c.key)
        } else {
            ok_answer()
        })
    });
    let pool = pool_of(2);
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    for _ in 0..6 {
        assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 200);
    }
    assert!(matches!(
        state(&pool, 0).state,
        KeyState::Disabled { ref reason, .. } if reason == "API_KEY_INVALID"
    ));
    let used_bad = calls.keys().iter().filter(|k| **k == key(0)).count();
    assert_eq!(used_bad, 3, "used at most max_failures times");
}

#[tokio::test(start_paused = true)]
async fn round_robin_distributes_exactly() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(ok_answer()));
    let svc = stack(KeyRotationLayer::round_robin(keys(3)).unwrap(), up);
    for _ in 0..9 {
        send(&svc, post(GENERATE, "{}")).await;
    }
    let expected: Vec<String> = (0..9).map(|i| key(i % 3)).collect();
    assert_eq!(calls.keys(), expected);
}

#[tokio::test(start_paused = true)]
async fn round_robin_skips_a_cooling_key() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| {
        Ok(if c.key == key(1) {
            quota_429(Some("60s"), "GenerateRequestsPerMinutePerProjectPerModel")
        } else {
            ok_answer()
        })
    });
    let svc = stack(KeyRotationLayer::round_robin(keys(3)).unwrap(), up);
    for _ in 0..5 {
        assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 200);
    }
    // 0, 1 (429) → 2, then 0, 2, 0 … never 1 again.
    assert_eq!(
        calls.keys(),
        [key(0), key(1), key(2), key(0), key(2), key(0)]
    );
}

#[tokio::test(start_paused = true)]
async fn least_used_picks_the_idle_key() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| {
        // A stream that stays open until the client drops it.
        Ok(Response::new(Body::new(StreamBody::new(PendingStream))))
    });
    let pool = KeyPool::builder()
        .keys(keys(3))
        .strategy(Strategy::LeastUsed)
        .build()
        .unwrap();
    let svc = stack(KeyRotationLayer::new(pool.clone()), up);
    let a = send(&svc, post(GENERATE, "{}")).await;
    let b = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(calls.keys(), [key(0), key(1)]);
    assert_eq!(pool.snapshot()[0].in_flight, 1);
    drop(a);
    // Key 0 is idle again but was used recently; key 2 was never used.
    let _c = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(calls.keys()[2], key(2));
    let _d = send(&svc, post(GENERATE, "{}")).await;
    assert_eq!(calls.keys()[3], key(0), "the only idle key");
    drop(b);
}

#[tokio::test(start_paused = true)]
async fn weighted_distributes_by_weight() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(ok_answer()));
    let pool = KeyPool::builder()
        .weighted_key(key(0), 3)
        .weighted_key(key(1), 1)
        .strategy(Strategy::Weighted)
        .build()
        .unwrap();
    let svc = stack(KeyRotationLayer::new(pool), up);
    for _ in 0..8 {
        send(&svc, post(GENERATE, "{}")).await;
    }
    let firsts = calls.keys().iter().filter(|k| **k == key(0)).count();
    assert_eq!(firsts, 6);
}

#[tokio::test(start_paused = true)]
async fn random_uses_only_usable_keys() {
    let calls = Calls::default();
    let up = upstream(&calls, |c, _| {
        Ok(if c.key == key(0) {
            invalid_key_400(&c.key)
        } else {
            ok_answer()
        })
    });
    let pool = KeyPool::builder()
        .keys(keys(4))
        .strategy(Strategy::Random)
        .max_failures(1)
        .build()
        .unwrap();
    let svc = stack(KeyRotationLayer::new(pool), up);
    for _ in 0..40 {
        assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 200);
    }
    let keys_used = calls.keys();
    assert!(keys_used.iter().filter(|k| **k == key(0)).count() <= 1);
    for i in 1..4 {
        assert!(keys_used.contains(&key(i)), "key {i} never used");
    }
}

#[tokio::test(start_paused = true)]
async fn models_list_uses_a_key_too() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(json(200, r#"{"models":[]}"#)));
    let svc = stack(KeyRotationLayer::round_robin(keys(1)).unwrap(), up);
    let res = send(
        &svc,
        Request::get("/v1beta/models?pageSize=5")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(calls.get(0).key, key(0));
}

#[tokio::test(start_paused = true)]
async fn empty_pool_answers_503() {
    let calls = Calls::default();
    let up = upstream(&calls, |_, _| Ok(ok_answer()));
    let pool = KeyPool::builder().build().unwrap();
    let svc = stack(KeyRotationLayer::new(pool), up);
    assert_eq!(send(&svc, post(GENERATE, "{}")).await.status(), 503);
    assert_eq!(calls.len(), 0);
}

// === streams for tests ===

struct VecStream<T>(std::vec::IntoIter<T>);

impl<T: Unpin> futures_core::Stream for VecStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        std::task::Poll::Ready(self.0.next())
    }
}

fn tokio_stream<T: Unpin>(items: Vec<T>) -> VecStream<T> {
    VecStream(items.into_iter())
}

/// A stream that never yields: an open SSE stream with nothing to say yet.
struct PendingStream;

impl futures_core::Stream for PendingStream {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Pending
    }
}

// === redis ===

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;

    async fn store(test: &str) -> Option<Arc<KeyStateRedisStore>> {
        let Ok(url) = std::env::var("REDIS_URL") else {
            println!("skipping: no redis at REDIS_URL (unset)");
            return None;
        };
        match KeyStateRedisStore::connect(&url).await {
            Ok(s) => {
                let nonce = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                Some(Arc::new(
                    s.with_prefix(format!("tower-gemini-test:{test}:{nonce}")),
                ))
            }
            Err(e) => {
                println!("skipping: no redis at {} ({e})", crate::secret::scrub(&url));
                None
            }
        }
    }

    #[tokio::test]
    async fn redis_store_shares_cooldowns_and_disabled_flags() {
        let Some(store) = store("share").await else {
            return;
        };
        let build = || {
            KeyPool::builder()
                .keys(keys(2))
                .max_failures(1)
                .store(store.clone())
                .build()
                .unwrap()
        };
        let (a, b) = (build(), build());
        let mut l = lease(&a, MODEL);
        a.report(
            &mut l,
            MODEL,
            &exhausted(Some(Duration::from_secs(30))),
            None,
        )
        .await;
        let mut l = lease(&a, MODEL);
        a.report(&mut l, MODEL, &key_failure(), None).await;

        a.flush().await;
        b.sync().await.unwrap();
        let snap = b.snapshot();
        assert_eq!(snap[0].cooling.len(), 1, "{snap:?}");
        assert_eq!(snap[0].cooling[0].model, MODEL);
        assert!(snap[0].cooling[0].remaining > Duration::from_secs(25));
        assert!(matches!(
            snap[1].state,
            KeyState::Disabled { ref reason, .. } if reason == "API_KEY_INVALID"
        ));
        assert!(matches!(unavailable(&b, MODEL), Unavailable::AllCooling(_)));
        store.clear().await.unwrap();
    }

    #[tokio::test]
    async fn redis_store_round_trips_enable() {
        let Some(store) = store("enable").await else {
            return;
        };
        let id = KeyId::new("abcd1234");
        let later = SystemTime::now() + Duration::from_secs(60);
        store
            .disable(&id, "PERMISSION_DENIED", later)
            .await
            .unwrap();
        let loaded = store.load().await.unwrap();
        assert_eq!(
            loaded["abcd1234"].disabled.as_ref().map(|d| d.0.as_str()),
            Some("PERMISSION_DENIED")
        );
        store.enable(&id).await.unwrap();
        assert!(!store.load().await.unwrap().contains_key("abcd1234"));
        store.clear().await.unwrap();
    }
}

#[tokio::test]
async fn durations_past_the_end_of_time_park_a_key_instead_of_panicking() {
    // A cool-down and a re-probe period of `Duration::MAX` overflow `Instant` if added as is.
    let pool = KeyPool::builder()
        .keys(keys(2))
        .max_failures(1)
        .cooldown(Duration::MAX)
        .reprobe_after(Duration::MAX)
        .build()
        .unwrap();
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &key_failure(), None).await;
    drop(l);
    let mut l = lease(&pool, MODEL);
    pool.report(&mut l, MODEL, &exhausted(None), None).await;
    drop(l);
    assert!(matches!(state(&pool, 0).state, KeyState::Disabled { .. }));
    assert!(!state(&pool, 1).cooling.is_empty());
    assert!(matches!(
        unavailable(&pool, MODEL),
        Unavailable::AllCooling(_)
    ));
}

// === pinned requests ===

fn pinned(pool: &Arc<KeyPool>, i: usize, resource: &str) -> Request<Body> {
    let mut req = Request::post(GENERATE).body(Body::from("{}")).unwrap();
    let id = pool.ids()[i].clone();
    req.extensions_mut()
        .insert(crate::facts::KeyPin::new(id.as_str(), resource));
    req
}

#[tokio::test]
async fn a_pinned_request_uses_its_key_only_and_a_403_on_it_is_not_the_keys_fault() {
    let pool = pool_of(3);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let upstream = service_fn(move |req: Request<Body>| {
        s.lock()
            .unwrap()
            .push(req.headers()["x-goog-api-key"].to_str().unwrap().to_owned());
        async {
            Ok::<_, Infallible>(json(
                403,
                r#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#,
            ))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(pool.clone()))
        .service(upstream);
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(pinned(&pool, 2, "files/abc"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(*seen.lock().unwrap(), vec![key(2); 5], "never another key");
    assert_eq!(pool.usable_count(), 3, "no key disabled");
    assert_eq!(state(&pool, 2).consecutive_failures, 0);
}

#[tokio::test]
async fn a_pinned_request_whose_key_is_disabled_or_gone_names_the_resource() {
    let pool = KeyPool::builder()
        .keys(keys(2))
        .max_failures(1)
        .build()
        .unwrap();
    let mut l = lease(&pool, MODEL);
    let first = l.id().clone();
    pool.report(&mut l, MODEL, &key_failure(), None).await;
    drop(l);
    let i = pool.ids().iter().position(|k| *k == first).unwrap();
    let upstream = service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(ok_answer()) });
    let svc = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(pool.clone()))
        .service(upstream);
    let res = svc
        .clone()
        .oneshot(pinned(&pool, i, "files/abc"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = collect_limited(res.into_body(), 4096).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("files/abc"));
    let other = 1 - i;
    let req = pinned(&pool, other, "cachedContents/c");
    assert!(pool.remove_key(pool.ids()[other].as_str()));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body = collect_limited(res.into_body(), 4096).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("cachedContents/c"));
}

#[tokio::test]
async fn each_attempt_tells_the_service_below_which_pool_key_it_carries() {
    use crate::facts::UpstreamKey;
    let pool = pool_of(2);
    let ids = pool.ids();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(pool.clone()))
        .service(service_fn(move |req: Request<Body>| {
            let log = log.clone();
            async move {
                let fact = req
                    .extensions()
                    .get::<UpstreamKey>()
                    .unwrap()
                    .id()
                    .to_owned();
                let header = req.headers()["x-goog-api-key"].to_str().unwrap().to_owned();
                let first = log.lock().unwrap().is_empty();
                log.lock().unwrap().push((fact, header));
                // The first attempt's key is refused: the retry must carry the other one.
                let status = if first {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::OK
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Body::from("{}"))
                        .unwrap(),
                )
            }
        }));
    let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].0, seen[1].0);
    for (id, header) in seen {
        let i = ids
            .iter()
            .position(|k| k.as_str() == id)
            .expect("a pool id");
        assert_eq!(header, key(i), "the fact names the key the header carries");
    }
}
