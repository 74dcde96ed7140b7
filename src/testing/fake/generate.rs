//! Generation: the planned answer as a list of steps, with the next scripted fault applied.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use super::config::Fault;
use super::emit::emit;
use super::plan::{
    chunk_json, code_execution_parts, executes_code, grounding_metadata, plan, response_id,
    searches, usage,
};
use super::response::{error, raw};
use super::routes::ResetStream;
use super::server::{State, lock};
use crate::body::Body;
use crate::testing::{FakeGemini, passage};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Unary,
    Sse,
    JsonArray,
}

/// One unit of output: a JSON chunk, a pause, or the end of the connection.
pub(super) enum Step {
    Chunk(Value),
    Sleep(Duration),
    Break,
    /// Reset this stream only (a body error: RST_STREAM on HTTP/2).
    Reset,
}

pub(super) async fn generate(
    state: &State,
    model: &str,
    req: &Value,
    mode: Mode,
    kill: Arc<tokio::sync::Notify>,
) -> Response<Body> {
    let fault = lock(&state.faults).pop_front();
    match &fault {
        Some(Fault::StallAfter { pause, .. }) if mode == Mode::Unary => {
            // Before the headers: the caller waits for a response that does not come.
            tokio::select! {
                () = tokio::time::sleep(*pause.min(&Duration::from_secs(86_400))) => {}
                () = kill.notified() => {}
            }
        }
        Some(Fault::HttpError { status, message }) => return error(*status, message),
        Some(Fault::ResetStream) => {
            let mut res = Response::new(Body::empty());
            res.extensions_mut().insert(ResetStream);
            return res;
        }
        Some(Fault::Garbage) => {
            return raw(
                200,
                "application/json",
                Bytes::from_static(b"<html>this is not json</html>"),
            );
        }
        Some(Fault::TruncatedJson) => {
            return raw(
                200,
                "application/json",
                Bytes::from_static(
                    b"{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel",
                ),
            );
        }
        _ => {}
    }
    let plan = plan(req, fault.as_ref());
    // `candidateCount`: every candidate gets the same deterministic answer, with its index.
    let candidates = req["generationConfig"]["candidateCount"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, 8) as usize;
    let id = response_id(&plan.prompt);

    if let Some(Fault::BlockPrompt(reason)) = &fault {
        let body = json!({
            "promptFeedback": { "blockReason": reason, "safetyRatings": [] },
            "usageMetadata": { "promptTokenCount": plan.prompt_tokens, "totalTokenCount": plan.prompt_tokens },
            "modelVersion": super::models::model_version(model), "responseId": id,
        });
        return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
    }
    if let Some(Fault::Empty) = &fault {
        let mut body = chunk_json(model, &id, vec![], Some("STOP"), Some(usage(&plan, "")));
        body["candidates"][0]["content"] = json!({ "role": "model" });
        return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
    }

    let image_bytes = match &fault {
        Some(Fault::Image(n)) => Some(*n),
        _ if model.contains("image") => Some(*lock(&state.image_bytes)),
        _ => None,
    };
    if let Some(n) = image_bytes {
        let steps = image_steps(model, &id, req, &plan, n, mode, fault.as_ref());
        return emit(state, &kill, candidates, mode, steps).await;
    }

    let mut steps = Vec::new();
    let thought_parts: Vec<Value> = plan
        .thoughts
        .iter()
        .map(|t| json!({ "text": t, "thought": true }))
        .collect();

    if let Some((name, args)) = &plan.function_call {
        let call = json!({
            "functionCall": { "name": name, "args": args },
            "thoughtSignature": FakeGemini::THOUGHT_SIGNATURE,
        });
        if mode == Mode::Unary {
            let mut parts = thought_parts;
            parts.push(call);
            steps.push(Step::Chunk(chunk_json(
                model,
                &id,
                parts,
                Some("STOP"),
                Some(usage(&plan, "")),
            )));
        } else {
            for t in thought_parts {
                steps.push(Step::Chunk(chunk_json(model, &id, vec![t], None, None)));
            }
            steps.push(Step::Chunk(chunk_json(model, &id, vec![call], None, None)));
            steps.push(Step::Chunk(chunk_json(
                model,
                &id,
                vec![json!({"text": ""})],
                Some("STOP"),
                Some(usage(&plan, "")),
            )));
        }
        return emit(state, &kill, candidates, mode, steps).await;
    }

    if let Some(Fault::CodeExecution { code, output }) = &fault {
        let parts = vec![
            json!({ "text": "Let me run some code.\n" }),
            json!({ "executableCode": { "language": "PYTHON", "code": code } }),
            json!({ "codeExecutionResult": { "outcome": "OUTCOME_OK", "output": output } }),
            json!({ "text": plan.text }),
        ];
        let usage = usage(&plan, &plan.text);
        if mode == Mode::Unary {
            let body = chunk_json(model, &id, parts, Some("STOP"), Some(usage));
            return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
        }
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let last = i + 1 == n;
            steps.push(Step::Chunk(chunk_json(
                model,
                &id,
                vec![part],
                last.then_some("STOP"),
                last.then(|| usage.clone()),
            )));
        }
        return emit(state, &kill, candidates, mode, steps).await;
    }

    let grounding = searches(req).then(|| grounding_metadata(&plan.prompt, &plan.text));
    // With the code-execution tool, a fresh answer (not a continuation) first runs some code.
    let code_parts = if executes_code(req) && plan.text == passage::passage(&plan.prompt) {
        code_execution_parts(&plan.prompt)
    } else {
        Vec::new()
    };
    let pieces = passage::chunks(&plan.text, state.chunk_words);
    if mode == Mode::Unary {
        // The whole answer in one response; a finish fault cuts it short.
        let (text, finish) = match &fault {
            Some(Fault::FinishAfter { chunks, reason }) => (
                pieces[..(*chunks).min(pieces.len())].concat(),
                reason.as_str(),
            ),
            _ => (plan.text.clone(), "STOP"),
        };
        let mut parts = thought_parts;
        parts.extend(code_parts);
        parts.push(json!({ "text": text }));
        let mut body = chunk_json(model, &id, parts, Some(finish), Some(usage(&plan, &text)));
        if let Some(g) = &grounding {
            body["candidates"][0]["groundingMetadata"] = g.clone();
        }
        let cut = match &fault {
            Some(Fault::DropAfter(_)) => Some(Step::Break),
            Some(Fault::ResetAfter(_)) => Some(Step::Reset),
            _ => None,
        };
        if let Some(cut) = cut {
            return emit(
                state,
                &kill,
                candidates,
                Mode::Unary,
                vec![Step::Chunk(body), cut],
            )
            .await;
        }
        return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
    }

    for t in thought_parts {
        steps.push(Step::Chunk(chunk_json(model, &id, vec![t], None, None)));
    }
    if !code_parts.is_empty() {
        steps.push(Step::Chunk(chunk_json(model, &id, code_parts, None, None)));
    }
    let n = pieces.len();
    let mut sent = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        match &fault {
            Some(Fault::DropAfter(k)) if i == *k => {
                steps.push(Step::Break);
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::ResetAfter(k)) if i == *k => {
                steps.push(Step::Reset);
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::EndWithoutFinish(k)) if i == *k => {
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::ErrorEventAfter(k)) if i == *k => {
                steps.push(Step::Chunk(json!({"error": {"code": 500, "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", "status": "INTERNAL"}})));
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::StallAfter { chunks, pause }) if i == *chunks => {
                steps.push(Step::Sleep(*pause))
            }
            _ => {}
        }
        sent.push_str(piece);
        let last = i + 1 == n;
        let finish_here = match &fault {
            Some(Fault::FinishAfter { chunks, reason }) if i + 1 == (*chunks).max(1).min(n) => {
                Some(reason.as_str())
            }
            _ if last => Some("STOP"),
            _ => None,
        };
        let usage = finish_here.map(|_| usage(&plan, &sent));
        let mut chunk = chunk_json(
            model,
            &id,
            vec![json!({ "text": piece })],
            finish_here,
            usage,
        );
        if let (Some(g), Some(_)) = (&grounding, finish_here) {
            // Like Google, the sources come with the last chunk.
            chunk["candidates"][0]["groundingMetadata"] = g.clone();
        }
        steps.push(Step::Chunk(chunk));
        if finish_here.is_some() {
            break;
        }
    }
    // A fault at or past the end of the answer.
    match &fault {
        Some(Fault::DropAfter(k)) if *k >= n => steps.push(Step::Break),
        Some(Fault::ResetAfter(k)) if *k >= n => steps.push(Step::Reset),
        Some(Fault::StallAfter { chunks, pause }) if *chunks >= n => {
            steps.push(Step::Sleep(*pause))
        }
        _ => {}
    }
    emit(state, &kill, candidates, mode, steps).await
}

/// What Google refuses in a generation config or tool list for a model, as it answers: a
/// thinking budget of 0 on a model that only works in thinking mode (2.5 Pro), a budget and a
/// level together, and (before Gemini 3) Google Search beside function declarations.
pub(super) fn config_check(model: &str, req: &Value) -> Option<Response<Body>> {
    let thinking = &req["generationConfig"]["thinkingConfig"];
    if model.starts_with("gemini-2.5-pro") && thinking["thinkingBudget"].as_i64() == Some(0) {
        return Some(error(
            400,
            "Budget 0 is invalid. This model only works in thinking mode.",
        ));
    }
    if thinking.get("thinkingBudget").is_some() && thinking.get("thinkingLevel").is_some() {
        return Some(error(
            400,
            "You can only set either thinking budget or thinking level.",
        ));
    }
    let tools = req["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let functions = tools.iter().any(|t| {
        t.get("functionDeclarations")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty())
    });
    let search = tools.iter().any(|t| t.get("googleSearch").is_some());
    if functions && search && !model.starts_with("gemini-3") {
        return Some(error(
            400,
            "Tool use with function calling is unsupported for this model together with Google Search.",
        ));
    }
    None
}

/// Gemini 3's check of the history's thought signatures: in every model turn with function
/// calls, the first call must carry a signature, and every signature must be one the model
/// issued (or Google's documented placeholder for history it did not produce). Google answers
/// 400 `INVALID_ARGUMENT` otherwise ("Function call is missing a thought_signature").
pub(super) fn signature_check(model: &str, req: &Value) -> Option<Response<Body>> {
    if !model.starts_with("gemini-3") {
        return None;
    }
    for (i, content) in req["contents"].as_array().into_iter().flatten().enumerate() {
        if content["role"].as_str() != Some("model") {
            continue;
        }
        let parts = content["parts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for p in parts {
            if let Some(sig) = p["thoughtSignature"].as_str()
                && sig != FakeGemini::THOUGHT_SIGNATURE
                && sig != "skip_thought_signature_validator"
            {
                return Some(error(400, "Corrupted thought signature."));
            }
        }
        if let Some((at, call)) = parts
            .iter()
            .enumerate()
            .find(|(_, p)| p.get("functionCall").is_some())
            && call.get("thoughtSignature").is_none()
        {
            let name = call["functionCall"]["name"].as_str().unwrap_or_default();
            return Some(error(
                400,
                &format!(
                    "Function call is missing a thought_signature in functionCall parts. This is \
                     required for tools to work correctly, and missing thought_signature may lead \
                     to degraded model performance. Additional data, function call \
                     `default_api:{name}` , position {}. Please refer to \
                     https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                    i + at + 1
                ),
            ));
        }
    }
    None
}

/// Tokens Gemini counts for one generated image.
const IMAGE_TOKENS: u64 = 1290;

/// An image model's answer: a caption (unless `responseModalities` leaves text out) and one
/// `inlineData` image of `n` bytes; streamed, the image is one event of its own and an empty
/// `STOP` event with usage follows. `DropAfter(k)` and `EndWithoutFinish(k)` cut after `k`
/// events.
fn image_steps(
    model: &str,
    id: &str,
    req: &Value,
    plan: &super::plan::Plan,
    n: usize,
    mode: Mode,
    fault: Option<&Fault>,
) -> Vec<Step> {
    let modalities = req["generationConfig"]["responseModalities"].as_array();
    let wants_text = modalities.is_none_or(|m| {
        m.iter()
            .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("TEXT")))
    });
    let caption = wants_text.then(|| format!("Here is an image of {}.", plan.prompt.trim()));
    let image = json!({ "inlineData": {
        "mimeType": "image/png",
        "data": crate::base64::encode(&FakeGemini::image(n)),
    }});
    let caption_tokens = caption.as_deref().map_or(0, passage::tokens);
    let mut usage = usage(plan, caption.as_deref().unwrap_or_default());
    usage["candidatesTokenCount"] = json!(caption_tokens + IMAGE_TOKENS);
    usage["totalTokenCount"] = json!(plan.prompt_tokens + caption_tokens + IMAGE_TOKENS);
    usage["candidatesTokensDetails"] = json!([
        { "modality": "TEXT", "tokenCount": caption_tokens },
        { "modality": "IMAGE", "tokenCount": IMAGE_TOKENS },
    ]);
    if mode == Mode::Unary {
        let mut parts: Vec<Value> = caption.map(|c| json!({ "text": c })).into_iter().collect();
        parts.push(image);
        return vec![Step::Chunk(chunk_json(
            model,
            id,
            parts,
            Some("STOP"),
            Some(usage),
        ))];
    }
    let mut events: Vec<Value> = caption
        .map(|c| chunk_json(model, id, vec![json!({ "text": c })], None, None))
        .into_iter()
        .collect();
    events.push(chunk_json(model, id, vec![image], None, None));
    events.push(chunk_json(
        model,
        id,
        vec![json!({ "text": "" })],
        Some("STOP"),
        Some(usage),
    ));
    let mut steps: Vec<Step> = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        match fault {
            Some(Fault::DropAfter(k)) if i == *k => {
                steps.push(Step::Break);
                return steps;
            }
            Some(Fault::ResetAfter(k)) if i == *k => {
                steps.push(Step::Reset);
                return steps;
            }
            Some(Fault::EndWithoutFinish(k)) if i == *k => return steps,
            _ => {}
        }
        steps.push(Step::Chunk(event));
    }
    steps
}
