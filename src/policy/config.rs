//! [`PolicyConfig`]: the policy rules as gateway users configure them, as plain data.

use super::layer::RequestPolicyLayer;
use super::rules::{
    AllowedModels, CodeExecution, HideThoughts, InjectPosition, ModelAliases, PromptInjection,
    SafetyOverride, SearchModels, ThinkingDefaults,
};

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

/// The request policy as plain data: which rules are on and their settings. Every field is
/// off by default; [`layer`](Self::layer) builds the [`RequestPolicyLayer`] with the rules in
/// their one working order. `full_proxy` reads it from its environment variables (each field
/// names its variable there); the library reads no environment.
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
