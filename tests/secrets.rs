//! The secret sweep: full_proxy with known upstream keys, client tokens and an admin token is
//! driven through every route, error path and admin route, with logs captured as text and JSON
//! (in memory and in `LOG_DIR` files); then every response status line, header and body, every log
//! line, every log file, `/metrics` and every request the upstream received is searched for each
//! secret — whole, and any 12-character piece of it. None may appear (the one exception: the
//! response that mints a client token shows that token once).
//!
//! A second sweep does the same in own-key mode (`CLIENT_KEY_PASSTHROUGH`) with the
//! compatibility routes and `DATABASE_PATH`: a client's own key must appear nowhere but in the
//! header that takes it upstream, and the SQLite file (with its WAL and backups) holds the key
//! added through the admin API — as documented — but no own key, no client token in clear and no
//! prompt unless `LOG_REQUEST_BODIES=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use support::{Captured, Proxy};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault, KeyBehavior};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

// Distinctive values: no 12-character piece of them occurs in ordinary text.
const KEY_1: &str = "AIzaSyQ7vK2mX9pL4wR8tZ1nB6cJ3hF5dG0sYeUa";
const KEY_2: &str = "AIzaSyW3nM8qT1zV6xK4bP9rL2cH7jD5fS0gYuEb";
/// Listed in GEMINI_API_KEYS but unknown to the upstream: every use is an `API_KEY_INVALID`
/// answer that echoes it. An auth key (`AQ.`), the shape Google issues since 2026.
const KEY_BAD: &str = "AQ.Ab8RNE5rT9yU2iO7pA4sD1fG8hJ3kL6zX0cVbNm_w";
/// Added at run time through `POST /admin/keys`.
const KEY_ADDED: &str = "AIzaSyR4tY7uI0oP3aS6dF9gH2jK5lZ8xC1vBnMq";
const CLIENT: &str = "sk-client-Hq4Zr8Lw2Nc6Vy0Tb3Xm";
const CLIENT_2: &str = "sk-client-Jd7Ks1Pf5Rg9Wh3Qn6Ez";
const ADMIN: &str = "sk-admin-Uc2Ym5Ti8Ob1Av4Ex7Lk0";

const PROMPT: &str = r#"{"contents":[{"role":"user","parts":[{"text":"tell me about bees"}]}]}"#;

// === Log capture ===

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-gemini-secrets-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn log_files(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        all.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    all
}

// === The record of everything a client or operator saw ===

#[derive(Default)]
struct Seen {
    /// `(what, text)` for each response: status line, headers and body.
    responses: Vec<(String, String)>,
}

impl Seen {
    async fn send(&mut self, proxy: &Proxy, req: Request<Body>) -> (StatusCode, String) {
        let what = format!("{} {}", req.method(), req.uri());
        let call = UpstreamClient::new(proxy.url()).unwrap().oneshot(req);
        let res: Response<Body> = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("an answer in time")
            .unwrap();
        let status = res.status();
        let mut text = format!("{status}\n");
        for (name, value) in res.headers() {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
        let body = String::from_utf8_lossy(&body).into_owned();
        text.push_str(&body);
        self.responses.push((what, text));
        (status, body)
    }
}

// === Requests ===

#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    Goog(&'a str),
    XApiKey(&'a str),
    Query(&'a str),
}

fn request(method: Method, path: &str, cred: Cred<'_>, body: &str) -> Request<Body> {
    let uri = match cred {
        Cred::Query(t) if path.contains('?') => format!("{path}&key={t}"),
        Cred::Query(t) => format!("{path}?key={t}"),
        _ => path.to_owned(),
    };
    let mut b = Request::builder().method(method).uri(uri);
    match cred {
        Cred::Bearer(t) => b = b.header("authorization", format!("Bearer {t}")),
        Cred::Goog(t) => b = b.header("x-goog-api-key", t),
        Cred::XApiKey(t) => b = b.header("x-api-key", t),
        _ => {}
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn post(path: &str, cred: Cred<'_>, body: &str) -> Request<Body> {
    request(Method::POST, path, cred, body)
}

fn get(path: &str, cred: Cred<'_>) -> Request<Body> {
    request(Method::GET, path, cred, "")
}

/// Each secret whole, and every 12-character piece of it (a log that printed part of a key
/// still leaks it).
fn needles(secret: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    let mut out = vec![secret.to_owned()];
    out.extend(chars.windows(12).map(|w| w.iter().collect::<String>()));
    out
}

fn leaks(text: &str, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        if let Some(n) = needles(secret)
            .into_iter()
            .find(|n| text.contains(n.as_str()))
        {
            found.push(format!("`{n}` (of {secret})"));
        }
    }
    found
}

/// Where a secret shows in `text`, with some context, for the failure message.
fn context(text: &str, secrets: &[&str]) -> String {
    for secret in secrets {
        for n in needles(secret) {
            if let Some(at) = text.find(n.as_str()) {
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                let end = (at + n.len() + 200).min(text.len());
                let end = (end..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                return text[start..end].to_owned();
            }
        }
    }
    String::new()
}

/// The log layers full_proxy's main installs for LOG_FORMAT=text and =json, at the most verbose
/// level an operator can ask for, each also writing to its own LOG_DIR; installed as this
/// thread's default subscriber until [`Logs::finish`].
struct Logs {
    text: Captured,
    json: Captured,
    text_dir: PathBuf,
    json_dir: PathBuf,
    guards: Vec<tracing_appender::non_blocking::WorkerGuard>,
    default: Option<tracing::subscriber::DefaultGuard>,
}

impl Logs {
    fn capture(name: &str) -> Logs {
        let text = Captured::default();
        let json = Captured::default();
        let text_dir = temp_dir(&format!("{name}-text"));
        let json_dir = temp_dir(&format!("{name}-json"));
        let file_writer = |dir: &Path| {
            let env = [("LOG_DIR".to_owned(), dir.to_string_lossy().into_owned())]
                .into_iter()
                .collect();
            let config = support::ops::OpsConfig::from_map(&env).unwrap();
            support::ops::log_writer(&config).unwrap().unwrap()
        };
        let (text_file, text_guard) = file_writer(&text_dir);
        let (json_file, json_guard) = file_writer(&json_dir);
        let (t, j) = (text.clone(), json.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("trace"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(false)
                    .with_writer(move || t.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .json()
                    .with_writer(move || j.clone())
                    .boxed(),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(false)
                    .with_writer(text_file),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .json()
                    .with_writer(json_file)
                    .boxed(),
            );
        let default = Some(tracing::subscriber::set_default(subscriber));
        Logs {
            text,
            json,
            text_dir,
            json_dir,
            guards: vec![text_guard, json_guard],
            default,
        }
    }

    /// Stops capturing (the files are flushed) and returns each log as `(what, text)`, after
    /// checking that they were captured at all, in the format asked for.
    fn finish(mut self) -> Vec<(&'static str, String)> {
        self.default.take();
        self.guards.clear();
        let logs = vec![
            ("text log", self.text.text()),
            ("JSON log", self.json.text()),
            ("text log file", log_files(&self.text_dir)),
            ("JSON log file", log_files(&self.json_dir)),
        ];
        for (what, text) in &logs {
            assert!(text.contains("gemini-2.5-flash"), "{what} is empty: {text}");
        }
        assert!(
            logs[1]
                .1
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()),
            "JSON logs are JSON lines"
        );
        let _ = std::fs::remove_dir_all(&self.text_dir);
        let _ = std::fs::remove_dir_all(&self.json_dir);
        logs
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_or_token_appears_in_any_response_log_line_log_file_or_metric() {
    let logs = Logs::capture("pool");

    let fake = FakeGemini::builder()
        .keys([KEY_1, KEY_2, KEY_ADDED])
        .echo_key_in_errors(true)
        .start()
        .await
        .unwrap();
    let keys = format!("{KEY_1},{KEY_2},{KEY_BAD}");
    let tokens = format!("{CLIENT},{CLIENT_2}");
    let url = fake.url();
    let mut proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", tokens.as_str()),
        ("ADMIN_TOKEN", ADMIN),
        ("MAX_BODY_BYTES", "4096"),
        ("MAX_FAILURES", "2"),
        // The sweep sends runs of upstream 500s through the pool on purpose; resting the keys
        // after them would turn the rest of the sweep into local 429s.
        ("MAX_TRANSIENT_FAILURES", "0"),
        ("RETRY_DELAY_MS", "0"),
        ("KEY_COOLDOWN_SECONDS", "60"),
    ])
    .await;
    let mut seen = Seen::default();
    let gen_path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let sse_path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";

    // --- Native routes, every credential style (the invalid key gets used and disabled). ---
    for cred in [
        Cred::Bearer(CLIENT),
        Cred::Goog(CLIENT_2),
        Cred::Query(CLIENT),
        Cred::Bearer(ADMIN),
    ] {
        let (s, b) = seen.send(&proxy, post(gen_path, cred, PROMPT)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    for path in [
        sse_path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    ] {
        let (s, b) = seen
            .send(&proxy, post(path, Cred::Query(CLIENT), PROMPT))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1beta/models/gemini-2.5-flash:countTokens",
                Cred::Goog(CLIENT),
                PROMPT,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1beta/models/text-embedding-004:embedContent",
                Cred::Bearer(CLIENT),
                r#"{"content":{"parts":[{"text":"bees"}]}}"#,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1beta/models/text-embedding-004:batchEmbedContents",
                Cred::Bearer(CLIENT),
                r#"{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"bees"}]}}]}"#,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for path in [
        "/v1beta/models?pageSize=2",
        "/v1beta/models/gemini-2.5-flash",
        "/v1/models/gemini-2.5-flash:generateContent",
    ] {
        let req = if path.ends_with(":generateContent") {
            post(path, Cred::Query(CLIENT_2), PROMPT)
        } else {
            get(path, Cred::Query(CLIENT_2))
        };
        let (s, b) = seen.send(&proxy, req).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }
    assert_eq!(
        proxy.pool.usable_count(),
        2,
        "the invalid key was used until disabled"
    );

    // --- Anthropic's Messages API, the token in `x-api-key` as its SDKs send it. ---
    let message = json!({"model": "gemini-2.5-flash", "max_tokens": 100,
                         "messages": [{"role": "user", "content": "bees"}]});
    let mut streamed = message.clone();
    streamed["stream"] = json!(true);
    for (cred, body) in [
        (Cred::XApiKey(CLIENT), &message),
        (Cred::XApiKey(CLIENT_2), &streamed),
    ] {
        let (s, b) = seen
            .send(&proxy, post("/v1/messages", cred, &body.to_string()))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }

    // --- OpenAI routes. ---
    let chat =
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "bees"}]});
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1/chat/completions",
                Cred::Bearer(CLIENT),
                &chat.to_string(),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1/chat/completions",
                Cred::Bearer(CLIENT_2),
                &stream.to_string(),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("[DONE]"), "{b}");
    for path in ["/v1/models", "/v1/models/gemini-2.5-flash"] {
        let (s, b) = seen.send(&proxy, get(path, Cred::Bearer(CLIENT))).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1/embeddings",
                Cred::Bearer(CLIENT),
                r#"{"model":"text-embedding-004","input":["bees","wasps"]}"#,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // --- Error paths. ---
    // 401: no token, a wrong token (shaped like a key and like a token), on both dialects.
    let wrong_key_like = "AIzaSyZ0xC9vB8nM7aS6dF5gH4jK3lQ2wE1rTyUi";
    for (path, body) in [
        (gen_path, PROMPT.to_owned()),
        ("/v1/chat/completions", chat.to_string()),
    ] {
        for cred in [
            Cred::None,
            Cred::Bearer(wrong_key_like),
            Cred::Query("sk-client-wrong-token-0000"),
        ] {
            let (s, b) = seen.send(&proxy, post(path, cred, &body)).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {b}");
        }
    }
    // 404: an unknown path, and an unknown model (the upstream's 404 passed through).
    let (s, _) = seen
        .send(&proxy, get("/v1beta/nothing/here", Cred::Bearer(CLIENT)))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = seen
        .send(
            &proxy,
            post("/v1/nothing", Cred::Bearer(CLIENT), &chat.to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A model name that is a key (and a client token): it must not be echoed or logged.
    let (s, b) = seen
        .send(
            &proxy,
            post(
                &format!("/v1beta/models/{KEY_1}:generateContent"),
                Cred::Bearer(CLIENT),
                PROMPT,
            ),
        )
        .await;
    assert!(s.is_client_error(), "{s}: {b}");
    // 413 and 400 on both dialects.
    let big = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "x".repeat(8000)
    );
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Bearer(CLIENT), &big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = seen
        .send(
            &proxy,
            post("/v1/chat/completions", Cred::Bearer(CLIENT), &big),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Bearer(CLIENT), "{not json"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = seen
        .send(
            &proxy,
            post("/v1/chat/completions", Cred::Bearer(CLIENT), "{not json"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Upstream 403 that echoes the key (`api_key:<KEY>`), on every key for one model: the
    // client gets an error naming no key.
    for key in [KEY_1, KEY_2] {
        fake.set_key_for_model(key, "gemini-2.5-pro", KeyBehavior::PermissionDenied);
    }
    let pro = "/v1beta/models/gemini-2.5-pro:generateContent";
    let (s, b) = seen
        .send(&proxy, post(pro, Cred::Bearer(CLIENT), PROMPT))
        .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s}: {b}");
    let (s, b) = seen
        .send(&proxy, post(pro, Cred::Query(CLIENT_2), PROMPT))
        .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s}: {b}");
    // The keys come back: re-enabled through the admin API (the invalid one too, to be
    // disabled again).
    for key in [KEY_1, KEY_2] {
        fake.clear_model_overrides(key);
    }
    let (s, b) = seen
        .send(&proxy, get("/admin/keys", Cred::Bearer(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let listed: Value = serde_json::from_str(&b).unwrap();
    for k in listed["keys"].as_array().unwrap() {
        let id = k["id"].as_str().unwrap().to_owned();
        seen.send(
            &proxy,
            post(&format!("/admin/keys/{id}/enable"), Cred::Bearer(ADMIN), ""),
        )
        .await;
    }
    // Errors written by the upstream with the key in them: 403, 400 and 500 (the 500s on every
    // attempt, so the last one reaches the client).
    fake.push_fault(Fault::HttpError {
        status: 403,
        message: format!("Permission denied: Consumer 'api_key:{KEY_1}' has been suspended."),
    });
    seen.send(&proxy, post(gen_path, Cred::Bearer(CLIENT), PROMPT))
        .await;
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: format!("bad request for key={KEY_2} (api_key:{KEY_2})"),
    });
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Bearer(CLIENT), PROMPT))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for _ in 0..8 {
        fake.push_fault(Fault::HttpError {
            status: 500,
            message: format!("internal error; keys {KEY_1} {KEY_2} {KEY_ADDED}"),
        });
    }
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Bearer(CLIENT), PROMPT))
        .await;
    assert!(s.is_server_error(), "{s}");
    let (s, _) = seen
        .send(
            &proxy,
            post(
                "/v1/chat/completions",
                Cred::Bearer(CLIENT),
                &chat.to_string(),
            ),
        )
        .await;
    assert!(s.is_server_error() || s == StatusCode::OK, "{s}");
    while fake.pending_faults() > 0 {
        seen.send(&proxy, post(gen_path, Cred::Bearer(CLIENT), PROMPT))
            .await;
    }
    // An error event inside a stream, on both dialects.
    fake.push_fault(Fault::ErrorEventAfter(1));
    seen.send(&proxy, post(sse_path, Cred::Bearer(CLIENT), PROMPT))
        .await;

    // --- The admin API: the admin token only. ---
    let add = json!({ "key": KEY_ADDED }).to_string();
    let (s, b) = seen
        .send(&proxy, post("/admin/keys", Cred::Goog(ADMIN), &add))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let added_id = serde_json::from_str::<Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Adding it again and a malformed add.
    seen.send(&proxy, post("/admin/keys", Cred::Query(ADMIN), &add))
        .await;
    seen.send(
        &proxy,
        post("/admin/keys", Cred::Bearer(ADMIN), "{\"key\":"),
    )
    .await;

    // 429 from a key cooling: the added key and the first two cool for one model; the next
    // request on it is refused at once with Retry-After, naming no key.
    for key in [KEY_1, KEY_2, KEY_ADDED] {
        fake.set_key_for_model(
            key,
            "gemini-2.0-flash",
            KeyBehavior::exhausted(Duration::from_secs(60)),
        );
    }
    let cool = "/v1beta/models/gemini-2.0-flash:generateContent";
    let (s, b) = seen
        .send(&proxy, post(cool, Cred::Bearer(CLIENT), PROMPT))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    let (s, b) = seen
        .send(&proxy, post(cool, Cred::Bearer(CLIENT), PROMPT))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1/chat/completions",
                Cred::Bearer(CLIENT),
                &json!({"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "x"}]})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");

    // Tokens: list, mint (shown once), use, revoke by token, refused at once.
    let (s, _) = seen
        .send(&proxy, get("/admin/tokens", Cred::Bearer(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, minted_body) = seen
        .send(
            &proxy,
            post("/admin/tokens", Cred::Bearer(ADMIN), r#"{"name":"sweep"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{minted_body}");
    let minted_at = seen.responses.len() - 1;
    let minted = serde_json::from_str::<Value>(&minted_body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b) = seen
        .send(&proxy, post(gen_path, Cred::Query(&minted), PROMPT))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = seen
        .send(&proxy, get("/admin/tokens", Cred::Bearer(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = seen
        .send(
            &proxy,
            request(
                Method::DELETE,
                &format!("/admin/tokens/{minted}"),
                Cred::Bearer(ADMIN),
                "",
            ),
        )
        .await;
    assert!(s.is_success(), "{s}: {b}");
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Bearer(&minted), PROMPT))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Operator pages.
    for path in [
        "/admin/stats",
        "/status",
        "/admin/keys",
        "/admin/config",
        "/admin/nothing",
    ] {
        let (s, b) = seen.send(&proxy, get(path, Cred::Bearer(ADMIN))).await;
        let want = if path == "/admin/nothing" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(s, want, "{path}: {b}");
    }
    for path in ["/health", "/metrics", "/admin"] {
        let (s, _) = seen.send(&proxy, get(path, Cred::None)).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    let (s, _) = seen
        .send(
            &proxy,
            request(
                Method::DELETE,
                &format!("/admin/keys/{added_id}"),
                Cred::Bearer(ADMIN),
                "",
            ),
        )
        .await;
    assert!(s.is_success(), "{s}");

    // Admin routes refuse client tokens (403), wrong tokens and no token (401), whatever the
    // credential style, and change nothing.
    let keys_before = proxy.pool.len();
    let admin_routes: [(Method, &str, &str); 10] = [
        (Method::GET, "/admin/keys", ""),
        (
            Method::POST,
            "/admin/keys",
            r#"{"key":"AIzaSyNotAddedByAClient000000001"}"#,
        ),
        (Method::DELETE, "/admin/keys/anything", ""),
        (Method::POST, "/admin/keys/anything/enable", ""),
        (Method::GET, "/admin/tokens", ""),
        (Method::POST, "/admin/tokens", r#"{"name":"x"}"#),
        (Method::DELETE, &format!("/admin/tokens/{CLIENT_2}"), ""),
        (Method::GET, "/admin/stats", ""),
        (Method::GET, "/admin/config", ""),
        (Method::GET, "/status", ""),
    ];
    for (method, path, body) in &admin_routes {
        for (cred, want) in [
            (Cred::None, StatusCode::UNAUTHORIZED),
            (Cred::Bearer(CLIENT), StatusCode::FORBIDDEN),
            (Cred::Goog(CLIENT_2), StatusCode::FORBIDDEN),
            (Cred::Query(CLIENT), StatusCode::FORBIDDEN),
            (
                Cred::Bearer("sk-admin-wrong-token-000000"),
                StatusCode::UNAUTHORIZED,
            ),
        ] {
            let (s, b) = seen
                .send(&proxy, request(method.clone(), path, cred, body))
                .await;
            assert_eq!(s, want, "{method} {path}: {b}");
        }
    }
    assert_eq!(proxy.pool.len(), keys_before, "a client changed the pool");
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Goog(CLIENT_2), PROMPT))
        .await;
    assert_eq!(s, StatusCode::OK, "a client revoked a token");

    // Stats settle within a moment; then take the last look at the operator pages.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in [
        "/metrics",
        "/admin/stats",
        "/status",
        "/admin/keys",
        "/admin/tokens",
    ] {
        seen.send(&proxy, get(path, Cred::Bearer(ADMIN))).await;
    }

    // --- The sweep. ---
    let upstream_keys = [KEY_1, KEY_2, KEY_BAD, KEY_ADDED];
    let client_secrets = [CLIENT, CLIENT_2, ADMIN, minted.as_str()];
    let all: Vec<&str> = upstream_keys
        .iter()
        .chain(client_secrets.iter())
        .copied()
        .collect();
    // The mint answer shows the new token once; nothing else in it.
    let mut failures = Vec::new();
    for (i, (what, text)) in seen.responses.iter().enumerate() {
        let secrets: Vec<&str> = if i == minted_at {
            all.iter().copied().filter(|s| *s != minted).collect()
        } else {
            all.clone()
        };
        let found = leaks(text, &secrets);
        if !found.is_empty() {
            failures.push(format!(
                "response to {what}: {found:?}\n  …{}…",
                context(text, &secrets)
            ));
        }
    }
    // The upstream never sees a client credential.
    for r in fake.received() {
        let text = format!(
            "{} {}?{} {:?} {}",
            r.method,
            r.path,
            r.query.clone().unwrap_or_default(),
            r.headers,
            String::from_utf8_lossy(&r.body)
        );
        let found = leaks(&text, &client_secrets);
        if !found.is_empty() {
            failures.push(format!("sent upstream: {found:?}\n  {text}"));
        }
    }

    proxy.shutdown();
    drop(proxy);
    drop(fake);
    for (what, text) in &logs.finish() {
        let found = leaks(text, &all);
        if !found.is_empty() {
            failures.push(format!("{what}: {found:?}\n  …{}…", context(text, &all)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} leak(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_sweep_finds_a_piece_of_a_secret() {
    assert!(leaks("masked AIza…YeUa is fine", &[KEY_1]).is_empty());
    assert!(!leaks("x Q7vK2mX9pL4w y", &[KEY_1]).is_empty());
    assert!(!leaks(&format!("Bearer {CLIENT}"), &[CLIENT]).is_empty());
}

// === Own-key mode, the compatibility routes and the SQLite file ===

/// A client's own Gemini key (own-key mode), known to the upstream.
const OWN: &str = "AIzaSyK8dF3hJ6lP1qW9eR4tY7uI2oA5sZ0xCvBg";
/// A client's own key the upstream does not know: every use is an `API_KEY_INVALID` answer
/// that echoes it. An auth key (`AQ.`): the gateway holds it nowhere, so only its shape can
/// tell logs and relayed errors to mask it.
const OWN_UNKNOWN: &str = "AQ.Ab8RNM1nB4vC7xZ0lK3jH6gF9dS2aP5oI8uYtRe-q";
/// Words of the prompts sent with own keys: the request log keeps no prompt unless asked.
const PROMPT_WORDS: &str = "hummingbirds of Vx93Qe-Tarn";

fn own_prompt() -> String {
    json!({"contents": [{"role": "user", "parts": [{"text": PROMPT_WORDS}]}]}).to_string()
}

/// The rows of the request log, as JSON objects.
fn db_rows(db: &Path) -> Vec<Value> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT * FROM requests ORDER BY rowid")
        .unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    stmt.query_map([], |r| {
        let mut obj = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let v = match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(n) => json!(n),
                rusqlite::types::ValueRef::Real(f) => json!(f),
                rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                rusqlite::types::ValueRef::Blob(b) => json!(String::from_utf8_lossy(b)),
            };
            obj.insert(name.clone(), v);
        }
        Ok(Value::Object(obj))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Waits until the request log has written at least `n` rows and no more arrive for a moment.
async fn settled_rows(db: &Path, n: usize) -> Vec<Value> {
    let mut last = usize::MAX;
    for _ in 0..300 {
        let count = db_rows(db).len();
        if count >= n && count == last {
            break;
        }
        last = count;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db_rows(db)
}

/// Every byte of every file in `dir` (the database, its `-wal` and `-shm`, backups), by file.
fn db_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // SQLite removes its `-wal`/`-shm` files when the last connection closes: a file
        // that is gone by now holds nothing.
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    out
}

/// Adds a failure for each of `secrets` found in `text`.
fn sweep(failures: &mut Vec<String>, what: &str, text: &str, secrets: &[&str]) {
    let found = leaks(text, secrets);
    if !found.is_empty() {
        failures.push(format!("{what}: {found:?}\n  …{}…", context(text, secrets)));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_own_key_or_token_appears_anywhere_and_the_database_holds_only_added_keys() {
    let logs = Logs::capture("own-key");
    let db_dir = temp_dir("own-key-db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = db_dir.join("gateway.db");
    let db_path = db.to_string_lossy().into_owned();

    let fake = FakeGemini::builder()
        .keys([KEY_1, KEY_2, OWN])
        .echo_key_in_errors(true)
        .start()
        .await
        .unwrap();
    let tokens = format!("{CLIENT},{CLIENT_2}");
    let url = fake.url();
    let mut proxy = Proxy::start_exact(&[
        ("CLIENT_KEY_PASSTHROUGH", "true"),
        ("GEMINI_API_KEYS", KEY_1),
        ("ALLOWED_TOKENS", tokens.as_str()),
        ("ADMIN_TOKEN", ADMIN),
        ("UPSTREAM_URL", url.as_str()),
        ("DATABASE_PATH", db_path.as_str()),
        ("RETRY_DELAY_MS", "0"),
        ("KEY_COOLDOWN_SECONDS", "60"),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ])
    .await;
    let mut seen = Seen::default();
    let gen_path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let sse_path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let prompt = own_prompt();
    // Requests that reach the gateway's stack (each leaves a row in the request log).
    let mut gateway_requests = 0;

    // --- The own key, through every credential style and route. ---
    for cred in [Cred::Bearer(OWN), Cred::Goog(OWN), Cred::Query(OWN)] {
        let (s, b) = seen.send(&proxy, post(gen_path, cred, &prompt)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = seen.send(&proxy, post(sse_path, cred, &prompt)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        gateway_requests += 2;
    }
    assert_eq!(fake.requests_for(OWN), 6, "the own key was used");
    // A stream cut off and resumed, on the own key.
    let before = fake.requests_for(OWN);
    fake.push_fault(Fault::DropAfter(2));
    let (s, b) = seen
        .send(&proxy, post(sse_path, Cred::Goog(OWN), &prompt))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("\"finishReason\":\"STOP\""), "{b}");
    assert!(
        fake.requests_for(OWN) >= before + 2,
        "the stream was resumed"
    );
    gateway_requests += 1;
    for (path, body) in [
        (
            "/v1beta/models/gemini-2.5-flash:countTokens",
            prompt.as_str(),
        ),
        (
            "/v1beta/models/text-embedding-004:embedContent",
            r#"{"content":{"parts":[{"text":"bees"}]}}"#,
        ),
    ] {
        let (s, b) = seen.send(&proxy, post(path, Cred::Query(OWN), body)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        gateway_requests += 1;
    }
    for path in ["/v1beta/models?pageSize=2", "/v1/models"] {
        let (s, b) = seen.send(&proxy, get(path, Cred::Bearer(OWN))).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        gateway_requests += 1;
    }
    let chat = json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": PROMPT_WORDS}]});
    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    for body in [&chat, &stream] {
        let (s, b) = seen
            .send(
                &proxy,
                post("/v1/chat/completions", Cred::Bearer(OWN), &body.to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        gateway_requests += 1;
    }
    // An OpenAI stream cut off and resumed.
    fake.push_fault(Fault::DropAfter(1));
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1/chat/completions",
                Cred::Bearer(OWN),
                &stream.to_string(),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("[DONE]"), "{b}");
    gateway_requests += 1;

    // --- Upstream errors that echo the own key. ---
    // A key the upstream does not know: its 400 (`api_key:<key>`) passes through, scrubbed.
    for cred in [
        Cred::Bearer(OWN_UNKNOWN),
        Cred::Goog(OWN_UNKNOWN),
        Cred::Query(OWN_UNKNOWN),
    ] {
        let (s, b) = seen.send(&proxy, post(gen_path, cred, &prompt)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        let (s, _) = seen.send(&proxy, post(sse_path, cred, &prompt)).await;
        assert!(s.is_client_error(), "{s}");
        gateway_requests += 2;
    }
    let (s, b) = seen
        .send(
            &proxy,
            post(
                "/v1/chat/completions",
                Cred::Bearer(OWN_UNKNOWN),
                &chat.to_string(),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    gateway_requests += 1;
    // Errors written by the upstream with the own key in them.
    fake.push_fault(Fault::HttpError {
        status: 403,
        message: format!("Permission denied: Consumer 'api_key:{OWN}' has been suspended."),
    });
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Goog(OWN), &prompt))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: format!("bad request for key={OWN} (api_key:{OWN})"),
    });
    let (s, _) = seen
        .send(&proxy, post(sse_path, Cred::Query(OWN), &prompt))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    gateway_requests += 2;
    for _ in 0..8 {
        fake.push_fault(Fault::HttpError {
            status: 500,
            message: format!("internal error; key {OWN}"),
        });
    }
    let (s, _) = seen
        .send(&proxy, post(gen_path, Cred::Bearer(OWN), &prompt))
        .await;
    assert!(s.is_server_error(), "{s}");
    let (s, _) = seen
        .send(
            &proxy,
            post("/v1/chat/completions", Cred::Bearer(OWN), &chat.to_string()),
        )
        .await;
    assert!(s.is_server_error() || s == StatusCode::OK, "{s}");
    gateway_requests += 2;
    while fake.pending_faults() > 0 {
        seen.send(&proxy, post(gen_path, Cred::Goog(OWN), &prompt))
            .await;
        gateway_requests += 1;
    }
    fake.push_fault(Fault::ErrorEventAfter(1));
    seen.send(&proxy, post(sse_path, Cred::Goog(OWN), &prompt))
        .await;
    gateway_requests += 1;
    // The own key's quota runs out (429 with `api_key:<key>`), twice.
    fake.set_key_for_model(
        OWN,
        "gemini-2.0-flash",
        KeyBehavior::exhausted(Duration::from_secs(60)),
    );
    for _ in 0..2 {
        let (s, b) = seen
            .send(
                &proxy,
                post(
                    "/v1beta/models/gemini-2.0-flash:generateContent",
                    Cred::Goog(OWN),
                    &prompt,
                ),
            )
            .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
        gateway_requests += 1;
    }
    // The own key as the model name, with itself as the credential.
    let (s, b) = seen
        .send(
            &proxy,
            post(
                &format!("/v1beta/models/{OWN}:generateContent"),
                Cred::Goog(OWN),
                &prompt,
            ),
        )
        .await;
    assert!(s.is_client_error(), "{s}: {b}");
    gateway_requests += 1;

    // --- The compatibility routes: the admin token only. ---
    let added_by_client = "AIzaSyNotAddedByAClient000000001";
    let compat: [(Method, &str, String); 5] = [
        (Method::GET, "/v1/keys/list", String::new()),
        (
            Method::POST,
            "/admin/config/gemini-key",
            json!({ "key": added_by_client }).to_string(),
        ),
        (
            Method::POST,
            "/admin/config/user-key",
            json!({"name": "x"}).to_string(),
        ),
        (
            Method::POST,
            "/admin/config/thinking",
            json!({"enabled": true, "budget": 10}).to_string(),
        ),
        (
            Method::POST,
            "/admin/config/inject-prompt",
            json!({"enabled": true, "content": "x"}).to_string(),
        ),
    ];
    for (method, path, body) in &compat {
        for (cred, want) in [
            (Cred::None, StatusCode::UNAUTHORIZED),
            (Cred::Bearer(CLIENT), StatusCode::FORBIDDEN),
            (Cred::Goog(CLIENT_2), StatusCode::FORBIDDEN),
            (Cred::Query(CLIENT), StatusCode::FORBIDDEN),
            // An own key is no admin credential, in any style.
            (Cred::Bearer(OWN), StatusCode::UNAUTHORIZED),
            (Cred::Goog(OWN), StatusCode::UNAUTHORIZED),
            (Cred::Query(OWN_UNKNOWN), StatusCode::UNAUTHORIZED),
        ] {
            let (s, b) = seen
                .send(&proxy, request(method.clone(), path, cred, body))
                .await;
            assert_eq!(s, want, "{method} {path}: {b}");
        }
    }
    assert_eq!(proxy.pool.len(), 1, "a client changed the pool");
    // With the admin token, in every style.
    let add = json!({ "key": KEY_2 }).to_string();
    let (s, b) = seen
        .send(
            &proxy,
            post("/admin/config/gemini-key", Cred::Bearer(ADMIN), &add),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    seen.send(
        &proxy,
        post("/admin/config/gemini-key", Cred::Goog(ADMIN), &add),
    )
    .await;
    seen.send(
        &proxy,
        post("/admin/config/gemini-key", Cred::Query(ADMIN), "{\"key\":"),
    )
    .await;
    assert_eq!(proxy.pool.len(), 2);
    let (s, b) = seen
        .send(&proxy, get("/v1/keys/list", Cred::Goog(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, minted_body) = seen
        .send(
            &proxy,
            post(
                "/admin/config/user-key",
                Cred::Query(ADMIN),
                r#"{"name":"compat"}"#,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{minted_body}");
    let minted_at = seen.responses.len() - 1;
    let minted = serde_json::from_str::<Value>(&minted_body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, body) in [
        (
            "/admin/config/thinking",
            json!({"enabled": true, "budget": 64}),
        ),
        (
            "/admin/config/inject-prompt",
            json!({"enabled": true, "content": "Be brief.", "position": "system"}),
        ),
    ] {
        let (s, b) = seen
            .send(&proxy, post(path, Cred::Bearer(ADMIN), &body.to_string()))
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }
    // The pool serves tokens (the minted one too); the own key still serves its client.
    for cred in [
        Cred::Bearer(CLIENT),
        Cred::Goog(CLIENT_2),
        Cred::Query(&minted),
        Cred::Goog(OWN),
    ] {
        let (s, b) = seen.send(&proxy, post(gen_path, cred, &prompt)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        gateway_requests += 1;
    }

    // --- The request log and backups. ---
    let rows = settled_rows(&db, gateway_requests).await;
    assert!(
        rows.len() >= gateway_requests,
        "{} rows for {gateway_requests} requests",
        rows.len()
    );
    assert!(
        rows.iter().any(|r| r["client_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("ownkey-"))),
        "own-key requests are logged by hash: {rows:?}"
    );
    for (cred, want) in [
        (Cred::None, StatusCode::UNAUTHORIZED),
        (Cred::Bearer(CLIENT), StatusCode::FORBIDDEN),
        (Cred::Goog(OWN), StatusCode::UNAUTHORIZED),
        (Cred::Bearer(ADMIN), StatusCode::CREATED),
    ] {
        let (s, b) = seen.send(&proxy, post("/admin/backup", cred, "")).await;
        assert_eq!(s, want, "{b}");
    }

    // --- The operator pages, last. ---
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in [
        "/metrics",
        "/admin/stats",
        "/status",
        "/admin/keys",
        "/admin/tokens",
        "/v1/keys/list",
        "/health",
    ] {
        let (s, b) = seen.send(&proxy, get(path, Cred::Bearer(ADMIN))).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }

    // --- The sweep. ---
    let own_keys = [OWN, OWN_UNKNOWN];
    let pool_keys = [KEY_1, KEY_2];
    let client_secrets = [CLIENT, CLIENT_2, ADMIN, minted.as_str()];
    let all: Vec<&str> = own_keys
        .iter()
        .chain(&pool_keys)
        .chain(&client_secrets)
        .copied()
        .collect();
    let mut failures = Vec::new();
    for (i, (what, text)) in seen.responses.iter().enumerate() {
        let secrets: Vec<&str> = if i == minted_at {
            all.iter().copied().filter(|s| *s != minted).collect()
        } else {
            all.clone()
        };
        sweep(
            &mut failures,
            &format!("response to {what}"),
            text,
            &secrets,
        );
    }
    // The upstream sees no client token, and an own key only where Gemini reads it (and in the
    // path the client wrote with its key as the model name: the client's text, passed on).
    let key_as_model = format!("/v1beta/models/{OWN}:generateContent");
    for r in fake.received() {
        let text = format!(
            "{} {}?{} {:?} {}",
            r.method,
            if r.path == key_as_model { "" } else { &r.path },
            r.query.clone().unwrap_or_default(),
            r.headers
                .iter()
                .filter(|(name, _)| *name != "x-goog-api-key")
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&r.body)
        );
        let secrets: Vec<&str> = client_secrets.iter().chain(&own_keys).copied().collect();
        sweep(&mut failures, "sent upstream", &text, &secrets);
    }
    // The request log: no secret, and no prompt (LOG_REQUEST_BODIES is off).
    let rows_text = serde_json::to_string(&rows).unwrap();
    sweep(&mut failures, "request log rows", &rows_text, &all);
    assert!(
        rows.iter().all(|r| r["request_body"].is_null()),
        "a request body was logged: {rows_text}"
    );
    assert!(
        !rows_text.contains(PROMPT_WORDS),
        "a prompt is in the request log: {rows_text}"
    );

    // The files while the gateway runs (the WAL holds the latest pages) and after it stopped
    // (the WAL checkpointed into the database).
    let mut files = db_files(&db_dir);
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy.shutdown()).await;
    drop(proxy);
    drop(fake);
    files.extend(db_files(&db_dir));
    for (what, text) in &logs.finish() {
        sweep(&mut failures, what, text, &all);
    }
    // The database, its WAL and the backups: the added key is there (documented), no own key,
    // no client token in clear, no prompt; and no pool key that came from the environment.
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("-wal")) && names.iter().any(|n| n.contains(".backup")),
        "the WAL and the backup were read: {names:?}"
    );
    assert!(
        files.iter().any(|(_, bytes)| bytes.contains(KEY_2)),
        "the key added through the admin API is saved"
    );
    let db_secrets: Vec<&str> = own_keys
        .iter()
        .chain(&client_secrets)
        .chain(&[KEY_1])
        .copied()
        .collect();
    for (name, bytes) in &files {
        sweep(
            &mut failures,
            &format!("database file {name}"),
            bytes,
            &db_secrets,
        );
        if bytes.contains(PROMPT_WORDS) {
            failures.push(format!("database file {name}: holds a prompt"));
        }
    }
    let _ = std::fs::remove_dir_all(&db_dir);
    assert!(
        failures.is_empty(),
        "{} leak(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn with_log_request_bodies_rows_keep_the_prompt_but_never_an_own_key_or_token() {
    let db_dir = temp_dir("bodies-db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = db_dir.join("gateway.db");
    let db_path = db.to_string_lossy().into_owned();
    let fake = FakeGemini::builder()
        .keys([KEY_1, OWN])
        .echo_key_in_errors(true)
        .start()
        .await
        .unwrap();
    let url = fake.url();
    let mut proxy = Proxy::start_exact(&[
        ("CLIENT_KEY_PASSTHROUGH", "true"),
        ("GEMINI_API_KEYS", KEY_1),
        ("ALLOWED_TOKENS", CLIENT),
        ("ADMIN_TOKEN", ADMIN),
        ("UPSTREAM_URL", url.as_str()),
        ("DATABASE_PATH", db_path.as_str()),
        ("LOG_REQUEST_BODIES", "true"),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ])
    .await;
    let mut seen = Seen::default();
    let gen_path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let prompt = own_prompt();
    for cred in [
        Cred::Query(OWN),
        Cred::Goog(OWN),
        Cred::Bearer(OWN_UNKNOWN),
        Cred::Bearer(CLIENT),
    ] {
        seen.send(&proxy, post(gen_path, cred, &prompt)).await;
    }
    let rows = settled_rows(&db, 4).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["request_body"]
            .as_str()
            .is_some_and(|b| b.contains(PROMPT_WORDS))),
        "the prompt is kept when asked: {rows:?}"
    );
    let (s, _) = seen
        .send(&proxy, post("/admin/backup", Cred::Bearer(ADMIN), ""))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut files = db_files(&db_dir);
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy.shutdown()).await;
    drop(proxy);
    files.extend(db_files(&db_dir));

    let secrets = [OWN, OWN_UNKNOWN, KEY_1, CLIENT, ADMIN];
    let mut failures = Vec::new();
    sweep(
        &mut failures,
        "request log rows",
        &serde_json::to_string(&rows).unwrap(),
        &secrets,
    );
    for (name, bytes) in &files {
        sweep(
            &mut failures,
            &format!("database file {name}"),
            bytes,
            &secrets,
        );
    }
    for (what, text) in &seen.responses {
        sweep(
            &mut failures,
            &format!("response to {what}"),
            text,
            &secrets,
        );
    }
    let _ = std::fs::remove_dir_all(&db_dir);
    assert!(
        failures.is_empty(),
        "{} leak(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
