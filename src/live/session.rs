//! One Live session: the client's `setup`, a key, the upstream handshake, then the relay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::Instrument;

use super::proxy::Inner;
use super::upstream::ConnectError;
use crate::facts::Identity;
use crate::gemini::{GeminiError, strip_models_prefix};
use crate::key_rotation::{Lease, Outcome, Pick, Unavailable};
use crate::secret::{ApiKey, ClientKey, scrub_known};
use crate::tokens::TokenScanner;
use crate::usage::UsageRecord;

/// The route name in usage records.
pub(super) const ROUTE: &str = "live.bidiGenerateContent";

/// How long a closing handshake may take once a session is over.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A session about to start: what the client's handshake told.
pub(super) struct Session {
    pub(super) proxy: Arc<Inner>,
    pub(super) path: String,
    pub(super) request_id: Option<String>,
    pub(super) client: Option<Identity>,
    /// Own-key mode: the client's own Gemini key serves the session instead of a pool key.
    pub(super) own_key: Option<ClientKey>,
    /// The client's address, for per-IP quotas.
    pub(super) addr: Option<std::net::SocketAddr>,
}

/// The key a session runs on: a lease from the pool, or the client's own.
enum SessionKey {
    Pool(Lease),
    Own(ClientKey),
}

impl SessionKey {
    fn key(&self) -> &ApiKey {
        match self {
            SessionKey::Pool(lease) => lease.key(),
            SessionKey::Own(own) => own.key(),
        }
    }

    /// The id logs and usage name the key by: the pool key's id; none for a client's own key
    /// (the client's id already names it).
    fn id(&self) -> Option<&str> {
        match self {
            SessionKey::Pool(lease) => Some(lease.id().as_str()),
            SessionKey::Own(_) => None,
        }
    }
}

/// Counts the session open until dropped.
struct Open(Arc<Inner>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl Session {
    /// Runs the session on the upgraded connection until either side closes.
    pub(super) async fn run(self, upgrade: OnUpgrade) {
        let _open = Open(self.proxy.clone());
        let span = tracing::info_span!(
            "live",
            request_id = self.request_id.as_deref().unwrap_or(""),
            client = self.client.as_ref().map(Identity::id).unwrap_or(""),
            gemini.model = tracing::field::Empty,
            key.id = tracing::field::Empty,
        );
        async move {
            let io = match upgrade.await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(e) => {
                    tracing::debug!(error = %e, "the client's upgrade failed");
                    return;
                }
            };
            let client =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(self.ws_config())).await;
            self.serve(client).await;
        }
        .instrument(span)
        .await
    }

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.proxy.max_message_bytes;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    async fn serve<S>(self, mut client: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let proxy = self.proxy.clone();
        let mut closing = proxy.closing.subscribe();
        if *closing.borrow_and_update() {
            return close(&mut client, CloseCode::Away, SHUTTING_DOWN).await;
        }
        // The first message must be `setup`: it names the model the key is picked for.
        let first = tokio::select! {
            first = tokio::time::timeout(proxy.setup_timeout, first_message(&mut client)) => first,
            () = shutting_down(&mut closing) => return close(&mut client, CloseCode::Away, SHUTTING_DOWN).await,
        };
        let setup = match first {
            Err(_) => {
                return close(&mut client, CloseCode::Policy, "no setup message in time").await;
            }
            Ok(None) => return,
            Ok(Some(m)) => m,
        };
        let Some(model) = setup_model(&setup) else {
            return close(
                &mut client,
                CloseCode::Policy,
                "the first message must be `setup` with `setup.model`",
            )
            .await;
        };
        // Google wants `models/{model}`; a bare name (which some clients send) is completed.
        let prefixed = setup_names_resource(&setup);
        let (model, setup) = match &proxy.model_policy {
            None if prefixed => (model, setup),
            None => {
                let setup = with_model(&setup, &model);
                (model, setup)
            }
            Some(policy) => match policy(&model) {
                Ok(m) if m == model && prefixed => (model, setup),
                Ok(m) => {
                    let setup = with_model(&setup, &m);
                    (m, setup)
                }
                Err(e) => {
                    tracing::info!(model = %crate::secret::scrub(&model), reason = e.message(), "Live session refused by the model policy");
                    return close(&mut client, CloseCode::Policy, e.message()).await;
                }
            },
        };
        tracing::Span::current().record("gemini.model", model.as_str());
        if let Err(e) = self.check_quota(&model, None).await {
            tracing::info!(reason = e.message(), "Live session refused by a quota");
            // A model the client may not use is a policy refusal; a quota, a wait.
            let code = if e.status() == http::StatusCode::FORBIDDEN {
                CloseCode::Policy
            } else {
                CloseCode::Again
            };
            return close(&mut client, code, e.message()).await;
        }

        let opened = match self.own_key.clone() {
            Some(own) => self.connect_own(&mut client, own).await,
            None => self.connect(&mut client, &model).await,
        };
        let Some((upstream, key)) = opened else {
            return;
        };
        if let Some(id) = key.id() {
            tracing::Span::current().record("key.id", id);
        }
        self.relay(client, upstream, setup, &model, key, closing)
            .await;
    }

    /// Picks a key and opens the upstream session with it. A handshake the upstream refuses
    /// for the key's sake (401, 403, 429, an invalid key) counts against that key and the next
    /// key is tried; the key that opens the session serves all of it. `None` when the client
    /// has been told why no session could be opened.
    async fn connect<S>(
        &self,
        client: &mut WebSocketStream<S>,
        model: &str,
    ) -> Option<(super::upstream::UpstreamSocket, SessionKey)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let pool = &self.proxy.pool;
        let mut tried = Vec::new();
        loop {
            let mut lease = match pool.pick(model, &tried) {
                Pick::Key(lease) => lease,
                Pick::Unavailable(why) => {
                    let code = match why {
                        Unavailable::AllCooling(_) | Unavailable::AllResting(_) => CloseCode::Again,
                        _ => CloseCode::Error,
                    };
                    let e = why.to_api_error(model);
                    tracing::warn!(reason = e.message(), "no key can open the Live session");
                    close(client, code, e.message()).await;
                    return None;
                }
            };
            let key = lease.key().clone();
            tracing::debug!(
                url = %self.proxy.upstream.masked_url(&self.path, &key),
                key.id = %lease.id(),
                "opening the upstream Live session"
            );
            let opened = self
                .proxy
                .upstream
                .connect(
                    &self.path,
                    &key,
                    self.request_id.as_deref(),
                    self.ws_config(),
                )
                .await;
            match opened {
                Ok(socket) => {
                    pool.report(&mut lease, model, &Outcome::Success, None)
                        .await;
                    return Some((socket, SessionKey::Pool(lease)));
                }
                Err(ConnectError::Refused { status, body }) => {
                    let error = GeminiError::parse(&body);
                    let outcome = Outcome::classify_for(status, error.as_ref(), false);
                    let note = format!("Live handshake refused: HTTP {}", status.as_u16());
                    tracing::warn!(key.id = %lease.id(), status = status.as_u16(), "{note}");
                    pool.report(&mut lease, model, &outcome, Some(note)).await;
                    match outcome {
                        Outcome::KeyFailure { .. } | Outcome::Exhausted { .. } => {
                            tried.push(lease.id().clone());
                        }
                        _ => {
                            let reason = format!(
                                "the upstream refused the Live session (HTTP {})",
                                status.as_u16()
                            );
                            close(client, CloseCode::Error, &reason).await;
                            return None;
                        }
                    }
                }
                Err(ConnectError::Transport(e)) => {
                    tracing::warn!(key.id = %lease.id(), error = %e, "cannot reach the Live upstream");
                    pool.report(&mut lease, model, &Outcome::Transient, None)
                        .await;
                    close(client, CloseCode::Error, "cannot reach the upstream").await;
                    return None;
                }
            }
        }
    }

    /// Opens the upstream session with the client's own key (own-key mode): one try, and a
    /// refusal is the client's to see (its key, its quota), never a pool key's fault.
    async fn connect_own<S>(
        &self,
        client: &mut WebSocketStream<S>,
        own: ClientKey,
    ) -> Option<(super::upstream::UpstreamSocket, SessionKey)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let opened = self
            .proxy
            .upstream
            .connect(
                &self.path,
                own.key(),
                self.request_id.as_deref(),
                self.ws_config(),
            )
            .await;
        match opened {
            Ok(socket) => Some((socket, SessionKey::Own(own))),
            Err(ConnectError::Refused { status, body }) => {
                let why = GeminiError::parse(&body)
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default();
                let why = scrub_known(&why, &[own.key().expose()]);
                let reason = format!(
                    "the upstream refused your key for the Live session (HTTP {}): {why}",
                    status.as_u16()
                );
                let code = if status == http::StatusCode::TOO_MANY_REQUESTS {
                    CloseCode::Again
                } else {
                    CloseCode::Policy
                };
                close(client, code, &reason).await;
                None
            }
            Err(ConnectError::Transport(e)) => {
                tracing::warn!(error = %e, "cannot reach the Live upstream");
                close(client, CloseCode::Error, "cannot reach the upstream").await;
                None
            }
        }
    }

    /// Relays frames both ways until one side closes, the connection of one side fails, or the
    /// gateway shuts down.
    async fn relay<S>(
        &self,
        client: WebSocketStream<S>,
        upstream: super::upstream::UpstreamSocket,
        setup: Message,
        model: &str,
        mut key: SessionKey,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let key_id = key.id().map(str::to_owned);
        let secrets = [key.key().expose().to_owned()];
        let (mut c_tx, mut c_rx) = client.split();
        let (mut u_tx, mut u_rx) = upstream.split();
        let (mut up, mut down) = (0u64, 0u64);
        let mut answered = false;
        let mut turn_started = Instant::now();
        let ended: &str = if u_tx.send(setup).await.is_err() {
            let _ = c_tx.send(close_msg(CloseCode::Error, UPSTREAM_LOST)).await;
            "upstream lost"
        } else {
            loop {
                tokio::select! {
                    m = c_rx.next() => match m {
                        Some(Ok(Message::Close(frame))) => {
                            let _ = u_tx.send(Message::Close(frame)).await;
                            break "client closed";
                        }
                        Some(Ok(Message::Frame(_))) => {}
                        Some(Ok(m)) => {
                            up += 1;
                            if matches!(m, Message::Text(_) | Message::Binary(_)) {
                                turn_started = Instant::now();
                            }
                            if u_tx.send(m).await.is_err() {
                                let _ = c_tx.send(close_msg(CloseCode::Error, UPSTREAM_LOST)).await;
                                break "upstream lost";
                            }
                        }
                        Some(Err(e)) => {
                            let (code, reason) = client_error(&e);
                            let _ = c_tx.send(close_msg(code, reason)).await;
                            let _ = u_tx.send(close_msg(CloseCode::Away, "the client went away")).await;
                            break "client failed";
                        }
                        None => {
                            let _ = u_tx.send(close_msg(CloseCode::Away, "the client went away")).await;
                            break "client gone";
                        }
                    },
                    m = u_rx.next() => match m {
                        Some(Ok(Message::Close(frame))) => {
                            let frame = frame.map(|f| scrub_close(f, &secrets));
                            if let (false, SessionKey::Pool(lease)) = (answered, &mut key) {
                                self.blame_key(lease, model, frame.as_ref()).await;
                            }
                            let _ = c_tx.send(Message::Close(frame)).await;
                            break "upstream closed";
                        }
                        Some(Ok(Message::Frame(_))) => {}
                        Some(Ok(m)) => {
                            down += 1;
                            let mut over_quota = None;
                            if let Message::Text(_) | Message::Binary(_) = &m {
                                answered = true;
                                if self.count_usage(payload(&m), model, key_id.as_deref(), turn_started) {
                                    let usage = bytes::Bytes::copy_from_slice(payload(&m));
                                    over_quota = self.check_quota(model, Some(usage)).await.err();
                                }
                            }
                            if c_tx.send(m).await.is_err() {
                                let _ = u_tx.send(close_msg(CloseCode::Away, "the client went away")).await;
                                break "client gone";
                            }
                            if let Some(e) = over_quota {
                                let _ = c_tx.send(close_msg(CloseCode::Again, e.message())).await;
                                let _ = u_tx.send(close_msg(CloseCode::Away, "the client went away")).await;
                                break "over quota";
                            }
                        }
                        Some(Err(_)) | None => {
                            let _ = c_tx.send(close_msg(CloseCode::Error, UPSTREAM_LOST)).await;
                            break "upstream lost";
                        }
                    },
                    () = shutting_down(&mut closing) => {
                        let _ = c_tx.send(close_msg(CloseCode::Away, SHUTTING_DOWN)).await;
                        let _ = u_tx.send(close_msg(CloseCode::Away, "the client went away")).await;
                        break "gateway shutting down";
                    }
                }
            }
        };
        // Finish both closing handshakes (answering a peer's close frame needs a read), briefly.
        let drain = async {
            let client_side = async {
                let _ = c_tx.close().await;
                while let Some(Ok(_)) = c_rx.next().await {}
            };
            let upstream_side = async {
                let _ = u_tx.close().await;
                while let Some(Ok(_)) = u_rx.next().await {}
            };
            tokio::join!(client_side, upstream_side);
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        tracing::info!(
            frames_from_client = up,
            frames_from_upstream = down,
            duration_ms = started.elapsed().as_millis() as u64,
            ended,
            "Live session ended"
        );
        drop(key);
    }

    /// A close from the upstream before any answer may be Google refusing the key (an invalid
    /// key, a quota) after the handshake; tell the pool as an HTTP answer would.
    async fn blame_key(&self, lease: &mut Lease, model: &str, frame: Option<&CloseFrame>) {
        let Some(frame) = frame else { return };
        let reason = frame.reason.as_str().to_ascii_lowercase();
        let outcome = if reason.contains("api key not valid") || reason.contains("api_key_invalid")
        {
            Outcome::KeyFailure {
                reason: "API_KEY_INVALID".to_owned(),
            }
        } else if reason.contains("quota") || reason.contains("resource_exhausted") {
            Outcome::Exhausted {
                retry_delay: None,
                per_day: false,
            }
        } else {
            return;
        };
        let note = Some(format!("Live session closed: {}", u16::from(frame.code)));
        self.proxy.pool.report(lease, model, &outcome, note).await;
    }

    /// Records one usage record for a server message that carries `usageMetadata`.
    /// Records the turn's usage when `payload` carries `usageMetadata`; returns whether it did.
    fn count_usage(
        &self,
        payload: &[u8],
        model: &str,
        key_id: Option<&str>,
        turn_started: Instant,
    ) -> bool {
        if memchr::memmem::find(payload, b"usageMetadata").is_none() {
            return false;
        }
        let mut scanner = TokenScanner::new();
        scanner.feed(payload);
        let Some(tokens) = scanner.tokens() else {
            return false;
        };
        let Some(usage) = &self.proxy.usage else {
            return true;
        };
        let mut record = UsageRecord::new(ROUTE, model)
            .with_status(200)
            .with_tokens(tokens);
        if let Some(id) = key_id {
            record = record.with_key(id);
        }
        if let Some(c) = &self.client {
            record = record.with_client(c.name(), c.id());
        }
        record.request_id = self.request_id.clone();
        record.stream = true;
        record.latency = turn_started.elapsed();
        record.duration = record.latency;
        usage.record(&record);
        true
    }

    /// Asks the proxy's quota, if any, about the opening (`usage: None`) or a turn.
    async fn check_quota(
        &self,
        model: &str,
        usage: Option<bytes::Bytes>,
    ) -> Result<(), crate::error::ApiError> {
        let Some(quota) = &self.proxy.quota else {
            return Ok(());
        };
        quota(super::proxy::QuotaCheck {
            client: self.client.clone(),
            addr: self.addr,
            model: model.to_owned(),
            usage,
        })
        .await
    }
}

const SHUTTING_DOWN: &str = "the gateway is shutting down; reconnect";
const UPSTREAM_LOST: &str = "the upstream connection was lost";

/// Resolves once the gateway shuts down (never when the proxy is gone).
async fn shutting_down(closing: &mut tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The client's first data message, skipping control frames; `None` when it closed first.
async fn first_message<S>(client: &mut WebSocketStream<S>) -> Option<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(m) = client.next().await {
        match m {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return Some(m),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// `setup.model` without `models/`.
fn setup_model(m: &Message) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload(m)).ok()?;
    let model = v.get("setup")?.get("model")?.as_str()?;
    let model = strip_models_prefix(model.trim());
    (!model.is_empty()).then(|| model.to_owned())
}

/// Whether `setup.model` is a resource name (`models/...`).
fn setup_names_resource(m: &Message) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload(m))
        .ok()
        .and_then(|v| {
            v.pointer("/setup/model")?
                .as_str()
                .map(|s| s.trim().starts_with("models/"))
        })
        .unwrap_or(false)
}

/// The `setup` message naming `models/{model}` instead (an alias resolved, a bare name
/// completed).
fn with_model(m: &Message, model: &str) -> Message {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(payload(m)) else {
        return m.clone();
    };
    v["setup"]["model"] = serde_json::Value::String(format!("models/{model}"));
    Message::text(v.to_string())
}

fn payload(m: &Message) -> &[u8] {
    match m {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => &[],
    }
}

/// The close for a client whose connection failed (an oversized message among them).
fn client_error(e: &tokio_tungstenite::tungstenite::Error) -> (CloseCode, &'static str) {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    match e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            (CloseCode::Size, "message too large for the gateway")
        }
        _ => (CloseCode::Protocol, "WebSocket protocol error"),
    }
}

fn close_msg(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: truncate_reason(reason).into(),
    }))
}

/// Sends a close frame and finishes the closing handshake, briefly.
async fn close<S>(client: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::debug!(
        code = u16::from(code),
        reason,
        "closing the client's Live session"
    );
    let finish = async {
        let _ = client.send(close_msg(code, reason)).await;
        while let Some(Ok(_)) = client.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, finish).await;
}

/// The upstream's close frame with any key in its reason masked.
fn scrub_close(frame: CloseFrame, secrets: &[String]) -> CloseFrame {
    let reason = scrub_known(frame.reason.as_str(), secrets);
    let reason = crate::secret::scrub(&reason).into_owned();
    CloseFrame {
        code: frame.code,
        reason: truncate_reason(&reason).into(),
    }
}

/// A close reason fits in 123 bytes (a control frame's payload less the code).
fn truncate_reason(reason: &str) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason.to_owned();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_reason("short"), "short");
    }

    #[test]
    fn an_upstream_close_reason_never_carries_a_key() {
        let key = "AIzaSyUpstream-key-000000000000000001".to_owned();
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: format!("API key not valid: {key}").into(),
        };
        let scrubbed = scrub_close(frame, std::slice::from_ref(&key));
        assert!(!scrubbed.reason.as_str().contains(&key));
        assert_eq!(scrubbed.code, CloseCode::Policy);
    }

    #[test]
    fn the_model_comes_from_setup() {
        let m = Message::text(r#"{"setup":{"model":"models/gemini-live-2.5-flash-preview"}}"#);
        assert_eq!(
            setup_model(&m).as_deref(),
            Some("gemini-live-2.5-flash-preview")
        );
        assert_eq!(setup_model(&Message::text(r#"{"clientContent":{}}"#)), None);
        assert_eq!(setup_model(&Message::binary(b"not json".to_vec())), None);
    }
}
