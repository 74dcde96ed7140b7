//! Gemini answers → OpenAI answers: completions, usage, finish reasons, models, embeddings and
//! errors.

use http::StatusCode;
use serde_json::{Value, json};

use super::request::TranslateOptions;
use super::types::{
    ChatCompletion, Choice, CompletionTokensDetails, Embedding, EmbeddingResponse, EmbeddingUsage,
    FunctionCall, ImageData, ImageOutput, ImagesUsage, Model, ModelList, PromptTokensDetails,
    ResponseMessage, ToolCall, Usage,
};
use crate::error::ApiError;
use crate::gemini::{
    BatchEmbedContentsResponse, Candidate, FinishReason, GeminiError, GenerateContentResponse,
    Model as GeminiModel, Part, UsageMetadata,
};
pub(crate) use crate::translate::http::{copy_response_headers, json_response};
pub(crate) use crate::translate::{code_block, result_block, unique_hex, unix_now};

// === ChatContext ===

/// What an answer needs to know about its request: ids, model, choice count and options.
#[derive(Clone, Debug)]
pub struct ChatContext {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) n: u32,
    pub(crate) parallel_tool_calls: bool,
    pub(crate) signature_in_id: bool,
}

impl ChatContext {
    /// A context for `model` with a fresh `chatcmpl-…` id, the current time, one choice and
    /// parallel tool calls allowed.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            id: format!("chatcmpl-{}", unique_hex()),
            created: unix_now(),
            model: model.into(),
            n: 1,
            parallel_tool_calls: true,
            signature_in_id: true,
        }
    }

    /// The context of a translated request.
    pub fn for_request(req: &super::ChatCompletionRequest, options: &TranslateOptions) -> Self {
        let model = crate::gemini::strip_models_prefix(req.model.trim()).to_owned();
        Self::new(model)
            .choices(req.n.unwrap_or(1))
            .parallel_tool_calls(req.parallel_tool_calls.unwrap_or(true))
            .signature_in_id(options.signature_in_id)
    }

    /// The number of choices asked for (`n`, default 1).
    pub fn choices(mut self, n: u32) -> Self {
        self.n = n.max(1);
        self
    }

    /// With `false`, only the first function call of an answer reaches the client (Gemini
    /// has no switch for it).
    pub fn parallel_tool_calls(mut self, yes: bool) -> Self {
        self.parallel_tool_calls = yes;
        self
    }

    /// Whether tool call ids carry the thought signature (see
    /// [`TranslateOptions::signature_in_tool_call_id`]).
    pub fn signature_in_id(mut self, yes: bool) -> Self {
        self.signature_in_id = yes;
        self
    }

    /// The completion id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A tool call id for a call with an optional thought signature.
    pub(crate) fn tool_call_id(&self, signature: Option<&str>) -> String {
        crate::translate::signed_call_id("call_", signature, self.signature_in_id)
    }
}

// === Pieces shared with streams ===

/// OpenAI's `finish_reason` for a Gemini finish reason, or the error a client should see
/// instead of a clean stop (a malformed call or response, a missing thought signature).
pub(crate) fn finish_reason(
    reason: Option<&FinishReason>,
    saw_call: bool,
) -> Result<&'static str, ApiError> {
    match reason {
        Some(r) if r.is_blocked() => Ok("content_filter"),
        Some(r) if let Some(e) = crate::translate::unfinished(r) => Err(e),
        _ if saw_call => Ok("tool_calls"),
        Some(FinishReason::MaxTokens) => Ok("length"),
        _ => Ok("stop"),
    }
}

/// `usage` for Gemini's `usageMetadata`: completion = candidates + thoughts, reasoning and
/// cached tokens in the details, tool-use prompt tokens counted as prompt.
pub(crate) fn usage_of(u: &UsageMetadata) -> Usage {
    let prompt = u64::from(u.prompt_token_count.unwrap_or(0))
        + u64::from(u.tool_use_prompt_token_count.unwrap_or(0));
    let completion = u64::from(u.completion_tokens());
    let total = u
        .total_token_count
        .map_or(prompt + completion, u64::from)
        .max(prompt + completion);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
        prompt_tokens_details: u.cached_content_token_count.map(|c| PromptTokensDetails {
            cached_tokens: u64::from(c),
        }),
        completion_tokens_details: u.thoughts_token_count.map(|t| CompletionTokensDetails {
            reasoning_tokens: u64::from(t),
        }),
    }
}

/// A generated image (inline data with an image MIME type), as OpenAI clients read it.
pub(crate) fn image_of(part: &Part) -> Option<ImageOutput> {
    let blob = part.inline_data.as_ref()?;
    blob.mime_type
        .starts_with("image/")
        .then(|| ImageOutput::from_base64(&blob.mime_type, &blob.data))
}

/// Markdown for other inline data the model produced (audio, say): a link, which chat
/// clients show as one, not as an image.
pub(crate) fn inline_markdown(part: &Part) -> Option<String> {
    let blob = part.inline_data.as_ref()?;
    if blob.mime_type.starts_with("image/") {
        return None;
    }
    Some(format!(
        "[{}](data:{};base64,{})",
        blob.mime_type, blob.mime_type, blob.data
    ))
}

/// OpenAI `logprobs` for Gemini's `logprobsResult`.
pub(crate) fn logprobs_of(result: Option<&Value>) -> Option<Value> {
    let r = result?;
    let chosen = r["chosenCandidates"].as_array()?;
    let top = r["topCandidates"].as_array();
    let entry = |c: &Value| {
        let token = c["token"].as_str().unwrap_or_default();
        json!({
            "token": token,
            "logprob": c["logProbability"].as_f64().unwrap_or(0.0),
            "bytes": token.as_bytes(),
        })
    };
    let content: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = entry(c);
            let tops: Vec<Value> = top
                .and_then(|t| t.get(i))
                .and_then(|t| t["candidates"].as_array())
                .map(|cs| cs.iter().map(entry).collect())
                .unwrap_or_default();
            e["top_logprobs"] = Value::Array(tops);
            e
        })
        .collect();
    Some(json!({ "content": content, "refusal": null }))
}

/// The refusal text for a prompt Gemini blocked.
pub(crate) fn blocked_message(reason: &str) -> String {
    format!("Gemini blocked the prompt ({reason}); nothing was generated")
}

// === Non-streamed completion ===

/// Translates a whole `generateContent` answer into a `chat.completion`.
///
/// A blocked prompt is `finish_reason: "content_filter"` with a refusal on every choice; an
/// answer without candidates, or one ended by a malformed call, is an error (never an empty
/// 200 or a clean stop).
pub fn to_chat_completion(
    resp: &GenerateContentResponse,
    cx: &ChatContext,
) -> Result<ChatCompletion, ApiError> {
    let usage = resp.usage_metadata.as_ref().map(usage_of);
    let mut choices = Vec::new();
    if resp.candidates.is_empty() {
        let Some(reason) = resp.block_reason() else {
            return Err(ApiError::bad_gateway(
                "Gemini answered without any candidate and without saying why",
            ));
        };
        for index in 0..cx.n {
            choices.push(Choice {
                index,
                message: ResponseMessage {
                    role: "assistant".to_owned(),
                    refusal: Some(blocked_message(reason.as_str())),
                    ..ResponseMessage::default()
                },
                finish_reason: Some("content_filter".to_owned()),
                logprobs: None,
            });
        }
    }
    for (pos, cand) in resp.candidates.iter().enumerate() {
        let index = cand
            .index
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(pos as u32);
        choices.push(choice_of(cand, index, cx)?);
    }
    choices.sort_by_key(|c| c.index);
    Ok(ChatCompletion {
        id: cx.id.clone(),
        object: "chat.completion".to_owned(),
        created: cx.created,
        model: cx.model.clone(),
        choices,
        usage,
    })
}

fn choice_of(cand: &Candidate, index: u32, cx: &ChatContext) -> Result<Choice, ApiError> {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut calls: Vec<(crate::gemini::FunctionCall, Option<String>)> = Vec::new();
    let mut images = Vec::new();
    for part in cand.parts() {
        if let Some(call) = &part.function_call {
            calls.push((call.clone(), part.thought_signature.clone()));
            continue;
        }
        if let Some(image) = image_of(part) {
            images.push(image);
            continue;
        }
        if let Some(sig) = &part.thought_signature
            && part.text.as_deref().unwrap_or_default().is_empty()
            && let Some(last) = calls.iter_mut().rev().find(|c| c.1.is_none())
        {
            last.1 = Some(sig.clone());
        }
        let at_line_start = content.is_empty() || content.ends_with('\n');
        if let Some(text) = &part.text {
            if part.is_thought() {
                reasoning.push_str(text);
            } else {
                content.push_str(text);
            }
        } else if let Some(code) = &part.executable_code {
            content.push_str(&code_block(code, at_line_start));
        } else if let Some(result) = &part.code_execution_result {
            content.push_str(&result_block(result, at_line_start));
        } else if let Some(md) = inline_markdown(part) {
            content.push_str(&md);
        }
    }
    if !cx.parallel_tool_calls {
        calls.truncate(1);
    }
    let finish = finish_reason(cand.finish_reason.as_ref(), !calls.is_empty())?;
    let tool_calls: Vec<ToolCall> = calls
        .into_iter()
        .map(|(call, sig)| tool_call(&call, sig.as_deref(), cx))
        .collect();
    Ok(Choice {
        index,
        message: ResponseMessage {
            role: "assistant".to_owned(),
            content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            refusal: None,
            images: (!images.is_empty()).then_some(images),
        },
        finish_reason: Some(finish.to_owned()),
        logprobs: logprobs_of(cand.logprobs_result.as_ref()),
    })
}

/// An OpenAI tool call for a Gemini function call and its thought signature.
pub(crate) fn tool_call(
    call: &crate::gemini::FunctionCall,
    signature: Option<&str>,
    cx: &ChatContext,
) -> ToolCall {
    ToolCall {
        id: cx.tool_call_id(signature),
        kind: "function".to_owned(),
        function: FunctionCall {
            name: call.name.clone(),
            arguments: arguments_of(call),
        },
        extra_content: signature.map(|s| json!({ "google": { "thought_signature": s } })),
    }
}

pub(crate) fn arguments_of(call: &crate::gemini::FunctionCall) -> String {
    match &call.args {
        Some(args) => serde_json::to_string(args).unwrap_or_else(|_| "{}".to_owned()),
        None => "{}".to_owned(),
    }
}

// === Models ===

/// An OpenAI model for a Gemini model.
pub(crate) fn model_of(m: &GeminiModel, owned_by: &str) -> Model {
    Model {
        id: m.id().to_owned(),
        object: "model".to_owned(),
        created: 0,
        owned_by: owned_by.to_owned(),
    }
}

/// An OpenAI model list for Gemini models.
pub(crate) fn model_list<'a>(
    models: impl IntoIterator<Item = &'a GeminiModel>,
    owned_by: &str,
) -> ModelList {
    ModelList {
        object: "list".to_owned(),
        data: models.into_iter().map(|m| model_of(m, owned_by)).collect(),
    }
}

// === Embeddings ===

/// An OpenAI embeddings answer for a `batchEmbedContents` answer. With `base64`, each vector
/// is the base64 of its little-endian `f32`s, as OpenAI sends it. Gemini reports no token
/// usage for embeddings, so usage is 0.
pub(crate) fn embedding_response(
    resp: &BatchEmbedContentsResponse,
    model: &str,
    base64: bool,
) -> EmbeddingResponse {
    let data = resp
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| Embedding {
            object: "embedding".to_owned(),
            index: i as u32,
            embedding: if base64 {
                let bytes: Vec<u8> = e
                    .values
                    .iter()
                    .flat_map(|v| (*v as f32).to_le_bytes())
                    .collect();
                Value::String(crate::base64::encode(&bytes))
            } else {
                json!(e.values)
            },
        })
        .collect();
    EmbeddingResponse {
        object: "list".to_owned(),
        data,
        model: model.to_owned(),
        usage: EmbeddingUsage::default(),
    }
}

// === Errors ===

/// OpenAI's error object for a status and message, with a machine-readable code.
pub(crate) fn error_json(status: StatusCode, message: &str, code: Option<&str>) -> Value {
    json!({
        "error": {
            "message": message,
            "type": ApiError::new(status, "").openai_type(),
            "param": null,
            "code": code,
        }
    })
}

/// The OpenAI error for an upstream (or deeper layer's) error body: Gemini's error object is
/// translated with its message scrubbed of keys, an OpenAI one is kept, anything else gets a
/// message naming the status.
pub(crate) fn translate_error(status: StatusCode, body: &[u8]) -> (Value, Option<u64>) {
    if let Some(err) = GeminiError::parse(body) {
        let message = crate::secret::scrub(err.message()).into_owned();
        let message = if message.is_empty() {
            format!("upstream error {}", status.as_u16())
        } else {
            message
        };
        let code = match (status.as_u16(), err.status()) {
            (429, _) => "rate_limit_exceeded".to_owned(),
            _ if crate::translate::context_overflow(err.message()).is_some() => {
                "context_length_exceeded".to_owned()
            }
            (404, _) if err.message().contains("models/") => "model_not_found".to_owned(),
            _ if err.is_api_key_invalid() => "invalid_api_key".to_owned(),
            (_, "") => status.as_u16().to_string(),
            (_, s) => s.to_ascii_lowercase(),
        };
        let retry = err
            .retry_delay()
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        return (error_json(status, &message, Some(&code)), retry);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && v["error"]["message"].is_string()
    {
        let mut v = v;
        if let Some(m) = v["error"]["message"].as_str() {
            let scrubbed = crate::secret::scrub(m).into_owned();
            v["error"]["message"] = Value::String(scrubbed);
        }
        return (v, None);
    }
    let reason = status.canonical_reason().unwrap_or("error");
    (
        error_json(
            status,
            &format!(
                "the upstream answered {} {reason} without an error body",
                status.as_u16()
            ),
            None,
        ),
        None,
    )
}

// === Images ===

/// The images of one `generateContent` answer to an images request, and its usage; a refusal
/// (a blocked prompt or image) is a 400 with code `content_policy_violation`, an answer without
/// an image a 502.
pub(crate) fn generated_images(
    resp: &GenerateContentResponse,
) -> Result<(Vec<ImageData>, ImagesUsage), ApiError> {
    let refused = |reason: &str| {
        ApiError::bad_request(format!(
            "Gemini refused to make this image ({reason}); nothing was generated"
        ))
        .with_openai_code("content_policy_violation")
    };
    if let Some(reason) = resp.block_reason() {
        return Err(refused(reason.as_str()));
    }
    let mut data = Vec::new();
    for cand in &resp.candidates {
        let text: String = cand
            .parts()
            .iter()
            .filter(|p| !p.is_thought())
            .filter_map(|p| p.text.as_deref())
            .collect();
        let text = Some(text).filter(|t| !t.trim().is_empty());
        for part in cand.parts() {
            if let Some(blob) = &part.inline_data
                && blob.mime_type.starts_with("image/")
            {
                data.push(ImageData {
                    b64_json: blob.data.clone(),
                    revised_prompt: text.clone(),
                });
            }
        }
        if data.is_empty()
            && let Some(reason) = cand.finish_reason.as_ref().filter(|r| r.is_blocked())
        {
            return Err(refused(reason.as_str()));
        }
    }
    if data.is_empty() {
        return Err(ApiError::bad_gateway(
            "Gemini answered without an image; is the model an image model?",
        ));
    }
    let usage = resp
        .usage_metadata
        .as_ref()
        .map(|u| {
            let input = u64::from(u.prompt_token_count.unwrap_or(0));
            let output = u64::from(u.candidates_token_count.unwrap_or(0))
                + u64::from(u.thoughts_token_count.unwrap_or(0));
            ImagesUsage {
                input_tokens: input,
                output_tokens: output,
                total_tokens: u64::from(u.total_token_count.unwrap_or(0)).max(input + output),
            }
        })
        .unwrap_or_default();
    Ok((data, usage))
}
