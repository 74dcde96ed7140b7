//! Resources that live in one key's project, as Google keeps them: files (resumable and
//! multipart upload, get, list, delete), cached contents, batches and long-running
//! operations. Another key gets Google's 403 `PERMISSION_DENIED` for them, and so does a
//! `generateContent` that names a file or a cache of another key.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::config::Fault;
use super::received::{ReceivedRequest, key_of};
use super::response::{error, json_response};
use super::routes::key_check;
use super::server::{State, lock};
use crate::body::{Body, collect_limited};
use crate::credential::query_param;
use crate::testing::passage;

/// What the fake holds per project.
#[derive(Debug, Default)]
pub(super) struct Resources {
    /// By name (`files/abc`): the owning key and the resource's JSON.
    items: BTreeMap<String, Item>,
    /// Resumable upload sessions by id: the owning key and the file's metadata.
    uploads: HashMap<String, (String, Value)>,
    /// The events of streamed interactions by name, for a stream resumed with
    /// `last_event_id`.
    events: HashMap<String, Vec<Value>>,
    next: u64,
}

#[derive(Debug)]
struct Item {
    owner: String,
    value: Value,
    polls: u32,
}

impl Resources {
    fn mint(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!(
            "{prefix}{:06x}{:04}",
            self.next.wrapping_mul(0x9e37_79b9) & 0xff_ffff,
            self.next
        )
    }

    /// Keeps a new resource in `key`'s project.
    fn hold(&mut self, name: String, key: &str, value: &Value) {
        self.items.insert(
            name,
            Item {
                owner: key.to_owned(),
                value: value.clone(),
                polls: 0,
            },
        );
    }

    /// The key whose project holds `name`.
    pub(super) fn owner(&self, name: &str) -> Option<String> {
        self.items.get(name).map(|i| i.owner.clone())
    }
}

/// Whether the fake answers `path` here (before buffering the body: upload bytes stream).
pub(super) fn is_resource_path(path: &str) -> bool {
    let rest = strip_version(path);
    path.starts_with("/upload/")
        || [
            "files",
            "cachedContents",
            "batches",
            "operations",
            "interactions",
            "fileSearchStores",
        ]
        .iter()
        .any(|c| rest == *c || rest.starts_with(&format!("{c}/")))
        || (rest.starts_with("models/")
            && (rest.contains("/operations/")
                || rest.ends_with(":batchGenerateContent")
                || rest.ends_with(":predictLongRunning")))
}

fn strip_version(path: &str) -> &str {
    let p = path.strip_prefix("/upload").unwrap_or(path);
    p.strip_prefix("/v1beta/")
        .or_else(|| p.strip_prefix("/v1/"))
        .or_else(|| p.strip_prefix("/v1alpha/"))
        .unwrap_or("")
}

fn denied(kind: &str, name: &str) -> Response<Body> {
    let id = name.rsplit('/').next().unwrap_or(name);
    json_response(
        403,
        &json!({"error": {
            "code": 403,
            "message": format!("You do not have permission to access the {kind} {id} or it may not exist."),
            "status": "PERMISSION_DENIED"
        }}),
    )
}

fn kind_of(name: &str) -> &'static str {
    if name.starts_with("files/") {
        "File"
    } else if name.starts_with("cachedContents/") {
        "CachedContent"
    } else if name.starts_with("batches/") {
        "Batch"
    } else if name.starts_with("interactions/") {
        "Interaction"
    } else if name.starts_with("fileSearchStores/") {
        "FileSearchStore"
    } else {
        "Operation"
    }
}

/// Checks a generate request's files and cached content against the key's project.
pub(super) fn check_access(state: &State, key: &str, req: &Value) -> Option<Response<Body>> {
    let res = lock(&state.resources);
    let mut names = Vec::new();
    if let Some(c) = req.get("cachedContent").and_then(Value::as_str) {
        names.push(c.to_owned());
    }
    for content in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for part in content
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(uri) = part.pointer("/fileData/fileUri").and_then(Value::as_str) {
                if let Some(i) = uri.rfind("files/") {
                    names.push(uri[i..].to_owned());
                }
            }
        }
    }
    for tool in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for store in tool
            .pointer("/fileSearch/fileSearchStoreNames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            names.push(store.to_owned());
        }
    }
    names
        .into_iter()
        .find(|n| res.owner(n).as_deref() != Some(key))
        .map(|n| denied(kind_of(&n), &n))
}

/// Answers a resource route.
pub(super) async fn handle(
    state: &State,
    parts: Parts,
    body: Incoming,
    conn: u64,
) -> Response<Body> {
    let key = key_of(&parts.headers, parts.uri.query());
    state.total.fetch_add(1, Ordering::SeqCst);
    if let Some(k) = &key {
        *lock(&state.counters).entry(k.clone()).or_default() += 1;
    }
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let upload_id = query.as_deref().and_then(|q| query_param(q, "upload_id"));
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let protocol = header("x-goog-upload-protocol");
    let streamed = path.starts_with("/upload/") && (upload_id.is_some() || protocol == "multipart");
    let (bytes, streamed_len) = if streamed {
        match count(state, body).await {
            Ok(n) => (Bytes::new(), n),
            Err(()) => return error(400, "upload body could not be read"),
        }
    } else {
        match collect_limited(body, 64 * 1024 * 1024).await {
            Ok(b) => (b, 0),
            Err(_) => return error(400, "request body could not be read"),
        }
    };
    lock(&state.received).push(ReceivedRequest {
        method: parts.method.clone(),
        path: path.clone(),
        query: query.clone(),
        version: parts.version,
        connection: conn,
        headers: parts.headers.clone(),
        body: bytes.clone(),
    });
    // The upload session's id is its credential; Google does not ask for the key again.
    if let Some(id) = &upload_id {
        return finish_upload(state, id, streamed_len, &header("x-goog-upload-command"));
    }
    let Some(key) = key else {
        return error(403, "Method doesn't allow unregistered callers.");
    };
    if let Some(res) = key_check(state, &key, "") {
        return res;
    }
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let base = format!("http://{host}");
    let rest = strip_version(&path).to_owned();
    let method = parts.method.clone();

    if path.starts_with("/upload/") {
        if protocol == "resumable" && header("x-goog-upload-command").contains("start") {
            let mut meta = json.get("file").cloned().unwrap_or_else(|| json!({}));
            let mime = header("x-goog-upload-header-content-type");
            if meta.get("mimeType").is_none() && !mime.is_empty() {
                meta["mimeType"] = json!(mime);
            }
            let id = {
                let mut r = lock(&state.resources);
                let id = r.mint("up");
                r.uploads.insert(id.clone(), (key.clone(), meta));
                id
            };
            let url =
                format!("{base}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable");
            let mut res = Response::new(Body::empty());
            if let Ok(v) = HeaderValue::from_str(&url) {
                res.headers_mut().insert("x-goog-upload-url", v);
            }
            res.headers_mut()
                .insert("x-goog-upload-status", HeaderValue::from_static("active"));
            return res;
        }
        if streamed {
            let id = lock(&state.resources).mint("up");
            lock(&state.resources)
                .uploads
                .insert(id.clone(), (key.clone(), json!({})));
            return finish_upload(state, &id, streamed_len, "upload, finalize");
        }
        return error(400, "Upload has no protocol.");
    }

    let collection = rest.split(['/', ':']).next().unwrap_or_default().to_owned();
    // Creations.
    if method == Method::POST && rest == "interactions" {
        let streamed = json.get("stream").and_then(Value::as_bool) == Some(true);
        // Stored in this key's project; a follow-up must name one of the same project.
        let created = {
            let previous = json
                .get("previous_interaction_id")
                .and_then(Value::as_str)
                .map(|id| format!("interactions/{id}"));
            let mut r = lock(&state.resources);
            match &previous {
                Some(prev) if r.owner(prev).as_deref() != Some(key.as_str()) => Err(prev.clone()),
                _ => {
                    let name = r.mint("interactions/v1_");
                    let id = name.trim_start_matches("interactions/").to_owned();
                    let input = json.get("input").map(Value::to_string).unwrap_or_default();
                    let text = super::FakeGemini::passage(&input);
                    let value = json!({
                        "id": id,
                        "object": "interaction",
                        "model": json.get("model").cloned().unwrap_or(Value::Null),
                        "status": "completed",
                        "previous_interaction_id": previous.as_deref().map(|p| p.trim_start_matches("interactions/")),
                        "outputs": [{"type": "text", "text": text}],
                        "usage": {"total_input_tokens": passage::tokens(&input).max(1), "total_output_tokens": passage::tokens(&text)},
                    });
                    r.hold(name.clone(), &key, &value);
                    let events = streamed.then(|| interaction_events(&value, &text));
                    if let Some(events) = &events {
                        r.events.insert(name, events.clone());
                    }
                    Ok((value, events))
                }
            }
        };
        return match created {
            Err(prev) => denied("Interaction", &prev),
            Ok((_, Some(events))) => {
                // A `DropAfter(n)`/`ResetAfter(n)` queued for the next generation cuts this
                // stream after `n` events, as a broken connection would.
                let cut = {
                    let mut faults = lock(&state.faults);
                    match faults.front() {
                        Some(Fault::DropAfter(n) | Fault::ResetAfter(n)) => {
                            let n = *n;
                            faults.pop_front();
                            Some(n)
                        }
                        _ => None,
                    }
                };
                stream_events(state, events, cut).await
            }
            Ok((value, None)) => json_response(200, &value),
        };
    }
    if method == Method::POST && rest.ends_with(":batchGenerateContent") {
        let model = rest.trim_end_matches(":batchGenerateContent").to_owned();
        let mut r = lock(&state.resources);
        let name = r.mint("batches/");
        let requests = json
            .pointer("/batch/inputConfig/requests/requests")
            .or_else(|| json.pointer("/batch/input_config/requests/requests"))
            .cloned()
            .unwrap_or_else(|| json!([]));
        let value = json!({
            "name": name,
            "metadata": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "name": name, "model": model, "state": "BATCH_STATE_PENDING",
                "displayName": json.pointer("/batch/displayName").cloned().unwrap_or(Value::Null),
                "requests": requests,
            }
        });
        r.hold(name, &key, &value);
        return json_response(200, &without_requests(value));
    }
    if method == Method::POST && rest.ends_with(":predictLongRunning") {
        let model = rest.trim_end_matches(":predictLongRunning").to_owned();
        let mut r = lock(&state.resources);
        let id = r.mint("");
        let name = format!("{model}/operations/{id}");
        let value = json!({"name": name});
        r.hold(name, &key, &value);
        return json_response(200, &value);
    }
    if method == Method::POST && rest == "fileSearchStores" {
        let now = crate::rfc3339::format(crate::rfc3339::now());
        let mut r = lock(&state.resources);
        let name = r.mint("fileSearchStores/store-");
        let value = json!({
            "name": name,
            "displayName": json.get("displayName").cloned().unwrap_or(json!("")),
            "createTime": now, "updateTime": now,
        });
        r.hold(name, &key, &value);
        return json_response(200, &value);
    }
    if method == Method::POST
        && rest.starts_with("fileSearchStores/")
        && rest.ends_with(":importFile")
    {
        // The store and the file must both be in this key's project.
        let store = rest.trim_end_matches(":importFile").to_owned();
        let file = json
            .get("fileName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut r = lock(&state.resources);
        for name in [&store, &file] {
            if r.owner(name).as_deref() != Some(key.as_str()) {
                return denied(kind_of(name), name);
            }
        }
        let id = r.mint("");
        let name = format!("{store}/operations/{id}");
        let value = json!({"name": name, "done": true,
                           "response": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.ImportFileResponse",
                                        "parent": store, "documentName": format!("{store}/documents/{id}")}});
        r.hold(name, &key, &value);
        return json_response(200, &value);
    }
    if method == Method::POST && rest == "cachedContents" {
        let ttl = json
            .get("ttl")
            .and_then(Value::as_str)
            .and_then(crate::gemini::parse_duration)
            .map_or(3600, |d| d.as_secs());
        let now = crate::rfc3339::now();
        let mut r = lock(&state.resources);
        let name = r.mint("cachedContents/");
        let value = json!({
            "name": name,
            "model": json.get("model").cloned().unwrap_or(Value::Null),
            "displayName": json.get("displayName").cloned().unwrap_or(json!("")),
            "createTime": crate::rfc3339::format(now),
            "updateTime": crate::rfc3339::format(now),
            "expireTime": crate::rfc3339::format(now + ttl),
            "usageMetadata": {"totalTokenCount": passage::tokens(&json.to_string()).max(1)},
        });
        r.hold(name, &key, &value);
        return json_response(200, &value);
    }
    // Lists.
    if method == Method::GET && rest == collection {
        let field = match collection.as_str() {
            "files" => "files",
            "cachedContents" => "cachedContents",
            "fileSearchStores" => "fileSearchStores",
            _ => "operations",
        };
        let page_size = query
            .as_deref()
            .and_then(|q| query_param(q, "pageSize"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(10)
            .min(100);
        let start = query
            .as_deref()
            .and_then(|q| query_param(q, "pageToken"))
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        let r = lock(&state.resources);
        let mine: Vec<Value> = r
            .items
            .iter()
            .filter(|(n, i)| {
                n.strip_prefix(&format!("{collection}/"))
                    .is_some_and(|id| !id.contains('/'))
                    && i.owner == key
            })
            .map(|(_, i)| without_requests(i.value.clone()))
            .collect();
        let page: Vec<Value> = mine.iter().skip(start).take(page_size).cloned().collect();
        let mut out = json!({ field: page });
        if start + page_size < mine.len() {
            out["nextPageToken"] = json!((start + page_size).to_string());
        }
        return json_response(200, &out);
    }
    // One resource: `files/abc`, `batches/x:cancel`, `models/m/operations/y`.
    let (name, verb) = match rest.split_once(':') {
        Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
        None => (rest.clone(), None),
    };
    let stream = query
        .as_deref()
        .and_then(|q| query_param(q, "stream"))
        .is_some_and(|v| v == "true");
    if method == Method::GET && verb.is_none() && stream {
        // A streamed interaction again, from the event after `last_event_id`.
        let events = {
            let r = lock(&state.resources);
            r.items
                .get(&name)
                .filter(|i| i.owner == key)
                .map(|_| r.events.get(&name).cloned())
        };
        return match events {
            Some(events) => resume_events(state, events, query.as_deref()).await,
            None => denied(kind_of(&collection_name(&name)), &name),
        };
    }
    let mut r = lock(&state.resources);
    let Some(item) = r.items.get_mut(&name).filter(|i| i.owner == key) else {
        return denied(kind_of(&collection_name(&name)), &name);
    };
    match (method, verb.as_deref()) {
        (Method::GET, None) => {
            item.polls += 1;
            if name.starts_with("batches/") {
                advance_batch(item);
            } else if name.contains("operations/") && !name.starts_with("fileSearchStores/") {
                item.value["done"] = json!(true);
                item.value["response"] = json!({"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"});
            }
            json_response(200, &without_requests(item.value.clone()))
        }
        (Method::PATCH, None) if name.starts_with("cachedContents/") => {
            if let Some(ttl) = json
                .get("ttl")
                .and_then(Value::as_str)
                .and_then(crate::gemini::parse_duration)
            {
                let now = crate::rfc3339::now();
                item.value["expireTime"] = json!(crate::rfc3339::format(now + ttl.as_secs()));
                item.value["updateTime"] = json!(crate::rfc3339::format(now));
            }
            json_response(200, &item.value)
        }
        (Method::POST, Some("cancel")) if name.starts_with("interactions/") => {
            item.value["status"] = json!("cancelled");
            json_response(200, &item.value)
        }
        (Method::POST, Some("cancel")) => {
            item.value["metadata"]["state"] = json!("BATCH_STATE_CANCELLED");
            item.value["done"] = json!(true);
            json_response(200, &json!({}))
        }
        (Method::DELETE, None) => {
            r.items.remove(&name);
            json_response(200, &json!({}))
        }
        _ => error(405, "Method not allowed."),
    }
}

fn collection_name(name: &str) -> String {
    match name.find("operations/") {
        Some(i) if !name.starts_with("batches/") => name[i..].to_owned(),
        _ => name.to_owned(),
    }
}

/// A batch is pending, then running, then done with one inlined answer per request.
fn advance_batch(item: &mut Item) {
    let state = if item.polls >= 2 {
        "BATCH_STATE_SUCCEEDED"
    } else {
        "BATCH_STATE_RUNNING"
    };
    item.value["metadata"]["state"] = json!(state);
    if item.polls < 2 {
        return;
    }
    let answers: Vec<Value> = item
        .value
        .pointer("/metadata/requests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            // The answer to the request's first text, as a single `generateContent` gives.
            let prompt = r
                .pointer("/request/contents/0/parts/0/text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            json!({
                "metadata": r.get("metadata").cloned().unwrap_or(Value::Null),
                "response": {"candidates": [{"content": {"role": "model", "parts": [{"text": passage::passage(prompt)}]}, "finishReason": "STOP"}]},
            })
        })
        .collect();
    let output = json!({"inlinedResponses": {"inlinedResponses": answers}});
    item.value["metadata"]["output"] = output.clone();
    item.value["done"] = json!(true);
    let mut response = output;
    response["@type"] =
        json!("type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput");
    item.value["response"] = response;
}

fn without_requests(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("requests");
    }
    v
}

/// Reads an upload body frame by frame, counting the bytes as they arrive.
async fn count(state: &State, mut body: Incoming) -> Result<u64, ()> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
            state
                .upload_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }
    Ok(n)
}

fn finish_upload(state: &State, id: &str, len: u64, command: &str) -> Response<Body> {
    let mut r = lock(&state.resources);
    let Some((owner, meta)) = r.uploads.get(id).cloned() else {
        return error(404, "No such upload session.");
    };
    if !command.contains("finalize") {
        let mut res = Response::new(Body::empty());
        res.headers_mut()
            .insert("x-goog-upload-status", HeaderValue::from_static("active"));
        return res;
    }
    r.uploads.remove(id);
    let name = r.mint("files/");
    let now = crate::rfc3339::now();
    let mut file = json!({
        "name": name,
        "displayName": meta.get("displayName").or_else(|| meta.get("display_name")).cloned().unwrap_or(json!("")),
        "mimeType": meta.get("mimeType").cloned().unwrap_or(json!("application/octet-stream")),
        "sizeBytes": len.to_string(),
        "createTime": crate::rfc3339::format(now),
        "updateTime": crate::rfc3339::format(now),
        "expirationTime": crate::rfc3339::format(now + 48 * 3600),
        "sha256Hash": "ZmFrZQ==",
        "uri": format!("https://generativelanguage.googleapis.com/v1beta/{name}"),
        "state": "ACTIVE",
        "source": "UPLOADED",
    });
    if file["displayName"] == json!("") {
        file.as_object_mut().map(|o| o.remove("displayName"));
    }
    r.items.insert(
        name,
        Item {
            owner,
            value: file.clone(),
            polls: 0,
        },
    );
    let mut res = json_response(200, &json!({ "file": file }));
    res.headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("final"));
    res
}

/// The SSE events of a streamed interaction: `interaction.created` (with the id), a step of
/// text deltas, `interaction.completed` with the usage; each with an `event_id` to resume
/// from.
fn interaction_events(value: &Value, text: &str) -> Vec<Value> {
    let mut created = value.clone();
    created["status"] = json!("in_progress");
    if let Some(o) = created.as_object_mut() {
        o.remove("outputs");
        o.remove("usage");
    }
    let mut events = vec![
        json!({"event_type": "interaction.created", "interaction": created}),
        json!({"event_type": "step.start", "index": 0, "step": {"type": "model_output"}}),
    ];
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    for piece in words.chunks(4) {
        events.push(json!({
            "event_type": "step.delta",
            "index": 0,
            "delta": {"type": "text", "text": piece.concat()},
        }));
    }
    events.push(json!({"event_type": "step.stop", "index": 0}));
    let mut done = value.clone();
    if let Some(o) = done.as_object_mut() {
        o.remove("outputs");
    }
    events.push(json!({"event_type": "interaction.completed", "interaction": done}));
    for (i, e) in events.iter_mut().enumerate() {
        e["event_id"] = json!(format!("evt_{:04}", i + 1));
    }
    events
}

/// Sends `events` as SSE, cut (a reset stream) after `cut` of them when asked.
async fn stream_events(state: &State, events: Vec<Value>, cut: Option<usize>) -> Response<Body> {
    use super::generate::{Mode, Step};
    let n = cut.unwrap_or(events.len()).min(events.len());
    let mut steps: Vec<Step> = events.into_iter().take(n).map(Step::Chunk).collect();
    if cut.is_some() {
        steps.push(Step::Reset);
    }
    let kill = std::sync::Arc::new(tokio::sync::Notify::new());
    super::emit::emit(state, &kill, 1, Mode::Sse, steps).await
}

/// The events of a streamed interaction after `last_event_id` (all without it).
async fn resume_events(
    state: &State,
    events: Option<Vec<Value>>,
    query: Option<&str>,
) -> Response<Body> {
    let Some(events) = events else {
        return error(400, "The interaction was not created with stream: true.");
    };
    let after = query
        .and_then(|q| query_param(q, "last_event_id").or_else(|| query_param(q, "lastEventId")));
    let start = match after {
        Some(id) => match events.iter().position(|e| e["event_id"] == id.as_ref()) {
            Some(i) => i + 1,
            None => return error(400, "Unknown last_event_id."),
        },
        None => 0,
    };
    stream_events(state, events[start..].to_vec(), None).await
}
