//! Round trips of real-looking bodies: `serialize(parse(x)) == x` as JSON values, with made-up
//! `futureField`s at several levels standing in for fields Google adds later.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

/// Parses `value` as `T`, asserts it serializes back to the same JSON and returns it.
#[track_caller]
fn round_trip<T: DeserializeOwned + Serialize>(value: Value) -> T {
    let parsed: T = serde_json::from_value(value.clone()).expect("parses");
    let back = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(back, value, "round trip changed the JSON");
    // And through bytes, as the layers do.
    let bytes = serde_json::to_vec(&value).expect("bytes");
    let again: T = serde_json::from_slice(&bytes).expect("parses from bytes");
    assert_eq!(serde_json::to_value(&again).expect("serializes"), value);
    parsed
}

fn future(level: &str) -> Value {
    json!({ "level": level, "nested": [1, 2.5, null, true] })
}

#[test]
fn request_with_tools_thinking_and_safety_round_trips() {
    let body = json!({
        "contents": [
            {"role": "user", "parts": [
                {"text": "What's the weather in Paris? Also run some code."},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "application/pdf",
                              "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc123"}},
                {"text": "clip", "videoMetadata": {"startOffset": "1.5s", "endOffset": "10s", "fps": 2.5}}
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"id": "call-1", "name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "CvICAXLI2nygZH0+LD5IrjaWf3oKe3wVIZk63RFP3dsM",
                 "futureField": future("part")},
                {"executableCode": {"language": "PYTHON", "code": "print(1 + 1)"}},
                {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "2\n"}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"id": "call-1", "name": "get_weather",
                                      "response": {"temperature": 21.5, "unit": "C"},
                                      "futureField": future("functionResponse")}}
            ]}
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "tools": [
            {"functionDeclarations": [
                {"name": "get_weather", "description": "Current weather",
                 "parameters": {"type": "OBJECT",
                                "properties": {"city": {"type": "STRING"}},
                                "required": ["city"]},
                 "response": {"type": "OBJECT"},
                 "behavior": "BLOCKING"},
                {"name": "lookup",
                 "parametersJsonSchema": {"type": "object", "additionalProperties": false,
                                          "properties": {"q": {"type": "string"}}},
                 "responseJsonSchema": {"type": "string"}}
            ]},
            {"googleSearch": {}},
            {"googleSearchRetrieval": {"dynamicRetrievalConfig": {"mode": "MODE_DYNAMIC",
                                                                  "dynamicThreshold": 0.7}}},
            {"codeExecution": {}},
            {"urlContext": {}, "futureField": future("tool")}
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
            "retrievalConfig": {"latLng": {"latitude": 48.85, "longitude": 2.35}}
        },
        "safetySettings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "OFF"}
        ],
        "generationConfig": {
            "temperature": 0.7, "topP": 0.95, "topK": 40, "candidateCount": 1,
            "maxOutputTokens": 8192, "stopSequences": ["END"],
            "presencePenalty": 0.5, "frequencyPenalty": -0.25, "seed": 42,
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
            "responseModalities": ["TEXT"],
            "responseLogprobs": true, "logprobs": 3,
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
            "thinkingConfig": {"thinkingBudget": -1, "includeThoughts": true,
                               "futureField": future("thinkingConfig")},
            "futureField": future("generationConfig")
        },
        "cachedContent": "cachedContents/abc",
        "futureField": future("request")
    });
    let req: GenerateContentRequest = round_trip(body);
    assert_eq!(req.contents.len(), 3);
    assert_eq!(req.tools.len(), 5);
    assert!(req.tools[1].google_search.is_some());
    assert!(req.tools[3].code_execution.is_some());
    assert_eq!(req.tools[0].function_declarations[1].name, "lookup");
    let thinking = req.thinking_config().unwrap();
    assert_eq!(thinking.thinking_budget, Some(-1));
    assert_eq!(thinking.include_thoughts, Some(true));
    let call_part = &req.contents[1].parts[0];
    assert_eq!(
        call_part.function_call.as_ref().unwrap().name,
        "get_weather"
    );
    assert!(call_part.thought_signature.is_some());
    assert!(call_part.extra.contains_key("futureField"));
    assert!(req.extra.contains_key("futureField"));
    let fcc = req
        .tool_config
        .as_ref()
        .unwrap()
        .function_calling_config
        .as_ref()
        .unwrap();
    assert_eq!(fcc.mode.as_deref(), Some("ANY"));
}

#[test]
fn gemini_3_thinking_level_round_trips() {
    let req: GenerateContentRequest = round_trip(json!({
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"thinkingConfig": {"thinkingLevel": "low"}}
    }));
    assert_eq!(
        req.thinking_config().unwrap().thinking_level.as_deref(),
        Some("low")
    );
}

#[test]
fn stream_chunk_with_thoughts_and_signed_call_round_trips() {
    let chunk = json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "**Planning the lookup**\nI should call the tool.", "thought": true},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "EpYCCpMCAcu98PCH5t0Y7W3tJ6n1k0F2Z2g="},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]},
            "index": 0,
            "futureField": future("candidate")
        }],
        "usageMetadata": {
            "promptTokenCount": 120, "candidatesTokenCount": 31, "thoughtsTokenCount": 87,
            "totalTokenCount": 238,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
            "futureField": future("usage")
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mC1jaKW0H4mzz7IPlq6nkAM"
    });
    let chunk: GenerateContentResponse = round_trip(chunk);
    assert!(chunk.has_function_call());
    assert_eq!(chunk.finish_reason(), None);
    assert_eq!(chunk.visible_text(), "");
    assert!(chunk.thought_text().starts_with("**Planning"));
    let calls: Vec<_> = chunk.function_calls().map(|c| c.name.as_str()).collect();
    assert_eq!(calls, ["get_weather", "get_time"]);
    // The signature is a sibling of functionCall on the part.
    let part = &chunk.parts()[1];
    assert!(part.function_call.is_some());
    assert_eq!(
        part.thought_signature.as_deref(),
        Some("EpYCCpMCAcu98PCH5t0Y7W3tJ6n1k0F2Z2g=")
    );
    assert!(chunk.parts()[2].thought_signature.is_none());
}

#[test]
fn final_empty_stop_chunk_round_trips() {
    let last: GenerateContentResponse = round_trip(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                          "totalTokenCount": 15},
        "modelVersion": "gemini-3-pro-preview"
    }));
    let reason = last.finish_reason().unwrap();
    assert!(reason.is_normal_stop());
    assert_eq!(last.visible_text(), "");
    assert!(!last.has_function_call());
}

#[test]
fn full_answer_with_grounding_and_logprobs_round_trips() {
    let body = json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": "Paris is 21°C."}]},
            "finishReason": "STOP",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE",
                 "blocked": false}
            ],
            "citationMetadata": {"citationSources": [{"startIndex": 0, "endIndex": 10,
                                                      "uri": "https://example.com"}]},
            "groundingMetadata": {
                "webSearchQueries": ["weather paris"],
                "searchEntryPoint": {"renderedContent": "<div></div>"},
                "groundingChunks": [
                    {"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/x",
                             "title": "meteo.fr", "futureField": future("web")}}
                ],
                "groundingSupports": [{"segment": {"endIndex": 14, "text": "Paris is 21°C."},
                                       "groundingChunkIndices": [0],
                                       "confidenceScores": [0.93]}]
            },
            "urlContextMetadata": {"urlMetadata": []},
            "avgLogprobs": -0.1834,
            "logprobsResult": {"topCandidates": [], "chosenCandidates": []},
            "tokenCount": 7
        }],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 7,
                          "toolUsePromptTokenCount": 120, "cachedContentTokenCount": 4,
                          "totalTokenCount": 136,
                          "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 4}],
                          "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
                          "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]}
    });
    let res: GenerateContentResponse = round_trip(body);
    let grounding = res
        .first_candidate()
        .unwrap()
        .grounding_metadata
        .as_ref()
        .unwrap();
    assert_eq!(
        grounding.grounding_chunks[0]
            .web
            .as_ref()
            .unwrap()
            .title
            .as_deref(),
        Some("meteo.fr")
    );
    let usage = res.usage_metadata.as_ref().unwrap();
    assert_eq!(usage.computed_total(), 136);
    assert_eq!(usage.total_token_count, Some(136));
}

#[test]
fn prompt_blocked_response_round_trips() {
    let res: GenerateContentResponse = round_trip(json!({
        "promptFeedback": {
            "blockReason": "PROHIBITED_CONTENT",
            "safetyRatings": [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT",
                               "probability": "HIGH", "blocked": true}],
            "futureField": future("promptFeedback")
        },
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "abc"
    }));
    assert!(res.candidates.is_empty());
    assert!(res.first_candidate().is_none());
    assert_eq!(res.block_reason(), Some(&BlockReason::ProhibitedContent));
    assert_eq!(res.finish_reason(), None);
    assert_eq!(res.visible_text(), "");
}

#[test]
fn safety_finished_candidate_without_content_round_trips() {
    let res: GenerateContentResponse = round_trip(json!({
        "candidates": [{"finishReason": "SAFETY", "index": 0,
                        "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                           "probability": "MEDIUM", "blocked": true}]}]
    }));
    let reason = res.finish_reason().unwrap();
    assert!(reason.is_blocked());
    assert!(!reason.is_normal_stop());
    assert!(res.parts().is_empty());
}

#[test]
fn unknown_enum_values_round_trip_unchanged() {
    let res: GenerateContentResponse = round_trip(json!({
        "candidates": [{"finishReason": "SOME_FUTURE_REASON"}],
        "promptFeedback": {"blockReason": "MODEL_ARMOR"}
    }));
    assert_eq!(
        res.finish_reason(),
        Some(&FinishReason::Unknown("SOME_FUTURE_REASON".into()))
    );
    assert!(res.finish_reason().unwrap().is_unknown());
    assert_eq!(res.block_reason().unwrap().as_str(), "MODEL_ARMOR");
}

#[test]
fn every_known_finish_reason_round_trips() {
    for wire in [
        "FINISH_REASON_UNSPECIFIED",
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "MALFORMED_FUNCTION_CALL",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_OTHER",
        "IMAGE_RECITATION",
        "NO_IMAGE",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MALFORMED_RESPONSE",
        "MISSING_THOUGHT_SIGNATURE",
    ] {
        let reason = FinishReason::from(wire);
        assert!(!reason.is_unknown(), "{wire}");
        assert_eq!(reason.as_str(), wire);
        assert_eq!(reason.to_string(), wire);
        assert_eq!(serde_json::to_value(&reason).unwrap(), json!(wire));
    }
    for wire in [
        "BLOCK_REASON_UNSPECIFIED",
        "SAFETY",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "IMAGE_SAFETY",
    ] {
        let reason: BlockReason = wire.parse().unwrap();
        assert!(!reason.is_unknown(), "{wire}");
        assert_eq!(reason.as_str(), wire);
    }
}

#[test]
fn finish_reason_predicates() {
    use FinishReason as F;
    let blocked = [
        F::Safety,
        F::Recitation,
        F::Language,
        F::Blocklist,
        F::ProhibitedContent,
        F::Spii,
        F::ImageSafety,
        F::ImageProhibitedContent,
        F::ImageRecitation,
        F::ImageOther,
    ];
    for r in &blocked {
        assert!(r.is_blocked(), "{r}");
        assert!(!r.is_normal_stop() && !r.is_malformed(), "{r}");
    }
    for r in [
        F::Stop,
        F::MaxTokens,
        F::Other,
        F::NoImage,
        F::MalformedFunctionCall,
        F::MissingThoughtSignature,
        F::Unknown("X".into()),
    ] {
        assert!(!r.is_blocked(), "{r}");
    }
    assert!(F::MaxTokens.is_max_tokens());
    assert!(F::Stop.is_normal_stop() && !F::Other.is_normal_stop());
    for r in [
        F::MalformedFunctionCall,
        F::UnexpectedToolCall,
        F::TooManyToolCalls,
        F::MalformedResponse,
    ] {
        assert!(r.is_malformed(), "{r}");
    }
    assert!(!F::MissingThoughtSignature.is_malformed());
}

#[test]
fn quota_429_body_round_trips_and_reads() {
    let body = json!({
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 10\nPlease retry in 12.5s.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                     "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                     "quotaValue": "10",
                     "futureField": future("violation")},
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                     "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                     "quotaValue": "200"}
                 ]},
                {"@type": "type.googleapis.com/google.rpc.Help",
                 "links": [{"description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}
            ],
            "futureField": future("error")
        }
    });
    let err: GeminiError = round_trip(body.clone());
    assert_eq!(err.code(), 429);
    assert!(err.is_resource_exhausted());
    assert!(!err.is_api_key_invalid());
    assert_eq!(err.retry_delay(), Some(Duration::from_secs(12)));
    assert_eq!(
        err.quota_ids(),
        [
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
        ]
    );
    let violations: Vec<_> = err.quota_violations().collect();
    assert!(violations[0].is_per_minute() && !violations[0].is_per_day());
    assert!(violations[1].is_per_day());
    assert_eq!(violations[0].model(), Some("gemini-2.0-flash"));
    assert_eq!(violations[1].limit(), Some(200));
    assert!(matches!(err.details()[1], ErrorDetail::Other(_)));
    assert_eq!(
        err.details()[1].type_url(),
        Some("type.googleapis.com/google.rpc.Help")
    );
    // parse() from bytes agrees with serde.
    let parsed = GeminiError::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(parsed, err);
}

#[test]
fn api_key_invalid_400_round_trips_and_reads() {
    let body = json!({
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com",
                 "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                 "locale": "en-US",
                 "message": "API key not valid. Please pass a valid API key."}
            ]
        }
    });
    let err: GeminiError = round_trip(body);
    assert_eq!(err.reason(), Some("API_KEY_INVALID"));
    assert!(err.is_api_key_invalid());
    assert_eq!(err.retry_delay(), None);
    assert!(err.quota_ids().is_empty());
    assert_eq!(
        err.error_info().unwrap().metadata["service"],
        "generativelanguage.googleapis.com"
    );
}

#[test]
fn bad_request_that_is_not_the_keys_fault() {
    let err: GeminiError = round_trip(json!({
        "error": {"code": 400,
                  "message": "Function call is missing a thought_signature in functionCall parts.",
                  "status": "INVALID_ARGUMENT"}
    }));
    assert!(!err.is_api_key_invalid());
    assert_eq!(err.reason(), None);
    assert_eq!(
        err.to_string(),
        "400 INVALID_ARGUMENT: Function call is missing a thought_signature in functionCall parts."
    );
}

#[test]
fn models_list_round_trips() {
    let list: ListModelsResponse = round_trip(json!({
        "models": [{
            "name": "models/gemini-2.5-flash",
            "version": "001",
            "displayName": "Gemini 2.5 Flash",
            "description": "Stable version of Gemini 2.5 Flash",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens",
                                           "createCachedContent", "batchGenerateContent"],
            "temperature": 1.0, "topP": 0.95, "topK": 64, "maxTemperature": 2.0,
            "thinking": true,
            "futureField": future("model")
        }],
        "nextPageToken": "Ch5tb2RlbHMvZ2VtaW5pLTIuNS1mbGFzaA=="
    }));
    let m = &list.models[0];
    assert_eq!(m.id(), "gemini-2.5-flash");
    assert!(m.supports("generateContent") && !m.supports("embedContent"));
}

#[test]
fn embeddings_and_count_tokens_round_trip() {
    let req: EmbedContentRequest = round_trip(json!({
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "hello"}]},
        "taskType": "RETRIEVAL_DOCUMENT", "title": "Greeting", "outputDimensionality": 768
    }));
    assert_eq!(req.output_dimensionality, Some(768));
    let res: EmbedContentResponse = round_trip(json!({
        "embedding": {"values": [0.013168523, -0.008711934, -0.046782676, 0.000699695]}
    }));
    assert_eq!(res.embedding.unwrap().values[0], 0.013168523);
    let batch: BatchEmbedContentsRequest = round_trip(json!({
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]},
             "futureField": future("embed")}
        ]
    }));
    assert_eq!(batch.requests.len(), 2);
    let out: BatchEmbedContentsResponse = round_trip(json!({
        "embeddings": [{"values": [0.1, 0.2]}, {"values": [-0.3, 0.4]}]
    }));
    assert_eq!(out.embeddings.len(), 2);
    let count: CountTokensRequest = round_trip(json!({
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "systemInstruction": {"parts": [{"text": "be brief"}]}
        }
    }));
    assert!(count.generate_content_request.is_some());
    let counted: CountTokensResponse = round_trip(json!({
        "totalTokens": 31, "cachedContentTokenCount": 0,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]
    }));
    assert_eq!(counted.total_tokens, Some(31));
}

#[test]
fn constructors_write_the_expected_json() {
    let req = GenerateContentRequest {
        system_instruction: Some(Content {
            parts: vec![Part::text("be brief")],
            ..Content::default()
        }),
        ..GenerateContentRequest::new(vec![
            Content::user("hi"),
            Content::model("hello"),
            Content::new("model", vec![Part::function_call("f", json!({"x": 1}))]),
            Content::new(
                "user",
                vec![Part::function_response("f", json!({"ok": true}))],
            ),
        ])
    };
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ok": true}}}]}
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}]}
        })
    );
    // Defaults add nothing.
    assert_eq!(
        serde_json::to_value(GenerateContentResponse::default()).unwrap(),
        json!({})
    );
    assert_eq!(serde_json::to_value(Part::default()).unwrap(), json!({}));
}

#[test]
fn empty_answers_read_as_empty() {
    for body in [
        json!({"candidates": [{"content": {"role": "model"}, "finishReason": "STOP"}]}),
        json!({"candidates": [{"content": {}, "finishReason": "STOP"}]}),
        json!({"candidates": [{"finishReason": "OTHER"}]}),
        json!({}),
    ] {
        let res: GenerateContentResponse = round_trip(body);
        assert_eq!(res.visible_text(), "");
        assert!(!res.has_function_call());
    }
}

#[test]
fn thought_text_and_visible_text_are_kept_apart() {
    let content = Content::new(
        "model",
        vec![
            Part {
                thought: Some(true),
                ..Part::text("think 1 ")
            },
            Part::text("answer 1 "),
            Part {
                thought: Some(false),
                ..Part::text("answer 2")
            },
            Part {
                thought: Some(true),
                ..Part::text("think 2")
            },
        ],
    );
    assert_eq!(content.visible_text(), "answer 1 answer 2");
    assert_eq!(content.thought_text(), "think 1 think 2");
}

#[test]
fn usage_accumulates_across_attempts() {
    let first: UsageMetadata = serde_json::from_value(json!({
        "promptTokenCount": 100, "candidatesTokenCount": 40, "thoughtsTokenCount": 200,
        "cachedContentTokenCount": 10, "totalTokenCount": 340,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 90},
                                {"modality": "IMAGE", "tokenCount": 10}]
    }))
    .unwrap();
    let second: UsageMetadata = serde_json::from_value(json!({
        "promptTokenCount": 150, "candidatesTokenCount": 60, "toolUsePromptTokenCount": 5,
        "totalTokenCount": 215,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 150}]
    }))
    .unwrap();
    let mut total = first.clone();
    total.accumulate(&second);
    assert_eq!(total.prompt_token_count, Some(250));
    assert_eq!(total.candidates_token_count, Some(100));
    assert_eq!(total.thoughts_token_count, Some(200));
    assert_eq!(total.cached_content_token_count, Some(10));
    assert_eq!(total.tool_use_prompt_token_count, Some(5));
    assert_eq!(total.total_token_count, Some(555));
    assert_eq!(total.total_token_count, Some(total.computed_total()));
    assert_eq!(total.completion_tokens(), 300);
    assert_eq!(
        serde_json::to_value(&total.prompt_tokens_details).unwrap(),
        json!([{"modality": "TEXT", "tokenCount": 240},
               {"modality": "IMAGE", "tokenCount": 10}])
    );

    // Accumulating into an empty usage gives the other usage, total recomputed.
    let mut empty = UsageMetadata::default();
    empty.accumulate(&first);
    assert_eq!(empty.total_token_count, Some(340));
    // Accumulating nothing into nothing stays empty.
    let mut none = UsageMetadata::default();
    none.accumulate(&UsageMetadata::default());
    assert_eq!(none, UsageMetadata::default());
}

#[test]
fn usage_accumulate_repairs_an_inconsistent_total() {
    let mut a: UsageMetadata = serde_json::from_value(json!({
        "promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7,
        "totalTokenCount": 15
    }))
    .unwrap();
    a.accumulate(&UsageMetadata::default());
    assert_eq!(a.total_token_count, Some(22));
}
