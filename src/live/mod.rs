//! The Live API: WebSocket sessions relayed frame by frame to Gemini, one pool key per session.
//!
//! Gemini's Live API is a WebSocket at
//! `/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent` (also
//! `v1alpha`, and `v1`, which google-genai 3.x uses). [`LiveProxy::upgrade`] answers a client's handshake on those paths and relays
//! the session to the same path upstream (`ws://` for an `http://` upstream, `wss://` with
//! rustls for an `https://` one):
//!
//! - **Client credentials** as on every other route (`?key=`, `x-goog-api-key`,
//!   `Authorization: Bearer`), checked against the [`TokenStore`](crate::auth::TokenStore)
//!   before the upgrade: a missing or unknown token gets `401` and no upstream connection.
//!   The client's credential never travels upstream: the upstream URL is built from the path
//!   and the pool key alone.
//! - **One key per session.** The first client message must be `setup`; its `setup.model`
//!   picks a key from the [`KeyPool`](crate::key_rotation::KeyPool) (its strategy, skipping
//!   keys cooling for that model or disabled). The key is sent as `?key=` (logged masked) and
//!   serves the whole session; it counts in flight until the session ends. A handshake the
//!   upstream refuses for the key's sake (401, 403, 429, `API_KEY_INVALID`) counts against
//!   that key, as an HTTP answer would, and the next key is tried. When no key can open the
//!   session the client gets a close frame that says why: `1013` (every key cooling, with
//!   the seconds to wait) or `1011`.
//! - **Own-key mode** ([`LiveProxyBuilder::client_key_passthrough`]): a credential the token
//!   store does not know is the client's own Gemini key and serves its session; Google
//!   refusing it closes the session with the reason (the key masked), and no pool key is
//!   touched.
//! - **Trust**: `wss://` upstreams are checked against the webpki roots plus any
//!   [`LiveProxyBuilder::add_root_certificates_pem`] bundle (full_proxy: `UPSTREAM_CA_FILE`).
//! - **Frames** (text, binary, ping, pong, close) are relayed both ways as they arrive; a
//!   close from either side closes the other (the upstream's reason with any key masked).
//!   The WebSocket library also answers pings itself, so a ping may see two pongs.
//! - **Usage**: each server message with `usageMetadata` (one per turn) becomes a
//!   [`UsageRecord`](crate::usage::UsageRecord) with route `live.bidiGenerateContent`, the
//!   session's model, key id, client and request id, handed to the
//!   [`UsageLayer`](crate::usage::UsageLayer)'s sinks ([`LiveProxyBuilder::usage`]).
//! - **Shutdown**: [`LiveProxy::close_all`] closes every session with `1001`.
//!
//! - **Model policy** ([`LiveProxyBuilder::model_policy`]): the model `setup` names may be
//!   refused (close `1008` saying why, no upstream connection) or renamed (an alias; the
//!   `setup` sent upstream names the real model).
//!
//! - **Quotas** ([`LiveProxyBuilder::quota`]): a session may be refused at its opening and
//!   closed after a turn (`1013`, saying why) by the gateway's limits.
//!
//! Stream resume does not apply to sessions.
//!
//! # Example
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use http::{Request, StatusCode};
//! use tower_gemini::auth::MemoryTokenStore;
//! use tower_gemini::key_rotation::KeyPool;
//! use tower_gemini::live::LiveProxy;
//!
//! let pool = KeyPool::new(["AIzaSyUpstream-key-000000000000000001"]).unwrap();
//! let tokens = MemoryTokenStore::new().with_token("client-token-0001", "alice");
//! let live = LiveProxy::builder("https://generativelanguage.googleapis.com", pool)
//!     .token_store(std::sync::Arc::new(tokens))
//!     .build()
//!     .unwrap();
//!
//! // In an axum app: `.route(path, get(move |req: Request| async move { live.upgrade(req) }))`
//! // for each of `tower_gemini::live::LIVE_PATHS`.
//! let path = tower_gemini::live::LIVE_PATHS[0];
//! let no_token = Request::get(path).body(()).unwrap();
//! assert_eq!(live.upgrade(no_token).status(), StatusCode::UNAUTHORIZED);
//! let not_a_websocket = Request::get(format!("{path}?key=client-token-0001")).body(()).unwrap();
//! assert_eq!(live.upgrade(not_a_websocket).status(), StatusCode::BAD_REQUEST);
//! # });
//! ```
//!
//! # Serving upgrades
//! The handshake must reach [`LiveProxy::upgrade`] from a hyper HTTP/1.1 connection served
//! with upgrades (`serve_connection(..).with_upgrades()`, or axum's `serve`), which leaves
//! hyper's `OnUpgrade` in the request's extensions. WebSockets over HTTP/2 (RFC 8441) are not
//! served: such a handshake gets `426`.

mod proxy;
mod session;
mod upstream;

pub use proxy::{
    LIVE_PATHS, LiveProxy, LiveProxyBuilder, ModelPolicy, QuotaCheck, QuotaPolicy, is_live_path,
};
