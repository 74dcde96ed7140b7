//! Rewrite Gemini requests (and, where a rule says so, answers) by rules configured per model.
//!
//! Gateway users switch on model features their clients cannot ask for: Google Search
//! grounding, code execution, thinking budgets, relaxed safety filters, a house prompt, model
//! aliases and an allow list. [`RequestPolicyLayer`] applies a list of [`Rule`]s, in order, to
//! the native Gemini routes:
//! `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE or streamed
//! JSON array), `:countTokens`, and `GET /v1beta/models[/{model}]`; `:embedContent` and
//! `:batchEmbedContents` are checked against the allow list only (never renamed or rewritten).
//! Anything else passes through untouched.
//!
//! A rule changes only the field it targets: the layer edits the request JSON in place, so
//! every other field (numbers and unknown fields included) reaches upstream as the client sent
//! it, and a request no rule changed is forwarded byte for byte. A rule that renames the model
//! also rewrites the request path (the model lives in the URL). Answers are rewritten only when
//! a rule asks for it (hidden thoughts, search links): unary answers as a whole, streams event
//! by event as they arrive, never buffered. A body that is not a JSON object passes through
//! for upstream's own 400; a refused request (allow list) is a 403 in the route's
//! [`Dialect`](crate::Dialect) and never goes upstream.
//!
//! The built-in rules, one type each: [`ModelAliases`], [`SearchModels`], [`AllowedModels`],
//! [`PromptInjection`], [`SafetyOverride`], [`ThinkingDefaults`], [`HideThoughts`],
//! [`CodeExecution`]. [`PolicyConfig`] holds them as plain data (`full_proxy` reads it from
//! the usual environment variables), and [`PolicyConfig::layer`] builds the layer. To change the rules while serving
//! (an admin API), build the layer with [`RequestPolicyLayer::from_handle`] and swap rules
//! through its [`PolicyHandle`]; they apply from the next request.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, body::collect_limited, policy::PolicyConfig};
//!
//! let policy = PolicyConfig {
//!     model_aliases: vec![("gpt-4o".into(), "gemini-2.5-pro".into())],
//!     disable_safety_filtering: true,
//!     allowed_models: vec!["gpt-4o".into(), "gemini-2.5-flash".into()],
//!     ..PolicyConfig::default()
//! };
//!
//! // The upstream echoes the path and body it received.
//! let svc = ServiceBuilder::new()
//!     .layer(policy.layer())
//!     .service(service_fn(|req: Request<Body>| async move {
//!         let path = req.uri().path().to_owned();
//!         let body = collect_limited(req.into_body(), 1 << 20).await.unwrap();
//!         let echo = serde_json::json!({ "path": path, "body": serde_json::from_slice::<serde_json::Value>(&body).unwrap() });
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from(echo.to_string())))
//!     }));
//!
//! let req = Request::post("/v1beta/models/gpt-4o:generateContent")
//!     .body(Body::from(r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#))
//!     .unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! let echo: serde_json::Value =
//!     serde_json::from_slice(&collect_limited(res.into_body(), 1 << 20).await.unwrap()).unwrap();
//! assert_eq!(echo["path"], "/v1beta/models/gemini-2.5-pro:generateContent");
//! assert_eq!(echo["body"]["safetySettings"][0]["threshold"], "OFF");
//! assert_eq!(echo["body"]["contents"][0]["parts"][0]["text"], "hi");
//!
//! let req = Request::post("/v1beta/models/gemini-2.0-flash:generateContent")
//!     .body(Body::from(r#"{"contents":[]}"#))
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);
//! # });
//! ```
//!
//! # Ordering
//! Inside `OpenAiToGemini` (so both dialects get the policy, and the translator sees search
//! links and stripped thoughts as ordinary text), and above `StreamResume` and key rotation, so
//! that retries and continuations carry the rewritten request and the rewriting sees one
//! repaired stream. Request bodies are read here (up to
//! [`max_body_bytes`](RequestPolicyLayer::max_body_bytes), 413 beyond), so a body limit layer
//! in front is welcome but not required.
//!
//! # Rules of thumb
//! - Rules run in the order added; [`PolicyConfig::layer`] adds aliases first, then search
//!   aliases, then the allow list (which sees the name the client used and the resolved
//!   model), then the body rules.
//! - A client's own choice wins: its safety entry for a category, its thinking config, its
//!   search tool. Code execution is never added beside function declarations.
//! - Model aliases (and search aliases) are listed in `GET /v1beta/models` right after their
//!   model; `GET /v1beta/models/{alias}` answers the model under the alias name.

mod body;
mod config;
mod layer;
mod rule;
mod rules;
#[cfg(test)]
mod tests;

pub use config::{PolicyConfig, ThinkingBudget};
pub use layer::{PolicyHandle, RequestPolicy, RequestPolicyLayer, ResponseFuture};
pub use rule::{Call, CallKind, ListedModel, Rewrite, Rule};
pub use rules::{
    AllowedModels, CodeExecution, HideThoughts, InjectPosition, ModelAliases, PromptInjection,
    SafetyOverride, SearchModels, ThinkingDefaults,
};
