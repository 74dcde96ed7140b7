//! examples/client.rs against FakeGemini: KeyRotation around reqwest, no proxy in between.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/client.rs"]
#[allow(dead_code)]
mod client;

use tower_gemini::testing::FakeGemini;

#[tokio::test]
async fn the_pool_steps_around_a_tired_and_a_broken_key() {
    let (answer, pool, fake) = client::demo("why bees dance").await.unwrap();
    assert_eq!(answer, FakeGemini::passage("why bees dance"));
    let snap = pool.snapshot();
    // The tired key was tried once and cools; the broken one was disabled after one failure.
    assert_eq!(
        fake.requests_for("AIzaSyDemo-tired-key-00000000000000002"),
        1
    );
    assert_eq!(snap[0].cooling.len(), 1);
    assert_eq!(snap[1].consecutive_failures, 1);
    assert_eq!(pool.usable_count(), 2);
    assert_eq!(snap[2].total_requests, 1);
}

#[tokio::test]
async fn upstream_errors_come_back_as_errors_naming_no_key() {
    let fake = FakeGemini::start(["AIzaSyOnly-valid-key-000000000000001"])
        .await
        .unwrap();
    let pool =
        tower_gemini::key_rotation::KeyPool::new(["AIzaSyNot-a-valid-key-00000000000009"]).unwrap();
    let err = client::ask(pool, &fake.url(), "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400"), "{err}");
    assert!(
        !err.contains("AIzaSyNot-a-valid-key-00000000000009"),
        "{err}"
    );
}
