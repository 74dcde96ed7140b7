//! OpenAiToGemini end to end: the `async-openai` client → OpenAiToGeminiLayer served by axum on
//! a loopback port → UpstreamClient → FakeGemini, all over real sockets.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason,
};
use async_openai::types::embeddings::CreateEmbeddingRequest;
use http::{HeaderValue, Request};
use serde_json::{Value, json};
use tokio_stream_shim::StreamExt;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::client::UpstreamClient;
use tower_gemini::openai::OpenAiToGeminiLayer;
use tower_gemini::testing::{FakeGemini, Fault, KeyBehavior};
use tower_gemini::{Body, Dialect};

const KEY: &str = "AIzaSyOpenAiEndToEndTestKey000000000000";
const MODEL: &str = "gemini-2.5-flash";

/// The stack under test, served on `127.0.0.1:0`: OpenAiToGemini over an upstream client
/// that adds the upstream key. Returns the base URL (with `/v1`) for OpenAI clients.
async fn serve(fake: &FakeGemini, layer: OpenAiToGeminiLayer) -> String {
    let upstream = UpstreamClient::new(fake.url()).unwrap();
    // Sets the upstream key and answers transport failures (as the key-rotation layer would).
    let gemini = service_fn(move |mut req: Request<Body>| {
        let upstream = upstream.clone();
        async move {
            req.headers_mut()
                .insert("x-goog-api-key", HeaderValue::from_static(KEY));
            let res = upstream.oneshot(req).await;
            Ok::<_, Infallible>(
                res.unwrap_or_else(|e| e.to_api_error().into_response(Dialect::Gemini)),
            )
        }
    });
    let svc = ServiceBuilder::new().layer(layer).service(gemini);
    let router = axum::Router::new().fallback_service(svc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}/v1")
}

async fn setup() -> (FakeGemini, Client<OpenAIConfig>) {
    setup_with(OpenAiToGeminiLayer::new()).await
}

async fn setup_with(layer: OpenAiToGeminiLayer) -> (FakeGemini, Client<OpenAIConfig>) {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let base = serve(&fake, layer).await;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(base)
            .with_api_key("sk-client-token"),
    );
    (fake, client)
}

fn chat_request(v: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(v).unwrap()
}

fn hello(prompt: &str) -> CreateChatCompletionRequest {
    chat_request(json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}]}))
}

fn text_of(res: &CreateChatCompletionResponse, i: usize) -> String {
    res.choices[i].message.content.clone().unwrap_or_default()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "weather", "description": "Current weather.",
        "strict": true, "parameters": {"type": "object", "additionalProperties": false,
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

// === chat ===

#[tokio::test]
async fn chat_returns_the_upstream_answer_with_usage() {
    let (fake, client) = setup().await;
    let mut req = hello("Tell me about lighthouses");
    req.model = format!("models/{MODEL}");
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(
        text_of(&res, 0),
        FakeGemini::passage("Tell me about lighthouses")
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(res.model, MODEL);
    let usage = res.usage.unwrap();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    let got = fake.last_received().unwrap();
    assert_eq!(got.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(got.api_key().as_deref(), Some(KEY));
    assert!(got.headers.get("authorization").is_none());
}

#[tokio::test]
async fn system_messages_reach_the_system_instruction() {
    let (fake, client) = setup().await;
    let req = chat_request(json!({"model": MODEL, "messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "hi"}]}));
    client.chat().create(req).await.unwrap();
    let body = fake.last_received().unwrap().json();
    assert_eq!(
        body["systemInstruction"]["parts"][0]["text"],
        "Answer in French."
    );
    assert_eq!(
        body["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );
}

#[tokio::test]
async fn several_choices_come_back_for_n() {
    let (fake, client) = setup().await;
    let mut req = hello("two please");
    req.n = Some(2);
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(res.choices.len(), 2);
    assert_eq!(res.choices[1].index, 1);
    assert_eq!(text_of(&res, 1), FakeGemini::passage("two please"));
    assert_eq!(
        fake.last_received().unwrap().json()["generationConfig"]["candidateCount"],
        2
    );
}

#[tokio::test]
async fn code_execution_reaches_content_as_markdown() {
    let (fake, client) = setup().await;
    fake.push_fault(Fault::CodeExecution {
        code: "print(6 * 7)".into(),
        output: "42\n".into(),
    });
    let res = client.chat().create(hello("compute")).await.unwrap();
    let text = text_of(&res, 0);
    assert!(text.contains("```python\nprint(6 * 7)\n```"), "{text}");
    assert!(text.contains("```output\n42\n```"), "{text}");
    assert!(text.ends_with(&FakeGemini::passage("compute")), "{text}");
}

#[tokio::test]
async fn a_blocked_prompt_is_content_filter() {
    let (fake, client) = setup().await;
    fake.push_fault(Fault::BlockPrompt("SAFETY".into()));
    let res = client.chat().create(hello("bad")).await.unwrap();
    assert_eq!(
        res.choices[0].finish_reason,
        Some(FinishReason::ContentFilter)
    );
    assert!(
        res.choices[0]
            .message
            .refusal
            .as_deref()
            .unwrap()
            .contains("SAFETY")
    );
}

// === streams ===

#[tokio::test]
async fn a_stream_delivers_the_whole_answer_one_finish_and_usage() {
    let (fake, client) = setup().await;
    let mut req = hello("Stream me a story");
    req.stream_options = serde_json::from_value(json!({"include_usage": true})).unwrap();
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finishes = Vec::new();
    let mut usage = None;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        for c in &chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
            finishes.extend(c.finish_reason);
        }
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty());
            usage = Some(u);
        }
    }
    assert_eq!(text, FakeGemini::passage("Stream me a story"));
    assert!(chunks > 2);
    assert_eq!(finishes, vec![FinishReason::Stop]);
    assert!(usage.unwrap().completion_tokens > 0);
    let got = fake.last_received().unwrap();
    assert_eq!(
        got.path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    assert_eq!(got.query.as_deref(), Some("alt=sse"));
}

#[tokio::test]
async fn several_choices_stream_for_n() {
    let (_fake, client) = setup().await;
    let mut req = hello("pair");
    req.n = Some(2);
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut texts = [String::new(), String::new()];
    let mut finishes = [0, 0];
    while let Some(chunk) = stream.next().await {
        for c in chunk.unwrap().choices {
            texts[c.index as usize].push_str(c.delta.content.as_deref().unwrap_or_default());
            finishes[c.index as usize] += usize::from(c.finish_reason.is_some());
        }
    }
    assert_eq!(texts[0], FakeGemini::passage("pair"));
    assert_eq!(texts[1], FakeGemini::passage("pair"));
    assert_eq!(finishes, [1, 1]);
}

#[tokio::test]
async fn an_error_event_mid_stream_reaches_the_client_as_an_error() {
    let (fake, client) = setup().await;
    fake.push_fault(Fault::ErrorEventAfter(1));
    let mut stream = client
        .chat()
        .create_stream(hello("interrupted"))
        .await
        .unwrap();
    let mut text = String::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                for c in &chunk.choices {
                    text.push_str(c.delta.content.as_deref().unwrap_or_default());
                    assert!(c.finish_reason.is_none(), "no clean finish after an error");
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    assert!(FakeGemini::passage("interrupted").starts_with(&text));
    assert!(error.unwrap().contains("internal error"));
}

#[tokio::test]
async fn an_upstream_error_before_a_stream_is_an_api_error_with_its_status() {
    let (fake, client) = setup().await;
    // (A 5xx would be retried by async-openai itself; a 400 is not.)
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: "Request contains an invalid argument.".into(),
    });
    let err = match client.chat().create_stream(hello("x")).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    match err {
        OpenAIError::ApiError(e) => {
            assert_eq!(e.status_code.as_u16(), 400);
            assert_eq!(e.api_error.message, "Request contains an invalid argument.");
            assert_eq!(e.api_error.code.as_deref(), Some("invalid_argument"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(fake.total_requests(), 1);
}

// === tools ===

#[tokio::test]
async fn tool_calls_come_back_with_arguments_and_tool_calls_finish() {
    let (fake, client) = setup().await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Paris"}),
    });
    let req = chat_request(
        json!({"model": MODEL, "tools": weather_tool(), "tool_choice": "auto",
        "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
    );
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::ToolCalls));
    let calls = res.choices[0].message.tool_calls.clone().unwrap();
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("a function call");
    };
    assert_eq!(call.function.name, "weather");
    let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let sent = fake.last_received().unwrap().json();
    let decl = &sent["tools"][0]["functionDeclarations"][0];
    assert_eq!(decl["name"], "weather");
    assert!(decl["parametersJsonSchema"].get("strict").is_none());
    assert_eq!(sent["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
}

#[tokio::test]
async fn streamed_tool_calls_finish_once_with_tool_calls() {
    let (fake, client) = setup().await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Rome"}),
    });
    let req = chat_request(json!({"model": MODEL, "tools": weather_tool(),
        "messages": [{"role": "user", "content": "Weather in Rome?"}]}));
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut names = String::new();
    let mut args = String::new();
    let mut ids = Vec::new();
    let mut finishes = Vec::new();
    while let Some(chunk) = stream.next().await {
        for c in chunk.unwrap().choices {
            for t in c.delta.tool_calls.unwrap_or_default() {
                ids.extend(t.id);
                if let Some(f) = t.function {
                    names.push_str(f.name.as_deref().unwrap_or_default());
                    args.push_str(f.arguments.as_deref().unwrap_or_default());
                }
            }
            finishes.extend(c.finish_reason);
        }
    }
    assert_eq!(names, "weather");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Rome"})
    );
    assert_eq!(ids.len(), 1);
    assert_eq!(finishes, vec![FinishReason::ToolCalls]);
}

#[tokio::test]
async fn a_tool_round_trip_sends_the_result_and_the_thought_signature_back() {
    let (fake, client) = setup().await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Oslo"}),
    });
    let first = chat_request(json!({"model": MODEL, "tools": weather_tool(),
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]}));
    let res = client.chat().create(first).await.unwrap();
    let calls = res.choices[0].message.tool_calls.clone().unwrap();
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("a function call");
    };
    // The client echoes the call as its own types serialize it, then the tool result.
    let second = chat_request(
        json!({"model": MODEL, "tools": weather_tool(), "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "{\"temp_c\": -3}"},
        ]}),
    );
    let res = client.chat().create(second).await.unwrap();
    assert_eq!(
        text_of(&res, 0),
        "The weather tool returned {\"temp_c\":-3}."
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "weather",
            "args": {"city": "Oslo"}}, "thoughtSignature": "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ=="}]})
    );
    assert_eq!(
        sent["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "weather",
            "response": {"temp_c": -3}}}]})
    );
}

// === input and output formats ===

#[tokio::test]
async fn an_image_data_url_reaches_gemini_as_inline_data() {
    let (fake, client) = setup().await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let req = chat_request(
        json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}"), "detail": "high"}}]}]}),
    );
    let res = client.chat().create(req).await.unwrap();
    assert_eq!(
        text_of(&res, 0),
        FakeGemini::passage("What is in this image?")
    );
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": png}})
    );
}

#[tokio::test]
async fn a_json_schema_becomes_the_response_json_schema() {
    let (fake, client) = setup().await;
    let req = chat_request(json!({"model": MODEL,
        "messages": [{"role": "user", "content": "A person, please."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true,
            "schema": {"type": "object", "additionalProperties": false,
                "properties": {"name": {"type": "string"}, "kind": {"const": "human"}},
                "required": ["name", "kind"]}}}}));
    client.chat().create(req).await.unwrap();
    let config = &fake.last_received().unwrap().json()["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseJsonSchema"],
        json!({"type": "object", "additionalProperties": false,
               "properties": {"name": {"type": "string"}, "kind": {"enum": ["human"]}},
               "required": ["name", "kind"]})
    );
}

// === models and embeddings ===

#[tokio::test]
async fn models_are_listed_from_every_page() {
    let (fake, client) = setup_with(OpenAiToGeminiLayer::new().models_page_size(2)).await;
    let list = client.models().list().await.unwrap();
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert!(
        ids.contains(&"gemini-2.5-pro") && ids.contains(&"gemini-embedding-001"),
        "{ids:?}"
    );
    assert_eq!(ids.len(), 9, "{ids:?}");
    assert!(list.data.iter().all(|m| m.owned_by == "google"));
    let pages = fake
        .received()
        .iter()
        .filter(|r| r.path == "/v1beta/models")
        .count();
    assert_eq!(pages, 5, "nine models, two a page");
}

#[tokio::test]
async fn one_model_is_retrieved_and_unknown_ones_are_404s() {
    let (_fake, client) = setup().await;
    let m = client.models().retrieve("gemini-2.5-pro").await.unwrap();
    assert_eq!(m.id, "gemini-2.5-pro");
    match client.models().retrieve("gemini-0-nope").await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 404);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test]
async fn embeddings_come_back_for_each_input() {
    let (fake, client) = setup().await;
    let req: CreateEmbeddingRequest = serde_json::from_value(json!({
        "model": "text-embedding-004", "input": ["first text", "second text"], "dimensions": 8}))
    .unwrap();
    let res = client.embeddings().create(req).await.unwrap();
    assert_eq!(res.data.len(), 2);
    assert_eq!(res.data[1].index, 1);
    assert_eq!(res.data[0].embedding.len(), 8);
    assert_ne!(res.data[0].embedding, res.data[1].embedding);
    let got = fake.last_received().unwrap();
    assert_eq!(
        got.path,
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    );

    let req: CreateEmbeddingRequest = serde_json::from_value(json!({
        "model": "text-embedding-004", "input": "one", "encoding_format": "base64", "dimensions": 4}))
    .unwrap();
    let res = client.embeddings().create_base64(req).await.unwrap();
    assert_eq!(res.data.len(), 1);
}

// === bad requests ===

#[tokio::test]
async fn bad_requests_are_openai_errors_that_never_reach_upstream() {
    let (fake, client) = setup().await;
    let req = chat_request(json!({"model": MODEL, "messages": [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "call_unknown", "content": "1"}]}));
    match client.chat().create(req).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 400);
            assert_eq!(e.api_error.r#type.as_deref(), Some("invalid_request_error"));
            assert!(
                e.api_error.message.contains("call_unknown"),
                "{}",
                e.api_error.message
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let req =
        chat_request(json!({"model": "bad/model", "messages": [{"role": "user", "content": "x"}]}));
    match client.chat().create(req).await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.status_code.as_u16(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn an_unknown_model_is_an_openai_404() {
    let (_fake, client) = setup().await;
    let mut req = hello("x");
    req.model = "gemini-0-nope".into();
    match client.chat().create(req).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 404);
            assert_eq!(e.api_error.r#type.as_deref(), Some("not_found_error"));
            assert!(e.api_error.message.contains("gemini-0-nope"));
        }
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_in_openai_shape() {
    let (fake, _client) = setup().await;
    let base = serve(&fake, OpenAiToGeminiLayer::new()).await;
    let url = format!("{base}/chat/completions");
    let (status, _, body) = raw_post(&url, "{\"model\": ").await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["param"].is_null());
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn upstream_quota_errors_keep_their_status_and_retry_after() {
    let (fake, _client) = setup().await;
    fake.set_key(KEY, KeyBehavior::exhausted(Duration::from_secs(12)));
    let base = serve(&fake, OpenAiToGeminiLayer::new()).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]});
    let (status, head, body) =
        raw_post(&format!("{base}/chat/completions"), &body.to_string()).await;
    assert_eq!(status, 429);
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 12\r\n"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn upstream_key_errors_never_echo_the_key() {
    let (fake, _client) = setup().await;
    fake.set_key(KEY, KeyBehavior::Invalid);
    let base = serve(&fake, OpenAiToGeminiLayer::new()).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]});
    let (status, head, body) =
        raw_post(&format!("{base}/chat/completions"), &body.to_string()).await;
    assert_eq!(status, 400);
    assert!(body.contains("API key not valid"), "{body}");
    assert!(!body.contains(KEY) && !head.contains(KEY), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn thoughts_reach_reasoning_content_never_content() {
    let (fake, _client) = setup().await;
    let base = serve(&fake, OpenAiToGeminiLayer::new()).await;
    let url = format!("{base}/chat/completions");
    let body = json!({"model": MODEL, "reasoning_effort": "low",
        "messages": [{"role": "user", "content": "Think first"}]});
    let (status, _, answer) = raw_post(&url, &body.to_string()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&answer).unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], FakeGemini::passage("Think first"));
    assert!(!msg["reasoning_content"].as_str().unwrap().is_empty());
    assert!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    // Streamed: the same split.
    fake.push_fault(Fault::Thoughts);
    let body = json!({"model": MODEL, "stream": true,
        "messages": [{"role": "user", "content": "Think first"}]});
    let (status, _, events) = raw_post(&url, &body.to_string()).await;
    assert_eq!(status, 200);
    let (mut content, mut reasoning) = (String::new(), String::new());
    for line in events.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        content.push_str(delta["content"].as_str().unwrap_or_default());
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
    }
    assert_eq!(content, FakeGemini::passage("Think first"));
    assert!(!reasoning.is_empty());
}

/// A plain HTTP/1.1 POST over a socket (no client library in the way): status, header block,
/// body.
async fn raw_post(url: &str, body: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut sock = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (status, format!("{head}\r\n"), body.to_owned())
}

/// `StreamExt::next` without another dependency.
mod tokio_stream_shim {
    use std::future::poll_fn;
    use std::pin::Pin;

    pub(crate) trait StreamExt: futures_core::Stream + Unpin {
        async fn next(&mut self) -> Option<Self::Item> {
            poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
        }
    }

    impl<S: futures_core::Stream + Unpin + ?Sized> StreamExt for S {}
}
