//! [`FakeGemini`] and its builder, the state its handlers share, and the accept loop.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::config::{Fault, KeyBehavior};
use super::received::ReceivedRequest;
use super::routes::handle;
use crate::testing::passage;

/// Builds and starts a [`FakeGemini`].
#[derive(Clone, Debug)]
pub struct FakeGeminiBuilder {
    keys: Vec<String>,
    accept_any_key: bool,
    chunk_words: usize,
    chunk_delay: Duration,
    echo_key_in_errors: bool,
    image_bytes: usize,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    max_concurrent_streams: Option<u32>,
}

/// The size of the image an image model answers unless told otherwise: 64 KiB.
const DEFAULT_IMAGE_BYTES: usize = 64 * 1024;

impl Default for FakeGeminiBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            accept_any_key: false,
            chunk_words: 4,
            chunk_delay: Duration::ZERO,
            echo_key_in_errors: true,
            image_bytes: DEFAULT_IMAGE_BYTES,
            tls: None,
            max_concurrent_streams: None,
        }
    }
}

impl FakeGeminiBuilder {
    /// Valid keys (others get `API_KEY_INVALID`).
    pub fn keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Accept any non-empty key (demo mode).
    pub fn accept_any_key(mut self, yes: bool) -> Self {
        self.accept_any_key = yes;
        self
    }

    /// Words per stream chunk (default 4).
    pub fn chunk_words(mut self, n: usize) -> Self {
        self.chunk_words = n.max(1);
        self
    }

    /// Delay between stream chunks (default none).
    pub fn chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Whether key errors echo the key as real ones sometimes do (default on; gateways must
    /// scrub it).
    pub fn echo_key_in_errors(mut self, yes: bool) -> Self {
        self.echo_key_in_errors = yes;
        self
    }

    /// The size in bytes of the image a model whose name holds `image` answers (default
    /// 64 KiB; see [`FakeGemini::image`]).
    pub fn image_bytes(mut self, n: usize) -> Self {
        self.image_bytes = n;
        self
    }

    /// Serves TLS with this certificate (DER, for `127.0.0.1`) and its private key (PKCS#8,
    /// PKCS#1 or SEC1 DER), offering HTTP/2 and HTTP/1.1 by ALPN as Google does; the client
    /// must trust the certificate or its issuer
    /// (`UpstreamClientBuilder::add_root_certificate`). Default: plain HTTP.
    pub fn tls(mut self, cert_der: impl Into<Vec<u8>>, key_der: impl Into<Vec<u8>>) -> Self {
        self.tls = Some((cert_der.into(), key_der.into()));
        self
    }

    /// The HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` the server announces on each connection
    /// (default: hyper's, 200); a client must queue requests beyond it.
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = Some(n);
        self
    }

    /// Binds `127.0.0.1:0` and serves until the [`FakeGemini`] is dropped. Fails on a TLS
    /// certificate or key rustls refuses.
    pub async fn start(self) -> io::Result<FakeGemini> {
        let tls = match &self.tls {
            Some((cert, key)) => Some(acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            keys: Mutex::new(
                self.keys
                    .iter()
                    .map(|k| (k.clone(), KeyBehavior::Valid))
                    .collect(),
            ),
            model_keys: Mutex::default(),
            accept_any_key: self.accept_any_key,
            chunk_words: self.chunk_words,
            chunk_delay: Mutex::new(self.chunk_delay),
            image_bytes: Mutex::new(self.image_bytes),
            echo_key: self.echo_key_in_errors,
            counters: Mutex::default(),
            total: AtomicU64::new(0),
            received: Mutex::default(),
            faults: Mutex::default(),
            resources: Mutex::default(),
            upload_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cancelled: Arc::new(AtomicU64::new(0)),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (goaway_tx, goaway_rx) = watch::channel(0u64);
        let serve = Serve {
            state: state.clone(),
            tls: tls.clone(),
            max_concurrent_streams: self.max_concurrent_streams,
            stop: stop_rx,
            goaway: goaway_rx,
        };
        tokio::spawn(accept_loop(listener, serve));
        Ok(FakeGemini {
            addr,
            state,
            tls: tls.is_some(),
            _stop: stop_tx,
            goaway: goaway_tx,
        })
    }
}

/// A rustls acceptor offering `h2` then `http/1.1`.
fn acceptor(cert: &[u8], key: &[u8]) -> io::Result<TlsAcceptor> {
    let cert = rustls::pki_types::CertificateDer::from(cert.to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.to_vec()).map_err(io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// === FakeGemini ===

/// A fake Gemini REST API on a loopback port; see the [module docs](crate::testing).
pub struct FakeGemini {
    addr: SocketAddr,
    state: Arc<State>,
    tls: bool,
    _stop: watch::Sender<bool>,
    goaway: watch::Sender<u64>,
}

impl fmt::Debug for FakeGemini {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGemini")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeGemini {
    /// A builder.
    pub fn builder() -> FakeGeminiBuilder {
        FakeGeminiBuilder::default()
    }

    /// Starts a fake that accepts these keys, with the defaults.
    pub async fn start<I, K>(keys: I) -> io::Result<FakeGemini>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        Self::builder().keys(keys).start().await
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with [`FakeGeminiBuilder::tls`].
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Gracefully shuts down every open connection, as a server going away does: HTTP/2
    /// connections get a GOAWAY, HTTP/1.1 ones stop keeping alive; requests in flight finish.
    /// The listener keeps accepting, so new requests succeed on new connections.
    pub fn goaway(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far (TCP, before any TLS handshake).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Answers whose body the client abandoned before its end (an HTTP/2 stream reset by the
    /// client, or a closed HTTP/1.1 connection); cuts the fake made itself are not counted.
    pub fn cancelled_streams(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The thought signature the fake puts on the function calls it makes (Gemini 3 models
    /// refuse history whose calls lack it, or carry another one).
    pub const THOUGHT_SIGNATURE: &'static str = "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ==";

    /// The deterministic answer text for a prompt (the first user turn's text).
    pub fn passage(prompt: &str) -> String {
        passage::passage(prompt)
    }

    /// The grounding sources `(title, uri)` of a prompt's answer when the request enables
    /// Google Search (`googleSearch` tool): sent in `groundingMetadata.groundingChunks` on the
    /// answer (on the last chunk of a stream).
    pub fn grounding_sources(prompt: &str) -> Vec<(String, String)> {
        passage::grounding_sources(prompt)
    }

    /// The stream chunks of [`FakeGemini::passage`] with `words` words per chunk.
    pub fn passage_chunks(prompt: &str, words: usize) -> Vec<String> {
        passage::chunks(&passage::passage(prompt), words)
    }

    /// Sets how a key behaves for every model (adding it if new).
    pub fn set_key(&self, key: &str, behavior: KeyBehavior) {
        lock(&self.state.keys).insert(key.to_owned(), behavior);
    }

    /// Sets how a key behaves for one model (overrides the key's global behaviour).
    pub fn set_key_for_model(&self, key: &str, model: &str, behavior: KeyBehavior) {
        lock(&self.state.model_keys).insert((key.to_owned(), model.to_owned()), behavior);
    }

    /// Removes every per-model override of a key.
    pub fn clear_model_overrides(&self, key: &str) {
        lock(&self.state.model_keys).retain(|(k, _), _| k != key);
    }

    /// Removes a key (it becomes invalid).
    pub fn remove_key(&self, key: &str) {
        lock(&self.state.keys).remove(key);
    }

    /// Changes the delay between stream chunks.
    pub fn set_chunk_delay(&self, d: Duration) {
        *lock(&self.state.chunk_delay) = d;
    }

    /// Changes the size of the image an image model answers.
    pub fn set_image_bytes(&self, n: usize) {
        *lock(&self.state.image_bytes) = n;
    }

    /// The image of `n` bytes the fake answers (PNG's signature, then deterministic bytes);
    /// it goes out base64-encoded as the `inlineData` of one part, `image/png`.
    ///
    /// A model whose name holds `image` (`gemini-2.5-flash-image`) answers a short caption
    /// (left out when `generationConfig.responseModalities` lacks `TEXT`) and this image of
    /// [`FakeGeminiBuilder::image_bytes`] bytes; [`Fault::Image`] sets the size for one
    /// request of any model. Streamed, as Google does, the whole image is one event: the
    /// caption, then the image, then an empty text with `STOP` and usage.
    pub fn image(n: usize) -> Vec<u8> {
        const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
        let mut out = Vec::with_capacity(n);
        out.extend_from_slice(&PNG[..n.min(PNG.len())]);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while out.len() < n {
            // xorshift64*: cheap, deterministic, and not compressible into a pattern.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let take = (n - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
        }
        out
    }

    /// Queues a fault for the next generate request (faults apply in order, one a request).
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state.faults).push_back(fault);
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        lock(&self.state.faults).len()
    }

    /// Requests received with this key (any route, any outcome).
    pub fn requests_for(&self, key: &str) -> u64 {
        lock(&self.state.counters).get(key).copied().unwrap_or(0)
    }

    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Every request received, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.received).clone()
    }

    /// The last request received.
    pub fn last_received(&self) -> Option<ReceivedRequest> {
        lock(&self.state.received).last().cloned()
    }

    /// Upload bytes received so far, counted frame by frame as they arrive (before the upload
    /// is finished): a gateway that buffered an upload whole shows here.
    pub fn upload_bytes_received(&self) -> u64 {
        self.state.upload_bytes.load(Ordering::SeqCst)
    }

    /// The key whose project holds a resource (`files/abc`, `cachedContents/x`, `batches/y`).
    pub fn resource_owner(&self, name: &str) -> Option<String> {
        lock(&self.state.resources).owner(name)
    }

    /// Forgets received requests and counters.
    pub fn clear_received(&self) {
        lock(&self.state.received).clear();
        lock(&self.state.counters).clear();
        self.state.total.store(0, Ordering::SeqCst);
    }
}

pub(super) struct State {
    pub(super) keys: Mutex<HashMap<String, KeyBehavior>>,
    pub(super) model_keys: Mutex<HashMap<(String, String), KeyBehavior>>,
    pub(super) accept_any_key: bool,
    pub(super) chunk_words: usize,
    pub(super) chunk_delay: Mutex<Duration>,
    pub(super) image_bytes: Mutex<usize>,
    pub(super) echo_key: bool,
    pub(super) counters: Mutex<HashMap<String, u64>>,
    pub(super) total: AtomicU64,
    pub(super) received: Mutex<Vec<ReceivedRequest>>,
    pub(super) faults: Mutex<VecDeque<Fault>>,
    pub(super) resources: Mutex<super::resources::Resources>,
    pub(super) upload_bytes: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) cancelled: Arc<AtomicU64>,
}

/// What the accept loop hands each connection.
struct Serve {
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    max_concurrent_streams: Option<u32>,
    stop: watch::Receiver<bool>,
    goaway: watch::Receiver<u64>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, serve: Serve) {
    let serve = Arc::new(serve);
    let mut stop = serve.stop.clone();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let id = serve.state.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let serve = serve.clone();
        tokio::spawn(async move {
            match &serve.tls {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_connection(&serve, id, tls).await;
                    }
                }
                None => serve_connection(&serve, id, stream).await,
            }
        });
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2, told apart by its preface) until it ends, the
/// fake stops, or a fault cuts it; [`FakeGemini::goaway`] shuts it down gracefully.
async fn serve_connection<I>(serve: &Serve, id: u64, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = serve.state.clone();
    let mut stop = serve.stop.clone();
    let mut goaway = serve.goaway.clone();
    goaway.mark_unchanged();
    // Faults that cut the connection notify this; dropping the connection closes the socket
    // after the bytes already written (a body error would make hyper discard unflushed ones).
    let kill = Arc::new(tokio::sync::Notify::new());
    let k = kill.clone();
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let kill = k.clone();
        async move { handle(state, req, kill, id).await }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Some(n) = serve.max_concurrent_streams {
        builder.http2().max_concurrent_streams(n);
    }
    // With upgrades: the Live API's WebSocket handshake (HTTP/1.1).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut going_away = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.changed() => return,
            () = kill.notified() => return,
            changed = goaway.changed(), if !going_away => {
                if changed.is_err() {
                    return;
                }
                going_away = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
