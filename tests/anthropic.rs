//! Anthropic's Messages API as Claude Code and the Anthropic SDKs meet it: full_proxy (every
//! layer on, two pool keys) over loopback, FakeGemini upstream. Plain and streamed messages,
//! tool use round trips, thinking signatures across a key rotation, images, count_tokens, and
//! errors in Anthropic's shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use support::Proxy;
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault, KeyBehavior};

const KEYS: [&str; 2] = [
    "AIzaSyAnthropic-proxy-test-key-000001",
    "AIzaSyAnthropic-proxy-test-key-000002",
];
const MODEL: &str = "gemini-2.5-flash";

async fn setup(vars: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let keys = KEYS.join(",");
    let mut all = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    let proxy = Proxy::start(&all).await;
    (fake, proxy)
}

/// A POST with Anthropic's headers: the token in `x-api-key`, `anthropic-version`.
async fn post(
    proxy: &Proxy,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, HeaderMap, String) {
    post_with(proxy, path, &[("x-api-key", token)], body.to_string()).await
}

async fn post_with(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::post(path)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn message(proxy: &Proxy, body: Value) -> Value {
    let (status, _, text) = post(proxy, "/v1/messages", &proxy.token, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// `(event name, data)` of each event of an SSE body; the name must match the data's type.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(d).unwrap());
                }
            }
            let (name, data) = (name.expect("event name"), data.expect("event data"));
            assert_eq!(data["type"], name.as_str(), "{e}");
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// The text of every `text_delta`.
fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
        .collect()
}

fn hello(prompt: &str) -> Value {
    json!({"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}]})
}

fn is_anthropic_error(text: &str, kind: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");
    v
}

// === Messages ===

#[tokio::test]
async fn a_plain_message_with_the_token_in_x_api_key() {
    let (fake, proxy) = setup(&[]).await;
    let v = message(&proxy, hello("a quiet harbour")).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["content"].as_array().unwrap().len(), 1);
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(
        v["content"][0]["text"],
        FakeGemini::passage("a quiet harbour")
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);

    // The client's token never travels upstream, in any header.
    let got = fake.last_received().unwrap();
    assert!(
        got.path
            .ends_with("/models/gemini-2.5-flash:generateContent"),
        "{}",
        got.path
    );
    assert!(KEYS.contains(&got.headers["x-goog-api-key"].to_str().unwrap()));
    for h in ["x-api-key", "authorization", "anthropic-version"] {
        assert!(got.headers.get(h).is_none(), "{h} reached upstream");
    }
    let all_headers = format!("{:?}", got.headers);
    assert!(!all_headers.contains(&proxy.token));

    // Counted once, under the Anthropic route and the model asked for.
    let metrics = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let metrics = collect_limited(metrics.into_body(), 1 << 24).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"gemini_gateway_requests_total{route="anthropic.messages",model="gemini-2.5-flash",status="200"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bearer_token_works_too_and_system_and_sampling_reach_gemini() {
    let (fake, proxy) = setup(&[]).await;
    let body = json!({
        "model": MODEL,
        "max_tokens": 77,
        "temperature": 0.25,
        "top_p": 0.5,
        "top_k": 12,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "someone"},
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "the tides"}]}],
    });
    let auth = format!("Bearer {}", proxy.token);
    let (status, _, text) = post_with(
        &proxy,
        "/v1/messages",
        &[("authorization", auth.as_str())],
        body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let got: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    assert_eq!(got["systemInstruction"]["parts"][0]["text"], "Be brief.");
    let c = &got["generationConfig"];
    assert_eq!(c["maxOutputTokens"], 77);
    assert_eq!(c["temperature"], 0.25);
    assert_eq!(c["topP"], 0.5);
    assert_eq!(c["topK"], 12);
    assert_eq!(c["stopSequences"], json!(["END"]));
    assert!(got.get("metadata").is_none());
}

#[tokio::test]
async fn a_streamed_message_is_anthropics_exact_event_sequence() {
    let (_fake, proxy) = setup(&[]).await;
    let mut body = hello("a lighthouse keeper");
    body["stream"] = json!(true);
    let (status, headers, text) = post(&proxy, "/v1/messages", &proxy.token, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "text/event-stream");
    let ev = events(&text);
    let n = names(&ev);
    assert_eq!(
        &n[..3],
        ["message_start", "content_block_start", "ping"],
        "{n:?}"
    );
    assert_eq!(
        &n[n.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{n:?}"
    );
    let deltas = &n[3..n.len() - 3];
    assert!(deltas.len() > 1, "{n:?}");
    assert!(deltas.iter().all(|d| *d == "content_block_delta"), "{n:?}");
    assert_eq!(ev[0].1["message"]["content"], json!([]));
    assert_eq!(ev[0].1["message"]["model"], MODEL);
    assert_eq!(
        ev[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert!(
        ev.iter()
            .filter(|(_, d)| d.get("index").is_some())
            .all(|(_, d)| d["index"] == 0)
    );
    assert_eq!(
        streamed_text(&ev),
        FakeGemini::passage("a lighthouse keeper")
    );
    let delta = &ev[ev.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(delta["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_cut_gemini_stream_is_one_seamless_anthropic_stream() {
    let (fake, proxy) = setup(&[]).await;
    fake.push_fault(Fault::DropAfter(2));
    let mut body = hello("a long voyage home");
    body["stream"] = json!(true);
    let (_, _, text) = post(&proxy, "/v1/messages", &proxy.token, body).await;
    let ev = events(&text);
    assert_eq!(
        streamed_text(&ev),
        FakeGemini::passage("a long voyage home")
    );
    let n = names(&ev);
    assert_eq!(n.iter().filter(|n| **n == "message_stop").count(), 1);
    assert_eq!(n.iter().filter(|n| **n == "message_start").count(), 1);
    assert!(!n.contains(&"error"), "{n:?}");
    assert_eq!(fake.pending_faults(), 0);
    assert!(fake.total_requests() >= 2);
}

#[tokio::test]
async fn a_stream_that_cannot_be_repaired_ends_with_an_error_event() {
    let (fake, proxy) = setup(&[("MAX_CONSECUTIVE_RETRIES", "1")]).await;
    for _ in 0..4 {
        fake.push_fault(Fault::ErrorEventAfter(0));
    }
    let mut body = hello("a storm");
    body["stream"] = json!(true);
    let (status, _, text) = post(&proxy, "/v1/messages", &proxy.token, body).await;
    assert_eq!(status, StatusCode::OK);
    let ev = events(&text);
    let (last, data) = ev.last().unwrap();
    assert_eq!(last, "error", "{:?}", names(&ev));
    assert!(data["error"]["type"].is_string() && data["error"]["message"].is_string());
    assert!(!names(&ev).contains(&"message_stop"));
    assert!(!text.contains(KEYS[0]) && !text.contains(KEYS[1]));
}

#[tokio::test]
async fn a_blocked_prompt_is_a_refusal_streamed_or_not() {
    let (fake, proxy) = setup(&[]).await;
    fake.push_fault(Fault::BlockPrompt("SAFETY".into()));
    let v = message(&proxy, hello("something blocked")).await;
    assert_eq!(v["stop_reason"], "refusal");
    assert!(v["content"][0]["text"].as_str().unwrap().contains("SAFETY"));

    fake.push_fault(Fault::BlockPrompt("PROHIBITED_CONTENT".into()));
    let mut body = hello("something blocked");
    body["stream"] = json!(true);
    let (_, _, text) = post(&proxy, "/v1/messages", &proxy.token, body).await;
    let ev = events(&text);
    let delta = ev
        .iter()
        .find(|(n, _)| n == "message_delta")
        .expect("message_delta");
    assert_eq!(delta.1["delta"]["stop_reason"], "refusal");
    assert_eq!(ev.last().unwrap().0, "message_stop");
    // Asking again would repeat the block: one upstream call each.
    assert_eq!(fake.total_requests(), 2);
}

// === Tools ===

fn weather_tool() -> Value {
    // What Claude Code's tool schemas look like: draft 2020-12 keywords Gemini refuses.
    json!({
        "name": "get_weather",
        "description": "Weather for a place",
        "input_schema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "place": {"$ref": "#/definitions/Place"},
                "days": {"type": "integer", "exclusiveMinimum": 0},
                "tags": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}},
            },
            "required": ["place"],
            "additionalProperties": false,
            "definitions": {"Place": {"type": "string", "const": "Lisbon"}},
        },
    })
}

#[tokio::test]
async fn tool_use_round_trip_with_streamed_input_that_concatenates_to_valid_json() {
    let (fake, proxy) = setup(&[]).await;
    let args = json!({
        "place": "Lisbon",
        "days": 3,
        "notes": "a long argument so the input arrives in several pieces ".repeat(8),
        "nested": {"list": [1, 2, 3], "unicode": "ação ☀"},
    });
    fake.push_fault(Fault::FunctionCall {
        name: "get_weather".into(),
        args: args.clone(),
    });
    let first = json!({
        "model": MODEL,
        "max_tokens": 512,
        "stream": true,
        "tools": [weather_tool()],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "weather in Lisbon?"}],
    });
    let (status, _, text) = post(&proxy, "/v1/messages", &proxy.token, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // The schema went upstream cleaned, the choice as Gemini's.
    let sent: Value = serde_json::from_slice(&fake.received()[0].body).unwrap();
    let decl = &sent["tools"][0]["functionDeclarations"][0];
    assert_eq!(decl["name"], "get_weather");
    let schema = &decl["parametersJsonSchema"];
    assert!(schema.get("$schema").is_none(), "{schema}");
    assert_eq!(schema["properties"]["place"]["$ref"], "#/$defs/Place");
    assert_eq!(schema["$defs"]["Place"]["enum"], json!(["Lisbon"]));
    assert_eq!(
        sent["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
    );

    let ev = events(&text);
    let start = ev
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    let index = start.1["index"].clone();
    let block = &start.1["content_block"];
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({}));
    let id = block["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("toolu_"), "{id}");
    let pieces: Vec<&str> = ev
        .iter()
        .filter(|(_, d)| d["index"] == index && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert!(pieces.len() > 1, "{pieces:?}");
    let input: Value = serde_json::from_str(&pieces.concat()).expect("valid JSON");
    assert_eq!(input, args);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");

    // The result goes back; Gemini gets the call and its response by name.
    let mut second = first.clone();
    second["stream"] = json!(false);
    second["tool_choice"] = json!({"type": "auto"});
    second["messages"] = json!([
        {"role": "user", "content": "weather in Lisbon?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "get_weather", "input": input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": [{"type": "text", "text": "{\"temp\": 21}"}]}]},
    ]);
    let v = message(&proxy, second).await;
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["content"][0]["text"],
        "The get_weather tool returned {\"temp\":21}."
    );
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    let contents = sent["contents"].as_array().unwrap();
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[1]["parts"][0]["functionCall"]["args"], args);
    assert_eq!(
        contents[1]["parts"][0]["thoughtSignature"],
        FakeGemini::THOUGHT_SIGNATURE
    );
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"temp": 21}})
    );
}

#[tokio::test]
async fn a_failed_tool_result_reaches_gemini_as_an_error() {
    let (fake, proxy) = setup(&[]).await;
    let body = json!({
        "model": MODEL,
        "max_tokens": 100,
        "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"place": "Lisbon"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": "service down"}]},
        ],
    });
    message(&proxy, body).await;
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["response"],
        json!({"error": "service down"})
    );
    assert_eq!(sent["contents"][1]["parts"][0]["text"], "Let me look.");
}

// === Thinking and signatures ===

fn thinking_request(stream: bool) -> Value {
    json!({
        "model": "gemini-3-pro-preview",
        "max_tokens": 4096,
        "stream": stream,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [weather_tool()],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "plan a trip"}],
    })
}

fn key_of(req: &tower_gemini::testing::ReceivedRequest) -> String {
    req.headers["x-goog-api-key"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_thinking_round_trip_carries_the_signature_to_gemini_after_the_key_rotated() {
    let (fake, proxy) = setup(&[]).await;
    let v = message(&proxy, thinking_request(false)).await;
    let sent: Value = serde_json::from_slice(&fake.received()[0].body).unwrap();
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        // 2,048 tokens is `medium`; 3 Pro offers `low` and `high`, so the nearest above.
        json!({"thinkingLevel": "high", "includeThoughts": true})
    );
    let content = v["content"].as_array().unwrap();
    assert_eq!(content[0]["type"], "thinking", "{v}");
    assert!(!content[0]["thinking"].as_str().unwrap().is_empty());
    assert_eq!(content[0]["signature"], FakeGemini::THOUGHT_SIGNATURE);
    assert_eq!(content[1]["type"], "tool_use");
    let id = content[1]["id"].as_str().unwrap().to_owned();
    assert!(id.ends_with(FakeGemini::THOUGHT_SIGNATURE), "{id}");
    assert_eq!(v["stop_reason"], "tool_use");

    let result = json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny"}]});
    // A typed client that keeps only the tool_use (its id carries the signature), and one
    // that keeps the thinking block but rewrites ids: both reach Gemini 3 with the signature,
    // each on another pool key than the turn before.
    let histories = [
        json!([{"type": "tool_use", "id": id, "name": "get_weather", "input": {}}]),
        json!([content[0].clone(), {"type": "tool_use", "id": "toolu_plain", "name": "get_weather", "input": {}}]),
    ];
    for (turn, assistant) in histories.into_iter().enumerate() {
        let mut result = result.clone();
        if turn == 1 {
            result["content"][0]["tool_use_id"] = json!("toolu_plain");
        }
        let mut next = thinking_request(false);
        next["tool_choice"] = json!({"type": "auto"});
        next["messages"] = json!([
            {"role": "user", "content": "plan a trip"},
            {"role": "assistant", "content": assistant},
            result,
        ]);
        let v = message(&proxy, next).await;
        assert_eq!(v["stop_reason"], "end_turn", "{v}");
        let received = fake.received();
        let (before, last) = (&received[received.len() - 2], &received[received.len() - 1]);
        assert_ne!(key_of(before), key_of(last), "the key rotated");
        let sent: Value = serde_json::from_slice(&last.body).unwrap();
        let call = &sent["contents"][1]["parts"][0];
        assert!(call.get("functionCall").is_some(), "{sent}");
        assert_eq!(call["thoughtSignature"], FakeGemini::THOUGHT_SIGNATURE);
    }
}

/// The content blocks a streaming client assembles from the events (as the SDKs do).
fn assemble(events: &[(String, Value)]) -> Vec<Value> {
    let mut blocks: Vec<Value> = Vec::new();
    let mut json_parts: Vec<String> = Vec::new();
    for (name, d) in events {
        match name.as_str() {
            "content_block_start" => {
                blocks.push(d["content_block"].clone());
                json_parts.push(String::new());
            }
            "content_block_delta" => {
                let (b, delta) = (blocks.last_mut().unwrap(), &d["delta"]);
                match delta["type"].as_str().unwrap() {
                    "text_delta" => {
                        b["text"] = json!(format!(
                            "{}{}",
                            b["text"].as_str().unwrap(),
                            delta["text"].as_str().unwrap()
                        ))
                    }
                    "thinking_delta" => {
                        b["thinking"] = json!(format!(
                            "{}{}",
                            b["thinking"].as_str().unwrap(),
                            delta["thinking"].as_str().unwrap()
                        ))
                    }
                    "signature_delta" => b["signature"] = delta["signature"].clone(),
                    "input_json_delta" => json_parts
                        .last_mut()
                        .unwrap()
                        .push_str(delta["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let raw = json_parts.last().unwrap();
                if !raw.is_empty() {
                    blocks.last_mut().unwrap()["input"] = serde_json::from_str(raw).unwrap();
                }
            }
            _ => {}
        }
    }
    blocks
}

#[tokio::test]
async fn a_twenty_turn_tool_conversation_on_gemini_3_survives_every_key_rotation() {
    let (fake, proxy) = setup(&[]).await;
    let mut messages = vec![json!({"role": "user", "content": "plan a long trip"})];
    for turn in 0..20 {
        let stream = turn % 2 == 1;
        // After a tool result the fake answers in text unless told to call again.
        fake.push_fault(Fault::FunctionCall {
            name: "get_weather".into(),
            args: json!({"place": format!("stop {turn}")}),
        });
        let mut req = thinking_request(stream);
        req["messages"] = json!(messages);
        let (status, _, text) = post(&proxy, "/v1/messages", &proxy.token, req).await;
        assert_eq!(status, StatusCode::OK, "turn {turn}: {text}");
        let content = if stream {
            assemble(&events(&text))
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["content"]
                .as_array()
                .unwrap()
                .clone()
        };
        let call = content
            .iter()
            .find(|b| b["type"] == "tool_use")
            .expect("a tool_use")
            .clone();
        messages.push(json!({"role": "assistant", "content": content}));
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": format!("leg {turn} booked")},
        ]}));
    }
    let received = fake.received();
    assert_eq!(received.len(), 20);
    // Round robin over two keys: every turn was served by the other key than the one before.
    for pair in received.windows(2) {
        assert_ne!(key_of(&pair[0]), key_of(&pair[1]));
    }
    let last: Value = serde_json::from_slice(&received[19].body).unwrap();
    let calls: Vec<&Value> = last["contents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "model")
        .map(|c| &c["parts"][0])
        .collect();
    assert_eq!(calls.len(), 19);
    assert!(
        calls
            .iter()
            .all(|p| p["thoughtSignature"] == FakeGemini::THOUGHT_SIGNATURE),
        "{last}"
    );
}

#[tokio::test]
async fn gemini_3_refuses_a_call_whose_signature_is_lost() {
    // What the carriers above prevent: FakeGemini refuses, as Gemini 3 does, a history whose
    // function call lacks its signature (or carries one it never issued).
    let (_fake, proxy) = setup(&[]).await;
    for part in [
        json!({"functionCall": {"name": "get_weather", "args": {}}}),
        json!({"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": "Zm9yZ2Vk"}),
    ] {
        let body = json!({"contents": [
            {"role": "user", "parts": [{"text": "plan a trip"}]},
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
        ]});
        let auth = format!("Bearer {}", proxy.token);
        let (status, _, text) = post_with(
            &proxy,
            "/v1beta/models/gemini-3-pro-preview:generateContent",
            &[("authorization", auth.as_str())],
            body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(
            text.contains("thought signature") || text.contains("thought_signature"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_streamed_thinking_block_ends_with_its_signature_before_the_tool_use() {
    let (_fake, proxy) = setup(&[]).await;
    let (status, _, text) =
        post(&proxy, "/v1/messages", &proxy.token, thinking_request(true)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let ev = events(&text);
    let kinds: Vec<String> = ev
        .iter()
        .map(|(n, d)| match n.as_str() {
            "content_block_start" => {
                format!("start:{}", d["content_block"]["type"].as_str().unwrap())
            }
            "content_block_delta" => d["delta"]["type"].as_str().unwrap().to_owned(),
            other => other.to_owned(),
        })
        .collect();
    let thinking_end = kinds
        .iter()
        .position(|k| k == "signature_delta")
        .expect("signature");
    assert_eq!(
        kinds[..3],
        ["message_start", "start:thinking", "ping"],
        "{kinds:?}"
    );
    assert!(
        kinds[3..thinking_end].iter().all(|k| k == "thinking_delta"),
        "{kinds:?}"
    );
    assert_eq!(kinds[thinking_end + 1], "content_block_stop");
    assert_eq!(kinds[thinking_end + 2], "start:tool_use");
    let sig = &ev[thinking_end].1["delta"]["signature"];
    assert_eq!(sig, FakeGemini::THOUGHT_SIGNATURE);
    // Blocks are numbered in order.
    assert_eq!(ev[thinking_end + 2].1["index"], 1);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

// === Media ===

#[tokio::test]
async fn images_and_pdfs_reach_gemini_as_inline_and_file_data() {
    let (fake, proxy) = setup(&[]).await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let body = json!({
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}},
            {"type": "text", "text": "what is in these?"},
        ]}],
    });
    let v = message(&proxy, body).await;
    assert_eq!(v["content"][0]["type"], "text");
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    let parts = &sent["contents"][0]["parts"];
    assert_eq!(
        parts[0]["inlineData"],
        json!({"mimeType": "image/png", "data": png})
    );
    assert_eq!(
        parts[1]["fileData"],
        json!({"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"})
    );
    assert_eq!(
        parts[2]["inlineData"],
        json!({"mimeType": "application/pdf", "data": "JVBERi0xLjQK"})
    );
    assert_eq!(parts[3]["text"], "what is in these?");
}

// === count_tokens ===

#[tokio::test]
async fn count_tokens_is_geminis_own_count_of_the_translated_request() {
    let (fake, proxy) = setup(&[]).await;
    let short = json!({"model": MODEL, "messages": [{"role": "user", "content": "the sea"}]});
    let mut long = short.clone();
    long["system"] = json!("You are a sailor who answers with many long nautical words.");
    long["tools"] = json!([weather_tool()]);
    let (status, _, text) = post(&proxy, "/v1/messages/count_tokens", &proxy.token, short).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let short_count = serde_json::from_str::<Value>(&text).unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    let (_, _, text) = post(&proxy, "/v1/messages/count_tokens", &proxy.token, long).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let long_count = v["input_tokens"].as_u64().unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    assert!(long_count > short_count, "{long_count} vs {short_count}");

    let got = fake.last_received().unwrap();
    assert!(
        got.path.ends_with("/models/gemini-2.5-flash:countTokens"),
        "{}",
        got.path
    );
    let sent: Value = serde_json::from_slice(&got.body).unwrap();
    let g = &sent["generateContentRequest"];
    assert_eq!(g["model"], "models/gemini-2.5-flash");
    assert!(
        g["systemInstruction"].is_object() && g["tools"].is_array(),
        "{sent}"
    );
    // The same count as Gemini's own route gives for that request.
    let auth = format!("Bearer {}", proxy.token);
    let (_, _, native) = post_with(
        &proxy,
        "/v1beta/models/gemini-2.5-flash:countTokens",
        &[("authorization", auth.as_str())],
        sent.to_string(),
    )
    .await;
    let native: Value = serde_json::from_str(&native).unwrap();
    assert_eq!(native["totalTokens"].as_u64(), Some(long_count));
}

// === Models and errors ===

#[tokio::test]
async fn a_claude_name_is_served_through_model_aliases_and_an_unknown_one_is_a_clear_404() {
    let (fake, proxy) = setup(&[("MODEL_ALIASES", "claude-sonnet-4-5=gemini-2.5-pro")]).await;
    let mut body = hello("a map");
    body["model"] = json!("claude-sonnet-4-5");
    let v = message(&proxy, body.clone()).await;
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert!(
        fake.last_received()
            .unwrap()
            .path
            .ends_with("/models/gemini-2.5-pro:generateContent")
    );

    body["model"] = json!("claude-opus-4-1");
    let (status, _, text) = post(&proxy, "/v1/messages", &proxy.token, body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v = is_anthropic_error(&text, "not_found_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("claude-opus-4-1") && msg.contains("MODEL_ALIASES"),
        "{msg}"
    );
}

#[tokio::test]
async fn auth_errors_are_anthropic_401s_that_never_reach_upstream() {
    let (fake, proxy) = setup(&[]).await;
    let (status, headers, text) = post(&proxy, "/v1/messages", "not-a-token", hello("x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    is_anthropic_error(&text, "authentication_error");
    assert!(headers.contains_key("x-request-id"));
    let (status, _, text) = post_with(&proxy, "/v1/messages", &[], hello("x").to_string()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v = is_anthropic_error(&text, "authentication_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-api-key")
    );
    let (status, _, text) = post(
        &proxy,
        "/v1/messages/count_tokens",
        "not-a-token",
        hello("x"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    is_anthropic_error(&text, "authentication_error");
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn bad_requests_are_anthropic_400s_and_413s() {
    let (fake, proxy) = setup(&[("MAX_BODY_BYTES", "4096")]).await;
    let token = proxy.token.clone();
    let (status, _, text) = post_with(
        &proxy,
        "/v1/messages",
        &[("x-api-key", token.as_str())],
        "{not json".into(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    is_anthropic_error(&text, "invalid_request_error");
    let mut no_max = hello("x");
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let (status, _, text) = post(&proxy, "/v1/messages", &token, no_max).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        is_anthropic_error(&text, "invalid_request_error")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    let (status, _, text) =
        post(&proxy, "/v1/messages", &token, hello(&"word ".repeat(2000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    is_anthropic_error(&text, "request_too_large");
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn a_rate_limit_is_an_anthropic_429_with_retry_after() {
    let (fake, proxy) = setup(&[("MAX_REQUESTS_PER_MINUTE", "1")]).await;
    message(&proxy, hello("one")).await;
    let (status, headers, text) = post(&proxy, "/v1/messages", &proxy.token, hello("two")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    is_anthropic_error(&text, "rate_limit_error");
    assert_eq!(fake.total_requests(), 1);
}

#[tokio::test]
async fn every_key_cooling_is_an_anthropic_429_naming_no_key() {
    let (fake, proxy) = setup(&[]).await;
    for k in KEYS {
        fake.set_key(k, KeyBehavior::exhausted(Duration::from_secs(40)));
    }
    let _ = post(&proxy, "/v1/messages", &proxy.token, hello("x")).await;
    let (status, headers, text) = post(&proxy, "/v1/messages", &proxy.token, hello("x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((30..=40).contains(&retry), "{retry}");
    is_anthropic_error(&text, "rate_limit_error");
    assert!(!KEYS.iter().any(|k| text.contains(k)));
}

#[tokio::test]
async fn every_key_disabled_is_an_anthropic_overloaded_503() {
    let (fake, proxy) = setup(&[("MAX_FAILURES", "1")]).await;
    for k in KEYS {
        fake.set_key(k, KeyBehavior::PermissionDenied);
    }
    let _ = post(&proxy, "/v1/messages", &proxy.token, hello("x")).await;
    let (status, _, text) = post(&proxy, "/v1/messages", &proxy.token, hello("x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    is_anthropic_error(&text, "overloaded_error");
    assert!(!KEYS.iter().any(|k| text.contains(k)));
}

// === Models ===

async fn get_models(proxy: &Proxy, path: &str, anthropic: bool) -> (StatusCode, Value) {
    let mut b = Request::get(path).header("x-api-key", proxy.token.as_str());
    if anthropic {
        b = b.header("anthropic-version", "2023-06-01");
    }
    let res = UpstreamClient::new(proxy.url())
        .unwrap()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn anthropic_clients_list_models_in_anthropics_shape_with_the_aliases() {
    let (_fake, proxy) = setup(&[("MODEL_ALIASES", "claude-sonnet-4-5=gemini-2.5-pro")]).await;
    let (status, v) = get_models(&proxy, "/v1/models?limit=1000", true).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gemini-2.5-flash") && ids.contains(&"claude-sonnet-4-5"),
        "{ids:?}"
    );
    assert_eq!(v["data"][0]["type"], "model");
    assert!(v["data"][0]["display_name"].is_string() && v["data"][0]["created_at"].is_string());
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], ids[0]);
    assert_eq!(v["last_id"], *ids.last().unwrap());

    // Anthropic's paging over the whole list.
    let (_, first) = get_models(&proxy, "/v1/models?limit=2", true).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["has_more"], true);
    let after = first["last_id"].as_str().unwrap();
    let (_, next) = get_models(
        &proxy,
        &format!("/v1/models?limit=2&after_id={after}"),
        true,
    )
    .await;
    assert_eq!(next["first_id"], ids[2]);
    let (_, before) = get_models(
        &proxy,
        &format!("/v1/models?limit=5&before_id={}", ids[2]),
        true,
    )
    .await;
    assert_eq!(before["data"].as_array().unwrap().len(), 2);
    assert_eq!(before["has_more"], false);

    let (status, m) = get_models(&proxy, "/v1/models/gemini-2.5-pro", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m["id"], "gemini-2.5-pro");
    assert_eq!(m["type"], "model");
    let (status, e) = get_models(&proxy, "/v1/models/claude-nothing", true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["type"], "not_found_error", "{e}");

    // Without `anthropic-version` the path stays OpenAI's.
    let (_, openai) = get_models(&proxy, "/v1/models", false).await;
    assert_eq!(openai["object"], "list", "{openai}");
}

#[tokio::test]
async fn per_model_choices_follow_the_model_an_alias_is_served_by() {
    // 2.5 Pro cannot turn thinking off (Google: "Budget 0 is invalid"), and no 2.5 model takes
    // Google Search beside function declarations: both must fit the aliased model, not the
    // Claude name the client sent.
    let (fake, proxy) = setup(&[(
        "MODEL_ALIASES",
        "claude-opus-4-1=gemini-2.5-pro,claude-sonnet-4-5=gemini-2.5-flash",
    )])
    .await;
    let off = message(
        &proxy,
        json!({"model": "claude-opus-4-1", "max_tokens": 64,
               "thinking": {"type": "disabled"},
               "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(off["type"], "message", "{off}");
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    let budget = sent["generationConfig"]["thinkingConfig"]["thinkingBudget"]
        .as_i64()
        .unwrap();
    assert!(budget >= 128, "2.5 Pro's lowest budget, not 0: {sent}");

    let mixed = message(
        &proxy,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
               "tools": [{"name": "lookup", "input_schema": {"type": "object"}},
                         {"type": "web_search_20250305", "name": "web_search"}],
               "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(mixed["type"], "message", "{mixed}");
    let sent: Value = serde_json::from_slice(&fake.last_received().unwrap().body).unwrap();
    let tools = sent["tools"].as_array().unwrap();
    assert!(
        tools.iter().all(|t| t.get("googleSearch").is_none()),
        "{sent}"
    );
    assert!(
        tools
            .iter()
            .any(|t| t.get("functionDeclarations").is_some())
    );
}

#[tokio::test]
async fn a_prompt_over_the_window_is_anthropics_prompt_is_too_long() {
    // Claude Code compacts its history when it reads this wording.
    let (fake, proxy) = setup(&[]).await;
    fake.push_fault(tower_gemini::testing::Fault::HttpError {
        status: 400,
        message: "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).".into(),
    });
    let (status, _, text) = post(
        &proxy,
        "/v1/messages",
        &proxy.token,
        json!({"model": MODEL, "max_tokens": 64,
               "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long: 1200000 tokens > 1048576 maximum"),
        "{v}"
    );
}
