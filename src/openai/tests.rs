//! Golden request/response fixtures for every mapping, and the layer over `service_fn`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

use super::request::{SKIP_THOUGHT_SIGNATURE, model_id};
use super::response::{embedding_response, model_list};
use super::*;
use crate::body::{Body, collect_limited};
use crate::gemini::{GeminiPath, GenerateContentResponse};

// === helpers ===

fn gemini(req: Value) -> Value {
    let req: ChatCompletionRequest = serde_json::from_value(req).unwrap();
    serde_json::to_value(to_gemini_request(&req, &TranslateOptions::default()).unwrap()).unwrap()
}

fn gemini_err(req: Value) -> String {
    let req: ChatCompletionRequest = serde_json::from_value(req).unwrap();
    let e = to_gemini_request(&req, &TranslateOptions::default()).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    e.message().to_owned()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn answer(resp: Value, cx: &ChatContext) -> Value {
    let resp: GenerateContentResponse = serde_json::from_value(resp).unwrap();
    serde_json::to_value(to_chat_completion(&resp, cx).unwrap()).unwrap()
}

fn text_chunk(text: &str, finish: Option<&str>) -> Value {
    let mut c = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}]});
    if let Some(f) = finish {
        c["candidates"][0]["finishReason"] = json!(f);
    }
    c
}

/// Runs chunks through a translator; events are JSON values or the string `[DONE]`.
fn translate(chunks: &[Value], cx: ChatContext, include_usage: bool, end: bool) -> Vec<Value> {
    let mut t = StreamTranslator::new(cx, include_usage);
    let mut out = BytesMut::new();
    for c in chunks {
        t.push(serde_json::to_string(c).unwrap().as_bytes(), &mut out);
    }
    if end {
        t.finish(&mut out);
    }
    events_of(&out)
}

fn events_of(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").expect("a data event");
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

fn finishes(events: &[Value], index: u64) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| e["choices"].as_array())
        .flatten()
        .filter(|c| c["index"] == index && !c["finish_reason"].is_null())
        .map(|c| c["finish_reason"].clone())
        .collect()
}

fn content_of(events: &[Value], field: &str) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"].as_array())
        .flatten()
        .filter_map(|c| c["delta"][field].as_str())
        .collect()
}

// === requests: messages ===

#[test]
fn system_and_developer_messages_become_the_system_instruction() {
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        user("hi"),
    ]}));
    assert_eq!(
        g["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}, {"text": "Use metric units."}]})
    );
    assert_eq!(
        g["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );
}

#[test]
fn assistant_turns_become_model_turns_and_same_roles_merge() {
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [
        user("one"), user("two"),
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
        user("five"),
    ]}));
    assert_eq!(
        g["contents"],
        json!([
            {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
            {"role": "model", "parts": [{"text": "three"}, {"text": "four"}]},
            {"role": "user", "parts": [{"text": "five"}]},
        ])
    );
}

#[test]
fn tool_calls_round_trip_with_their_thought_signatures() {
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [
        user("weather in Paris and Rome?"),
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a__thought__SIGA", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"},
             "extra_content": {"google": {"thought_signature": "SIGB"}}},
            {"id": "call_c", "type": "function", "function": {"name": "clock", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_a__thought__SIGA", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_c", "content": [{"type": "text", "text": "[1,2]"}]},
    ]}));
    assert_eq!(
        g["contents"][1],
        json!({"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "SIGA"},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}, "thoughtSignature": "SIGB"},
            {"functionCall": {"name": "clock", "args": {}}},
        ]})
    );
    // Parallel results: one user turn, named after the calls they answer.
    assert_eq!(
        g["contents"][2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
            {"functionResponse": {"name": "clock", "response": {"result": [1, 2]}}},
        ]})
    );
}

#[test]
fn a_tool_result_for_an_unknown_call_is_a_400() {
    let msg = gemini_err(json!({"model": "gemini-2.5-flash", "messages": [
        user("x"), {"role": "tool", "tool_call_id": "call_nope", "content": "1"},
    ]}));
    assert!(msg.contains("call_nope"), "{msg}");
}

#[test]
fn bad_tool_call_arguments_are_a_400() {
    let msg = gemini_err(json!({"model": "gemini-2.5-flash", "messages": [
        user("x"),
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "f", "arguments": "{not json"}}]},
    ]}));
    assert!(msg.contains("arguments is not valid JSON"), "{msg}");
}

#[test]
fn gemini_3_history_without_signatures_gets_the_placeholder() {
    let g = gemini(json!({"model": "gemini-3-pro-preview", "messages": [
        user("x"),
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
    ]}));
    let parts = &g["contents"][1]["parts"];
    assert_eq!(parts[0]["thoughtSignature"], SKIP_THOUGHT_SIGNATURE);
    assert!(parts[1].get("thoughtSignature").is_none());
    // Not on 2.5 models, and never over a real signature.
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [
        user("x"),
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]}));
    assert!(
        g["contents"][1]["parts"][0]
            .get("thoughtSignature")
            .is_none()
    );
}

#[test]
fn unknown_roles_and_empty_conversations_are_400s() {
    assert!(gemini_err(json!({"model": "m", "messages": []})).contains("must not be empty"));
    assert!(
        gemini_err(json!({"model": "m", "messages": [{"role": "system", "content": "s"}]}))
            .contains("at least one user")
    );
    assert!(
        gemini_err(json!({"model": "m", "messages": [{"role": "robot", "content": "s"}]}))
            .contains("\"robot\"")
    );
}

// === requests: content parts ===

#[test]
fn media_parts_become_inline_or_file_data() {
    let g = gemini(
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
            {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "b.pdf"}},
            {"type": "file", "file": {"file_id": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
        ]}]}),
    );
    assert_eq!(
        g["contents"][0]["parts"],
        json!([
            {"text": "what is this?"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
        ])
    );
}

#[test]
fn unsupported_parts_are_400s_that_say_why() {
    let msg = gemini_err(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "x"}}]}]}),
    );
    assert!(msg.contains("\"video_url\" is not supported"), "{msg}");
    let msg = gemini_err(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
    );
    assert!(msg.contains("image_url"), "{msg}");
    let msg = gemini_err(
        json!({"model": "m", "messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}, user("x")]}),
    );
    assert!(msg.contains("only hold text"), "{msg}");
}

// === requests: generation config ===

#[test]
fn sampling_fields_map_to_the_generation_config() {
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [user("x")],
        "temperature": 0.5, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 200,
        "stop": ["END", "STOP"], "n": 2, "seed": 7, "presence_penalty": 0.1,
        "frequency_penalty": 0.2, "logprobs": true, "top_logprobs": 3, "user": "u-1",
        "stream_options": {"include_usage": true}, "metadata": {"ignored": true},
        "service_tier": "auto"}));
    assert_eq!(
        g["generationConfig"],
        json!({"temperature": 0.5, "topP": 0.9, "candidateCount": 2, "maxOutputTokens": 200,
               "stopSequences": ["END", "STOP"], "presencePenalty": 0.1,
               "frequencyPenalty": 0.2, "seed": 7, "responseLogprobs": true, "logprobs": 3})
    );
    // `user` and unknown fields never reach Gemini.
    assert!(g.get("user").is_none() && g.get("metadata").is_none());
    let g = gemini(json!({"model": "m", "messages": [user("x")], "stop": "END", "max_tokens": 5}));
    assert_eq!(
        g["generationConfig"],
        json!({"maxOutputTokens": 5, "stopSequences": ["END"]})
    );
    let g = gemini(json!({"model": "m", "messages": [user("x")]}));
    assert!(g.get("generationConfig").is_none());
}

#[test]
fn json_object_sets_the_json_mime_type() {
    let g = gemini(json!({"model": "m", "messages": [user("x")],
        "response_format": {"type": "json_object"}}));
    assert_eq!(
        g["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
}

#[test]
fn json_schema_is_cleaned_into_response_json_schema() {
    let g = gemini(json!({"model": "m", "messages": [user("x")],
    "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true,
        "schema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object", "additionalProperties": false,
            "properties": {
                "kind": {"const": "person"},
                "const": {"type": "string"},
                "pet": {"$ref": "#/definitions/pet"},
                "tags": {"type": "array", "items": {"type": "string", "strict": true}}
            },
            "required": ["kind"],
            "definitions": {"pet": {"type": "object", "if": {}, "then": {}}}
        }}}}));
    assert_eq!(
        g["generationConfig"]["responseJsonSchema"],
        json!({
            "type": "object", "additionalProperties": false,
            "properties": {
                "kind": {"enum": ["person"]},
                "const": {"type": "string"},
                "pet": {"$ref": "#/$defs/pet"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["kind"],
            "$defs": {"pet": {"type": "object"}}
        })
    );
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
}

#[test]
fn tools_become_function_declarations_and_tool_choice_the_calling_mode() {
    let tools = json!([
        {"type": "function", "function": {"name": "weather", "description": "Weather.",
         "strict": true, "parameters": {"type": "object", "additionalProperties": false,
            "$schema": "x", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "clock"}},
    ]);
    let with = |choice: Value| {
        gemini(
            json!({"model": "m", "messages": [user("x")], "tools": tools, "tool_choice": choice,
                      "parallel_tool_calls": false}),
        )
    };
    let g = with(json!("auto"));
    assert_eq!(
        g["tools"],
        json!([{"functionDeclarations": [
            {"name": "weather", "description": "Weather.", "parametersJsonSchema":
                {"type": "object", "additionalProperties": false,
                 "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "clock"},
        ]}])
    );
    assert_eq!(
        g["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        with(json!("none"))["toolConfig"]["functionCallingConfig"]["mode"],
        "NONE"
    );
    assert_eq!(
        with(json!("required"))["toolConfig"]["functionCallingConfig"]["mode"],
        "ANY"
    );
    assert_eq!(
        with(json!({"type": "function", "function": {"name": "clock"}}))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["clock"]}})
    );
    let msg = gemini_err(
        json!({"model": "m", "messages": [user("x")], "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    );
    assert!(msg.contains("\"nope\""), "{msg}");
    let msg = gemini_err(json!({"model": "m", "messages": [user("x")],
        "tools": [{"type": "web_search"}]}));
    assert!(msg.contains("web_search"), "{msg}");
}

#[test]
fn reasoning_effort_maps_to_a_budget_or_a_level() {
    let effort = |model: &str, e: &str| {
        gemini(json!({"model": model, "messages": [user("x")], "reasoning_effort": e}))
            ["generationConfig"]["thinkingConfig"]
            .clone()
    };
    assert_eq!(
        effort("gemini-2.5-flash", "none"),
        json!({"thinkingBudget": 0, "includeThoughts": false})
    );
    assert_eq!(
        effort("gemini-2.5-flash", "minimal"),
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    assert_eq!(effort("gemini-2.5-pro", "low")["thinkingBudget"], 1024);
    assert_eq!(effort("gemini-2.5-pro", "medium")["thinkingBudget"], 8192);
    assert_eq!(effort("gemini-2.5-pro", "high")["thinkingBudget"], 24576);
    assert_eq!(
        effort("gemini-3-pro-preview", "low"),
        json!({"thinkingLevel": "low", "includeThoughts": true})
    );
    assert_eq!(
        effort("gemini-3-pro-preview", "high")["thinkingLevel"],
        "high"
    );
    assert_eq!(
        effort("gemini-3-pro-preview", "none"),
        json!({"thinkingLevel": "low", "includeThoughts": false})
    );
    // Each model gets a level it offers: 3 Pro has no `medium` or `minimal`, 3 Flash has all
    // four, 3.8 Flash no `minimal`.
    assert_eq!(
        effort("gemini-3-pro-preview", "medium")["thinkingLevel"],
        "high"
    );
    assert_eq!(
        effort("gemini-3-pro-preview", "minimal")["thinkingLevel"],
        "low"
    );
    for e in ["minimal", "low", "medium", "high"] {
        assert_eq!(effort("gemini-3-flash-preview", e)["thinkingLevel"], e);
    }
    assert_eq!(
        effort("gemini-3.8-flash", "minimal")["thinkingLevel"],
        "low"
    );
    assert_eq!(
        effort("gemini-3.8-flash", "medium")["thinkingLevel"],
        "medium"
    );
    // 2.5 Pro cannot turn thinking off: `none` is its minimum budget, thoughts hidden.
    assert_eq!(
        effort("gemini-2.5-pro", "none"),
        json!({"thinkingBudget": 128, "includeThoughts": false})
    );
    assert!(
        gemini_err(json!({"model": "m", "messages": [user("x")], "reasoning_effort": "max"}))
            .contains("\"max\"")
    );
    // Configurable.
    let req: ChatCompletionRequest = serde_json::from_value(
        json!({"model": "gemini-2.5-flash", "messages": [user("x")], "reasoning_effort": "low"}),
    )
    .unwrap();
    let opts = TranslateOptions::new().reasoning_budgets(ReasoningBudgets {
        low: 128,
        ..ReasoningBudgets::default()
    });
    let g = to_gemini_request(&req, &opts).unwrap();
    assert_eq!(g.thinking_config().unwrap().thinking_budget, Some(128));
}

#[test]
fn an_explicit_thinking_config_passes_through_and_wins() {
    for req in [
        json!({"model": "m", "messages": [user("x")], "reasoning_effort": "high",
               "extra_body": {"google": {"thinking_config": {"thinking_budget": 77, "include_thoughts": true}}}}),
        json!({"model": "m", "messages": [user("x")],
               "google": {"thinking_config": {"thinkingBudget": 77, "includeThoughts": true}}}),
        json!({"model": "m", "messages": [user("x")],
               "thinking_config": {"thinking_budget": 77, "include_thoughts": true}}),
    ] {
        assert_eq!(
            gemini(req)["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": 77, "includeThoughts": true})
        );
    }
}

#[test]
fn model_ids_lose_the_models_prefix_and_must_be_path_safe() {
    assert_eq!(
        model_id("models/gemini-2.5-flash").unwrap(),
        "gemini-2.5-flash"
    );
    assert_eq!(model_id("gemini-2.5-flash").unwrap(), "gemini-2.5-flash");
    for bad in ["", "models/", "a/b", "a:b", "a?key=x", "../x"] {
        assert_eq!(
            model_id(bad).unwrap_err().status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

// === answers ===

#[test]
fn text_thoughts_and_usage_map_to_a_completion() {
    let cx = ChatContext::new("gemini-2.5-flash");
    let a = answer(
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think.", "thought": true},
            {"text": "Hello"}, {"text": " world"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                "thoughtsTokenCount": 7, "cachedContentTokenCount": 4, "totalTokenCount": 22}}),
        &cx,
    );
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["id"], cx.id());
    assert_eq!(a["model"], "gemini-2.5-flash");
    assert_eq!(
        a["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello world",
            "reasoning_content": "Let me think.", "refusal": null},
            "finish_reason": "stop", "logprobs": null}])
    );
    assert_eq!(
        a["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
               "prompt_tokens_details": {"cached_tokens": 4},
               "completion_tokens_details": {"reasoning_tokens": 7}})
    );
}

#[test]
fn function_calls_become_tool_calls_with_signatures() {
    let cx = ChatContext::new("m");
    let a = answer(
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "SIG"},
            {"functionCall": {"name": "clock"}}]}, "finishReason": "STOP"}]}),
        &cx,
    );
    let msg = &a["choices"][0]["message"];
    assert_eq!(a["choices"][0]["finish_reason"], "tool_calls");
    assert!(msg["content"].is_null());
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    let id0 = calls[0]["id"].as_str().unwrap();
    assert!(
        id0.starts_with("call_") && id0.ends_with("__thought__SIG"),
        "{id0}"
    );
    assert_eq!(
        calls[0]["extra_content"]["google"]["thought_signature"],
        "SIG"
    );
    assert!(!calls[1]["id"].as_str().unwrap().contains("__thought__"));
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    // The id carrier can be turned off; parallel_tool_calls=false keeps the first call.
    let cx = ChatContext::new("m")
        .signature_in_id(false)
        .parallel_tool_calls(false);
    let a = answer(
        json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "SIG"},
            {"functionCall": {"name": "b", "args": {}}}]}, "finishReason": "STOP"}]}),
        &cx,
    );
    let calls = a["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(!calls[0]["id"].as_str().unwrap().contains("SIG"));
    assert_eq!(
        calls[0]["extra_content"]["google"]["thought_signature"],
        "SIG"
    );
}

#[test]
fn a_tool_call_answer_round_trips_into_the_next_request() {
    let cx = ChatContext::new("gemini-2.5-flash");
    let a = answer(
        json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "SIG=="}]},
            "finishReason": "STOP"}]}),
        &cx,
    );
    // A client that drops unknown fields keeps only id, type and function.
    let mut call = a["choices"][0]["message"]["tool_calls"][0].clone();
    call.as_object_mut().unwrap().remove("extra_content");
    let id = call["id"].clone();
    let g = gemini(json!({"model": "gemini-2.5-flash", "messages": [
        user("x"),
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "{\"ok\":true}"},
    ]}));
    assert_eq!(g["contents"][1]["parts"][0]["thoughtSignature"], "SIG==");
    assert_eq!(
        g["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "f", "response": {"ok": true}})
    );
}

#[test]
fn finish_reasons_map_to_openai_values() {
    let cx = ChatContext::new("m");
    for (gemini_reason, openai) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("SOMETHING_NEW", "stop"),
    ] {
        let a = answer(text_chunk("x", Some(gemini_reason)), &cx);
        assert_eq!(a["choices"][0]["finish_reason"], openai, "{gemini_reason}");
    }
    for bad in [
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "MISSING_THOUGHT_SIGNATURE",
    ] {
        let resp: GenerateContentResponse =
            serde_json::from_value(text_chunk("", Some(bad))).unwrap();
        let e = to_chat_completion(&resp, &cx).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.message().contains(bad), "{}", e.message());
    }
}

#[test]
fn a_blocked_prompt_is_content_filter_with_a_refusal() {
    let cx = ChatContext::new("m").choices(2);
    let a = answer(
        json!({"promptFeedback": {"blockReason": "SAFETY"},
               "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}),
        &cx,
    );
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for c in choices {
        assert_eq!(c["finish_reason"], "content_filter");
        assert!(c["message"]["content"].is_null());
        assert!(c["message"]["refusal"].as_str().unwrap().contains("SAFETY"));
    }
    assert_eq!(a["usage"]["prompt_tokens"], 3);
    // No candidates and no reason is an error, not an empty 200.
    let resp = GenerateContentResponse::default();
    assert_eq!(
        to_chat_completion(&resp, &cx).unwrap_err().status(),
        StatusCode::BAD_GATEWAY
    );
}

#[test]
fn code_execution_reaches_content_as_fenced_blocks() {
    let a = answer(
        json!({"candidates": [{"content": {"parts": [
            {"text": "Let me compute."},
            {"executableCode": {"language": "PYTHON", "code": "print(2 + 2)"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "4\n"}},
            {"text": "The answer is 4."}]}, "finishReason": "STOP"}]}),
        &ChatContext::new("m"),
    );
    assert_eq!(
        a["choices"][0]["message"]["content"],
        "Let me compute.\n```python\nprint(2 + 2)\n```\n```output\n4\n```\nThe answer is 4."
    );
}

#[test]
fn generated_images_go_to_images_never_into_content() {
    let a = answer(
        json!({"candidates": [{"content": {"parts": [
            {"text": "Here is your cat."},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AA="}}]}, "finishReason": "STOP"}]}),
        &ChatContext::new("gemini-2.5-flash-image"),
    );
    let message = &a["choices"][0]["message"];
    assert_eq!(message["content"], "Here is your cat.");
    assert_eq!(
        message["images"],
        json!([
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AA="}}
        ])
    );
    let only = answer(
        json!({"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}, "finishReason": "STOP"}]}),
        &ChatContext::new("m"),
    );
    assert!(!only.to_string().contains("![image]"));
    assert_eq!(only["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        only["choices"][0]["message"]["images"][0]["image_url"]["url"],
        "data:image/png;base64,AAAA"
    );
}

#[test]
fn an_image_sent_back_in_history_becomes_the_model_turns_inline_data() {
    let g = gemini(json!({"model": "m", "messages": [
        user("draw a cat"),
        {"role": "assistant", "content": "Here.", "images": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        user("make it blue")]}));
    assert_eq!(
        g["contents"][1]["parts"],
        json!([{"text": "Here."}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}])
    );
}

#[test]
fn several_candidates_become_several_choices() {
    let a = answer(
        json!({"candidates": [
            {"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP", "index": 0},
            {"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS", "index": 1}]}),
        &ChatContext::new("m").choices(2),
    );
    assert_eq!(a["choices"][0]["message"]["content"], "a");
    assert_eq!(a["choices"][1]["index"], 1);
    assert_eq!(a["choices"][1]["message"]["content"], "b");
    assert_eq!(a["choices"][1]["finish_reason"], "length");
}

#[test]
fn logprobs_map_to_openai_logprobs() {
    let a = answer(
        json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP",
            "logprobsResult": {
                "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}],
                "topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.1},
                                                  {"token": "Hey", "logProbability": -2.5}]}]}}]}),
        &ChatContext::new("m"),
    );
    let lp = &a["choices"][0]["logprobs"]["content"][0];
    assert_eq!(lp["token"], "Hi");
    assert_eq!(lp["logprob"], -0.1);
    assert_eq!(lp["bytes"], json!([72, 105]));
    assert_eq!(lp["top_logprobs"][1]["token"], "Hey");
}

// === streams ===

#[test]
fn a_text_stream_sends_role_deltas_one_finish_and_done() {
    let ev = translate(
        &[
            text_chunk("Hel", None),
            text_chunk("lo", None),
            text_chunk("!", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0]["object"], "chat.completion.chunk");
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(ev[1]["choices"][0]["delta"].get("role").is_none());
    assert_eq!(ev[0]["id"], ev[2]["id"]);
    assert_eq!(content_of(&ev, "content"), "Hello!");
    assert_eq!(finishes(&ev, 0), vec![json!("stop")]);
    assert_eq!(ev[3], "[DONE]");
    assert!(ev[..3].iter().all(|e| e.get("usage").is_none()));
}

#[test]
fn include_usage_adds_a_last_chunk_with_usage_and_no_choices() {
    let mut last = text_chunk("!", Some("STOP"));
    last["usageMetadata"] = json!({"promptTokenCount": 2, "candidatesTokenCount": 3,
                                   "thoughtsTokenCount": 4, "totalTokenCount": 9});
    let ev = translate(
        &[text_chunk("a", None), last],
        ChatContext::new("m"),
        true,
        true,
    );
    let usage_chunk = &ev[ev.len() - 2];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9,
               "completion_tokens_details": {"reasoning_tokens": 4}})
    );
    assert_eq!(ev[ev.len() - 1], "[DONE]");
}

#[test]
fn thoughts_stream_as_reasoning_content() {
    let ev = translate(
        &[
            json!({"candidates": [{"content": {"parts": [{"text": "hmm", "thought": true}]}}]}),
            text_chunk("answer", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    assert_eq!(content_of(&ev, "reasoning_content"), "hmm");
    assert_eq!(content_of(&ev, "content"), "answer");
}

#[test]
fn a_streamed_function_call_finishes_with_tool_calls() {
    // Newer models: the call without finishReason, then an empty STOP chunk.
    let ev = translate(
        &[
            json!({"candidates": [{"content": {"parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "SIG"}]}}]}),
            text_chunk("", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    let calls: Vec<&Value> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert!(calls[0]["id"].as_str().unwrap().ends_with("__thought__SIG"));
    assert_eq!(finishes(&ev, 0), vec![json!("tool_calls")]);
    assert_eq!(ev.last().unwrap(), "[DONE]");
}

#[test]
fn a_signature_on_a_later_chunk_attaches_to_its_call() {
    let ev = translate(
        &[
            json!({"candidates": [{"content": {"parts": [
                {"functionCall": {"name": "a", "args": {}}}]}}]}),
            json!({"candidates": [{"content": {"parts": [
                {"text": "", "thoughtSignature": "LATE"}]}}]}),
            text_chunk("", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    let calls: Vec<&Value> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0]["extra_content"]["google"]["thought_signature"],
        "LATE"
    );
    assert!(
        calls[0]["id"]
            .as_str()
            .unwrap()
            .ends_with("__thought__LATE")
    );
    assert_eq!(finishes(&ev, 0), vec![json!("tool_calls")]);
}

#[test]
fn parallel_streamed_calls_get_consecutive_indexes() {
    let ev = translate(
        &[
            json!({"candidates": [{"content": {"parts": [
                {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "S"},
                {"functionCall": {"name": "b", "args": {}}}]}}]}),
            text_chunk("", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    let calls: Vec<&Value> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let names: Vec<(&Value, &Value)> = calls
        .iter()
        .map(|c| (&c["index"], &c["function"]["name"]))
        .collect();
    assert_eq!(
        names,
        vec![(&json!(0), &json!("a")), (&json!(1), &json!("b"))]
    );
}

#[test]
fn an_upstream_error_event_becomes_an_openai_error_event() {
    let ev = translate(
        &[
            text_chunk("partial", None),
            json!({"error": {"code": 500, "message": "An internal error has occurred.",
                             "status": "INTERNAL"}}),
            text_chunk("never", Some("STOP")),
        ],
        ChatContext::new("m"),
        true,
        true,
    );
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["choices"][0]["delta"]["content"], "partial");
    assert_eq!(
        ev[1],
        json!({"error": {"message": "An internal error has occurred.", "type": "server_error",
                         "param": null, "code": "internal"}})
    );
}

#[test]
fn a_stream_cut_before_its_finish_ends_with_an_error_event() {
    let ev = translate(
        &[text_chunk("partial", None)],
        ChatContext::new("m"),
        false,
        true,
    );
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1]["error"]["type"], "server_error");
    assert!(!ev.contains(&json!("[DONE]")));
}

#[test]
fn a_malformed_call_in_a_stream_is_an_error_not_a_stop() {
    let ev = translate(
        &[text_chunk("", Some("MALFORMED_FUNCTION_CALL"))],
        ChatContext::new("m"),
        false,
        true,
    );
    assert!(finishes(&ev, 0).is_empty());
    assert!(
        ev.last().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MALFORMED_FUNCTION_CALL")
    );
}

#[test]
fn a_blocked_prompt_streams_content_filter() {
    let ev = translate(
        &[json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})],
        ChatContext::new("m"),
        false,
        true,
    );
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        ev[0]["choices"][0]["delta"]["refusal"]
            .as_str()
            .unwrap()
            .contains("PROHIBITED_CONTENT")
    );
    assert_eq!(finishes(&ev, 0), vec![json!("content_filter")]);
    assert_eq!(ev[1], "[DONE]");
}

#[test]
fn several_candidates_stream_as_separate_choices() {
    let chunk = |a: &str, b: &str, finish: Option<&str>| {
        let mut c = json!({"candidates": [
            {"content": {"parts": [{"text": a}]}, "index": 0},
            {"content": {"parts": [{"text": b}]}, "index": 1}]});
        if let Some(f) = finish {
            c["candidates"][0]["finishReason"] = json!(f);
            c["candidates"][1]["finishReason"] = json!(f);
        }
        c
    };
    let ev = translate(
        &[chunk("a1", "b1", None), chunk("a2", "b2", Some("STOP"))],
        ChatContext::new("m").choices(2),
        false,
        true,
    );
    let text = |i: u64| -> String {
        ev.iter()
            .filter_map(|e| e["choices"].as_array())
            .flatten()
            .filter(|c| c["index"] == i)
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect()
    };
    assert_eq!(text(0), "a1a2");
    assert_eq!(text(1), "b1b2");
    assert_eq!(finishes(&ev, 0).len(), 1);
    assert_eq!(finishes(&ev, 1).len(), 1);
}

#[test]
fn streamed_code_execution_is_fenced() {
    let ev = translate(
        &[
            text_chunk("Computing:", None),
            json!({"candidates": [{"content": {"parts": [
                {"executableCode": {"language": "PYTHON", "code": "print(1)"}}]}}]}),
            json!({"candidates": [{"content": {"parts": [
                {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "1"}}]}}]}),
            text_chunk("Done.", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    assert_eq!(
        content_of(&ev, "content"),
        "Computing:\n```python\nprint(1)\n```\n```output\n1\n```\nDone."
    );
}

#[test]
fn a_streamed_image_arrives_whole_in_delta_images() {
    let image = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}}]});
    let ev = translate(
        &[
            text_chunk("A cat:", None),
            image,
            text_chunk("", Some("STOP")),
        ],
        ChatContext::new("m"),
        false,
        true,
    );
    let images: Vec<&Value> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("images"))
        .collect();
    assert_eq!(
        images,
        [
            &json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}])
        ]
    );
    assert_eq!(content_of(&ev, "content"), "A cat:");
    assert_eq!(finishes(&ev, 0), vec![json!("stop")]);
}

#[test]
fn a_finish_is_sent_once_even_when_upstream_repeats_it() {
    let ev = translate(
        &[text_chunk("a", Some("STOP")), text_chunk("", Some("STOP"))],
        ChatContext::new("m"),
        false,
        true,
    );
    assert_eq!(finishes(&ev, 0).len(), 1);
}

// === models and embeddings ===

#[test]
fn models_map_to_openai_models() {
    let m: crate::gemini::Model =
        serde_json::from_value(json!({"name": "models/gemini-2.5-flash"})).unwrap();
    assert_eq!(
        serde_json::to_value(model_list([&m], "google")).unwrap(),
        json!({"object": "list", "data": [
            {"id": "gemini-2.5-flash", "object": "model", "created": 0, "owned_by": "google"}]})
    );
}

#[test]
fn embeddings_map_to_floats_or_base64() {
    let resp: crate::gemini::BatchEmbedContentsResponse =
        serde_json::from_value(json!({"embeddings": [{"values": [1.0, -2.0]}, {"values": [0.5]}]}))
            .unwrap();
    let v = serde_json::to_value(embedding_response(&resp, "m", false)).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(
        v["data"][1],
        json!({"object": "embedding", "index": 1, "embedding": [0.5]})
    );
    assert_eq!(v["usage"], json!({"prompt_tokens": 0, "total_tokens": 0}));
    let v = serde_json::to_value(embedding_response(&resp, "m", true)).unwrap();
    // 1.0f32 = 00 00 80 3f, -2.0f32 = 00 00 00 c0 (little-endian).
    assert_eq!(v["data"][0]["embedding"], "AACAPwAAAMA=");
}

// === the layer ===

type Seen = Arc<Mutex<Vec<Request<Bytes>>>>;

/// An inner service that records requests and answers with `answer(path)`.
fn inner(
    seen: Seen,
    answer: impl Fn(&str) -> Response<Body> + Clone + Send + 'static,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = collect_limited(body, 1 << 20).await.unwrap();
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(Request::from_parts(parts, bytes));
            Ok::<_, Infallible>(answer(&pq))
        }
    })
}

fn ok_json(v: Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(&v).unwrap()))
}

async fn call<S>(svc: S, req: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let res = svc.oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        collect_limited(body, 1 << 24).await.unwrap(),
    )
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn chat_body() -> Value {
    json!({"model": "models/gemini-2.5-flash", "messages": [user("hi")]})
}

#[tokio::test]
async fn paths_it_does_not_own_pass_through_untouched() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |_| {
        let mut r = ok_json(json!({"native": true}));
        *r.status_mut() = StatusCode::IM_A_TEAPOT;
        r
    }));
    let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent?alt=x")
        .header("authorization", "Bearer client")
        .body(Body::from("raw body"))
        .unwrap();
    let (status, _, body) = call(svc, req).await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(&body[..], br#"{"native":true}"#);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0].uri(),
        "/v1beta/models/gemini-2.5-flash:generateContent?alt=x"
    );
    assert_eq!(seen[0].headers()["authorization"], "Bearer client");
    assert_eq!(&seen[0].body()[..], b"raw body");
}

#[derive(Clone, Debug, PartialEq)]
struct Marker(u32);

#[tokio::test]
async fn chat_calls_generate_content_with_headers_and_extensions_but_no_credentials() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |_| {
        let mut r = ok_json(text_chunk("Hi!", Some("STOP")));
        r.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("1"));
        r
    }));
    let mut req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-client")
        .header("x-goog-api-key", "client-key")
        .header("x-request-id", "req-42")
        .header("traceparent", "00-abc-def-01")
        .body(Body::from(serde_json::to_vec(&chat_body()).unwrap()))
        .unwrap();
    req.extensions_mut().insert(Marker(7));
    let (status, headers, body) = call(svc, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-upstream"], "1");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model"], "gemini-2.5-flash");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi!");

    let seen = seen.lock().unwrap();
    let r = &seen[0];
    assert_eq!(r.method(), http::Method::POST);
    assert_eq!(r.uri(), "/v1beta/models/gemini-2.5-flash:generateContent");
    assert!(r.headers().get("authorization").is_none());
    assert!(r.headers().get("x-goog-api-key").is_none());
    assert_eq!(r.headers()["x-request-id"], "req-42");
    assert_eq!(r.headers()["traceparent"], "00-abc-def-01");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.extensions().get::<Marker>(), Some(&Marker(7)));
    assert_eq!(
        r.extensions().get::<crate::Dialect>(),
        Some(&crate::Dialect::Gemini)
    );
    assert_eq!(
        r.extensions().get::<GeminiPath>().unwrap().model,
        "gemini-2.5-flash"
    );
    let sent: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(sent["contents"][0]["parts"][0]["text"], "hi");
}

#[tokio::test]
async fn bad_requests_are_openai_400s_that_never_reach_upstream() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |_| ok_json(json!({}))));
    for (body, needle) in [
        (Body::from("{not json"), "not a valid request"),
        (Body::from(r#"{"messages": []}"#), "model"),
        (
            Body::from(r#"{"model": "m", "messages": []}"#),
            "must not be empty",
        ),
        (
            Body::from(r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#),
            "not a valid request",
        ),
        (
            Body::from(r#"{"model": "a/b", "messages": [{"role": "user", "content": "x"}]}"#),
            "not a valid model id",
        ),
    ] {
        let req = Request::post("/v1/chat/completions").body(body).unwrap();
        let (status, headers, body) = call(svc.clone(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["content-type"], "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"].get("param").is_some());
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg} / {needle}");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_413s() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new()
        .max_body_bytes(64)
        .layer(inner(seen.clone(), |_| ok_json(json!({}))));
    let big = json!({"model": "m", "messages": [user(&"x".repeat(100))]});
    let (status, _, body) = call(svc.clone(), post("/v1/chat/completions", big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("64 bytes"));
    // A declared length over the limit is refused before reading.
    let req = Request::post("/v1/embeddings")
        .header("content-length", "1000")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, _) = call(svc, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_methods_on_owned_routes_are_405s() {
    let svc = OpenAiToGeminiLayer::new().layer(inner(Seen::default(), |_| ok_json(json!({}))));
    let req = Request::get("/v1/chat/completions")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(svc, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("POST"));
}

#[tokio::test]
async fn upstream_gemini_errors_become_openai_errors_with_the_same_status() {
    let svc = OpenAiToGeminiLayer::new().layer(inner(Seen::default(), |_| {
        let mut r = ok_json(json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded api_key:AIzaSyA1234567890abcdefghijklmnopqrstu",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}]}}));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        r
    }));
    let (status, headers, body) = call(svc, post("/v1/chat/completions", chat_body())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "13");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("Quota exceeded"));
    assert!(!msg.contains("AIzaSyA1234567890"), "{msg}");
}

#[tokio::test]
async fn deeper_layer_rejections_keep_status_and_retry_after() {
    for (err, status) in [
        (
            crate::ApiError::too_many_requests(
                "quota for this client",
                std::time::Duration::from_secs(7),
            ),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            crate::ApiError::service_unavailable("every upstream key is disabled"),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        for stream in [false, true] {
            let e = err.clone();
            let svc = OpenAiToGeminiLayer::new().layer(inner(Seen::default(), move |_| {
                e.clone().into_response(crate::Dialect::Gemini)
            }));
            let mut body = chat_body();
            body["stream"] = json!(stream);
            let (got, headers, body) = call(svc, post("/v1/chat/completions", body)).await;
            assert_eq!(got, status);
            assert_eq!(headers["content-type"], "application/json");
            if status == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(headers["retry-after"], "7");
            }
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["message"], err.message());
            assert!(v["error"].get("status").is_none());
            assert!(v["error"]["type"].is_string());
        }
    }
}

#[tokio::test]
async fn a_stream_calls_sse_and_translates_events_as_they_arrive() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), move |_| {
        let rx = rx.lock().unwrap().take().unwrap();
        let stream = futures_stream(rx);
        let mut r = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        r
    }));
    let mut body = chat_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = svc
        .oneshot(post("/v1/chat/completions", body))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(
        seen.lock().unwrap()[0].uri(),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    let mut body = res.into_body();
    // One upstream event in, one OpenAI event out, before the next is even sent.
    let ev = |c: Value| Bytes::from(format!("data: {c}\r\n\r\n"));
    tx.send(ev(text_chunk("Hel", None))).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first = events_of(&frame);
    assert_eq!(first[0]["choices"][0]["delta"]["content"], "Hel");
    let mut last = text_chunk("lo", Some("STOP"));
    last["usageMetadata"] =
        json!({"promptTokenCount": 1, "candidatesTokenCount": 2, "totalTokenCount": 3});
    tx.send(ev(last)).await.unwrap();
    drop(tx);
    let rest = collect_limited(body, 1 << 20).await.unwrap();
    let rest = events_of(&rest);
    assert_eq!(rest[0]["choices"][0]["delta"]["content"], "lo");
    assert_eq!(rest[0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(rest[1]["usage"]["total_tokens"], 3);
    assert_eq!(rest[2], "[DONE]");
}

#[tokio::test]
async fn a_broken_upstream_stream_ends_with_an_error_event() {
    let svc = OpenAiToGeminiLayer::new().layer(inner(Seen::default(), |_| {
        let first = Ok::<_, crate::BoxError>(http_body::Frame::data(Bytes::from(format!(
            "data: {}\r\n\r\n",
            text_chunk("partial", None)
        ))));
        let broken = Err::<http_body::Frame<Bytes>, crate::BoxError>("connection reset".into());
        let stream = IterStream(vec![first, broken].into_iter());
        Response::new(Body::new(http_body_util::StreamBody::new(stream)))
    }));
    let mut body = chat_body();
    body["stream"] = json!(true);
    let (status, _, bytes) = call(svc, post("/v1/chat/completions", body)).await;
    assert_eq!(status, StatusCode::OK);
    let ev = events_of(&bytes);
    assert_eq!(ev[0]["choices"][0]["delta"]["content"], "partial");
    assert!(
        ev[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke off")
    );
    assert_eq!(ev.len(), 2);
}

#[tokio::test]
async fn an_upstream_event_over_the_requests_cap_ends_the_stream_with_one_error_event() {
    let svc = OpenAiToGeminiLayer::new().layer(inner(Seen::default(), |_| {
        let big = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": "A".repeat(8192)}}]}}]});
        let frames = [
            text_chunk("A cat:", None),
            big,
            text_chunk("", Some("STOP")),
        ]
        .iter()
        .map(|c| {
            Ok::<_, crate::BoxError>(http_body::Frame::data(Bytes::from(format!(
                "data: {c}\r\n\r\n"
            ))))
        })
        .collect::<Vec<_>>();
        Response::new(Body::new(http_body_util::StreamBody::new(IterStream(
            frames.into_iter(),
        ))))
    }));
    let mut body = chat_body();
    body["stream"] = json!(true);
    let mut req = post("/v1/chat/completions", body);
    req.extensions_mut().insert(crate::sse::MaxEventBytes(4096));
    let (status, _, bytes) = call(svc, req).await;
    assert_eq!(status, StatusCode::OK);
    let ev = events_of(&bytes);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["choices"][0]["delta"]["content"], "A cat:");
    let message = ev[1]["error"]["message"].as_str().unwrap();
    assert!(message.contains("4096 bytes"), "{message}");
}

#[tokio::test]
async fn models_are_listed_across_every_page() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |pq| {
        if pq.contains("pageToken=p%2F2") {
            ok_json(json!({"models": [{"name": "models/c"}]}))
        } else {
            ok_json(
                json!({"models": [{"name": "models/a"}, {"name": "models/b"}],
                           "nextPageToken": "p/2"}),
            )
        }
    }));
    let req = Request::get("/v1/models").body(Body::empty()).unwrap();
    let (status, _, body) = call(svc, req).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method(), http::Method::GET);
    assert_eq!(seen[0].uri(), "/v1beta/models?pageSize=1000");
}

#[tokio::test]
async fn one_model_is_fetched_with_or_without_the_prefix() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |pq| {
        if pq.ends_with("/nope") {
            let mut r = ok_json(json!({"error": {"code": 404, "status": "NOT_FOUND",
                "message": "models/nope is not found for API version v1beta"}}));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        } else {
            ok_json(json!({"name": "models/gemini-2.5-pro", "displayName": "Pro"}))
        }
    }));
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    let (status, _, body) = call(svc.clone(), get("/v1/models/models/gemini-2.5-pro")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"id": "gemini-2.5-pro", "object": "model", "created": 0, "owned_by": "google"})
    );
    assert_eq!(
        seen.lock().unwrap()[0].uri(),
        "/v1beta/models/gemini-2.5-pro"
    );
    let (status, _, body) = call(svc, get("/v1/models/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn embeddings_call_batch_embed_contents() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |_| {
        ok_json(json!({"embeddings": [{"values": [0.25]}, {"values": [0.5]}]}))
    }));
    let (status, _, body) = call(
        svc.clone(),
        post(
            "/v1/embeddings",
            json!({"model": "text-embedding-004", "input": ["a", "b"], "dimensions": 1}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][1]["embedding"], json!([0.5]));
    assert_eq!(v["model"], "text-embedding-004");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0].uri(),
            "/v1beta/models/text-embedding-004:batchEmbedContents"
        );
        let sent: Value = serde_json::from_slice(seen[0].body()).unwrap();
        assert_eq!(
            sent,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
                 "outputDimensionality": 1},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]},
                 "outputDimensionality": 1}]})
        );
    }
    let (status, _, body) = call(
        svc.clone(),
        post(
            "/v1/embeddings",
            json!({"model": "m", "input": "a", "encoding_format": "base64"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][0]["embedding"], "AACAPg=="); // 0.25f32
    for bad in [json!([1, 2, 3]), json!([]), json!([[1, 2]])] {
        let (status, _, _) = call(
            svc.clone(),
            post("/v1/embeddings", json!({"model": "m", "input": bad})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn the_layer_stacks_with_service_builder() {
    let svc = ServiceBuilder::new()
        .layer(OpenAiToGeminiLayer::new().owned_by("acme"))
        .service(inner(Seen::default(), |_| {
            ok_json(json!({"models": [{"name": "models/x"}]}))
        }));
    let req = Request::get("/v1/models").body(Body::empty()).unwrap();
    let (_, _, body) = call(svc, req).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][0]["owned_by"], "acme");
}

// === tiny stream helpers ===

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

struct ChannelFrames(tokio::sync::mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelFrames {
    type Item = Result<http_body::Frame<Bytes>, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn futures_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ChannelFrames {
    ChannelFrames(rx)
}

// === images ===

fn image_request(v: Value) -> Result<(String, Value, u32), crate::ApiError> {
    let req: super::types::ImageGenerationRequest = serde_json::from_value(v).unwrap();
    super::request::to_gemini_image_request(&req)
}

#[test]
fn an_images_request_asks_gemini_for_images_only_at_the_nearest_aspect_ratio() {
    let (model, body, n) = image_request(
        json!({"model": "models/gemini-2.5-flash-image", "prompt": "a fox", "n": 2, "size": "1792x1024"}),
    )
    .unwrap();
    assert_eq!((model.as_str(), n), ("gemini-2.5-flash-image", 2));
    assert_eq!(
        body,
        json!({"contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
               "generationConfig": {"responseModalities": ["IMAGE"],
                                    "imageConfig": {"aspectRatio": "16:9"}}})
    );
    for (size, ratio) in [
        ("1024x1024", json!("1:1")),
        ("1024x1536", json!("2:3")),
        ("1536x1024", json!("3:2")),
    ] {
        let (_, body, _) =
            image_request(json!({"model": "m", "prompt": "p", "size": size})).unwrap();
        assert_eq!(
            body["generationConfig"]["imageConfig"]["aspectRatio"],
            ratio
        );
    }
    let (_, auto, n) = image_request(json!({"model": "m", "prompt": "p", "size": "auto"})).unwrap();
    assert_eq!(n, 1);
    assert!(auto["generationConfig"].get("imageConfig").is_none());
}

#[test]
fn images_requests_gemini_cannot_serve_are_400s_that_say_why() {
    for (req, why) in [
        (json!({"prompt": "p"}), "`model` is required"),
        (json!({"model": "m", "prompt": " "}), "`prompt`"),
        (json!({"model": "m", "prompt": "p", "n": 0}), "`n`"),
        (json!({"model": "m", "prompt": "p", "n": 11}), "`n`"),
        (
            json!({"model": "m", "prompt": "p", "response_format": "url"}),
            "b64_json",
        ),
        (json!({"model": "m", "prompt": "p", "size": "big"}), "size"),
    ] {
        let e = image_request(req.clone()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains(why), "{req}: {}", e.message());
    }
}

#[tokio::test]
async fn images_generations_make_one_call_per_image_and_answer_b64_json() {
    let seen = Seen::default();
    let svc = OpenAiToGeminiLayer::new().layer(inner(seen.clone(), |_| {
        ok_json(json!({"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
            "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1290, "totalTokenCount": 1294}}))
    }));
    let (status, _, bytes) = call(
        svc,
        post(
            "/v1/images/generations",
            json!({"model": "gemini-2.5-flash-image", "prompt": "a fox", "n": 2,
                   "response_format": "b64_json"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["created"].as_u64().unwrap() > 0);
    assert_eq!(
        v["data"],
        json!([{"b64_json": "iVBORw0KGgo="}, {"b64_json": "iVBORw0KGgo="}])
    );
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 8, "output_tokens": 2580, "total_tokens": 2588})
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].uri(),
        "/v1beta/models/gemini-2.5-flash-image:generateContent"
    );
    let body: Value = serde_json::from_slice(seen[0].body()).unwrap();
    assert_eq!(
        body["generationConfig"]["responseModalities"],
        json!(["IMAGE"])
    );
}

#[tokio::test]
async fn a_refused_image_is_a_content_policy_violation() {
    let svc = OpenAiToGeminiLayer::new().layer(inner(Seen::default(), |_| {
        ok_json(
            json!({"candidates": [{"content": {"role": "model"}, "finishReason": "IMAGE_SAFETY"}]}),
        )
    }));
    let (status, _, bytes) = call(
        svc,
        post(
            "/v1/images/generations",
            json!({"model": "gemini-2.5-flash-image", "prompt": "p"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "content_policy_violation");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("IMAGE_SAFETY")
    );
}
