//! Unit tests of the Anthropic front: translation both ways and the stream translator.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::body::{Body, collect_limited};
use crate::gemini::GenerateContentResponse;

fn request(v: Value) -> MessagesRequest {
    serde_json::from_value(v).unwrap()
}

fn gemini(v: Value) -> Value {
    let (_, g) = to_gemini_request(&request(v)).unwrap();
    serde_json::to_value(g).unwrap()
}

fn error_of(v: Value) -> String {
    to_gemini_request(&request(v))
        .unwrap_err()
        .message()
        .to_owned()
}

#[test]
fn thinking_maps_to_each_models_own_setting() {
    let with = |model: &str, thinking: Value| {
        gemini(json!({"model": model, "thinking": thinking,
                      "messages": [{"role": "user", "content": "hi"}]}))["generationConfig"]
            ["thinkingConfig"]
            .clone()
    };
    let enabled = json!({"type": "enabled", "budget_tokens": 50_000});
    assert_eq!(
        with("gemini-2.5-flash", enabled.clone()),
        json!({"thinkingBudget": 24576, "includeThoughts": true})
    );
    // 2.5 Pro cannot stop thinking: its least, thoughts hidden.
    assert_eq!(
        with("gemini-2.5-pro", json!({"type": "disabled"})),
        json!({"thinkingBudget": 128, "includeThoughts": false})
    );
    assert_eq!(
        with("gemini-2.5-flash", json!({"type": "disabled"})),
        json!({"thinkingBudget": 0, "includeThoughts": false})
    );
    assert_eq!(
        with("gemini-3-pro-preview", json!({"type": "disabled"})),
        json!({"thinkingLevel": "low", "includeThoughts": false})
    );
    assert_eq!(
        with("gemini-3-pro-preview", enabled),
        json!({"thinkingLevel": "high", "includeThoughts": true})
    );
    assert!(
        error_of(
            json!({"model": "gemini-2.5-flash", "thinking": {"type": "enabled"},
                            "messages": [{"role": "user", "content": "hi"}]})
        )
        .contains("budget_tokens")
    );
}

#[test]
fn a_thinking_signature_goes_on_the_part_after_it_and_an_id_signature_wins() {
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "c2lnLXRoaW5r"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1__thought__c2lnLWlk", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1__thought__c2lnLWlk", "content": "1"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "{\"ok\": true}"}]},
        ]},
    ]}));
    let parts = &g["contents"][1]["parts"];
    assert_eq!(
        parts[0],
        json!({"text": "Let me check.", "thoughtSignature": "c2lnLXRoaW5r"})
    );
    assert_eq!(parts[1]["thoughtSignature"], "c2lnLWlk");
    assert!(parts[2].get("thoughtSignature").is_none());
    let results = &g["contents"][2]["parts"];
    assert_eq!(
        results[0]["functionResponse"],
        json!({"name": "f", "response": {"result": "1"}})
    );
    assert_eq!(
        results[1]["functionResponse"],
        json!({"name": "g", "response": {"ok": true}})
    );
}

#[test]
fn gemini_3_history_without_signatures_gets_the_documented_placeholder() {
    let g = gemini(json!({"model": "gemini-3-pro-preview", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "done"}]},
    ]}));
    assert_eq!(
        g["contents"][1]["parts"][0]["thoughtSignature"],
        crate::translate::SKIP_THOUGHT_SIGNATURE
    );
}

#[test]
fn what_gemini_cannot_express_is_a_400_that_says_why() {
    let base = |extra: Value| {
        let mut v =
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        error_of(v)
    };
    assert!(base(json!({"messages": []})).contains("messages"));
    assert!(base(json!({"model": "bad model/name"})).contains("model"));
    assert!(
        base(json!({"tools": [{"type": "bash_20250124", "name": "bash"}]}))
            .contains("bash_20250124")
    );
    assert!(base(json!({"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "g"}})).contains("\"g\""));
    assert!(
        base(json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]}))
            .contains("nope")
    );
    assert!(base(json!({"messages": [{"role": "system", "content": "x"}]})).contains("system"));
    assert!(
        base(json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "!!"}}]}]}))
            .contains("base64")
    );
}

#[test]
fn tool_choice_and_web_search_map_to_geminis() {
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search_20250305", "name": "web_search"}]);
    let g = gemini(json!({"model": "gemini-3-pro-preview", "tools": tools,
        "tool_choice": {"type": "none"},
        "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(g["tools"][0]["functionDeclarations"][0]["name"], "f");
    assert_eq!(g["tools"][1], json!({"googleSearch": {}}));
    assert_eq!(g["toolConfig"]["functionCallingConfig"]["mode"], "NONE");
    // Before Gemini 3, search beside function declarations is refused: the functions win.
    let g = gemini(json!({"model": "gemini-2.5-flash", "tools": tools,
        "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(g["tools"].as_array().unwrap().len(), 1, "{g}");
    assert_eq!(g["tools"][0]["functionDeclarations"][0]["name"], "f");
    // Search alone is kept on any model.
    let g = gemini(json!({"model": "gemini-2.5-flash",
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(g["tools"], json!([{"googleSearch": {}}]));
}

fn answer(v: Value) -> GenerateContentResponse {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_whole_answer_becomes_blocks_with_usage() {
    let a = answer(json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "think", "thought": true},
            {"text": "ing", "thought": true},
            {"text": "Hello", "thoughtSignature": "c2ln"},
            {"text": " world"},
        ]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 4,
                          "candidatesTokenCount": 5, "thoughtsTokenCount": 3},
    }));
    let m = to_message(&a, &MessageContext::new("claude-x")).unwrap();
    assert_eq!(
        m["content"],
        json!([
            {"type": "thinking", "thinking": "thinking", "signature": "c2ln"},
            {"type": "text", "text": "Hello world"},
        ])
    );
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["model"], "claude-x");
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 6, "output_tokens": 8, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 4})
    );
}

#[test]
fn without_parallel_tool_use_only_the_first_call_reaches_the_client() {
    let parts = json!([
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "g", "args": {}}},
    ]);
    let a = answer(
        json!({"candidates": [{"content": {"parts": parts.clone()}, "finishReason": "STOP"}]}),
    );
    let both = to_message(&a, &MessageContext::new("m")).unwrap();
    assert_eq!(both["content"].as_array().unwrap().len(), 2);
    let one = to_message(&a, &MessageContext::new("m").parallel_tool_use(false)).unwrap();
    assert_eq!(one["content"].as_array().unwrap().len(), 1);
    assert_eq!(one["content"][0]["name"], "f");
    let mut t = MessageStreamTranslator::new(MessageContext::new("m").parallel_tool_use(false));
    let mut out = BytesMut::new();
    t.push(
        &serde_json::to_vec(&chunk(parts, Some("STOP"))).unwrap(),
        &mut out,
    );
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert_eq!(text.matches("\"tool_use\"").count(), 2, "{text}"); // one start, one stop reason
    assert!(!text.contains("\"name\":\"g\""), "{text}");
}

#[test]
fn blocked_prompts_are_refusals_and_malformed_calls_errors() {
    let blocked = answer(json!({"promptFeedback": {"blockReason": "SAFETY"}}));
    let m = to_message(&blocked, &MessageContext::new("m")).unwrap();
    assert_eq!(m["stop_reason"], "refusal");
    let blocked = answer(
        json!({"candidates": [{"content": {"parts": []}, "finishReason": "PROHIBITED_CONTENT"}]}),
    );
    assert_eq!(
        to_message(&blocked, &MessageContext::new("m")).unwrap()["stop_reason"],
        "refusal"
    );
    let bad = answer(
        json!({"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]}),
    );
    assert_eq!(
        to_message(&bad, &MessageContext::new("m"))
            .unwrap_err()
            .status(),
        StatusCode::BAD_GATEWAY
    );
    assert!(to_message(&answer(json!({})), &MessageContext::new("m")).is_err());
}

/// Runs chunks through a stream translator: `(event name, data)` of each event.
fn stream(chunks: &[Value], finish: bool) -> Vec<(String, Value)> {
    let mut t = MessageStreamTranslator::new(MessageContext::new("m"));
    let mut out = BytesMut::new();
    for c in chunks {
        t.push(&serde_json::to_vec(c).unwrap(), &mut out);
    }
    if finish {
        t.finish(&mut out);
    }
    String::from_utf8(out.to_vec())
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name, data)
        })
        .collect()
}

fn chunk(parts: Value, finish: Option<&str>) -> Value {
    let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}}]});
    if let Some(f) = finish {
        c["candidates"][0]["finishReason"] = json!(f);
    }
    c
}

#[test]
fn a_signature_arriving_after_its_call_is_still_in_the_tool_use_id() {
    let ev = stream(
        &[
            chunk(
                json!([{"functionCall": {"name": "f", "args": {"a": 1}}}]),
                None,
            ),
            chunk(json!([{"text": "", "thoughtSignature": "c2ln"}]), None),
            chunk(json!([{"text": ""}]), Some("STOP")),
        ],
        true,
    );
    let start = ev.iter().find(|(n, _)| n == "content_block_start").unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    assert!(
        start.1["content_block"]["id"]
            .as_str()
            .unwrap()
            .ends_with("__thought__c2ln")
    );
    let stop = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(ev.last().unwrap().0, "message_stop");
}

#[test]
fn an_unsigned_call_goes_out_before_the_text_after_it_as_in_a_whole_answer() {
    let ev = stream(
        &[
            chunk(json!([{"functionCall": {"name": "f", "args": {}}}]), None),
            chunk(json!([{"text": "Looking it up."}]), Some("STOP")),
        ],
        true,
    );
    let kinds: Vec<&str> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["tool_use", "text"]);
    let whole = to_message(
        &answer(
            json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {}}}, {"text": "Looking it up."}]},
            "finishReason": "STOP"}]}),
        ),
        &MessageContext::new("m"),
    )
    .unwrap();
    let whole: Vec<&str> = whole["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(whole, kinds, "streamed and whole answers agree");
}

#[test]
fn a_stream_cut_before_its_finish_reason_ends_with_an_error_event() {
    let ev = stream(&[chunk(json!([{"text": "Hel"}]), None)], true);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(ev[4].1["error"]["type"], "api_error");
    // An upstream error event keeps its status's type.
    let ev = stream(
        &[
            json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
        ],
        true,
    );
    assert_eq!(ev.last().unwrap().1["error"]["type"], "overloaded_error");
}

#[test]
fn a_blocked_prompt_streams_as_a_refusal() {
    let ev = stream(&[json!({"promptFeedback": {"blockReason": "OTHER"}})], true);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[5].1["delta"]["stop_reason"], "refusal");
}

#[tokio::test]
async fn other_routes_pass_through_and_upstream_errors_come_back_in_anthropics_shape() {
    let inner = service_fn(|req: Request<Body>| async move {
        let (status, body) = if req.uri().path().starts_with("/v1/messages") {
            (StatusCode::IM_A_TEAPOT, "passed".to_owned())
        } else if req.uri().path().ends_with(":generateContent") {
            (
                StatusCode::NOT_FOUND,
                json!({"error": {"code": 404, "status": "NOT_FOUND",
                    "message": "models/claude-x is not found for API version v1beta"}})
                .to_string(),
            )
        } else {
            (StatusCode::OK, "native".to_owned())
        };
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = status;
        Ok::<_, std::convert::Infallible>(res)
    });
    let svc = ServiceBuilder::new()
        .layer(AnthropicToGeminiLayer::new().unknown_model_hint("set ALIASES"))
        .service(inner);
    let res = svc
        .clone()
        .oneshot(Request::get("/v1beta/models").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let req = Request::post("/v1/messages")
        .body(Body::from(
            json!({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        ))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("set ALIASES")
    );
    let res = svc
        .oneshot(Request::get("/v1/messages").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn signed_text_without_thoughts_gets_a_signature_only_thinking_block_that_comes_back() {
    let a = answer(json!({"candidates": [{"content": {"parts": [
        {"text": "Hello", "thoughtSignature": "c2ln"},
    ]}, "finishReason": "STOP"}]}));
    let m = to_message(&a, &MessageContext::new("m")).unwrap();
    assert_eq!(
        m["content"],
        json!([
            {"type": "thinking", "thinking": "", "signature": "c2ln"},
            {"type": "text", "text": "Hello"},
        ])
    );
    let ev = stream(
        &[chunk(
            json!([{"text": "Hello", "thoughtSignature": "c2ln"}]),
            Some("STOP"),
        )],
        true,
    );
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
    assert_eq!(
        kinds,
        [
            "message_start",
            "start:thinking",
            "ping",
            "signature_delta",
            "content_block_stop",
            "start:text",
            "text_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    // Sent back, the signature is on the text again.
    let g = gemini(json!({"model": "gemini-3-pro-preview", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": m["content"]},
        {"role": "user", "content": "and?"},
    ]}));
    assert_eq!(
        g["contents"][1]["parts"],
        json!([{"text": "Hello", "thoughtSignature": "c2ln"}])
    );
}
