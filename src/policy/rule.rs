//! The plug point: [`Rule`], what a rule sees of a request ([`Call`]) and of an answer
//! ([`Rewrite`], [`ListedModel`]).

use std::fmt;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// What kind of Gemini request a [`Call`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallKind {
    /// `POST /v1beta/models/{model}:generateContent`
    GenerateContent,
    /// `POST /v1beta/models/{model}:streamGenerateContent` (SSE or streamed JSON array)
    StreamGenerateContent,
    /// `POST /v1beta/models/{model}:countTokens`
    CountTokens,
    /// `GET /v1beta/models/{model}`
    GetModel,
    /// `GET /v1beta/models`
    ListModels,
    /// `POST /v1beta/models/{model}:embedContent` or `:batchEmbedContents`: only the model is
    /// policed (an allow list applies); the body is never rewritten and the model never renamed,
    /// since a batch names its model again in every request.
    Embed,
    /// A Live API session's `setup` (the Live WebSocket): only the model is policed and may be
    /// renamed (an alias); there is no request JSON.
    Live,
}

impl CallKind {
    /// Whether the call generates content (its answer can be rewritten by [`Rule::response`]).
    pub fn is_generate(self) -> bool {
        matches!(
            self,
            CallKind::GenerateContent | CallKind::StreamGenerateContent
        )
    }
}

/// One request as the rules see it: the model (which rules may rename) and the request JSON
/// (which rules may edit in place).
///
/// The JSON is the `GenerateContentRequest` object: the whole body of `generateContent` and
/// `streamGenerateContent`, the `generateContentRequest` of a `countTokens` body. It is `None`
/// for model lookups, for a `countTokens` body with bare `contents`, and for a body that is not
/// a JSON object (which then reaches upstream unchanged, for upstream's own 400).
///
/// Rules edit the raw JSON rather than typed structs so that every field a rule does not
/// target, numbers included, reaches upstream exactly as the client sent it.
pub struct Call {
    kind: CallKind,
    requested_model: String,
    model: String,
    request: Option<Map<String, Value>>,
    dirty: bool,
    extensions: http::Extensions,
}

impl Call {
    /// A call for `model`, with an optional request object.
    pub fn new(
        kind: CallKind,
        model: impl Into<String>,
        request: Option<Map<String, Value>>,
    ) -> Self {
        let model = model.into();
        Self {
            kind,
            requested_model: model.clone(),
            model,
            request,
            dirty: false,
            extensions: http::Extensions::new(),
        }
    }

    /// The kind of request.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// The model the client named in the path (empty for the models list).
    pub fn requested_model(&self) -> &str {
        &self.requested_model
    }

    /// The model the request will go upstream for, after the rules so far.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Renames the model; the layer rewrites the request path to match.
    pub fn set_model(&mut self, model: impl Into<String>) {
        self.model = model.into();
    }

    /// The request JSON, if there is one.
    pub fn request(&self) -> Option<&Map<String, Value>> {
        self.request.as_ref()
    }

    /// The request JSON to edit. Call it only to change something: the body is serialized
    /// again once any rule asked for it.
    pub fn request_mut(&mut self) -> Option<&mut Map<String, Value>> {
        let request = self.request.as_mut()?;
        self.dirty = true;
        Some(request)
    }

    /// Whether a rule asked to edit the request JSON.
    pub fn is_request_modified(&self) -> bool {
        self.dirty
    }

    /// Takes the request JSON out.
    pub fn into_request(self) -> Option<Map<String, Value>> {
        self.request
    }

    /// Per-call scratch space: a rule may leave a marker in [`Rule::request`] and read it in
    /// [`Rule::response`].
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Mutable per-call scratch space.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("kind", &self.kind)
            .field("requested_model", &self.requested_model)
            .field("model", &self.model)
            .field("has_request", &self.request.is_some())
            .finish()
    }
}

/// A model entry of a `GET /v1beta/models` answer, with the upstream model it resolves to.
///
/// Rules that add names (aliases) insert copies whose `value.name` is the new name and whose
/// `target` is the real model; rules that filter see both.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedModel {
    /// The model JSON as listed (`{"name": "models/...", ...}`).
    pub value: Value,
    /// The upstream model id this entry is served by.
    pub target: String,
}

impl ListedModel {
    /// An entry as upstream listed it.
    pub fn upstream(value: Value) -> Self {
        let target = model_id(&value).to_owned();
        Self { value, target }
    }

    /// The listed id, without `models/`.
    pub fn id(&self) -> &str {
        model_id(&self.value)
    }

    /// A copy of this entry listed under another id, served by the same model.
    pub fn alias(&self, id: &str) -> Self {
        let mut value = self.value.clone();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("name".into(), Value::String(format!("models/{id}")));
        }
        Self {
            value,
            target: self.target.clone(),
        }
    }
}

fn model_id(value: &Value) -> &str {
    let name = value.get("name").and_then(Value::as_str).unwrap_or("");
    crate::gemini::strip_models_prefix(name)
}

/// What a rule does to one answer: the whole `generateContent` response, or each chunk of a
/// stream as it passes (nothing is buffered).
pub trait Rewrite: Send + 'static {
    /// Rewrites one response object. Return `false` to drop a stream chunk that has nothing
    /// left to say (ignored for a unary answer, which is always sent).
    fn chunk(&mut self, chunk: &mut Value) -> bool;

    /// Called once when the answer ended normally: a chunk to send last, if any. For a unary
    /// answer its parts are appended to the answer's first candidate.
    fn finish(&mut self) -> Option<Value> {
        None
    }
}

/// One policy rule. The layer applies its rules in order; every method has a default that
/// does nothing, so a rule implements only what it changes.
///
/// ```
/// use tower_gemini::policy::{Call, Rule};
/// use tower_gemini::ApiError;
///
/// /// Caps `maxOutputTokens` at 1024.
/// #[derive(Debug)]
/// struct CapOutput;
///
/// impl Rule for CapOutput {
///     fn request(&self, call: &mut Call) -> Result<(), ApiError> {
///         let too_big = call.request()
///             .and_then(|r| r.get("generationConfig")?.get("maxOutputTokens")?.as_u64())
///             .is_some_and(|n| n > 1024);
///         if too_big {
///             if let Some(r) = call.request_mut() {
///                 r["generationConfig"]["maxOutputTokens"] = 1024.into();
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Rule: fmt::Debug + Send + Sync + 'static {
    /// Rewrites the request before it goes upstream (rename the model, edit the JSON), or
    /// refuses it with an error answered in the route's dialect.
    fn request(&self, call: &mut Call) -> Result<(), ApiError> {
        let _ = call;
        Ok(())
    }

    /// For a generate call: a rewriter of the answer, if this rule changes answers.
    fn response(&self, call: &Call) -> Option<Box<dyn Rewrite>> {
        let _ = call;
        None
    }

    /// Rewrites the entries of a models list (add aliases, filter).
    fn models(&self, models: &mut Vec<ListedModel>) {
        let _ = models;
    }
}
