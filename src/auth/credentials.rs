//! Finding a client's credential in a request, and removing every credential from it.

use http::header::AUTHORIZATION;
use http::uri::PathAndQuery;
use http::{HeaderName, Request, Uri};

/// The `x-goog-api-key` header name.
pub static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
/// Where a credential was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer <token>`
    Bearer,
    /// `x-goog-api-key: <token>`
    GoogApiKey,
    /// `?key=<token>`
    Query,
}

/// The credential a request carries: `Authorization: Bearer`, then `x-goog-api-key`, then `?key=`.
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
    query_param(req.uri().query()?, "key").map(|t| (t, CredentialSource::Query))
}

/// Removes every client credential from a request: `authorization`, `x-goog-api-key` and the
/// `key` query parameter.
pub fn strip_credentials<B>(req: &mut Request<B>) {
    req.headers_mut().remove(AUTHORIZATION);
    req.headers_mut().remove(&X_GOOG_API_KEY);
    remove_query_param(req, "key");
}

/// Removes a query parameter (all occurrences) from a request's URI.
pub fn remove_query_param<B>(req: &mut Request<B>, name: &str) {
    let Some(query) = req.uri().query() else {
        return;
    };
    if !query
        .split('&')
        .any(|p| percent_decode(p.split('=').next().unwrap_or("")) == name)
    {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && percent_decode(p.split('=').next().unwrap_or("")) != name)
        .collect();
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(pq) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The decoded value of the first query parameter named `name`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

pub(super) fn percent_decode(s: &str) -> String {
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

pub(super) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The client id of a request made with the client's own key (own-key mode): `ownkey-`
/// followed by 16 hex characters of the key's SHA-256. Stable across processes and restarts
/// (rate limits shared through Redis key on it), not reversible, and never the key itself.
///
/// ```
/// let id = tower_gemini::auth::client_key_id("AIzaSyA-1234567890abcdefghijklmnopq9xQk");
/// assert!(id.starts_with("ownkey-") && id.len() == 23);
/// assert!(!id.contains("9xQk"));
/// ```
pub fn client_key_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.trim().as_bytes());
    let mut id = String::with_capacity(23);
    id.push_str("ownkey-");
    for b in &digest[..8] {
        use std::fmt::Write as _;
        let _ = write!(id, "{b:02x}");
    }
    id
}
