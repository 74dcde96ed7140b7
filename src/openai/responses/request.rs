//! Responses requests → chat requests → Gemini requests: input items become chat messages, so
//! the chat front's translation (contents, media, schema cleaning, thought signatures,
//! reasoning effort) serves both.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::types::CreateResponse;
use crate::error::ApiError;
use crate::gemini::{GenerateContentRequest, Tool as GeminiTool};
use crate::openai::request::{TranslateOptions, to_gemini_request};
use crate::openai::types::{
    ChatCompletionRequest, ContentPart, FunctionCall, FunctionDef, ImageOutput, JsonSchemaFormat,
    Message, MessageContent, ResponseFormat, Tool, ToolCall,
};
use crate::translate::THOUGHT_SIGNATURE_SEPARATOR;

/// A tool as the client named it, for a Gemini function name: its namespace (a `namespace`
/// tool's group) and whether it is a `custom` (free-text input) tool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientTool {
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    pub(crate) custom: bool,
}

/// The client's tools by Gemini function name (only those that differ from a plain function).
#[derive(Clone, Debug, Default)]
pub(crate) struct ToolMap(HashMap<String, ClientTool>);

impl ToolMap {
    /// The Gemini function name of a tool: `{namespace}__{name}` inside a namespace.
    fn gemini_name(namespace: Option<&str>, name: &str) -> String {
        match namespace.filter(|n| !n.is_empty()) {
            Some(ns) => format!("{ns}__{name}"),
            None => name.to_owned(),
        }
    }

    /// The client's tool for a function Gemini called.
    pub(crate) fn client(&self, gemini_name: &str) -> ClientTool {
        self.0
            .get(gemini_name)
            .cloned()
            .unwrap_or_else(|| ClientTool {
                name: gemini_name.to_owned(),
                ..ClientTool::default()
            })
    }
}

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
) -> Result<(GenerateContentRequest, ToolMap), ApiError> {
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
    let (tools, search, map) = tools_of(req.tools.as_deref().unwrap_or_default())?;
    // Gemini before 3 refuses Google Search beside function declarations: the functions win.
    let model = options.served(crate::gemini::strip_models_prefix(req.model.trim()));
    let search = search && (tools.is_empty() || crate::gemini::is_gemini_3(model));
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
    Ok((gemini, map))
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
                // A reasoning item's signature belongs to a call right after it, not a later one.
                signature = None;
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
            "function_call" | "custom_tool_call" => {
                let call_id = item["call_id"].as_str().unwrap_or_default();
                let name = item["name"].as_str().unwrap_or_default();
                if call_id.is_empty() || name.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "{}: a {kind} needs `call_id` and `name`",
                        at(i, first_new)
                    )));
                }
                call_ids.insert(call_id.to_owned());
                let name = ToolMap::gemini_name(item["namespace"].as_str(), name);
                let arguments = if kind == "custom_tool_call" {
                    json!({"input": item["input"].as_str().unwrap_or_default()}).to_string()
                } else {
                    match &item["arguments"] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    }
                };
                // The call's own signature (in its id) wins over the reasoning item's.
                let carried = signature.take();
                let extra_content = carried
                    .filter(|_| !call_id.contains(THOUGHT_SIGNATURE_SEPARATOR))
                    .map(|s| json!({"google": {"thought_signature": s}}));
                out.push(Message {
                    role: "assistant".to_owned(),
                    tool_calls: Some(vec![ToolCall {
                        id: call_id.to_owned(),
                        kind: "function".to_owned(),
                        function: FunctionCall { name, arguments },
                        extra_content,
                    }]),
                    ..Message::default()
                });
            }
            "function_call_output" | "custom_tool_call_output" => {
                let call_id = item["call_id"].as_str().unwrap_or_default();
                if !call_ids.contains(call_id) {
                    return Err(ApiError::bad_request(format!(
                        "{}: {kind} call_id {call_id:?} matches no call earlier in the \
                         conversation (send the call item too, or use previous_response_id)",
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
            // An image the model made goes back as its own inline data, so it can edit it.
            "image_generation_call" => {
                if let Some(data) = item["result"].as_str().filter(|d| !d.is_empty()) {
                    let format = item["output_format"].as_str().unwrap_or("png");
                    out.push(Message {
                        role: "assistant".to_owned(),
                        images: Some(vec![ImageOutput::from_base64(
                            &format!("image/{format}"),
                            data,
                        )]),
                        ..Message::default()
                    });
                }
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

/// Function tools as chat tools (`namespace` groups flattened, `custom` tools as functions of
/// one `input` string), whether Google Search was asked for, and the names to map calls back.
fn tools_of(tools: &[Value]) -> Result<(Vec<Tool>, bool, ToolMap), ApiError> {
    let mut out = Vec::new();
    let mut search = false;
    let mut map = ToolMap::default();
    for (i, t) in tools.iter().enumerate() {
        let kind = t["type"].as_str().unwrap_or("function");
        match kind {
            "function" | "custom" => out.push(tool_of(t, None, &mut map, &format!("tools[{i}]"))?),
            "namespace" => {
                let ns = t["name"].as_str().unwrap_or_default();
                if ns.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "tools[{i}].name is required"
                    )));
                }
                for (j, inner) in t["tools"].as_array().into_iter().flatten().enumerate() {
                    let at = format!("tools[{i}].tools[{j}]");
                    match inner["type"].as_str().unwrap_or("function") {
                        "function" | "custom" => out.push(tool_of(inner, Some(ns), &mut map, &at)?),
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "{at}.type {other:?} is not supported in a namespace; use \
                                 \"function\" or \"custom\""
                            )));
                        }
                    }
                }
            }
            // `external_web_access: false` asks for no live search: Google Search is live.
            k if k.starts_with("web_search") => {
                search |= t["external_web_access"].as_bool() != Some(false);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}].type {other:?} is not supported; use \"function\", \"custom\", \
                     \"namespace\" or \"web_search\" (Gemini's Google Search)"
                )));
            }
        }
    }
    Ok((out, search, map))
}

/// One function or custom tool as a chat function tool.
fn tool_of(
    t: &Value,
    namespace: Option<&str>,
    map: &mut ToolMap,
    at: &str,
) -> Result<Tool, ApiError> {
    // Responses function tools are flat; accept the chat shape too.
    let f = t.get("function").filter(|f| f.is_object()).unwrap_or(t);
    let name = f["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::bad_request(format!("{at}.name is required")));
    }
    let custom = t["type"] == "custom";
    let gemini_name = ToolMap::gemini_name(namespace, name);
    if custom || namespace.is_some() {
        map.0.insert(
            gemini_name.clone(),
            ClientTool {
                name: name.to_owned(),
                namespace: namespace.map(str::to_owned),
                custom,
            },
        );
    }
    let mut description = f["description"].as_str().map(str::to_owned);
    let parameters = if custom {
        // A custom tool takes free text; a grammar it names goes into the description.
        if let Some(definition) = t["format"]["definition"].as_str() {
            let syntax = t["format"]["syntax"].as_str().unwrap_or("grammar");
            let d = description.get_or_insert_with(String::new);
            d.push_str(&format!(
                "\n\nThe `input` is free text that follows this {syntax} grammar:\n{definition}"
            ));
        }
        Some(
            json!({"type": "object", "properties": {"input": {"type": "string",
            "description": "The tool's free-text input."}}, "required": ["input"]}),
        )
    } else {
        f.get("parameters").filter(|p| p.is_object()).cloned()
    };
    Ok(Tool {
        kind: "function".to_owned(),
        function: FunctionDef {
            name: gemini_name,
            description,
            parameters,
            strict: f["strict"].as_bool(),
        },
    })
}

/// `tool_choice` in the chat front's terms: a named function or custom tool by its Gemini
/// name, `allowed_tools` by its mode; a hosted tool's choice (web search) is `auto`.
fn tool_choice(choice: Value) -> Option<Value> {
    let o = match &choice {
        Value::String(_) => return Some(choice),
        Value::Object(o) => o,
        _ => return None,
    };
    match o.get("type").and_then(Value::as_str) {
        Some("function" | "custom") => {
            let name = o.get("name").and_then(Value::as_str)?;
            let namespace = o.get("namespace").and_then(Value::as_str);
            Some(json!({"type": "function", "name": ToolMap::gemini_name(namespace, name)}))
        }
        Some("allowed_tools") => Some(json!(
            o.get("mode").and_then(Value::as_str).unwrap_or("auto")
        )),
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
