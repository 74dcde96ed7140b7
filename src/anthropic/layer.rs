//! `AnthropicToGeminiLayer`, the `AnthropicToGemini` service and its response future.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde_json::json;
use tower::{Layer, Service, ServiceExt};

use super::request::translate;
use super::response::{MessageContext, to_message, translate_error};
use super::stream::MessageStreamTranslator;
use super::types::MessagesRequest;
use crate::body::{Body, BoxError, DEFAULT_MAX_BODY_BYTES};
use crate::error::{ApiError, Dialect};
use crate::gemini::{
    GeminiPath, GenerateContentResponse, ListModelsResponse, Model as GeminiModel,
};
use crate::translate::http::{
    copy_request_headers, copy_response_headers, json_response, read_json,
};
use crate::translate::stream::TranslatedBody;

/// The default cap on a non-streamed upstream answer: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// At most this many pages of `GET /v1beta/models` are read for one `GET /v1/models`.
const MAX_MODEL_PAGES: usize = 100;

/// What a 404 for an unknown model name says by default.
const DEFAULT_MODEL_HINT: &str = "map the name to a Gemini model with a model alias \
     (e.g. claude-sonnet-4-5=gemini-2.5-pro), or ask for a Gemini model by its own name";

// === AnthropicToGeminiLayer ===

/// Serves Anthropic's Messages API over a Gemini service; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct AnthropicToGeminiLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    max_body_bytes: usize,
    max_response_bytes: usize,
    version: String,
    signature_in_id: bool,
    model_hint: String,
    resolver: Option<crate::facts::ModelResolver>,
}

impl Default for AnthropicToGeminiLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AnthropicToGeminiLayer {
    /// A layer with the defaults.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                version: "v1beta".to_owned(),
                signature_in_id: true,
                model_hint: DEFAULT_MODEL_HINT.to_owned(),
                resolver: None,
            }),
        }
    }

    /// The largest request body read (default 20 MiB); larger ones get a 413 and never reach
    /// the inner service.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.config).max_body_bytes = max;
        self
    }

    /// The largest non-streamed upstream answer read (default 64 MiB); a larger one is a 502.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.config).max_response_bytes = max;
        self
    }

    /// The Gemini API version of inner requests (default `v1beta`).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).version = version.into();
        self
    }

    /// Whether `tool_use` ids carry the call's thought signature
    /// (`toolu_<id>__thought__<signature>`, default `true`). Typed clients keep the id when
    /// they drop what they do not know, so a tool round trip on a thinking model sends the
    /// signature back; both carriers (the id and a `thinking` block's `signature`) are always
    /// read back.
    pub fn signature_in_tool_use_id(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.config).signature_in_id = yes;
        self
    }

    /// What a 404 for the requested model itself tells the client to do, after "model X is
    /// not a Gemini model this gateway can serve:" (default: map it with a model alias). A
    /// gateway names its own setting here (full_proxy: `MODEL_ALIASES`).
    pub fn unknown_model_hint(mut self, hint: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).model_hint = hint.into();
        self
    }

    /// The model a name will be served by, when a layer below renames models (default: the
    /// name itself): thinking, thought-signature rules and tool mixes then fit the real model
    /// (`thinking: {"type": "disabled"}` on a Claude name mapped to 2.5 Pro, which cannot turn
    /// thinking off, becomes its lowest budget), while the request keeps the client's name for
    /// the layers below to resolve, police and count.
    pub fn model_resolver(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.config).resolver = Some(crate::facts::ModelResolver::new(f));
        self
    }
}

impl<S> Layer<S> for AnthropicToGeminiLayer {
    type Service = AnthropicToGemini<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnthropicToGemini {
            inner,
            config: self.config.clone(),
        }
    }
}

// === AnthropicToGemini ===

/// Translates Anthropic Messages requests into Gemini requests for the inner service and the
/// answers back; see [`AnthropicToGeminiLayer`].
#[derive(Clone, Debug)]
pub struct AnthropicToGemini<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> AnthropicToGemini<S> {
    /// Wraps `inner` with the defaults.
    pub fn new(inner: S) -> Self {
        AnthropicToGeminiLayer::new().layer(inner)
    }

    /// A layer with the defaults.
    pub fn layer() -> AnthropicToGeminiLayer {
        AnthropicToGeminiLayer::new()
    }

    crate::define_inner_service_accessors!();
}

/// The routes this layer owns.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Messages,
    CountTokens,
    Models,
    Model(String),
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path.trim_end_matches('/') {
            "/v1/messages" => Some(Route::Messages),
            "/v1/messages/count_tokens" => Some(Route::CountTokens),
            "/v1/models" => Some(Route::Models),
            p => {
                let id = p.strip_prefix("/v1/models/")?;
                (!id.contains(':')).then(|| Route::Model(id.to_owned()))
            }
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Messages | Route::CountTokens => Method::POST,
            Route::Models | Route::Model(_) => Method::GET,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AnthropicToGemini<S>
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
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // `GET /v1/models[/{id}]` is Anthropic's only for Anthropic clients (`anthropic-version`);
        // OpenAI's and Gemini's clients have their own.
        let route = Route::of(req.uri().path()).filter(|r| {
            !matches!(r, Route::Models | Route::Model(_)) || Dialect::of(&req) == Dialect::Anthropic
        });
        let Some(route) = route else {
            return ResponseFuture::passthrough(self.inner.call(req.map(Body::new)));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let span = tracing::debug_span!("anthropic", route = ?route);
        let future = Box::pin(tracing::Instrument::instrument(
            async move {
                if req.method() != route.method() {
                    let msg = format!(
                        "{} is not allowed on {}; use {}",
                        req.method(),
                        req.uri().path(),
                        route.method()
                    );
                    return Ok(ApiError::method_not_allowed(msg).into_response(Dialect::Anthropic));
                }
                let query = req.uri().query().map(str::to_owned);
                let (parts, body) = req.into_parts();
                let call = Call {
                    inner,
                    config,
                    headers: parts.headers,
                    extensions: parts.extensions,
                    model: String::new(),
                };
                match route {
                    Route::Models => call.models(query.as_deref()).await,
                    Route::Model(id) => call.model(&id).await,
                    route => call.run(route, body).await,
                }
            },
            span,
        ));
        ResponseFuture::translate(future)
    }
}

/// One translated request's way through the inner service.
struct Call<S> {
    inner: S,
    config: Arc<Config>,
    headers: HeaderMap,
    extensions: http::Extensions,
    /// The model id of the request, as it goes in the Gemini path (for error messages).
    model: String,
}

type Answer<E> = Result<Response<Body>, E>;

impl<S, ResBody> Call<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async fn run<B>(mut self, route: Route, body: B) -> Answer<S::Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req: MessagesRequest = match read_json(
            &self.headers,
            self.config.max_body_bytes,
            body,
            Dialect::Anthropic,
        )
        .await
        {
            Ok(r) => r,
            Err(res) => return Ok(res),
        };
        if route == Route::Messages && req.max_tokens.is_none() {
            return Ok(ApiError::bad_request("max_tokens: Field required")
                .into_response(Dialect::Anthropic));
        }
        let served = self.config.resolver.as_ref().and_then(|r| {
            let name = crate::gemini::strip_models_prefix(req.model.trim());
            Some(r.resolve(name)).filter(|s| s != name)
        });
        let (model, gemini) = match translate(&req, served.as_deref()) {
            Ok(g) => g,
            Err(e) => return Ok(e.into_response(Dialect::Anthropic)),
        };
        self.model = model.clone();
        let version = &self.config.version;
        if route == Route::CountTokens {
            let mut gemini = gemini;
            gemini.model = Some(format!("models/{model}"));
            let body = json!({ "generateContentRequest": gemini });
            let path = format!("/{version}/models/{model}:countTokens");
            return self.count_tokens(path, body).await;
        }
        let stream = req.is_stream();
        let path = if stream {
            format!("/{version}/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("/{version}/models/{model}:generateContent")
        };
        let body = match serde_json::to_vec(&gemini) {
            Ok(b) => Bytes::from(b),
            Err(_) => {
                return Ok(ApiError::internal("the request could not be encoded")
                    .into_response(Dialect::Anthropic));
            }
        };
        let parallel = req
            .tool_choice
            .as_ref()
            .and_then(|c| c["disable_parallel_tool_use"].as_bool())
            != Some(true);
        let cx = MessageContext::new(req.model.trim())
            .signature_in_id(self.config.signature_in_id)
            .parallel_tool_use(parallel);
        let inner_req = self.inner_request(path, body);
        let res = self.send(inner_req).await?;
        if !stream {
            return Ok(
                match read_answer::<GenerateContentResponse, _>(res, &self.config, &self.model)
                    .await
                {
                    Ok((answer, headers)) => match to_message(&answer, &cx) {
                        Ok(m) => json_response(StatusCode::OK, &m, Some(&headers)),
                        Err(e) => e.into_response(Dialect::Anthropic),
                    },
                    Err(res) => res,
                },
            );
        }
        if !res.status().is_success() {
            return Ok(
                match read_answer::<serde_json::Value, _>(res, &self.config, &self.model).await {
                    Ok(_) => ApiError::bad_gateway("the upstream answered an error status")
                        .into_response(Dialect::Anthropic),
                    Err(res) => res,
                },
            );
        }
        let (parts, body) = res.into_parts();
        let translator = MessageStreamTranslator::new(cx);
        let max_event_bytes = crate::sse::MaxEventBytes::of(&self.extensions);
        let mut out = Response::new(Body::new(TranslatedBody::new(
            body,
            translator,
            max_event_bytes,
        )));
        copy_response_headers(&parts.headers, out.headers_mut());
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(out)
    }

    /// `GET /v1/models` for Anthropic clients: every page of Gemini's models, paged again the
    /// way Anthropic pages (`limit`, default 20, at most 1000; `after_id`; `before_id`).
    async fn models(mut self, query: Option<&str>) -> Answer<S::Error> {
        let param = |name: &str| query.and_then(|q| crate::credential::query_param(q, name));
        let limit = match param("limit").map(|l| l.parse::<usize>()) {
            None => 20,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => {
                return Ok(
                    ApiError::bad_request("limit must be an integer from 1 to 1000")
                        .into_response(Dialect::Anthropic),
                );
            }
        };
        let mut all: Vec<GeminiModel> = Vec::new();
        let mut token: Option<String> = None;
        let mut headers = HeaderMap::new();
        for _ in 0..MAX_MODEL_PAGES {
            let mut path = format!("/{}/models?pageSize=1000", self.config.version);
            if let Some(t) = &token {
                path.push_str("&pageToken=");
                path.push_str(&crate::translate::http::percent_encode(t));
            }
            let req = self.inner_get(path);
            let res = self.send(req).await?;
            let (page, h) =
                match read_answer::<ListModelsResponse, _>(res, &self.config, &self.model).await {
                    Ok(p) => p,
                    Err(res) => return Ok(res),
                };
            headers = h;
            all.extend(page.models);
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
        let ids: Vec<&str> = all.iter().map(GeminiModel::id).collect();
        let (start, end) = match (param("after_id"), param("before_id")) {
            (Some(after), _) => {
                let start = ids
                    .iter()
                    .position(|i| *i == after)
                    .map_or(ids.len(), |p| p + 1);
                (start, (start + limit).min(ids.len()))
            }
            (None, Some(before)) => {
                let end = ids.iter().position(|i| *i == before).unwrap_or(0);
                (end.saturating_sub(limit), end)
            }
            (None, None) => (0, limit.min(ids.len())),
        };
        let page: Vec<serde_json::Value> = all[start..end].iter().map(model_json).collect();
        let has_more = if param("before_id").is_some() && param("after_id").is_none() {
            start > 0
        } else {
            end < ids.len()
        };
        let body = json!({
            "data": page,
            "has_more": has_more,
            "first_id": page.first().map(|m| m["id"].clone()),
            "last_id": page.last().map(|m| m["id"].clone()),
        });
        Ok(json_response(StatusCode::OK, &body, Some(&headers)))
    }

    /// `GET /v1/models/{id}` for Anthropic clients.
    async fn model(mut self, id: &str) -> Answer<S::Error> {
        let id = match crate::translate::model_id(id) {
            Ok(id) => id.to_owned(),
            Err(e) => return Ok(e.into_response(Dialect::Anthropic)),
        };
        self.model = id.clone();
        let req = self.inner_get(format!("/{}/models/{id}", self.config.version));
        let res = self.send(req).await?;
        Ok(
            match read_answer::<GeminiModel, _>(res, &self.config, &self.model).await {
                Ok((m, headers)) => json_response(StatusCode::OK, &model_json(&m), Some(&headers)),
                Err(res) => res,
            },
        )
    }

    /// `POST /v1/messages/count_tokens`: Gemini's own count of the translated request.
    async fn count_tokens(mut self, path: String, body: serde_json::Value) -> Answer<S::Error> {
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let inner_req = self.inner_request(path, body);
        let res = self.send(inner_req).await?;
        Ok(
            match read_answer::<serde_json::Value, _>(res, &self.config, &self.model).await {
                Ok((answer, headers)) => {
                    let Some(n) = answer["totalTokens"].as_u64() else {
                        return Ok(ApiError::bad_gateway(
                            "the upstream answered countTokens without totalTokens",
                        )
                        .into_response(Dialect::Anthropic));
                    };
                    json_response(
                        StatusCode::OK,
                        &json!({ "input_tokens": n }),
                        Some(&headers),
                    )
                }
                Err(res) => res,
            },
        )
    }

    /// The inner request: copied headers (never a client credential) and extensions, the
    /// parsed Gemini path, and the Gemini dialect for errors of deeper layers.
    fn inner_request(&self, path_and_query: String, body: Bytes) -> Request<Body> {
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::try_from(path_and_query).unwrap_or_else(|_| Uri::from_static("/"));
        copy_request_headers(&self.headers, req.headers_mut());
        req.headers_mut().remove("anthropic-version");
        req.headers_mut().remove("anthropic-beta");
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *req.extensions_mut() = self.extensions.clone();
        if let Some(p) = GeminiPath::parse(req.uri().path()) {
            // The model comes from the body here: the one fact layers below read.
            crate::facts::set_call(&mut req, p);
        }
        req.extensions_mut().insert(Dialect::Gemini);
        req
    }

    /// An inner `GET` (models routes).
    fn inner_get(&self, path_and_query: String) -> Request<Body> {
        let mut req = self.inner_request(path_and_query, Bytes::new());
        *req.method_mut() = Method::GET;
        req.headers_mut().remove(header::CONTENT_TYPE);
        req
    }

    async fn send(&mut self, req: Request<Body>) -> Result<Response<ResBody>, S::Error> {
        self.inner.ready().await?.call(req).await
    }
}

/// Reads a whole upstream answer, translating error statuses into Anthropic errors (a 404
/// for the requested model itself with the configured hint).
async fn read_answer<T: DeserializeOwned, R>(
    res: Response<R>,
    config: &Config,
    model: &str,
) -> Result<(T, HeaderMap), Response<Body>>
where
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    let max = config.max_response_bytes;
    crate::translate::http::read_answer(res, max, Dialect::Anthropic, |status, body| {
        translate_error(status, body, model, &config.model_hint)
    })
    .await
}

/// An Anthropic model object for a Gemini model. Gemini says nothing of when a model was
/// made, so `created_at` is the Unix epoch.
fn model_json(m: &GeminiModel) -> serde_json::Value {
    json!({
        "type": "model",
        "id": m.id(),
        "display_name": m.display_name.as_deref().unwrap_or(m.id()),
        "created_at": "1970-01-01T00:00:00Z",
    })
}

// === ResponseFuture ===

pub use crate::translate::future::ResponseFuture;
