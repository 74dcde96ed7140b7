//! What the fake answers a generate request: the passage or its rest, thoughts, tool calls,
//! grounding, code runs and usage.

use serde_json::{Value, json};

use super::config::Fault;
use crate::testing::passage;

pub(super) fn texts_of(content: &Value) -> Vec<String> {
    content["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["thought"].as_bool() != Some(true))
                .filter_map(|p| p["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn all_text(req: &Value) -> String {
    let mut out = String::new();
    for c in req["contents"].as_array().into_iter().flatten() {
        for t in texts_of(c) {
            out.push_str(&t);
            out.push(' ');
        }
    }
    for t in texts_of(&req["systemInstruction"]) {
        out.push_str(&t);
    }
    out
}

/// What the fake will answer for a request.
pub(super) struct Plan {
    pub(super) prompt: String,
    pub(super) text: String,
    pub(super) thoughts: Vec<String>,
    pub(super) function_call: Option<(String, Value)>,
    pub(super) prompt_tokens: u64,
}

pub(super) fn plan(req: &Value, fault: Option<&Fault>) -> Plan {
    let contents: Vec<&Value> = req["contents"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let prompt = contents
        .iter()
        .find(|c| c["role"].as_str().unwrap_or("user") == "user")
        .map(|c| texts_of(c).join(""))
        .unwrap_or_default();
    let full = passage::passage(&prompt);
    let mut text = full.clone();

    // A continuation: [.., model(T), user(continue)] with T a prefix of the passage.
    if contents.len() >= 3 {
        let last = contents[contents.len() - 1];
        let prev = contents[contents.len() - 2];
        if last["role"].as_str() == Some("user") && prev["role"].as_str() == Some("model") {
            let answered = texts_of(prev).join("");
            let seam = if full.starts_with(&answered) {
                Some(answered.len())
            } else if full.starts_with(answered.trim_end()) {
                Some(answered.trim_end().len())
            } else {
                None
            };
            if let Some(at) = seam {
                let mut rest = full[at..].to_owned();
                if let Some(Fault::RepeatTail(k)) = fault {
                    // Models repeat whole words: the last `k` characters, widened back to the
                    // start of their first word.
                    let mut start = answered
                        .char_indices()
                        .rev()
                        .nth(k.saturating_sub(1))
                        .map_or(0, |(i, _)| i);
                    while start > 0 && !answered[..start].ends_with(char::is_whitespace) {
                        start = answered[..start]
                            .char_indices()
                            .next_back()
                            .map_or(0, |(i, _)| i);
                    }
                    rest = format!("{}{rest}", &answered[start..]);
                }
                text = rest;
            }
        }
    }

    // After a tool result, say what the tool returned.
    let last_parts = contents.last().and_then(|c| c["parts"].as_array());
    if let Some(resp) = last_parts.and_then(|ps| ps.iter().find_map(|p| p.get("functionResponse")))
    {
        text = format!(
            "The {} tool returned {}.",
            resp["name"].as_str().unwrap_or("function"),
            serde_json::to_string(&resp["response"]).unwrap_or_default()
        );
    }

    let include_thoughts =
        req["generationConfig"]["thinkingConfig"]["includeThoughts"].as_bool() == Some(true);
    let thoughts = if include_thoughts || matches!(fault, Some(Fault::Thoughts)) {
        passage::thoughts(&prompt)
    } else {
        Vec::new()
    };

    let forced = req["toolConfig"]["functionCallingConfig"]["mode"].as_str() == Some("ANY");
    let first_decl = req["tools"]
        .as_array()
        .and_then(|tools| {
            tools
                .iter()
                .find_map(|t| t["functionDeclarations"].as_array().and_then(|d| d.first()))
        })
        .and_then(|d| d["name"].as_str().map(str::to_owned));
    let answered_tool =
        last_parts.is_some_and(|ps| ps.iter().any(|p| p.get("functionResponse").is_some()));
    let function_call = match fault {
        Some(Fault::FunctionCall { name, args }) => Some((name.clone(), args.clone())),
        _ if forced && !answered_tool => first_decl.map(|n| (n, json!({}))),
        _ => None,
    };

    Plan {
        prompt_tokens: passage::tokens(&all_text(req)).max(1),
        prompt,
        text,
        thoughts,
        function_call,
    }
}

/// Whether the request enables Google Search grounding.
pub(super) fn searches(req: &Value) -> bool {
    req["tools"].as_array().is_some_and(|tools| {
        tools.iter().any(|t| {
            ["googleSearch", "google_search", "googleSearchRetrieval"]
                .iter()
                .any(|k| t.get(*k).is_some())
        })
    })
}

/// Whether the request enables the code-execution tool.
pub(super) fn executes_code(req: &Value) -> bool {
    req["tools"].as_array().is_some_and(|tools| {
        tools
            .iter()
            .any(|t| t.get("codeExecution").is_some() || t.get("code_execution").is_some())
    })
}

/// The parts of a code run, as Google sends them before the answer text: the generated code
/// and its result (it counts the words of the prompt).
pub(super) fn code_execution_parts(prompt: &str) -> Vec<Value> {
    let escaped = prompt.replace('\\', "\\\\").replace('"', "\\\"");
    vec![
        json!({ "executableCode": {
            "language": "PYTHON",
            "code": format!("words = \"{escaped}\".split()\nprint(len(words))\n"),
        }}),
        json!({ "codeExecutionResult": {
            "outcome": "OUTCOME_OK",
            "output": format!("{}\n", prompt.split_whitespace().count()),
        }}),
    ]
}

/// The `groundingMetadata` of a searched answer: the sources of
/// [`FakeGemini::grounding_sources`](crate::testing::FakeGemini::grounding_sources), the
/// query, a support for the whole text and the search entry point, shaped as Google sends them.
pub(super) fn grounding_metadata(prompt: &str, text: &str) -> Value {
    let chunks: Vec<Value> = passage::grounding_sources(prompt)
        .into_iter()
        .map(|(title, uri)| json!({ "web": { "uri": uri, "title": title } }))
        .collect();
    let indices: Vec<usize> = (0..chunks.len()).collect();
    json!({
        "searchEntryPoint": {
            "renderedContent": format!("<div class=\"container\"><a class=\"chip\" href=\"https://www.google.com/search?q=fake\">{}</a></div>", prompt.replace('<', "&lt;")),
        },
        "groundingChunks": chunks,
        "groundingSupports": [{
            "segment": { "startIndex": 0, "endIndex": text.len(), "text": text },
            "groundingChunkIndices": indices,
            "confidenceScores": vec![0.9; indices.len()],
        }],
        "webSearchQueries": [prompt],
    })
}

pub(super) fn usage(plan: &Plan, text: &str) -> Value {
    let candidates = passage::tokens(text);
    let thoughts: u64 = plan.thoughts.iter().map(|t| passage::tokens(t)).sum();
    let mut u = json!({
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": plan.prompt_tokens + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}],
    });
    if thoughts > 0 {
        u["thoughtsTokenCount"] = json!(thoughts);
    }
    u
}

pub(super) fn response_id(prompt: &str) -> String {
    format!(
        "fake-{:016x}",
        passage::tokens(prompt) ^ 0x5eed_u64.wrapping_mul(prompt.len() as u64 + 1)
    )
}

pub(super) fn chunk_json(
    model: &str,
    id: &str,
    parts: Vec<Value>,
    finish: Option<&str>,
    usage: Option<Value>,
) -> Value {
    let mut candidate = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    let mut out = json!({
        "candidates": [candidate],
        "modelVersion": super::models::model_version(model),
        "responseId": id,
    });
    if let Some(u) = usage {
        out["usageMetadata"] = u;
    }
    out
}
