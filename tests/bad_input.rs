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

// === Env config values ===

/// Every variable full_proxy reads (ours and the old-style aliases).
const VARIABLES: &[&str] = &[
    "ADMIN_TOKEN",
    "ALLOWED_MODELS",
    "ALLOWED_TOKENS",
    "API_KEYS",
    "AUTH_TOKEN",
    "BASE_URL",
    "CLIENT_KEY_PASSTHROUGH",
    "CLIENT_READ_TIMEOUT_SECONDS",
    "DATABASE_PATH",
    "DEBUG",
    "DEBUG_MODE",
    "DISABLE_SAFETY_FILTERING",
    "GEMINI_API_KEYS",
    "INJECT_PROMPT",
    "INJECT_PROMPT_POSITION",
    "KEY_COOLDOWN_SECONDS",
    "KEY_REPROBE_SECONDS",
    "KEY_STRATEGY",
    "LISTEN_ADDR",
    "LOG_CLEANUP_INTERVAL_SECONDS",
    "LOG_DIR",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "LOG_REQUEST_BODIES",
    "LOG_RETENTION_DAYS",
    "LOG_ROTATION",
    "LOG_ROTATION_INTERVAL",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_CONSECUTIVE_RETRIES",
    "MAX_EVENT_BYTES",
    "MAX_FAILURES",
    "MAX_TRANSIENT_FAILURES",
    "MAX_LOG_BACKUPS",
    "MAX_LOG_SIZE",
    "MAX_REQUESTS_PER_DAY_PER_IP",
    "MAX_REQUESTS_PER_MINUTE",
    "MAX_RESUME_ATTEMPTS",
    "MODEL_ALIASES",
    "MODEL_LIMITS",
    "MODEL_SEARCH",
    "FLEET_SYNC_MS",
    "TOKENS_FILE",
    "PASSWORD",
    "PORT",
    "RATE_LIMIT_FAIL_OPEN",
    "REDIS_CA_FILE",
    "REDIS_KEY_PREFIX",
    "REDIS_TIMEOUT_MS",
    "REDIS_URL",
    "REQUEST_LOG_QUEUE_SIZE",
    "REQUEST_TIMEOUT_SECONDS",
    "RETRY_DELAY_MS",
    "SHOW_SEARCH_LINK",
    "SHOW_THINKING_PROCESS",
    "SHUTDOWN_GRACE_SECONDS",
    "STREAM_IDLE_TIMEOUT_SECONDS",
    "SWALLOW_THOUGHTS_AFTER_RETRY",
    "THINKING_BUDGET",
    "THINKING_MODELS",
    "TOOLS_CODE_EXECUTION_ENABLED",
    "TRUSTED_PROXIES",
    "UPSTREAM_CA_FILE",
    "UPSTREAM_URL",
    "UPSTREAM_URL_BASE",
];

/// Values shaped like what the variables take (numbers, booleans, lists, pairs, limits,
/// addresses, URLs), near misses of them, and anything at all.
fn config_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        "[ +-]?[0-9]{0,40}[ .eE0-9]{0,3}",
        prop_oneof![
            Just("true"),
            Just("FALSE"),
            Just("yes"),
            Just("0"),
            Just("maybe")
        ]
        .prop_map(str::to_owned),
        r#"\[?("?[a-z0-9 ,'-]{0,8}"?,? ?){0,4}\]?"#,
        r#"\{?("?[a-z0-9./-]{0,8}"?[=:] ?"?-?[a-z0-9.-]{0,6}"?,? ?){0,4}\}?"#,
        "([a-z0-9./-]{0,10}=([0-9]{0,22}(rp[smhd]|tp[mhd]|x)?,?){0,3};?){0,3}",
        "(https?|ftp|redis)?(://)?[a-z0-9.:@/-]{0,20}",
        "[0-9.:\\[\\]a-f]{0,25}",
    ]
}

/// The invariant: no panic, and a refusal names one of the variables that were set.
fn check_config(env: &HashMap<String, String>) {
    if let Err(e) = Config::from_map(env) {
        assert!(
            env.keys().any(|name| e.0.starts_with(name.as_str())),
            "the error names none of the variables set: {e} (env: {env:?})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_single_config_value_is_accepted_or_refused_by_name(
        name in proptest::sample::select(VARIABLES),
        value in config_value(),
    ) {
        let env = HashMap::from([(name.to_owned(), value)]);
        check_config(&env);
    }

    #[test]
    fn any_mix_of_config_values_is_accepted_or_refused_by_name(
        vars in proptest::collection::hash_map(proptest::sample::select(VARIABLES), config_value(), 1..12),
    ) {
        let env = vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        check_config(&env);
    }
}

/// Every variable × values that are out of range for it: huge and negative numbers, numbers
/// that overflow u64, i32 or u32, whitespace, and JSON lists with non-string items.
#[test]
fn out_of_range_config_values_are_refused_by_name_or_accepted() {
    let values = [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999999999999",
        "4294967296",
        "2147483648",
        "-1",
        "-9223372036854775809",
        "1e30",
        "0.5",
        " 0 ",
        "+7",
        "[1, 2]",
        "[\"\"]",
        "{\"a\": 99999999999999999999}",
        "{\"a\": -2}",
        "a=1e99",
        "gemini-2.5-pro=18446744073709551616rpm",
        "gemini-2.5-pro=0rpm",
        "=",
        ",",
        ";",
        "[",
        "{",
    ];
    for name in VARIABLES {
        for value in values {
            check_config(&HashMap::from([(name.to_string(), value.to_owned())]));
        }
    }
}

/// Accepted extremes must not break the gateway later: every duration, count and limit at
/// `u64::MAX` (where the variable takes it), then requests that make keys fail, cool down on
/// an upstream `retryDelay` just as absurd, and get logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_accepted_values_build_a_gateway_that_serves() {
    use tower_gemini::testing::KeyBehavior;
    const INVALID: &str = "AIzaSyBad-input-test-key-invalid-00002";
    const EXHAUSTED: &str = "AIzaSyBad-input-test-key-exhaust-00003";
    let fake = FakeGemini::start([KEY, INVALID, EXHAUSTED]).await.unwrap();
    fake.set_key(INVALID, KeyBehavior::Invalid);
    fake.set_key(
        EXHAUSTED,
        KeyBehavior::exhausted(std::time::Duration::from_secs(u64::MAX)),
    );
    let dir = std::env::temp_dir().join(format!("tower-gemini-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let keys = format!("{INVALID},{EXHAUSTED},{KEY}");
    let url = fake.url();
    let max = u64::MAX.to_string();
    let mut vars = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("DATABASE_PATH", db.to_str().unwrap()),
        ("MAX_FAILURES", "1"),
    ];
    for name in [
        "REQUEST_TIMEOUT_SECONDS",
        "MAX_BODY_BYTES",
        "SHUTDOWN_GRACE_SECONDS",
        "CLIENT_READ_TIMEOUT_SECONDS",
        "MAX_CONNECTIONS",
        "KEY_COOLDOWN_SECONDS",
        "KEY_REPROBE_SECONDS",
        "STREAM_IDLE_TIMEOUT_SECONDS",
        "MAX_REQUESTS_PER_MINUTE",
        "MAX_REQUESTS_PER_DAY_PER_IP",
        "LOG_RETENTION_DAYS",
        "LOG_CLEANUP_INTERVAL_SECONDS",
        "MAX_LOG_SIZE",
    ] {
        vars.push((name, max.as_str()));
    }
    let proxy = support::Proxy::start(&vars).await;
    let client = tower_gemini::client::UpstreamClient::new(proxy.url()).unwrap();
    for _ in 0..3 {
        let req = Request::post(GENERATE)
            .header("x-goog-api-key", proxy.token.as_str())
            .body(Body::from(VALID))
            .unwrap();
        let res = client
            .clone()
            .oneshot(req)
            .await
            .expect("the gateway answers");
        let status = res.status();
        let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    // The request log's writer is still alive: rows get written.
    let series = r#"gemini_gateway_request_log_rows_total{outcome="written"}"#;
    let mut written = 0.0;
    for _ in 0..100 {
        let req = Request::get("/metrics").body(Body::empty()).unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        let text = collect_limited(res.into_body(), 1 << 20).await.unwrap();
        written = String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0);
        if written >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(written >= 3.0, "the request log wrote {written} rows");
}

#[test]
fn counts_that_would_stall_or_exhaust_memory_are_refused_by_name() {
    for (name, value) in [
        ("MAX_LOG_BACKUPS", "1001"),
        ("MAX_LOG_BACKUPS", "18446744073709551615"),
        ("REQUEST_LOG_QUEUE_SIZE", "100001"),
        ("REQUEST_LOG_QUEUE_SIZE", "18446744073709551615"),
    ] {
        let err = Config::from_map(&HashMap::from([(name.to_owned(), value.to_owned())]))
            .err()
            .unwrap_or_else(|| panic!("{name}={value} was accepted"));
        assert!(err.0.starts_with(name), "{err}");
    }
    let c = Config::from_map(&HashMap::from([(
        "CLIENT_READ_TIMEOUT_SECONDS".to_owned(),
        u64::MAX.to_string(),
    )]))
    .unwrap();
    assert_eq!(c.client_read_timeout, support::config::FOREVER);
}

// === OpenAI bodies ===

const CHAT: &str = "/v1/chat/completions";
const EMBEDDINGS: &str = "/v1/embeddings";

/// A chat request using most of what the translator reads: a system message, content parts
/// with an inline image, an assistant tool call and its answer, tools, sampling settings.
fn valid_chat(stream: bool) -> Value {
    serde_json::json!({
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cats\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"found\":true}"},
            {"role": "user", "content": "hello there"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup",
            "description": "looks things up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
        }}],
        "tool_choice": "auto",
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "n": 1,
        "stream": stream,
        "stream_options": {"include_usage": true}
    })
}

fn valid_embeddings() -> Value {
    serde_json::json!({"model": "text-embedding-004", "input": ["hello", "world"], "encoding_format": "float"})
}

/// Field names the translator knows, so generated objects hit real fields.
const OPENAI_KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "detail",
    "input_audio",
    "data",
    "format",
    "file",
    "file_data",
    "tools",
    "tool_choice",
    "function",
    "name",
    "description",
    "parameters",
    "properties",
    "required",
    "items",
    "arguments",
    "tool_calls",
    "tool_call_id",
    "id",
    "stream",
    "stream_options",
    "include_usage",
    "n",
    "stop",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "json_schema",
    "schema",
    "strict",
    "reasoning_effort",
    "logprobs",
    "top_logprobs",
    "seed",
    "input",
    "encoding_format",
    "dimensions",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "modalities",
    "audio",
    "extra_body",
    "google",
    "thinking_config",
    "anyOf",
    "$ref",
    "enum",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        proptest::sample::select(OPENAI_KEYS).prop_map(|s| Value::String(s.to_owned())),
        proptest::sample::select(
            &[
                "user",
                "assistant",
                "system",
                "tool",
                "developer",
                "function",
                "auto",
                "none",
                "required",
                "json_object",
                "json_schema",
                "text",
                "image_url",
                "base64",
                "float",
                "data:image/png;base64,!!",
                "data:",
                "{",
                "{\"a\":"
            ][..]
        )
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(OPENAI_KEYS), inner), 0..4)
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    })
}

/// JSON pointers to every node of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                pointers(
                    item,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Replaces, removes or adds fields of `doc` at generated places.
fn mutate(mut doc: Value, edits: &[(usize, u8, &'static str, Value)]) -> Value {
    for (at, how, key, value) in edits {
        let mut all = Vec::new();
        pointers(&doc, String::new(), &mut all);
        let ptr = &all[at % all.len()];
        let Some(node) = doc.pointer_mut(ptr) else {
            continue;
        };
        match (how % 3, node) {
            (0, node) => *node = value.clone(),
            (1, Value::Object(map)) => {
                map.insert((*key).to_owned(), value.clone());
            }
            (_, Value::Object(map)) => {
                map.remove(*key);
            }
            (_, Value::Array(items)) if !items.is_empty() => {
                items.remove(at % items.len());
            }
            (_, node) => *node = value.clone(),
        }
    }
    doc
}

/// The invariants of an OpenAI route: no 5xx the gateway made up (a 502/503/504 the fake
/// upstream caused is allowed), and every 4xx is OpenAI's error object.
fn check_openai(status: StatusCode, body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    assert!(
        !status.is_server_error()
            || matches!(status.as_u16(), 502..=504) && !text.contains("panic"),
        "{what}: {status} {text}"
    );
    if status.is_client_error() || status.is_server_error() {
        let v: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| panic!("{what}: a {status} without a JSON error: {text}"));
        let e = &v["error"];
        assert!(
            e["message"].is_string() && e["type"].is_string() && e.get("code").is_some(),
            "{what}: not OpenAI's error shape: {v}"
        );
        assert!(
            e.get("status").is_none(),
            "{what}: Gemini's error shape: {v}"
        );
    }
}

fn openai_post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_openai_bodies_never_break_the_gateway(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for path in [CHAT, EMBEDDINGS] {
            let (status, res) = call(openai_post(path, body.clone()));
            check_openai(status, &res, path);
        }
    }

    #[test]
    fn mutated_openai_requests_never_break_the_gateway(
        stream in any::<bool>(),
        edits in proptest::collection::vec(
            (any::<usize>(), any::<u8>(), proptest::sample::select(OPENAI_KEYS), arb_json()),
            1..4,
        ),
    ) {
        let chat = mutate(valid_chat(stream), &edits);
        let (status, res) = call(openai_post(CHAT, chat.to_string()));
        check_openai(status, &res, &format!("chat {chat}"));
        let embeddings = mutate(valid_embeddings(), &edits);
        let (status, res) = call(openai_post(EMBEDDINGS, embeddings.to_string()));
        check_openai(status, &res, &format!("embeddings {embeddings}"));
    }

    #[test]
    fn byte_flipped_openai_requests_never_break_the_gateway(
        stream in any::<bool>(),
        cut in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        for (path, doc) in [(CHAT, valid_chat(stream)), (EMBEDDINGS, valid_embeddings())] {
            let mut bytes = doc.to_string().into_bytes();
            for (i, b) in &flips {
                let n = bytes.len();
                bytes[i % n] = *b;
            }
            let n = bytes.len();
            bytes.truncate((cut % n).max(1));
            let (status, res) = call(openai_post(path, bytes));
            check_openai(status, &res, path);
        }
    }
}

#[test]
fn the_unmutated_openai_requests_succeed() {
    for stream in [false, true] {
        let (status, res) = call(openai_post(CHAT, valid_chat(stream).to_string()));
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&res));
    }
    let (status, res) = call(openai_post(EMBEDDINGS, valid_embeddings().to_string()));
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&res));
}

// === Targeted: huge strings, deep nesting, content types ===

/// A gateway whose body limit (16 MiB) is above a 10 MB string, with its fake upstream.
async fn big_body_gateway() -> (Router, FakeGemini) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let env: HashMap<String, String> = [
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", TOKEN),
        ("ADMIN_TOKEN", "bad-input-admin-token-0001"),
        ("MAX_BODY_BYTES", "16777216"),
        ("RETRY_DELAY_MS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let app = App::build(Config::from_map(&env).unwrap()).await.unwrap();
    (app.router, fake)
}

/// 10 MB of text with what JSON has to escape and what UTF-8 has to encode in several bytes.
fn ten_megabytes() -> String {
    let piece = "héllo \"wörld\" \\ tab\t newline\n emoji 🙂 nul-ish \u{1} ";
    piece.repeat(10_000_000 / piece.len() + 1)
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = collect_limited(res.into_body(), 64 << 20).await.unwrap();
    (status, body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_string_reaches_the_upstream_intact_on_both_dialects() {
    let (router, fake) = big_body_gateway().await;
    let text = ten_megabytes();

    let native = serde_json::json!({"contents": [{"role": "user", "parts": [{"text": text}]}]});
    let (status, res) = send(&router, post(GENERATE, native.to_string())).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&res[..res.len().min(500)])
    );
    let got = fake.last_received().unwrap().json();
    assert!(
        got["contents"][0]["parts"][0]["text"].as_str() == Some(text.as_str()),
        "the native text arrived changed"
    );
    fake.clear_received();

    let openai = serde_json::json!({
        "model": "gemini-2.5-flash",
        "messages": [{"role": "user", "content": text}],
    });
    let (status, res) = send(&router, openai_post(CHAT, openai.to_string())).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&res[..res.len().min(500)])
    );
    let got = fake.last_received().unwrap().json();
    assert!(
        got["contents"][0]["parts"][0]["text"].as_str() == Some(text.as_str()),
        "the OpenAI text arrived changed"
    );
}

/// `[[[[...]]]]` nested `depth` deep.
fn nested(depth: usize) -> String {
    let mut s = "[".repeat(depth);
    s.push_str(&"]".repeat(depth));
    s
}

#[test]
fn deeply_nested_json_is_a_400_on_both_dialects() {
    let deep = nested(100_000);
    let native_cases = [
        format!(r#"{{"contents":{deep}}}"#),
        format!(r#"{{"contents":[],"generationConfig":{deep}}}"#),
        deep.clone(),
    ];
    for body in native_cases {
        let (status, res) = call(post(GENERATE, body));
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&res)
        );
        check(status, &res, "deep native");
    }
    let openai_cases = [
        (
            CHAT,
            format!(r#"{{"model":"gemini-2.5-flash","messages":{deep}}}"#),
        ),
        (
            CHAT,
            format!(
                r#"{{"model":"gemini-2.5-flash","messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{deep}}}}}]}}"#
            ),
        ),
        (
            EMBEDDINGS,
            format!(r#"{{"model":"text-embedding-004","input":{deep}}}"#),
        ),
        (CHAT, deep.clone()),
    ];
    for (path, body) in openai_cases {
        let (status, res) = call(openai_post(path, body));
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&res)
        );
        check_openai(status, &res, "deep openai");
    }
    // Deep JSON inside a string the translator parses again: a tool call's arguments.
    let arguments = serde_json::json!({
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": deep}}]},
            {"role": "tool", "tool_call_id": "c", "content": deep},
        ],
    });
    let (status, res) = call(openai_post(CHAT, arguments.to_string()));
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&res)
    );
    check_openai(status, &res, "deep arguments");
}

/// Nesting just under serde_json's limit of 128 that the translation makes deeper: the layers
/// behind the translator parse it again, and must still answer sensibly.
#[test]
fn nesting_near_the_parser_limit_gets_a_defined_answer() {
    for depth in [100, 120, 126] {
        let schema = format!(
            r#"{{"type":"object","properties":{{"x":{{"type":"array","items":{}}}}}}}"#,
            nested(depth)
        );
        let body = format!(
            r#"{{"model":"gemini-2.5-flash","messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{schema}}}}}]}}"#
        );
        let (status, res) = call(openai_post(CHAT, body));
        check_openai(status, &res, &format!("schema depth {depth}"));
        let native = format!(
            r#"{{"contents":[{{"parts":[{{"text":"hi"}}]}}],"tools":[{{"functionDeclarations":[{{"name":"f","parameters":{schema}}}]}}]}}"#
        );
        let (status, res) = call(post(GENERATE, native));
        check(status, &res, &format!("native schema depth {depth}"));
        assert!(status.is_success() || status.is_client_error(), "{status}");
    }
}

#[test]
fn openai_routes_read_json_whatever_the_content_type_says() {
    // Like the native routes (tested above), the OpenAI front reads the body as JSON with any
    // Content-Type or none; a body that is not JSON is a 400 either way.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        for (path, body, want) in [
            (CHAT, valid_chat(false).to_string(), StatusCode::OK),
            (EMBEDDINGS, valid_embeddings().to_string(), StatusCode::OK),
            (
                CHAT,
                "model=gemini-2.5-flash&messages=hi".to_owned(),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let mut b = Request::post(path).header("authorization", format!("Bearer {TOKEN}"));
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            let (status, res) = call(b.body(Body::from(body)).unwrap());
            assert_eq!(
                status,
                want,
                "{ct:?} {path}: {}",
                String::from_utf8_lossy(&res)
            );
            check_openai(status, &res, "content type");
        }
    }
    // Over the limit: 413 in OpenAI's shape.
    let (status, res) = call(openai_post(CHAT, vec![b'a'; 2 << 20]));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    check_openai(status, &res, "too large");
}
