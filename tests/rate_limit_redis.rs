//! RateLimit over Redis: two gateway instances share one quota, and a Redis that is down or
//! silent fails open or closed as configured, without hanging.
//!
//! The shared-quota tests need a Redis at `REDIS_URL` (e.g. `redis://127.0.0.1:6379`); without
//! one they print "skipping: no redis at ..." and pass. The failure tests need none.
#![cfg(all(feature = "rate-limit", feature = "redis"))]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use support::redis_url;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::Body;
use tower_gemini::facts::Identity;
use tower_gemini::rate_limit::{
    Check, RateLimitLayer, RateLimitRedisStore, RateLimitStore, Rule, Settlement,
};

type Svc = tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// A key prefix no other test run shares.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tower-gemini-test:{test}:{}:{nanos}:", std::process::id())
}

fn instance(store: RateLimitRedisStore, rule: Rule, fail_open: bool) -> Svc {
    let layer = RateLimitLayer::builder()
        .rule(rule)
        .store(store)
        .fail_open(fail_open)
        .build()
        .expect("valid layer");
    Svc::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::from("ok")))
            })),
    )
}

fn req(client: &str) -> Request<Body> {
    let mut r = Request::builder()
        .method("POST")
        .uri("/v1beta/models/gemini-2.5-flash:generateContent")
        .body(Body::from("{}"))
        .expect("valid request");
    r.extensions_mut()
        .insert(Identity::new(client, format!("sk-{client}…0001"), false));
    r
}

/// Every call must answer well within this, whatever Redis does.
async fn answer(svc: &Svc, r: Request<Body>) -> Response<Body> {
    tokio::time::timeout(Duration::from_secs(3), svc.clone().oneshot(r))
        .await
        .expect("the layer must not hang on Redis")
        .unwrap_or_else(|e: Infallible| match e {})
}

#[tokio::test]
async fn two_instances_share_one_quota() {
    let Some(url) = redis_url().await else {
        return;
    };
    let prefix = unique_prefix("shared");
    let rule = || Rule::per_client().requests_per_minute(5);
    let a = instance(
        RateLimitRedisStore::new(&url).unwrap().key_prefix(&prefix),
        rule(),
        false,
    );
    let b = instance(
        RateLimitRedisStore::new(&url).unwrap().key_prefix(&prefix),
        rule(),
        false,
    );
    let mut allowed = 0;
    let mut last = None;
    for i in 0..12 {
        let svc = if i % 2 == 0 { &a } else { &b };
        let res = answer(svc, req("alice")).await;
        match res.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => last = Some(res),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        allowed, 5,
        "exactly the shared quota, across both instances"
    );
    let refused = last.expect("some requests were refused");
    assert_eq!(refused.headers()["x-ratelimit-limit"], "5");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    // Another client has its own quota on both instances.
    assert_eq!(answer(&b, req("bob")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn settlements_are_seen_by_every_instance() {
    let Some(url) = redis_url().await else {
        return;
    };
    let prefix = unique_prefix("settle");
    let a = RateLimitRedisStore::new(&url).unwrap().key_prefix(&prefix);
    let b = RateLimitRedisStore::new(&url).unwrap().key_prefix(&prefix);
    // 1000 tokens per minute.
    let check = |cost| Check {
        key: "t|c=alice".to_owned(),
        interval: Duration::from_millis(60),
        capacity: 1000,
        cost,
    };
    let out = a.check(&[check(100)]).await.unwrap();
    assert!(out[0].allowed);
    assert_eq!(out[0].remaining, 900);
    // The call used 700: settle +600 on instance A ...
    a.settle(vec![Settlement {
        key: "t|c=alice".to_owned(),
        interval: Duration::from_millis(60),
        delta: 600,
    }])
    .await
    .unwrap();
    // ... and instance B sees 1000 - 700 - 100 (a few tokens may have refilled meanwhile).
    let out = b.check(&[check(100)]).await.unwrap();
    assert!(out[0].allowed);
    assert!((200..=205).contains(&out[0].remaining), "{:?}", out[0]);
    // All or nothing: a request whose second bucket refuses charges neither.
    let other = Check {
        key: "r|c=alice".to_owned(),
        interval: Duration::from_secs(1),
        capacity: 1,
        cost: 5,
    };
    let out = b.check(&[check(1), other]).await.unwrap();
    assert!(out[0].allowed && !out[1].allowed);
    let out = a.check(&[check(1)]).await.unwrap();
    assert!((199..=204).contains(&out[0].remaining), "{:?}", out[0]);
}

#[tokio::test]
async fn redis_down_fails_open_without_hanging() {
    let store = RateLimitRedisStore::new("redis://127.0.0.1:1").unwrap();
    let svc = instance(store, Rule::per_client().requests_per_minute(1), true);
    for _ in 0..3 {
        let res = answer(&svc, req("alice")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn redis_down_fails_closed_when_configured() {
    let store = RateLimitRedisStore::new("redis://127.0.0.1:1").unwrap();
    let svc = instance(store, Rule::per_client().requests_per_minute(1), false);
    let res = answer(&svc, req("alice")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_silent_redis_times_out_instead_of_hanging() {
    // Accepts connections and never answers a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let store = RateLimitRedisStore::new(&format!("redis://{addr}"))
        .unwrap()
        .timeout(Duration::from_millis(200));
    let closed = instance(store, Rule::per_client().requests_per_minute(1), false);
    assert_eq!(
        answer(&closed, req("alice")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let store = RateLimitRedisStore::new(&format!("redis://{addr}"))
        .unwrap()
        .timeout(Duration::from_millis(200));
    let open = instance(store, Rule::per_client().requests_per_minute(1), true);
    assert_eq!(answer(&open, req("alice")).await.status(), StatusCode::OK);
    held.abort();
}

#[test]
fn a_bad_url_is_a_config_error_that_hides_the_url() {
    let err = RateLimitRedisStore::new("nope://user:hunter2@host").unwrap_err();
    assert!(err.is_config());
    assert!(!err.to_string().contains("hunter2"));
    assert!(!format!("{err:?}").contains("hunter2"));
}
