//! Responses requests → chat requests → Gemini requests: input items become chat messages, so
//! the chat front's translation (contents, media, schema cleaning, thought signatures,
//! reasoning effort) serves both.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::types::CreateResponse;
use crate::error::ApiError;
use crate::gemini::{GenerateContentRequest, Tool as GeminiTool};
use crate::openai::request::{TranslateOptions, to_gemini_request};
use crate::openai::types::{
    ChatCompletionRequest, ContentPart, FunctionCall, FunctionDef, JsonSchemaFormat, Message,
    MessageContent, ResponseFormat, Tool, ToolCall,
};

/// The input items of a request: a string input is one user message.
pub(crate) fn input_items(req: &CreateResponse) -> Result<Vec<Value>, ApiError> {
    match &req.input {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": s}],
        })]),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(ApiError::bad_request(
            "`input` must be a string or a list of input items",
        )),
    }
}

/// The Gemini request for a Responses request whose conversation is `items` (the stored
/// history, then this request's input).
pub(crate) fn to_gemini(
    req: &CreateResponse,
    items: &[Value],
    first_new: usize,
    options: &TranslateOptions,
) -> Result<GenerateContentRequest, ApiError> {
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "`input` is required (a string or a list of input items)",
        ));
    }
    let mut chat = ChatCompletionRequest {
        model: req.model.clone(),
        temperature: req.temperature,
        top_p: req.top_p,
        max_completion_tokens: req.max_output_tokens,
        parallel_tool_calls: req.parallel_tool_calls,
        reasoning_effort: req.effort().map(str::to_owned),
        ..ChatCompletionRequest::default()
    };
    if let Some(instructions) = req.instructions.as_deref().filter(|s| !s.is_empty()) {
        chat.messages.push(Message {
            role: "system".to_owned(),
            content: Some(MessageContent::Text(instructions.to_owned())),
            ..Message::default()
        });
    }
    chat.messages.extend(messages_of(items, first_new)?);
    let (tools, search) = tools_of(req.tools.as_deref().unwrap_or_default())?;
    if !tools.is_empty() {
        chat.tools = Some(tools);
        chat.tool_choice = req.tool_choice.clone().and_then(tool_choice);
    }
    chat.response_format = format_of(req.text.as_ref())?;
    let mut gemini = to_gemini_request(&chat, options)?;
    if search {
        gemini.tools.push(GeminiTool {
            google_search: Some(json!({})),
            ..GeminiTool::default()
        });
    }
    Ok(gemini)
}

/// Where an item sits, for error messages: `input[i]` for this request's items.
fn at(i: usize, first_new: usize) -> String {
    if i >= first_new {
        format!("input[{}]", i - first_new)
    } else {
        format!("the stored conversation's item {i}")
    }
}

fn messages_of(items: &[Value], first_new: usize) -> Result<Vec<Message>, ApiError> {
    let mut out: Vec<Message> = Vec::new();
    let mut call_ids: HashSet<String> = HashSet::new();
    // The signature a reasoning item carries back, for the function call that follows it.
    let mut signature: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let kind = item["type"]
            .as_str()
            .unwrap_or(if item.get("role").is_some() {
                "message"
            } else {
                ""
            });
        match kind {
            "message" => {
                let role = item["role"].as_str().unwrap_or("user");
                let role = match role {
                    "user" | "assistant" | "system" | "developer" => role,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "{}.role {other:?} is not one of user, assistant, system, developer",
                            at(i, first_new)
                        )));
                    }
                };
                let content =
                    content_of(&item["content"], role == "assistant", || at(i, first_new))?;
                out.push(Message {
                    role: role.to_owned(),
                    content: Some(content),
                    ..Message::default()
                });
            }
            "function_call" => {
                let call_id = item["call_id"].as_str().unwrap_or_default();
                let name = item["name"].as_str().unwrap_or_default();
                if call_id.is_empty() || name.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "{}: a function_call needs `call_id` and `name`",
                        at(i, first_new)
                    )));
                }
                call_ids.insert(call_id.to_owned());
                let arguments = match &item["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let extra_content = signature
                    .take()
                    .map(|s| json!({"google": {"thought_signature": s}}));
                out.push(Message {
                    role: "assistant".to_owned(),
                    tool_calls: Some(vec![ToolCall {
                        id: call_id.to_owned(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: name.to_owned(),
                            arguments,
                        },
                        extra_content,
                    }]),
                    ..Message::default()
                });
            }
            "function_call_output" => {
                let call_id = item["call_id"].as_str().unwrap_or_default();
                if !call_ids.contains(call_id) {
                    return Err(ApiError::bad_request(format!(
                        "{}: function_call_output call_id {call_id:?} matches no function_call \
                         earlier in the conversation (send the function_call item too, or use \
                         previous_response_id)",
                        at(i, first_new)
                    )));
                }
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                out.push(Message {
                    role: "tool".to_owned(),
                    content: Some(MessageContent::Text(output)),
                    tool_call_id: Some(call_id.to_owned()),
                    ..Message::default()
                });
            }
            "reasoning" => {
                signature = item["encrypted_content"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
            }
            // Tool runs Gemini did itself (search) leave nothing to send back.
            "web_search_call" => {}
            "item_reference" => {
                return Err(ApiError::bad_request(format!(
                    "{}: item_reference is not supported; send the item itself or use \
                     previous_response_id",
                    at(i, first_new)
                )));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{}: item type {other:?} is not supported (use message, function_call, \
                     function_call_output or reasoning)",
                    at(i, first_new)
                )));
            }
        }
    }
    Ok(out)
}

/// A message's content as chat content: a string, or typed parts mapped to the chat front's.
fn content_of(
    content: &Value,
    assistant: bool,
    at: impl Fn() -> String,
) -> Result<MessageContent, ApiError> {
    let parts = match content {
        Value::String(s) => return Ok(MessageContent::Text(s.clone())),
        Value::Null => return Ok(MessageContent::Text(String::new())),
        Value::Array(parts) => parts,
        _ => {
            return Err(ApiError::bad_request(format!(
                "{}.content must be a string or a list of content parts",
                at()
            )));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let text = |t: &Value| ContentPart {
            kind: "text".to_owned(),
            text: Some(t.as_str().unwrap_or_default().to_owned()),
            ..ContentPart::default()
        };
        let part = match p["type"].as_str().unwrap_or_default() {
            "input_text" | "output_text" | "text" => text(&p["text"]),
            "refusal" => text(&p["refusal"]),
            kind if assistant => {
                return Err(ApiError::bad_request(format!(
                    "{}.content[{j}]: an assistant message can only hold text, not {kind:?}",
                    at()
                )));
            }
            "input_image" => match (p["image_url"].as_str(), p["file_id"].as_str()) {
                (Some(url), _) => ContentPart {
                    kind: "image_url".to_owned(),
                    image_url: Some(Value::String(url.to_owned())),
                    ..ContentPart::default()
                },
                (None, Some(id)) => ContentPart {
                    kind: "file".to_owned(),
                    file: Some(json!({"file_id": id})),
                    ..ContentPart::default()
                },
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "{}.content[{j}]: input_image needs `image_url` or `file_id`",
                        at()
                    )));
                }
            },
            "input_file" => {
                let mut file = serde_json::Map::new();
                for key in ["file_data", "file_id", "filename"] {
                    if let Some(v) = p.get(key).filter(|v| v.is_string()) {
                        file.insert(key.to_owned(), v.clone());
                    }
                }
                if let Some(url) = p["file_url"].as_str() {
                    ContentPart {
                        kind: "image_url".to_owned(),
                        image_url: Some(Value::String(url.to_owned())),
                        ..ContentPart::default()
                    }
                } else if file.contains_key("file_data") || file.contains_key("file_id") {
                    ContentPart {
                        kind: "file".to_owned(),
                        file: Some(Value::Object(file)),
                        ..ContentPart::default()
                    }
                } else {
                    return Err(ApiError::bad_request(format!(
                        "{}.content[{j}]: input_file needs `file_data`, `file_id` or `file_url`",
                        at()
                    )));
                }
            }
            "input_audio" => ContentPart {
                kind: "input_audio".to_owned(),
                input_audio: p.get("input_audio").cloned(),
                ..ContentPart::default()
            },
            other => {
                return Err(ApiError::bad_request(format!(
                    "{}.content[{j}]: content type {other:?} is not supported (use input_text, \
                     input_image, input_file or input_audio)",
                    at()
                )));
            }
        };
        out.push(part);
    }
    Ok(MessageContent::Parts(out))
}

/// Function tools as chat tools, and whether Google Search was asked for.
fn tools_of(tools: &[Value]) -> Result<(Vec<Tool>, bool), ApiError> {
    let mut out = Vec::new();
    let mut search = false;
    for (i, t) in tools.iter().enumerate() {
        let kind = t["type"].as_str().unwrap_or("function");
        match kind {
            "function" => {
                // Responses function tools are flat; accept the chat shape too.
                let f = t.get("function").filter(|f| f.is_object()).unwrap_or(t);
                let name = f["name"].as_str().unwrap_or_default();
                if name.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "tools[{i}].name is required"
                    )));
                }
                out.push(Tool {
                    kind: "function".to_owned(),
                    function: FunctionDef {
                        name: name.to_owned(),
                        description: f["description"].as_str().map(str::to_owned),
                        parameters: f.get("parameters").filter(|p| p.is_object()).cloned(),
                        strict: f["strict"].as_bool(),
                    },
                });
            }
            k if k.starts_with("web_search") => search = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}].type {other:?} is not supported; use \"function\" or \
                     \"web_search\" (Gemini's Google Search)"
                )));
            }
        }
    }
    Ok((out, search))
}

/// `tool_choice` in the chat front's terms; a hosted tool's choice (web search) is `auto`.
fn tool_choice(choice: Value) -> Option<Value> {
    match &choice {
        Value::String(_) => Some(choice),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Some(choice)
        }
        _ => None,
    }
}

fn format_of(text: Option<&Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format["type"].as_str().unwrap_or("text");
    Ok(match kind {
        "text" => None,
        "json_object" => Some(ResponseFormat {
            kind: "json_object".to_owned(),
            json_schema: None,
        }),
        "json_schema" => Some(ResponseFormat {
            kind: "json_schema".to_owned(),
            json_schema: Some(JsonSchemaFormat {
                name: format["name"].as_str().unwrap_or_default().to_owned(),
                description: format["description"].as_str().map(str::to_owned),
                schema: format.get("schema").cloned(),
                strict: format["strict"].as_bool(),
            }),
        }),
        other => {
            return Err(ApiError::bad_request(format!(
                "text.format.type {other:?} is not one of text, json_object, json_schema"
            )));
        }
    })
}
