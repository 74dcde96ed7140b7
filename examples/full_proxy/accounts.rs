//! Client tokens as accounts in the admin API: `GET /admin/tokens` (settings and usage in the
//! current day and month), `POST /admin/tokens` (a token with optional settings, shown once),
//! `PATCH /admin/tokens/{id}` (change any setting; `null` clears one). Field names are
//! [`FIELDS`]; anything else is a 400 naming it, so no operator believes in a limit that is
//! not in force.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tower_gemini::accounts::{BudgetStore, PeriodUsage};
use tower_gemini::auth::{TokenInfo, mint_token};
use tower_gemini::error::{ApiError, Dialect};
use tower_gemini::facts::Account;
use tower_gemini::persist::TokenRecord;

use super::app::Shared;

/// The fields a token takes.
pub const FIELDS: &[&str] = &[
    "name",
    "models",
    "rpm",
    "tpm",
    "rpd",
    "daily_token_budget",
    "monthly_token_budget",
    "expires_at",
    "labels",
];

/// Labels per token, at most.
const MAX_LABELS: usize = 64;

fn error(status: StatusCode, message: String) -> Response {
    ApiError::new(status, message)
        .into_response(Dialect::Gemini)
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message.into())
}

/// Applies the fields of a JSON body to a token's name and account; the 400 naming the first
/// field that is unknown or not of its type.
pub fn apply_fields(
    body: &Map<String, Value>,
    name: &mut Option<String>,
    account: &mut Account,
) -> Result<(), String> {
    let count = |field: &str, v: &Value| -> Result<Option<u64>, String> {
        match v {
            Value::Null => Ok(None),
            v => v.as_u64().filter(|n| *n >= 1).map(Some).ok_or_else(|| {
                format!("`{field}` must be a whole number of at least 1, or null for none")
            }),
        }
    };
    for (field, v) in body {
        match field.as_str() {
            "name" => match v.as_str().map(str::trim) {
                Some(n) if !n.is_empty() && n.len() <= 200 => *name = Some(n.to_owned()),
                _ => return Err("`name` must be a non-empty string (at most 200 bytes)".into()),
            },
            "models" => {
                account.models = match v {
                    Value::Null => None,
                    Value::Array(items) => Some(
                        items
                            .iter()
                            .map(|m| {
                                m.as_str()
                                    .map(str::trim)
                                    .filter(|m| !m.is_empty())
                                    .map(str::to_owned)
                            })
                            .collect::<Option<Vec<String>>>()
                            .ok_or("`models` must be a list of model names or `*` patterns")?,
                    ),
                    _ => return Err("`models` must be a list of model names or `*` patterns, or null for every model".into()),
                }
            }
            "rpm" => account.rpm = count("rpm", v)?,
            "tpm" => account.tpm = count("tpm", v)?,
            "rpd" => account.rpd = count("rpd", v)?,
            "daily_token_budget" => account.daily_token_budget = count(field, v)?,
            "monthly_token_budget" => account.monthly_token_budget = count(field, v)?,
            "expires_at" => {
                account.expires_at = match v {
                    Value::Null => None,
                    Value::String(t) => Some(Account::parse_time(t).ok_or_else(|| {
                        format!("`expires_at` {t:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z")
                    })?),
                    _ => return Err("`expires_at` must be an RFC 3339 time such as 2027-01-01T00:00:00Z, or null".into()),
                }
            }
            "labels" => {
                account.labels = match v {
                    Value::Null => Default::default(),
                    Value::Object(o) if o.len() <= MAX_LABELS => o
                        .iter()
                        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect::<Option<_>>()
                        .ok_or("`labels` values must be strings")?,
                    _ => {
                        return Err(format!(
                            "`labels` must be an object of at most {MAX_LABELS} string values"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown field `{other}`; a token takes {}",
                    FIELDS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, &'static str> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(
            "expected a JSON object like {\"name\": \"my-app\", \"models\": [\"gemini-2.5-*\"]}",
        ),
    }
}

/// Usage in the current day and month, within a bounded wait.
async fn usage_of(store: &dyn BudgetStore, id: &str) -> Option<PeriodUsage> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    tokio::time::timeout(Duration::from_millis(500), store.usage(id, now))
        .await
        .ok()?
        .ok()
}

/// A token's listing: settings, usage and what is left of its budgets (never the token).
pub fn view(t: &TokenInfo, source: &str, usage: Option<PeriodUsage>) -> Value {
    let a = t.account.as_deref().cloned().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let remaining = |budget: Option<u64>, used: Option<u64>| match (budget, used) {
        (Some(b), Some(u)) => json!(b.saturating_sub(u)),
        (Some(b), None) => json!(b),
        _ => Value::Null,
    };
    json!({
        "id": t.id,
        "name": t.name,
        "admin": t.admin,
        "models": a.models,
        "rpm": a.rpm,
        "tpm": a.tpm,
        "rpd": a.rpd,
        "daily_token_budget": a.daily_token_budget,
        "monthly_token_budget": a.monthly_token_budget,
        "expires_at": a.expires_at.map(Account::format_time),
        "expired": a.is_expired_at(now),
        "labels": a.labels,
        "source": source,
        "usage": usage.map(|u| json!({
            "day": { "requests": u.day.requests, "tokens": u.day.tokens },
            "month": { "requests": u.month.requests, "tokens": u.month.tokens },
        })),
        "remaining": {
            "day": remaining(a.daily_token_budget, usage.map(|u| u.day.tokens)),
            "month": remaining(a.monthly_token_budget, usage.map(|u| u.month.tokens)),
        },
    })
}

/// `GET /admin/tokens`.
pub async fn list_tokens(State(s): State<Shared>) -> Response {
    let mut tokens = Vec::new();
    let mut list = s.tokens.list();
    // A stable order for operators and scripts: by name, then id.
    list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    for t in list {
        let usage = if t.admin {
            None
        } else {
            usage_of(&*s.budgets, &t.id).await
        };
        tokens.push(view(&t, s.fleet.source_of(&t.digest), usage));
    }
    axum::Json(json!({ "tokens": tokens })).into_response()
}

/// Creates a client token from a body with `name` and optional settings: the token (shown
/// only here) and its listing, or the refusal.
pub async fn create(s: &Shared, body: &[u8]) -> Result<Value, Response> {
    let body = json_object(body).map_err(bad_request)?;
    let mut name = None;
    let mut account = Account::default();
    apply_fields(&body, &mut name, &mut account).map_err(bad_request)?;
    let Some(name) = name else {
        return Err(bad_request(
            "`name` is required: {\"name\": \"my-app\"} (optional: models, rpm, tpm, rpd, \
             daily_token_budget, monthly_token_budget, expires_at, labels)",
        ));
    };
    let token = mint_token("sk-");
    let record = TokenRecord::new(&token, name.as_str(), false).with_account(account.clone());
    if let Err(e) = s.persist.store.put_token(&record).await {
        return Err(super::persist::unsaved("no token was created", &e));
    }
    s.tokens.insert_account(
        record.digest,
        record.id.as_str(),
        name.as_str(),
        false,
        Some(Arc::new(account)),
    );
    let info = s
        .tokens
        .list()
        .into_iter()
        .find(|t| t.digest == record.digest);
    let mut out = info.map_or_else(
        || json!({ "id": record.id, "name": name }),
        |t| view(&t, "admin", Some(PeriodUsage::default())),
    );
    out["token"] = json!(token);
    Ok(out)
}

/// `POST /admin/tokens`.
pub async fn add_token(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    match create(&s, &body).await {
        Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
        Err(refused) => refused,
    }
}

/// `PATCH /admin/tokens/{id}`: changes the fields given (`null` clears one); in force on the
/// next request on every instance when the answer comes.
pub async fn patch_token(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let digest = tower_gemini::auth::TokenDigest::of(&id);
    let Some(current) = s
        .tokens
        .list()
        .into_iter()
        .find(|t| t.id == id || t.digest == digest)
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no token `{}`", tower_gemini::secret::mask(&id)),
        );
    };
    if current.admin {
        return bad_request("the admin token has no account settings");
    }
    let body = match json_object(&body) {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    let mut name = Some(current.name.clone());
    let mut account = current.account.as_deref().cloned().unwrap_or_default();
    if let Err(why) = apply_fields(&body, &mut name, &mut account) {
        return bad_request(why);
    }
    let name = name.unwrap_or_else(|| current.name.clone());
    let record = TokenRecord {
        id: current.digest.id(),
        name: name.clone(),
        admin: false,
        digest: current.digest,
        account: account.clone(),
    };
    if let Err(e) = s.persist.store.put_token(&record).await {
        return super::persist::unsaved("the token was not changed", &e);
    }
    s.tokens.insert_account(
        current.digest,
        record.id.as_str(),
        name.as_str(),
        false,
        Some(Arc::new(account)),
    );
    let Some(t) = s
        .tokens
        .list()
        .into_iter()
        .find(|t| t.digest == current.digest)
    else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let usage = usage_of(&*s.budgets, &t.id).await;
    axum::Json(view(&t, s.fleet.source_of(&t.digest), usage)).into_response()
}
