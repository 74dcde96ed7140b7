//! Where a credential can be in a request, how it is removed, and how the upstream key is set:
//! one implementation for every layer (and the reqwest example), so none can drift.
//!
//! A client sends its token in one of four places: `Authorization: Bearer <t>` (OpenAI SDKs,
//! curl), `x-goog-api-key: <t>` (google-genai SDKs), `x-api-key: <t>` (Anthropic SDKs, Claude
//! Code) or `?key=<t>` (Gemini REST examples). A
//! query parameter's name may be percent-encoded (`?k%65y=`): Google decodes it, so every
//! function here does too. [`BearerAuth`](crate::auth::BearerAuth) reads the credential with
//! [`credential`] and removes it with [`strip`]; `KeyRotation` and the gateway's single-key
//! stage call [`set_upstream_key`], which strips first, so a client credential never travels
//! upstream even when a layer is used alone.
//!
//! ```
//! use http::Request;
//! use tower_gemini::{credential, secret::ApiKey};
//!
//! let mut req = Request::get("/v1beta/models?k%65y=client-token&pageSize=5").body(()).unwrap();
//! assert_eq!(credential::credential(&req).unwrap().0, "client-token");
//! credential::set_upstream_key(&mut req, &ApiKey::new("AIzaSyUpstream-key-000000000000000001"));
//! assert_eq!(req.uri(), "/v1beta/models?pageSize=5");
//! assert!(req.headers()[&credential::X_GOOG_API_KEY].is_sensitive());
//! ```

use http::header::AUTHORIZATION;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};

use crate::secret::ApiKey;

/// The `x-goog-api-key` header name.
pub static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The `x-api-key` header name (Anthropic's clients send their key there).
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The query parameter that carries a key.
const KEY_PARAM: &str = "key";

/// Where a credential was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer <token>`
    Bearer,
    /// `x-goog-api-key: <token>`
    GoogApiKey,
    /// `x-api-key: <token>` (Anthropic's clients)
    XApiKey,
    /// `?key=<token>` (the name in any percent-encoding)
    Query,
}

/// The credential a request carries: `Authorization: Bearer`, then `x-goog-api-key`, then
/// `x-api-key`, then `?key=`.
pub fn credential<B>(req: &Request<B>) -> Option<(String, CredentialSource)> {
    if let Some(v) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            let t = v[7..].trim();
            if !t.is_empty() {
                return Some((t.to_owned(), CredentialSource::Bearer));
            }
        }
    }
    if let Some(v) = req
        .headers()
        .get(&X_GOOG_API_KEY)
        .and_then(|v| v.to_str().ok())
    {
        let t = v.trim();
        if !t.is_empty() {
            return Some((t.to_owned(), CredentialSource::GoogApiKey));
        }
    }
    if let Some(v) = req.headers().get(&X_API_KEY).and_then(|v| v.to_str().ok()) {
        let t = v.trim();
        if !t.is_empty() {
            return Some((t.to_owned(), CredentialSource::XApiKey));
        }
    }
    query_param(req.uri().query()?, KEY_PARAM).map(|t| (t, CredentialSource::Query))
}

/// Removes every client credential from a request: `authorization`, `x-goog-api-key`,
/// `x-api-key` and the `key` query parameter (all occurrences, whatever the encoding of its name).
pub fn strip<B>(req: &mut Request<B>) {
    strip_headers(req.headers_mut());
    remove_query_param(req, KEY_PARAM);
}

/// [`strip`] on a request's parts (for a layer that keeps them to replay the request).
#[cfg(feature = "key-rotation")]
pub(crate) fn strip_parts(parts: &mut http::request::Parts) {
    strip_headers(&mut parts.headers);
    if let Some(uri) = without_query_param(&parts.uri, KEY_PARAM) {
        parts.uri = uri;
    }
}

fn strip_headers(headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
    headers.remove(&X_GOOG_API_KEY);
    headers.remove(&X_API_KEY);
}

/// Strips every client credential, then sets `key` as `x-goog-api-key` (marked sensitive, so
/// no trace layer prints it). A key that is not a valid header value (never one of Google's) is
/// not set; the request then goes without a key and upstream refuses it.
pub fn set_upstream_key<B>(req: &mut Request<B>, key: &ApiKey) {
    strip(req);
    if let Some(value) = upstream_key_value(key) {
        req.headers_mut().insert(X_GOOG_API_KEY.clone(), value);
    }
}

/// The header value of an upstream key, marked sensitive.
pub(crate) fn upstream_key_value(key: &ApiKey) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(key.expose()).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Removes a query parameter (all occurrences, its name compared after percent-decoding)
/// from a request's URI.
pub(crate) fn remove_query_param<B>(req: &mut Request<B>, name: &str) {
    if let Some(uri) = without_query_param(req.uri(), name) {
        *req.uri_mut() = uri;
    }
}

/// The URI without the query parameters named `name`, or `None` when it has none.
fn without_query_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_named = |pair: &&str| percent_decode(pair.split('=').next().unwrap_or("")) == name;
    if !query.split('&').any(|p| is_named(&p)) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !is_named(p))
        .collect();
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    // The kept pieces come from a valid URI, so this parses; fall back to the bare path.
    parts.path_and_query = Some(
        PathAndQuery::try_from(pq)
            .or_else(|_| PathAndQuery::try_from(path))
            .unwrap_or_else(|_| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok().or_else(|| path.parse().ok())
}

/// The decoded value of the first query parameter named `name` (the name compared after
/// percent-decoding).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stripped(uri: &str) -> String {
        let mut req = Request::get(uri).body(()).unwrap();
        strip(&mut req);
        req.uri().to_string()
    }

    #[test]
    fn the_key_param_goes_in_every_encoding_of_its_name() {
        assert_eq!(stripped("/m?key=a"), "/m");
        assert_eq!(stripped("/m?k%65y=a&alt=sse"), "/m?alt=sse");
        assert_eq!(stripped("/m?%6B%65%79=a&key=b&x=1"), "/m?x=1");
        assert_eq!(
            stripped("/m?alt=sse&keys=1&monkey=2"),
            "/m?alt=sse&keys=1&monkey=2"
        );
        assert_eq!(stripped("/m?alt=sse"), "/m?alt=sse");
    }

    #[test]
    fn headers_go_and_the_upstream_key_is_set_sensitive() {
        let mut req = Request::get("/m?key=client")
            .header("authorization", "Bearer client")
            .header("x-goog-api-key", "client")
            .header("x-api-key", "client")
            .body(())
            .unwrap();
        set_upstream_key(
            &mut req,
            &ApiKey::new("AIzaSyUpstream-0000000000000000000001"),
        );
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert!(req.headers().get(&X_API_KEY).is_none());
        let v = &req.headers()[&X_GOOG_API_KEY];
        assert_eq!(v, "AIzaSyUpstream-0000000000000000000001");
        assert!(v.is_sensitive());
        assert_eq!(req.uri(), "/m");
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("a=1&key=x%2By", "key").as_deref(), Some("x+y"));
        assert_eq!(query_param("a=1", "key"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn credential_is_read_in_order_and_decoded() {
        let req = Request::get("/m?k%65y=q%2Bq")
            .header("x-goog-api-key", " g ")
            .body(())
            .unwrap();
        assert_eq!(
            credential(&req),
            Some(("g".to_owned(), CredentialSource::GoogApiKey))
        );
        let req = Request::get("/m?k%65y=q%2Bq")
            .header("x-api-key", " a ")
            .body(())
            .unwrap();
        assert_eq!(
            credential(&req),
            Some(("a".to_owned(), CredentialSource::XApiKey))
        );
        let req = Request::get("/m?k%65y=q%2Bq").body(()).unwrap();
        assert_eq!(
            credential(&req),
            Some(("q+q".to_owned(), CredentialSource::Query))
        );
        let req = Request::get("/m")
            .header("authorization", "bearer  t ")
            .body(())
            .unwrap();
        assert_eq!(
            credential(&req),
            Some(("t".to_owned(), CredentialSource::Bearer))
        );
    }
}
