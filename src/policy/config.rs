//! [`PolicyConfig`]: the policy rules as gateway users configure them, read from a map of
//! environment variables.

use std::collections::HashMap;

use super::layer::RequestPolicyLayer;
use super::rules::{
    AllowedModels, CodeExecution, HideThoughts, InjectPosition, ModelAliases, PromptInjection,
    SafetyOverride, SearchModels, ThinkingDefaults,
};
use crate::error::Error;
use crate::gemini::strip_models_prefix;

/// The default thinking budget: none, or one for every (listed) model, or one per model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ThinkingBudget {
    /// No default budget.
    #[default]
    None,
    /// One budget (`-1` dynamic, `0` off, else tokens).
    All(i32),
    /// A budget per model.
    PerModel(Vec<(String, i32)>),
}

/// The request policy, as the environment variables of a Gemini gateway describe it.
///
/// Every field is off by default; [`from_env`](Self::from_env) reads exactly these variables
/// (an unset or empty variable keeps the default):
///
/// | Variable | Meaning | Default |
/// |---|---|---|
/// | `INJECT_PROMPT` | text added to every generate request | none |
/// | `INJECT_PROMPT_POSITION` | `system`, `user_prefix` or `user_suffix` | `system` |
/// | `DISABLE_SAFETY_FILTERING` | every harm category `OFF` / `BLOCK_NONE` unless the client set it | `false` |
/// | `THINKING_BUDGET` | default `thinkingBudget`: `-1`, `0`, a number, or `model=budget,...` | none |
/// | `THINKING_MODELS` | models the single `THINKING_BUDGET` applies to (empty: all) | all |
/// | `SHOW_THINKING_PROCESS` | `false` strips thought parts from answers; `true` also asks for them (`includeThoughts`) in the default config | thoughts pass as sent |
/// | `MODEL_SEARCH` | models with a `<model>-search` variant (Google Search tool) | none |
/// | `SHOW_SEARCH_LINK` | append grounding sources to search answers | `false` |
/// | `TOOLS_CODE_EXECUTION_ENABLED` | add `codeExecution` to requests without function declarations | `false` |
/// | `MODEL_ALIASES` | `alias=model,...` (or a JSON object) | none |
/// | `ALLOWED_MODELS` | the only models served (403 for others) | all |
///
/// Lists are `a,b,c` or a JSON list `["a","b"]`; booleans are `true/false`, `1/0`, `yes/no`,
/// `on/off`. A bad value is an [`Error`] (`is_config()`) that names the variable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `INJECT_PROMPT`.
    pub inject_prompt: Option<String>,
    /// `INJECT_PROMPT_POSITION`.
    pub inject_prompt_position: InjectPosition,
    /// `DISABLE_SAFETY_FILTERING`.
    pub disable_safety_filtering: bool,
    /// `THINKING_BUDGET`.
    pub thinking_budget: ThinkingBudget,
    /// `THINKING_MODELS`.
    pub thinking_models: Vec<String>,
    /// `SHOW_THINKING_PROCESS` (`None` when unset).
    pub show_thinking_process: Option<bool>,
    /// `MODEL_SEARCH`.
    pub model_search: Vec<String>,
    /// `SHOW_SEARCH_LINK`.
    pub show_search_link: bool,
    /// `TOOLS_CODE_EXECUTION_ENABLED`.
    pub tools_code_execution_enabled: bool,
    /// `MODEL_ALIASES`, as `(alias, model)` pairs.
    pub model_aliases: Vec<(String, String)>,
    /// `ALLOWED_MODELS` (empty: every model).
    pub allowed_models: Vec<String>,
}

impl PolicyConfig {
    /// Reads the policy variables from a map (e.g. `std::env::vars().collect()` plus `.env`).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, Error> {
        let inject_prompt = value(env, "INJECT_PROMPT").map(str::to_owned);
        let inject_prompt_position = match value(env, "INJECT_PROMPT_POSITION") {
            None => InjectPosition::default(),
            Some(v) => InjectPosition::parse(v).ok_or_else(|| {
                Error::config(format!(
                    "INJECT_PROMPT_POSITION: `{v}` is not one of system, user_prefix, user_suffix"
                ))
            })?,
        };
        let thinking_models = models(list(env, "THINKING_MODELS")?);
        let thinking_budget = match value(env, "THINKING_BUDGET") {
            None => ThinkingBudget::None,
            Some(v) if v.contains('=') || v.starts_with('{') => ThinkingBudget::PerModel(
                pairs(env, "THINKING_BUDGET")?
                    .into_iter()
                    .map(|(m, b)| Ok((m, budget("THINKING_BUDGET", &b)?)))
                    .collect::<Result<_, Error>>()?,
            ),
            Some(v) => ThinkingBudget::All(budget("THINKING_BUDGET", v)?),
        };
        let model_aliases = pairs(env, "MODEL_ALIASES")?;
        for (alias, target) in &model_aliases {
            if alias == target {
                return Err(Error::config(format!(
                    "MODEL_ALIASES: `{alias}` is an alias of itself"
                )));
            }
        }
        Ok(Self {
            inject_prompt,
            inject_prompt_position,
            disable_safety_filtering: flag(env, "DISABLE_SAFETY_FILTERING")?.unwrap_or(false),
            thinking_budget,
            thinking_models,
            show_thinking_process: flag(env, "SHOW_THINKING_PROCESS")?,
            model_search: models(list(env, "MODEL_SEARCH")?),
            show_search_link: flag(env, "SHOW_SEARCH_LINK")?.unwrap_or(false),
            tools_code_execution_enabled: flag(env, "TOOLS_CODE_EXECUTION_ENABLED")?
                .unwrap_or(false),
            model_aliases,
            allowed_models: models(list(env, "ALLOWED_MODELS")?),
        })
    }

    /// Whether any rule is on (when not, the layer can be left out).
    pub fn is_active(&self) -> bool {
        !self.layer().rules().is_empty()
    }

    /// The layer with these rules, in this order: model aliases, search models, allow list,
    /// prompt injection, safety override, thinking defaults, hidden thoughts, code execution.
    pub fn layer(&self) -> RequestPolicyLayer {
        let mut layer = RequestPolicyLayer::new();
        if !self.model_aliases.is_empty() {
            layer = layer.rule(ModelAliases::new(self.model_aliases.clone()));
        }
        if !self.model_search.is_empty() {
            layer = layer.rule(
                SearchModels::new(self.model_search.clone()).show_links(self.show_search_link),
            );
        }
        if !self.allowed_models.is_empty() {
            layer = layer.rule(AllowedModels::new(self.allowed_models.clone()));
        }
        if let Some(text) = &self.inject_prompt {
            layer = layer.rule(PromptInjection::new(
                text.clone(),
                self.inject_prompt_position,
            ));
        }
        if self.disable_safety_filtering {
            layer = layer.rule(SafetyOverride::disable_all());
        }
        let include = (self.show_thinking_process == Some(true)).then_some(true);
        let thinking = match &self.thinking_budget {
            ThinkingBudget::None => None,
            ThinkingBudget::All(b) => Some(
                ThinkingDefaults::new(*b)
                    .models(self.thinking_models.clone())
                    .include_thoughts(include),
            ),
            ThinkingBudget::PerModel(list) => Some(
                list.iter()
                    .fold(ThinkingDefaults::none(), |t, (m, b)| t.model_budget(m, *b))
                    .models(self.thinking_models.clone())
                    .include_thoughts(include),
            ),
        };
        if let Some(t) = thinking {
            layer = layer.rule(t);
        }
        if self.show_thinking_process == Some(false) {
            layer = layer.rule(HideThoughts);
        }
        if self.tools_code_execution_enabled {
            layer = layer.rule(CodeExecution);
        }
        layer
    }
}

fn value<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn flag(env: &HashMap<String, String>, name: &str) -> Result<Option<bool>, Error> {
    let Some(v) = value(env, name) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(Error::config(format!(
            "{name}: `{v}` is not a boolean (use true or false)"
        ))),
    }
}

fn budget(name: &str, v: &str) -> Result<i32, Error> {
    match v.trim().parse::<i32>() {
        Ok(b) if b >= -1 => Ok(b),
        _ => Err(Error::config(format!(
            "{name}: `{v}` is not a thinking budget (-1 for dynamic, 0 for off, or a token count)"
        ))),
    }
}

fn models(list: Vec<String>) -> Vec<String> {
    list.iter()
        .map(|m| strip_models_prefix(m).to_owned())
        .collect()
}

/// A list given as `a,b,c` or as a JSON list of strings; an empty item is an error.
fn list(env: &HashMap<String, String>, name: &str) -> Result<Vec<String>, Error> {
    let Some(raw) = value(env, name) else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = if raw.starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw)
            .map_err(|_| Error::config(format!("{name}: not a valid JSON list of strings")))?
    } else {
        raw.split(',').map(str::to_owned).collect()
    };
    let items: Vec<String> = items
        .iter()
        .map(|s| s.trim().trim_matches(['"', '\'']).trim().to_owned())
        .collect();
    if let Some(pos) = items.iter().position(String::is_empty) {
        return Err(Error::config(format!(
            "{name}: item {} of the list is empty",
            pos + 1
        )));
    }
    Ok(items)
}

/// `a=b,c=d` or a JSON object of strings (or numbers, for budgets).
fn pairs(env: &HashMap<String, String>, name: &str) -> Result<Vec<(String, String)>, Error> {
    let Some(raw) = value(env, name) else {
        return Ok(Vec::new());
    };
    let raw_pairs: Vec<(String, String)> = if raw.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|_| Error::config(format!("{name}: not a valid JSON object")))?;
        map.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                _ => Err(Error::config(format!(
                    "{name}: the value of `{k}` must be a string"
                ))),
            })
            .collect::<Result<_, _>>()?
    } else {
        raw.split(',')
            .map(|item| {
                item.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| {
                        Error::config(format!(
                            "{name}: `{}` is not of the form name=value",
                            item.trim()
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut out: Vec<(String, String)> = Vec::with_capacity(raw_pairs.len());
    for (k, v) in raw_pairs {
        let clean =
            |s: &str| strip_models_prefix(s.trim().trim_matches(['"', '\'']).trim()).to_owned();
        let (k, v) = (clean(&k), clean(&v));
        if k.is_empty() || v.is_empty() {
            return Err(Error::config(format!(
                "{name}: `{k}={v}` has an empty side"
            )));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(Error::config(format!("{name}: `{k}` is given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}
