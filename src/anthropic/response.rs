//! Gemini answers → Anthropic messages: content blocks, stop reasons, usage and errors.

use http::StatusCode;
use serde_json::{Value, json};

use crate::error::{ApiError, Dialect};
use crate::gemini::{
    FinishReason, FunctionCall, GeminiError, GenerateContentResponse, UsageMetadata,
};
use crate::translate::{THOUGHT_SIGNATURE_SEPARATOR, code_block, result_block, unique_hex};

// === MessageContext ===

/// What an answer needs to know about its request: the message id, the model name the client
/// asked for, and whether tool use ids carry thought signatures.
#[derive(Clone, Debug)]
pub struct MessageContext {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) signature_in_id: bool,
    pub(crate) parallel_tool_use: bool,
}

impl MessageContext {
    /// A context for `model` with a fresh `msg_…` id; tool use ids carry signatures.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            id: format!("msg_{}", unique_hex()),
            model: model.into(),
            signature_in_id: true,
            parallel_tool_use: true,
        }
    }

    /// With `false` (the request's `tool_choice.disable_parallel_tool_use`), only the first
    /// function call of an answer reaches the client (Gemini has no switch for it).
    pub fn parallel_tool_use(mut self, yes: bool) -> Self {
        self.parallel_tool_use = yes;
        self
    }

    /// Whether tool use ids carry the call's thought signature
    /// (`toolu_<id>__thought__<signature>`, default `true`).
    pub fn signature_in_id(mut self, yes: bool) -> Self {
        self.signature_in_id = yes;
        self
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A tool use id for a call with an optional thought signature.
    pub(crate) fn tool_use_id(&self, signature: Option<&str>) -> String {
        crate::translate::signed_call_id("toolu_", signature, self.signature_in_id)
    }
}

// === Pieces shared with streams ===

/// Anthropic's `stop_reason` for a Gemini finish reason, or the error a client should see
/// instead of a clean stop (a malformed call or response, a missing thought signature).
pub(crate) fn stop_reason(
    reason: Option<&FinishReason>,
    saw_call: bool,
) -> Result<&'static str, ApiError> {
    match reason {
        Some(r) if r.is_blocked() => Ok("refusal"),
        Some(r) if let Some(e) = crate::translate::unfinished(r) => Err(e),
        _ if saw_call => Ok("tool_use"),
        Some(FinishReason::MaxTokens) => Ok("max_tokens"),
        _ => Ok("end_turn"),
    }
}

/// Anthropic's `usage` for Gemini's `usageMetadata`: input excludes what was read from the
/// cache (reported as `cache_read_input_tokens`), output counts thoughts.
pub(crate) fn usage_json(u: Option<&UsageMetadata>) -> Value {
    let u = u.cloned().unwrap_or_default();
    let cached = u64::from(u.cached_content_token_count.unwrap_or(0));
    let prompt = u64::from(u.prompt_token_count.unwrap_or(0))
        + u64::from(u.tool_use_prompt_token_count.unwrap_or(0));
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "output_tokens": u64::from(u.completion_tokens()),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    })
}

/// The arguments of a call as a JSON object text.
pub(crate) fn input_json(call: &FunctionCall) -> String {
    match &call.args {
        Some(v @ Value::Object(_)) => serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
        _ => "{}".to_owned(),
    }
}

/// The refusal text for a prompt Gemini blocked.
pub(crate) fn blocked_message(reason: &str) -> String {
    format!("Gemini blocked the prompt ({reason}); nothing was generated")
}

// === Non-streamed message ===

/// Translates a whole `generateContent` answer into an Anthropic `message`.
///
/// Thought parts become one `thinking` block whose `signature` is the thought signature of
/// the part it preceded; function calls become `tool_use` blocks whose ids also carry their
/// signature. A blocked prompt is `stop_reason: "refusal"`; an answer without candidates, or
/// one ended by a malformed call, is an error (never an empty 200 or a clean stop).
pub fn to_message(resp: &GenerateContentResponse, cx: &MessageContext) -> Result<Value, ApiError> {
    let usage = usage_json(resp.usage_metadata.as_ref());
    let Some(cand) = resp.candidates.first() else {
        let Some(reason) = resp.block_reason() else {
            return Err(ApiError::bad_gateway(
                "Gemini answered without any candidate and without saying why",
            ));
        };
        return Ok(message(
            cx,
            vec![json!({"type": "text", "text": blocked_message(reason.as_str())})],
            "refusal",
            usage,
        ));
    };
    let mut blocks: Vec<Value> = Vec::new();
    let mut saw_call = false;
    for part in cand.parts() {
        let last_thinking_unsigned = blocks
            .last()
            .is_some_and(|b| b["type"] == "thinking" && b["signature"] == "");
        if let Some(call) = &part.function_call {
            if saw_call && !cx.parallel_tool_use {
                continue;
            }
            saw_call = true;
            let sig = part.thought_signature.as_deref();
            if let (Some(s), true) = (sig, last_thinking_unsigned)
                && let Some(b) = blocks.last_mut()
            {
                b["signature"] = json!(s);
            }
            let input: Value = serde_json::from_str(&input_json(call)).unwrap_or(json!({}));
            blocks.push(json!({
                "type": "tool_use",
                "id": cx.tool_use_id(sig),
                "name": call.name,
                "input": input,
            }));
            continue;
        }
        if part.is_thought() {
            let text = part.text.as_deref().unwrap_or_default();
            match blocks.last_mut() {
                Some(b) if b["type"] == "thinking" && b["signature"] == "" => {
                    let joined = format!("{}{text}", b["thinking"].as_str().unwrap_or_default());
                    b["thinking"] = json!(joined);
                }
                _ => blocks.push(json!({"type": "thinking", "thinking": text, "signature": ""})),
            }
            if let (Some(s), Some(b)) = (&part.thought_signature, blocks.last_mut()) {
                b["signature"] = json!(s);
            }
            continue;
        }
        if let Some(sig) = &part.thought_signature {
            if last_thinking_unsigned && let Some(b) = blocks.last_mut() {
                b["signature"] = json!(sig);
            } else if part.text.as_deref().unwrap_or_default().is_empty()
                && let Some(b) = blocks.iter_mut().rev().find(|b| b["type"] == "tool_use")
                && cx.signature_in_id
                && !b["id"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(THOUGHT_SIGNATURE_SEPARATOR)
            {
                // A signature that arrived on its own belongs to the call before it.
                let id = format!(
                    "{}{THOUGHT_SIGNATURE_SEPARATOR}{sig}",
                    b["id"].as_str().unwrap_or_default()
                );
                b["id"] = json!(id);
            } else if !part.text.as_deref().unwrap_or_default().is_empty() {
                // Text signed with no thoughts shown: a thinking block with only its signature
                // (Anthropic's "omitted" thinking), so the signature comes back on that text.
                blocks.push(json!({"type": "thinking", "thinking": "", "signature": sig}));
            }
        }
        let at_line_start = blocks
            .last()
            .and_then(|b| b["text"].as_str())
            .is_none_or(|t| t.is_empty() || t.ends_with('\n'));
        let text = if let Some(t) = &part.text {
            t.clone()
        } else if let Some(code) = &part.executable_code {
            code_block(code, at_line_start)
        } else if let Some(result) = &part.code_execution_result {
            result_block(result, at_line_start)
        } else {
            String::new()
        };
        if text.is_empty() {
            continue;
        }
        match blocks.last_mut() {
            Some(b) if b["type"] == "text" => {
                let joined = format!("{}{text}", b["text"].as_str().unwrap_or_default());
                b["text"] = json!(joined);
            }
            _ => blocks.push(json!({"type": "text", "text": text})),
        }
    }
    let stop = stop_reason(cand.finish_reason.as_ref(), saw_call)?;
    Ok(message(cx, blocks, stop, usage))
}

fn message(cx: &MessageContext, content: Vec<Value>, stop: &str, usage: Value) -> Value {
    json!({
        "id": cx.id,
        "type": "message",
        "role": "assistant",
        "model": cx.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage,
    })
}

// === Errors ===

/// Anthropic's error object for a status and message.
pub(crate) fn error_json(status: StatusCode, message: &str) -> Value {
    ApiError::new(status, message).to_json(Dialect::Anthropic)
}

/// The Anthropic error for an upstream (or deeper layer's) error body, and the retry delay
/// it names: Gemini's error object is translated with its message scrubbed of keys, an
/// Anthropic one is kept, anything else gets a message naming the status. A 404 for the
/// requested model itself says how to map the name (`hint`).
pub(crate) fn translate_error(
    status: StatusCode,
    body: &[u8],
    requested_model: &str,
    hint: &str,
) -> (Value, Option<u64>) {
    if let Some(err) = GeminiError::parse(body) {
        let message = crate::secret::scrub(err.message()).into_owned();
        let mut message = if message.is_empty() {
            format!("upstream error {}", status.as_u16())
        } else {
            message
        };
        // Claude Code compacts its history on Anthropic's wording of this refusal.
        if let Some((tokens, max)) = crate::translate::context_overflow(err.message()) {
            message = format!("prompt is too long: {tokens} tokens > {max} maximum ({message})");
        }
        if status == StatusCode::NOT_FOUND
            && !requested_model.is_empty()
            && err
                .message()
                .contains(&format!("models/{requested_model} "))
        {
            message = format!(
                "model {requested_model:?} is not a Gemini model this gateway can serve: {hint} \
                 (upstream: {message})"
            );
        }
        let retry = err
            .retry_delay()
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        return (error_json(status, &message), retry);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if v["type"] == "error" && v["error"]["message"].is_string() {
            let mut v = v;
            let m = v["error"]["message"].as_str().unwrap_or_default();
            v["error"]["message"] = json!(crate::secret::scrub(m));
            return (v, None);
        }
        if let Some(m) = v["error"]["message"].as_str() {
            let m = crate::secret::scrub(m).into_owned();
            return (error_json(status, &m), None);
        }
    }
    let reason = status.canonical_reason().unwrap_or("error");
    (
        error_json(
            status,
            &format!(
                "the upstream answered {} {reason} without an error body",
                status.as_u16()
            ),
        ),
        None,
    )
}
