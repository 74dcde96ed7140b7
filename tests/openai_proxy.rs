//! The OpenAI API as full_proxy's users meet it: the `async-openai` client against full_proxy
//! (every layer on) over loopback, FakeGemini upstream. What only the whole gateway does:
//! client tokens, seamless resumed streams, the key pool's errors, policy and limits on the
//! OpenAI dialect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::pin::Pin;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason,
};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::Proxy;
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault, KeyBehavior};

const KEY: &str = "AIzaSyOpenAi-proxy-test-key-00000001";
const MODEL: &str = "gemini-2.5-flash";

async fn setup(vars: &[(&str, &str)]) -> (FakeGemini, Proxy, Client<OpenAIConfig>) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let mut all = vec![
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    let proxy = Proxy::start(&all).await;
    let client = client_for(&proxy, &proxy.token.clone());
    (fake, proxy, client)
}

fn client_for(proxy: &Proxy, token: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", proxy.url()))
            .with_api_key(token),
    )
}

fn hello(prompt: &str) -> CreateChatCompletionRequest {
    serde_json::from_value(
        json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}]}),
    )
    .unwrap()
}

async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// Raw POST of a chat request, for what the typed client hides (status, raw fields).
async fn raw_chat(proxy: &Proxy, token: &str, body: Value) -> (StatusCode, String) {
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn chat_through_the_gateway_with_a_client_token() {
    let (fake, _proxy, client) = setup(&[]).await;
    let res = client.chat().create(hello("hi there")).await.unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(FakeGemini::passage("hi there").as_str())
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let got = fake.last_received().unwrap();
    assert_eq!(got.headers["x-goog-api-key"], KEY);
    assert!(got.headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_wrong_token_is_an_openai_401() {
    let (fake, proxy, _) = setup(&[]).await;
    let err = client_for(&proxy, "not-a-token")
        .chat()
        .create(hello("x"))
        .await
        .unwrap_err();
    match err {
        OpenAIError::ApiError(e) => assert!(!e.to_string().is_empty()),
        other => panic!("expected an API error, got {other:?}"),
    }
    let (status, body) = raw_chat(
        &proxy,
        "not-a-token",
        json!({"model": MODEL, "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["type"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn an_interrupted_stream_reaches_an_openai_client_seamless_with_one_finish_reason() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::DropAfter(2));
    fake.push_fault(Fault::FinishAfter {
        chunks: 1,
        reason: "OTHER".into(),
    });
    let mut req = hello("a river's long journey");
    req.stream_options = serde_json::from_value(json!({"include_usage": true})).unwrap();
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finishes = Vec::new();
    let mut usage = None;
    while let Some(chunk) = next(&mut stream).await {
        let chunk = chunk.unwrap();
        for c in &chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
            finishes.extend(c.finish_reason);
        }
        usage = chunk.usage.or(usage);
    }
    assert_eq!(text, FakeGemini::passage("a river's long journey"));
    assert_eq!(finishes, vec![FinishReason::Stop]);
    assert!(usage.unwrap().completion_tokens > 0);
    assert_eq!(fake.pending_faults(), 0);
}

#[tokio::test]
async fn every_key_cooling_is_an_openai_429_with_retry_after() {
    // (Raw HTTP: async-openai retries 429s with backoff on its own.)
    let (fake, proxy, _client) = setup(&[]).await;
    fake.set_key(KEY, KeyBehavior::exhausted(Duration::from_secs(40)));
    // The first call meets the 429; the second is answered by the gateway alone.
    let _ = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", proxy.token))
        .body(Body::from(
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).to_string(),
        ))
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=40).contains(&retry), "{retry}");
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(KEY));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "{v}"
    );
    assert_eq!(fake.total_requests(), 1);
}

#[tokio::test]
async fn policy_applies_on_the_openai_route() {
    let (fake, proxy, client) = setup(&[
        ("INJECT_PROMPT", "Answer as a ship's captain."),
        ("SHOW_THINKING_PROCESS", "false"),
        ("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro"),
    ])
    .await;
    let req = serde_json::from_value(json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"}
    ]}))
    .unwrap();
    client.chat().create(req).await.unwrap();
    let got = fake.last_received().unwrap();
    assert_eq!(got.path, "/v1beta/models/gemini-2.5-pro:generateContent");
    let system: Vec<String> = got.json()["systemInstruction"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        system.contains(&"Answer as a ship's captain.".to_owned()),
        "{system:?}"
    );
    assert!(system.iter().any(|t| t.contains("Be brief.")), "{system:?}");

    // Thoughts hidden: no reasoning_content at all.
    fake.push_fault(Fault::Thoughts);
    let (status, body) = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "think"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{v}"
    );
    assert_eq!(
        v["choices"][0]["message"]["content"],
        FakeGemini::passage("think")
    );
}

#[tokio::test]
async fn models_and_embeddings_through_the_gateway() {
    let (_fake, _proxy, client) = setup(&[("MODEL_SEARCH", MODEL)]).await;
    let models = client.models().list().await.unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&MODEL), "{ids:?}");
    assert!(ids.contains(&"gemini-2.5-flash-search"), "{ids:?}");
    let req =
        serde_json::from_value(json!({"model": "text-embedding-004", "input": ["one", "two"]}))
            .unwrap();
    let emb = client.embeddings().create(req).await.unwrap();
    assert_eq!(emb.data.len(), 2);
    assert!(!emb.data[0].embedding.is_empty());
}

#[tokio::test]
async fn bad_requests_are_openai_400s_that_never_reach_upstream() {
    let (fake, proxy, _) = setup(&[]).await;
    for body in [
        json!({"messages": [{"role": "user", "content": "no model"}]}),
        json!({"model": MODEL, "messages": "not a list"}),
        json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
    ] {
        let (status, text) = raw_chat(&proxy, &proxy.token, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn the_rate_limit_counts_both_apis_for_one_token() {
    let (_fake, proxy, client) = setup(&[("MAX_REQUESTS_PER_MINUTE", "2")]).await;
    client.chat().create(hello("one")).await.unwrap();
    let req = Request::post(format!("/v1beta/models/{MODEL}:generateContent"))
        .header("x-goog-api-key", proxy.token.as_str())
        .body(Body::from(r#"{"contents":[{"parts":[{"text":"two"}]}]}"#))
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, body) = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "three"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["type"].is_string(), "OpenAI's error shape: {v}");
}

// === Tools, media and JSON schemas through the whole gateway (issue 5) ===

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "weather", "description": "Current weather.",
        "strict": true, "parameters": {"type": "object", "additionalProperties": false,
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn chat(v: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(v).unwrap()
}

/// The one function call of an answer: (id, name, arguments as sent).
fn only_call(res: &CreateChatCompletionResponse) -> (String, String, String) {
    let calls = res.choices[0].message.tool_calls.clone().unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("a function call: {calls:?}");
    };
    (
        call.id.clone(),
        call.function.name.clone(),
        call.function.arguments.clone(),
    )
}

/// The second turn of a tool round trip: the assistant's call echoed back, then its result.
fn round_trip(question: &str, id: &str, name: &str, arguments: &str, result: &str) -> Value {
    json!({"model": MODEL, "tools": weather_tool(), "messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": id, "content": result},
    ]})
}

/// The events of an OpenAI stream as JSON (without the final `[DONE]`, which must be there).
fn openai_events(body: &str) -> Vec<Value> {
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn tool_calls_come_back_through_the_gateway() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Paris"}),
    });
    let req = chat(json!({"model": MODEL, "tools": weather_tool(),
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]}));
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::ToolCalls));
    let (id, name, arguments) = only_call(&res);
    assert!(!id.is_empty());
    assert_eq!(name, "weather");
    let args: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "weather", "description": "Current weather.",
            "parametersJsonSchema": {"type": "object", "additionalProperties": false,
                "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
}

#[tokio::test]
async fn streamed_tool_calls_come_back_through_the_gateway_and_round_trip() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Rome", "days": 2}),
    });
    let req = chat(
        json!({"model": MODEL, "tools": weather_tool(), "stream": true,
        "messages": [{"role": "user", "content": "Weather in Rome?"}]}),
    );
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let (mut name, mut arguments, mut ids, mut indexes, mut finishes) = (
        String::new(),
        String::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    while let Some(chunk) = next(&mut stream).await {
        for c in chunk.unwrap().choices {
            assert!(c.delta.content.as_deref().unwrap_or_default().is_empty());
            for t in c.delta.tool_calls.unwrap_or_default() {
                indexes.push(t.index);
                ids.extend(t.id);
                if let Some(f) = t.function {
                    name.push_str(f.name.as_deref().unwrap_or_default());
                    arguments.push_str(f.arguments.as_deref().unwrap_or_default());
                }
            }
            finishes.extend(c.finish_reason);
        }
    }
    assert_eq!(name, "weather");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Rome", "days": 2})
    );
    assert_eq!(ids.len(), 1, "the id comes once: {ids:?}");
    assert!(!ids[0].is_empty());
    assert!(indexes.iter().all(|i| *i == 0), "{indexes:?}");
    assert_eq!(finishes, vec![FinishReason::ToolCalls]);
    assert_eq!(fake.received().len(), 1, "a function call is never resumed");

    // The streamed call's id carries what the next turn needs, as the unary one does.
    let res = client
        .chat()
        .create(chat(round_trip(
            "Weather in Rome?",
            &ids[0],
            &name,
            &arguments,
            "{\"temp_c\": 21}",
        )))
        .await
        .unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some("The weather tool returned {\"temp_c\":21}.")
    );
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ=="
    );
}

#[tokio::test]
async fn a_tool_round_trip_through_the_gateway_answers_by_name_with_the_signature() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Oslo"}),
    });
    let first = chat(json!({"model": MODEL, "tools": weather_tool(),
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]}));
    let res = client.chat().create(first).await.unwrap();
    let (id, name, arguments) = only_call(&res);
    let res = client
        .chat()
        .create(chat(round_trip(
            "Weather in Oslo?",
            &id,
            &name,
            &arguments,
            "{\"temp_c\": -3}",
        )))
        .await
        .unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some("The weather tool returned {\"temp_c\":-3}.")
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "weather",
                "args": {"city": "Oslo"}}, "thoughtSignature": "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ=="}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "weather",
                "response": {"temp_c": -3}}}]}
        ])
    );
}

#[tokio::test]
async fn image_inputs_reach_upstream_as_inline_and_file_data() {
    let (fake, _proxy, client) = setup(&[]).await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let req = chat(
        json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}"), "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]}),
    );
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(FakeGemini::passage("What is in these images?").as_str())
    );
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [
            {"text": "What is in these images?"},
            {"inlineData": {"mimeType": "image/png", "data": png}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}
        ]}])
    );
}

#[tokio::test]
async fn a_json_schema_reaches_upstream_cleaned_of_keywords_gemini_rejects() {
    let (fake, _proxy, client) = setup(&[]).await;
    let req = chat(json!({"model": MODEL,
    "messages": [{"role": "user", "content": "A person, please."}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true,
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object", "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "examples": ["Ada"]},
                "kind": {"const": "human"},
                "pet": {"$ref": "#/definitions/pet"},
                "tags": {"type": "object", "patternProperties": {"^x-": {"type": "string"}}}
            },
            "required": ["name", "kind"],
            "definitions": {"pet": {"type": "string", "not": {"const": "dragon"}}}
        }}}}));
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let config = &fake.last_received().unwrap().json()["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseJsonSchema"],
        json!({"type": "object", "additionalProperties": false,
            "properties": {
                "name": {"type": "string"},
                "kind": {"enum": ["human"]},
                "pet": {"$ref": "#/$defs/pet"},
                "tags": {"type": "object"}
            },
            "required": ["name", "kind"],
            "$defs": {"pet": {"type": "string"}}})
    );
    assert!(config.get("responseSchema").is_none(), "{config}");
}

// === Request policy on the OpenAI route (issue 8) ===

const SEARCH_PROMPT: &str = "Tell me about lighthouses";

/// What upstream received for one OpenAI chat request through a gateway configured by `vars`.
async fn upstream_for(vars: &[(&str, &str)], body: Value) -> Value {
    let (fake, proxy, _) = setup(vars).await;
    let (status, text) = raw_chat(&proxy, &proxy.token, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    fake.last_received().unwrap().json()
}

/// `a` and `b` are equal once the given top-level fields are removed.
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

/// An OpenAI request with a little of everything, so a rule's side effects would show.
fn rich_chat(model: &str) -> Value {
    json!({"model": model, "temperature": 0.5, "max_tokens": 300, "stop": ["END"],
    "messages": [
        {"role": "system", "content": "You are a sailor."},
        {"role": "user", "content": SEARCH_PROMPT},
        {"role": "assistant", "content": "Which coast?"},
        {"role": "user", "content": "The Atlantic one."}
    ]})
}

fn links_follow_the_answer_once(content: &str) {
    let passage = FakeGemini::passage(SEARCH_PROMPT);
    assert!(content.starts_with(&passage), "the answer first: {content}");
    let tail = &content[passage.len()..];
    let sources = FakeGemini::grounding_sources(SEARCH_PROMPT);
    assert!(!sources.is_empty());
    for (title, uri) in sources {
        assert_eq!(content.matches(&uri).count(), 1, "{uri} once in {content}");
        assert!(tail.contains(&format!("[{title}]({uri})")), "{tail}");
    }
}

#[tokio::test]
async fn search_links_reach_openai_clients_unary_and_streamed() {
    let (fake, _proxy, client) =
        setup(&[("MODEL_SEARCH", MODEL), ("SHOW_SEARCH_LINK", "true")]).await;
    let search_model = format!("{MODEL}-search");
    let mut req = hello(SEARCH_PROMPT);
    req.model = search_model.clone();
    let res = client.chat().create(req.clone()).await.unwrap();
    links_follow_the_answer_once(res.choices[0].message.content.as_deref().unwrap());
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let up = fake.last_received().unwrap();
    assert_eq!(up.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(up.json()["tools"], json!([{"googleSearch": {}}]));

    let mut stream = client.chat().create_stream(req).await.unwrap();
    let (mut content, mut finishes) = (String::new(), Vec::new());
    while let Some(chunk) = next(&mut stream).await {
        for c in chunk.unwrap().choices {
            content.push_str(c.delta.content.as_deref().unwrap_or_default());
            finishes.extend(c.finish_reason);
        }
    }
    links_follow_the_answer_once(&content);
    assert_eq!(finishes, vec![FinishReason::Stop]);
    let up = fake.last_received().unwrap();
    assert_eq!(
        up.path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    assert_eq!(up.json()["tools"], json!([{"googleSearch": {}}]));
}

#[tokio::test]
async fn the_plain_model_gets_no_search_and_no_links_on_the_openai_route() {
    let (fake, _proxy, client) =
        setup(&[("MODEL_SEARCH", MODEL), ("SHOW_SEARCH_LINK", "true")]).await;
    let res = client.chat().create(hello(SEARCH_PROMPT)).await.unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(FakeGemini::passage(SEARCH_PROMPT).as_str())
    );
    assert!(fake.last_received().unwrap().json().get("tools").is_none());
}

#[tokio::test]
async fn hidden_thoughts_never_reach_an_openai_stream_and_usage_still_counts_them() {
    let body = json!({"model": MODEL, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Think first"}]});
    let mut usages = Vec::new();
    for show in ["false", "true"] {
        let (fake, proxy, _) = setup(&[("SHOW_THINKING_PROCESS", show)]).await;
        fake.push_fault(Fault::Thoughts);
        let (status, text) = raw_chat(&proxy, &proxy.token, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let events = openai_events(&text);
        let (mut content, mut reasoning) = (String::new(), String::new());
        for e in &events {
            for c in e["choices"].as_array().unwrap() {
                content.push_str(c["delta"]["content"].as_str().unwrap_or_default());
                reasoning.push_str(c["delta"]["reasoning_content"].as_str().unwrap_or_default());
            }
        }
        assert_eq!(content, FakeGemini::passage("Think first"), "shown: {show}");
        if show == "false" {
            assert!(!text.contains("reasoning_content"), "{text}");
        } else {
            assert!(!reasoning.is_empty(), "the control shows thoughts");
        }
        let usage = events.last().unwrap()["usage"].clone();
        assert!(
            usage["completion_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap()
                > 0,
            "{usage}"
        );
        usages.push(usage);
    }
    assert_eq!(
        usages[0], usages[1],
        "hiding thoughts leaves usage as it was"
    );
}

#[tokio::test]
async fn hidden_thoughts_leave_unary_usage_counting_them() {
    let (fake, proxy, _) = setup(&[("SHOW_THINKING_PROCESS", "false")]).await;
    fake.push_fault(Fault::Thoughts);
    let (status, text) = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Think first"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(!text.contains("reasoning_content"), "{v}");
    let usage = &v["usage"];
    let reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert!(reasoning > 0, "{usage}");
    assert!(usage["completion_tokens"].as_u64().unwrap() > reasoning);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn disable_safety_filtering_shows_upstream_and_changes_nothing_else() {
    let plain = upstream_for(&[], rich_chat(MODEL)).await;
    let sent = upstream_for(&[("DISABLE_SAFETY_FILTERING", "true")], rich_chat(MODEL)).await;
    let settings = sent["safetySettings"].as_array().unwrap();
    for c in [
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    ] {
        assert_eq!(
            settings.iter().filter(|s| s["category"] == c).count(),
            1,
            "{c} in {settings:?}"
        );
    }
    for s in settings {
        assert!(
            ["OFF", "BLOCK_NONE"].contains(&s["threshold"].as_str().unwrap()),
            "{s}"
        );
    }
    assert!(plain.get("safetySettings").is_none(), "{plain}");
    same_except(&sent, &plain, &["safetySettings"]);
}

#[tokio::test]
async fn thinking_defaults_show_upstream_for_listed_models_only() {
    let vars = [
        ("THINKING_BUDGET", "2048"),
        ("THINKING_MODELS", "gemini-2.5-pro"),
    ];
    let plain = upstream_for(&[], rich_chat("gemini-2.5-pro")).await;
    let sent = upstream_for(&vars, rich_chat("gemini-2.5-pro")).await;
    let mut expected = plain.clone();
    expected["generationConfig"]["thinkingConfig"] = json!({"thinkingBudget": 2048});
    assert_eq!(sent, expected);
    let flash = upstream_for(&vars, rich_chat(MODEL)).await;
    assert_eq!(flash, upstream_for(&[], rich_chat(MODEL)).await);
}

#[tokio::test]
async fn a_clients_reasoning_effort_or_thinking_config_wins_over_the_defaults() {
    let vars = [
        ("THINKING_BUDGET", "2048"),
        ("SHOW_THINKING_PROCESS", "true"),
    ];
    // The default alone, for contrast.
    let sent = upstream_for(&vars, rich_chat(MODEL)).await;
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 2048, "includeThoughts": true})
    );

    let mut body = rich_chat(MODEL);
    body["reasoning_effort"] = json!("none");
    let plain = upstream_for(&[], body.clone()).await;
    let sent = upstream_for(&vars, body).await;
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 0, "includeThoughts": false})
    );
    assert_eq!(sent, plain);

    let mut body = rich_chat(MODEL);
    body["thinking_config"] = json!({"thinking_budget": 512, "include_thoughts": false});
    let plain = upstream_for(&[], body.clone()).await;
    let sent = upstream_for(&vars, body).await;
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 512, "includeThoughts": false})
    );
    assert_eq!(sent, plain);
}

#[tokio::test]
async fn code_execution_on_the_openai_route_is_added_and_shown_as_fenced_blocks() {
    let vars = [("TOOLS_CODE_EXECUTION_ENABLED", "true")];
    let (fake, _proxy, client) = setup(&vars).await;
    let prompt = "count these words";
    let res = client.chat().create(hello(prompt)).await.unwrap();
    let content = res.choices[0].message.content.clone().unwrap();
    assert_eq!(
        fake.last_received().unwrap().json()["tools"],
        json!([{"codeExecution": {}}])
    );
    assert!(content.contains("```python\nwords = "), "{content}");
    assert!(content.contains("```output\n3\n```"), "{content}");
    assert!(content.ends_with(&FakeGemini::passage(prompt)), "{content}");

    // Streamed: the same content.
    let mut stream = client.chat().create_stream(hello(prompt)).await.unwrap();
    let mut streamed = String::new();
    while let Some(chunk) = next(&mut stream).await {
        for c in chunk.unwrap().choices {
            streamed.push_str(c.delta.content.as_deref().unwrap_or_default());
        }
    }
    assert_eq!(streamed, content);

    // With function declarations, no code execution (Gemini rejects the mix).
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Lima"}),
    });
    let req = chat(json!({"model": MODEL, "tools": weather_tool(),
        "messages": [{"role": "user", "content": "Weather in Lima?"}]}));
    client.chat().create(req).await.unwrap();
    let tools = fake.last_received().unwrap().json()["tools"].clone();
    assert_eq!(tools.as_array().unwrap().len(), 1, "{tools}");
    assert!(tools[0].get("functionDeclarations").is_some(), "{tools}");
}

#[tokio::test]
async fn a_model_not_allowed_is_an_openai_403_before_upstream() {
    let (fake, proxy, client) = setup(&[
        ("ALLOWED_MODELS", "gpt-4o,gemini-2.5-flash"),
        ("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro"),
    ])
    .await;
    for stream in [false, true] {
        let (status, text) = raw_chat(
            &proxy,
            &proxy.token,
            json!({"model": "gemini-2.5-pro", "stream": stream,
                "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "stream {stream}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "permission_error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gemini-2.5-pro"),
            "{v}"
        );
    }
    let mut req = hello("x");
    req.model = "gemini-2.5-pro".into();
    match client.chat().create(req).await.unwrap_err() {
        OpenAIError::ApiError(e) => assert!(e.api_error.message.contains("not allowed"), "{e:?}"),
        other => panic!("expected an API error, got {other:?}"),
    }
    // A `models/` prefix is the same model, refused the same way.
    let (status, text) = raw_chat(
        &proxy,
        &proxy.token,
        json!({"model": "models/gemini-2.5-pro", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "permission_denied", "{v}");
    // Retrieving it is refused too, in OpenAI's shape.
    let req = Request::get("/v1/models/gemini-2.5-pro")
        .header("authorization", format!("Bearer {}", proxy.token))
        .body(Body::empty())
        .unwrap();
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    assert_eq!(fake.total_requests(), 0);

    // The alias is allowed, and the models list shows only what is.
    let mut req = hello("y");
    req.model = "gpt-4o".into();
    client.chat().create(req).await.unwrap();
    assert_eq!(
        fake.last_received().unwrap().path,
        "/v1beta/models/gemini-2.5-pro:generateContent"
    );
    let models = client.models().list().await.unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&"gpt-4o") && ids.contains(&MODEL), "{ids:?}");
    assert!(!ids.contains(&"gemini-2.5-pro"), "{ids:?}");
}

// === Resumed streams (issue 6) ===

#[tokio::test]
async fn an_empty_stop_is_resumed_for_an_openai_stream() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::Empty);
    let prompt = "a quiet harbour at dawn";
    let mut req = hello(prompt);
    req.stream_options = serde_json::from_value(json!({"include_usage": true})).unwrap();
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let (mut text, mut finishes, mut usage) = (String::new(), Vec::new(), None);
    while let Some(chunk) = next(&mut stream).await {
        let chunk = chunk.unwrap();
        for c in &chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
            finishes.extend(c.finish_reason);
        }
        usage = chunk.usage.or(usage);
    }
    assert_eq!(text, FakeGemini::passage(prompt));
    assert_eq!(finishes, vec![FinishReason::Stop]);
    assert!(usage.unwrap().completion_tokens > 0);
    assert_eq!(fake.pending_faults(), 0);
    let received = fake.received();
    assert_eq!(received.len(), 2, "one resume");
    assert_eq!(
        received[1].json(),
        received[0].json(),
        "nothing was sent yet: the resume asks again"
    );
}

#[tokio::test]
async fn an_empty_unary_answer_is_retried_for_an_openai_client() {
    let (fake, _proxy, client) = setup(&[]).await;
    fake.push_fault(Fault::Empty);
    let res = client.chat().create(hello("an empty sky")).await.unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(FakeGemini::passage("an empty sky").as_str())
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn reasoning_effort_fits_the_model_an_alias_is_served_by() {
    // `reasoning_effort: "none"` turns thinking off, which 2.5 Pro refuses ("Budget 0 is
    // invalid"): on `gpt-4o` mapped to 2.5 Pro it must become 2.5 Pro's lowest budget.
    let (fake, _proxy, client) = setup(&[("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro")]).await;
    let answer = client
        .chat()
        .create(chat(json!({
            "model": "gpt-4o",
            "reasoning_effort": "none",
            "messages": [{"role": "user", "content": "hello"}],
        })))
        .await
        .unwrap();
    assert!(answer.choices[0].message.content.is_some());
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    let budget = sent["generationConfig"]["thinkingConfig"]["thinkingBudget"]
        .as_i64()
        .unwrap();
    assert!(budget >= 128, "{sent}");
    assert!(
        fake.last_received()
            .unwrap()
            .path
            .contains("gemini-2.5-pro"),
        "the alias resolved below"
    );
}
