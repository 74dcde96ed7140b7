//! What the admin page shows over time: `GET /admin/timeseries` (requests, errors and tokens per
//! minute for the last hour or per hour for the last day, from memory: no database needed) and
//! `GET /admin/requests` (recent requests and errors from the SQLite request log, with
//! `DATABASE_PATH`). Both need the admin token; neither ever shows a key or a token: keys are
//! their ids and masks, accounts their token ids and names.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tower_gemini::error::{ApiError, Dialect};
use tower_gemini::persist::{ErrorFilter, RequestQuery, StatusFilter};
use tower_gemini::secret::scrub;
use tower_gemini::usage::{Span, UsageSeries};

use super::admin::admin_only;
use super::app::Shared;
use super::ops::Ops;

/// Keys (and accounts) broken down in `/admin/timeseries` unless `limit` says otherwise.
const DEFAULT_SERIES_LIMIT: usize = 20;
/// The longest filter value (`model`, `key`, `account`) accepted.
const MAX_FILTER_CHARS: usize = 200;

#[derive(Clone)]
struct Views {
    shared: Shared,
    series: Arc<UsageSeries>,
}

/// `GET /admin/timeseries` and `GET /admin/requests` (admin token), merged into the `/admin`
/// router.
pub fn routes(shared: Shared, ops: Ops) -> Router {
    Router::new()
        .route("/timeseries", get(timeseries))
        .route("/requests", get(requests))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            admin_only,
        ))
        .with_state(Views {
            shared,
            series: ops.series,
        })
}

fn bad_request(message: impl Into<String>) -> Response {
    ApiError::bad_request(message.into())
        .into_response(Dialect::Gemini)
        .into_response()
}

/// The query's parameters, each at most once, none but `allowed`; or why not.
fn params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, String> {
    let Query(pairs) = query.map_err(|e| format!("bad query string: {e}"))?;
    let mut out = HashMap::new();
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(format!(
                "unknown parameter `{}`; this route takes {}",
                scrub(&name),
                allowed.join(", ")
            ));
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("`{}` is given twice", scrub(&name)));
        }
    }
    Ok(out)
}

/// A filter value: `None` when empty (an empty form field), else at most
/// [`MAX_FILTER_CHARS`] characters.
fn filter<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<Option<&'a str>, String> {
    match p.get(name).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) if v.chars().count() > MAX_FILTER_CHARS => Err(format!(
            "`{name}` is longer than {MAX_FILTER_CHARS} characters"
        )),
        Some(v) => Ok(Some(v)),
    }
}

/// `limit`: a whole number from 1 to `max`, else `default`.
fn limit(p: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, String> {
    match filter(p, "limit")? {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("`limit` must be a number from 1 to {max}")),
    }
}

/// The masked form of each key in the pool, by id.
fn masks(s: &Shared) -> HashMap<String, String> {
    s.pool
        .snapshot()
        .into_iter()
        .map(|k| (k.id.as_str().to_owned(), k.masked))
        .collect()
}

/// These counts are this instance's: say so, and what a fleet sums.
fn scope(s: &Shared, out: &mut serde_json::Map<String, Value>) {
    out.insert("scope".into(), json!("instance"));
    if s.fleet.status()["shared"] == true {
        out.insert(
            "scope_note".into(),
            json!("these counts are this instance's; sum /metrics over every instance for fleet totals"),
        );
    }
}

/// `GET /admin/timeseries?range=hour|day&key=&account=&limit=`: requests, errors and tokens
/// per minute over the last hour (60 buckets) or per hour over the last day (24), in total and
/// for the `limit` (default 20) busiest keys and accounts (or only the `key` / `account`
/// asked for). Each bucket: `{"t", "requests", "errors", "upstream_errors", "client_errors",
/// "tokens"}`, `t` the bucket's start in Unix seconds.
async fn timeseries(
    State(v): State<Views>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let p = match params(query, &["range", "key", "account", "limit"]) {
        Ok(p) => p,
        Err(why) => return bad_request(why),
    };
    let SeriesQuery {
        span,
        key,
        account,
        limit,
    } = match series_query(&p) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let mut view = v.series.view(span);
    let (keys_total, accounts_total) = (view.keys.len(), view.accounts.len());
    match key {
        Some(id) => view.keys.retain(|n| n.id == id),
        None => view.keys.truncate(limit),
    }
    match account {
        Some(id) => view.accounts.retain(|n| n.id == id),
        None => view.accounts.truncate(limit),
    }
    let mut out = view.to_json();
    let masks = masks(&v.shared);
    if let Some(keys) = out["keys"].as_array_mut() {
        for k in keys {
            let mask = k["id"].as_str().and_then(|id| masks.get(id)).cloned();
            k["key"] = json!(mask);
        }
    }
    if let Some(o) = out.as_object_mut() {
        o.insert("keys_total".into(), json!(keys_total));
        o.insert("accounts_total".into(), json!(accounts_total));
        scope(&v.shared, o);
    }
    axum::Json(out).into_response()
}

/// What `/admin/timeseries` asks for.
struct SeriesQuery<'a> {
    span: Span,
    /// Only this key id.
    key: Option<&'a str>,
    /// Only this account id.
    account: Option<&'a str>,
    /// Else this many keys and accounts, the busiest.
    limit: usize,
}

fn series_query(p: &HashMap<String, String>) -> Result<SeriesQuery<'_>, String> {
    let span = match filter(p, "range")? {
        None => Span::Hour,
        Some(name) => Span::parse(name)
            .ok_or_else(|| format!("`range` must be `hour` or `day`, not {:?}", scrub(name)))?,
    };
    Ok(SeriesQuery {
        span,
        key: filter(p, "key")?,
        account: filter(p, "account")?,
        limit: limit(p, DEFAULT_SERIES_LIMIT, 1000)?,
    })
}

/// `GET /admin/requests?limit=&status=&model=&key=&account=&errors=&before=`: the request
/// log's rows, newest first. `status` is a status (`429`) or a class (`5xx`); `errors` is
/// `true` (every status of 400 or more), `upstream` (5xx, and 429 not from the gateway's own
/// rate limits) or `false`; `key` a key id; `account` a client token id; `before` the `id` of
/// the last row of the page before (the answer's `next_before`).
async fn requests(
    State(v): State<Views>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let p = match params(
        query,
        &[
            "limit", "status", "model", "key", "account", "errors", "before",
        ],
    ) {
        Ok(p) => p,
        Err(why) => return bad_request(why),
    };
    let q = match request_query(&p) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let Some(log) = v.shared.persist.request_log.clone() else {
        return axum::Json(json!({
            "rows": [],
            "available": false,
            "reason": "set DATABASE_PATH to keep a request log",
        }))
        .into_response();
    };
    let (query, limit) = q;
    let read = tokio::task::spawn_blocking(move || log.query(&query)).await;
    let rows = match read {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the request log could not be read");
            return ApiError::internal(format!("the request log could not be read: {e}"))
                .into_response(Dialect::Gemini)
                .into_response();
        }
        Err(e) => {
            return ApiError::internal(format!("the request log could not be read: {e}"))
                .into_response(Dialect::Gemini)
                .into_response();
        }
    };
    let masks = masks(&v.shared);
    let next_before = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut row = r.to_json();
            let mask = r.key_id.as_deref().and_then(|id| masks.get(id)).cloned();
            row["key"] = json!(mask);
            row
        })
        .collect();
    axum::Json(json!({
        "rows": rows,
        "available": true,
        "limit": limit,
        "next_before": next_before,
    }))
    .into_response()
}

/// The request log query the parameters ask for, and its limit.
fn request_query(p: &HashMap<String, String>) -> Result<(RequestQuery, usize), String> {
    let limit = limit(p, 100, RequestQuery::MAX_LIMIT)?;
    let mut q = RequestQuery::new().limit(limit);
    if let Some(status) = filter(p, "status")? {
        let status = StatusFilter::parse(status).ok_or_else(|| {
            format!(
                "`status` must be a status such as 429 or a class such as 5xx, not {:?}",
                scrub(status)
            )
        })?;
        q = q.status(status);
    }
    match filter(p, "errors")? {
        None | Some("false") => {}
        Some("true") => q = q.errors(ErrorFilter::Any),
        Some("upstream") => q = q.errors(ErrorFilter::Upstream),
        Some(other) => {
            return Err(format!(
                "`errors` must be true, upstream or false, not {:?}",
                scrub(other)
            ));
        }
    }
    if let Some(before) = filter(p, "before")? {
        let id = before
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or("`before` must be a row id (a positive number)")?;
        q = q.before(id);
    }
    if let Some(model) = filter(p, "model")? {
        // As logged: without `models/`.
        q = q.model(model.strip_prefix("models/").unwrap_or(model));
    }
    if let Some(key) = filter(p, "key")? {
        q = q.key(key);
    }
    if let Some(account) = filter(p, "account")? {
        q = q.account(account);
    }
    Ok((q, limit))
}
