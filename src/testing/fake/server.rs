//! [`FakeGemini`] and its builder, the state its handlers share, and the accept loop.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

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

    /// Binds `127.0.0.1:0` and serves until the [`FakeGemini`] is dropped.
    pub async fn start(self) -> io::Result<FakeGemini> {
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
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), stop_rx));
        Ok(FakeGemini {
            addr,
            state,
            _stop: stop_tx,
        })
    }
}

// === FakeGemini ===

/// A fake Gemini REST API on a loopback port; see the [module docs](crate::testing).
pub struct FakeGemini {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<bool>,
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

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

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
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stop = stop.clone();
        // Faults that cut the connection notify this; dropping the connection closes the socket
        // after the bytes already written (a body error would make hyper discard unflushed ones).
        let kill = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(async move {
            let k = kill.clone();
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let kill = k.clone();
                async move { Ok::<_, Infallible>(handle(state, req, kill).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // With upgrades: the Live API's WebSocket handshake.
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
                _ = kill.notified() => {}
            }
        });
    }
}
