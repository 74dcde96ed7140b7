//! `OpenAiToGeminiLayer`, the `OpenAiToGemini` service and its response future.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use serde::de::DeserializeOwned;
use tower::{Layer, Service, ServiceExt};

use super::request::{
    ReasoningBudgets, TranslateOptions, model_id, to_gemini_image_request, to_gemini_request,
};
use super::response::{
    ChatContext, copy_response_headers, embedding_response, generated_images, json_response,
    model_list, model_of, to_chat_completion, translate_error,
};
use super::stream::StreamTranslator;
use super::types::{
    ChatCompletionRequest, EmbeddingInput, EmbeddingRequest, ImageGenerationRequest,
    ImagesResponse, ImagesUsage,
};
use crate::body::{Body, BoxError};
use crate::error::{ApiError, Dialect};
use crate::gemini::{
    BatchEmbedContentsRequest, BatchEmbedContentsResponse, Content, EmbedContentRequest,
    GeminiPath, GenerateContentResponse, ListModelsResponse, Model as GeminiModel,
};
use crate::translate::http::{copy_request_headers, percent_encode};
use crate::translate::stream::TranslatedBody;

use crate::body::DEFAULT_MAX_BODY_BYTES;
/// The default cap on a non-streamed upstream answer: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// At most this many pages of `GET /v1beta/models` are read for one `GET /v1/models`.
const MAX_MODEL_PAGES: usize = 100;

// === OpenAiToGeminiLayer ===

/// Serves OpenAI's chat completions, models and embeddings routes over a Gemini service; see
/// the [module docs](super).
#[derive(Clone, Debug)]
pub struct OpenAiToGeminiLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) max_body_bytes: usize,
    pub(super) max_response_bytes: usize,
    pub(super) version: String,
    owned_by: String,
    page_size: u32,
    pub(super) options: TranslateOptions,
    pub(super) responses: super::responses::Keeping,
    resolver: Option<crate::facts::ModelResolver>,
}

impl Config {
    /// The translation options for a request naming `model`: the configured ones, told the
    /// model that will really serve it when a resolver says it differs.
    pub(super) fn options_for(&self, model: &str) -> std::borrow::Cow<'_, TranslateOptions> {
        let model = crate::gemini::strip_models_prefix(model.trim());
        match self.resolver.as_ref().map(|r| r.resolve(model)) {
            Some(served) if served != model => {
                std::borrow::Cow::Owned(self.options.clone().served_by(served))
            }
            _ => std::borrow::Cow::Borrowed(&self.options),
        }
    }
}

impl Default for OpenAiToGeminiLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenAiToGeminiLayer {
    /// A layer with the defaults.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                version: "v1beta".to_owned(),
                owned_by: "google".to_owned(),
                page_size: 1000,
                options: TranslateOptions::default(),
                responses: super::responses::Keeping {
                    store: Arc::new(super::responses::MemoryResponseStore::new()),
                    ttl: super::responses::DEFAULT_RESPONSE_TTL,
                    max_bytes: super::responses::DEFAULT_MAX_STORED_RESPONSE_BYTES,
                },
                resolver: None,
            }),
        }
    }

    /// The largest OpenAI request body read (default 20 MiB); larger ones get a 413 and never
    /// reach the inner service.
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

    /// The `owned_by` of listed models (default `google`).
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).owned_by = owner.into();
        self
    }

    /// The `pageSize` of each `GET /v1beta/models` page read for `GET /v1/models` (default
    /// 1000; every page is read either way).
    pub fn models_page_size(mut self, size: u32) -> Self {
        Arc::make_mut(&mut self.config).page_size = size.max(1);
        self
    }

    /// Thinking budgets for `reasoning_effort` (default [`ReasoningBudgets::default`]).
    pub fn reasoning_budgets(mut self, budgets: ReasoningBudgets) -> Self {
        let c = Arc::make_mut(&mut self.config);
        c.options = c.options.clone().reasoning_budgets(budgets);
        self
    }

    /// Where `/v1/responses` keeps stored responses (default a
    /// [`MemoryResponseStore`](super::responses::MemoryResponseStore) of this layer; share a
    /// Redis or SQLite store so every instance continues every response).
    pub fn response_store(mut self, store: Arc<dyn super::responses::ResponseStore>) -> Self {
        Arc::make_mut(&mut self.config).responses.store = store;
        self
    }

    /// How long a stored response is kept (default 30 days,
    /// [`DEFAULT_RESPONSE_TTL`](super::responses::DEFAULT_RESPONSE_TTL)).
    pub fn response_ttl(mut self, ttl: std::time::Duration) -> Self {
        Arc::make_mut(&mut self.config).responses.ttl = ttl;
        self
    }

    /// The largest conversation one stored response keeps (its history and answer as JSON;
    /// default 32 MiB,
    /// [`DEFAULT_MAX_STORED_RESPONSE_BYTES`](super::responses::DEFAULT_MAX_STORED_RESPONSE_BYTES)).
    /// A larger one is answered but not stored (a warning says so): a client continues it by
    /// sending the history itself.
    pub fn max_stored_response_bytes(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.config).responses.max_bytes = max;
        self
    }

    /// Whether tool call ids carry thought signatures (default `true`; see
    /// [`TranslateOptions::signature_in_tool_call_id`]).
    pub fn signature_in_tool_call_id(mut self, yes: bool) -> Self {
        let c = Arc::make_mut(&mut self.config);
        c.options = c.options.clone().signature_in_tool_call_id(yes);
        self
    }

    /// The model a name will be served by, when a layer below renames models (default: the
    /// name itself). Thinking levels and budgets, thought-signature rules and tool mixes then
    /// fit the real model (`reasoning_effort: "none"` on an alias of 2.5 Pro, which cannot turn
    /// thinking off, becomes its lowest budget), while the request keeps the client's name for
    /// the layers below to resolve, police and count.
    pub fn model_resolver(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.config).resolver = Some(crate::facts::ModelResolver::new(f));
        self
    }
}

impl<S> Layer<S> for OpenAiToGeminiLayer {
    type Service = OpenAiToGemini<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenAiToGemini {
            inner,
            config: self.config.clone(),
        }
    }
}

// === OpenAiToGemini ===

/// Translates OpenAI requests into Gemini requests for the inner service and the answers
/// back; see [`OpenAiToGeminiLayer`].
#[derive(Clone, Debug)]
pub struct OpenAiToGemini<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> OpenAiToGemini<S> {
    /// Wraps `inner` with the defaults.
    pub fn new(inner: S) -> Self {
        OpenAiToGeminiLayer::new().layer(inner)
    }

    /// A layer with the defaults.
    pub fn layer() -> OpenAiToGeminiLayer {
        OpenAiToGeminiLayer::new()
    }

    crate::define_inner_service_accessors!();
}

/// The OpenAI routes this layer owns.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Chat,
    Models,
    Model(String),
    Embeddings,
    Images,
    Responses,
    Response(String),
    ResponseInputItems(String),
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Route::Chat),
            "/v1/models" => Some(Route::Models),
            "/v1/embeddings" => Some(Route::Embeddings),
            "/v1/images/generations" => Some(Route::Images),
            "/v1/responses" => Some(Route::Responses),
            p if p.starts_with("/v1/responses/") => {
                let rest = &p["/v1/responses/".len()..];
                match rest.split_once('/') {
                    None => Some(Route::Response(rest.to_owned())),
                    Some((id, "input_items")) => Some(Route::ResponseInputItems(id.to_owned())),
                    Some(_) => None,
                }
            }
            p => {
                let id = p.strip_prefix("/v1/models/")?;
                (!id.contains(':')).then(|| Route::Model(id.to_owned()))
            }
        }
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Chat | Route::Embeddings | Route::Images | Route::Responses => &[Method::POST],
            Route::Models | Route::Model(_) | Route::ResponseInputItems(_) => &[Method::GET],
            Route::Response(_) => &[Method::GET, Method::DELETE],
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OpenAiToGemini<S>
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
        // `GET /v1/models[/{id}]` from a Gemini client (google-genai defaults to `/v1`) is
        // Gemini's own route: pass it through.
        let route = Route::of(req.uri().path()).filter(|r| {
            !matches!(r, Route::Models | Route::Model(_)) || Dialect::of(&req) == Dialect::OpenAi
        });
        let Some(route) = route else {
            return ResponseFuture::passthrough(self.inner.call(req.map(Body::new)));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let span = tracing::debug_span!("openai", route = ?route, path = %crate::secret::scrub(req.uri().path()));
        let future = Box::pin(tracing::Instrument::instrument(
            async move {
                if !route.methods().contains(req.method()) {
                    let allowed: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
                    let msg = format!(
                        "{} is not allowed on {}; use {}",
                        req.method(),
                        req.uri().path(),
                        allowed.join(" or ")
                    );
                    return Ok(ApiError::method_not_allowed(msg).into_response(Dialect::OpenAi));
                }
                let (parts, body) = req.into_parts();
                let method = parts.method;
                let ctx = Call {
                    inner,
                    config,
                    headers: parts.headers,
                    extensions: parts.extensions,
                };
                match route {
                    Route::Chat => ctx.chat(body).await,
                    Route::Embeddings => ctx.embeddings(body).await,
                    Route::Images => ctx.images(body).await,
                    Route::Models => ctx.models().await,
                    Route::Model(id) => ctx.model(&id).await,
                    Route::Responses => ctx.create_response(body).await,
                    Route::Response(id) if method == Method::DELETE => {
                        ctx.delete_response(&id).await
                    }
                    Route::Response(id) => ctx.get_response(&id).await,
                    Route::ResponseInputItems(id) => ctx.response_input_items(&id).await,
                }
            },
            span,
        ));
        ResponseFuture::translate(future)
    }
}

/// One translated request's way through the inner service.
pub(super) struct Call<S> {
    inner: S,
    pub(super) config: Arc<Config>,
    pub(super) headers: HeaderMap,
    pub(super) extensions: http::Extensions,
}

pub(super) type Answer<E> = Result<Response<Body>, E>;

impl<S, ResBody> Call<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    /// The inner request: copied headers (never a client credential) and extensions, the
    /// parsed Gemini path, and the Gemini dialect for errors of deeper layers.
    pub(super) fn inner_request(
        &self,
        method: Method,
        path_and_query: String,
        body: Option<Bytes>,
    ) -> Request<Body> {
        let mut req = Request::new(body.map_or_else(Body::empty, Body::from));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::try_from(path_and_query).unwrap_or_else(|_| Uri::from_static("/"));
        copy_request_headers(&self.headers, req.headers_mut());
        if req.method() == Method::POST {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        *req.extensions_mut() = self.extensions.clone();
        if let Some(p) = GeminiPath::parse(req.uri().path()) {
            // The model comes from the body here: the one fact layers below read.
            crate::facts::set_call(&mut req, p);
        }
        req.extensions_mut().insert(Dialect::Gemini);
        req
    }

    pub(super) async fn send(&mut self, req: Request<Body>) -> Result<Response<ResBody>, S::Error> {
        self.inner.ready().await?.call(req).await
    }

    async fn chat<B>(mut self, body: B) -> Answer<S::Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req: ChatCompletionRequest =
            match read_json(&self.headers, self.config.max_body_bytes, body).await {
                Ok(r) => r,
                Err(res) => return Ok(res),
            };
        let options = self.config.options_for(&req.model);
        let gemini = match to_gemini_request(&req, &options) {
            Ok(g) => g,
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let model = match model_id(&req.model) {
            Ok(m) => m.to_owned(),
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let cx = ChatContext::for_request(&req, &self.config.options);
        let stream = req.is_stream();
        let path = if stream {
            format!(
                "/{}/models/{model}:streamGenerateContent?alt=sse",
                self.config.version
            )
        } else {
            format!("/{}/models/{model}:generateContent", self.config.version)
        };
        let body = match serde_json::to_vec(&gemini) {
            Ok(b) => Bytes::from(b),
            Err(_) => {
                return Ok(ApiError::internal("the request could not be encoded")
                    .into_response(Dialect::OpenAi));
            }
        };
        let inner_req = self.inner_request(Method::POST, path, Some(body));
        let res = self.send(inner_req).await?;
        if !stream {
            return Ok(
                match read_answer::<GenerateContentResponse, _>(self.config.max_response_bytes, res)
                    .await
                {
                    Ok((answer, headers)) => match to_chat_completion(&answer, &cx) {
                        Ok(c) => json_response(StatusCode::OK, &to_value(&c), Some(&headers)),
                        Err(e) => e.into_response(Dialect::OpenAi),
                    },
                    Err(res) => res,
                },
            );
        }
        if !res.status().is_success() {
            return Ok(
                match read_answer::<serde_json::Value, _>(self.config.max_response_bytes, res).await
                {
                    Ok(_) => ApiError::bad_gateway("the upstream answered an error status")
                        .into_response(Dialect::OpenAi),
                    Err(res) => res,
                },
            );
        }
        let (parts, body) = res.into_parts();
        let translator = StreamTranslator::new(cx, req.include_usage());
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

    /// `POST /v1/images/generations`: one `:generateContent` call with `responseModalities:
    /// ["IMAGE"]` per image asked for.
    async fn images<B>(mut self, body: B) -> Answer<S::Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req: ImageGenerationRequest =
            match read_json(&self.headers, self.config.max_body_bytes, body).await {
                Ok(r) => r,
                Err(res) => return Ok(res),
            };
        let (model, gemini, n) = match to_gemini_image_request(&req) {
            Ok(g) => g,
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let body = Bytes::from(serde_json::to_vec(&gemini).unwrap_or_default());
        let path = format!("/{}/models/{model}:generateContent", self.config.version);
        let mut out = ImagesResponse {
            created: super::response::unix_now(),
            data: Vec::new(),
            usage: None,
        };
        let mut usage = ImagesUsage::default();
        let mut headers = HeaderMap::new();
        for _ in 0..n {
            let inner_req = self.inner_request(Method::POST, path.clone(), Some(body.clone()));
            let res = self.send(inner_req).await?;
            let (answer, h) = match read_answer::<GenerateContentResponse, _>(
                self.config.max_response_bytes,
                res,
            )
            .await
            {
                Ok(a) => a,
                Err(res) => return Ok(res),
            };
            headers = h;
            match generated_images(&answer) {
                Ok((images, u)) => {
                    out.data.extend(images);
                    usage.input_tokens += u.input_tokens;
                    usage.output_tokens += u.output_tokens;
                    usage.total_tokens += u.total_tokens;
                }
                Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
            }
        }
        out.usage = Some(usage);
        Ok(json_response(
            StatusCode::OK,
            &to_value(&out),
            Some(&headers),
        ))
    }

    async fn models(mut self) -> Answer<S::Error> {
        let mut all: Vec<GeminiModel> = Vec::new();
        let mut token: Option<String> = None;
        let mut last_headers = HeaderMap::new();
        for _ in 0..MAX_MODEL_PAGES {
            let mut path = format!(
                "/{}/models?pageSize={}",
                self.config.version, self.config.page_size
            );
            if let Some(t) = &token {
                path.push_str("&pageToken=");
                path.push_str(&percent_encode(t));
            }
            let req = self.inner_request(Method::GET, path, None);
            let res = self.send(req).await?;
            let (page, headers) =
                match read_answer::<ListModelsResponse, _>(self.config.max_response_bytes, res)
                    .await
                {
                    Ok(p) => p,
                    Err(res) => return Ok(res),
                };
            last_headers = headers;
            all.extend(page.models);
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
        let list = model_list(&all, &self.config.owned_by);
        Ok(json_response(
            StatusCode::OK,
            &to_value(&list),
            Some(&last_headers),
        ))
    }

    async fn model(mut self, id: &str) -> Answer<S::Error> {
        let id = match model_id(id) {
            Ok(id) => id.to_owned(),
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let path = format!("/{}/models/{id}", self.config.version);
        let req = self.inner_request(Method::GET, path, None);
        let res = self.send(req).await?;
        Ok(
            match read_answer::<GeminiModel, _>(self.config.max_response_bytes, res).await {
                Ok((m, headers)) => json_response(
                    StatusCode::OK,
                    &to_value(&model_of(&m, &self.config.owned_by)),
                    Some(&headers),
                ),
                Err(res) => res,
            },
        )
    }

    async fn embeddings<B>(mut self, body: B) -> Answer<S::Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req: EmbeddingRequest =
            match read_json(&self.headers, self.config.max_body_bytes, body).await {
                Ok(r) => r,
                Err(res) => return Ok(res),
            };
        let model = match model_id(&req.model) {
            Ok(m) => m.to_owned(),
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let texts = match req.input {
            EmbeddingInput::One(s) => vec![s],
            EmbeddingInput::Many(v) if !v.is_empty() => v,
            EmbeddingInput::Many(_) => {
                return Ok(ApiError::bad_request("`input` must not be empty")
                    .into_response(Dialect::OpenAi));
            }
            EmbeddingInput::Other(_) => {
                return Ok(ApiError::bad_request(
                    "`input` must be a string or a list of strings; Gemini embeds text, not \
                     token arrays",
                )
                .into_response(Dialect::OpenAi));
            }
        };
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Ok(ApiError::bad_request(format!(
                    "encoding_format {other:?} is not one of float, base64"
                ))
                .into_response(Dialect::OpenAi));
            }
        };
        let batch = BatchEmbedContentsRequest {
            requests: texts
                .into_iter()
                .map(|t| EmbedContentRequest {
                    model: Some(format!("models/{model}")),
                    content: Content {
                        role: None,
                        parts: vec![crate::gemini::Part::text(t)],
                        extra: serde_json::Map::new(),
                    },
                    output_dimensionality: req.dimensions,
                    ..EmbedContentRequest::default()
                })
                .collect(),
            extra: serde_json::Map::new(),
        };
        let body = Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
        let path = format!("/{}/models/{model}:batchEmbedContents", self.config.version);
        let inner_req = self.inner_request(Method::POST, path, Some(body));
        let res = self.send(inner_req).await?;
        Ok(
            match read_answer::<BatchEmbedContentsResponse, _>(self.config.max_response_bytes, res)
                .await
            {
                Ok((answer, headers)) => json_response(
                    StatusCode::OK,
                    &to_value(&embedding_response(&answer, &model, base64)),
                    Some(&headers),
                ),
                Err(res) => res,
            },
        )
    }
}

/// Reads and parses an OpenAI request body, or answers 400/413.
pub(super) async fn read_json<T: DeserializeOwned, B>(
    headers: &HeaderMap,
    max: usize,
    body: B,
) -> Result<T, Response<Body>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    crate::translate::http::read_json(headers, max, body, Dialect::OpenAi).await
}

/// Reads a whole upstream answer, translating error statuses into OpenAI errors.
pub(super) async fn read_answer<T: DeserializeOwned, ResBody>(
    max: usize,
    res: Response<ResBody>,
) -> Result<(T, HeaderMap), Response<Body>>
where
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    crate::translate::http::read_answer(res, max, Dialect::OpenAi, translate_error).await
}

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

// === ResponseFuture ===

pub use crate::translate::future::ResponseFuture;
