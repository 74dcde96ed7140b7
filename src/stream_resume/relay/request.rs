//! The stream format of a request, and what is needed to send it again or continue it.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::body::Body;

/// The stream format of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `alt=sse`
    Sse,
    /// A streamed JSON array.
    JsonArray,
    /// `:generateContent`
    Unary,
}

/// Bodies up to this size are copied into the template (see [`RequestTemplate::new`]); a
/// larger one filled its read buffer on its own, so keeping it pins little else.
const OWN_BODY_UP_TO: usize = 64 * 1024;

/// A header value in its own allocation rather than a slice of the connection's buffer.
fn owned_value(value: &HeaderValue) -> HeaderValue {
    let mut owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    owned.set_sensitive(value.is_sensitive());
    owned
}

/// What is needed to issue the original request again, or a continuation of it.
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: http::Extensions,
    original: Bytes,
}

impl RequestTemplate {
    /// With `own`, the template owns its bytes, for a template that outlives the request by
    /// as long as a stream is open: the server parses the head and a small body as slices of
    /// its connection read buffer, and a clone of those slices would keep that buffer (8 KiB
    /// or more) alive per open stream while the connection allocates another.
    pub(crate) fn new(parts: &Parts, original: Bytes, own: bool) -> Self {
        if !own {
            let mut headers = parts.headers.clone();
            headers.remove(header::CONTENT_LENGTH);
            return Self {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers,
                extensions: parts.extensions.clone(),
                original,
            };
        }
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if name != header::CONTENT_LENGTH {
                headers.append(name.clone(), owned_value(value));
            }
        }
        let uri = Uri::try_from(parts.uri.to_string()).unwrap_or_else(|_| parts.uri.clone());
        let original = if original.len() <= OWN_BODY_UP_TO {
            Bytes::copy_from_slice(&original)
        } else {
            original
        };
        Self {
            method: parts.method.clone(),
            uri,
            version: parts.version,
            headers,
            extensions: parts.extensions.clone(),
            original,
        }
    }

    fn with_body(&self, body: Bytes) -> Request<Body> {
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }

    /// Tells an outer `UsageLayer` that the answer is being resumed.
    pub(super) fn note_resume(&self) {
        if let Some(report) = self.extensions.get::<crate::facts::Report>() {
            report.record_resume();
        }
    }

    /// The original request again.
    pub(crate) fn original(&self) -> Request<Body> {
        self.with_body(self.original.clone())
    }

    /// The original request plus a `model` turn holding `sent` and a `user` turn asking to
    /// continue. System instruction, tools and generation config are kept as they were.
    pub(super) fn continuation(&self, sent: &str, instruction: &str) -> Request<Body> {
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&self.original) else {
            return self.original();
        };
        let contents = body.entry("contents").or_insert_with(|| json!([]));
        if let Value::Array(turns) = contents {
            turns.push(json!({ "role": "model", "parts": [{ "text": sent }] }));
            turns.push(json!({ "role": "user", "parts": [{ "text": instruction }] }));
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| self.original.to_vec());
        self.with_body(Bytes::from(bytes))
    }
}

/// Calls a service once it is ready.
pub(crate) async fn call<S, B>(svc: &mut S, req: Request<Body>) -> Result<Response<B>, S::Error>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    svc.ready().await?.call(req).await
}
