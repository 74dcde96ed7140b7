#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use serde_json::{Value, json};

use super::output::ResponseBuilder;
use super::request::{input_items, to_gemini};
use super::types::CreateResponse;
use crate::openai::TranslateOptions;

fn req(v: Value) -> CreateResponse {
    serde_json::from_value(v).unwrap()
}

/// Pushes Gemini chunks through a streaming builder; the events, parsed.
fn stream(request: Value, chunks: &[Value], end: bool) -> (Vec<(String, Value)>, ResponseBuilder) {
    let r = req(request);
    let mut b = ResponseBuilder::new("resp_test".into(), &r, "gemini-3-pro-preview", true, true);
    let mut out = BytesMut::new();
    b.start(&mut out);
    for c in chunks {
        b.push(&serde_json::to_vec(c).unwrap(), &mut out);
    }
    if end {
        b.finish(&mut out);
    }
    let text = String::from_utf8(out.to_vec()).unwrap();
    let events = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name, data)
        })
        .collect();
    (events, b)
}

fn chunk(parts: Value, finish: Option<&str>) -> Value {
    let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}}]});
    if let Some(f) = finish {
        c["candidates"][0]["finishReason"] = json!(f);
        c["usageMetadata"] = json!({"promptTokenCount": 4, "candidatesTokenCount": 6,
            "thoughtsTokenCount": 3, "cachedContentTokenCount": 2, "totalTokenCount": 13});
    }
    c
}

#[test]
fn a_signature_on_a_later_empty_part_reaches_the_call_id_and_the_reasoning_item() {
    let (events, b) = stream(
        json!({"model": "m", "input": "hi"}),
        &[
            chunk(
                json!([{"text": "Thinking it over.", "thought": true}]),
                None,
            ),
            chunk(
                json!([{"functionCall": {"name": "f", "args": {"a": 1}}}]),
                None,
            ),
            chunk(
                json!([{"text": "", "thoughtSignature": "c2ln"}]),
                Some("STOP"),
            ),
        ],
        true,
    );
    let done = b.final_response().unwrap();
    assert_eq!(done["status"], "completed");
    let output = done["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning");
    assert_eq!(output[0]["summary"][0]["text"], "Thinking it over.");
    assert_eq!(output[0]["encrypted_content"], "c2ln");
    assert_eq!(output[1]["type"], "function_call");
    assert!(
        output[1]["call_id"]
            .as_str()
            .unwrap()
            .ends_with("__thought__c2ln")
    );
    assert_eq!(output[1]["arguments"], "{\"a\":1}");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let usage = &done["usage"];
    assert_eq!(usage["input_tokens"], 4);
    assert_eq!(usage["output_tokens"], 9);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 2);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 3);
    assert_eq!(usage["total_tokens"], 13);
}

#[test]
fn an_error_event_mid_stream_fails_the_response_after_what_arrived() {
    let (events, b) = stream(
        json!({"model": "m", "input": "hi"}),
        &[
            chunk(json!([{"text": "Half an "}]), None),
            json!({"error": {"code": 503, "message": "overloaded key=AIzaSyABCDEFGHIJKLMNOPQRSTUVWXYZ0123456", "status": "UNAVAILABLE"}}),
        ],
        true,
    );
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "unavailable");
    assert!(!last.to_string().contains("AIzaSyABCDEFGHIJ"));
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        "Half an "
    );
    assert!(b.failure().is_some());
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "response.failed")
            .count(),
        1
    );
}

#[test]
fn a_stream_cut_before_its_finish_reason_fails() {
    let (events, _) = stream(
        json!({"model": "m", "input": "hi"}),
        &[chunk(json!([{"text": "Half"}]), None)],
        true,
    );
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.failed");
    assert!(
        last["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no finish reason")
    );
}

#[test]
fn a_blocked_prompt_is_an_incomplete_refusal() {
    let (events, b) = stream(
        json!({"model": "m", "input": "hi"}),
        &[json!({"promptFeedback": {"blockReason": "SAFETY"}})],
        true,
    );
    assert_eq!(events.last().unwrap().0, "response.incomplete");
    let done = b.final_response().unwrap();
    assert_eq!(done["incomplete_details"]["reason"], "content_filter");
    assert_eq!(done["output"][0]["content"][0]["type"], "refusal");
}

#[test]
fn without_parallel_tool_calls_only_the_first_call_is_kept() {
    let (_, b) = stream(
        json!({"model": "m", "input": "hi", "parallel_tool_calls": false}),
        &[chunk(
            json!([{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"},
                   {"functionCall": {"name": "g", "args": {}}}]),
            Some("STOP"),
        )],
        true,
    );
    let output = b.final_response().unwrap()["output"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["name"], "f");
}

#[test]
fn a_reasoning_item_gives_its_signature_to_the_call_after_it() {
    let r = req(json!({"model": "gemini-3-pro-preview", "input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "c2ln"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "42"}]}
    ], "text": {"format": {"type": "json_schema", "name": "x", "strict": true,
        "schema": {"type": "object", "additionalProperties": false, "$schema": "x"}}}}));
    let items = input_items(&r).unwrap();
    let g = serde_json::to_value(
        to_gemini(&r, &items, 0, &TranslateOptions::default())
            .unwrap()
            .0,
    )
    .unwrap();
    assert_eq!(
        g["contents"],
        json!([
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": 42}}}]}
        ])
    );
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        g["generationConfig"]["responseJsonSchema"],
        json!({"type": "object", "additionalProperties": false})
    );
}

#[test]
fn images_and_files_become_inline_and_file_data() {
    let r = req(json!({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
        {"type": "input_image", "image_url": "https://example.com/cat.jpg"},
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}
    ]}]}));
    let items = input_items(&r).unwrap();
    let g = serde_json::to_value(
        to_gemini(&r, &items, 0, &TranslateOptions::default())
            .unwrap()
            .0,
    )
    .unwrap();
    assert_eq!(
        g["contents"][0]["parts"],
        json!([
            {"text": "What is this?"},
            {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}
        ])
    );
}

#[test]
fn namespace_and_custom_tools_round_trip_under_their_client_names() {
    let r = req(json!({"model": "gemini-2.5-pro", "input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "call_1", "namespace": "agents", "name": "spawn",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "done"}
    ], "tools": [
        {"type": "namespace", "name": "agents", "description": "Sub-agents",
         "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]},
        {"type": "custom", "name": "apply_patch", "description": "Patch files",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
        {"type": "web_search", "external_web_access": true}
    ]}));
    let items = input_items(&r).unwrap();
    let (g, tools) = to_gemini(&r, &items, 0, &TranslateOptions::default()).unwrap();
    let g = serde_json::to_value(g).unwrap();
    let decls = &g["tools"][0]["functionDeclarations"];
    assert_eq!(decls[0]["name"], "agents__spawn");
    assert_eq!(decls[1]["name"], "apply_patch");
    assert!(
        decls[1]["description"]
            .as_str()
            .unwrap()
            .contains("start: x")
    );
    assert_eq!(
        decls[1]["parametersJsonSchema"]["required"],
        json!(["input"])
    );
    assert_eq!(
        g["tools"].as_array().unwrap().len(),
        1,
        "no search beside functions on 2.5"
    );
    assert_eq!(
        g["contents"][1]["parts"][0]["functionCall"]["name"],
        "agents__spawn"
    );
    assert_eq!(
        g["contents"][3]["parts"][0]["functionCall"],
        json!({"name": "apply_patch", "args": {"input": "*** Begin Patch"}})
    );
    assert_eq!(
        g["contents"][4]["parts"][0]["functionResponse"]["name"],
        "apply_patch"
    );

    // Gemini's calls come back under the client's names.
    let mut b =
        ResponseBuilder::new("resp_t".into(), &r, "gemini-2.5-pro", true, true).tools(tools);
    let mut out = BytesMut::new();
    let answer = chunk(
        json!([{"functionCall": {"name": "agents__spawn", "args": {"n": 1}}, "thoughtSignature": "c2ln"},
               {"functionCall": {"name": "apply_patch", "args": {"input": "*** Begin Patch\n"}}}]),
        Some("STOP"),
    );
    b.push(&serde_json::to_vec(&answer).unwrap(), &mut out);
    let output = b.final_response().unwrap()["output"].clone();
    assert_eq!(output[0]["type"], "function_call");
    assert_eq!(output[0]["name"], "spawn");
    assert_eq!(output[0]["namespace"], "agents");
    assert_eq!(output[1]["type"], "custom_tool_call");
    assert_eq!(output[1]["name"], "apply_patch");
    assert_eq!(output[1]["input"], "*** Begin Patch\n");
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(text.contains("event: response.custom_tool_call_input.delta"));
    assert!(text.contains("event: response.custom_tool_call_input.done"));
}

#[test]
fn a_reasoning_signature_does_not_reach_a_call_of_a_later_turn() {
    let r = req(json!({"model": "gemini-2.5-flash", "input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "summary": [], "encrypted_content": "c2lnQQ=="},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"role": "user", "content": "call it"},
        {"type": "reasoning", "summary": [], "encrypted_content": "c2lnQg=="},
        {"type": "function_call", "call_id": "call_1__thought__b3du", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1__thought__b3du", "output": "ok"},
        {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_2", "output": "ok"}
    ]}));
    let items = input_items(&r).unwrap();
    let g = serde_json::to_value(
        to_gemini(&r, &items, 0, &TranslateOptions::default())
            .unwrap()
            .0,
    )
    .unwrap();
    let contents = g["contents"].as_array().unwrap();
    assert!(contents[1]["parts"][0].get("thoughtSignature").is_none());
    // The call's own signature wins over the reasoning item's; a later call gets neither.
    assert_eq!(contents[3]["parts"][0]["thoughtSignature"], "b3du");
    assert!(contents[5]["parts"][0].get("thoughtSignature").is_none());
}

#[test]
fn a_generated_image_is_an_image_generation_call_item() {
    let (events, b) = stream(
        json!({"model": "m", "input": "draw"}),
        &[chunk(
            json!([{"text": "Here it is."}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}]),
            Some("STOP"),
        )],
        true,
    );
    let output = b.final_response().unwrap()["output"].clone();
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[1]["type"], "image_generation_call");
    assert_eq!(output[1]["result"], "iVBO");
    assert_eq!(output[1]["output_format"], "png");
    assert!(
        events
            .iter()
            .any(|(n, _)| n == "response.image_generation_call.completed")
    );
}

#[test]
fn tool_choice_names_a_namespaced_or_custom_tool_by_its_gemini_name() {
    let r = req(json!({"model": "m", "input": "go",
        "tool_choice": {"type": "function", "namespace": "agents", "name": "spawn"},
        "tools": [{"type": "namespace", "name": "agents", "description": "",
                   "tools": [{"type": "function", "name": "spawn"}]}]}));
    let items = input_items(&r).unwrap();
    let g = serde_json::to_value(
        to_gemini(&r, &items, 0, &TranslateOptions::default())
            .unwrap()
            .0,
    )
    .unwrap();
    assert_eq!(
        g["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["agents__spawn"]})
    );
}
