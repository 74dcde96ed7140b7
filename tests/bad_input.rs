//! Bad input against full_proxy's router, generated (proptest, bounded case count) and targeted:
//! no panic, never a 5xx the gateway made up, and a JSON error wherever the input is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::Router;
use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use serde_json::Value;
use support::{App, Config};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::testing::FakeGemini;

const KEY: &str = "AIzaSyBad-input-test-key-000000000001";
const TOKEN: &str = "bad-input-client-token-0001";

/// One runtime, fake and router for every case (a proptest body is synchronous).
struct World {
    rt: tokio::runtime::Runtime,
    router: Router,
    _fake: FakeGemini,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (router, fake) = rt.block_on(async {
            let fake = FakeGemini::start([KEY]).await.unwrap();
            let env: HashMap<String, String> = [
                ("GEMINI_API_KEYS", KEY),
                ("UPSTREAM_URL", fake.url().as_str()),
                ("ALLOWED_TOKENS", TOKEN),
                ("ADMIN_TOKEN", "bad-input-admin-token-0001"),
                ("MAX_BODY_BYTES", "1048576"),
                ("RETRY_DELAY_MS", "0"),
                ("MAX_REQUESTS_PER_MINUTE", "100000000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            let app = App::build(Config::from_map(&env).unwrap()).await.unwrap();
            (app.router, fake)
        });
        World {
            rt,
            router,
            _fake: fake,
        }
    })
}

fn call(req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let w = world();
    w.rt.block_on(async {
        let res: Response<axum::body::Body> = w.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = collect_limited(res.into_body(), 64 << 20).await.unwrap();
        (status, body.to_vec())
    })
}

/// The invariants every answer keeps.
fn check(status: StatusCode, body: &[u8], what: &str) {
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    if status.is_client_error() {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
            panic!(
                "{what}: a {status} without a JSON error: {}",
                String::from_utf8_lossy(body)
            )
        });
        assert!(v["error"].is_object(), "{what}: {v}");
    }
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const VALID: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hello there"}]}],"generationConfig":{"temperature":0.5,"maxOutputTokens":64}}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_never_break_the_gateway(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (status, res) = call(post(GENERATE, body));
        check(status, &res, "arbitrary body");
    }

    #[test]
    fn mutated_valid_bodies_never_break_the_gateway(
        cut in 0..VALID.len(),
        flips in proptest::collection::vec((0..VALID.len(), any::<u8>()), 0..6),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (i, b) in flips {
            bytes[i] = b;
        }
        bytes.truncate(cut.max(1));
        for path in [GENERATE, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "/v1beta/models/gemini-2.5-flash:countTokens"] {
            let (status, res) = call(post(path, bytes.clone()));
            check(status, &res, path);
        }
    }

    #[test]
    fn arbitrary_paths_and_queries_never_break_the_gateway(path in "/[a-zA-Z0-9:._~%/?=&+-]{0,80}") {
        let Ok(req) = Request::get(path.as_str()).header("x-goog-api-key", TOKEN).body(Body::empty()) else {
            return Ok(());
        };
        let (status, res) = call(req);
        check(status, &res, &path);
    }

    #[test]
    fn arbitrary_headers_never_break_the_gateway(
        auth in "[ -~]{0,80}",
        request_id in "[ -~]{0,200}",
        forwarded in "[ -~]{0,60}",
    ) {
        let mut b = Request::post(GENERATE);
        for (name, value) in [("authorization", &auth), ("x-request-id", &request_id), ("x-forwarded-for", &forwarded), ("x-goog-api-key", &auth)] {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                b = b.header(name, v);
            }
        }
        let (status, res) = call(b.body(Body::from(VALID)).unwrap());
        check(status, &res, "headers");
    }
}

#[test]
fn targeted_hostile_bodies() {
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    let nested_contents = format!(r#"{{"contents":{deep}}}"#);
    let huge_number = format!(
        r#"{{"contents":[],"generationConfig":{{"temperature":1{}}}}}"#,
        "0".repeat(5000)
    );
    let long_text = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "a".repeat(900_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid utf-8",
            b"{\"contents\":[{\"parts\":[{\"text\":\"\xff\xfe\"}]}]}".to_vec(),
        ),
        ("deeply nested", nested_contents.into_bytes()),
        ("huge number", huge_number.into_bytes()),
        ("long string", long_text.into_bytes()),
        ("empty", Vec::new()),
        ("null", b"null".to_vec()),
        ("not an object", b"[1,2,3]".to_vec()),
    ];
    for (what, body) in cases {
        let (status, res) = call(post(GENERATE, body));
        check(status, &res, what);
    }

    // Over the limit: 413, never forwarded.
    let (status, res) = call(post(GENERATE, vec![b'a'; 2 << 20]));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    check(status, &res, "too large");

    // No content type at all is fine; a wrong one is passed on for the upstream to judge.
    for ct in [None, Some("text/plain")] {
        let mut b = Request::post(GENERATE).header("authorization", format!("Bearer {TOKEN}"));
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let (status, res) = call(b.body(Body::from(VALID)).unwrap());
        check(status, &res, "content type");
    }
}
