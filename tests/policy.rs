//! RequestPolicyLayer as full_proxy wires it, against FakeGemini over loopback sockets: each rule's exact effect on
//! the request upstream received (and that nothing else changed), and the rewritten answers
//! (search links, hidden thoughts) unary, as SSE and as a streamed JSON array.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::Proxy;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::testing::{FakeGemini, Fault, ReceivedRequest};

const KEY: &str = "policy-test-key-0001";
const PROMPT: &str = "Tell me about lighthouses";

// === The stack under test ===

/// full_proxy configured from `vars` (as it reads its environment), against FakeGemini,
/// serving on `127.0.0.1:0`; the client authenticates with a client token.
struct Stack {
    fake: FakeGemini,
    addr: SocketAddr,
    token: String,
    _proxy: Proxy,
}

async fn stack(vars: &[(&str, &str)]) -> Stack {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let mut all = vec![
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    let proxy = Proxy::start(&all).await;
    Stack {
        fake,
        addr: proxy.addr,
        token: proxy.token.clone(),
        _proxy: proxy,
    }
}

impl Stack {
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Response<Body> {
        let client =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Body>();
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("x-goog-api-key", self.token.as_str())
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        client.request(req).await.unwrap().map(Body::new)
    }

    async fn post(&self, path: &str, body: &Value) -> Response<Body> {
        self.send("POST", path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Response<Body> {
        self.send("GET", path, None).await
    }

    /// What upstream received last.
    fn upstream(&self) -> ReceivedRequest {
        self.fake
            .last_received()
            .expect("a request reached upstream")
    }
}

async fn bytes_of(res: Response<Body>) -> Vec<u8> {
    collect_limited(res.into_body(), 1 << 22)
        .await
        .unwrap()
        .to_vec()
}

async fn json_of(res: Response<Body>) -> Value {
    serde_json::from_slice(&bytes_of(res).await).unwrap()
}

/// The answer's chunks: one for a unary answer, every SSE event or array element of a stream.
async fn chunks_of(res: Response<Body>, how: How) -> Vec<Value> {
    let bytes = bytes_of(res).await;
    match how {
        How::Unary => vec![serde_json::from_slice(&bytes).unwrap()],
        How::Sse => String::from_utf8(bytes)
            .unwrap()
            .split("\r\n\r\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect(),
        How::JsonArray => serde_json::from_slice(&bytes).unwrap(),
    }
}

#[derive(Clone, Copy, Debug)]
enum How {
    Unary,
    Sse,
    JsonArray,
}

const ALL_WAYS: [How; 3] = [How::Unary, How::Sse, How::JsonArray];

fn path(model: &str, how: How) -> String {
    match how {
        How::Unary => format!("/v1beta/models/{model}:generateContent"),
        How::Sse => format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
        How::JsonArray => format!("/v1beta/models/{model}:streamGenerateContent"),
    }
}

fn parts(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .flat_map(|c| {
            c.pointer("/candidates/0/content/parts")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn text(chunks: &[Value]) -> String {
    parts(chunks)
        .iter()
        .filter(|p| p["thought"].as_bool() != Some(true))
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

/// A client request with a little of everything, so a rule's side effects would show.
fn client_body() -> Value {
    json!({
        "contents": [
            {"role": "user", "parts": [{"text": PROMPT}]},
            {"role": "model", "parts": [{"text": "Which coast?"}]},
            {"role": "user", "parts": [{"text": "The Atlantic one."}]}
        ],
        "systemInstruction": {"parts": [{"text": "You are a sailor."}]},
        "generationConfig": {"temperature": 1, "topK": 40, "maxOutputTokens": 512},
        "cachedContent": null,
        "labels": {"team": "docs"}
    })
}

fn prompt_body() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]})
}

/// `a` without the given top-level fields equals `b` without them.
fn same_except(a: &Value, b: &Value, fields: &[&str]) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        for f in fields {
            v.as_object_mut().unwrap().remove(*f);
        }
        v
    };
    assert_eq!(strip(a), strip(b));
}

// === Prompt injection ===

#[tokio::test]
async fn system_injection_merges_beside_the_clients_system_text() {
    let s = stack(&[("INJECT_PROMPT", "Answer in English.")]).await;
    let res = s
        .post(&path("gemini-2.5-flash", How::Unary), &client_body())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let sent = s.upstream().json();
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Answer in English."}, {"text": "You are a sailor."}]})
    );
    same_except(&sent, &client_body(), &["systemInstruction"]);
}

#[tokio::test]
async fn user_prefix_changes_only_the_first_user_turn() {
    let s = stack(&[
        ("INJECT_PROMPT", "Be brief."),
        ("INJECT_PROMPT_POSITION", "user_prefix"),
    ])
    .await;
    s.post(&path("gemini-2.5-flash", How::Sse), &client_body())
        .await;
    let sent = s.upstream().json();
    let mut expected = client_body();
    expected["contents"][0]["parts"][0]["text"] = json!(format!("Be brief.\n\n{PROMPT}"));
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn user_suffix_changes_only_the_last_user_turn() {
    let s = stack(&[
        ("INJECT_PROMPT", "Be brief."),
        ("INJECT_PROMPT_POSITION", "user_suffix"),
    ])
    .await;
    s.post(&path("gemini-2.5-flash", How::Unary), &client_body())
        .await;
    let sent = s.upstream().json();
    let mut expected = client_body();
    expected["contents"][2]["parts"][0]["text"] = json!("The Atlantic one.\n\nBe brief.");
    assert_eq!(sent, expected);
}

// === Safety ===

#[tokio::test]
async fn safety_override_turns_every_category_off() {
    let s = stack(&[("DISABLE_SAFETY_FILTERING", "true")]).await;
    s.post(&path("gemini-2.5-flash", How::Unary), &client_body())
        .await;
    let sent = s.upstream().json();
    let settings = sent["safetySettings"].as_array().unwrap();
    let categories: Vec<&str> = settings
        .iter()
        .map(|s| s["category"].as_str().unwrap())
        .collect();
    for c in [
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    ] {
        assert_eq!(categories.iter().filter(|x| **x == c).count(), 1, "{c}");
    }
    for s in settings {
        assert!(["OFF", "BLOCK_NONE"].contains(&s["threshold"].as_str().unwrap()));
    }
    same_except(&sent, &client_body(), &["safetySettings"]);
}

#[tokio::test]
async fn a_clients_safety_setting_wins() {
    let s = stack(&[("DISABLE_SAFETY_FILTERING", "true")]).await;
    let mine =
        json!({"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_LOW_AND_ABOVE"});
    let mut body = client_body();
    body["safetySettings"] = json!([mine.clone()]);
    s.post(&path("gemini-2.5-flash", How::Sse), &body).await;
    let sent = s.upstream().json();
    let dangerous: Vec<&Value> = sent["safetySettings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["category"] == "HARM_CATEGORY_DANGEROUS_CONTENT")
        .collect();
    assert_eq!(dangerous, [&mine]);
    assert_eq!(
        sent["safetySettings"][0], mine,
        "the client's entries come first, unchanged"
    );
}

// === Thinking ===

#[tokio::test]
async fn thinking_budget_goes_to_listed_models_only() {
    let s = stack(&[
        ("THINKING_BUDGET", "2048"),
        ("THINKING_MODELS", "gemini-2.5-pro"),
    ])
    .await;
    s.post(&path("gemini-2.5-pro", How::Unary), &client_body())
        .await;
    let sent = s.upstream().json();
    let mut expected = client_body();
    expected["generationConfig"]["thinkingConfig"] = json!({"thinkingBudget": 2048});
    assert_eq!(sent, expected);

    s.post(&path("gemini-2.5-flash", How::Unary), &client_body())
        .await;
    assert_eq!(s.upstream().json(), client_body());
}

#[tokio::test]
async fn thinking_budget_becomes_what_each_model_accepts() {
    let s = stack(&[("THINKING_BUDGET", "0")]).await;
    // 2.5 Pro cannot turn thinking off: its minimum budget.
    s.post(&path("gemini-2.5-pro", How::Unary), &client_body())
        .await;
    assert_eq!(
        s.upstream().json()["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 128})
    );
    // Gemini 3 takes a level, the lowest it offers, and never a budget beside it.
    for (model, level) in [
        ("gemini-3-pro-preview", "low"),
        ("gemini-3-flash-preview", "minimal"),
    ] {
        s.post(&path(model, How::Unary), &client_body()).await;
        assert_eq!(
            s.upstream().json()["generationConfig"]["thinkingConfig"],
            json!({"thinkingLevel": level}),
            "{model}"
        );
    }
}

#[tokio::test]
async fn a_clients_thinking_config_wins() {
    let s = stack(&[
        ("THINKING_BUDGET", "2048"),
        ("SHOW_THINKING_PROCESS", "true"),
    ])
    .await;
    let mut body = client_body();
    body["generationConfig"]["thinkingConfig"] = json!({"thinkingBudget": 0});
    s.post(&path("gemini-2.5-flash", How::JsonArray), &body)
        .await;
    assert_eq!(s.upstream().json(), body);
}

#[tokio::test]
async fn hidden_thoughts_never_reach_the_client() {
    let s = stack(&[("SHOW_THINKING_PROCESS", "false")]).await;
    for how in ALL_WAYS {
        s.fake.push_fault(Fault::Thoughts);
        let res = s.post(&path("gemini-2.5-flash", how), &prompt_body()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let chunks = chunks_of(res, how).await;
        let ps = parts(&chunks);
        assert!(
            ps.iter().all(|p| p.get("thought").is_none()),
            "{how:?}: {ps:?}"
        );
        assert_eq!(text(&chunks), FakeGemini::passage(PROMPT), "{how:?}");
        // Usage stays the upstream's: the thinking happened and is counted.
        let usage = &chunks.last().unwrap()["usageMetadata"];
        let thoughts = usage["thoughtsTokenCount"].as_u64().unwrap();
        assert!(thoughts > 0, "{how:?}");
        assert_eq!(
            usage["totalTokenCount"].as_u64().unwrap(),
            usage["promptTokenCount"].as_u64().unwrap()
                + usage["candidatesTokenCount"].as_u64().unwrap()
                + thoughts
        );
    }
}

#[tokio::test]
async fn thoughts_pass_when_not_hidden() {
    let s = stack(&[("SHOW_THINKING_PROCESS", "true")]).await;
    s.fake.push_fault(Fault::Thoughts);
    let res = s
        .post(&path("gemini-2.5-flash", How::Sse), &prompt_body())
        .await;
    let chunks = chunks_of(res, How::Sse).await;
    assert!(parts(&chunks).iter().any(|p| p["thought"] == true));
}

// === Search ===

fn sources_markdown_ok(answer: &str) {
    let passage = FakeGemini::passage(PROMPT);
    assert!(
        answer.starts_with(&passage),
        "the answer comes first: {answer}"
    );
    let tail = &answer[passage.len()..];
    for (title, uri) in FakeGemini::grounding_sources(PROMPT) {
        assert_eq!(
            answer.matches(&uri).count(),
            1,
            "{uri} exactly once in {tail}"
        );
        assert!(tail.contains(&format!("[{title}]({uri})")), "{tail}");
    }
}

#[tokio::test]
async fn search_alias_goes_upstream_as_the_model_with_google_search() {
    let s = stack(&[("MODEL_SEARCH", "gemini-2.5-flash")]).await;
    let res = s
        .post(&path("gemini-2.5-flash-search", How::Sse), &client_body())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let up = s.upstream();
    assert_eq!(
        up.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(up.query.as_deref(), Some("alt=sse"));
    let mut expected = client_body();
    expected["tools"] = json!([{"googleSearch": {}}]);
    assert_eq!(up.json(), expected);
    // Without SHOW_SEARCH_LINK the answer is upstream's, grounding metadata and all.
    let chunks = chunks_of(res, How::Sse).await;
    assert!(chunks.last().unwrap()["candidates"][0]["groundingMetadata"].is_object());
    assert!(!text(&chunks).contains("vertexaisearch"));
}

#[tokio::test]
async fn search_links_follow_the_answer_once() {
    let s = stack(&[
        ("MODEL_SEARCH", "gemini-2.5-flash"),
        ("SHOW_SEARCH_LINK", "true"),
    ])
    .await;
    for how in ALL_WAYS {
        let res = s
            .post(&path("gemini-2.5-flash-search", how), &prompt_body())
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{how:?}");
        let chunks = chunks_of(res, how).await;
        sources_markdown_ok(&text(&chunks));
        // The links are in the last chunk, the one with the finishReason.
        let last = chunks.last().unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{how:?}");
        assert!(
            text(std::slice::from_ref(last)).contains("vertexaisearch"),
            "{how:?}"
        );
    }
}

#[tokio::test]
async fn plain_models_get_no_search_and_no_links() {
    let s = stack(&[
        ("MODEL_SEARCH", "gemini-2.5-flash"),
        ("SHOW_SEARCH_LINK", "true"),
    ])
    .await;
    let res = s
        .post(&path("gemini-2.5-flash", How::Unary), &prompt_body())
        .await;
    assert_eq!(s.upstream().json(), prompt_body());
    assert_eq!(
        text(&chunks_of(res, How::Unary).await),
        FakeGemini::passage(PROMPT)
    );
}

#[tokio::test]
async fn search_aliases_are_listed_next_to_their_model() {
    let s = stack(&[("MODEL_SEARCH", "gemini-2.5-flash,gemini-2.5-pro")]).await;
    let v = json_of(s.get("/v1beta/models?pageSize=100").await).await;
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert_eq!(
        at("models/gemini-2.5-flash-search"),
        at("models/gemini-2.5-flash") + 1
    );
    assert_eq!(
        at("models/gemini-2.5-pro-search"),
        at("models/gemini-2.5-pro") + 1
    );
    assert!(!names.contains(&"models/gemini-2.0-flash-search"));

    let res = s.get("/v1beta/models/gemini-2.5-flash-search").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.upstream().path, "/v1beta/models/gemini-2.5-flash");
    let m = json_of(res).await;
    assert_eq!(m["name"], "models/gemini-2.5-flash-search");
    assert!(
        m["supportedGenerationMethods"]
            .as_array()
            .unwrap()
            .contains(&json!("generateContent"))
    );
}

// === Code execution ===

#[tokio::test]
async fn code_execution_is_added_without_function_declarations() {
    let s = stack(&[("TOOLS_CODE_EXECUTION_ENABLED", "true")]).await;
    s.post(&path("gemini-2.5-flash", How::Unary), &client_body())
        .await;
    let mut expected = client_body();
    expected["tools"] = json!([{"codeExecution": {}}]);
    assert_eq!(s.upstream().json(), expected);
}

#[tokio::test]
async fn code_runs_reach_the_client_as_sent() {
    let s = stack(&[
        ("TOOLS_CODE_EXECUTION_ENABLED", "true"),
        ("SHOW_THINKING_PROCESS", "false"),
    ])
    .await;
    for how in ALL_WAYS {
        let res = s.post(&path("gemini-2.5-flash", how), &prompt_body()).await;
        let chunks = chunks_of(res, how).await;
        let ps = parts(&chunks);
        assert_eq!(ps[0]["executableCode"]["language"], "PYTHON", "{how:?}");
        assert_eq!(
            ps[1]["codeExecutionResult"]["outcome"], "OUTCOME_OK",
            "{how:?}"
        );
        assert_eq!(text(&chunks), FakeGemini::passage(PROMPT), "{how:?}");
    }
}

#[tokio::test]
async fn tools_with_function_declarations_go_upstream_unchanged() {
    let s = stack(&[("TOOLS_CODE_EXECUTION_ENABLED", "true")]).await;
    let mut body = client_body();
    body["tools"] = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]);
    let raw = body.to_string();
    s.post(&path("gemini-2.5-flash", How::Sse), &body).await;
    assert_eq!(s.upstream().body, raw.as_bytes(), "forwarded byte for byte");
}

// === Aliases and the allow list ===

#[tokio::test]
async fn an_alias_is_served_by_its_model() {
    let s = stack(&[(
        "MODEL_ALIASES",
        "gpt-4o=gemini-2.5-pro,fast=gemini-2.5-flash",
    )])
    .await;
    for how in ALL_WAYS {
        let res = s.post(&path("gpt-4o", how), &client_body()).await;
        assert_eq!(res.status(), StatusCode::OK, "{how:?}");
        let up = s.upstream();
        assert!(
            up.path.starts_with("/v1beta/models/gemini-2.5-pro:"),
            "{}",
            up.path
        );
        assert_eq!(up.json(), client_body());
        let chunks = chunks_of(res, how).await;
        assert_eq!(chunks[0]["modelVersion"], "gemini-2.5-pro");
    }
    let res = s
        .post("/v1beta/models/fast:countTokens", &prompt_body())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        s.upstream().path,
        "/v1beta/models/gemini-2.5-flash:countTokens"
    );
}

#[tokio::test]
async fn a_model_not_allowed_is_refused_before_upstream() {
    let s = stack(&[
        ("ALLOWED_MODELS", "gpt-4o,gemini-2.5-flash"),
        ("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro"),
    ])
    .await;
    for how in ALL_WAYS {
        let res = s.post(&path("gemini-2.5-pro", how), &prompt_body()).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{how:?}");
        let v = json_of(res).await;
        assert_eq!(v["error"]["code"], 403);
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gemini-2.5-pro")
        );
    }
    assert_eq!(s.fake.total_requests(), 0);

    // Allowed by the alias name, and listed under it only.
    assert_eq!(
        s.post(&path("gpt-4o", How::Unary), &prompt_body())
            .await
            .status(),
        StatusCode::OK
    );
    let v = json_of(s.get("/v1beta/models").await).await;
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"models/gpt-4o"), "{names:?}");
    assert!(names.contains(&"models/gemini-2.5-flash"), "{names:?}");
    assert!(!names.contains(&"models/gemini-2.5-pro"), "{names:?}");
}

// === Pass-through ===

#[tokio::test]
async fn malformed_json_gets_upstreams_own_400() {
    let s = stack(&[("INJECT_PROMPT", "x"), ("DISABLE_SAFETY_FILTERING", "true")]).await;
    let client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Body>();
    let req = Request::post(format!(
        "http://{}/v1beta/models/gemini-2.5-flash:generateContent",
        s.addr
    ))
    .header("x-goog-api-key", s.token.as_str())
    .body(Body::from("{\"contents\": [oops"))
    .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(&s.upstream().body[..], b"{\"contents\": [oops");
}

#[tokio::test]
async fn embeddings_pass_through_untouched_but_only_for_allowed_models() {
    let s = stack(&[
        ("ALLOWED_MODELS", "gemini-2.5-flash,text-embedding-004"),
        ("INJECT_PROMPT", "x"),
        ("MODEL_ALIASES", "text-embedding-004=gemini-embedding-001"),
    ])
    .await;
    let body = json!({"content": {"parts": [{"text": "hello"}]}});
    let res = s
        .post("/v1beta/models/text-embedding-004:embedContent", &body)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = s.upstream();
    assert_eq!(seen.body, body.to_string().as_bytes(), "body untouched");
    assert_eq!(
        seen.path, "/v1beta/models/text-embedding-004:embedContent",
        "a batch names its model in every request: never renamed"
    );

    // ALLOWED_MODELS holds for embeddings too, in both dialects, before any upstream call.
    let calls = s.fake.total_requests();
    let batch = json!({"requests": [{"model": "models/embedding-001", "content": {"parts": [{"text": "a"}]}}]});
    let res = s
        .post("/v1beta/models/embedding-001:batchEmbedContents", &batch)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(res).await["error"]["status"], "PERMISSION_DENIED");
    let res = s
        .post(
            "/v1/embeddings",
            &json!({"model": "embedding-001", "input": "a"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(res).await["error"]["type"], "permission_error");
    assert_eq!(s.fake.total_requests(), calls, "nothing went upstream");
}
