use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::rules::HARM_CATEGORIES;
use super::*;
use crate::body::{Body, BoxError, collect_limited};
use crate::error::Dialect;

// === helpers ===

fn call(kind: CallKind, model: &str, body: Value) -> Call {
    Call::new(kind, model, body.as_object().cloned())
}

fn gen_call(model: &str, body: Value) -> Call {
    call(CallKind::GenerateContent, model, body)
}

fn body_of(call: Call) -> Value {
    Value::Object(call.into_request().unwrap_or_default())
}

fn user_body() -> Value {
    json!({
        "contents": [
            {"role": "user", "parts": [{"text": "first question"}]},
            {"role": "model", "parts": [{"text": "an answer"}]},
            {"role": "user", "parts": [{"text": "second question"}]}
        ],
        "generationConfig": {"temperature": 1, "maxOutputTokens": 100}
    })
}

/// What the fake upstream of [`upstream`] received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, Bytes)>>>);

impl Seen {
    fn last(&self) -> (String, Bytes) {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request went upstream")
    }
    fn last_json(&self) -> Value {
        serde_json::from_slice(&self.last().1).unwrap()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

type Upstream = tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// An upstream that records the path+query and body and answers `answer`.
fn upstream(
    seen: Seen,
    answer: impl Fn() -> Response<Body> + Clone + Send + Sync + 'static,
) -> Upstream {
    tower::util::BoxCloneService::new(service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        let answer = answer.clone();
        async move {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let body = collect_limited(req.into_body(), 1 << 20).await.unwrap();
            seen.0.lock().unwrap().push((pq, body));
            Ok::<_, Infallible>(answer())
        }
    }))
}

fn ok_json(v: Value) -> impl Fn() -> Response<Body> + Clone + Send + Sync + 'static {
    move || {
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap()
    }
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).body(body.into()).unwrap()
}

async fn json_of(res: Response<Body>) -> Value {
    serde_json::from_slice(&collect_limited(res.into_body(), 1 << 22).await.unwrap()).unwrap()
}

fn chunked(parts: Vec<Bytes>) -> Body {
    struct Iter(std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, BoxError>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.next())
        }
    }
    let frames: Vec<_> = parts.into_iter().map(|b| Ok(Frame::data(b))).collect();
    Body::new(StreamBody::new(Iter(frames.into_iter())))
}

/// Splits bytes into frames of 7 bytes, so events straddle frames.
fn in_small_frames(all: &[u8]) -> Body {
    chunked(all.chunks(7).map(Bytes::copy_from_slice).collect())
}

fn stream_chunks() -> Vec<Value> {
    vec![
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me think", "thought": true}]}, "index": 0}], "responseId": "r"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello "}]}, "index": 0}], "responseId": "r"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "world"}]}, "finishReason": "STOP", "index": 0,
            "groundingMetadata": {"groundingChunks": [
                {"web": {"uri": "https://a.example/1", "title": "a.example"}},
                {"web": {"uri": "https://b.example/2", "title": "b.example"}},
                {"web": {"uri": "https://a.example/1", "title": "a.example"}}
            ]}}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "thoughtsTokenCount": 5, "totalTokenCount": 10},
            "responseId": "r"}),
    ]
}

fn sse_body(chunks: &[Value]) -> Vec<u8> {
    chunks
        .iter()
        .flat_map(|c| format!("data: {c}\r\n\r\n").into_bytes())
        .collect()
}

fn array_body(chunks: &[Value]) -> Vec<u8> {
    let items: Vec<String> = chunks.iter().map(Value::to_string).collect();
    format!("[{}]", items.join(",\r\n")).into_bytes()
}

fn parse_sse(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .split("\r\n\r\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn all_parts(chunks: &[Value]) -> Vec<Value> {
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

fn text_of(chunks: &[Value]) -> String {
    all_parts(chunks)
        .iter()
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

// === ModelAliases ===

#[test]
fn alias_renames_the_model() {
    let rule = ModelAliases::new([("gpt-4o", "gemini-2.5-pro")]);
    let mut c = gen_call("gpt-4o", user_body());
    rule.request(&mut c).unwrap();
    assert_eq!(c.model(), "gemini-2.5-pro");
    assert_eq!(c.requested_model(), "gpt-4o");
    assert!(!c.is_request_modified());
    let mut c = gen_call("gemini-2.5-flash", user_body());
    rule.request(&mut c).unwrap();
    assert_eq!(c.model(), "gemini-2.5-flash");
}

#[test]
fn aliases_are_listed_after_their_model() {
    let rule = ModelAliases::new([("gpt-4o", "gemini-2.5-pro")]);
    let mut list = vec![
        ListedModel::upstream(json!({"name": "models/gemini-2.5-pro", "displayName": "Pro"})),
        ListedModel::upstream(json!({"name": "models/gemini-2.5-flash"})),
    ];
    rule.models(&mut list);
    let ids: Vec<&str> = list.iter().map(ListedModel::id).collect();
    assert_eq!(ids, ["gemini-2.5-pro", "gpt-4o", "gemini-2.5-flash"]);
    assert_eq!(list[1].target, "gemini-2.5-pro");
    assert_eq!(list[1].value["displayName"], "Pro");
}

// === SearchModels ===

#[test]
fn search_alias_goes_upstream_as_the_model_with_google_search() {
    let rule = SearchModels::new(["gemini-2.5-flash"]);
    let mut c = gen_call("gemini-2.5-flash-search", user_body());
    rule.request(&mut c).unwrap();
    assert_eq!(c.model(), "gemini-2.5-flash");
    let body = body_of(c);
    assert_eq!(body["tools"], json!([{"googleSearch": {}}]));
    let mut expected = user_body();
    expected["tools"] = json!([{"googleSearch": {}}]);
    assert_eq!(body, expected);
}

#[test]
fn search_alias_keeps_existing_tools_and_a_clients_search() {
    let rule = SearchModels::new(["gemini-2.5-flash-search"]);
    let mut body = user_body();
    body["tools"] = json!([{"urlContext": {}}]);
    let mut c = gen_call("gemini-2.5-flash-search", body);
    rule.request(&mut c).unwrap();
    assert_eq!(
        body_of(c)["tools"],
        json!([{"urlContext": {}}, {"googleSearch": {}}])
    );

    let mut body = user_body();
    body["tools"] = json!([{"google_search": {}}]);
    let mut c = gen_call("gemini-2.5-flash-search", body.clone());
    rule.request(&mut c).unwrap();
    assert!(!c.is_request_modified());
    assert_eq!(body_of(c), body);
}

#[test]
fn plain_and_unlisted_models_get_no_search() {
    let rule = SearchModels::new(["gemini-2.5-flash"]);
    for model in ["gemini-2.5-flash", "gemini-2.5-pro-search"] {
        let mut c = gen_call(model, user_body());
        rule.request(&mut c).unwrap();
        assert_eq!(c.model(), model);
        assert!(!c.is_request_modified());
    }
}

#[test]
fn search_aliases_are_listed_next_to_the_model() {
    let rule = SearchModels::new(["gemini-2.5-flash"]);
    let mut list = vec![
        ListedModel::upstream(
            json!({"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"}),
        ),
        ListedModel::upstream(json!({"name": "models/gemini-2.5-pro"})),
    ];
    rule.models(&mut list);
    let ids: Vec<&str> = list.iter().map(ListedModel::id).collect();
    assert_eq!(
        ids,
        [
            "gemini-2.5-flash",
            "gemini-2.5-flash-search",
            "gemini-2.5-pro"
        ]
    );
    assert_eq!(
        list[1].value["displayName"],
        "Gemini 2.5 Flash with Google Search"
    );
}

#[test]
fn search_links_are_listed_once_on_the_finishing_chunk() {
    let rule = SearchModels::new(["m"]).show_links(true);
    let mut c = gen_call("m-search", user_body());
    rule.request(&mut c).unwrap();
    let mut rw = rule.response(&c).expect("links on");
    let mut chunks = stream_chunks();
    // The same source again on an earlier chunk.
    chunks[1]["candidates"][0]["groundingMetadata"] =
        json!({"groundingChunks": [{"web": {"uri": "https://b.example/2", "title": "b.example"}}]});
    for c in &mut chunks {
        assert!(rw.chunk(c));
    }
    assert!(rw.finish().is_none());
    let last = all_parts(&chunks[2..]).last().cloned().unwrap();
    let text = last["text"].as_str().unwrap();
    assert_eq!(text.matches("https://a.example/1").count(), 1);
    assert_eq!(text.matches("https://b.example/2").count(), 1);
    assert!(text.contains("[b.example](https://b.example/2)"), "{text}");
    assert!(text.find("b.example").unwrap() < text.find("a.example").unwrap());
}

#[test]
fn search_links_come_last_when_sources_follow_the_finish() {
    let rule = SearchModels::new(["m"]).show_links(true);
    let mut c = gen_call("m-search", user_body());
    rule.request(&mut c).unwrap();
    let mut rw = rule.response(&c).unwrap();
    let mut finish =
        json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]});
    rw.chunk(&mut finish);
    assert_eq!(all_parts(&[finish]).len(), 1);
    let mut late = json!({"candidates": [{"groundingMetadata": {"groundingChunks": [{"web": {"uri": "https://c.example", "title": ""}}]}}]});
    rw.chunk(&mut late);
    let extra = rw.finish().expect("links at the end");
    assert!(text_of(&[extra]).contains("[https://c.example](https://c.example)"));
    assert!(rw.finish().is_none());
}

#[test]
fn no_links_without_the_search_alias_or_after_an_error() {
    let rule = SearchModels::new(["m"]).show_links(true);
    let c = gen_call("m", user_body());
    assert!(rule.response(&c).is_none());
    let rule_off = SearchModels::new(["m"]);
    let mut c = gen_call("m-search", user_body());
    rule_off.request(&mut c).unwrap();
    assert!(rule_off.response(&c).is_none());

    let mut rw = rule
        .response(&{
            let mut c = gen_call("m-search", user_body());
            rule.request(&mut c).unwrap();
            c
        })
        .unwrap();
    let mut src = json!({"candidates": [{"groundingMetadata": {"groundingChunks": [{"web": {"uri": "https://c.example"}}]}}]});
    rw.chunk(&mut src);
    rw.chunk(&mut json!({"error": {"code": 500, "message": "x", "status": "INTERNAL"}}));
    assert!(rw.finish().is_none());
}

// === AllowedModels ===

#[test]
fn allow_list_refuses_other_models() {
    let rule = AllowedModels::new(["gemini-2.5-flash"]);
    let mut c = gen_call("gemini-2.5-pro", user_body());
    let err = rule.request(&mut c).unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert!(err.message().contains("gemini-2.5-pro"));
    assert!(err.message().contains("gemini-2.5-flash"));
    let mut c = gen_call("gemini-2.5-flash", user_body());
    assert!(rule.request(&mut c).is_ok());
    let mut c = call(CallKind::ListModels, "", Value::Null);
    assert!(rule.request(&mut c).is_ok());
}

#[test]
fn allow_list_accepts_the_requested_or_the_resolved_name() {
    let rule = AllowedModels::new(["gpt-4o", "gemini-2.5-flash"]);
    let mut c = gen_call("gpt-4o", user_body());
    c.set_model("gemini-2.5-pro");
    assert!(rule.request(&mut c).is_ok());
    let mut c = gen_call("gemini-2.5-flash-search", user_body());
    c.set_model("gemini-2.5-flash");
    assert!(rule.request(&mut c).is_ok());
    let mut c = gen_call("gemini-2.5-pro", user_body());
    assert!(rule.request(&mut c).is_err());
}

#[test]
fn allow_list_filters_the_models_list() {
    let rule = AllowedModels::new(["gpt-4o", "gemini-2.5-flash"]);
    let pro = ListedModel::upstream(json!({"name": "models/gemini-2.5-pro"}));
    let mut list = vec![
        pro.clone(),
        pro.alias("gpt-4o"),
        ListedModel::upstream(json!({"name": "models/gemini-2.5-flash"})),
        ListedModel::upstream(json!({"name": "models/gemini-2.0-flash"})),
    ];
    rule.models(&mut list);
    let ids: Vec<&str> = list.iter().map(ListedModel::id).collect();
    assert_eq!(ids, ["gpt-4o", "gemini-2.5-flash"]);
}

// === PromptInjection ===

#[test]
fn system_injection_goes_beside_the_clients_system_text() {
    let rule = PromptInjection::new("House rules.", InjectPosition::System);
    let mut body = user_body();
    body["systemInstruction"] = json!({"parts": [{"text": "Client system."}]});
    let mut c = gen_call("m", body.clone());
    rule.request(&mut c).unwrap();
    let out = body_of(c);
    assert_eq!(
        out["systemInstruction"]["parts"],
        json!([{"text": "House rules."}, {"text": "Client system."}])
    );
    let mut rest = out.clone();
    rest["systemInstruction"] = body["systemInstruction"].clone();
    assert_eq!(rest, body);
}

#[test]
fn system_injection_creates_the_instruction_and_respects_snake_case() {
    let rule = PromptInjection::new("House rules.", InjectPosition::System);
    let mut c = gen_call("m", user_body());
    rule.request(&mut c).unwrap();
    assert_eq!(
        body_of(c)["systemInstruction"],
        json!({"parts": [{"text": "House rules."}]})
    );
    let mut body = user_body();
    body["system_instruction"] = json!({"parts": [{"text": "mine"}]});
    let mut c = gen_call("m", body);
    rule.request(&mut c).unwrap();
    let out = body_of(c);
    assert!(out.get("systemInstruction").is_none());
    assert_eq!(out["system_instruction"]["parts"][1]["text"], "mine");
}

#[test]
fn user_prefix_changes_only_the_first_user_turn() {
    let rule = PromptInjection::new("PREFIX", InjectPosition::UserPrefix);
    let mut c = gen_call("m", user_body());
    rule.request(&mut c).unwrap();
    let out = body_of(c);
    let mut expected = user_body();
    expected["contents"][0]["parts"][0]["text"] = json!("PREFIX\n\nfirst question");
    assert_eq!(out, expected);
    assert!(out.get("systemInstruction").is_none());
}

#[test]
fn user_suffix_changes_only_the_last_user_turn() {
    let rule = PromptInjection::new("SUFFIX", InjectPosition::UserSuffix);
    let mut c = gen_call("m", user_body());
    rule.request(&mut c).unwrap();
    let mut expected = user_body();
    expected["contents"][2]["parts"][0]["text"] = json!("second question\n\nSUFFIX");
    assert_eq!(body_of(c), expected);
}

#[test]
fn user_injection_adds_a_part_to_a_turn_without_text() {
    let rule = PromptInjection::new("SUFFIX", InjectPosition::UserSuffix);
    let body = json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]});
    let mut c = gen_call("m", body);
    rule.request(&mut c).unwrap();
    assert_eq!(
        body_of(c)["contents"][0]["parts"][1],
        json!({"text": "SUFFIX"})
    );
}

// === SafetyOverride ===

#[test]
fn safety_override_sets_every_category() {
    let rule = SafetyOverride::disable_all();
    let mut c = gen_call("gemini-2.5-flash", user_body());
    rule.request(&mut c).unwrap();
    let out = body_of(c);
    let settings = out["safetySettings"].as_array().unwrap();
    assert_eq!(settings.len(), HARM_CATEGORIES.len());
    for s in settings {
        assert!(["OFF", "BLOCK_NONE"].contains(&s["threshold"].as_str().unwrap()));
    }
    assert_eq!(
        settings[0],
        json!({"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"})
    );
    let mut rest = out.clone();
    rest.as_object_mut().unwrap().remove("safetySettings");
    assert_eq!(rest, user_body());
}

#[test]
fn safety_override_keeps_the_clients_own_entries() {
    let rule = SafetyOverride::disable_all();
    let mut body = user_body();
    let mine = json!({"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_LOW_AND_ABOVE", "method": "SEVERITY"});
    body["safetySettings"] = json!([mine.clone()]);
    let mut c = gen_call("gemini-2.5-flash", body);
    rule.request(&mut c).unwrap();
    let out = body_of(c);
    let settings = out["safetySettings"].as_array().unwrap();
    assert_eq!(settings.len(), HARM_CATEGORIES.len());
    let harassment: Vec<&Value> = settings
        .iter()
        .filter(|s| s["category"] == "HARM_CATEGORY_HARASSMENT")
        .collect();
    assert_eq!(harassment, [&mine]);
}

#[test]
fn safety_override_leaves_a_complete_client_list_alone() {
    let rule = SafetyOverride::disable_all();
    let mut body = user_body();
    body["safetySettings"] = HARM_CATEGORIES
        .iter()
        .map(|c| json!({"category": c, "threshold": "BLOCK_ONLY_HIGH"}))
        .collect();
    let mut c = gen_call("m", body);
    rule.request(&mut c).unwrap();
    assert!(!c.is_request_modified());
}

#[test]
fn old_models_get_block_none() {
    let rule = SafetyOverride::disable_all();
    assert_eq!(
        rule.threshold_for("gemini-1.5-pro", "HARM_CATEGORY_HARASSMENT"),
        "BLOCK_NONE"
    );
    assert_eq!(
        rule.threshold_for("gemini-2.5-pro", "HARM_CATEGORY_HARASSMENT"),
        "OFF"
    );
    assert_eq!(
        SafetyOverride::threshold("BLOCK_ONLY_HIGH").threshold_for("x", "y"),
        "BLOCK_ONLY_HIGH"
    );
}

// === ThinkingDefaults ===

#[test]
fn thinking_default_fills_in_a_missing_config() {
    let rule = ThinkingDefaults::new(1024).models(["gemini-2.5-flash"]);
    let mut c = gen_call("gemini-2.5-flash", user_body());
    rule.request(&mut c).unwrap();
    let mut expected = user_body();
    expected["generationConfig"]["thinkingConfig"] = json!({"thinkingBudget": 1024});
    assert_eq!(body_of(c), expected);

    let mut c = gen_call("gemini-2.5-flash", json!({"contents": []}));
    rule.request(&mut c).unwrap();
    assert_eq!(
        body_of(c)["generationConfig"],
        json!({"thinkingConfig": {"thinkingBudget": 1024}})
    );
}

#[test]
fn thinking_default_only_on_listed_models() {
    let rule = ThinkingDefaults::new(1024).models(["gemini-2.5-flash"]);
    let mut c = gen_call("gemini-2.5-pro", user_body());
    rule.request(&mut c).unwrap();
    assert!(!c.is_request_modified());
}

#[test]
fn a_clients_thinking_config_wins() {
    let rule = ThinkingDefaults::new(1024).include_thoughts(true);
    let mut body = user_body();
    body["generationConfig"]["thinkingConfig"] = json!({"thinkingLevel": "low"});
    let mut c = gen_call("gemini-3-pro-preview", body.clone());
    rule.request(&mut c).unwrap();
    assert!(!c.is_request_modified());
    assert_eq!(body_of(c), body);
}

#[test]
fn per_model_budgets_and_include_thoughts() {
    let rule = ThinkingDefaults::none()
        .model_budget("gemini-2.5-pro", 2048)
        .include_thoughts(true);
    assert_eq!(
        rule.config_for("gemini-2.5-pro"),
        Some(json!({"thinkingBudget": 2048, "includeThoughts": true}))
    );
    assert_eq!(
        rule.config_for("gemini-2.5-flash"),
        Some(json!({"includeThoughts": true}))
    );
    let mut c = call(CallKind::CountTokens, "gemini-2.5-pro", user_body());
    rule.request(&mut c).unwrap();
    assert!(
        !c.is_request_modified(),
        "countTokens gets no thinking config"
    );
}

// === HideThoughts ===

#[test]
fn hide_thoughts_strips_thought_parts_and_keeps_usage() {
    let c = gen_call("m", user_body());
    let mut rw = HideThoughts.response(&c).unwrap();
    let mut unary = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": true},
        {"text": "Answer."}
    ]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "thoughtsTokenCount": 7, "totalTokenCount": 9}});
    let usage = unary["usageMetadata"].clone();
    assert!(rw.chunk(&mut unary));
    assert_eq!(
        unary["candidates"][0]["content"]["parts"],
        json!([{"text": "Answer."}])
    );
    assert_eq!(unary["usageMetadata"], usage);
}

#[test]
fn hide_thoughts_drops_chunks_that_only_held_thoughts() {
    let c = gen_call("m", user_body());
    let mut rw = HideThoughts.response(&c).unwrap();
    let mut chunks = stream_chunks();
    assert!(!rw.chunk(&mut chunks[0]));
    assert!(rw.chunk(&mut chunks[1]));
    // An already empty chunk is not ours to drop.
    let mut empty = json!({"candidates": [{"content": {"role": "model"}, "index": 0}]});
    assert!(rw.chunk(&mut empty));
}

#[test]
fn hide_thoughts_keeps_a_thought_signature() {
    let c = gen_call("m", user_body());
    let mut rw = HideThoughts.response(&c).unwrap();
    let mut chunk = json!({"candidates": [{"content": {"parts": [
        {"text": "plan", "thought": true, "thoughtSignature": "c2ln"}
    ]}}]});
    assert!(rw.chunk(&mut chunk));
    assert_eq!(
        chunk["candidates"][0]["content"]["parts"],
        json!([{"text": "", "thoughtSignature": "c2ln"}])
    );
}

// === CodeExecution ===

#[test]
fn code_execution_is_added_without_function_declarations() {
    let mut c = gen_call("m", user_body());
    CodeExecution.request(&mut c).unwrap();
    let mut expected = user_body();
    expected["tools"] = json!([{"codeExecution": {}}]);
    assert_eq!(body_of(c), expected);
}

#[test]
fn code_execution_is_not_added_beside_functions_or_twice() {
    for tools in [
        json!([{"functionDeclarations": [{"name": "f"}]}]),
        json!([{"function_declarations": [{"name": "f"}]}]),
        json!([{"codeExecution": {}}]),
    ] {
        let mut body = user_body();
        body["tools"] = tools;
        let mut c = gen_call("m", body.clone());
        CodeExecution.request(&mut c).unwrap();
        assert!(!c.is_request_modified());
        assert_eq!(body_of(c), body);
    }
}

// === The layer ===

/// The layer a gateway configured with these settings builds (named as `full_proxy`'s
/// variables, which it reads into a [`PolicyConfig`]).
fn layer_from(pairs: &[(&str, &str)]) -> RequestPolicyLayer {
    let list = |v: &str| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    let mut cfg = PolicyConfig::default();
    for (name, value) in pairs {
        match *name {
            "ALLOWED_MODELS" => cfg.allowed_models = list(value),
            "DISABLE_SAFETY_FILTERING" => cfg.disable_safety_filtering = *value == "true",
            "INJECT_PROMPT" => cfg.inject_prompt = Some((*value).to_owned()),
            "MODEL_ALIASES" => {
                cfg.model_aliases = list(value)
                    .iter()
                    .map(|p| p.split_once('=').unwrap())
                    .map(|(a, m)| (a.to_owned(), m.to_owned()))
                    .collect();
            }
            "MODEL_SEARCH" => cfg.model_search = list(value),
            "SHOW_SEARCH_LINK" => cfg.show_search_link = *value == "true",
            "SHOW_THINKING_PROCESS" => cfg.show_thinking_process = Some(*value == "true"),
            "TOOLS_CODE_EXECUTION_ENABLED" => cfg.tools_code_execution_enabled = *value == "true",
            other => panic!("no setting {other} in these tests"),
        }
    }
    cfg.layer()
}

#[tokio::test]
async fn unrelated_routes_pass_through_untouched() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[
            ("DISABLE_SAFETY_FILTERING", "true"),
            ("ALLOWED_MODELS", "x,text-embedding-004"),
        ]))
        .service(upstream(seen.clone(), ok_json(json!({}))));
    // An allowed embedding model: policed for the allow list only, body and path untouched.
    let body = r#"{"content": {"parts": [{"text": "hi"}]}}"#;
    let res = svc
        .clone()
        .oneshot(post(
            "/v1beta/models/text-embedding-004:embedContent?key=k",
            body,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        seen.last().0,
        "/v1beta/models/text-embedding-004:embedContent?key=k"
    );
    assert_eq!(&seen.last().1[..], body.as_bytes());
    svc.oneshot(post("/v1/chat/completions", "{}"))
        .await
        .unwrap();
    assert_eq!(seen.count(), 2);
}

#[tokio::test]
async fn unchanged_and_invalid_bodies_go_upstream_byte_for_byte() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[("TOOLS_CODE_EXECUTION_ENABLED", "true")]))
        .service(upstream(seen.clone(), ok_json(json!({}))));
    for body in [
        "{not json",
        "[1,2]",
        r#"{ "tools": [ {"functionDeclarations": [{"name": "f"}]} ], "generationConfig": {"temperature": 1.50} }"#,
    ] {
        svc.clone()
            .oneshot(post("/v1beta/models/m:generateContent", body))
            .await
            .unwrap();
        assert_eq!(&seen.last().1[..], body.as_bytes());
    }
}

#[tokio::test]
async fn refusals_answer_in_the_routes_dialect_without_an_upstream_call() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[("ALLOWED_MODELS", "gemini-2.5-flash")]))
        .service(upstream(seen.clone(), ok_json(json!({}))));
    let res = svc
        .clone()
        .oneshot(post(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "{}",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let v = json_of(res).await;
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-2.5-pro")
    );

    let mut req = post("/v1beta/models/gemini-2.5-pro:generateContent", "{}");
    req.extensions_mut().insert(Dialect::OpenAi);
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(res).await["error"]["type"], "permission_error");

    let res = svc
        .oneshot(
            Request::get("/v1beta/models/gemini-2.0-flash")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn renaming_rewrites_the_path_and_keeps_the_query() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro")]))
        .service(upstream(seen.clone(), ok_json(json!({}))));
    let body =
        r#"{"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temperature": 1}}"#;
    svc.clone()
        .oneshot(post(
            "/v1beta/models/gpt-4o:streamGenerateContent?alt=sse&x=1",
            body,
        ))
        .await
        .unwrap();
    let (pq, sent) = seen.last();
    assert_eq!(
        pq,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&x=1"
    );
    assert_eq!(
        &sent[..],
        body.as_bytes(),
        "a rename alone leaves the body as sent"
    );

    let count = r#"{"generateContentRequest": {"model": "models/gpt-4o", "contents": [{"parts": [{"text": "hi"}]}]}}"#;
    svc.oneshot(post("/v1beta/models/gpt-4o:countTokens", count))
        .await
        .unwrap();
    assert_eq!(seen.last().0, "/v1beta/models/gemini-2.5-pro:countTokens");
    assert_eq!(
        seen.last_json(),
        json!({"generateContentRequest": {"model": "models/gemini-2.5-pro", "contents": [{"parts": [{"text": "hi"}]}]}})
    );
}

#[tokio::test]
async fn a_rewritten_body_has_a_matching_content_length() {
    let lengths = Arc::new(Mutex::new(Vec::new()));
    let l = lengths.clone();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[("INJECT_PROMPT", "Be kind.")]))
        .service(service_fn(move |req: Request<Body>| {
            let l = l.clone();
            async move {
                let declared: usize = req.headers()["content-length"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let body = collect_limited(req.into_body(), 1 << 20).await.unwrap();
                l.lock().unwrap().push((declared, body.len()));
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        }));
    let req = Request::post("/v1beta/models/m:generateContent")
        .header("content-length", "14")
        .body(Body::from(r#"{"contents":[]}"#))
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let (declared, actual) = lengths.lock().unwrap()[0];
    assert_eq!(declared, actual);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[("INJECT_PROMPT", "x")]).max_body_bytes(8))
        .service(upstream(seen.clone(), ok_json(json!({}))));
    let res = svc
        .oneshot(post(
            "/v1beta/models/m:generateContent",
            r#"{"contents": []}"#,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn models_list_and_get_show_aliases() {
    let list = json!({"models": [
        {"name": "models/gemini-2.5-pro", "displayName": "Gemini 2.5 Pro", "inputTokenLimit": 1048576},
        {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"}
    ], "nextPageToken": "page-2"});
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[
            ("MODEL_SEARCH", "gemini-2.5-flash"),
            ("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro"),
        ]))
        .service(upstream(seen.clone(), ok_json(list)));
    let res = svc
        .clone()
        .oneshot(
            Request::get("/v1beta/models?pageSize=2")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let v = json_of(res).await;
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "models/gemini-2.5-pro",
            "models/gpt-4o",
            "models/gemini-2.5-flash",
            "models/gemini-2.5-flash-search"
        ]
    );
    assert_eq!(v["nextPageToken"], "page-2");
    assert_eq!(v["models"][1]["inputTokenLimit"], 1048576);

    let get_answer = json!({"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"});
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[("MODEL_SEARCH", "gemini-2.5-flash")]))
        .service(upstream(seen.clone(), ok_json(get_answer)));
    let res = svc
        .oneshot(
            Request::get("/v1beta/models/gemini-2.5-flash-search")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seen.last().0, "/v1beta/models/gemini-2.5-flash");
    let v = json_of(res).await;
    assert_eq!(v["name"], "models/gemini-2.5-flash-search");
    assert_eq!(v["displayName"], "Gemini 2.5 Flash with Google Search");
}

async fn streamed(
    pairs: &[(&str, &str)],
    uri: &str,
    upstream_bytes: Vec<u8>,
    sse: bool,
) -> Vec<u8> {
    let svc = ServiceBuilder::new()
        .layer(layer_from(pairs))
        .service(service_fn(move |_req: Request<Body>| {
            let bytes = upstream_bytes.clone();
            async move {
                let mut res = Response::new(in_small_frames(&bytes));
                let ct = if sse {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                res.headers_mut()
                    .insert("content-type", ct.parse().unwrap());
                Ok::<_, Infallible>(res)
            }
        }));
    let res = svc
        .oneshot(post(
            uri,
            r#"{"contents":[{"role":"user","parts":[{"text":"q"}]}]}"#,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    collect_limited(res.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec()
}

const STREAM_POLICY: &[(&str, &str)] = &[
    ("SHOW_THINKING_PROCESS", "false"),
    ("MODEL_SEARCH", "m"),
    ("SHOW_SEARCH_LINK", "true"),
];

#[tokio::test]
async fn sse_streams_are_rewritten_event_by_event() {
    let out = streamed(
        STREAM_POLICY,
        "/v1beta/models/m-search:streamGenerateContent?alt=sse",
        sse_body(&stream_chunks()),
        true,
    )
    .await;
    let events = parse_sse(&out);
    assert_eq!(events.len(), 2, "the thought-only chunk is dropped");
    assert!(
        all_parts(&events)
            .iter()
            .all(|p| p.get("thought").is_none())
    );
    let text = text_of(&events);
    assert!(text.starts_with("Hello world\n\n**Sources**\n"), "{text}");
    assert_eq!(text.matches("https://a.example/1").count(), 1);
    assert_eq!(
        events[1]["usageMetadata"],
        stream_chunks()[2]["usageMetadata"]
    );
}

#[tokio::test]
async fn json_array_streams_are_rewritten_element_by_element() {
    let out = streamed(
        STREAM_POLICY,
        "/v1beta/models/m-search:streamGenerateContent",
        array_body(&stream_chunks()),
        false,
    )
    .await;
    let events: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(events.len(), 2);
    let text = text_of(&events);
    assert!(text.starts_with("Hello world\n\n**Sources**\n"), "{text}");
    assert_eq!(text.matches("https://b.example/2").count(), 1);
}

#[tokio::test]
async fn a_cut_off_array_is_not_closed() {
    let mut bytes = array_body(&stream_chunks()[..2]);
    bytes.pop(); // no closing `]`
    let out = streamed(
        STREAM_POLICY,
        "/v1beta/models/m-search:streamGenerateContent",
        bytes,
        false,
    )
    .await;
    assert!(!out.ends_with(b"]"));
    assert!(serde_json::from_slice::<Value>(&out).is_err());
}

#[tokio::test]
async fn unary_answers_get_links_and_lose_thoughts() {
    let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "hmm", "thought": true}, {"text": "Answer."}
    ]}, "finishReason": "STOP", "groundingMetadata": {"groundingChunks": [{"web": {"uri": "https://a.example/1", "title": "A"}}]}}],
    "usageMetadata": {"promptTokenCount": 1, "thoughtsTokenCount": 4, "candidatesTokenCount": 1, "totalTokenCount": 6}});
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(STREAM_POLICY))
        .service(upstream(seen.clone(), ok_json(answer.clone())));
    let res = svc
        .oneshot(post(
            "/v1beta/models/m-search:generateContent",
            r#"{"contents":[]}"#,
        ))
        .await
        .unwrap();
    let v = json_of(res).await;
    let parts = v["candidates"][0]["content"]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0], json!({"text": "Answer."}));
    assert!(
        parts[1]["text"]
            .as_str()
            .unwrap()
            .contains("[A](https://a.example/1)")
    );
    assert_eq!(v["usageMetadata"], answer["usageMetadata"]);
    assert_eq!(seen.last().0, "/v1beta/models/m:generateContent");
}

#[tokio::test]
async fn error_answers_pass_through() {
    let svc = ServiceBuilder::new()
        .layer(layer_from(STREAM_POLICY))
        .service(service_fn(|_req: Request<Body>| async {
            let mut res = Response::new(Body::from(
                r#"{"error":{"code":429,"message":"slow","status":"RESOURCE_EXHAUSTED"}}"#,
            ));
            *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            Ok::<_, Infallible>(res)
        }));
    let res = svc
        .oneshot(post("/v1beta/models/m-search:generateContent", "{}"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(res).await["error"]["status"], "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn openai_models_routes_are_not_policed() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer_from(&[
            ("MODEL_ALIASES", "gpt-4o=gemini-2.5-pro"),
            ("ALLOWED_MODELS", "gemini-2.5-flash"),
        ]))
        .service(upstream(seen.clone(), ok_json(json!({"object": "model"}))));
    let res = svc
        .clone()
        .oneshot(
            Request::get("/v1/models/gpt-4o")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.last().0, "/v1/models/gpt-4o");
    // A Gemini method on /v1 is native Gemini and is policed.
    let res = svc
        .oneshot(post("/v1/models/gemini-2.5-pro:generateContent", "{}"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_event_over_the_cap_ends_the_rewritten_stream_with_an_error_event() {
    let mut chunks = stream_chunks();
    chunks.insert(
        1,
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": "A".repeat(4096)}}]}}]}),
    );
    let bytes = sse_body(&chunks);
    let svc = ServiceBuilder::new()
        .map_request(|mut req: Request<Body>| {
            req.extensions_mut().insert(crate::sse::MaxEventBytes(1024));
            req
        })
        .layer(layer_from(STREAM_POLICY))
        .service(service_fn(move |_req: Request<Body>| {
            let bytes = bytes.clone();
            async move {
                let mut res = Response::new(in_small_frames(&bytes));
                res.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                Ok::<_, Infallible>(res)
            }
        }));
    let res = svc
        .oneshot(post(
            "/v1beta/models/m-search:streamGenerateContent?alt=sse",
            r#"{"contents":[{"role":"user","parts":[{"text":"q"}]}]}"#,
        ))
        .await
        .unwrap();
    let out = collect_limited(res.into_body(), 1 << 20).await.unwrap();
    let events = parse_sse(&out);
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], 502, "{events:?}");
    assert!(error["message"].as_str().unwrap().contains("1024 bytes"));
    assert!(
        !text_of(&events).contains("Sources"),
        "no clean end after it"
    );
}
