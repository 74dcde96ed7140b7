//! The admin API: keys and tokens, changed at run time. Every route needs `ADMIN_TOKEN`
//! (as `Authorization: Bearer`, `x-goog-api-key` or `?key=`); a client token gets 403.
//! `GET /admin` itself is the admin page, served without a credential: it holds no secret and
//! its API calls carry the admin token the operator signs in with.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tower_gemini::auth::{TokenStore, credential, mint_token};
use tower_gemini::error::{ApiError, Dialect};
use tower_gemini::key_rotation::KeyState;
use tower_gemini::policy::{InjectPosition, PolicyConfig, ThinkingBudget};

use super::app::Shared;

/// The `/admin` routes (nested by the caller).
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/keys", get(list_keys).post(add_key))
        .route("/keys/{id}", delete(remove_key))
        .route("/keys/{id}/enable", post(enable_key))
        .route("/keys/{id}/disable", post(disable_key))
        .route(
            "/tokens",
            get(super::accounts::list_tokens).post(super::accounts::add_token),
        )
        .route(
            "/tokens/{id}",
            delete(revoke_token).patch(super::accounts::patch_token),
        )
        .route("/config", get(config_view))
        // Compatibility routes of other Gemini proxies (README: "Coming from another Gemini proxy").
        .route("/config/gemini-key", post(compat_add_key))
        .route("/config/user-key", post(compat_add_token))
        .route("/config/thinking", post(compat_thinking))
        .route("/config/inject-prompt", post(compat_inject_prompt))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            one_change_at_a_time,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            admin_only,
        ))
        // After `route_layer`, so the page itself needs no credential.
        .route("/", get(page))
        .fallback(unknown)
        .with_state(shared)
}

/// The admin page: one self-contained HTML file (styles and script inline, nothing from another
/// host). A fresh nonce per response lets only its own inline script and style run.
async fn page() -> Response {
    let nonce = mint_token("");
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let html = include_str!("admin.html").replace("{{nonce}}", &nonce);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, csp.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

fn error(api: ApiError) -> Response {
    api.into_response(Dialect::Gemini).into_response()
}

/// Lets only the admin token through.
pub async fn admin_only(State(s): State<Shared>, req: Request, next: Next) -> Response {
    match refusal(&s, &req) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// Admin changes run one at a time, and never beside a reload of the shared state: a reload
/// in between a change's local effect and its write to the store would undo it.
async fn one_change_at_a_time(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD {
        return next.run(req).await;
    }
    let res = {
        let _one = s.fleet.lock.lock().await;
        next.run(req).await
    };
    // A change answered is a change in force on every instance of the fleet.
    if res.status().is_success() {
        s.fleet.wait_everywhere().await;
    }
    res
}

/// Why this request may not use the admin API, as the response; `None` for the admin token.
fn refusal(s: &Shared, req: &Request) -> Option<Response> {
    let Some((token, _)) = credential(req) else {
        return Some(error(ApiError::unauthorized(
            "the admin API needs the admin token (Authorization: Bearer <ADMIN_TOKEN>)",
        )));
    };
    match s.tokens.authenticate(&token) {
        None => Some(error(ApiError::unauthorized(
            "the admin token is not valid",
        ))),
        Some(id) if !id.is_admin() => Some(error(ApiError::forbidden(
            "this token is a client token; the admin API needs the admin token",
        ))),
        Some(_) => None,
    }
}

/// Unknown `/admin/...` paths are the gateway's own namespace: 404 for the admin (401/403 for
/// anyone else), never forwarded upstream on a pool key.
async fn unknown(State(s): State<Shared>, req: Request) -> Response {
    refusal(&s, &req).unwrap_or_else(|| {
        // `nest` hands this router the path without its `/admin` prefix.
        error(ApiError::not_found(format!(
            "no admin route {} /admin{}",
            req.method(),
            req.uri().path()
        )))
    })
}

/// `GET /admin/config`: the configuration the gateway started with, secrets masked, and the
/// request policy in force now (after admin changes).
async fn config_view(State(s): State<Shared>) -> Response {
    let mut view = (*s.config_view).clone();
    let policy = s.policy.lock().unwrap_or_else(|e| e.into_inner()).clone();
    view["policy"] = json!({
        "thinking": thinking_state(&policy),
        "inject_prompt": inject_prompt_state(&policy),
        "rules": format!("{policy:?}"),
    });
    view["keys"] = json!({ "total": s.pool.len(), "usable": s.pool.usable_count() });
    view["persistence_store"] = json!(s.persist.store.kind());
    axum::Json(view).into_response()
}

async fn list_keys(State(s): State<Shared>) -> Response {
    let keys: Vec<Value> = s.pool.snapshot().iter().map(|k| k.to_json()).collect();
    axum::Json(json!({
        "keys": keys,
        "total": s.pool.len(),
        "usable": s.pool.usable_count(),
    }))
    .into_response()
}

/// `POST /admin/keys {"key": "..."}`: the key joins the rotation with the next request.
async fn add_key(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    match add_key_from_body(&s, &body).await {
        Ok(snapshot) => (StatusCode::CREATED, axum::Json(snapshot)).into_response(),
        Err(refused) => refused,
    }
}

/// Adds the upstream key of a `{"key": "..."}` body to the pool; its snapshot (masked), or the
/// refusal. Every route that adds a key goes through here.
async fn add_key_from_body(s: &Shared, body: &[u8]) -> Result<Value, Response> {
    let key = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("key")?.as_str().map(|k| k.trim().to_owned()));
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(error(ApiError::bad_request(
            "expected a JSON body like {\"key\": \"AIza...\"}",
        )));
    };
    let record = tower_gemini::persist::KeyRecord::new(key.as_str());
    match s.pool.add_key(key) {
        Ok(id) => {
            if let Err(e) = s.persist.store.put_key(&record.with_id(id.as_str())).await {
                // Not saved: take it back out, so what runs matches what a restart would see.
                s.pool.remove_key(id.as_str());
                return Err(super::persist::unsaved("the key was not added", &e));
            }
            let snap = s.pool.snapshot().into_iter().find(|k| k.id == id);
            Ok(snap.map_or_else(|| json!({ "id": id.as_str() }), |k| k.to_json()))
        }
        Err(e) => Err(error(ApiError::new(StatusCode::CONFLICT, e.to_string()))),
    }
}

async fn remove_key(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if s.pool.remove_key(&id) {
        // Removed at once; then remembered, so GEMINI_API_KEYS does not bring it back.
        if let Err(e) = s.persist.store.remove_key(&id).await {
            s.fleet.pending_removal(&id);
            return super::persist::unsaved(
                "the key is removed on this instance and saved as soon as the store answers",
                &e,
            );
        }
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(ApiError::not_found(format!("no key with id `{id}`")))
    }
}

/// `POST /admin/keys/{id}/disable`: out of rotation on every instance until enabled again.
async fn disable_key(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if s.pool.disable(&id).await {
        let snap = s.pool.snapshot().into_iter().find(|k| k.id.as_str() == id);
        axum::Json(snap.map_or_else(|| json!({ "id": id }), |k| k.to_json())).into_response()
    } else {
        error(ApiError::not_found(format!("no key with id `{id}`")))
    }
}

async fn enable_key(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if s.pool.enable(&id).await {
        let snap = s.pool.snapshot().into_iter().find(|k| k.id.as_str() == id);
        axum::Json(snap.map_or_else(|| json!({ "id": id }), |k| k.to_json())).into_response()
    } else {
        error(ApiError::not_found(format!("no key with id `{id}`")))
    }
}

/// Mints a client token for a `{"name": "...", ...settings}` body: the token (shown only here)
/// and its listing, or the refusal. Every route that creates a client token goes through here.
async fn add_token_from_body(s: &Shared, body: &[u8]) -> Result<Value, Response> {
    super::accounts::create(s, body).await
}

async fn revoke_token(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let removed = s.tokens.remove(&id);
    if !removed.is_empty() {
        // Refused at once; then remembered, so ALLOWED_TOKENS does not bring it back.
        for t in removed {
            let record = tower_gemini::persist::TokenRecord::from(t);
            if let Err(e) = s.persist.store.revoke_token(&record).await {
                s.fleet.pending_revocation(record);
                return super::persist::unsaved(
                    "the token is revoked on this instance and saved as soon as the store answers",
                    &e,
                );
            }
        }
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(ApiError::not_found(format!(
            "no token `{}`",
            tower_gemini::secret::mask(&id)
        )))
    }
}

// === Compatibility routes of other Gemini proxies ===

/// `GET /v1/keys/list` (admin token): `{"valid_keys": [...], "invalid_keys": [...]}`, masked.
pub fn compat_routes(shared: Shared) -> Router {
    Router::new()
        .route("/v1/keys/list", get(compat_list_keys))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            admin_only,
        ))
        .with_state(shared)
}

async fn compat_list_keys(State(s): State<Shared>) -> Response {
    let (mut valid, mut invalid) = (Vec::new(), Vec::new());
    for k in s.pool.snapshot() {
        match k.state {
            KeyState::Enabled => valid.push(k.masked),
            _ => invalid.push(k.masked),
        }
    }
    axum::Json(json!({
        "valid_keys": valid,
        "invalid_keys": invalid,
        "valid_count": valid.len(),
        "invalid_count": invalid.len(),
    }))
    .into_response()
}

/// `POST /admin/config/gemini-key {"key": "..."}`: `POST /admin/keys` in the old shape.
async fn compat_add_key(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    match add_key_from_body(&s, &body).await {
        Ok(snapshot) => axum::Json(json!({
            "success": true,
            "message": "key added",
            "key": snapshot,
        }))
        .into_response(),
        Err(refused) => refused,
    }
}

/// `POST /admin/config/user-key {"name": "..."}`: `POST /admin/tokens` in the old shape.
async fn compat_add_token(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    match add_token_from_body(&s, &body).await {
        Ok(created) => {
            let mut out = json!({ "success": true, "message": "client token created; it is shown only once" });
            if let (Value::Object(out), Value::Object(created)) = (&mut out, created) {
                out.extend(created);
            }
            axum::Json(out).into_response()
        }
        Err(refused) => refused,
    }
}

/// Changes the request policy: `edit` works on a copy of the policy in force; on success the
/// copy goes into force from the next request. Every run-time policy change goes through here.
pub fn change_policy(
    s: &Shared,
    edit: impl FnOnce(&mut PolicyConfig) -> Result<(), String>,
) -> Result<PolicyConfig, String> {
    let mut policy = s.policy.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = policy.clone();
    edit(&mut next)?;
    s.policy_handle.set(&next.layer());
    *policy = next.clone();
    Ok(next)
}

/// Applies a `/admin/config/thinking` body to a policy (also used to restore a saved one).
pub fn apply_thinking(
    p: &mut PolicyConfig,
    o: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    let enabled = optional_bool(o, "enabled")?;
    let include = optional_bool(o, "include_thoughts")?;
    let budget = match o.get("budget") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|b| i32::try_from(b).ok())
                .filter(|b| *b >= -1)
                .ok_or("`budget` must be -1 (dynamic), 0 (off) or a token count")?,
        ),
    };
    match (enabled, budget) {
        (Some(false), _) => p.thinking_budget = ThinkingBudget::None,
        (_, Some(b)) => p.thinking_budget = ThinkingBudget::All(b),
        (Some(true), None) => {
            if p.thinking_budget == ThinkingBudget::None {
                p.thinking_budget = ThinkingBudget::All(-1);
            }
        }
        (None, None) => {}
    }
    if include.is_some() {
        p.show_thinking_process = include;
    }
    Ok(())
}

/// Applies a `/admin/config/inject-prompt` body to a policy (also used to restore a saved one).
pub fn apply_inject_prompt(
    p: &mut PolicyConfig,
    o: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    let enabled = optional_bool(o, "enabled")?;
    let content = match o.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err("`content` must be a string".into()),
    };
    if let Some(pos) = o.get("position").filter(|v| !v.is_null()) {
        let pos = pos.as_str().unwrap_or_default();
        p.inject_prompt_position = InjectPosition::parse(pos).ok_or_else(|| {
            format!("`position` {pos:?} is not one of system, user_prefix, user_suffix")
        })?;
    }
    if enabled == Some(false) {
        p.inject_prompt = None;
    } else if let Some(c) = content {
        p.inject_prompt = Some(c).filter(|c| !c.trim().is_empty());
    }
    if enabled == Some(true) && p.inject_prompt.is_none() {
        return Err("`enabled: true` needs a non-empty `content`".into());
    }
    Ok(())
}
/// The thinking defaults as a body [`apply_thinking`] accepts (per-model budgets from
/// `THINKING_BUDGET` are not expressible there and are left as configured).
pub fn thinking_state(p: &PolicyConfig) -> Value {
    let mut v = json!({
        "enabled": p.thinking_budget != ThinkingBudget::None,
        "include_thoughts": p.show_thinking_process,
    });
    if let ThinkingBudget::All(b) = p.thinking_budget {
        v["budget"] = json!(b);
    }
    v
}

/// The prompt injection as a body [`apply_inject_prompt`] accepts.
pub fn inject_prompt_state(p: &PolicyConfig) -> Value {
    json!({
        "enabled": p.inject_prompt.is_some(),
        "content": p.inject_prompt,
        "position": position_name(p.inject_prompt_position),
    })
}

/// Saves a run-time policy change as a named setting, restored at the next start.
async fn save_setting(s: &Shared, name: &str, value: &Value) -> Option<Response> {
    let e = s.persist.store.put_setting(name, value).await.err()?;
    Some(super::persist::unsaved(
        "the change is in force for this run",
        &e,
    ))
}

/// Applies the policy settings saved by earlier runs (`thinking`, `inject_prompt`) on top of
/// the configured policy.
pub fn restore_policy(
    policy: &mut PolicyConfig,
    settings: &std::collections::BTreeMap<String, Value>,
) {
    type Apply = fn(&mut PolicyConfig, &serde_json::Map<String, Value>) -> Result<(), String>;
    let appliers: [(&str, Apply); 2] = [
        (SETTING_THINKING, apply_thinking),
        (SETTING_INJECT_PROMPT, apply_inject_prompt),
    ];
    for (name, apply) in appliers {
        let Some(Value::Object(o)) = settings.get(name) else {
            continue;
        };
        match apply(policy, o) {
            Ok(()) => tracing::info!(
                setting = name,
                "policy change restored from the admin store"
            ),
            Err(why) => tracing::warn!(setting = name, %why, "saved policy change ignored"),
        }
    }
}

/// The setting names run-time policy changes are saved under.
pub const SETTING_THINKING: &str = "thinking";
/// See [`SETTING_THINKING`].
pub const SETTING_INJECT_PROMPT: &str = "inject_prompt";

fn json_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(ApiError::bad_request("expected a JSON object")),
    }
}

fn optional_bool(o: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>, String> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("`{name}` must be true or false")),
    }
}

fn thinking_json(p: &PolicyConfig) -> Value {
    let budget = match &p.thinking_budget {
        ThinkingBudget::None => Value::Null,
        ThinkingBudget::All(b) => json!(b),
        ThinkingBudget::PerModel(list) => {
            Value::Object(list.iter().map(|(m, b)| (m.clone(), json!(b))).collect())
        }
    };
    json!({
        "enabled": p.thinking_budget != ThinkingBudget::None,
        "budget": budget,
        "include_thoughts": p.show_thinking_process,
    })
}

/// `POST /admin/config/thinking {"enabled", "budget", "include_thoughts"}` (each optional):
/// `enabled: false` drops the gateway's default thinking config (clients' own pass as sent);
/// `enabled: true` / `budget` set the default `thinkingBudget` for every model (or the
/// `THINKING_MODELS`); `include_thoughts` is `SHOW_THINKING_PROCESS` (`false` strips thoughts
/// from answers, `true` asks for them).
async fn compat_thinking(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let o = match json_body(&body) {
        Ok(o) => o,
        Err(refused) => return error(refused),
    };
    let changed = change_policy(&s, |p| apply_thinking(p, &o));
    match changed {
        Ok(p) => {
            tracing::info!(thinking = %thinking_json(&p), "thinking defaults changed by the admin API");
            if let Some(unsaved) = save_setting(&s, SETTING_THINKING, &thinking_state(&p)).await {
                return unsaved;
            }
            axum::Json(json!({ "success": true, "thinking": thinking_json(&p) })).into_response()
        }
        Err(why) => error(ApiError::bad_request(why)),
    }
}

fn position_name(p: InjectPosition) -> &'static str {
    match p {
        InjectPosition::UserPrefix => "user_prefix",
        InjectPosition::UserSuffix => "user_suffix",
        _ => "system",
    }
}

/// `POST /admin/config/inject-prompt {"enabled", "content", "position"}` (each optional):
/// `INJECT_PROMPT` and `INJECT_PROMPT_POSITION` at run time; `enabled: false` stops injecting.
async fn compat_inject_prompt(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let o = match json_body(&body) {
        Ok(o) => o,
        Err(refused) => return error(refused),
    };
    let changed = change_policy(&s, |p| apply_inject_prompt(p, &o));
    match changed {
        Ok(p) => {
            let state = inject_prompt_state(&p);
            if let Some(unsaved) = save_setting(&s, SETTING_INJECT_PROMPT, &state).await {
                return unsaved;
            }
            tracing::info!(
                enabled = p.inject_prompt.is_some(),
                position = position_name(p.inject_prompt_position),
                "prompt injection changed by the admin API"
            );
            axum::Json(json!({ "success": true, "inject_prompt": state })).into_response()
        }
        Err(why) => error(ApiError::bad_request(why)),
    }
}
