//! The [`AffinityLayer`], its service and response future.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::{Value, json};
use tower::{Layer, Service};

use super::names::{Route, named_in_body, route, upload_target};
use super::store::{AffinityStore, MemoryAffinityStore, Pinned};
use crate::body::{Body, BoxError, BoxFuture, collect_limited};
use crate::error::{ApiError, Dialect};
use crate::facts::{Identity, KeyPin, NamedResources, Report};
use crate::secret::ClientKey;

const FILE_TTL: Duration = Duration::from_secs(48 * 3600);
const CACHE_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most bytes of a creation answer read to learn the resource's name.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
struct Config {
    default_ttl: Duration,
}

// === impl AffinityLayer ===

/// Sends every request that names a resource (a file, cached content, batch, operation or
/// upload session) to the key whose project holds it, and shows each client only the resources
/// it created; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct AffinityLayer {
    store: Arc<dyn AffinityStore>,
    config: Config,
}

impl Default for AffinityLayer {
    fn default() -> Self {
        Self::new(Arc::new(MemoryAffinityStore::new()))
    }
}

impl AffinityLayer {
    /// A layer keeping its pins in `store`.
    pub fn new(store: Arc<dyn AffinityStore>) -> Self {
        Self {
            store,
            config: Config {
                default_ttl: DEFAULT_TTL,
            },
        }
    }

    /// How long batches and long-running operations stay pinned (they carry no expiry of
    /// their own). Default: 7 days. Files are kept 48 h, cached contents until their
    /// `expireTime`.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn AffinityStore> {
        &self.store
    }
}

impl<S> Layer<S> for AffinityLayer {
    type Service = Affinity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Affinity {
            inner,
            store: self.store.clone(),
            config: self.config,
        }
    }
}

// === impl Affinity ===

/// The service made by [`AffinityLayer`].
#[derive(Clone, Debug)]
pub struct Affinity<S> {
    inner: S,
    store: Arc<dyn AffinityStore>,
    config: Config,
}

impl<S> Affinity<S> {
    /// Wraps `inner` with pins kept in `store`.
    pub fn new(inner: S, store: Arc<dyn AffinityStore>) -> Self {
        AffinityLayer::new(store).layer(inner)
    }

    crate::define_inner_service_accessors!();
}

/// Response future of [`Affinity`].
pub type ResponseFuture<E> = BoxFuture<Result<Response<Body>, E>>;

impl<S, ResB> Service<Request<Body>> for Affinity<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Own-key mode: the client's own project holds its resources; nothing to remember.
        if req.extensions().get::<ClientKey>().is_some() {
            let fut = inner.call(req);
            return BoxFuture(Box::pin(async move { fut.await.map(|r| r.map(Body::new)) }));
        }
        let call = Call {
            store: self.store.clone(),
            config: self.config,
        };
        BoxFuture(Box::pin(call.run(inner, req)))
    }
}

struct Call {
    store: Arc<dyn AffinityStore>,
    config: Config,
}

/// Who asks: the client's id, and whether it sees everything.
struct Asker {
    id: String,
    admin: bool,
}

impl Asker {
    fn of<B>(req: &Request<B>) -> Self {
        match req.extensions().get::<Identity>() {
            Some(i) => Asker {
                id: i.subject().to_owned(),
                admin: i.is_admin(),
            },
            // No authentication in front: one tenant, who sees everything.
            None => Asker {
                id: String::new(),
                admin: true,
            },
        }
    }

    fn sees(&self, e: &Pinned) -> bool {
        self.admin || e.owner == self.id
    }
}

impl Call {
    async fn run<S, ResB>(
        self,
        mut inner: S,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<ResB>>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let dialect = Dialect::of(&req);
        let asker = Asker::of(&req);
        let report = Report::of(&req).cloned();
        let route = route(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
        );

        // The resources the body names (buffered bodies only: upload bytes are never read).
        let mut named: Vec<String> = req
            .body()
            .as_bytes()
            .map(|b| named_in_body(b))
            .unwrap_or_default();
        match &route {
            Route::List(collection) => {
                let query = req.uri().query().unwrap_or_default().to_owned();
                return Ok(self.list(&query, collection, &asker, dialect).await);
            }
            Route::One { name } | Route::Within { name } => named.push(name.clone()),
            Route::UploadStart | Route::UploadOther => {
                named.extend(upload_target(req.uri().path()));
            }
            Route::UploadBytes(id) => {
                let name = format!("uploads/{id}");
                match self.store.get(&name).await.filter(|e| asker.sees(e)) {
                    Some(e) => {
                        // To the upstream's own session URL, on the key that opened it.
                        match e.meta.parse::<http::uri::PathAndQuery>() {
                            Ok(pq) => {
                                let mut parts = req.uri().clone().into_parts();
                                parts.path_and_query = Some(pq);
                                if let Ok(uri) = http::Uri::from_parts(parts) {
                                    *req.uri_mut() = uri;
                                }
                            }
                            Err(_) => return Ok(not_found(&name, dialect)),
                        }
                        req.extensions_mut()
                            .insert(KeyPin::new(e.key_id.as_str(), "the upload session"));
                    }
                    None => {
                        return Ok(ApiError::not_found(
                            "the upload session was not found; start the upload again",
                        )
                        .into_response(dialect));
                    }
                }
            }
            _ => {}
        }

        // Pin to the one key holding what the request names.
        let mut pin: Option<(String, String)> = None;
        for name in &named {
            let Some(e) = self.store.get(name).await else {
                if matches!(route, Route::One { .. } | Route::Within { .. }) && !asker.admin {
                    return Ok(not_found(name, dialect));
                }
                continue;
            };
            if !asker.sees(&e) {
                return Ok(not_found(name, dialect));
            }
            match &pin {
                Some((key, first)) if *key != e.key_id => {
                    return Ok(ApiError::bad_request(format!(
                        "{first} and {name} live in different upstream projects of this gateway and cannot be used in one request; upload or create them again with one request's resources together"
                    ))
                    .into_response(dialect));
                }
                Some(_) => {}
                None => pin = Some((e.key_id.clone(), name.clone())),
            }
        }
        if let Some((key, name)) = pin {
            req.extensions_mut().insert(KeyPin::new(key, name));
        }
        if !named.is_empty() {
            req.extensions_mut().insert(NamedResources(named.clone()));
        }

        let host = gateway_base(&req);
        let method = req.method().clone();
        let res = inner.call(req).await?;
        let res = res.map(Body::new);
        if !res.status().is_success() {
            return Ok(res);
        }
        let key_id = report.and_then(|r| r.key_id());
        let Some(key_id) = key_id else {
            return Ok(res);
        };
        match route {
            Route::UploadStart => Ok(self.rewrite_upload_url(res, &key_id, &asker, host).await),
            Route::UploadBytes(id) => {
                let (res, answer) = read_answer(res).await;
                if let Some(file) = answer.as_ref().and_then(|a| a.get("file")) {
                    self.record(file, &key_id, &asker.id).await;
                    self.store.remove(&format!("uploads/{id}")).await;
                }
                Ok(res)
            }
            Route::UploadOther => {
                let (res, answer) = read_answer(res).await;
                if let Some(file) = answer.as_ref().and_then(|a| a.get("file")) {
                    self.record(file, &key_id, &asker.id).await;
                }
                Ok(res)
            }
            Route::Create if is_event_stream(&res) => {
                // A streamed interaction: its id comes in the first event.
                let (parts, body) = res.into_parts();
                let body = Body::new(PinFromStream {
                    inner: body,
                    decoder: Some(crate::sse::Decoder::new().max_event_bytes(MAX_ANSWER)),
                    read: 0,
                    pin: Some((self, key_id, asker.id)),
                    pending: None,
                    held: None,
                });
                Ok(Response::from_parts(parts, body))
            }
            Route::Create => {
                let (res, answer) = read_answer(res).await;
                if let Some(answer) = &answer {
                    self.record(answer, &key_id, &asker.id).await;
                }
                Ok(res)
            }
            Route::One { name } => {
                if method == http::Method::DELETE {
                    self.store.remove(&name).await;
                    return Ok(res);
                }
                if method == http::Method::POST {
                    return Ok(res); // `:cancel`: the answer is empty
                }
                let (res, answer) = read_answer(res).await;
                if let (Some(answer), Some(old)) = (&answer, self.store.get(&name).await) {
                    if answer.get("name").and_then(Value::as_str) == Some(name.as_str()) {
                        self.record(answer, &old.key_id, &old.owner).await;
                    }
                }
                Ok(res)
            }
            Route::List(_) | Route::Within { .. } | Route::Other => Ok(res),
        }
    }

    /// Remembers the resource an answer describes (its `name`), on `key_id`, for `owner`.
    async fn record(&self, answer: &Value, key_id: &str, owner: &str) {
        // Resources carry a `name`; a stored interaction only an `id`.
        let interaction = answer
            .get("object")
            .and_then(Value::as_str)
            .filter(|o| *o == "interaction")
            .and(answer.get("id"))
            .and_then(Value::as_str)
            .map(|id| format!("interactions/{id}"));
        let Some(name) = answer
            .get("name")
            .and_then(Value::as_str)
            .or(interaction.as_deref())
        else {
            return;
        };
        let now = crate::rfc3339::now();
        let expires_at = if name.starts_with("files/") {
            answer
                .get("expirationTime")
                .and_then(Value::as_str)
                .and_then(crate::rfc3339::parse)
                .unwrap_or(now + FILE_TTL.as_secs())
        } else if name.starts_with("cachedContents/") {
            answer
                .get("expireTime")
                .and_then(Value::as_str)
                .and_then(crate::rfc3339::parse)
                .unwrap_or(now + CACHE_TTL.as_secs())
        } else {
            now + self.config.default_ttl.as_secs()
        };
        let created_at = self.store.get(name).await.map_or(now, |e| e.created_at);
        tracing::debug!(resource = %name, key.id = %key_id, "resource pinned to its key");
        self.store
            .put(Pinned {
                name: name.to_owned(),
                key_id: key_id.to_owned(),
                owner: owner.to_owned(),
                created_at,
                expires_at,
                meta: answer.to_string(),
            })
            .await;
    }

    /// Points a resumable upload's `X-Goog-Upload-URL` at the gateway, under an id of its own
    /// that maps to the upstream's URL and the key that opened the session.
    async fn rewrite_upload_url(
        &self,
        mut res: Response<Body>,
        key_id: &str,
        asker: &Asker,
        base: Option<String>,
    ) -> Response<Body> {
        let Some(url) = res
            .headers()
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<http::Uri>().ok())
        else {
            return res;
        };
        res.headers_mut().remove("x-goog-upload-url");
        // Google's own session id: with it the bytes could go around the gateway.
        res.headers_mut().remove("x-guploader-uploadid");
        let Some(pq) = url.path_and_query() else {
            return res;
        };
        // The upstream's session URL without any `key=` it may carry: the key goes as a header.
        let query: Vec<&str> = pq
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("key="))
            .collect();
        let upstream = if query.is_empty() {
            pq.path().to_owned()
        } else {
            format!("{}?{}", pq.path(), query.join("&"))
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = crate::rfc3339::now();
        self.store
            .put(Pinned {
                name: format!("uploads/{id}"),
                key_id: key_id.to_owned(),
                owner: asker.id.clone(),
                created_at: now,
                expires_at: now + UPLOAD_TTL.as_secs(),
                meta: upstream,
            })
            .await;
        let base = base.unwrap_or_default();
        let ours = format!("{base}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable");
        if let Ok(v) = HeaderValue::from_str(&ours) {
            res.headers_mut().insert("x-goog-upload-url", v);
        }
        res
    }

    /// Lists the asker's resources of `collection` from the pins, across every key.
    async fn list(
        &self,
        query: &str,
        collection: &str,
        asker: &Asker,
        dialect: Dialect,
    ) -> Response<Body> {
        let page_size = crate::credential::query_param(query, "pageSize")
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(10)
            .min(100);
        let start =
            match crate::credential::query_param(query, "pageToken").filter(|t| !t.is_empty()) {
                None => 0,
                Some(t) => match decode_token(&t) {
                    Some(n) => n,
                    None => {
                        return ApiError::bad_request("the pageToken is not one this gateway gave")
                            .into_response(dialect);
                    }
                },
            };
        let owner = (!asker.admin).then_some(asker.id.as_str());
        let all = self.store.list(&format!("{collection}/"), owner).await;
        let items: Vec<Value> = all
            .iter()
            .skip(start)
            .take(page_size)
            .filter_map(|e| serde_json::from_str(&e.meta).ok())
            .collect();
        let field = if collection == "batches" {
            "operations"
        } else {
            collection
        };
        let mut out = json!({ field: items });
        if start + page_size < all.len() {
            out["nextPageToken"] = json!(encode_token(start + page_size));
        }
        let mut res = Response::new(Body::from(out.to_string()));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        res
    }
}

/// An opaque page token: the position, salted so that it reads as no number.
fn encode_token(n: usize) -> String {
    format!("gw1.{:x}", n ^ 0x5a5a)
}

fn decode_token(t: &str) -> Option<usize> {
    let hex = t.strip_prefix("gw1.")?;
    usize::from_str_radix(hex, 16).ok().map(|n| n ^ 0x5a5a)
}

fn not_found(name: &str, dialect: Dialect) -> Response<Body> {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("{name} was not found (or this client token did not create it)"),
    )
    .into_response(dialect)
}

/// `scheme://host` the client reached the gateway at (`X-Forwarded-Proto` and `Host`).
fn gateway_base<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))?;
    if host.is_empty() || host.contains(['/', ' ', '?', '#', '@']) {
        return None;
    }
    let scheme = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .or_else(|| req.uri().scheme_str())
        .unwrap_or("http");
    Some(format!("{scheme}://{host}"))
}

fn is_event_stream<B>(res: &Response<B>) -> bool {
    res.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

type PinFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Relays a streamed creation (`POST interactions` with `stream: true`) and pins the resource
/// its first events name to the key that serves it, before that event reaches the client:
/// a client cut off may resume at once (`GET interactions/{id}?stream=true&last_event_id=`)
/// and must find the pin. Only the first `MAX_ANSWER` bytes are looked at.
struct PinFromStream {
    inner: Body,
    /// `None` once the resource is pinned (or the stream named none).
    decoder: Option<crate::sse::Decoder>,
    read: usize,
    /// What the pin needs: the call's store, the serving key, the owner.
    pin: Option<(Call, String, String)>,
    /// The pin being written; the frame that named the resource waits for it.
    pending: Option<PinFuture>,
    held: Option<Result<http_body::Frame<Bytes>, BoxError>>,
}

impl PinFromStream {
    /// Looks for the created resource in `data`; starts writing its pin when found.
    fn scan(&mut self, data: &Bytes) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        decoder.push(data.clone());
        self.read = self.read.saturating_add(data.len());
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => {
                    let Some(json) = event
                        .data_str()
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    else {
                        continue;
                    };
                    let Some(mut interaction) = json.get("interaction").cloned() else {
                        continue;
                    };
                    if interaction.get("id").and_then(Value::as_str).is_none() {
                        continue;
                    }
                    // Stream events carry a partial interaction, maybe without `object`.
                    interaction["object"] = json!("interaction");
                    self.decoder = None;
                    if let Some((call, key_id, owner)) = self.pin.take() {
                        self.pending = Some(Box::pin(async move {
                            call.record(&interaction, &key_id, &owner).await;
                        }));
                    }
                    return;
                }
                Ok(None) => break,
                Err(_) => {
                    self.decoder = None;
                    return;
                }
            }
        }
        if self.read > MAX_ANSWER {
            self.decoder = None;
        }
    }
}

impl http_body::Body for PinFromStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(pending) = &mut this.pending {
                std::task::ready!(pending.as_mut().poll(cx));
                this.pending = None;
                if let Some(frame) = this.held.take() {
                    return Poll::Ready(Some(frame));
                }
            }
            let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
            if let Some(Ok(f)) = &frame {
                if let Some(data) = f.data_ref() {
                    let data = data.clone();
                    this.scan(&data);
                }
            }
            if this.pending.is_some() {
                this.held = frame;
                continue;
            }
            return Poll::Ready(frame);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::default()
    }
}

/// Reads a (small) successful answer as JSON, giving the response back whole. An answer
/// without a `Content-Length` of at most 1 MiB is relayed unread.
async fn read_answer(res: Response<Body>) -> (Response<Body>, Option<Value>) {
    let small = res
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= MAX_ANSWER)
        || res.body().as_bytes().is_some_and(|b| b.len() <= MAX_ANSWER);
    if !small {
        return (res, None);
    }
    let (parts, body) = res.into_parts();
    match collect_limited(body, MAX_ANSWER).await {
        Ok(bytes) => {
            let json = serde_json::from_slice(&bytes).ok();
            (Response::from_parts(parts, Body::from(bytes)), json)
        }
        Err(_) => (Response::from_parts(parts, Body::empty()), None),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_tokens_round_trip() {
        for n in [0, 10, 99, 12345] {
            assert_eq!(super::decode_token(&super::encode_token(n)), Some(n));
        }
        assert_eq!(super::decode_token("10"), None);
    }
}
