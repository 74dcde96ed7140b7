//! One request: recorded, its key checked, then answered by the handler of its route.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::config::KeyBehavior;
use super::embed::{embed_batch, embed_one};
use super::generate::{Mode, generate};
use super::models::{list_models, model};
use super::plan::all_text;
use super::received::{ReceivedRequest, key_of};
use super::response::{error, json_response};
use super::server::{State, lock};
use crate::body::{Body, collect_limited};
use crate::credential::query_param;
use crate::gemini::{GeminiPath, Method as GMethod};
use crate::testing::passage;

/// Marks an answer to be replaced by a reset of the stream (the `ResetStream` fault).
#[derive(Clone, Copy, Debug)]
pub(super) struct ResetStream;

/// A service error: hyper answers it with RST_STREAM on HTTP/2 and closes an HTTP/1.1
/// connection without an answer.
#[derive(Debug)]
pub(super) struct StreamReset;

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fake reset the stream")
    }
}

impl std::error::Error for StreamReset {}

/// Answers one request on connection `conn`.
pub(super) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    kill: Arc<tokio::sync::Notify>,
    conn: u64,
) -> Result<Response<Body>, StreamReset> {
    let res = answer(state, req, kill, conn).await;
    if res.extensions().get::<ResetStream>().is_some() {
        return Err(StreamReset);
    }
    Ok(res)
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
    kill: Arc<tokio::sync::Notify>,
    conn: u64,
) -> Response<Body> {
    if super::live::is_live(&req) {
        return super::live::accept(state, req, conn);
    }
    let (parts, body) = req.into_parts();
    if super::resources::is_resource_path(parts.uri.path()) {
        return super::resources::handle(&state, parts, body, conn).await;
    }
    let body = match collect_limited(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return error(400, "request body could not be read"),
    };
    let key = key_of(&parts.headers, parts.uri.query());
    state.total.fetch_add(1, Ordering::SeqCst);
    if let Some(k) = &key {
        *lock(&state.counters).entry(k.clone()).or_default() += 1;
    }
    lock(&state.received).push(ReceivedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        connection: conn,
        headers: parts.headers.clone(),
        body: body.clone(),
    });

    let Some(path) = GeminiPath::parse(parts.uri.path()) else {
        return error(404, &format!("Method not found: {}", parts.uri.path()));
    };
    let Some(key) = key else {
        return error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        );
    };
    if let Some(res) = key_check(&state, &key, &path.model) {
        return res;
    }
    let sse = parts
        .uri
        .query()
        .is_some_and(|q| query_param(q, "alt").as_deref() == Some("sse"));
    match (&parts.method, path.method) {
        (&Method::GET, None) if path.is_model_list() => list_models(parts.uri.query()),
        (&Method::GET, None) => match model(&path.model) {
            Some(m) => json_response(200, &m),
            None => error(
                404,
                &format!(
                    "models/{} is not found for API version {}, or is not supported for generateContent.",
                    path.model, path.version
                ),
            ),
        },
        (&Method::POST, Some(m)) => {
            if model(&path.model).is_none() {
                return error(
                    404,
                    &format!(
                        "models/{} is not found for API version {}, or is not supported for {}. Call ListModels to see the list of available models and their supported methods.",
                        path.model,
                        path.version,
                        path.method_name.as_deref().unwrap_or("")
                    ),
                );
            }
            let request: Value = match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return error(
                        400,
                        "Invalid JSON payload received. Unknown name or malformed body.",
                    );
                }
            };
            if let Some(res) = super::resources::check_access(&state, &key, &request) {
                return res;
            }
            if matches!(m, GMethod::GenerateContent | GMethod::StreamGenerateContent)
                && let Some(res) = super::generate::signature_check(&path.model, &request)
                    .or_else(|| super::generate::config_check(&path.model, &request))
            {
                return res;
            }
            match m {
                GMethod::GenerateContent => {
                    generate(&state, &path.model, &request, Mode::Unary, kill).await
                }
                GMethod::StreamGenerateContent => {
                    let mode = if sse { Mode::Sse } else { Mode::JsonArray };
                    generate(&state, &path.model, &request, mode, kill).await
                }
                GMethod::CountTokens => {
                    // `contents`, or a whole `generateContentRequest` (system instruction and
                    // tools count too).
                    let counted = match request.get("generateContentRequest") {
                        Some(g) => {
                            let tools = serde_json::to_string(&g["tools"]).unwrap_or_default();
                            format!(
                                "{} {}",
                                all_text(g),
                                if g["tools"].is_null() { "" } else { &tools }
                            )
                        }
                        None => all_text(&request),
                    };
                    json_response(
                        200,
                        &json!({ "totalTokens": passage::tokens(&counted).max(1) }),
                    )
                }
                GMethod::EmbedContent => embed_one(&request),
                GMethod::BatchEmbedContents => embed_batch(&request),
                _ => error(404, "Method not found."),
            }
        }
        _ => error(405, "Method not allowed."),
    }
}

pub(super) fn key_check(state: &State, key: &str, model: &str) -> Option<Response<Body>> {
    let behavior = lock(&state.model_keys)
        .get(&(key.to_owned(), model.to_owned()))
        .cloned()
        .or_else(|| lock(&state.keys).get(key).cloned())
        .or_else(|| state.accept_any_key.then_some(KeyBehavior::Valid))
        .unwrap_or(KeyBehavior::Invalid);
    let echo = if state.echo_key {
        format!(" api_key:{key}")
    } else {
        String::new()
    };
    match behavior {
        KeyBehavior::Valid => None,
        KeyBehavior::Invalid => Some(json_response(
            400,
            &json!({"error": {
                "code": 400,
                "message": format!("API key not valid. Please pass a valid API key.{echo}"),
                "status": "INVALID_ARGUMENT",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                     "message": "API key not valid. Please pass a valid API key."}
                ]
            }}),
        )),
        KeyBehavior::Unavailable => Some(json_response(
            503,
            &json!({"error": {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE"
            }}),
        )),
        KeyBehavior::ModelNotForNewUsers => Some(json_response(
            404,
            &json!({"error": {
                "code": 404,
                "message": format!("This model models/{model} is no longer available to new users. Please update your code to use a newer model for the latest features and improvements."),
                "status": "NOT_FOUND"
            }}),
        )),
        KeyBehavior::PermissionDenied => Some(json_response(
            403,
            &json!({"error": {
                "code": 403,
                "message": format!("Permission denied: Consumer 'api_key:{}' has been suspended.", if state.echo_key { key } else { "…" }),
                "status": "PERMISSION_DENIED",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED",
                             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]
            }}),
        )),
        KeyBehavior::Exhausted { retry_delay, daily } => {
            let secs = retry_delay.as_secs_f64();
            let delay = if retry_delay.subsec_nanos() == 0 {
                format!("{}s", retry_delay.as_secs())
            } else {
                format!("{secs}s")
            };
            let (quota_id, metric) = if daily {
                (
                    "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                    "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                )
            } else {
                (
                    "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                )
            };
            Some(json_response(
                429,
                &json!({"error": {
                    "code": 429,
                    "message": format!("You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: {metric}, limit: 10, model: {model}\nPlease retry in {secs}s."),
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                            "quotaMetric": metric, "quotaId": quota_id,
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": "10"}]},
                        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
                    ]
                }}),
            ))
        }
    }
}
