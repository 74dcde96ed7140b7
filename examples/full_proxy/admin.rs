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

use super::app::Shared;

/// The `/admin` routes (nested by the caller).
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/keys", get(list_keys).post(add_key))
        .route("/keys/{id}", delete(remove_key))
        .route("/keys/{id}/enable", post(enable_key))
        .route("/tokens", get(list_tokens).post(add_token))
        .route("/tokens/{id}", delete(revoke_token))
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
    let key = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("key")?.as_str().map(|k| k.trim().to_owned()));
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return error(ApiError::bad_request(
            "expected a JSON body like {\"key\": \"AIza...\"}",
        ));
    };
    let record = tower_gemini::persist::KeyRecord::new(key.as_str());
    match s.pool.add_key(key) {
        Ok(id) => {
            if let Err(e) = s.persist.store.put_key(&record.with_id(id.as_str())).await {
                // Not saved: take it back out, so what runs matches what a restart would see.
                s.pool.remove_key(id.as_str());
                return super::persist::unsaved("the key was not added", &e);
            }
            let snap = s.pool.snapshot().into_iter().find(|k| k.id == id);
            let body = snap.map_or_else(|| json!({ "id": id.as_str() }), |k| k.to_json());
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(e) => error(ApiError::new(StatusCode::CONFLICT, e.to_string())),
    }
}

async fn remove_key(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if s.pool.remove_key(&id) {
        // Removed at once; then remembered, so GEMINI_API_KEYS does not bring it back.
        if let Err(e) = s.persist.store.remove_key(&id).await {
            return super::persist::unsaved("the key is removed for this run", &e);
        }
        StatusCode::NO_CONTENT.into_response()
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

async fn list_tokens(State(s): State<Shared>) -> Response {
    let tokens: Vec<Value> = s
        .tokens
        .list()
        .into_iter()
        .map(|t| json!({ "id": t.id, "name": t.name, "admin": t.admin }))
        .collect();
    axum::Json(json!({ "tokens": tokens })).into_response()
}

/// `POST /admin/tokens {"name": "..."}` → `{"token", "id", "name"}`; the token is shown once.
async fn add_token(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(|n| n.trim().to_owned()))
        .filter(|n| !n.is_empty());
    let Some(name) = name else {
        return error(ApiError::bad_request(
            "expected a JSON body like {\"name\": \"my-app\"}",
        ));
    };
    let token = mint_token("sk-");
    let record = tower_gemini::persist::TokenRecord::new(&token, name.as_str(), false);
    if let Err(e) = s.persist.store.put_token(&record).await {
        return super::persist::unsaved("no token was created", &e);
    }
    let id = s.tokens.insert(&token, name.as_str(), false);
    (
        StatusCode::CREATED,
        axum::Json(json!({ "token": token, "id": id, "name": name })),
    )
        .into_response()
}

async fn revoke_token(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let removed = s.tokens.remove(&id);
    if !removed.is_empty() {
        // Refused at once; then remembered, so ALLOWED_TOKENS does not bring it back.
        for t in removed {
            let record = tower_gemini::persist::TokenRecord::from(t);
            if let Err(e) = s.persist.store.revoke_token(&record).await {
                return super::persist::unsaved("the token is revoked for this run", &e);
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
