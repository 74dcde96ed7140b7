//! OpenAI's Responses API as full_proxy's users meet it: the `async-openai` client (and raw
//! HTTP where the typed client hides the wire) against full_proxy over loopback, FakeGemini
//! upstream. Plain and streamed answers, a function call round trip whose thought signature
//! reaches Gemini after the key rotated, `previous_response_id` on a second instance sharing
//! Redis, and stored responses reachable by their owner only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::pin::Pin;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::responses::{CreateResponse, ResponseStreamEvent};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, redis_url};
use tower::ServiceExt;
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::client::UpstreamClient;
use tower_gemini::testing::{FakeGemini, Fault};

const KEY: &str = "AIzaSyResponses-test-key-000000000001";
const KEY2: &str = "AIzaSyResponses-test-key-000000000002";
const MODEL: &str = "gemini-2.5-flash";
const SIGNATURE: &str = "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ==";

async fn setup(keys: &[&str], vars: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start(keys.iter().copied()).await.unwrap();
    let url = fake.url();
    let joined = keys.join(",");
    let mut all = vec![
        ("GEMINI_API_KEYS", joined.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("RETRY_DELAY_MS", "0"),
    ];
    all.extend_from_slice(vars);
    let proxy = Proxy::start(&all).await;
    (fake, proxy)
}

fn client_for(proxy: &Proxy, token: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", proxy.url()))
            .with_api_key(token),
    )
}

fn request(v: Value) -> CreateResponse {
    serde_json::from_value(v).unwrap()
}

/// A typed create, returned as JSON (the typed client already checked the shape).
async fn create(client: &Client<OpenAIConfig>, body: Value) -> Value {
    let res = client.responses().create(request(body)).await.unwrap();
    serde_json::to_value(res).unwrap()
}

/// Raw HTTP, for statuses, error bodies and the exact stream.
async fn raw(
    proxy: &Proxy,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
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

/// The `(event, data)` pairs of an SSE body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, serde_json::from_str(&data).unwrap())
        })
        .collect()
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": false},
            "strict": true}])
}

#[tokio::test]
async fn a_plain_answer_is_a_completed_response_with_usage() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    let client = client_for(&proxy, &proxy.token);
    let res = create(
        &client,
        json!({"model": MODEL, "input": "Tell me about tides.",
               "instructions": "Be brief.", "max_output_tokens": 500, "temperature": 0.3}),
    )
    .await;
    assert!(res["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(res["object"], "response");
    assert_eq!(res["status"], "completed");
    assert_eq!(res["model"], MODEL);
    assert_eq!(
        output_text(&res),
        FakeGemini::passage("Tell me about tides.")
    );
    let usage = &res["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0);
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    let sent = fake.last_received().unwrap();
    assert_eq!(sent.path, format!("/v1beta/models/{MODEL}:generateContent"));
    let sent = sent.json();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "Tell me about tides."}]}])
    );
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 500);
    assert_eq!(sent["generationConfig"]["temperature"], 0.3);
}

#[tokio::test]
async fn a_stream_is_the_typed_event_sequence_with_sequence_numbers() {
    let (_fake, proxy) = setup(&[KEY], &[]).await;
    let prompt = "Stream a passage about rivers.";
    let (status, text) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": prompt, "stream": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let events = events(&text);
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64, "{name}");
        assert_eq!(&data["type"], name.as_str());
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "response.output_text.delta")
        .count();
    assert!(deltas > 1, "the text arrives in several deltas: {names:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    let text_of_deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text_of_deltas, FakeGemini::passage(prompt));
    let item_id = &events[2].1["item"]["id"];
    assert!(
        events[3..deltas + 7]
            .iter()
            .all(|(n, d)| n == "response.output_item.done" || &d["item_id"] == item_id)
    );
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(output_text(done), FakeGemini::passage(prompt));
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[0].1["response"]["id"], done["id"]);

    // The typed client reads every event of the same stream.
    let client = client_for(&proxy, &proxy.token);
    let mut stream = client
        .responses()
        .create_stream(request(
            json!({"model": MODEL, "input": prompt, "stream": true}),
        ))
        .await
        .unwrap();
    let mut text = String::new();
    let mut completed = false;
    while let Some(ev) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx)).await
    {
        match ev.unwrap() {
            ResponseStreamEvent::ResponseOutputTextDelta(d) => text.push_str(&d.delta),
            ResponseStreamEvent::ResponseCompleted(_) => completed = true,
            _ => {}
        }
    }
    assert!(completed);
    assert_eq!(text, FakeGemini::passage(prompt));
}

#[tokio::test]
async fn a_function_call_round_trip_brings_the_signature_back_after_the_key_rotated() {
    let (fake, proxy) = setup(&[KEY, KEY2], &[]).await;
    let client = client_for(&proxy, &proxy.token);
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Oslo"}),
    });
    let first = create(
        &client,
        json!({"model": MODEL, "input": "Weather in Oslo?", "tools": weather_tool(),
               "tool_choice": "auto", "store": false}),
    )
    .await;
    let first_key = fake.last_received().unwrap().headers["x-goog-api-key"].clone();
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned()
        .unwrap();
    assert_eq!(call["name"], "weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Oslo"})
    );
    let call_id = call["call_id"].as_str().unwrap();
    assert!(
        call_id.ends_with(&format!("__thought__{SIGNATURE}")),
        "{call_id}"
    );
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"],
        "weather"
    );
    assert!(
        sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
            .get("strict")
            .is_none()
    );

    // The client sends the call back as a typed client keeps it (no extra fields) and the
    // tool's output; round robin sends it on the other key.
    let second = create(
        &client,
        json!({"model": MODEL, "tools": weather_tool(), "store": false, "input": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"type": "function_call", "call_id": call_id, "name": "weather",
             "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call_id, "output": "{\"temp_c\": -3}"}
        ]}),
    )
    .await;
    let received = fake.last_received().unwrap();
    assert_ne!(
        received.headers["x-goog-api-key"], first_key,
        "the key rotated"
    );
    assert_eq!(
        received.json()["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "weather",
                "args": {"city": "Oslo"}}, "thoughtSignature": SIGNATURE}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "weather",
                "response": {"temp_c": -3}}}]}
        ])
    );
    assert_eq!(
        output_text(&second),
        "The weather tool returned {\"temp_c\":-3}."
    );
    assert_eq!(second["status"], "completed");
}

#[tokio::test]
async fn a_streamed_function_call_sends_its_arguments_as_deltas() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Oslo"}),
    });
    let (status, text) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": "Weather?", "tools": weather_tool(), "stream": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let args: String = events[3].1["delta"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Oslo"})
    );
    assert_eq!(events[4].1["arguments"], args.as_str());
    let item = &events[5].1["item"];
    assert_eq!(item["type"], "function_call");
    assert!(item["call_id"].as_str().unwrap().contains(SIGNATURE));
}

#[tokio::test]
async fn previous_response_id_continues_on_another_instance_sharing_redis() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("tower-gemini-test:responses:{}:{nanos}", std::process::id());
    let vars = [
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        // Short-lived: the test leaves nothing in Redis for long.
        ("RESPONSES_TTL_SECONDS", "120"),
    ];
    let a = Proxy::start(&vars).await;
    let b = Proxy::start(&vars).await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Oslo"}),
    });
    let first = create(
        &client_for(&a, &a.token),
        json!({"model": MODEL, "input": "Weather in Oslo?", "tools": weather_tool(),
               "instructions": "Only on the first."}),
    )
    .await;
    let id = first["id"].as_str().unwrap();
    let call_id = first["output"][0]["call_id"].as_str().unwrap();
    // Streamed on the other instance, which knows the call only from the shared store; its
    // last events come only after it was stored.
    let (status, text) = raw(
        &b,
        "POST",
        "/v1/responses",
        &b.token,
        Some(
            json!({"model": MODEL, "previous_response_id": id, "stream": true,
                    "tools": weather_tool(), "input": [
                        {"type": "function_call_output", "call_id": call_id,
                         "output": "{\"temp_c\": -3}"}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "weather",
                "args": {"city": "Oslo"}}, "thoughtSignature": SIGNATURE}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "weather",
                "response": {"temp_c": -3}}}]}
        ])
    );
    assert!(
        sent.get("systemInstruction").is_none(),
        "instructions are not carried over"
    );
    let second = events(&text).last().unwrap().1["response"].clone();
    assert_eq!(second["status"], "completed", "{text}");
    assert_eq!(second["previous_response_id"], id);
    assert_eq!(
        output_text(&second),
        "The weather tool returned {\"temp_c\":-3}."
    );
    // A third turn on the first instance continues the streamed one.
    let third = create(
        &client_for(&a, &a.token),
        json!({"model": MODEL, "input": "Thanks.", "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(third["status"], "completed");
    let sent = fake.last_received().unwrap().json();
    assert_eq!(sent["contents"].as_array().unwrap().len(), 5, "{sent}");
    assert_eq!(
        sent["contents"][3]["parts"][0]["text"],
        output_text(&second)
    );
    assert_eq!(sent["contents"][4]["parts"][0]["text"], "Thanks.");
    // And either instance reads it back.
    let path = format!("/v1/responses/{}", second["id"].as_str().unwrap());
    let (status, got) = raw(&a, "GET", &path, &a.token, None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got, second);
}

#[tokio::test]
async fn a_stored_response_is_read_and_deleted_by_its_owner_only() {
    let (_fake, proxy) = setup(
        &[KEY],
        &[("ALLOWED_TOKENS", "sk-owner-token-1,sk-other-token-2")],
    )
    .await;
    let (owner, other) = ("sk-owner-token-1", "sk-other-token-2");
    let created = create(
        &client_for(&proxy, owner),
        json!({"model": MODEL, "input": "Keep me."}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/responses/{id}");

    let (status, body) = raw(&proxy, "GET", &path, other, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["type"], "not_found_error");
    assert!(!body.contains("Keep me"));
    let (status, _) = raw(&proxy, "DELETE", &path, other, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        other,
        Some(json!({"model": MODEL, "input": "Go on.", "previous_response_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["param"], "previous_response_id");
    assert_eq!(err["error"]["code"], "previous_response_not_found");

    // The owner reads it with the typed client, then deletes it.
    let client = client_for(&proxy, owner);
    let got = serde_json::to_value(client.responses().retrieve(id).await.unwrap()).unwrap();
    assert_eq!(got, created);
    let (status, items) = raw(&proxy, "GET", &format!("{path}/input_items"), owner, None).await;
    assert_eq!(status, StatusCode::OK);
    let items: Value = serde_json::from_str(&items).unwrap();
    assert_eq!(items["data"][0]["content"][0]["text"], "Keep me.");
    let deleted = client.responses().delete(id).await.unwrap();
    assert!(deleted.deleted);
    let (status, body) = raw(&proxy, "DELETE", &path, owner, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
        "not_found_error"
    );
    let (status, _) = raw(&proxy, "GET", &path, owner, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = raw(&proxy, "PUT", &path, owner, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn store_false_keeps_nothing_and_an_unknown_previous_id_is_a_404() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    let (status, res) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": "Forget me.", "store": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let res: Value = serde_json::from_str(&res).unwrap();
    assert_eq!(res["store"], false);
    let (status, _) = raw(
        &proxy,
        "GET",
        &format!("/v1/responses/{}", res["id"].as_str().unwrap()),
        &proxy.token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let before = fake.received().len();
    let (status, body) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": "Go on.", "previous_response_id": "resp_nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("resp_nope"));
    assert_eq!(fake.received().len(), before, "no upstream call");
}

#[tokio::test]
async fn the_output_cap_makes_an_incomplete_response() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    fake.push_fault(Fault::FinishAfter {
        chunks: 2,
        reason: "MAX_TOKENS".into(),
    });
    let (status, text) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": "A long story.", "stream": true, "max_output_tokens": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (name, last) = events(&text).pop().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
}

#[tokio::test]
async fn reasoning_and_web_search_map_to_thinking_and_google_search() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    let client = client_for(&proxy, &proxy.token);
    let prompt = "Who won the last match?";
    let res = create(
        &client,
        json!({"model": MODEL, "input": prompt, "reasoning": {"effort": "low", "summary": "auto"},
               "tools": [{"type": "web_search"}]}),
    )
    .await;
    let sent = fake.last_received().unwrap().json();
    assert_eq!(sent["tools"], json!([{"googleSearch": {}}]));
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        1024
    );
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"]["includeThoughts"],
        true
    );
    let output = res["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning");
    assert!(!output[0]["summary"][0]["text"].as_str().unwrap().is_empty());
    assert!(
        res["usage"]["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let message = &output[1];
    assert_eq!(message["content"][0]["text"], FakeGemini::passage(prompt));
    let cited: Vec<&str> = message["content"][0]["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "url_citation");
            a["url"].as_str().unwrap()
        })
        .collect();
    let sources: Vec<String> = FakeGemini::grounding_sources(prompt)
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    assert!(!sources.is_empty());
    assert_eq!(
        cited,
        sources.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn bad_input_is_a_400_in_openai_shape() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    for body in [
        json!({"model": MODEL}),
        json!({"model": MODEL, "input": 5}),
        json!({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}),
        json!({"model": MODEL, "input": "hi", "tools": [{"type": "computer_use_preview"}]}),
        json!({"model": MODEL, "input": "hi", "text": {"format": {"type": "yaml"}}}),
        json!({"model": MODEL, "input": "hi", "reasoning": {"effort": "extreme"}}),
    ] {
        let (status, text) = raw(
            &proxy,
            "POST",
            "/v1/responses",
            &proxy.token,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{text}");
    }
    let (status, _) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        "wrong-token",
        Some(json!({"model": MODEL, "input": "hi"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn an_interrupted_stream_is_one_seamless_response() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    fake.push_fault(Fault::DropAfter(2));
    fake.push_fault(Fault::FinishAfter {
        chunks: 1,
        reason: "OTHER".into(),
    });
    let prompt = "a river's long journey";
    let (status, text) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": prompt, "stream": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = events(&text);
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, FakeGemini::passage(prompt));
    let terminal: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| {
            matches!(
                *n,
                "response.completed" | "response.failed" | "response.incomplete"
            )
        })
        .collect();
    assert_eq!(terminal, ["response.completed"]);
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "response.output_item.added")
            .count(),
        1
    );
    assert_eq!(fake.pending_faults(), 0);
}

#[tokio::test]
async fn an_upstream_error_is_an_openai_error_with_its_status() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    for stream in [false, true] {
        fake.push_fault(Fault::HttpError {
            status: 400,
            message: "Request contains an invalid argument.".into(),
        });
        let (status, text) = raw(
            &proxy,
            "POST",
            "/v1/responses",
            &proxy.token,
            Some(json!({"model": MODEL, "input": "hi", "stream": stream})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["error"]["message"],
            "Request contains an invalid argument."
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn with_database_path_a_stored_response_survives_a_restart() {
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let url = fake.url();
    let db = std::env::temp_dir().join(format!(
        "responses-{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let db_path = db.to_str().unwrap().to_owned();
    let vars = [
        ("GEMINI_API_KEYS", KEY),
        ("UPSTREAM_URL", url.as_str()),
        ("DATABASE_PATH", db_path.as_str()),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let proxy = Proxy::start(&vars).await;
    fake.push_fault(Fault::FunctionCall {
        name: "weather".into(),
        args: json!({"city": "Oslo"}),
    });
    let first = create(
        &client_for(&proxy, &proxy.token),
        json!({"model": MODEL, "input": "Weather in Oslo?", "tools": weather_tool()}),
    )
    .await;
    let proxy = proxy.restart(&vars).await;
    let id = first["id"].as_str().unwrap();
    let (status, got) = raw(
        &proxy,
        "GET",
        &format!("/v1/responses/{id}"),
        &proxy.token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        (&got["id"], &got["output"]),
        (&first["id"], &first["output"])
    );
    let second = create(
        &client_for(&proxy, &proxy.token),
        json!({"model": MODEL, "previous_response_id": id, "tools": weather_tool(), "input": [
            {"type": "function_call_output", "call_id": first["output"][0]["call_id"], "output": "sunny"}]}),
    )
    .await;
    assert_eq!(
        output_text(&second),
        "The weather tool returned {\"result\":\"sunny\"}."
    );
    drop(proxy);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db_path}{suffix}"));
    }
}

/// The shape of Codex's requests (0.171): developer messages with ids, namespace and
/// `web_search` tools, `include`, `prompt_cache_key`, `client_metadata`, `store: false`; the
/// whole conversation sent back with the reasoning and call items it was given.
#[tokio::test]
async fn a_codex_shaped_conversation_is_served() {
    let (fake, proxy) = setup(&[KEY, KEY2], &[]).await;
    let tools = json!([
        {"type": "function", "name": "exec_command", "description": "Runs a command.", "strict": false,
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                        "required": ["cmd"], "additionalProperties": false}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
         "tools": [{"type": "function", "name": "close_agent", "description": "Close an agent.",
                    "strict": false, "parameters": {"type": "object", "properties": {}}}]},
        {"type": "web_search", "external_web_access": false}
    ]);
    let mut input = vec![
        json!({"type": "message", "id": "msg_dev", "role": "developer",
               "content": [{"type": "input_text", "text": "You are a coding agent."}]}),
        json!({"type": "message", "id": "msg_user", "role": "user",
               "content": [{"type": "input_text", "text": "List the files."}]}),
    ];
    let body = |input: &Vec<Value>| {
        json!({"model": MODEL, "instructions": "Be careful.", "input": input, "tools": tools,
               "tool_choice": "auto", "parallel_tool_calls": true,
               "reasoning": {"summary": "auto"}, "store": false, "stream": true,
               "include": ["reasoning.encrypted_content"], "prompt_cache_key": "thread-1",
               "client_metadata": {"thread_id": "thread-1"}})
    };
    fake.push_fault(Fault::FunctionCall {
        name: "exec_command".into(),
        args: json!({"cmd": "ls"}),
    });
    let (status, text) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(body(&input)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let sent = fake.last_received().unwrap().json();
    assert_eq!(
        sent["tools"][0]["functionDeclarations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["exec_command", "multi_agent_v1__close_agent"]
    );
    assert_eq!(sent["tools"].as_array().unwrap().len(), 1, "no live search");
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be careful.");
    let done = events(&text).pop().unwrap().1["response"].clone();
    assert_eq!(done["status"], "completed");
    // Codex appends the output items and the tool's result, and sends it all again.
    input.extend(done["output"].as_array().unwrap().iter().cloned());
    let call_id = done["output"][0]["call_id"].as_str().unwrap().to_owned();
    input.push(
        json!({"type": "function_call_output", "call_id": call_id, "output": "a.txt\nb.txt"}),
    );
    let (status, text) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(body(&input)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let sent = fake.last_received().unwrap().json();
    let contents = sent["contents"].as_array().unwrap();
    assert_eq!(contents[1]["parts"][0]["thoughtSignature"], SIGNATURE);
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"],
        json!({"name": "exec_command", "response": {"result": "a.txt\nb.txt"}})
    );
    assert_eq!(
        output_text(&events(&text).pop().unwrap().1["response"]),
        "The exec_command tool returned {\"result\":\"a.txt\\nb.txt\"}."
    );
}

#[tokio::test]
async fn a_conversation_over_the_store_cap_is_answered_but_not_kept() {
    use tower::ServiceBuilder;
    use tower_gemini::key_rotation::KeyRotationLayer;
    use tower_gemini::openai::OpenAiToGeminiLayer;
    let fake = FakeGemini::start([KEY]).await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(OpenAiToGeminiLayer::new().max_stored_response_bytes(4096))
        .layer(KeyRotationLayer::round_robin([KEY]).unwrap())
        .service(UpstreamClient::new(fake.url()).unwrap());
    let post = |input: String| {
        Request::post("/v1/responses")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"model": MODEL, "input": input}).to_string(),
            ))
            .unwrap()
    };
    let get = |id: &str| {
        Request::get(format!("/v1/responses/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let mut ids = Vec::new();
    for input in ["A short question.".to_owned(), "long ".repeat(2000)] {
        let res = svc.clone().oneshot(post(input)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "completed", "answered either way: {v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let kept = svc.clone().oneshot(get(&ids[0])).await.unwrap();
    assert_eq!(kept.status(), StatusCode::OK, "the small one is kept");
    let dropped = svc.clone().oneshot(get(&ids[1])).await.unwrap();
    assert_eq!(
        dropped.status(),
        StatusCode::NOT_FOUND,
        "10 KB over a 4 KiB cap"
    );
}

#[tokio::test]
async fn a_prompt_over_the_window_is_context_length_exceeded() {
    let (fake, proxy) = setup(&[KEY], &[]).await;
    fake.push_fault(Fault::HttpError {
        status: 400,
        message: "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).".into(),
    });
    let (status, body) = raw(
        &proxy,
        "POST",
        "/v1/responses",
        &proxy.token,
        Some(json!({"model": MODEL, "input": "hello"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
}
