use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::body::Body;
use crate::facts::{Account, Identity};

const DEC_3: u64 = 1_796_256_000; // 2026-12-03T00:00:00Z

#[test]
fn periods_are_utc_days_and_calendar_months() {
    assert_eq!(Period::Day.label(DEC_3 + 3_600), 20_261_203);
    assert_eq!(Period::Month.label(DEC_3), 202_612);
    assert_eq!(Period::Day.reset(DEC_3 + 3_600), DEC_3 + 86_400);
    // December rolls over into the next year.
    assert_eq!(
        Account::format_time(Period::Month.reset(DEC_3)),
        "2027-01-01T00:00:00Z"
    );
    assert_eq!(
        Account::format_time(Period::Month.reset(DEC_3 - 3 * 86_400)),
        "2026-12-01T00:00:00Z",
        "November ends on the first of December"
    );
}

#[test]
fn model_patterns() {
    let a = Account {
        models: Some(vec!["gemini-2.5-flash".into(), "gemini-3*-pro*".into()]),
        ..Account::default()
    };
    assert!(a.allows_model("gemini-2.5-flash"));
    assert!(a.allows_model("models/gemini-2.5-flash"));
    assert!(!a.allows_model("gemini-2.5-flash-lite"));
    assert!(a.allows_model("gemini-3-pro-preview"));
    assert!(a.allows_model("gemini-3.1-pro"));
    assert!(!a.allows_model("gemini-3-flash"));
    assert!(Account::default().allows_model("anything"));
    let none = Account {
        models: Some(vec![]),
        ..Account::default()
    };
    assert!(
        !none.allows_model("gemini-2.5-flash"),
        "an empty list allows nothing"
    );
}

#[tokio::test]
async fn memory_store_counts_per_period() {
    let s = MemoryBudgetStore::new();
    s.record("tok_a", 10, DEC_3).await.unwrap();
    s.record("tok_b", 5, DEC_3).await.unwrap();
    s.record("tok_a", 7, DEC_3 + 86_400).await.unwrap();
    let u = s.usage("tok_a", DEC_3 + 86_400).await.unwrap();
    assert_eq!(
        u.day,
        Usage {
            requests: 1,
            tokens: 7
        }
    );
    assert_eq!(
        u.month,
        Usage {
            requests: 2,
            tokens: 17
        }
    );
    assert_eq!(s.usage("tok_b", DEC_3).await.unwrap().day.tokens, 5);
}

fn request(account: Account, model: &str) -> Request<Body> {
    let mut req = Request::post(format!("/v1beta/models/{model}:generateContent"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(
        Identity::new("team", "tok_0123456789ab", false).with_account(Some(Arc::new(account))),
    );
    req
}

async fn call(layer: &AccountLayer, req: Request<Body>) -> Response<Body> {
    let ok = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
    });
    layer
        .layer(ok)
        .ready()
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_model_outside_the_list_is_a_403_naming_it() {
    let layer = AccountLayer::new(Arc::new(MemoryBudgetStore::new()));
    let only_flash = Account {
        models: Some(vec!["gemini-2.5-flash".into()]),
        ..Account::default()
    };
    let res = call(&layer, request(only_flash.clone(), "gemini-2.5-flash")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = call(&layer, request(only_flash, "gemini-2.5-pro")).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = crate::body::collect_limited(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("`gemini-2.5-pro` is not allowed"), "{text}");
}

#[tokio::test]
async fn a_spent_budget_is_a_429_until_the_period_resets() {
    let store = Arc::new(MemoryBudgetStore::new());
    let layer = AccountLayer::new(store.clone());
    let budget = Account {
        daily_token_budget: Some(1_000),
        ..Account::default()
    };
    let now = crate::rfc3339::now();
    store.record("tok_0123456789ab", 999, now).await.unwrap();
    let res = call(&layer, request(budget.clone(), "gemini-2.5-flash")).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "999 of 1000 used: still allowed"
    );
    store.record("tok_0123456789ab", 5, now).await.unwrap();
    let res = call(&layer, request(budget, "gemini-2.5-flash")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = Period::Day.reset(now) - now;
    assert!(retry.abs_diff(left) <= 2, "{retry} vs {left}");
    let body = crate::body::collect_limited(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("daily token budget") && text.contains("1004 used"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stalled_store_never_holds_a_request_past_the_budget() {
    struct Stalled;
    impl BudgetStore for Stalled {
        fn usage<'a>(&'a self, _: &'a str, _: u64) -> StoreFuture<'a, PeriodUsage> {
            Box::pin(std::future::pending())
        }
        fn record<'a>(&'a self, _: &'a str, _: u64, _: u64) -> StoreFuture<'a, ()> {
            Box::pin(std::future::pending())
        }
        fn kind(&self) -> &'static str {
            "stalled"
        }
    }
    let budget = Account {
        monthly_token_budget: Some(1),
        ..Account::default()
    };
    let open = AccountLayer::new(Arc::new(Stalled)).timeout(Duration::from_millis(20));
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        call(&open, request(budget.clone(), "gemini-2.5-flash")),
    )
    .await
    .expect("bounded");
    assert_eq!(res.status(), StatusCode::OK, "fail open");
    let closed = AccountLayer::new(Arc::new(Stalled))
        .timeout(Duration::from_millis(20))
        .fail_open(false);
    let res = call(&closed, request(budget, "gemini-2.5-flash")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}
