//! OpenAI chat requests → Gemini `generateContent` requests.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::types::{
    ChatCompletionRequest, ContentPart, ImageGenerationRequest, Message, MessageContent,
    ResponseFormat, Tool, ToolCall,
};
use crate::error::ApiError;
use crate::gemini::{
    Content, FileData, FunctionCallingConfig, FunctionDeclaration, GenerateContentRequest,
    GenerationConfig, Part, ThinkingConfig, ThinkingKind, ThinkingLevel, Tool as GeminiTool,
    ToolConfig,
};

pub(crate) use crate::translate::SKIP_THOUGHT_SIGNATURE;
use crate::translate::media::{self, url_part};
use crate::translate::schema::clean_schema;

// === Options ===

/// Thinking budgets (tokens) for `reasoning_effort` on Gemini 2.5 models.
///
/// The defaults follow Google's own OpenAI-compatible endpoint: `none` → 0 (off where the
/// model allows it), `minimal` and `low` → 1,024, `medium` → 8,192, `high` → 24,576, each moved
/// into the model's range ([`ThinkingKind`](crate::gemini::ThinkingKind): 2.5 Pro never off, at
/// least 128). Gemini 3 models take a `thinkingLevel` instead: the level of the same name when
/// the model offers it, else the nearest offered one above (else its highest); `none` is the
/// model's lowest level without thoughts shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasoningBudgets {
    /// Budget for `none`.
    pub none: i32,
    /// Budget for `minimal`.
    pub minimal: i32,
    /// Budget for `low`.
    pub low: i32,
    /// Budget for `medium`.
    pub medium: i32,
    /// Budget for `high`.
    pub high: i32,
}

impl Default for ReasoningBudgets {
    fn default() -> Self {
        Self {
            none: 0,
            minimal: 1024,
            low: 1024,
            medium: 8192,
            high: 24576,
        }
    }
}

/// How requests and answers are translated; shared by the layer and the public functions.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    pub(crate) budgets: ReasoningBudgets,
    pub(crate) signature_in_id: bool,
    pub(crate) served_model: Option<String>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            budgets: ReasoningBudgets::default(),
            signature_in_id: true,
            served_model: None,
        }
    }
}

impl TranslateOptions {
    /// The defaults: Google's reasoning budgets, signatures in tool call ids.
    pub fn new() -> Self {
        Self::default()
    }

    /// Thinking budgets for `reasoning_effort` (default [`ReasoningBudgets::default`]).
    pub fn reasoning_budgets(mut self, budgets: ReasoningBudgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// Whether answers encode a call's thought signature into its tool call id
    /// (`call_<id>__thought__<sig>`) besides `extra_content.google.thought_signature`
    /// (default `true`). The id survives clients that drop unknown fields, so a tool round
    /// trip on a thinking model sends the signature back; turn it off for clients that limit
    /// id length. Both carriers are always accepted back.
    pub fn signature_in_tool_call_id(mut self, yes: bool) -> Self {
        self.signature_in_id = yes;
        self
    }

    /// The model that will serve the request when it differs from the name the client sent
    /// (an alias a layer below resolves): thinking levels and budgets, thought-signature rules
    /// and tool mixes follow it, while the request keeps the client's name.
    pub fn served_by(mut self, model: impl Into<String>) -> Self {
        self.served_model = Some(model.into());
        self
    }

    /// The model that decides the per-model parts of a translation of a request for `model`.
    pub(crate) fn served<'a>(&'a self, model: &'a str) -> &'a str {
        self.served_model.as_deref().unwrap_or(model)
    }
}

// === Translation ===

pub(crate) use crate::translate::model_id;

/// Translates an OpenAI chat request into a Gemini `generateContent` request body.
///
/// The model goes in the path, not the body. Errors are 400s that say which field cannot be
/// expressed for Gemini.
pub fn to_gemini_request(
    req: &ChatCompletionRequest,
    options: &TranslateOptions,
) -> Result<GenerateContentRequest, ApiError> {
    let model = model_id(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty"));
    }
    let mut out = GenerateContentRequest::default();
    let served = options.served(model);
    let (system, contents) = convert_messages(&req.messages, served)?;
    if contents.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` needs at least one user or assistant message besides system messages",
        ));
    }
    out.contents = contents;
    if !system.is_empty() {
        out.system_instruction = Some(Content {
            role: None,
            parts: system,
            extra: Map::new(),
        });
    }
    if let Some(tools) = &req.tools {
        let declarations = tools
            .iter()
            .enumerate()
            .map(|(i, t)| declaration(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        if !declarations.is_empty() {
            out.tools = vec![GeminiTool::functions(declarations)];
        }
    }
    if let Some(choice) = &req.tool_choice
        && !out.tools.is_empty()
    {
        out.tool_config = Some(tool_config(choice, req.tools.as_deref().unwrap_or(&[]))?);
    }
    let config = generation_config(req, served, options)?;
    if config != GenerationConfig::default() {
        out.generation_config = Some(config);
    }
    Ok(out)
}

fn convert_messages(
    messages: &[Message],
    model: &str,
) -> Result<(Vec<Part>, Vec<Content>), ApiError> {
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    // Tool call id → function name, for `tool` messages.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    let needs_signatures = crate::gemini::is_gemini_3(model);
    for (i, m) in messages.iter().enumerate() {
        let (role, parts) = match m.role.as_str() {
            "system" | "developer" => {
                system.extend(parts_of(m.content.as_ref(), i, true)?);
                continue;
            }
            "user" => ("user", parts_of(m.content.as_ref(), i, false)?),
            "assistant" => {
                let mut parts = parts_of(m.content.as_ref(), i, true)?;
                // Images the model made earlier go back as its own inline data.
                for (j, image) in m.images.iter().flatten().enumerate() {
                    let part = url_part(&image.image_url.url, "image/png").map_err(|why| {
                        ApiError::bad_request(format!("messages[{i}].images[{j}].image_url: {why}"))
                    })?;
                    parts.push(part);
                }
                let calls = m.tool_calls.as_deref().unwrap_or_default();
                for (j, call) in calls.iter().enumerate() {
                    call_names.insert(call.id.as_str(), call.function.name.as_str());
                    parts.push(call_part(call, i, j)?);
                }
                if needs_signatures
                    && !calls.is_empty()
                    && parts.iter().all(|p| p.thought_signature.is_none())
                    && let Some(first) = parts.iter_mut().find(|p| p.function_call.is_some())
                {
                    first.thought_signature = Some(SKIP_THOUGHT_SIGNATURE.to_owned());
                }
                ("model", parts)
            }
            "tool" | "function" => {
                let name = match (m.role.as_str(), m.tool_call_id.as_deref()) {
                    ("tool", Some(id)) => call_names
                        .get(id)
                        .copied()
                        .or(m.name.as_deref())
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "messages[{i}].tool_call_id {id:?} matches no tool call of an \
                                 earlier assistant message"
                            ))
                        })?,
                    _ => m.name.as_deref().ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "messages[{i}] ({}) needs a `tool_call_id` (or a `name`)",
                            m.role
                        ))
                    })?,
                };
                let text = text_of(m.content.as_ref(), i)?;
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    Ok(other) if !text.trim().is_empty() => json!({ "result": other }),
                    _ => json!({ "result": text }),
                };
                ("user", vec![Part::function_response(name, response)])
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].role {other:?} is not one of system, developer, user, \
                     assistant, tool"
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
    Ok((system, contents))
}

/// The text of a message whose content must be text (tool results).
fn text_of(content: Option<&MessageContent>, i: usize) -> Result<String, ApiError> {
    Ok(match content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(format!(
                            "messages[{i}]: a tool result can only hold text, not {kind:?}"
                        )));
                    }
                }
            }
            out
        }
    })
}

fn parts_of(
    content: Option<&MessageContent>,
    i: usize,
    text_only: bool,
) -> Result<Vec<Part>, ApiError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![Part::text(t.clone())]),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .enumerate()
            .filter_map(|(j, p)| content_part(p, i, j, text_only).transpose())
            .collect(),
    }
}

fn content_part(
    p: &ContentPart,
    i: usize,
    j: usize,
    text_only: bool,
) -> Result<Option<Part>, ApiError> {
    let at = || format!("messages[{i}].content[{j}]");
    let missing = |field: &str| ApiError::bad_request(format!("{}: `{field}` is required", at()));
    let part = match p.kind.as_str() {
        "text" | "refusal" | "input_text" | "output_text" => {
            let text = p.text.as_deref().unwrap_or_default();
            if text.is_empty() {
                return Ok(None);
            }
            Part::text(text)
        }
        kind if text_only => {
            return Err(ApiError::bad_request(format!(
                "{}: a system or assistant message can only hold text, not {kind:?}",
                at()
            )));
        }
        "image_url" => {
            let url = match &p.image_url {
                Some(Value::String(s)) => s.as_str(),
                Some(v) => v["url"].as_str().ok_or_else(|| missing("image_url.url"))?,
                None => return Err(missing("image_url")),
            };
            url_part(url, "image/jpeg")
                .map_err(|why| ApiError::bad_request(format!("{}: image_url: {why}", at())))?
        }
        "input_audio" => {
            let audio = p
                .input_audio
                .as_ref()
                .ok_or_else(|| missing("input_audio"))?;
            let data = audio["data"]
                .as_str()
                .ok_or_else(|| missing("input_audio.data"))?;
            let format = audio["format"].as_str().unwrap_or("wav");
            media::inline(format!("audio/{format}"), data.to_owned())
        }
        "file" => {
            let file = p.file.as_ref().ok_or_else(|| missing("file"))?;
            let filename = file["filename"].as_str().unwrap_or_default();
            let fallback = media::mime_of_name(filename).unwrap_or("application/pdf");
            if let Some(data) = file["file_data"].as_str() {
                if data.starts_with("data:") {
                    url_part(data, fallback).map_err(|why| {
                        ApiError::bad_request(format!("{}: file.file_data: {why}", at()))
                    })?
                } else {
                    media::inline(fallback.to_owned(), data.to_owned())
                }
            } else if let Some(id) = file["file_id"].as_str() {
                Part {
                    file_data: Some(FileData {
                        mime_type: media::mime_of_name(filename).map(str::to_owned),
                        file_uri: id.to_owned(),
                        extra: Map::new(),
                    }),
                    ..Part::default()
                }
            } else {
                return Err(missing("file.file_data` or `file.file_id"));
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "{}: content part type {other:?} is not supported (use text, image_url, \
                 input_audio or file)",
                at()
            )));
        }
    };
    Ok(Some(part))
}

/// A `functionCall` part for an assistant tool call, with its thought signature.
fn call_part(call: &ToolCall, i: usize, j: usize) -> Result<Part, ApiError> {
    if call.function.name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "messages[{i}].tool_calls[{j}].function.name is required"
        )));
    }
    let args = if call.function.arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str::<Value>(&call.function.arguments).map_err(|e| {
            ApiError::bad_request(format!(
                "messages[{i}].tool_calls[{j}].function.arguments is not valid JSON: {e}"
            ))
        })?
    };
    let mut part = Part::function_call(call.function.name.clone(), args);
    part.thought_signature = signature_of(call);
    Ok(part)
}

/// The thought signature a tool call carries: Google's `extra_content`, else the id suffix.
pub(crate) fn signature_of(call: &ToolCall) -> Option<String> {
    call.extra_content
        .as_ref()
        .and_then(|e| e["google"]["thought_signature"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| crate::translate::signature_in_id(&call.id).map(str::to_owned))
}

fn declaration(i: usize, tool: &Tool) -> Result<FunctionDeclaration, ApiError> {
    if tool.kind != "function" {
        return Err(ApiError::bad_request(format!(
            "tools[{i}].type {:?} is not supported; only \"function\" tools can be sent to Gemini",
            tool.kind
        )));
    }
    let f = &tool.function;
    if f.name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "tools[{i}].function.name is required"
        )));
    }
    Ok(FunctionDeclaration {
        name: f.name.clone(),
        description: f.description.clone().filter(|d| !d.is_empty()),
        parameters_json_schema: f.parameters.as_ref().map(clean_schema),
        ..FunctionDeclaration::default()
    })
}

fn tool_config(choice: &Value, tools: &[Tool]) -> Result<ToolConfig, ApiError> {
    let (mode, names) = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => ("AUTO", Vec::new()),
            "none" => ("NONE", Vec::new()),
            "required" => ("ANY", Vec::new()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "tool_choice {other:?} is not one of auto, none, required or a named function"
                )));
            }
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request("tool_choice names no function (`function.name`)")
                })?;
            if !tools.iter().any(|t| t.function.name == name) {
                return Err(ApiError::bad_request(format!(
                    "tool_choice names {name:?}, which is not among `tools`"
                )));
            }
            ("ANY", vec![name.to_owned()])
        }
        _ => {
            return Err(ApiError::bad_request(
                "tool_choice must be a string or an object",
            ));
        }
    };
    Ok(ToolConfig {
        function_calling_config: Some(FunctionCallingConfig {
            mode: Some(mode.to_owned()),
            allowed_function_names: names,
            extra: Map::new(),
        }),
        extra: Map::new(),
    })
}

fn generation_config(
    req: &ChatCompletionRequest,
    model: &str,
    options: &TranslateOptions,
) -> Result<GenerationConfig, ApiError> {
    let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let mut c = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_completion_tokens.or(req.max_tokens).map(clamp),
        stop_sequences: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        ..GenerationConfig::default()
    };
    match req.n {
        Some(0) => return Err(ApiError::bad_request("`n` must be at least 1")),
        Some(n) if n > 1 => c.candidate_count = Some(clamp(n)),
        _ => {}
    }
    if req.logprobs == Some(true) {
        c.response_logprobs = Some(true);
        c.logprobs = req.top_logprobs.map(clamp);
    }
    if let Some(format) = &req.response_format {
        apply_response_format(&mut c, format)?;
    }
    c.thinking_config = thinking(req, model, options)?;
    Ok(c)
}

fn apply_response_format(
    c: &mut GenerationConfig,
    format: &ResponseFormat,
) -> Result<(), ApiError> {
    match format.kind.as_str() {
        "text" => {}
        "json_object" => c.response_mime_type = Some("application/json".to_owned()),
        "json_schema" => {
            c.response_mime_type = Some("application/json".to_owned());
            c.response_json_schema = format
                .json_schema
                .as_ref()
                .and_then(|s| s.schema.as_ref())
                .map(clean_schema);
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "response_format.type {other:?} is not one of text, json_object, json_schema"
            )));
        }
    }
    Ok(())
}

fn thinking(
    req: &ChatCompletionRequest,
    model: &str,
    options: &TranslateOptions,
) -> Result<Option<ThinkingConfig>, ApiError> {
    // An explicit thinking config (top level, `extra_body.google`, or `google`) wins.
    let explicit = req
        .thinking_config
        .as_ref()
        .or_else(|| {
            req.extra_body
                .as_ref()
                .and_then(|b| b.get("google"))
                .and_then(|g| g.get("thinking_config"))
        })
        .or_else(|| req.google.as_ref().and_then(|g| g.get("thinking_config")));
    if let Some(v) = explicit {
        let Value::Object(o) = v else {
            return Err(ApiError::bad_request("thinking_config must be an object"));
        };
        let mut t = ThinkingConfig::default();
        for (k, v) in o {
            match k.as_str() {
                "thinking_budget" | "thinkingBudget" => {
                    t.thinking_budget = Some(
                        v.as_i64()
                            .and_then(|n| i32::try_from(n).ok())
                            .ok_or_else(|| {
                                ApiError::bad_request("thinking_budget must be an integer")
                            })?,
                    );
                }
                "include_thoughts" | "includeThoughts" => t.include_thoughts = v.as_bool(),
                "thinking_level" | "thinkingLevel" => {
                    t.thinking_level = v.as_str().map(str::to_owned);
                }
                _ => {
                    t.extra.insert(k.clone(), v.clone());
                }
            }
        }
        return Ok(Some(t));
    }
    let Some(effort) = req.reasoning_effort.as_deref() else {
        return Ok(None);
    };
    let b = &options.budgets;
    let budget = match effort {
        "none" => b.none,
        "minimal" => b.minimal,
        "low" => b.low,
        "medium" => b.medium,
        "high" => b.high,
        other => {
            return Err(ApiError::bad_request(format!(
                "reasoning_effort {other:?} is not one of none, minimal, low, medium, high"
            )));
        }
    };
    let mut t = ThinkingConfig::default();
    // Only what the model accepts: a level it offers, a budget in its range.
    match ThinkingKind::for_model(model) {
        kind @ ThinkingKind::Levels { .. } => {
            let wanted = match effort {
                "none" | "minimal" => ThinkingLevel::Minimal,
                "low" => ThinkingLevel::Low,
                "medium" => ThinkingLevel::Medium,
                _ => ThinkingLevel::High,
            };
            let level = kind.nearest_level(wanted).unwrap_or(ThinkingLevel::High);
            t.thinking_level = Some(level.as_str().to_owned());
            t.include_thoughts = Some(effort != "none");
        }
        kind @ ThinkingKind::Budget { .. } => {
            let budget = kind.clamp_budget(budget).unwrap_or(budget);
            t.thinking_budget = Some(budget);
            t.include_thoughts = Some(effort != "none" && budget != 0);
        }
    }
    Ok(Some(t))
}

// === Images ===

/// Aspect ratios Gemini image models take (`imageConfig.aspectRatio`).
const ASPECT_RATIOS: [(u32, u32); 10] = [
    (1, 1),
    (2, 3),
    (3, 2),
    (3, 4),
    (4, 3),
    (4, 5),
    (5, 4),
    (9, 16),
    (16, 9),
    (21, 9),
];

/// The `generateContent` body for an images request (`responseModalities: ["IMAGE"]`, the
/// nearest aspect ratio to `size`), the model, and how many calls to make.
pub(crate) fn to_gemini_image_request(
    req: &ImageGenerationRequest,
) -> Result<(String, Value, u32), ApiError> {
    if req.model.trim().is_empty() {
        return Err(ApiError::bad_request(
            "`model` is required: name a Gemini image model, e.g. gemini-2.5-flash-image",
        ));
    }
    let model = model_id(&req.model)?.to_owned();
    if req.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("`prompt` must not be empty"));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return Err(ApiError::bad_request(format!(
            "`n` is {n}; it must be from 1 to 10"
        )));
    }
    match req.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some("url") => {
            return Err(ApiError::bad_request(
                "response_format `url` is not supported: the gateway hosts no images; use \
                 `b64_json`",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "response_format {other:?} is not one of b64_json, url"
            )));
        }
    }
    let mut config = json!({ "responseModalities": ["IMAGE"] });
    if let Some(ratio) = aspect_ratio(req.size.as_deref())? {
        config["imageConfig"] = json!({ "aspectRatio": ratio });
    }
    let body = json!({
        "contents": [{ "role": "user", "parts": [{ "text": req.prompt }] }],
        "generationConfig": config,
    });
    Ok((model, body, n))
}

/// The Gemini aspect ratio nearest to a `WIDTHxHEIGHT` size; `None` for `auto` or no size.
fn aspect_ratio(size: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(size) = size
        .map(str::trim)
        .filter(|s| !s.eq_ignore_ascii_case("auto"))
    else {
        return Ok(None);
    };
    let parsed = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0);
    let Some((w, h)) = parsed else {
        return Err(ApiError::bad_request(format!(
            "size {size:?} is not WIDTHxHEIGHT (e.g. 1024x1024) or auto"
        )));
    };
    let wanted = f64::from(w) / f64::from(h);
    let distance = |(a, b): (u32, u32)| (f64::from(a) / f64::from(b) / wanted).ln().abs();
    let nearest = ASPECT_RATIOS
        .into_iter()
        .min_by(|x, y| distance(*x).total_cmp(&distance(*y)))
        .unwrap_or((1, 1));
    Ok(Some(format!("{}:{}", nearest.0, nearest.1)))
}
