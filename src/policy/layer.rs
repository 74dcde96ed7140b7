//! `RequestPolicyLayer`, the service and its response future.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use super::body::{RewriteStream, StreamMode, rewrite_chunk};
use super::rule::{Call, CallKind, ListedModel, Rewrite, Rule};
use crate::body::{Body, BoxError, BoxFuture, LimitError, collect_limited};
use crate::error::{ApiError, Dialect};
use crate::gemini::{GeminiPath, Method};

use crate::body::DEFAULT_MAX_BODY_BYTES;

/// The cap on a models list the layer rewrites: 64 MiB. A larger answer with a
/// `Content-Length` passes through unchanged. A generated answer's cap follows the request's
/// [`MaxEventBytes`](crate::sse::MaxEventBytes) (it may hold an image that large).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

type Rules = Arc<Vec<Arc<dyn Rule>>>;

// === PolicyHandle ===

/// The rules of running policy layers, swappable at run time: a layer made with
/// [`RequestPolicyLayer::from_handle`] reads the rules current when each request arrives, so
/// [`set`](Self::set) takes effect from the very next request (requests already under way keep
/// the rules they started with). Clones share the rules.
///
/// ```
/// use tower_gemini::policy::{PolicyHandle, RequestPolicyLayer, HideThoughts, CodeExecution};
///
/// let handle = PolicyHandle::new(&RequestPolicyLayer::new().rule(HideThoughts));
/// let _layer = RequestPolicyLayer::from_handle(handle.clone());
/// assert_eq!(handle.rules().len(), 1);
/// handle.set(&RequestPolicyLayer::new().rule(HideThoughts).rule(CodeExecution));
/// assert_eq!(handle.rules().len(), 2);
/// ```
#[derive(Clone)]
pub struct PolicyHandle {
    rules: Arc<std::sync::RwLock<Rules>>,
}

impl PolicyHandle {
    /// A handle holding the rules of `layer`.
    pub fn new(layer: &RequestPolicyLayer) -> Self {
        Self {
            rules: Arc::new(std::sync::RwLock::new(layer.rules.clone())),
        }
    }

    /// Replaces the rules by those of `layer` (its body limit is not taken: that stays the
    /// running layer's own).
    pub fn set(&self, layer: &RequestPolicyLayer) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = layer.rules.clone();
    }

    /// The rules now in force, in order.
    pub fn rules(&self) -> Vec<Arc<dyn Rule>> {
        self.current().to_vec()
    }

    fn current(&self) -> Rules {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("rules", &self.current())
            .finish()
    }
}

// === RequestPolicyLayer ===

/// Applies [`RequestPolicy`]: rewrites Gemini requests (and, where a rule says so, answers) by
/// a list of [`Rule`]s; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct RequestPolicyLayer {
    rules: Rules,
    live: Option<PolicyHandle>,
    max_body_bytes: usize,
}

impl Default for RequestPolicyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestPolicyLayer {
    /// A layer with no rules (everything passes through).
    pub fn new() -> Self {
        Self {
            rules: Arc::new(Vec::new()),
            live: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// A layer whose rules live in `handle` and can be swapped at run time (see
    /// [`PolicyHandle`]). Rules added to it with [`rule`](Self::rule) are ignored.
    pub fn from_handle(handle: PolicyHandle) -> Self {
        Self {
            live: Some(handle),
            ..Self::new()
        }
    }

    /// Adds a rule; rules apply in the order they were added.
    pub fn rule(mut self, rule: impl Rule) -> Self {
        Arc::make_mut(&mut self.rules).push(Arc::new(rule));
        self
    }

    /// Adds a shared rule.
    pub fn shared_rule(mut self, rule: Arc<dyn Rule>) -> Self {
        Arc::make_mut(&mut self.rules).push(rule);
        self
    }

    /// The largest request body read (default 20 MiB); a larger one is answered with 413
    /// before anything goes upstream.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The rules, in order (a layer [from a handle](Self::from_handle) has none of its own:
    /// see [`PolicyHandle::rules`]).
    pub fn rules(&self) -> &[Arc<dyn Rule>] {
        &self.rules
    }
}

impl<S> Layer<S> for RequestPolicyLayer {
    type Service = RequestPolicy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestPolicy {
            inner,
            rules: self.rules.clone(),
            live: self.live.clone(),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

// === RequestPolicy ===

/// Rewrites Gemini requests and answers by rules; see [`RequestPolicyLayer`].
#[derive(Clone)]
pub struct RequestPolicy<S> {
    inner: S,
    rules: Rules,
    live: Option<PolicyHandle>,
    max_body_bytes: usize,
}

impl<S> RequestPolicy<S> {
    /// Wraps `inner` with the rules of `layer`.
    pub fn new(inner: S, layer: &RequestPolicyLayer) -> Self {
        layer.layer(inner)
    }

    /// A [`RequestPolicyLayer`] with no rules yet.
    pub fn layer() -> RequestPolicyLayer {
        RequestPolicyLayer::new()
    }

    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for RequestPolicy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestPolicy")
            .field("inner", &self.inner)
            .field("rules", &self.rules)
            .field("live", &self.live)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The kind of a policy route, or `None` for anything the layer passes through.
fn classify(req: &mut Request<Body>) -> Option<(CallKind, GeminiPath)> {
    // `/v1/models[/{id}]` without a method is OpenAI's models route (unless a Gemini client
    // asks), not ours.
    if Dialect::from_path(req.uri().path()) == Dialect::OpenAi
        && Dialect::of(req) == Dialect::OpenAi
    {
        return None;
    }
    let path = crate::facts::resolve_call(req)?.clone();
    let (method, uri) = (req.method(), req.uri());
    // GeminiPath also parses tunedModels; only `models` routes are policed.
    if !uri
        .path()
        .strip_prefix('/')?
        .strip_prefix(path.version.as_str())?
        .starts_with("/models")
    {
        return None;
    }
    let kind = match (method, path.method) {
        (&http::Method::GET, None) if path.is_model_list() => CallKind::ListModels,
        (&http::Method::GET, None) => CallKind::GetModel,
        (&http::Method::POST, Some(Method::GenerateContent)) => CallKind::GenerateContent,
        (&http::Method::POST, Some(Method::StreamGenerateContent)) => {
            CallKind::StreamGenerateContent
        }
        (&http::Method::POST, Some(Method::CountTokens)) => CallKind::CountTokens,
        (&http::Method::POST, Some(Method::EmbedContent | Method::BatchEmbedContents)) => {
            CallKind::Embed
        }
        _ => return None,
    };
    Some((kind, path))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestPolicy<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut req = req.map(Body::new);
        let rules = match &self.live {
            Some(handle) => handle.current(),
            None => self.rules.clone(),
        };
        // No rule, nothing to read: the request is not even classified.
        let classified = if rules.is_empty() {
            None
        } else {
            classify(&mut req)
        };
        let Some((kind, path)) = classified else {
            let fut = inner.call(req);
            return BoxFuture(Box::pin(
                async move { fut.await.map(|res| res.map(Body::new)) },
            ));
        };
        let max = self.max_body_bytes;
        BoxFuture(Box::pin(async move {
            let dialect = Dialect::of(&req);
            let max_event_bytes = crate::sse::MaxEventBytes::of(req.extensions());
            let query = req.uri().query().map(str::to_owned);
            let (mut parts, body) = req.into_parts();

            // The request JSON, when there is a body to read.
            let (body, mut json) = if kind == CallKind::GetModel || kind == CallKind::ListModels {
                (body, None)
            } else {
                let bytes = match collect_limited(body, max).await {
                    Ok(b) => b,
                    Err(LimitError::TooLarge { .. }) => {
                        return Ok(ApiError::payload_too_large(max).into_response(dialect));
                    }
                    Err(LimitError::Body(e)) => {
                        tracing::debug!(error = %e, "request body failed");
                        return Ok(ApiError::bad_request("the request body could not be read")
                            .into_response(dialect));
                    }
                };
                let json = match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Object(map)) => Some(map),
                    // Not a JSON object: upstream answers with its own 400.
                    _ => None,
                };
                (Body::from(bytes), json)
            };
            let (request, nested_key) = take_request(kind, json.as_mut());
            let mut call = Call::new(kind, path.model.clone(), request);
            for rule in rules.iter() {
                if let Err(e) = rule.request(&mut call) {
                    tracing::debug!(model = %crate::secret::scrub(call.requested_model()), status = %e.status(), "policy refused the request");
                    return Ok(e.into_response(dialect));
                }
            }

            let renamed = call.model() != call.requested_model();
            let resolved = renamed.then(|| call.model().to_owned());
            if renamed {
                let new_path = GeminiPath {
                    model: call.model().to_owned(),
                    ..path.clone()
                };
                match with_path(&parts.uri, &new_path.to_string()) {
                    Some(uri) => parts.uri = uri,
                    None => {
                        return Ok(ApiError::internal(format!(
                            "the configured model name `{}` is not valid in a path",
                            call.model()
                        ))
                        .into_response(dialect));
                    }
                }
                tracing::debug!(from = %call.requested_model(), to = %call.model(), "policy renamed the model");
            }

            let rewriters: Vec<Box<dyn Rewrite>> = if kind.is_generate() {
                rules.iter().filter_map(|r| r.response(&call)).collect()
            } else {
                Vec::new()
            };
            let requested = call.requested_model().to_owned();
            let body = if call.is_request_modified() || (renamed && nested_key.is_some()) {
                let model = call.model().to_owned();
                let request = call.into_request();
                let json = put_request(json, request, nested_key, renamed.then_some(&*model));
                let bytes = serde_json::to_vec(&Value::Object(json)).unwrap_or_default();
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Body::from(bytes)
            } else {
                body
            };

            let mut req = Request::from_parts(parts, body);
            if let Some(model) = &resolved {
                // Every layer below limits, cools down and counts the model the alias names.
                crate::facts::set_model(&mut req, model);
            }
            let res = inner.call(req).await?;
            let res = res.map(Body::new);
            if res.status() != StatusCode::OK {
                return Ok(res);
            }
            Ok(match kind {
                CallKind::ListModels => rewrite_models(res, dialect, &rules, None).await,
                CallKind::GetModel => rewrite_models(res, dialect, &rules, Some(&requested)).await,
                CallKind::GenerateContent if !rewriters.is_empty() => {
                    let max = crate::sse::whole_answer_cap(max_event_bytes);
                    rewrite_unary(res, dialect, rewriters, max).await
                }
                CallKind::StreamGenerateContent if !rewriters.is_empty() => {
                    let mode = stream_mode(&res, query.as_deref());
                    let (mut parts, body) = res.into_parts();
                    parts.headers.remove(header::CONTENT_LENGTH);
                    let body = RewriteStream::new(body, mode, rewriters, max_event_bytes);
                    Response::from_parts(parts, Body::new(body))
                }
                _ => res,
            })
        }))
    }
}

/// `Sse` when the answer is `text/event-stream` (or the request asked for `alt=sse`).
fn stream_mode(res: &Response<Body>, query: Option<&str>) -> StreamMode {
    let event_stream = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("event-stream"));
    let alt_sse = query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    if event_stream || alt_sse {
        StreamMode::Sse
    } else {
        StreamMode::JsonArray
    }
}

/// The `GenerateContentRequest` object of a body: the body itself for generate calls, the
/// `generateContentRequest` of a `countTokens` body (taken out, with the key it was under).
fn take_request(
    kind: CallKind,
    json: Option<&mut Map<String, Value>>,
) -> (Option<Map<String, Value>>, Option<&'static str>) {
    let Some(json) = json else {
        return (None, None);
    };
    match kind {
        CallKind::GenerateContent | CallKind::StreamGenerateContent => {
            (Some(std::mem::take(json)), None)
        }
        CallKind::CountTokens => {
            for key in ["generateContentRequest", "generate_content_request"] {
                if json.get(key).is_some_and(Value::is_object) {
                    if let Some(Value::Object(inner)) = json.remove(key) {
                        return (Some(inner), Some(key));
                    }
                }
            }
            (None, None)
        }
        _ => (None, None),
    }
}

/// Puts the (edited) request object back into the body; for `countTokens`, renames the
/// nested `model` field when the model changed.
fn put_request(
    json: Option<Map<String, Value>>,
    request: Option<Map<String, Value>>,
    nested_key: Option<&'static str>,
    renamed_to: Option<&str>,
) -> Map<String, Value> {
    match nested_key {
        None => request.or(json).unwrap_or_default(),
        Some(key) => {
            let mut outer = json.unwrap_or_default();
            let mut inner = request.unwrap_or_default();
            if let Some(model) = renamed_to {
                if inner.get("model").is_some_and(Value::is_string) {
                    inner.insert("model".into(), Value::String(format!("models/{model}")));
                }
            }
            outer.insert(key.to_owned(), Value::Object(inner));
            outer
        }
    }
}

/// `uri` with another path, keeping scheme, authority and query.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Reads a whole (non-streamed) answer; `Err` gives back a response to send as it is.
async fn read_answer(
    res: Response<Body>,
    dialect: Dialect,
    max: usize,
) -> Result<(http::response::Parts, Bytes), Response<Body>> {
    let declared = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(res);
    }
    let (parts, body) = res.into_parts();
    match collect_limited(body, max).await {
        Ok(bytes) => Ok((parts, bytes)),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the upstream answer");
            Err(
                ApiError::bad_gateway("the upstream answer could not be read")
                    .into_response(dialect),
            )
        }
    }
}

fn json_answer(mut parts: http::response::Parts, value: &Value, original: Bytes) -> Response<Body> {
    let bytes = serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or(original);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, Body::from(bytes))
}

async fn rewrite_unary(
    res: Response<Body>,
    dialect: Dialect,
    mut rewriters: Vec<Box<dyn Rewrite>>,
    max: usize,
) -> Response<Body> {
    let (parts, bytes) = match read_answer(res, dialect, max).await {
        Ok(read) => read,
        Err(res) => return res,
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    rewrite_chunk(&mut rewriters, &mut value);
    for i in 0..rewriters.len() {
        let Some(mut extra) = rewriters[i].finish() else {
            continue;
        };
        for r in rewriters[i + 1..].iter_mut() {
            r.chunk(&mut extra);
        }
        append_parts(&mut value, extra);
    }
    json_answer(parts, &value, bytes)
}

/// Appends the parts of `extra`'s first candidate to `value`'s first candidate.
fn append_parts(value: &mut Value, extra: Value) {
    let Some(Value::Array(more)) = extra.pointer("/candidates/0/content/parts").cloned() else {
        return;
    };
    let Some(candidate) = value
        .pointer_mut("/candidates/0")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let content = candidate
        .entry("content")
        .or_insert_with(|| serde_json::json!({ "role": "model" }));
    if let Some(content) = content.as_object_mut() {
        let parts = content
            .entry("parts")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(parts) = parts.as_array_mut() {
            parts.extend(more);
        }
    }
}

/// Runs the rules' [`Rule::models`] on a models list, or on one model fetched by `get` (the
/// entry named as the client asked is answered).
async fn rewrite_models(
    res: Response<Body>,
    dialect: Dialect,
    rules: &Rules,
    get: Option<&str>,
) -> Response<Body> {
    let (parts, bytes) = match read_answer(res, dialect, MAX_ANSWER_BYTES).await {
        Ok(read) => read,
        Err(res) => return res,
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    match get {
        None => {
            let Some(Value::Array(models)) = value.get_mut("models").map(Value::take) else {
                return Response::from_parts(parts, Body::from(bytes));
            };
            let mut listed: Vec<ListedModel> =
                models.into_iter().map(ListedModel::upstream).collect();
            let before = listed.clone();
            for rule in rules.iter() {
                rule.models(&mut listed);
            }
            if listed == before {
                return Response::from_parts(parts, Body::from(bytes));
            }
            value["models"] = Value::Array(listed.into_iter().map(|m| m.value).collect());
            json_answer(parts, &value, bytes)
        }
        Some(requested) => {
            let original = ListedModel::upstream(value);
            if original.id() == requested {
                return Response::from_parts(parts, Body::from(bytes));
            }
            let mut listed = vec![original.clone()];
            for rule in rules.iter() {
                rule.models(&mut listed);
            }
            let entry = listed
                .into_iter()
                .find(|m| m.id() == requested)
                .unwrap_or_else(|| original.alias(requested));
            json_answer(parts, &entry.value, bytes)
        }
    }
}

/// Response future of [`RequestPolicy`]: one boxed future type for every layer whose work is `async`.
pub type ResponseFuture<E> = crate::body::BoxFuture<Result<Response<Body>, E>>;
