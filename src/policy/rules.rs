//! The built-in rules: model aliases, search models, the allow list, prompt injection, safety
//! override, thinking defaults, hidden thoughts and code execution.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::rule::{Call, CallKind, ListedModel, Rewrite, Rule};
use crate::error::ApiError;
use crate::gemini::strip_models_prefix;

/// The key a client used for a field: Google's JSON parser accepts both `camelCase` and
/// `snake_case`, so a rule edits whichever the client sent (camelCase when neither).
fn key_of<'a>(map: &Map<String, Value>, camel: &'a str, snake: &'a str) -> &'a str {
    if !map.contains_key(camel) && map.contains_key(snake) {
        snake
    } else {
        camel
    }
}

fn get<'m>(map: &'m Map<String, Value>, camel: &str, snake: &str) -> Option<&'m Value> {
    map.get(camel).or_else(|| map.get(snake))
}

/// Whether any tool object of the request has one of these keys.
fn has_tool(request: &Map<String, Value>, keys: &[&str]) -> bool {
    get(request, "tools", "tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| {
            tools.iter().any(|t| {
                keys.iter()
                    .any(|k| t.get(*k).is_some_and(|v| !is_empty_list(v)))
            })
        })
}

fn is_empty_list(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty) || v.is_null()
}

/// Appends a tool object to `tools` (creating the list). Leaves a `tools` that is not a list
/// alone: upstream answers that request with its own 400.
fn add_tool(call: &mut Call, tool: Value) {
    let Some(request) = call.request() else {
        return;
    };
    let key = key_of(request, "tools", "tools");
    if request
        .get(key)
        .is_some_and(|t| !t.is_array() && !t.is_null())
    {
        return;
    }
    if let Some(request) = call.request_mut() {
        let tools = request
            .entry(key)
            .and_modify(|t| {
                if t.is_null() {
                    *t = Value::Array(Vec::new());
                }
            })
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = tools.as_array_mut() {
            list.push(tool);
        }
    }
}

/// Inserts `extra` entries after the entry they were made from, keeping the list order.
fn insert_after(
    models: &mut Vec<ListedModel>,
    mut make: impl FnMut(&ListedModel) -> Vec<ListedModel>,
) {
    let mut out = Vec::with_capacity(models.len());
    for m in models.drain(..) {
        let extra = make(&m);
        out.push(m);
        out.extend(extra);
    }
    *models = out;
}

// === ModelAliases ===

/// Renames models: a client asking for an alias (`gpt-4o`) is served by its target
/// (`gemini-2.5-pro`), path and all. Aliases are listed in `GET /v1beta/models` right after
/// their target. Env: `MODEL_ALIASES`.
#[derive(Clone, Debug, Default)]
pub struct ModelAliases {
    aliases: Vec<(String, String)>,
}

impl ModelAliases {
    /// `(alias, target)` pairs; a `models/` prefix is ignored.
    pub fn new<I, A, T>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (A, T)>,
        A: Into<String>,
        T: Into<String>,
    {
        let aliases = pairs
            .into_iter()
            .map(|(a, t)| {
                let (a, t) = (a.into(), t.into());
                (
                    strip_models_prefix(&a).to_owned(),
                    strip_models_prefix(&t).to_owned(),
                )
            })
            .collect();
        Self { aliases }
    }

    /// The target of an alias.
    pub fn target(&self, alias: &str) -> Option<&str> {
        self.aliases
            .iter()
            .find(|(a, _)| a == alias)
            .map(|(_, t)| t.as_str())
    }
}

impl Rule for ModelAliases {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        if call.kind() == CallKind::Embed {
            return Ok(());
        }
        if let Some(target) = self.target(call.model()) {
            let target = target.to_owned();
            call.set_model(target);
        }
        Ok(())
    }

    fn models(&self, models: &mut Vec<ListedModel>) {
        let listed: HashSet<String> = models.iter().map(|m| m.id().to_owned()).collect();
        insert_after(models, |m| {
            self.aliases
                .iter()
                .filter(|(alias, target)| target == m.id() && !listed.contains(alias))
                .map(|(alias, _)| m.alias(alias))
                .collect()
        });
    }
}

// === SearchModels ===

/// Marks a call that came in through a `-search` alias.
#[derive(Clone, Copy, Debug)]
struct SearchAlias;

/// Search models: `<model>-search` (for a listed model) goes upstream as `<model>` with the
/// `googleSearch` tool added, and is listed next to `<model>`. With links on, the grounding
/// sources of such an answer are appended as a short markdown list, in streams once at the
/// end. Env: `MODEL_SEARCH`, `SHOW_SEARCH_LINK`.
#[derive(Clone, Debug, Default)]
pub struct SearchModels {
    models: Vec<String>,
    show_links: bool,
}

/// The suffix of a search alias.
pub(crate) const SEARCH_SUFFIX: &str = "-search";

impl SearchModels {
    /// Search aliases for these models (a trailing `-search` or `models/` is ignored).
    pub fn new<I, S>(models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let models = models
            .into_iter()
            .map(|m| {
                let m = m.into();
                let m = strip_models_prefix(&m);
                m.strip_suffix(SEARCH_SUFFIX).unwrap_or(m).to_owned()
            })
            .collect();
        Self {
            models,
            show_links: false,
        }
    }

    /// Append the grounding sources to search answers (default off).
    pub fn show_links(mut self, on: bool) -> Self {
        self.show_links = on;
        self
    }

    fn is_search_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

impl Rule for SearchModels {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        if call.kind() == CallKind::Embed {
            return Ok(());
        }
        let Some(base) = call.model().strip_suffix(SEARCH_SUFFIX) else {
            return Ok(());
        };
        if !self.is_search_model(base) {
            return Ok(());
        }
        let base = base.to_owned();
        call.set_model(base);
        call.extensions_mut().insert(SearchAlias);
        let has_search = call.request().is_some_and(|r| {
            has_tool(
                r,
                &[
                    "googleSearch",
                    "google_search",
                    "googleSearchRetrieval",
                    "google_search_retrieval",
                ],
            )
        });
        if !has_search {
            add_tool(call, json!({ "googleSearch": {} }));
        }
        Ok(())
    }

    fn response(&self, call: &Call) -> Option<Box<dyn Rewrite>> {
        (self.show_links && call.extensions().get::<SearchAlias>().is_some())
            .then(|| Box::new(SearchLinks::default()) as Box<dyn Rewrite>)
    }

    fn models(&self, models: &mut Vec<ListedModel>) {
        let listed: HashSet<String> = models.iter().map(|m| m.id().to_owned()).collect();
        insert_after(models, |m| {
            let alias = format!("{}{SEARCH_SUFFIX}", m.id());
            if m.id() != m.target || !self.is_search_model(m.id()) || listed.contains(&alias) {
                return Vec::new();
            }
            let mut entry = m.alias(&alias);
            if let Some(name) = entry.value.get_mut("displayName") {
                if let Some(s) = name.as_str() {
                    *name = Value::String(format!("{s} with Google Search"));
                }
            }
            vec![entry]
        });
    }
}

/// Collects the grounding sources of an answer and appends them once, as markdown.
#[derive(Debug, Default)]
pub(crate) struct SearchLinks {
    sources: Vec<(String, String)>,
    seen: HashSet<String>,
    emitted: bool,
    failed: bool,
}

impl SearchLinks {
    fn collect(&mut self, candidate: &Value) {
        let chunks = candidate
            .pointer("/groundingMetadata/groundingChunks")
            .and_then(Value::as_array);
        for web in chunks.into_iter().flatten().filter_map(|c| c.get("web")) {
            let Some(uri) = web.get("uri").and_then(Value::as_str) else {
                continue;
            };
            if self.seen.insert(uri.to_owned()) {
                let title = web
                    .get("title")
                    .and_then(Value::as_str)
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or(uri);
                self.sources.push((title.to_owned(), uri.to_owned()));
            }
        }
    }

    fn markdown(&self) -> String {
        let mut out = String::from("\n\n**Sources**\n");
        for (i, (title, uri)) in self.sources.iter().enumerate() {
            let title: String = title
                .chars()
                .map(|c| match c {
                    '[' => '(',
                    ']' => ')',
                    '\n' | '\r' => ' ',
                    c => c,
                })
                .collect();
            let uri = uri.replace(' ', "%20").replace(')', "%29");
            out.push_str(&format!("{}. [{title}]({uri})\n", i + 1));
        }
        out
    }
}

/// The parts list of `candidate.content`, created when missing.
fn parts_mut(candidate: &mut Value) -> Option<&mut Vec<Value>> {
    let obj = candidate.as_object_mut()?;
    let content = obj
        .entry("content")
        .or_insert_with(|| json!({ "role": "model" }));
    let content = content.as_object_mut()?;
    content
        .entry("parts")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
}

impl Rewrite for SearchLinks {
    fn chunk(&mut self, chunk: &mut Value) -> bool {
        if chunk.get("error").is_some() {
            self.failed = true;
            return true;
        }
        let Some(candidate) = chunk.pointer_mut("/candidates/0") else {
            return true;
        };
        self.collect(candidate);
        let finished = candidate.get("finishReason").is_some();
        if finished && !self.emitted && !self.sources.is_empty() {
            let text = self.markdown();
            if let Some(parts) = parts_mut(candidate) {
                parts.push(json!({ "text": text }));
                self.emitted = true;
            }
        }
        true
    }

    fn finish(&mut self) -> Option<Value> {
        if self.emitted || self.failed || self.sources.is_empty() {
            return None;
        }
        self.emitted = true;
        Some(json!({
            "candidates": [{
                "content": { "role": "model", "parts": [{ "text": self.markdown() }] },
                "index": 0,
            }]
        }))
    }
}

// === AllowedModels ===

/// The allow list: a request for any other model is refused with 403 before any upstream
/// call, and the models list shows only allowed models. A model is allowed when the name the
/// client used or the model it resolves to (after aliases) is listed. Env: `ALLOWED_MODELS`.
#[derive(Clone, Debug, Default)]
pub struct AllowedModels {
    models: Vec<String>,
}

impl AllowedModels {
    /// Allows these models (a `models/` prefix is ignored).
    pub fn new<I, S>(models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let models = models
            .into_iter()
            .map(|m| strip_models_prefix(&m.into()).to_owned())
            .collect();
        Self { models }
    }

    /// Whether a model id is listed.
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

impl Rule for AllowedModels {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        if call.kind() == CallKind::ListModels
            || self.allows(call.requested_model())
            || self.allows(call.model())
        {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "model `{}` is not allowed on this gateway; allowed models: {}",
            call.requested_model(),
            self.models.join(", ")
        )))
    }

    fn models(&self, models: &mut Vec<ListedModel>) {
        models.retain(|m| self.allows(m.id()) || self.allows(&m.target));
    }
}

// === PromptInjection ===

/// Where [`PromptInjection`] puts its text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InjectPosition {
    /// A part of `systemInstruction`, before the client's own system text (`system`).
    #[default]
    System,
    /// Before the text of the first user turn, joined with a blank line (`user_prefix`).
    UserPrefix,
    /// After the text of the last user turn, joined with a blank line (`user_suffix`).
    UserSuffix,
}

impl InjectPosition {
    /// Parses `system`, `user_prefix` or `user_suffix` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "system" => Some(Self::System),
            "user_prefix" => Some(Self::UserPrefix),
            "user_suffix" => Some(Self::UserSuffix),
            _ => None,
        }
    }
}

/// Adds a house prompt to every request: to the system instruction (beside the client's),
/// or to the first / last user turn. Env: `INJECT_PROMPT`, `INJECT_PROMPT_POSITION`.
#[derive(Clone, Debug)]
pub struct PromptInjection {
    text: String,
    position: InjectPosition,
}

/// What joins an injected text to a user turn's text.
const JOIN: &str = "\n\n";

impl PromptInjection {
    /// Injects `text` at `position`.
    pub fn new(text: impl Into<String>, position: InjectPosition) -> Self {
        Self {
            text: text.into(),
            position,
        }
    }

    fn system(&self, request: &mut Map<String, Value>) {
        let key = key_of(request, "systemInstruction", "system_instruction");
        let part = json!({ "text": self.text });
        match request.get_mut(key) {
            None | Some(Value::Null) => {
                request.insert(key.to_owned(), json!({ "parts": [part] }));
            }
            Some(Value::Object(si)) => match si.get_mut("parts") {
                Some(Value::Array(parts)) => parts.insert(0, part),
                None | Some(Value::Null) => {
                    si.insert("parts".into(), json!([part]));
                }
                Some(_) => {}
            },
            Some(_) => {}
        }
    }

    fn user(&self, request: &mut Map<String, Value>, prefix: bool) {
        let Some(contents) = request.get_mut("contents").and_then(Value::as_array_mut) else {
            return;
        };
        let is_user = |c: &Value| {
            c.get("role")
                .and_then(Value::as_str)
                .is_none_or(|r| r == "user")
        };
        let turn = if prefix {
            contents.iter_mut().find(|c| is_user(c))
        } else {
            contents.iter_mut().rev().find(|c| is_user(c))
        };
        let Some(parts) = turn
            .and_then(|t| t.get_mut("parts"))
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        let is_text = |p: &Value| {
            p.get("text").is_some_and(Value::is_string)
                && p.get("thought").and_then(Value::as_bool) != Some(true)
        };
        let target = if prefix {
            parts.iter_mut().find(|p| is_text(p))
        } else {
            parts.iter_mut().rev().find(|p| is_text(p))
        };
        match target.and_then(|p| p.get_mut("text")) {
            Some(Value::String(text)) => {
                *text = if prefix {
                    format!("{}{JOIN}{text}", self.text)
                } else {
                    format!("{text}{JOIN}{}", self.text)
                };
            }
            _ => {
                let part = json!({ "text": self.text });
                if prefix {
                    parts.insert(0, part);
                } else {
                    parts.push(part);
                }
            }
        }
    }
}

impl Rule for PromptInjection {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        if self.text.is_empty() {
            return Ok(());
        }
        if self.position != InjectPosition::System {
            // Only touch the body when there is a user turn with parts to change.
            let has_turn = call
                .request()
                .and_then(|r| r.get("contents"))
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty());
            if !has_turn {
                return Ok(());
            }
        }
        if let Some(request) = call.request_mut() {
            match self.position {
                InjectPosition::System => self.system(request),
                InjectPosition::UserPrefix => self.user(request, true),
                InjectPosition::UserSuffix => self.user(request, false),
            }
        }
        Ok(())
    }
}

// === SafetyOverride ===

/// The harm categories Gemini's text models accept.
pub(crate) const HARM_CATEGORIES: &[&str] = &[
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_CIVIC_INTEGRITY",
];

/// Sets every harm category to a threshold, except the categories the client set itself
/// (each keeps exactly the client's entry). Env: `DISABLE_SAFETY_FILTERING=true`.
#[derive(Clone, Debug)]
pub struct SafetyOverride {
    threshold: Option<String>,
    categories: Vec<String>,
}

impl SafetyOverride {
    /// Filtering off: `OFF` for every category, `BLOCK_NONE` where a model does not accept
    /// `OFF` (Gemini 1.x and `gemini-pro`, and the civic-integrity category everywhere).
    pub fn disable_all() -> Self {
        Self {
            threshold: None,
            categories: HARM_CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    /// One threshold (e.g. `BLOCK_ONLY_HIGH`) for every category.
    pub fn threshold(threshold: impl Into<String>) -> Self {
        Self {
            threshold: Some(threshold.into()),
            ..Self::disable_all()
        }
    }

    /// The categories to set (default: every category Gemini's text models accept,
    /// `HARM_CATEGORY_HARASSMENT`, `_HATE_SPEECH`, `_SEXUALLY_EXPLICIT`, `_DANGEROUS_CONTENT`
    /// and `_CIVIC_INTEGRITY`).
    pub fn categories<I, S>(mut self, categories: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.categories = categories.into_iter().map(Into::into).collect();
        self
    }

    /// The threshold set for a category on a model.
    pub fn threshold_for(&self, model: &str, category: &str) -> String {
        if let Some(t) = &self.threshold {
            return t.clone();
        }
        let old = model.starts_with("gemini-1.") || model.starts_with("gemini-pro");
        if old || category == "HARM_CATEGORY_CIVIC_INTEGRITY" {
            "BLOCK_NONE".to_owned()
        } else {
            "OFF".to_owned()
        }
    }
}

impl Rule for SafetyOverride {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        let Some(request) = call.request() else {
            return Ok(());
        };
        let key = key_of(request, "safetySettings", "safety_settings");
        let client: HashSet<String> = match request.get(key) {
            None | Some(Value::Null) => HashSet::new(),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|s| s.get("category").and_then(Value::as_str))
                .map(str::to_owned)
                .collect(),
            // Not a list: upstream answers with its own 400.
            Some(_) => return Ok(()),
        };
        let missing: Vec<Value> = self
            .categories
            .iter()
            .filter(|c| !client.contains(*c))
            .map(|c| json!({ "category": c, "threshold": self.threshold_for(call.model(), c) }))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if let Some(request) = call.request_mut() {
            let list = request
                .entry(key)
                .and_modify(|v| {
                    if v.is_null() {
                        *v = Value::Array(Vec::new());
                    }
                })
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.extend(missing);
            }
        }
        Ok(())
    }
}

// === ThinkingDefaults ===

/// A default `generationConfig.thinkingConfig` for requests that carry none: a client's own
/// thinking config always wins. Env: `THINKING_BUDGET`, `THINKING_MODELS`,
/// `SHOW_THINKING_PROCESS=true` (adds `includeThoughts`).
#[derive(Clone, Debug, Default)]
pub struct ThinkingDefaults {
    budget: Option<i32>,
    models: Vec<String>,
    per_model: HashMap<String, i32>,
    include_thoughts: Option<bool>,
}

impl ThinkingDefaults {
    /// `budget` (`-1` dynamic, `0` off, else tokens) for every model, until
    /// [`models`](Self::models) narrows it.
    pub fn new(budget: i32) -> Self {
        Self {
            budget: Some(budget),
            ..Self::default()
        }
    }

    /// No default budget: only [`model_budget`](Self::model_budget) entries and
    /// [`include_thoughts`](Self::include_thoughts) apply.
    pub fn none() -> Self {
        Self::default()
    }

    /// Applies the default budget to these models only (default: every model).
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models
            .into_iter()
            .map(|m| strip_models_prefix(&m.into()).to_owned())
            .collect();
        self
    }

    /// A budget for one model (wins over the default budget and the model list).
    pub fn model_budget(mut self, model: impl Into<String>, budget: i32) -> Self {
        self.per_model
            .insert(strip_models_prefix(&model.into()).to_owned(), budget);
        self
    }

    /// Sets `includeThoughts` in the default config (default: not set).
    pub fn include_thoughts(mut self, include: impl Into<Option<bool>>) -> Self {
        self.include_thoughts = include.into();
        self
    }

    /// The default config for a model, if it gets one.
    pub fn config_for(&self, model: &str) -> Option<Value> {
        let listed = self.models.is_empty() || self.models.iter().any(|m| m == model);
        let budget = self
            .per_model
            .get(model)
            .copied()
            .or(self.budget.filter(|_| listed));
        let include = self.include_thoughts.filter(|_| budget.is_some() || listed);
        let mut config = Map::new();
        // What the model accepts: a level it offers (Gemini 3), a budget in its range (2.5).
        let kind = crate::gemini::ThinkingKind::for_model(model);
        match budget {
            Some(b) if matches!(kind, crate::gemini::ThinkingKind::Levels { .. }) => {
                if let Some(level) = kind.level_for_budget(b) {
                    config.insert("thinkingLevel".into(), level.as_str().into());
                }
            }
            Some(b) => {
                let b = kind.clamp_budget(b).unwrap_or(b);
                config.insert("thinkingBudget".into(), b.into());
            }
            None => {}
        }
        if let Some(i) = include {
            config.insert("includeThoughts".into(), i.into());
        }
        (!config.is_empty()).then_some(Value::Object(config))
    }
}

impl Rule for ThinkingDefaults {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        if !call.kind().is_generate() {
            return Ok(());
        }
        let Some(request) = call.request() else {
            return Ok(());
        };
        let gc_key = key_of(request, "generationConfig", "generation_config");
        let tc_key = match request.get(gc_key) {
            None | Some(Value::Null) => "thinkingConfig",
            Some(Value::Object(gc)) => {
                if get(gc, "thinkingConfig", "thinking_config").is_some_and(|v| !v.is_null()) {
                    return Ok(()); // the client's own config wins
                }
                key_of(gc, "thinkingConfig", "thinking_config")
            }
            Some(_) => return Ok(()),
        };
        let Some(config) = self.config_for(call.model()) else {
            return Ok(());
        };
        if let Some(request) = call.request_mut() {
            let gc = request
                .entry(gc_key)
                .and_modify(|v| {
                    if v.is_null() {
                        *v = Value::Object(Map::new());
                    }
                })
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(gc) = gc.as_object_mut() {
                gc.insert(tc_key.to_owned(), config);
            }
        }
        Ok(())
    }
}

// === HideThoughts ===

/// Strips thought parts (`"thought": true`) from answers, streams included, so no thinking
/// text reaches the client. `usageMetadata` is left as upstream sent it (the thinking still
/// happened and counts). A thought part that carries a `thoughtSignature` becomes an empty
/// text part with that signature, so tool conversations keep working. Env:
/// `SHOW_THINKING_PROCESS=false`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HideThoughts;

impl Rule for HideThoughts {
    fn response(&self, _call: &Call) -> Option<Box<dyn Rewrite>> {
        Some(Box::new(StripThoughts))
    }
}

#[derive(Debug)]
pub(crate) struct StripThoughts;

impl Rewrite for StripThoughts {
    fn chunk(&mut self, chunk: &mut Value) -> bool {
        let Some(candidates) = chunk.get_mut("candidates").and_then(Value::as_array_mut) else {
            return true;
        };
        let mut changed = false;
        for candidate in candidates.iter_mut() {
            let Some(content) = candidate.get_mut("content").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(parts) = content.get_mut("parts").and_then(Value::as_array_mut) else {
                continue;
            };
            let before = parts.len();
            let mut out = Vec::with_capacity(before);
            for part in parts.drain(..) {
                if part.get("thought").and_then(Value::as_bool) != Some(true) {
                    out.push(part);
                    continue;
                }
                changed = true;
                let signature = part
                    .get("thoughtSignature")
                    .or_else(|| part.get("thought_signature"))
                    .cloned();
                if let Some(sig) = signature {
                    out.push(json!({ "text": "", "thoughtSignature": sig }));
                }
            }
            *parts = out;
            if parts.is_empty() && before > 0 {
                content.remove("parts");
            }
        }
        !(changed && is_empty_chunk(chunk))
    }
}

/// A chunk with nothing for the client: no usage, feedback or error, and candidates with no
/// parts and nothing but an index.
fn is_empty_chunk(chunk: &Value) -> bool {
    let Some(obj) = chunk.as_object() else {
        return false;
    };
    let top_ok = obj
        .keys()
        .all(|k| matches!(k.as_str(), "candidates" | "modelVersion" | "responseId"));
    let candidates_empty = obj
        .get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().all(|c| {
                c.as_object().is_some_and(|c| {
                    c.iter().all(|(k, v)| match k.as_str() {
                        "index" => true,
                        "content" => v
                            .get("parts")
                            .and_then(Value::as_array)
                            .is_none_or(Vec::is_empty),
                        _ => false,
                    })
                })
            })
        });
    top_ok && candidates_empty
}

// === CodeExecution ===

/// Adds the `codeExecution` tool to requests without function declarations (Gemini rejects
/// the mix, so a request with declarations keeps its tools unchanged). Env:
/// `TOOLS_CODE_EXECUTION_ENABLED=true`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CodeExecution;

impl Rule for CodeExecution {
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        let skip = call.request().is_none_or(|r| {
            has_tool(
                r,
                &[
                    "functionDeclarations",
                    "function_declarations",
                    "codeExecution",
                    "code_execution",
                ],
            )
        });
        if !skip {
            add_tool(call, json!({ "codeExecution": {} }));
        }
        Ok(())
    }
}
