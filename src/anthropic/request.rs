//! Anthropic Messages requests → Gemini `generateContent` requests.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::types::{ContentBlock, Message, MessageContent, MessagesRequest, Tool};
use crate::error::ApiError;
use crate::gemini::{
    Content, FileData, FunctionCallingConfig, FunctionDeclaration, GenerateContentRequest,
    GenerationConfig, Part, ThinkingConfig, ThinkingKind, Tool as GeminiTool, ToolConfig,
};
use crate::translate::media::{self, url_part};
use crate::translate::schema::clean_schema;
use crate::translate::{SKIP_THOUGHT_SIGNATURE, model_id, signature_in_id};

/// Translates an Anthropic Messages request into the Gemini model id and a `generateContent`
/// request body.
///
/// The model goes in the path, not the body. Errors are 400s that say which field cannot be
/// expressed for Gemini.
pub fn to_gemini_request(
    req: &MessagesRequest,
) -> Result<(String, GenerateContentRequest), ApiError> {
    translate(req, None)
}

/// [`to_gemini_request`] for a request that `served` will serve (an alias resolved below):
/// thinking, thought-signature rules and tool mixes fit `served`; the model returned is still
/// the client's.
pub(crate) fn translate(
    req: &MessagesRequest,
    served: Option<&str>,
) -> Result<(String, GenerateContentRequest), ApiError> {
    let model = model_id(&req.model)?.to_owned();
    let served = served.unwrap_or(&model).to_owned();
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty"));
    }
    let mut out = GenerateContentRequest::default();
    if let Some(system) = &req.system {
        let parts = system_parts(system)?;
        if !parts.is_empty() {
            out.system_instruction = Some(Content {
                role: None,
                parts,
                extra: Map::new(),
            });
        }
    }
    out.contents = convert_messages(&req.messages, &served)?;
    if out.contents.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` holds no content Gemini can read",
        ));
    }
    let tools = req.tools.as_deref().unwrap_or_default();
    let mut declarations = Vec::new();
    let mut search = false;
    for (i, t) in tools.iter().enumerate() {
        match t.kind.as_deref() {
            None | Some("custom") => declarations.push(declaration(i, t)?),
            Some(k) if k.starts_with("web_search") => search = true,
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}].type {k:?} is an Anthropic server tool Gemini does not have; \
                     only client tools (with `input_schema`) and web_search can be sent"
                )));
            }
        }
    }
    if !declarations.is_empty() {
        out.tools.push(GeminiTool::functions(declarations));
    }
    // Gemini before 3 refuses Google Search beside function declarations: the functions win.
    if search && (declarations_sent(&out) == 0 || crate::gemini::is_gemini_3(&served)) {
        out.tools.push(GeminiTool {
            google_search: Some(json!({})),
            ..GeminiTool::default()
        });
    }
    if let Some(choice) = &req.tool_choice
        && !tools.is_empty()
    {
        out.tool_config = tool_config(choice, tools)?;
    }
    let config = generation_config(req, &served)?;
    if config != GenerationConfig::default() {
        out.generation_config = Some(config);
    }
    Ok((model, out))
}

/// How many function declarations the request carries.
fn declarations_sent(out: &GenerateContentRequest) -> usize {
    out.tools
        .iter()
        .map(|t| t.function_declarations.len())
        .sum()
}

fn system_parts(system: &MessageContent) -> Result<Vec<Part>, ApiError> {
    Ok(match system {
        MessageContent::Text(t) if t.is_empty() => Vec::new(),
        MessageContent::Text(t) => vec![Part::text(t.clone())],
        MessageContent::Blocks(blocks) => {
            let mut parts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                match (b.kind.as_str(), b.text.as_deref()) {
                    ("text", Some("") | None) => {}
                    ("text", Some(t)) => parts.push(Part::text(t)),
                    (kind, _) => {
                        return Err(ApiError::bad_request(format!(
                            "system[{j}]: a system block can only be text, not {kind:?}"
                        )));
                    }
                }
            }
            parts
        }
    })
}

fn convert_messages(messages: &[Message], model: &str) -> Result<Vec<Content>, ApiError> {
    let mut contents: Vec<Content> = Vec::new();
    // tool_use id → function name, for tool results.
    let mut call_names: HashMap<String, String> = HashMap::new();
    let needs_signatures = crate::gemini::is_gemini_3(model);
    for (i, m) in messages.iter().enumerate() {
        let (role, parts) = match m.role.as_str() {
            "user" => ("user", user_parts(&m.content, i, &call_names)?),
            "assistant" => {
                let parts = assistant_parts(&m.content, i, &mut call_names)?;
                let mut parts = parts;
                let has_calls = parts.iter().any(|p| p.function_call.is_some());
                if needs_signatures
                    && has_calls
                    && parts.iter().all(|p| p.thought_signature.is_none())
                    && let Some(first) = parts.iter_mut().find(|p| p.function_call.is_some())
                {
                    // History Gemini did not produce (another model, an edited turn).
                    first.thought_signature = Some(SKIP_THOUGHT_SIGNATURE.to_owned());
                }
                ("model", parts)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].role {other:?} is not one of user, assistant"
                )));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => contents.push(Content::new(role, parts)),
        }
    }
    Ok(contents)
}

fn blocks_of(content: &MessageContent) -> Vec<ContentBlock> {
    match content {
        MessageContent::Text(t) => vec![ContentBlock {
            kind: "text".to_owned(),
            text: Some(t.clone()),
            ..ContentBlock::default()
        }],
        MessageContent::Blocks(b) => b.clone(),
    }
}

fn user_parts(
    content: &MessageContent,
    i: usize,
    call_names: &HashMap<String, String>,
) -> Result<Vec<Part>, ApiError> {
    let mut parts = Vec::new();
    for (j, b) in blocks_of(content).iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        match b.kind.as_str() {
            "text" => {
                if let Some(t) = b.text.as_deref().filter(|t| !t.is_empty()) {
                    parts.push(Part::text(t));
                }
            }
            "image" | "document" => parts.push(media_part(b, &at())?),
            "tool_result" => {
                let id = b.tool_use_id.as_deref().unwrap_or_default();
                let name = call_names.get(id).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{}: tool_use_id {id:?} matches no tool_use of an earlier assistant \
                         message",
                        at()
                    ))
                })?;
                let (response, extra) = tool_result(b, &at())?;
                parts.push(Part::function_response(name.clone(), response));
                parts.extend(extra);
            }
            // Thinking blocks in a user turn mean nothing to Gemini.
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "{}: content block type {other:?} is not supported in a user message (use \
                     text, image, document or tool_result)",
                    at()
                )));
            }
        }
    }
    Ok(parts)
}

/// The `functionResponse` body of a tool result (`{"result": ...}` or, with `is_error`,
/// `{"error": ...}`; a JSON object result is sent as is), and the media parts it held.
fn tool_result(b: &ContentBlock, at: &str) -> Result<(Value, Vec<Part>), ApiError> {
    let mut text = String::new();
    let mut media = Vec::new();
    match &b.content {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(items)) => {
            for (k, item) in items.iter().enumerate() {
                let block: ContentBlock = serde_json::from_value(item.clone()).map_err(|e| {
                    ApiError::bad_request(format!("{at}.content[{k}] is not a content block: {e}"))
                })?;
                match block.kind.as_str() {
                    "text" => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(block.text.as_deref().unwrap_or_default());
                    }
                    "image" | "document" => {
                        media.push(media_part(&block, &format!("{at}.content[{k}]"))?)
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "{at}.content[{k}]: a tool result can hold text, image or \
                             document blocks, not {other:?}"
                        )));
                    }
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{at}.content must be a string or a list of blocks"
            )));
        }
    }
    let key = if b.is_error == Some(true) {
        "error"
    } else {
        "result"
    };
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) if key == "result" => Value::Object(o),
        _ => json!({ key: text }),
    };
    Ok((response, media))
}

/// An `image` or `document` block as an `inlineData` or `fileData` part (or text for a plain
/// text document).
fn media_part(b: &ContentBlock, at: &str) -> Result<Part, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("{at}: {why}"));
    let source = b
        .source
        .as_ref()
        .ok_or_else(|| bad("`source` is required".to_owned()))?;
    let fallback = if b.kind == "image" {
        "image/jpeg"
    } else {
        "application/pdf"
    };
    match source["type"].as_str().unwrap_or_default() {
        "base64" => {
            let data = source["data"]
                .as_str()
                .filter(|d| !d.is_empty())
                .ok_or_else(|| bad("`source.data` is required".to_owned()))?;
            let mime = source["media_type"].as_str().unwrap_or(fallback);
            let url = format!("data:{mime};base64,{data}");
            url_part(&url, fallback).map_err(bad)
        }
        "url" => {
            let url = source["url"]
                .as_str()
                .ok_or_else(|| bad("`source.url` is required".to_owned()))?;
            url_part(url, fallback).map_err(bad)
        }
        "text" => Ok(Part::text(source["data"].as_str().unwrap_or_default())),
        "file" => {
            let id = source["file_id"]
                .as_str()
                .ok_or_else(|| bad("`source.file_id` is required".to_owned()))?;
            Ok(Part {
                file_data: Some(FileData {
                    mime_type: media::mime_of_name(id).map(str::to_owned),
                    file_uri: id.to_owned(),
                    extra: Map::new(),
                }),
                ..Part::default()
            })
        }
        other => Err(bad(format!(
            "source.type {other:?} is not one of base64, url, text, file"
        ))),
    }
}

fn assistant_parts(
    content: &MessageContent,
    i: usize,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Part>, ApiError> {
    let mut parts: Vec<Part> = Vec::new();
    // A thinking block's signature belongs to the part that follows it.
    let mut pending: Option<String> = None;
    for (j, b) in blocks_of(content).iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        let mut part = match b.kind.as_str() {
            "thinking" => {
                if let Some(sig) = b.signature.as_deref().filter(|s| !s.is_empty()) {
                    pending = Some(sig.to_owned());
                }
                continue;
            }
            "redacted_thinking" => continue,
            "text" => match b.text.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => Part::text(t),
                None => continue,
            },
            "tool_use" => {
                let id = b.id.as_deref().unwrap_or_default();
                let name = b.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| {
                    ApiError::bad_request(format!("{}: a tool_use needs a `name`", at()))
                })?;
                call_names.insert(id.to_owned(), name.to_owned());
                let args = match &b.input {
                    None | Some(Value::Null) => json!({}),
                    Some(v @ Value::Object(_)) => v.clone(),
                    Some(_) => {
                        return Err(ApiError::bad_request(format!(
                            "{}: a tool_use `input` must be an object",
                            at()
                        )));
                    }
                };
                let mut part = Part::function_call(name, args);
                // The id's signature is the call's own; a thinking block's comes second.
                if let Some(sig) = signature_in_id(id) {
                    part.thought_signature = Some(sig.to_owned());
                    pending = None;
                }
                part
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{}: content block type {other:?} is not supported in an assistant message \
                     (use text, thinking or tool_use)",
                    at()
                )));
            }
        };
        if part.thought_signature.is_none() {
            part.thought_signature = pending.take();
        }
        parts.push(part);
    }
    Ok(parts)
}

fn declaration(i: usize, tool: &Tool) -> Result<FunctionDeclaration, ApiError> {
    if tool.name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "tools[{i}].name is required"
        )));
    }
    Ok(FunctionDeclaration {
        name: tool.name.clone(),
        description: tool.description.clone().filter(|d| !d.is_empty()),
        parameters_json_schema: tool.input_schema.as_ref().map(clean_schema),
        ..FunctionDeclaration::default()
    })
}

fn tool_config(choice: &Value, tools: &[Tool]) -> Result<Option<ToolConfig>, ApiError> {
    let kind = choice["type"].as_str().unwrap_or_default();
    let (mode, names) = match kind {
        "auto" => ("AUTO", Vec::new()),
        "any" => ("ANY", Vec::new()),
        "none" => ("NONE", Vec::new()),
        "tool" => {
            let name = choice["name"]
                .as_str()
                .ok_or_else(|| ApiError::bad_request("tool_choice `tool` needs a `name`"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::bad_request(format!(
                    "tool_choice names {name:?}, which is not among `tools`"
                )));
            }
            ("ANY", vec![name.to_owned()])
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "tool_choice.type {other:?} is not one of auto, any, tool, none"
            )));
        }
    };
    Ok(Some(ToolConfig {
        function_calling_config: Some(FunctionCallingConfig {
            mode: Some(mode.to_owned()),
            allowed_function_names: names,
            extra: Map::new(),
        }),
        extra: Map::new(),
    }))
}

fn generation_config(req: &MessagesRequest, model: &str) -> Result<GenerationConfig, ApiError> {
    let clamp = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    let mut c = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k.map(clamp),
        max_output_tokens: req.max_tokens.map(clamp),
        stop_sequences: req.stop_sequences.clone().unwrap_or_default(),
        ..GenerationConfig::default()
    };
    c.thinking_config = thinking(req.thinking.as_ref(), model)?;
    Ok(c)
}

/// `thinking` → `thinkingConfig`: a budget moved into the model's range, or the level for it
/// on models that take levels; thoughts shown when thinking is enabled.
fn thinking(thinking: Option<&Value>, model: &str) -> Result<Option<ThinkingConfig>, ApiError> {
    let Some(v) = thinking.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = ThinkingKind::for_model(model);
    let mut t = ThinkingConfig::default();
    let (budget, show) = match v["type"].as_str().unwrap_or_default() {
        "enabled" => {
            let n = v["budget_tokens"].as_i64().ok_or_else(|| {
                ApiError::bad_request("thinking.budget_tokens is required with type `enabled`")
            })?;
            (i32::try_from(n).unwrap_or(i32::MAX), true)
        }
        "adaptive" => (-1, true),
        "disabled" => (0, false),
        other => {
            return Err(ApiError::bad_request(format!(
                "thinking.type {other:?} is not one of enabled, disabled, adaptive"
            )));
        }
    };
    match kind {
        ThinkingKind::Levels { .. } => {
            t.thinking_level = kind.level_for_budget(budget).map(|l| l.as_str().to_owned());
        }
        ThinkingKind::Budget { .. } => {
            t.thinking_budget = Some(kind.clamp_budget(budget).unwrap_or(budget));
        }
    }
    t.include_thoughts = Some(show && t.thinking_budget != Some(0));
    Ok(Some(t))
}
