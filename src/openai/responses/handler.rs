//! The three routes: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`, as steps of
//! the OpenAI front's [`Call`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tower::Service;

use super::output::{ResponseBuilder, response_id};
use super::request::{input_items, to_gemini};
use super::store::{ResponseStore, StoredResponse};
use super::types::CreateResponse;
use crate::body::{Body, BoxError};
use crate::error::{ApiError, Dialect};
use crate::facts::Identity;
use crate::gemini::GenerateContentResponse;
use crate::openai::layer::{Answer, Call, read_answer, read_json};
use crate::openai::request::model_id;
use crate::openai::response::{copy_response_headers, json_response, unix_now};
use crate::sse::{SseError, SseStream};

/// How the OpenAI front keeps responses: where, and for how long.
#[derive(Clone, Debug)]
pub(crate) struct Keeping {
    pub(crate) store: Arc<dyn ResponseStore>,
    pub(crate) ttl: Duration,
    /// The largest conversation (history and answer, as JSON) one stored response keeps.
    pub(crate) max_bytes: usize,
}

/// Who may reach a stored response: the client's identity id (empty when no auth layer ran).
fn owner_of(extensions: &http::Extensions) -> String {
    extensions
        .get::<Identity>()
        .map(|i| i.subject().to_owned())
        .unwrap_or_default()
}

fn not_found(id: &str, param: Option<&str>) -> Response<Body> {
    let mut v =
        ApiError::not_found(format!("Response with id '{id}' not found.")).to_json(Dialect::OpenAi);
    v["error"]["param"] = json!(param);
    if param.is_some() {
        v["error"]["code"] = json!("previous_response_not_found");
    }
    json_response(StatusCode::NOT_FOUND, &v, None)
}

/// What saving the finished response needs.
struct Saver {
    keeping: Keeping,
    id: String,
    owner: String,
    model: String,
    input: Vec<Value>,
}

impl Saver {
    fn save(self, response: Value) -> impl Future<Output = ()> + Send + 'static {
        let now = unix_now();
        let entry = StoredResponse {
            id: self.id,
            owner: self.owner,
            model: self.model,
            created_at: now,
            expires_at: now.saturating_add(self.keeping.ttl.as_secs().max(1)),
            input: self.input,
            response,
        };
        // Each stored response holds its whole conversation; a cap keeps a long chain of
        // large turns from filling the shared store.
        let size = serde_json::to_vec(&entry.input).map_or(usize::MAX, |v| v.len())
            + entry.response.to_string().len();
        let store = (size <= self.keeping.max_bytes).then_some(self.keeping.store);
        if store.is_none() {
            tracing::warn!(
                response = %entry.id,
                bytes = size,
                max = self.keeping.max_bytes,
                "response not stored: its conversation is over the cap; it cannot be continued by previous_response_id"
            );
        }
        async move {
            if let Some(store) = store {
                store.put(entry).await;
            }
        }
    }
}

impl<S, ResBody> Call<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    /// `POST /v1/responses`.
    pub(crate) async fn create_response<B>(mut self, body: B) -> Answer<S::Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req: CreateResponse =
            match read_json(&self.headers, self.config.max_body_bytes, body).await {
                Ok(r) => r,
                Err(res) => return Ok(res),
            };
        let model = match model_id(&req.model) {
            Ok(m) => m.to_owned(),
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let owner = owner_of(&self.extensions);
        let keeping = self.config.responses.clone();
        let mut items = Vec::new();
        if let Some(prev) = req
            .previous_response_id
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            match keeping.store.get(prev).await.filter(|s| s.owner == owner) {
                Some(stored) => items = stored.history(),
                None => return Ok(not_found(prev, Some("previous_response_id"))),
            }
        }
        let first_new = items.len();
        match input_items(&req) {
            Ok(new) => items.extend(new),
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        }
        let options = self.config.options_for(&req.model);
        let (gemini, tools) = match to_gemini(&req, &items, first_new, &options) {
            Ok(g) => g,
            Err(e) => return Ok(e.into_response(Dialect::OpenAi)),
        };
        let stream = req.is_stream();
        let path = if stream {
            format!(
                "/{}/models/{model}:streamGenerateContent?alt=sse",
                self.config.version
            )
        } else {
            format!("/{}/models/{model}:generateContent", self.config.version)
        };
        let Ok(body) = serde_json::to_vec(&gemini) else {
            return Ok(ApiError::internal("the request could not be encoded")
                .into_response(Dialect::OpenAi));
        };
        let inner_req = self.inner_request(Method::POST, path, Some(Bytes::from(body)));
        let res = self.send(inner_req).await?;
        let id = response_id();
        let saver = req.is_stored().then(|| Saver {
            keeping,
            id: id.clone(),
            owner,
            model: model.clone(),
            input: items,
        });
        let signature_in_id = self.config.options.signature_in_id;
        let mut builder =
            ResponseBuilder::new(id, &req, &model, stream, signature_in_id).tools(tools);
        if !stream {
            let (answer, headers) = match read_answer::<GenerateContentResponse, _>(
                self.config.max_response_bytes,
                res,
            )
            .await
            {
                Ok(a) => a,
                Err(res) => return Ok(res),
            };
            if answer.candidates.is_empty() && answer.block_reason().is_none() {
                return Ok(ApiError::bad_gateway(
                    "Gemini answered without any candidate and without saying why",
                )
                .into_response(Dialect::OpenAi));
            }
            let mut scratch = BytesMut::new();
            builder.push_chunk(&answer, &mut scratch);
            builder.end_whole(&mut scratch);
            if let Some(e) = builder.failure() {
                return Ok(e.clone().into_response(Dialect::OpenAi));
            }
            let response = builder.final_response().cloned().unwrap_or_default();
            if let Some(saver) = saver {
                saver.save(response.clone()).await;
            }
            return Ok(json_response(StatusCode::OK, &response, Some(&headers)));
        }
        if !res.status().is_success() {
            return Ok(
                match read_answer::<Value, _>(self.config.max_response_bytes, res).await {
                    Ok(_) => ApiError::bad_gateway("the upstream answered an error status")
                        .into_response(Dialect::OpenAi),
                    Err(res) => res,
                },
            );
        }
        let (parts, body) = res.into_parts();
        let max_event_bytes = crate::sse::MaxEventBytes::of(&self.extensions);
        let events = EventBody::new(body, builder, saver, max_event_bytes);
        let mut out = Response::new(Body::new(events));
        copy_response_headers(&parts.headers, out.headers_mut());
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(out)
    }

    /// `GET /v1/responses/{id}`: the stored response, for its owner only.
    pub(crate) async fn get_response(self, id: &str) -> Answer<S::Error> {
        let owner = owner_of(&self.extensions);
        Ok(
            match self
                .config
                .responses
                .store
                .get(id)
                .await
                .filter(|s| s.owner == owner)
            {
                Some(stored) => json_response(StatusCode::OK, &stored.response, None),
                None => not_found(id, None),
            },
        )
    }

    /// `GET /v1/responses/{id}/input_items`: the conversation that led to it.
    pub(crate) async fn response_input_items(self, id: &str) -> Answer<S::Error> {
        let owner = owner_of(&self.extensions);
        let store = &self.config.responses.store;
        let Some(stored) = store.get(id).await.filter(|s| s.owner == owner) else {
            return Ok(not_found(id, None));
        };
        let data: Vec<Value> = stored.input.iter().rev().cloned().collect();
        let first = data
            .first()
            .and_then(|i| i["id"].as_str())
            .map(str::to_owned);
        let last = data
            .last()
            .and_then(|i| i["id"].as_str())
            .map(str::to_owned);
        let body = json!({"object": "list", "data": data, "first_id": first, "last_id": last,
                          "has_more": false});
        Ok(json_response(StatusCode::OK, &body, None))
    }

    /// `DELETE /v1/responses/{id}`, for its owner only.
    pub(crate) async fn delete_response(self, id: &str) -> Answer<S::Error> {
        let owner = owner_of(&self.extensions);
        let store = &self.config.responses.store;
        if store.get(id).await.filter(|s| s.owner == owner).is_none() || !store.remove(id).await {
            return Ok(not_found(id, None));
        }
        let body = json!({"id": id, "object": "response", "deleted": true});
        Ok(json_response(StatusCode::OK, &body, None))
    }
}

// === EventBody ===

pin_project! {
    /// The Responses SSE body of a translated Gemini stream: `response.created` first, each
    /// upstream event translated as it arrives, and the last events sent once the response is
    /// stored (so a continuation that follows at once finds it).
    pub(crate) struct EventBody<B> {
        #[pin]
        events: SseStream<B>,
        builder: ResponseBuilder,
        saver: Option<Saver>,
        saving: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        held: Option<Bytes>,
        started: bool,
        ended: bool,
    }
}

impl<B> EventBody<B> {
    fn new(
        body: B,
        builder: ResponseBuilder,
        saver: Option<Saver>,
        max_event_bytes: usize,
    ) -> Self {
        let decoder = crate::sse::Decoder::new().max_event_bytes(max_event_bytes);
        Self {
            events: SseStream::with_decoder(body, decoder),
            builder,
            saver,
            saving: None,
            held: None,
            started: false,
            ended: false,
        }
    }
}

impl<B> fmt::Debug for EventBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBody")
            .field("builder", &self.builder)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for EventBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(saving) = this.saving.as_mut() {
                std::task::ready!(saving.as_mut().poll(cx));
                *this.saving = None;
                if let Some(last) = this.held.take() {
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            if !*this.started {
                *this.started = true;
                this.builder.start(&mut out);
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            match std::task::ready!(this.events.as_mut().poll_next(cx)) {
                Some(Ok(event)) => this.builder.push(&event.data, &mut out),
                Some(Err(e)) => {
                    if let SseError::Body(e) = &e {
                        tracing::debug!(error = %crate::secret::scrub(&e.to_string()), "upstream stream failed");
                    }
                    this.builder
                        .fail(ApiError::bad_gateway(e.client_message()), None, &mut out);
                }
                None => this.builder.finish(&mut out),
            }
            if this.builder.is_done() {
                *this.ended = true;
                if let (Some(saver), Some(response)) =
                    (this.saver.take(), this.builder.final_response())
                {
                    *this.saving = Some(Box::pin(saver.save(response.clone())));
                    *this.held = Some(out.freeze());
                    continue;
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }
}
