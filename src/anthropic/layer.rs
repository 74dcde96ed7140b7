//! `AnthropicToGeminiLayer`, the `AnthropicToGemini` service and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::TryFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde_json::json;
use tower::{Layer, Service, ServiceExt};

use super::request::to_gemini_request;
use super::response::{MessageContext, to_message, translate_error};
use super::stream::{EventBody, MessageStreamTranslator};
use super::types::MessagesRequest;
use crate::body::{Body, BoxError, DEFAULT_MAX_BODY_BYTES, LimitError, collect_limited};
use crate::error::{ApiError, Dialect};
use crate::gemini::{GeminiPath, GenerateContentResponse};
use crate::translate::http::{
    copy_request_headers, copy_response_headers, json_response, read_json,
};

/// The default cap on a non-streamed upstream answer: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Messages,
    CountTokens,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path.trim_end_matches('/') {
            "/v1/messages" => Some(Route::Messages),
            "/v1/messages/count_tokens" => Some(Route::CountTokens),
            _ => None,
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
        let Some(route) = Route::of(req.uri().path()) else {
            return ResponseFuture {
                kind: Kind::Passthrough {
                    future: self.inner.call(req.map(Body::new)),
                },
            };
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let span = tracing::debug_span!("anthropic", route = ?route);
        let future = Box::pin(tracing::Instrument::instrument(
            async move {
                if req.method() != Method::POST {
                    let msg = format!(
                        "{} is not allowed on {}; use POST",
                        req.method(),
                        req.uri().path()
                    );
                    return Ok(ApiError::method_not_allowed(msg).into_response(Dialect::Anthropic));
                }
                let (parts, body) = req.into_parts();
                let call = Call {
                    inner,
                    config,
                    headers: parts.headers,
                    extensions: parts.extensions,
                    model: String::new(),
                };
                call.run(route, body).await
            },
            span,
        ));
        ResponseFuture {
            kind: Kind::Translate { future },
        }
    }
}

/// One translated request's way through the inner service.
struct Call<S> {
    inner: S,
    config: Arc<Config>,
    headers: HeaderMap,
    extensions: http::Extensions,
    /// The model the client asked for (for answers and error messages).
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
        let (model, gemini) = match to_gemini_request(&req) {
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
        let cx = MessageContext::new(req.model.trim()).signature_in_id(self.config.signature_in_id);
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
        let mut out = Response::new(Body::new(EventBody::new(body, translator, max_event_bytes)));
        copy_response_headers(&parts.headers, out.headers_mut());
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(out)
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

    async fn send(&mut self, req: Request<Body>) -> Result<Response<ResBody>, S::Error> {
        self.inner.ready().await?.call(req).await
    }
}

/// Reads a whole upstream answer, translating error statuses into Anthropic errors.
async fn read_answer<T: DeserializeOwned, R>(
    res: Response<R>,
    config: &Config,
    model: &str,
) -> Result<(T, HeaderMap), Response<Body>>
where
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    let (parts, body) = res.into_parts();
    let bytes = match collect_limited(body, config.max_response_bytes).await {
        Ok(b) => b,
        Err(LimitError::TooLarge { limit }) => {
            return Err(ApiError::bad_gateway(format!(
                "the upstream answer is larger than {limit} bytes"
            ))
            .into_response(Dialect::Anthropic));
        }
        Err(LimitError::Body(e)) => {
            tracing::debug!(error = %crate::secret::scrub(&e.to_string()), "upstream body failed");
            return Err(ApiError::bad_gateway(
                "the upstream answer broke off before it was complete",
            )
            .into_response(Dialect::Anthropic));
        }
    };
    if !parts.status.is_success() {
        let (json, retry) = translate_error(parts.status, &bytes, model, &config.model_hint);
        let mut res = json_response(parts.status, &json, Some(&parts.headers));
        if !res.headers().contains_key(header::RETRY_AFTER)
            && let Some(secs) = retry
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        return Err(res);
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok((v, parts.headers)),
        Err(_) => Err(ApiError::bad_gateway(
            "the upstream answered with a body that is not a Gemini response",
        )
        .into_response(Dialect::Anthropic)),
    }
}

// === ResponseFuture ===

pin_project! {
    /// The response future of [`AnthropicToGemini`]: the inner future unchanged for routes the
    /// layer does not own, a translation otherwise.
    pub struct ResponseFuture<F>
    where
        F: TryFuture,
    {
        #[pin]
        kind: Kind<F>,
    }
}

type Translation<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project! {
    #[project = KindProj]
    enum Kind<F>
    where
        F: TryFuture,
    {
        Passthrough { #[pin] future: F },
        Translate { future: Translation<F::Error> },
    }
}

impl<F: TryFuture> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future.poll(cx).map_ok(|r| r.map(Body::new)),
            KindProj::Translate { future } => future.as_mut().poll(cx),
        }
    }
}
