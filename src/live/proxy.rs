//! [`LiveProxy`] and its builder: the client's handshake, checked and answered.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::session::Session;
use super::upstream::Upstream;
use crate::auth::TokenStore;
use crate::body::Body;
use crate::credential::credential;
use crate::error::{ApiError, Dialect, Error};
use crate::facts::Identity;
use crate::key_rotation::KeyPool;
use crate::usage::UsageLayer;

/// The Live API's WebSocket paths (`v1beta`, `v1alpha`, and `v1`, which google-genai 3.x
/// uses by default).
pub const LIVE_PATHS: [&str; 3] = [
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent",
];

/// Whether `path` is one of the Live API's WebSocket paths.
pub fn is_live_path(path: &str) -> bool {
    LIVE_PATHS.contains(&path)
}

/// Builds a [`LiveProxy`].
pub struct LiveProxyBuilder {
    upstream_url: String,
    pool: Arc<KeyPool>,
    tokens: Option<Arc<dyn TokenStore>>,
    usage: Option<UsageLayer>,
    setup_timeout: Duration,
    connect_timeout: Duration,
    max_message_bytes: usize,
    extra_roots_pem: Vec<Vec<u8>>,
    client_key_passthrough: bool,
    model_policy: Option<ModelPolicy>,
    quota: Option<QuotaPolicy>,
}

/// What a [`LiveProxyBuilder::quota`] check is asked about: a session about to open
/// (`usage: None`) or one of its turns just answered (`usage`: the server's `usageMetadata`
/// message).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QuotaCheck {
    /// The client, when a token store authenticated it.
    pub client: Option<Identity>,
    /// The client's address, when the server put a [`ClientAddr`](crate::facts::ClientAddr)
    /// in the handshake's extensions.
    pub addr: Option<std::net::SocketAddr>,
    /// The session's model (after the [model policy](LiveProxyBuilder::model_policy)).
    pub model: String,
    /// The turn's `usageMetadata` message, to charge its tokens; `None` at the opening.
    pub usage: Option<bytes::Bytes>,
}

/// Checks a [`QuotaCheck`]: `Err` refuses the opening or ends the session after the turn.
pub type QuotaPolicy = Arc<
    dyn Fn(
            QuotaCheck,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>
        + Send
        + Sync,
>;

/// Decides a session's model from the one its `setup` names: the model to use (renamed, for
/// an alias) or the refusal to close the session with.
pub type ModelPolicy = Arc<dyn Fn(&str) -> Result<String, ApiError> + Send + Sync>;

impl fmt::Debug for LiveProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveProxyBuilder")
            .field("upstream_url", &self.upstream_url)
            .field("keys", &self.pool.len())
            .field("auth", &self.tokens.is_some())
            .field("usage", &self.usage.is_some())
            .field("setup_timeout", &self.setup_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("extra_roots", &self.extra_roots_pem.len())
            .field("client_key_passthrough", &self.client_key_passthrough)
            .field("model_policy", &self.model_policy.is_some())
            .field("quota", &self.quota.is_some())
            .finish()
    }
}

impl LiveProxyBuilder {
    /// Client tokens: a handshake without a known one gets `401` before the upgrade (default:
    /// no authentication). The same store as the gateway's, so a revoked token is refused here
    /// at once too.
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.tokens = Some(store);
        self
    }

    /// Records one [`UsageRecord`](crate::usage::UsageRecord) per `usageMetadata` message of the
    /// server (route `live.bidiGenerateContent`) into this layer's sinks (default: none).
    pub fn usage(mut self, usage: UsageLayer) -> Self {
        self.usage = Some(usage);
        self
    }

    /// How long a client has, after the upgrade, to send its `setup` message (default 30 s).
    pub fn setup_timeout(mut self, timeout: Duration) -> Self {
        self.setup_timeout = timeout;
        self
    }

    /// Bounds the TCP connect, TLS and WebSocket handshakes with the upstream (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest message relayed either way (default 20 MiB; larger ones close the session with
    /// `1009`).
    pub fn max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Own-key mode (default off), as
    /// [`BearerAuthLayer::client_key_passthrough`](crate::auth::BearerAuthLayer::client_key_passthrough):
    /// a credential the token store does not know is the client's own Gemini key, and the
    /// session runs on it (no pool key; a refusal of it is the client's to see, and never
    /// counts against a pool key). Needs a [`token_store`](Self::token_store).
    pub fn client_key_passthrough(mut self, on: bool) -> Self {
        self.client_key_passthrough = on;
        self
    }

    /// Polices the model of each session (default: any model passes unchanged): `f` gets the
    /// model `setup` names (without `models/`) and returns the model to open the session for
    /// (an alias resolved: the upstream's `setup` is rewritten to it) or the error to close
    /// the session with (`1008`, its message as the reason). full_proxy runs its request
    /// policy's rules here (`MODEL_ALIASES`, `ALLOWED_MODELS`), as a
    /// [`CallKind::Live`](crate::policy::CallKind) call without a body.
    pub fn model_policy(
        mut self,
        f: impl Fn(&str) -> Result<String, ApiError> + Send + Sync + 'static,
    ) -> Self {
        self.model_policy = Some(Arc::new(f));
        self
    }

    /// Puts sessions under the gateway's quotas (default: none): `f` is asked before a session
    /// opens (a refusal closes it with `1013` and the reason, before any upstream connection)
    /// and after each turn with the turn's `usageMetadata` (a refusal closes the session with
    /// `1013` once that turn has been relayed). full_proxy runs its rate limits here: opening
    /// a session and each turn count as a request, and a turn's tokens as tokens.
    pub fn quota<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(QuotaCheck) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        self.quota = Some(Arc::new(move |q| Box::pin(f(q))));
        self
    }

    /// Trusts the certificates of a PEM bundle for a `wss://` upstream, beside the webpki
    /// roots: a private CA, or an egress proxy that inspects TLS. The same bundle as
    /// [`UpstreamClientBuilder::add_root_certificates_pem`](crate::client::UpstreamClientBuilder::add_root_certificates_pem)'s
    /// (full_proxy: `UPSTREAM_CA_FILE`).
    pub fn add_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots_pem.push(pem.into());
        self
    }

    /// Builds the proxy. Fails on an upstream URL that is not `http(s)://host[:port][/prefix]`
    /// or an extra root bundle that holds no valid certificate.
    pub fn build(self) -> Result<LiveProxy, Error> {
        let roots = crate::tls::root_store(&[], &self.extra_roots_pem)?;
        let upstream = Upstream::new(&self.upstream_url, self.connect_timeout, roots)?;
        let (closing, _) = watch::channel(false);
        Ok(LiveProxy {
            inner: Arc::new(Inner {
                upstream,
                pool: self.pool,
                tokens: self.tokens,
                client_key_passthrough: self.client_key_passthrough,
                model_policy: self.model_policy,
                quota: self.quota,
                usage: self.usage,
                setup_timeout: self.setup_timeout,
                max_message_bytes: self.max_message_bytes,
                closing,
                sessions: AtomicUsize::new(0),
                ended: tokio::sync::Notify::new(),
            }),
        })
    }
}

/// Relays Live API sessions to the upstream; see the [module docs](super).
#[derive(Clone)]
pub struct LiveProxy {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) upstream: Upstream,
    pub(super) pool: Arc<KeyPool>,
    tokens: Option<Arc<dyn TokenStore>>,
    client_key_passthrough: bool,
    pub(super) model_policy: Option<ModelPolicy>,
    pub(super) quota: Option<QuotaPolicy>,
    pub(super) usage: Option<UsageLayer>,
    pub(super) setup_timeout: Duration,
    pub(super) max_message_bytes: usize,
    /// Flips to `true` when every session must close (shutdown).
    pub(super) closing: watch::Sender<bool>,
    pub(super) sessions: AtomicUsize,
    /// Notified each time a session ends.
    pub(super) ended: tokio::sync::Notify,
}

impl fmt::Debug for LiveProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveProxy")
            .field("upstream", &self.inner.upstream)
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

impl LiveProxy {
    /// A builder for sessions to `upstream_url` (`http(s)://host[:port]`, the same base URL as
    /// the REST routes') on keys of `pool`.
    pub fn builder(upstream_url: impl Into<String>, pool: Arc<KeyPool>) -> LiveProxyBuilder {
        LiveProxyBuilder {
            upstream_url: upstream_url.into(),
            pool,
            tokens: None,
            usage: None,
            setup_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: crate::body::DEFAULT_MAX_BODY_BYTES,
            extra_roots_pem: Vec::new(),
            client_key_passthrough: false,
            model_policy: None,
            quota: None,
        }
    }

    /// Answers a client's WebSocket handshake on a Live path: `101 Switching Protocols` and a
    /// session started on the upgraded connection, or a JSON error in Gemini's dialect before
    /// any upgrade: `401` (missing or unknown client token), `404` (not a Live path), `400`
    /// (not a WebSocket handshake), `426` (a handshake hyper cannot upgrade, such as HTTP/2),
    /// `503` (no usable key in the pool).
    ///
    /// The request must come from a hyper HTTP/1.1 connection served with upgrades (axum's
    /// `serve` does; hyper's `serve_connection` needs `.with_upgrades()`).
    pub fn upgrade<B>(&self, mut req: Request<B>) -> Response<Body> {
        let refuse = |e: ApiError| e.into_response(Dialect::Gemini);
        if !is_live_path(req.uri().path()) {
            return refuse(ApiError::not_found(format!(
                "no route {} {}",
                req.method(),
                req.uri().path()
            )));
        }
        let mut own_key = None;
        let client = match &self.inner.tokens {
            None => None,
            Some(store) => match credential(&req) {
                None => return refuse(ApiError::unauthorized(crate::auth::MISSING_TOKEN)),
                Some((token, _)) => {
                    match crate::auth::identify(&**store, &token, self.inner.client_key_passthrough)
                    {
                        Ok((identity, own)) => {
                            own_key = own;
                            Some(identity)
                        }
                        Err(refused) => return refuse(refused),
                    }
                }
            },
        };
        let Some(accept) = websocket_accept(req.method(), req.headers()) else {
            return refuse(ApiError::bad_request(
                "this route is the Live API's WebSocket: send a GET with `Upgrade: websocket`",
            ));
        };
        let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
            return refuse(ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "the Live API's WebSocket needs an HTTP/1.1 connection",
            ));
        };
        if own_key.is_none() && self.inner.pool.usable_count() == 0 {
            let e = if self.inner.pool.is_empty() {
                ApiError::service_unavailable("the gateway has no upstream API key configured")
            } else {
                ApiError::service_unavailable(
                    "every upstream API key is disabled or cooling; try again later",
                )
            };
            return refuse(e);
        }
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let addr = req
            .extensions()
            .get::<crate::facts::ClientAddr>()
            .map(|a| a.0)
            .or_else(|| req.extensions().get::<std::net::SocketAddr>().copied());
        let session = Session {
            addr,
            proxy: self.inner.clone(),
            path: req.uri().path().to_owned(),
            request_id,
            client,
            own_key,
        };
        self.inner.sessions.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(session.run(on_upgrade));

        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, http::HeaderValue::from_static("websocket"));
        if let Ok(v) = http::HeaderValue::from_str(&accept) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        res
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.inner.sessions.load(Ordering::Acquire)
    }

    /// Closes every session, now and for good (shutdown): each side gets a close frame
    /// `1001` ("the gateway is shutting down"); new handshakes still upgrade but close at once.
    /// Resolves when every session has ended; bound it with a timeout.
    pub async fn close_all(&self) {
        self.inner.closing.send_replace(true);
        loop {
            let ended = self.inner.ended.notified();
            if self.sessions() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a valid RFC 6455 handshake, else `None`.
fn websocket_accept(method: &Method, headers: &HeaderMap) -> Option<String> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET
        || !has_token(CONNECTION, "upgrade")
        || !has_token(UPGRADE, "websocket")
        || headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13")
    {
        return None;
    }
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn handshake() -> http::request::Builder {
        Request::get(LIVE_PATHS[0])
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn a_valid_handshake_gets_the_rfc_6455_accept_value() {
        let req = handshake().body(()).unwrap();
        assert_eq!(
            websocket_accept(req.method(), req.headers()).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let mut headers = req.headers().clone();
        headers.insert(SEC_WEBSOCKET_VERSION, http::HeaderValue::from_static("8"));
        assert_eq!(websocket_accept(&Method::GET, &headers), None);
        assert_eq!(websocket_accept(&Method::POST, req.headers()), None);
    }

    #[tokio::test]
    async fn a_handshake_without_hyper_upgrade_gets_426_and_an_empty_pool_503() {
        let pool = KeyPool::new(["AIzaSyUpstream-key-000000000000000001"]).unwrap();
        let live = LiveProxy::builder("http://127.0.0.1:9", pool)
            .build()
            .unwrap();
        let res = live.upgrade(handshake().body(()).unwrap());
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(live.sessions(), 0);

        let empty = KeyPool::builder().build().unwrap();
        let live = LiveProxy::builder("http://127.0.0.1:9", empty)
            .build()
            .unwrap();
        let mut req = handshake().body(()).unwrap();
        // Any OnUpgrade will do: the pool is checked before the upgrade is taken.
        req.extensions_mut()
            .insert(hyper::upgrade::on(Request::new(())));
        assert_eq!(live.upgrade(req).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn only_live_paths_are_live() {
        assert!(LIVE_PATHS.iter().all(|p| is_live_path(p)));
        assert!(!is_live_path(
            "/ws/google.ai.generativelanguage.v2.GenerativeService.BidiGenerateContent"
        ));
        assert!(!is_live_path("/v1beta/models"));
    }
}
