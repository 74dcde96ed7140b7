//! The FakeGemini server: state, routing, answers and faults.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::passage;
use crate::body::{Body, BoxError, collect_limited};
use crate::credential::query_param;
use crate::error::gemini_status_name;
use crate::gemini::{GeminiPath, Method as GMethod};

// === Public configuration types ===

/// How the fake treats a key (globally, or for one model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyBehavior {
    /// Serves requests.
    Valid,
    /// 400 `INVALID_ARGUMENT` with `ErrorInfo.reason = API_KEY_INVALID`.
    Invalid,
    /// 429 `RESOURCE_EXHAUSTED` with `QuotaFailure` and `RetryInfo`.
    Exhausted {
        /// The `retryDelay` sent in `RetryInfo`.
        retry_delay: Duration,
        /// A per-day quota (`...PerDay...` quota id) instead of per-minute.
        daily: bool,
    },
    /// 403 `PERMISSION_DENIED`.
    PermissionDenied,
    /// 503 `UNAVAILABLE` ("The model is overloaded"), Google's side failing for this key.
    Unavailable,
}

impl KeyBehavior {
    /// A per-minute quota exhaustion with this retry delay.
    pub fn exhausted(retry_delay: Duration) -> Self {
        KeyBehavior::Exhausted {
            retry_delay,
            daily: false,
        }
    }
}

/// A scripted fault, applied to the next `generateContent`/`streamGenerateContent` request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Send `n` chunks, then break the connection (a body error, not a clean end).
    DropAfter(usize),
    /// Send `n` chunks, then end cleanly without any finishReason.
    EndWithoutFinish(usize),
    /// The `chunks`-th chunk carries `reason` as finishReason and the stream ends there.
    FinishAfter {
        /// Chunks sent, the last with the finishReason.
        chunks: usize,
        /// E.g. `OTHER`, `SAFETY`, `MAX_TOKENS`.
        reason: String,
    },
    /// Send `chunks` chunks, then stay silent for `pause` (then go on; `Duration::MAX` never).
    /// A non-streamed answer stalls before its headers whatever `chunks` says.
    StallAfter {
        /// Chunks before the stall.
        chunks: usize,
        /// How long to stall.
        pause: Duration,
    },
    /// Answer with an HTTP error before any byte of the body.
    HttpError {
        /// HTTP status.
        status: u16,
        /// Message of the Gemini error body.
        message: String,
    },
    /// Send `n` chunks, then an SSE event whose data is a Gemini error object, then end.
    ErrorEventAfter(usize),
    /// Thought parts before the answer.
    Thoughts,
    /// A `functionCall` part (with a `thoughtSignature`) in one chunk without finishReason,
    /// then a final `{"text": ""}` chunk with `STOP` and usage.
    FunctionCall {
        /// Function name.
        name: String,
        /// Arguments.
        args: Value,
    },
    /// `promptFeedback.blockReason` and no candidates.
    BlockPrompt(String),
    /// A candidate with `STOP` and no parts.
    Empty,
    /// A continuation that first repeats the last `k` characters already answered (widened
    /// to whole words).
    RepeatTail(usize),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with JSON cut in the middle.
    TruncatedJson,
    /// A scripted code run whatever the request's tools: a text part, an `executableCode`
    /// part, its `codeExecutionResult`, then the answer (in streams, one part a chunk). (A
    /// request with the `codeExecution` tool gets a code run without any fault.)
    CodeExecution {
        /// The generated code (language `PYTHON`).
        code: String,
        /// What running it printed (outcome `OUTCOME_OK`).
        output: String,
    },
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl ReceivedRequest {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The upstream key the request carried (`x-goog-api-key` or `?key=`).
    pub fn api_key(&self) -> Option<String> {
        key_of(&self.headers, self.query.as_deref())
    }
}

// === Builder ===

/// Builds and starts a [`FakeGemini`].
#[derive(Clone, Debug)]
pub struct FakeGeminiBuilder {
    keys: Vec<String>,
    accept_any_key: bool,
    chunk_words: usize,
    chunk_delay: Duration,
    echo_key_in_errors: bool,
}

impl Default for FakeGeminiBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            accept_any_key: false,
            chunk_words: 4,
            chunk_delay: Duration::ZERO,
            echo_key_in_errors: true,
        }
    }
}

impl FakeGeminiBuilder {
    /// Valid keys (others get `API_KEY_INVALID`).
    pub fn keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Accept any non-empty key (demo mode).
    pub fn accept_any_key(mut self, yes: bool) -> Self {
        self.accept_any_key = yes;
        self
    }

    /// Words per stream chunk (default 4).
    pub fn chunk_words(mut self, n: usize) -> Self {
        self.chunk_words = n.max(1);
        self
    }

    /// Delay between stream chunks (default none).
    pub fn chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Whether key errors echo the key as real ones sometimes do (default on; gateways must
    /// scrub it).
    pub fn echo_key_in_errors(mut self, yes: bool) -> Self {
        self.echo_key_in_errors = yes;
        self
    }

    /// Binds `127.0.0.1:0` and serves until the [`FakeGemini`] is dropped.
    pub async fn start(self) -> io::Result<FakeGemini> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            keys: Mutex::new(
                self.keys
                    .iter()
                    .map(|k| (k.clone(), KeyBehavior::Valid))
                    .collect(),
            ),
            model_keys: Mutex::default(),
            accept_any_key: self.accept_any_key,
            chunk_words: self.chunk_words,
            chunk_delay: Mutex::new(self.chunk_delay),
            echo_key: self.echo_key_in_errors,
            counters: Mutex::default(),
            total: AtomicU64::new(0),
            received: Mutex::default(),
            faults: Mutex::default(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), stop_rx));
        Ok(FakeGemini {
            addr,
            state,
            _stop: stop_tx,
        })
    }
}

// === FakeGemini ===

/// A fake Gemini REST API on a loopback port; see the [module docs](super).
pub struct FakeGemini {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<bool>,
}

impl fmt::Debug for FakeGemini {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGemini")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeGemini {
    /// A builder.
    pub fn builder() -> FakeGeminiBuilder {
        FakeGeminiBuilder::default()
    }

    /// Starts a fake that accepts these keys, with the defaults.
    pub async fn start<I, K>(keys: I) -> io::Result<FakeGemini>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        Self::builder().keys(keys).start().await
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The deterministic answer text for a prompt (the first user turn's text).
    pub fn passage(prompt: &str) -> String {
        passage::passage(prompt)
    }

    /// The grounding sources `(title, uri)` of a prompt's answer when the request enables
    /// Google Search (`googleSearch` tool): sent in `groundingMetadata.groundingChunks` on the
    /// answer (on the last chunk of a stream).
    pub fn grounding_sources(prompt: &str) -> Vec<(String, String)> {
        passage::grounding_sources(prompt)
    }

    /// The stream chunks of [`FakeGemini::passage`] with `words` words per chunk.
    pub fn passage_chunks(prompt: &str, words: usize) -> Vec<String> {
        passage::chunks(&passage::passage(prompt), words)
    }

    /// Sets how a key behaves for every model (adding it if new).
    pub fn set_key(&self, key: &str, behavior: KeyBehavior) {
        lock(&self.state.keys).insert(key.to_owned(), behavior);
    }

    /// Sets how a key behaves for one model (overrides the key's global behaviour).
    pub fn set_key_for_model(&self, key: &str, model: &str, behavior: KeyBehavior) {
        lock(&self.state.model_keys).insert((key.to_owned(), model.to_owned()), behavior);
    }

    /// Removes every per-model override of a key.
    pub fn clear_model_overrides(&self, key: &str) {
        lock(&self.state.model_keys).retain(|(k, _), _| k != key);
    }

    /// Removes a key (it becomes invalid).
    pub fn remove_key(&self, key: &str) {
        lock(&self.state.keys).remove(key);
    }

    /// Changes the delay between stream chunks.
    pub fn set_chunk_delay(&self, d: Duration) {
        *lock(&self.state.chunk_delay) = d;
    }

    /// Queues a fault for the next generate request (faults apply in order, one a request).
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state.faults).push_back(fault);
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        lock(&self.state.faults).len()
    }

    /// Requests received with this key (any route, any outcome).
    pub fn requests_for(&self, key: &str) -> u64 {
        lock(&self.state.counters).get(key).copied().unwrap_or(0)
    }

    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Every request received, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.received).clone()
    }

    /// The last request received.
    pub fn last_received(&self) -> Option<ReceivedRequest> {
        lock(&self.state.received).last().cloned()
    }

    /// Forgets received requests and counters.
    pub fn clear_received(&self) {
        lock(&self.state.received).clear();
        lock(&self.state.counters).clear();
        self.state.total.store(0, Ordering::SeqCst);
    }
}

// === State and serving ===

struct State {
    keys: Mutex<HashMap<String, KeyBehavior>>,
    model_keys: Mutex<HashMap<(String, String), KeyBehavior>>,
    accept_any_key: bool,
    chunk_words: usize,
    chunk_delay: Mutex<Duration>,
    echo_key: bool,
    counters: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    received: Mutex<Vec<ReceivedRequest>>,
    faults: Mutex<VecDeque<Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stop = stop.clone();
        // Faults that cut the connection notify this; dropping the connection closes the socket
        // after the bytes already written (a body error would make hyper discard unflushed ones).
        let kill = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(async move {
            let k = kill.clone();
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let kill = k.clone();
                async move { Ok::<_, Infallible>(handle(state, req, kill).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
                _ = kill.notified() => {}
            }
        });
    }
}

fn key_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.and_then(|q| query_param(q, "key")))
        .filter(|k| !k.is_empty())
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    kill: Arc<tokio::sync::Notify>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
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
            match m {
                GMethod::GenerateContent => {
                    generate(&state, &path.model, &request, Mode::Unary, kill).await
                }
                GMethod::StreamGenerateContent => {
                    let mode = if sse { Mode::Sse } else { Mode::JsonArray };
                    generate(&state, &path.model, &request, mode, kill).await
                }
                GMethod::CountTokens => json_response(
                    200,
                    &json!({ "totalTokens": passage::tokens(&all_text(&request)).max(1) }),
                ),
                GMethod::EmbedContent => embed_one(&request),
                GMethod::BatchEmbedContents => embed_batch(&request),
                _ => error(404, "Method not found."),
            }
        }
        _ => error(405, "Method not allowed."),
    }
}

fn key_check(state: &State, key: &str, model: &str) -> Option<Response<Body>> {
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

// === Models ===

const MODELS: &[(&str, &str, u64, u64, bool, bool)] = &[
    // (id, display name, input limit, output limit, thinking, embedding)
    (
        "gemini-2.5-pro",
        "Gemini 2.5 Pro",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-2.5-flash",
        "Gemini 2.5 Flash",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-2.5-flash-lite",
        "Gemini 2.5 Flash-Lite",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "gemini-2.0-flash",
        "Gemini 2.0 Flash",
        1_048_576,
        8_192,
        false,
        false,
    ),
    (
        "gemini-3-pro-preview",
        "Gemini 3 Pro Preview",
        1_048_576,
        65_536,
        true,
        false,
    ),
    (
        "text-embedding-004",
        "Text Embedding 004",
        2_048,
        1,
        false,
        true,
    ),
    (
        "gemini-embedding-001",
        "Gemini Embedding 001",
        2_048,
        1,
        false,
        true,
    ),
];

fn model(id: &str) -> Option<Value> {
    MODELS
        .iter()
        .find(|m| m.0 == id)
        .map(|&(id, name, input, output, thinking, embed)| {
            let methods: Vec<&str> = if embed {
                vec!["embedContent", "batchEmbedContents", "countTokens"]
            } else {
                vec!["generateContent", "streamGenerateContent", "countTokens"]
            };
            let mut m = json!({
                "name": format!("models/{id}"),
                "version": "001",
                "displayName": name,
                "description": format!("{name}, served by FakeGemini"),
                "inputTokenLimit": input,
                "outputTokenLimit": output,
                "supportedGenerationMethods": methods,
            });
            if !embed {
                m["temperature"] = json!(1.0);
                m["topP"] = json!(0.95);
                m["topK"] = json!(64);
                m["maxTemperature"] = json!(2.0);
                m["thinking"] = json!(thinking);
            }
            m
        })
}

fn list_models(query: Option<&str>) -> Response<Body> {
    let size = query
        .and_then(|q| query_param(q, "pageSize"))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(50)
        .min(1000);
    let start = query
        .and_then(|q| query_param(q, "pageToken"))
        .and_then(|t| {
            t.strip_prefix("page-")
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(0);
    let models: Vec<Value> = MODELS
        .iter()
        .skip(start)
        .take(size)
        .filter_map(|m| model(m.0))
        .collect();
    let mut out = json!({ "models": models });
    if start + size < MODELS.len() {
        out["nextPageToken"] = json!(format!("page-{}", start + size));
    }
    json_response(200, &out)
}

// === Embeddings ===

fn embed_values(req: &Value) -> Value {
    let text = texts_of(&req["content"]).join(" ");
    let dims = req["outputDimensionality"].as_u64().unwrap_or(768) as usize;
    json!({ "values": passage::embedding(&text, dims.clamp(1, 3072)) })
}

fn embed_one(req: &Value) -> Response<Body> {
    json_response(200, &json!({ "embedding": embed_values(req) }))
}

fn embed_batch(req: &Value) -> Response<Body> {
    let Some(requests) = req["requests"].as_array() else {
        return error(
            400,
            "Invalid JSON payload received. `requests` is required.",
        );
    };
    let embeddings: Vec<Value> = requests.iter().map(embed_values).collect();
    json_response(200, &json!({ "embeddings": embeddings }))
}

// === Generation ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unary,
    Sse,
    JsonArray,
}

fn texts_of(content: &Value) -> Vec<String> {
    content["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["thought"].as_bool() != Some(true))
                .filter_map(|p| p["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn all_text(req: &Value) -> String {
    let mut out = String::new();
    for c in req["contents"].as_array().into_iter().flatten() {
        for t in texts_of(c) {
            out.push_str(&t);
            out.push(' ');
        }
    }
    for t in texts_of(&req["systemInstruction"]) {
        out.push_str(&t);
    }
    out
}

/// What the fake will answer for a request.
struct Plan {
    prompt: String,
    text: String,
    thoughts: Vec<String>,
    function_call: Option<(String, Value)>,
    prompt_tokens: u64,
}

fn plan(req: &Value, fault: Option<&Fault>) -> Plan {
    let contents: Vec<&Value> = req["contents"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let prompt = contents
        .iter()
        .find(|c| c["role"].as_str().unwrap_or("user") == "user")
        .map(|c| texts_of(c).join(""))
        .unwrap_or_default();
    let full = passage::passage(&prompt);
    let mut text = full.clone();

    // A continuation: [.., model(T), user(continue)] with T a prefix of the passage.
    if contents.len() >= 3 {
        let last = contents[contents.len() - 1];
        let prev = contents[contents.len() - 2];
        if last["role"].as_str() == Some("user") && prev["role"].as_str() == Some("model") {
            let answered = texts_of(prev).join("");
            let seam = if full.starts_with(&answered) {
                Some(answered.len())
            } else if full.starts_with(answered.trim_end()) {
                Some(answered.trim_end().len())
            } else {
                None
            };
            if let Some(at) = seam {
                let mut rest = full[at..].to_owned();
                if let Some(Fault::RepeatTail(k)) = fault {
                    // Models repeat whole words: the last `k` characters, widened back to the
                    // start of their first word.
                    let mut start = answered
                        .char_indices()
                        .rev()
                        .nth(k.saturating_sub(1))
                        .map_or(0, |(i, _)| i);
                    while start > 0 && !answered[..start].ends_with(char::is_whitespace) {
                        start = answered[..start]
                            .char_indices()
                            .next_back()
                            .map_or(0, |(i, _)| i);
                    }
                    rest = format!("{}{rest}", &answered[start..]);
                }
                text = rest;
            }
        }
    }

    // After a tool result, say what the tool returned.
    let last_parts = contents.last().and_then(|c| c["parts"].as_array());
    if let Some(resp) = last_parts.and_then(|ps| ps.iter().find_map(|p| p.get("functionResponse")))
    {
        text = format!(
            "The {} tool returned {}.",
            resp["name"].as_str().unwrap_or("function"),
            serde_json::to_string(&resp["response"]).unwrap_or_default()
        );
    }

    let include_thoughts =
        req["generationConfig"]["thinkingConfig"]["includeThoughts"].as_bool() == Some(true);
    let thoughts = if include_thoughts || matches!(fault, Some(Fault::Thoughts)) {
        passage::thoughts(&prompt)
    } else {
        Vec::new()
    };

    let forced = req["toolConfig"]["functionCallingConfig"]["mode"].as_str() == Some("ANY");
    let first_decl = req["tools"]
        .as_array()
        .and_then(|tools| {
            tools
                .iter()
                .find_map(|t| t["functionDeclarations"].as_array().and_then(|d| d.first()))
        })
        .and_then(|d| d["name"].as_str().map(str::to_owned));
    let answered_tool =
        last_parts.is_some_and(|ps| ps.iter().any(|p| p.get("functionResponse").is_some()));
    let function_call = match fault {
        Some(Fault::FunctionCall { name, args }) => Some((name.clone(), args.clone())),
        _ if forced && !answered_tool => first_decl.map(|n| (n, json!({}))),
        _ => None,
    };

    Plan {
        prompt_tokens: passage::tokens(&all_text(req)).max(1),
        prompt,
        text,
        thoughts,
        function_call,
    }
}

/// Whether the request enables Google Search grounding.
fn searches(req: &Value) -> bool {
    req["tools"].as_array().is_some_and(|tools| {
        tools.iter().any(|t| {
            ["googleSearch", "google_search", "googleSearchRetrieval"]
                .iter()
                .any(|k| t.get(*k).is_some())
        })
    })
}

/// Whether the request enables the code-execution tool.
fn executes_code(req: &Value) -> bool {
    req["tools"].as_array().is_some_and(|tools| {
        tools
            .iter()
            .any(|t| t.get("codeExecution").is_some() || t.get("code_execution").is_some())
    })
}

/// The parts of a code run, as Google sends them before the answer text: the generated code
/// and its result (it counts the words of the prompt).
fn code_execution_parts(prompt: &str) -> Vec<Value> {
    let escaped = prompt.replace('\\', "\\\\").replace('"', "\\\"");
    vec![
        json!({ "executableCode": {
            "language": "PYTHON",
            "code": format!("words = \"{escaped}\".split()\nprint(len(words))\n"),
        }}),
        json!({ "codeExecutionResult": {
            "outcome": "OUTCOME_OK",
            "output": format!("{}\n", prompt.split_whitespace().count()),
        }}),
    ]
}

/// The `groundingMetadata` of a searched answer: the sources of
/// [`FakeGemini::grounding_sources`], the query, a support for the whole text and the search
/// entry point, shaped as Google sends them.
fn grounding_metadata(prompt: &str, text: &str) -> Value {
    let chunks: Vec<Value> = passage::grounding_sources(prompt)
        .into_iter()
        .map(|(title, uri)| json!({ "web": { "uri": uri, "title": title } }))
        .collect();
    let indices: Vec<usize> = (0..chunks.len()).collect();
    json!({
        "searchEntryPoint": {
            "renderedContent": format!("<div class=\"container\"><a class=\"chip\" href=\"https://www.google.com/search?q=fake\">{}</a></div>", prompt.replace('<', "&lt;")),
        },
        "groundingChunks": chunks,
        "groundingSupports": [{
            "segment": { "startIndex": 0, "endIndex": text.len(), "text": text },
            "groundingChunkIndices": indices,
            "confidenceScores": vec![0.9; indices.len()],
        }],
        "webSearchQueries": [prompt],
    })
}

fn usage(plan: &Plan, text: &str) -> Value {
    let candidates = passage::tokens(text);
    let thoughts: u64 = plan.thoughts.iter().map(|t| passage::tokens(t)).sum();
    let mut u = json!({
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": plan.prompt_tokens + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}],
    });
    if thoughts > 0 {
        u["thoughtsTokenCount"] = json!(thoughts);
    }
    u
}

fn response_id(prompt: &str) -> String {
    format!(
        "fake-{:016x}",
        passage::tokens(prompt) ^ 0x5eed_u64.wrapping_mul(prompt.len() as u64 + 1)
    )
}

fn chunk_json(
    model: &str,
    id: &str,
    parts: Vec<Value>,
    finish: Option<&str>,
    usage: Option<Value>,
) -> Value {
    let mut candidate = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    let mut out = json!({ "candidates": [candidate], "modelVersion": model, "responseId": id });
    if let Some(u) = usage {
        out["usageMetadata"] = u;
    }
    out
}

/// One unit of output: a JSON chunk, a pause, or the end of the connection.
enum Step {
    Chunk(Value),
    Sleep(Duration),
    Break,
}

async fn generate(
    state: &State,
    model: &str,
    req: &Value,
    mode: Mode,
    kill: Arc<tokio::sync::Notify>,
) -> Response<Body> {
    let fault = lock(&state.faults).pop_front();
    match &fault {
        Some(Fault::StallAfter { pause, .. }) if mode == Mode::Unary => {
            // Before the headers: the caller waits for a response that does not come.
            tokio::select! {
                () = tokio::time::sleep(*pause.min(&Duration::from_secs(86_400))) => {}
                () = kill.notified() => {}
            }
        }
        Some(Fault::HttpError { status, message }) => return error(*status, message),
        Some(Fault::Garbage) => {
            return raw(
                200,
                "application/json",
                Bytes::from_static(b"<html>this is not json</html>"),
            );
        }
        Some(Fault::TruncatedJson) => {
            return raw(
                200,
                "application/json",
                Bytes::from_static(
                    b"{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel",
                ),
            );
        }
        _ => {}
    }
    let plan = plan(req, fault.as_ref());
    // `candidateCount`: every candidate gets the same deterministic answer, with its index.
    let candidates = req["generationConfig"]["candidateCount"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, 8) as usize;
    let id = response_id(&plan.prompt);

    if let Some(Fault::BlockPrompt(reason)) = &fault {
        let body = json!({
            "promptFeedback": { "blockReason": reason, "safetyRatings": [] },
            "usageMetadata": { "promptTokenCount": plan.prompt_tokens, "totalTokenCount": plan.prompt_tokens },
            "modelVersion": model, "responseId": id,
        });
        return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
    }
    if let Some(Fault::Empty) = &fault {
        let mut body = chunk_json(model, &id, vec![], Some("STOP"), Some(usage(&plan, "")));
        body["candidates"][0]["content"] = json!({ "role": "model" });
        return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
    }

    let mut steps = Vec::new();
    let thought_parts: Vec<Value> = plan
        .thoughts
        .iter()
        .map(|t| json!({ "text": t, "thought": true }))
        .collect();

    if let Some((name, args)) = &plan.function_call {
        let call = json!({
            "functionCall": { "name": name, "args": args },
            "thoughtSignature": "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ==",
        });
        if mode == Mode::Unary {
            let mut parts = thought_parts;
            parts.push(call);
            steps.push(Step::Chunk(chunk_json(
                model,
                &id,
                parts,
                Some("STOP"),
                Some(usage(&plan, "")),
            )));
        } else {
            for t in thought_parts {
                steps.push(Step::Chunk(chunk_json(model, &id, vec![t], None, None)));
            }
            steps.push(Step::Chunk(chunk_json(model, &id, vec![call], None, None)));
            steps.push(Step::Chunk(chunk_json(
                model,
                &id,
                vec![json!({"text": ""})],
                Some("STOP"),
                Some(usage(&plan, "")),
            )));
        }
        return emit(state, &kill, candidates, mode, steps).await;
    }

    if let Some(Fault::CodeExecution { code, output }) = &fault {
        let parts = vec![
            json!({ "text": "Let me run some code.\n" }),
            json!({ "executableCode": { "language": "PYTHON", "code": code } }),
            json!({ "codeExecutionResult": { "outcome": "OUTCOME_OK", "output": output } }),
            json!({ "text": plan.text }),
        ];
        let usage = usage(&plan, &plan.text);
        if mode == Mode::Unary {
            let body = chunk_json(model, &id, parts, Some("STOP"), Some(usage));
            return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
        }
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let last = i + 1 == n;
            steps.push(Step::Chunk(chunk_json(
                model,
                &id,
                vec![part],
                last.then_some("STOP"),
                last.then(|| usage.clone()),
            )));
        }
        return emit(state, &kill, candidates, mode, steps).await;
    }

    let grounding = searches(req).then(|| grounding_metadata(&plan.prompt, &plan.text));
    // With the code-execution tool, a fresh answer (not a continuation) first runs some code.
    let code_parts = if executes_code(req) && plan.text == passage::passage(&plan.prompt) {
        code_execution_parts(&plan.prompt)
    } else {
        Vec::new()
    };
    let pieces = passage::chunks(&plan.text, state.chunk_words);
    if mode == Mode::Unary {
        // The whole answer in one response; a finish fault cuts it short.
        let (text, finish) = match &fault {
            Some(Fault::FinishAfter { chunks, reason }) => (
                pieces[..(*chunks).min(pieces.len())].concat(),
                reason.as_str(),
            ),
            _ => (plan.text.clone(), "STOP"),
        };
        let mut parts = thought_parts;
        parts.extend(code_parts);
        parts.push(json!({ "text": text }));
        let mut body = chunk_json(model, &id, parts, Some(finish), Some(usage(&plan, &text)));
        if let Some(g) = &grounding {
            body["candidates"][0]["groundingMetadata"] = g.clone();
        }
        if let Some(Fault::DropAfter(_)) = &fault {
            return emit(
                state,
                &kill,
                candidates,
                Mode::Unary,
                vec![Step::Chunk(body), Step::Break],
            )
            .await;
        }
        return emit(state, &kill, candidates, mode, vec![Step::Chunk(body)]).await;
    }

    for t in thought_parts {
        steps.push(Step::Chunk(chunk_json(model, &id, vec![t], None, None)));
    }
    if !code_parts.is_empty() {
        steps.push(Step::Chunk(chunk_json(model, &id, code_parts, None, None)));
    }
    let n = pieces.len();
    let mut sent = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        match &fault {
            Some(Fault::DropAfter(k)) if i == *k => {
                steps.push(Step::Break);
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::EndWithoutFinish(k)) if i == *k => {
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::ErrorEventAfter(k)) if i == *k => {
                steps.push(Step::Chunk(json!({"error": {"code": 500, "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", "status": "INTERNAL"}})));
                return emit(state, &kill, candidates, mode, steps).await;
            }
            Some(Fault::StallAfter { chunks, pause }) if i == *chunks => {
                steps.push(Step::Sleep(*pause))
            }
            _ => {}
        }
        sent.push_str(piece);
        let last = i + 1 == n;
        let finish_here = match &fault {
            Some(Fault::FinishAfter { chunks, reason }) if i + 1 == (*chunks).max(1).min(n) => {
                Some(reason.as_str())
            }
            _ if last => Some("STOP"),
            _ => None,
        };
        let usage = finish_here.map(|_| usage(&plan, &sent));
        let mut chunk = chunk_json(
            model,
            &id,
            vec![json!({ "text": piece })],
            finish_here,
            usage,
        );
        if let (Some(g), Some(_)) = (&grounding, finish_here) {
            // Like Google, the sources come with the last chunk.
            chunk["candidates"][0]["groundingMetadata"] = g.clone();
        }
        steps.push(Step::Chunk(chunk));
        if finish_here.is_some() {
            break;
        }
    }
    // A fault at or past the end of the answer.
    match &fault {
        Some(Fault::DropAfter(k)) if *k >= n => steps.push(Step::Break),
        Some(Fault::StallAfter { chunks, pause }) if *chunks >= n => {
            steps.push(Step::Sleep(*pause))
        }
        _ => {}
    }
    emit(state, &kill, candidates, mode, steps).await
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// Sends steps as a unary JSON body, SSE events or a streamed JSON array.
async fn emit(
    state: &State,
    kill: &Arc<tokio::sync::Notify>,
    candidates: usize,
    mode: Mode,
    steps: Vec<Step>,
) -> Response<Body> {
    let delay = *lock(&state.chunk_delay);
    let kill = kill.clone();
    let (tx, rx) = mpsc::channel::<FrameResult>(4);
    tokio::spawn(async move {
        let mut first = true;
        if mode == Mode::JsonArray
            && tx
                .send(Ok(Frame::data(Bytes::from_static(b"["))))
                .await
                .is_err()
        {
            return;
        }
        for step in steps {
            match step {
                Step::Chunk(mut v) => {
                    fan_out(&mut v, candidates);
                    if !first && mode != Mode::Unary && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let json = serde_json::to_string(&v).unwrap_or_default();
                    let bytes = match mode {
                        Mode::Unary => Bytes::from(json),
                        Mode::Sse => Bytes::from(format!("data: {json}\r\n\r\n")),
                        Mode::JsonArray if first => Bytes::from(json),
                        Mode::JsonArray => Bytes::from(format!(",\r\n{json}")),
                    };
                    first = false;
                    if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => {
                    if d == Duration::MAX {
                        // Hold the stream open until the client goes away.
                        tx.closed().await;
                        return;
                    }
                    tokio::time::sleep(d).await;
                }
                Step::Break => {
                    // Let the server write what was sent (a real cut happens after the bytes
                    // left), then drop the connection without a clean end of the body.
                    while tx.capacity() < tx.max_capacity() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    kill.notify_one();
                    tx.closed().await;
                    return;
                }
            }
        }
        if mode == Mode::JsonArray {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"]")))).await;
        }
    });
    let content_type = if mode == Mode::Sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    let mut res = Response::new(Body::new(StreamBody::new(ChannelStream(rx))));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// Copies candidate 0 of a chunk into `n` candidates with indexes 0..n.
fn fan_out(chunk: &mut Value, n: usize) {
    if n <= 1 {
        return;
    }
    if let Some(cands) = chunk["candidates"].as_array_mut()
        && cands.len() == 1
    {
        let first = cands[0].clone();
        cands.clear();
        for i in 0..n {
            let mut c = first.clone();
            c["index"] = json!(i);
            cands.push(c);
        }
    }
}

struct ChannelStream(mpsc::Receiver<FrameResult>);

impl futures_core::Stream for ChannelStream {
    type Item = FrameResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        self.0.poll_recv(cx)
    }
}

// === Responses ===

fn raw(status: u16, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    raw(
        status,
        "application/json; charset=UTF-8",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

fn error(status: u16, message: &str) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &json!({"error": {"code": status, "message": message, "status": gemini_status_name(code)}}),
    )
}
