//! Authenticate gateway clients by token, and strip their credential before the upstream.
//!
//! [`BearerAuthLayer`] accepts the three ways clients send a key: `Authorization: Bearer <t>`
//! (OpenAI SDKs, curl), `x-goog-api-key: <t>` (google-genai SDKs) and `?key=<t>` (Gemini REST
//! examples). The token is looked up in a [`TokenStore`] with constant-time comparison; on
//! success the caller's [`Identity`] goes into the request extensions and **every** credential
//! (the three above) is removed from the request, so the client's secret never travels
//! upstream. Otherwise the answer is 401 with `WWW-Authenticate: Bearer` and a JSON error in the
//! route's dialect, and the inner service is not called.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{Body, auth::{BearerAuthLayer, Identity, MemoryTokenStore}};
//!
//! let tokens = MemoryTokenStore::new().with_token("sk-client-token-1", "alice");
//! let svc = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(tokens))
//!     .service(service_fn(|req: Request<Body>| async move {
//!         assert!(req.headers().get("authorization").is_none());
//!         let who = req.extensions().get::<Identity>().unwrap().name().to_owned();
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from(who)))
//!     }));
//!
//! let ok = Request::builder()
//!     .uri("/v1beta/models")
//!     .header("authorization", "Bearer sk-client-token-1")
//!     .body(Body::empty())
//!     .unwrap();
//! assert_eq!(svc.clone().oneshot(ok).await.unwrap().status(), StatusCode::OK);
//!
//! let bad = Request::builder().uri("/v1beta/models?key=nope").body(Body::empty()).unwrap();
//! assert_eq!(svc.oneshot(bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! # });
//! ```
//!
//! # Ordering
//! Put it after `RequestIdLayer` (so rejections carry an id) and before anything that calls
//! upstream. Routes that need no credential (`/health`) belong outside it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::error::{ApiError, Dialect};
use crate::secret::{ClientKey, mask};

// === Identity and token stores ===

pub use crate::facts::Identity;

/// Looks up client tokens: the plug point for token databases.
pub trait TokenStore: Send + Sync + 'static {
    /// The identity a token belongs to, or `None`. Implementations compare in constant time.
    fn authenticate(&self, token: &str) -> Option<Identity>;
}

impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    fn authenticate(&self, token: &str) -> Option<Identity> {
        (**self).authenticate(token)
    }
}

pub use crate::secret::TokenDigest;

/// One entry of a [`MemoryTokenStore`] listing (the token masked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The masked token, also the token's id.
    pub id: String,
    /// The client's name.
    pub name: String,
    /// Whether the token is an admin token.
    pub admin: bool,
    /// The token's SHA-256 digest (what is stored instead of the token).
    pub digest: TokenDigest,
}

struct Entry {
    digest: TokenDigest,
    identity: Identity,
}

impl Entry {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.identity.id().to_owned(),
            name: self.identity.name().to_owned(),
            admin: self.identity.is_admin(),
            digest: self.digest,
        }
    }
}

/// An in-memory token set that can change at run time (tokens added and revoked take effect
/// on the next request). It keeps [`TokenDigest`]s, never the tokens themselves.
#[derive(Default)]
pub struct MemoryTokenStore {
    entries: RwLock<Vec<Entry>>,
}

impl MemoryTokenStore {
    /// An empty store: every request is refused until a token is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client token (builder form).
    pub fn with_token(self, token: impl AsRef<str>, name: impl Into<Arc<str>>) -> Self {
        self.insert(token.as_ref(), name, false);
        self
    }

    /// Adds an admin token (builder form).
    pub fn with_admin_token(self, token: impl AsRef<str>) -> Self {
        self.insert(token.as_ref(), "admin", true);
        self
    }

    /// Adds (or replaces) a token. Returns its id: the masked token, made unique with a `#2`,
    /// `#3`, ... suffix when another token masks the same way (`team-a-2024` and `team-b-2024`
    /// both mask to `team…2024`), so rate limits and stats never mix two clients up.
    pub fn insert(&self, token: &str, name: impl Into<Arc<str>>, admin: bool) -> String {
        let digest = TokenDigest::of(token);
        let masked = mask(token);
        let id = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let taken = |id: &str| {
                entries
                    .iter()
                    .any(|e| e.identity.id() == id && !e.digest.ct_eq(&digest))
            };
            let mut id = masked.clone();
            let mut n = 1;
            while taken(&id) {
                n += 1;
                id = format!("{masked}#{n}");
            }
            id
        };
        self.insert_digest(digest, id.as_str(), name, admin);
        id
    }

    /// Adds (or replaces) a token known only by its digest and id (the masked token), as a
    /// database restores it.
    pub fn insert_digest(
        &self,
        digest: TokenDigest,
        id: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        admin: bool,
    ) {
        let entry = Entry {
            digest,
            identity: Identity::new(name, id, admin),
        };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !e.digest.ct_eq(&digest));
        entries.push(entry);
    }

    /// Revokes a token given as the token itself or its id. Returns whether one was removed.
    pub fn revoke(&self, token_or_id: &str) -> bool {
        !self.remove(token_or_id).is_empty()
    }

    /// Revokes a token given as the token itself or its id, and returns what was removed.
    pub fn remove(&self, token_or_id: &str) -> Vec<TokenInfo> {
        let digest = TokenDigest::of(token_or_id);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let (removed, kept) = std::mem::take(&mut *entries)
            .into_iter()
            .partition(|e| e.digest.ct_eq(&digest) || e.identity.id() == token_or_id);
        *entries = kept;
        removed.iter().map(Entry::info).collect()
    }

    /// The tokens, masked.
    pub fn list(&self) -> Vec<TokenInfo> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(Entry::info).collect()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTokenStore")
            .field("tokens", &self.list())
            .finish()
    }
}

impl TokenStore for MemoryTokenStore {
    fn authenticate(&self, token: &str) -> Option<Identity> {
        let digest = TokenDigest::of(token);
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        // Compare against every entry, so timing says nothing about which one matched.
        let mut found = None;
        for e in entries.iter() {
            if e.digest.ct_eq(&digest) {
                found = Some(e.identity.clone());
            }
        }
        found
    }
}

/// Mints a new random token: `prefix` followed by 64 hex characters (244 random bits).
///
/// ```
/// let t = tower_gemini::auth::mint_token("sk-");
/// assert!(t.starts_with("sk-") && t.len() == 67);
/// assert_ne!(t, tower_gemini::auth::mint_token("sk-"));
/// ```
pub fn mint_token(prefix: &str) -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{a}{b}")
}

// === Credentials ===

pub use crate::credential::{
    CredentialSource, X_GOOG_API_KEY, credential, query_param, remove_query_param,
    strip as strip_credentials,
};

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

// === BearerAuthLayer ===

/// Applies [`BearerAuth`]: authenticate clients against a [`TokenStore`].
#[derive(Clone)]
pub struct BearerAuthLayer {
    store: Arc<dyn TokenStore>,
    passthrough: bool,
}

impl BearerAuthLayer {
    /// Authenticates against `store`.
    pub fn new(store: impl TokenStore) -> Self {
        Self {
            store: Arc::new(store),
            passthrough: false,
        }
    }

    /// Authenticates against a shared store (so an admin API can change it at run time).
    pub fn from_arc(store: Arc<dyn TokenStore>) -> Self {
        Self {
            store,
            passthrough: false,
        }
    }

    /// Own-key mode (default off): a credential the store does not know is taken to be the
    /// client's own Gemini key. The request goes on with that key as a [`ClientKey`] extension
    /// (the upstream layers send it upstream for this request only) and an [`Identity`] whose id
    /// is [`client_key_id`], a hash of the key, so limits and stats tell clients apart without
    /// holding their keys. Tokens the store knows still authenticate as before (and use the
    /// gateway's own keys); a request with no credential at all is still 401.
    pub fn client_key_passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("client_key_passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            store: self.store.clone(),
            passthrough: self.passthrough,
        }
    }
}

// === BearerAuth ===

/// Authenticates clients by token; see the [module docs](self).
#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    store: Arc<dyn TokenStore>,
    passthrough: bool,
}

impl<S> BearerAuth<S> {
    /// Wraps `inner`, authenticating against `store`.
    pub fn new(inner: S, store: impl TokenStore) -> Self {
        BearerAuthLayer::new(store).layer(inner)
    }

    /// A [`BearerAuthLayer`] for `store`.
    pub fn layer(store: impl TokenStore) -> BearerAuthLayer {
        BearerAuthLayer::new(store)
    }

    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let dialect = Dialect::of(&req);
        let mut own_key = None;
        let identity = match credential(&req) {
            None => Err(ApiError::unauthorized(
                "missing client token: send `Authorization: Bearer <token>`, \
                 `x-goog-api-key: <token>` or `?key=<token>`",
            )),
            Some((token, _)) => match self.store.authenticate(&token) {
                Some(identity) => Ok(identity),
                None if self.passthrough => {
                    let id = client_key_id(&token);
                    own_key = Some(ClientKey::new(token));
                    Ok(Identity::new(id.as_str(), id.as_str(), false))
                }
                None => Err(ApiError::unauthorized("invalid client token")),
            },
        };
        match identity {
            Ok(identity) => {
                let mut req = req.map(Body::new);
                // The credential's header is part of how the dialect is told; keep the answer.
                req.extensions_mut().insert(dialect);
                strip_credentials(&mut req);
                if let Some(key) = own_key {
                    req.extensions_mut().insert(key);
                }
                tracing::Span::current().record("client", identity.id());
                if let Some(report) = crate::facts::Report::of(&req) {
                    report.record_client(&identity);
                }
                req.extensions_mut().insert(identity);
                ResponseFuture {
                    kind: Kind::Inner {
                        fut: self.inner.call(req),
                    },
                }
            }
            Err(err) => {
                tracing::debug!(reason = err.message(), "client refused");
                ResponseFuture {
                    kind: Kind::Reject {
                        res: Some(err.into_response(dialect)),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`BearerAuth`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] fut: F },
        Reject { res: Option<Response<Body>> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx).map_ok(|res| res.map(Body::new)),
            KindProj::Reject { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::collect_limited;
    use http::StatusCode;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    type Seen = Arc<Mutex<Vec<Request<()>>>>;

    fn svc(
        store: Arc<MemoryTokenStore>,
    ) -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
        Seen,
    ) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::from_arc(store))
            .service(service_fn(move |req: Request<Body>| {
                let s = s.clone();
                async move {
                    let (parts, _) = req.into_parts();
                    s.lock().unwrap().push(Request::from_parts(parts, ()));
                    Ok::<_, Infallible>(Response::new(Body::from("ok")))
                }
            }));
        (svc, seen)
    }

    #[test]
    fn tokens_that_mask_alike_get_distinct_ids() {
        let store = MemoryTokenStore::new();
        let a = store.insert("team-alpha-2024", "a", false);
        let b = store.insert("team-beta-2024", "b", false);
        let c = store.insert("team-gamma-2024", "c", false);
        assert_eq!(a, "team…2024");
        assert_eq!(b, "team…2024#2");
        assert_eq!(c, "team…2024#3");
        // Re-inserting a token keeps its id; each authenticates as itself.
        assert_eq!(store.insert("team-beta-2024", "b", false), b);
        assert_eq!(store.authenticate("team-alpha-2024").unwrap().id(), a);
        assert_eq!(store.authenticate("team-beta-2024").unwrap().id(), b);
        // Revoking by id removes that one token only.
        assert_eq!(store.remove(&b).len(), 1);
        assert!(store.authenticate("team-alpha-2024").is_some());
        assert!(store.authenticate("team-beta-2024").is_none());
        assert!(store.authenticate("team-gamma-2024").is_some());
    }

    fn store() -> Arc<MemoryTokenStore> {
        Arc::new(MemoryTokenStore::new().with_token("client-token-0001", "alice"))
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn accepts_all_three_credential_styles_and_strips_them() {
        let (svc, seen) = svc(store());
        for r in [
            req(
                "/v1beta/models",
                &[("authorization", "Bearer client-token-0001")],
            ),
            req("/v1beta/models", &[("x-goog-api-key", "client-token-0001")]),
            req("/v1beta/models?alt=sse&key=client-token-0001", &[]),
        ] {
            let res = svc.clone().oneshot(r).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for r in seen.iter() {
            assert!(r.headers().get("authorization").is_none());
            assert!(r.headers().get("x-goog-api-key").is_none());
            assert!(!r.uri().to_string().contains("client-token"));
            assert_eq!(r.extensions().get::<Identity>().unwrap().name(), "alice");
        }
        assert_eq!(seen[2].uri().query(), Some("alt=sse"));
    }

    #[tokio::test]
    async fn missing_token_is_401_in_the_route_dialect() {
        let (svc, seen) = svc(store());
        let res = svc
            .clone()
            .oneshot(req("/v1/chat/completions", &[]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body = collect_limited(res.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");

        let res = svc.oneshot(req("/v1beta/models", &[])).await.unwrap();
        let body = collect_limited(res.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn wrong_token_is_401() {
        let (svc, seen) = svc(store());
        let res = svc
            .oneshot(req(
                "/v1beta/models",
                &[("authorization", "Bearer client-token-0002")],
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn revoked_token_is_refused_on_the_next_request() {
        let store = store();
        let (svc, _) = svc(store.clone());
        let ok = req("/v1beta/models", &[("x-goog-api-key", "client-token-0001")]);
        assert_eq!(
            svc.clone().oneshot(ok).await.unwrap().status(),
            StatusCode::OK
        );
        assert!(store.revoke(&mask("client-token-0001")));
        let again = req("/v1beta/models", &[("x-goog-api-key", "client-token-0001")]);
        assert_eq!(
            svc.oneshot(again).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn passthrough_takes_an_unknown_credential_as_the_clients_own_key() {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::from_arc(store()).client_key_passthrough(true))
            .service(service_fn(move |req: Request<Body>| {
                let s = s.clone();
                async move {
                    let (parts, _) = req.into_parts();
                    s.lock().unwrap().push(Request::from_parts(parts, ()));
                    Ok::<_, Infallible>(Response::new(Body::from("ok")))
                }
            }));
        let own = "AIzaSyOwn-key-of-a-client-0000000000001";
        for r in [
            req(&format!("/v1beta/models?key={own}"), &[]),
            req(
                "/v1beta/models",
                &[("authorization", "Bearer client-token-0001")],
            ),
        ] {
            assert_eq!(
                svc.clone().oneshot(r).await.unwrap().status(),
                StatusCode::OK
            );
        }
        let res = svc.oneshot(req("/v1beta/models", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0]
                .extensions()
                .get::<ClientKey>()
                .unwrap()
                .key()
                .expose(),
            own
        );
        assert_eq!(
            seen[0].extensions().get::<Identity>().unwrap().id(),
            client_key_id(own)
        );
        assert!(!seen[0].uri().to_string().contains(own));
        // A known token is no client key: it uses the gateway's own keys.
        assert!(seen[1].extensions().get::<ClientKey>().is_none());
        assert_eq!(
            seen[1].extensions().get::<Identity>().unwrap().name(),
            "alice"
        );
    }

    #[test]
    fn a_token_restored_from_its_digest_authenticates() {
        let s = MemoryTokenStore::new();
        s.insert_digest(
            TokenDigest::of("client-token-0009"),
            "clie…0009",
            "bob",
            false,
        );
        assert_eq!(s.authenticate("client-token-0009").unwrap().name(), "bob");
        assert!(s.authenticate("client-token-0008").is_none());
        let removed = s.remove("clie…0009");
        assert_eq!(removed[0].digest, TokenDigest::of("client-token-0009"));
        assert!(s.authenticate("client-token-0009").is_none());
    }

    #[test]
    fn admin_flag_is_kept() {
        let s = MemoryTokenStore::new().with_admin_token("admin-token-123456");
        assert!(s.authenticate("admin-token-123456").unwrap().is_admin());
        assert!(s.authenticate("admin-token-12345").is_none());
    }
}
