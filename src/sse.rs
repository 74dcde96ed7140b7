//! Incremental codecs for Gemini streams: Server-Sent Events, and the streamed JSON array that
//! `:streamGenerateContent` sends without `alt=sse`.
//!
//! Both decoders work frame by frame with bounded memory: they hold at most the current event
//! (or array element) and refuse one larger than a cap ([`DEFAULT_MAX_EVENT_BYTES`], 64 MiB)
//! with [`SseError::TooLarge`] instead of buffering without end. An event may be large (image
//! models send a whole image, tens of MiB of base64, as one event): a long line arriving in
//! many frames is gathered without copying what is already held again. A single-line `data:`
//! field is returned as a zero-copy slice of the input.
//!
//! # One cap for every decoder
//! The cap travels with the request as a [`MaxEventBytes`] extension (put in by
//! [`FactsLayer::max_event_bytes`](crate::facts::FactsLayer::max_event_bytes), which the
//! gateway's `max_event_bytes` sets), so that every layer that decodes the answer (stream
//! resume, the OpenAI translation, the request policy) applies the same one, as axum's
//! `DefaultBodyLimit` does for request bodies.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use tower_gemini::sse::{Decoder, LineEnding, encode_data};
//!
//! let mut dec = Decoder::new();
//! dec.push(Bytes::from_static(b"data: {\"a\":1}\r\n\r\ndata: li"));
//! assert_eq!(dec.next_event().unwrap().unwrap().data, "{\"a\":1}");
//! assert!(dec.next_event().unwrap().is_none()); // the second event is not complete yet
//! dec.push(Bytes::from_static(b"ne1\ndata: line2\n\n"));
//! assert_eq!(dec.next_event().unwrap().unwrap().data, "line1\nline2");
//!
//! assert_eq!(encode_data(b"{}", LineEnding::CrLf), "data: {}\r\n\r\n");
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pin_project_lite::pin_project;

use crate::body::BoxError;

/// The default cap on one event or array element: 64 MiB, room for a generated 4K image (tens
/// of MiB of base64 in one event).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// The cap on one event (or array element) of a request's streamed answer, carried in the
/// request's extensions so every decoder of that answer applies the same one.
///
/// ```
/// use tower_gemini::sse::{DEFAULT_MAX_EVENT_BYTES, MaxEventBytes};
///
/// let mut req = http::Request::new(());
/// assert_eq!(MaxEventBytes::of(req.extensions()), DEFAULT_MAX_EVENT_BYTES);
/// req.extensions_mut().insert(MaxEventBytes(4096));
/// assert_eq!(MaxEventBytes::of(req.extensions()), 4096);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxEventBytes(pub usize);

impl Default for MaxEventBytes {
    fn default() -> Self {
        MaxEventBytes(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl MaxEventBytes {
    /// The cap for the answer of the request these extensions belong to: the extension, else
    /// [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn of(extensions: &http::Extensions) -> usize {
        extensions
            .get::<MaxEventBytes>()
            .map_or(DEFAULT_MAX_EVENT_BYTES, |m| m.0)
    }
}

/// The cap on a whole (non-streamed) answer a layer reads, for a request whose stream events
/// may be `max_event_bytes` large: the same answer unstreamed holds that event's parts plus a
/// little JSON, and never less than 64 MiB.
#[cfg_attr(
    not(any(feature = "policy", feature = "stream-resume")),
    allow(dead_code)
)]
pub(crate) fn whole_answer_cap(max_event_bytes: usize) -> usize {
    max_event_bytes.saturating_add(1 << 20).max(64 << 20)
}

/// Errors of the stream decoders.
#[derive(Debug)]
pub enum SseError {
    /// An event (or array element) is larger than the cap.
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The input is not a well-formed stream of this kind.
    Malformed(&'static str),
    /// The underlying body failed.
    Body(BoxError),
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::TooLarge { limit } => write!(f, "stream event larger than {limit} bytes"),
            SseError::Malformed(what) => write!(f, "malformed stream: {what}"),
            SseError::Body(e) => write!(f, "stream body failed: {e}"),
        }
    }
}

impl SseError {
    /// What a client is told when this error ends an upstream stream: why, and that the stream
    /// was not asked for again (nothing of the upstream's own text, so no secret).
    pub fn client_message(&self) -> String {
        match self {
            SseError::TooLarge { limit } => format!(
                "the upstream sent a stream event larger than {limit} bytes, the gateway's cap \
                 on one event; the stream was ended and not retried"
            ),
            SseError::Malformed(what) => {
                format!("the upstream stream is malformed ({what}); it was ended and not retried")
            }
            SseError::Body(_) => {
                "the upstream stream broke off before the answer was complete".to_owned()
            }
        }
    }
}

impl std::error::Error for SseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SseError::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

// === Event ===

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` type, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: Bytes,
    /// The `id:`, if any.
    pub id: Option<String>,
    /// The `retry:` in milliseconds, if any.
    pub retry: Option<u64>,
}

impl Event {
    /// An event with only data.
    pub fn data(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// The data as UTF-8 text (`None` when it is not UTF-8).
    pub fn data_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }
}

// === SSE decoder ===

/// An incremental SSE decoder: [`push`](Decoder::push) bytes as they arrive, take events with
/// [`next_event`](Decoder::next_event), and call [`finish`](Decoder::finish) at the end of input
/// so a last event without a trailing blank line is still delivered.
#[derive(Debug)]
pub struct Decoder {
    buf: Bytes,
    /// Input that holds no line end yet (a long line arriving in many frames), gathered here
    /// with amortised growth until a line end arrives; `buf` is empty while it holds anything.
    pending: Vec<u8>,
    /// Where the search for the next line end resumes (in `pending` while it is in use).
    scan: usize,
    max: usize,
    /// Bytes of the current event already consumed from `buf`.
    event_bytes: usize,
    data_first: Option<Bytes>,
    data_more: Option<BytesMut>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    bom_checked: bool,
    eof: bool,
    /// Raw tracking (see [`Decoder::keep_raw`]): off unless asked for.
    raw: Option<Box<RawTrack>>,
}

/// The bytes an event came in, as a range of one input buffer: events that follow each other
/// in one buffer can be joined without copying.
#[derive(Debug)]
#[cfg_attr(not(feature = "stream-resume"), allow(dead_code))]
pub(crate) struct RawSpan {
    /// The input buffer (the whole of it, as it was after the push).
    pub(crate) src: Bytes,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

#[cfg_attr(not(feature = "stream-resume"), allow(dead_code))]
impl RawSpan {
    /// Extends `self` by `next` when `next` follows it in the same buffer.
    pub(crate) fn join(&mut self, next: &RawSpan) -> bool {
        let same = self.src.as_ptr() == next.src.as_ptr() && self.src.len() == next.src.len();
        if same && self.end == next.start {
            self.end = next.end;
            return true;
        }
        false
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> Bytes {
        self.src.slice(self.start..self.end)
    }
}

/// Where the bytes of the event being read lie.
#[derive(Debug, Default)]
struct RawTrack {
    /// The current input buffer, whole: `buf` is always a suffix of it.
    generation: Bytes,
    /// The current event's bytes in `generation`: from `start`, `len` of them.
    start: usize,
    len: usize,
    /// The current event's earlier bytes, when it began in an earlier buffer.
    spill: Option<BytesMut>,
    /// The bytes of the event `next_event` returned last, when it ended with a blank line.
    last: Option<RawSpan>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default cap ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> Self {
        Self {
            buf: Bytes::new(),
            pending: Vec::new(),
            scan: 0,
            max: DEFAULT_MAX_EVENT_BYTES,
            event_bytes: 0,
            data_first: None,
            data_more: None,
            event: None,
            id: None,
            retry: None,
            bom_checked: false,
            eof: false,
            raw: None,
        }
    }

    /// Keeps the bytes each event came in, for [`take_raw`](Decoder::take_raw).
    #[cfg_attr(not(feature = "stream-resume"), allow(dead_code))]
    pub(crate) fn keep_raw(mut self) -> Self {
        self.raw = Some(Box::default());
        self
    }

    /// The bytes of the event the last [`next_event`](Decoder::next_event) returned, exactly as
    /// they came, closing blank line included; `None` when the event ended at the end of input
    /// without a blank line.
    #[cfg_attr(not(feature = "stream-resume"), allow(dead_code))]
    pub(crate) fn take_raw(&mut self) -> Option<RawSpan> {
        self.raw.as_mut().and_then(|r| r.last.take())
    }

    /// Notes that the next `n` bytes of `buf` belong to the current event.
    fn raw_consume(&mut self, n: usize) {
        if let Some(r) = self.raw.as_deref_mut() {
            if r.len == 0 {
                r.start = r.generation.len() - self.buf.len();
            }
            r.len += n;
        }
    }

    /// The current event ended: with its bytes when it ended with a blank line.
    fn raw_end(&mut self, complete: bool) {
        if let Some(r) = self.raw.as_deref_mut() {
            let (start, len) = (r.start, std::mem::take(&mut r.len));
            r.last = match r.spill.take() {
                _ if !complete => None,
                None => Some(RawSpan {
                    src: r.generation.clone(),
                    start,
                    end: start + len,
                }),
                Some(mut spill) => {
                    spill.extend_from_slice(&r.generation[start..start + len]);
                    let src = spill.freeze();
                    Some(RawSpan {
                        end: src.len(),
                        src,
                        start: 0,
                    })
                }
            };
        }
    }

    /// Sets the cap on one event, in bytes.
    pub fn max_event_bytes(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Appends input. Free when nothing is pending; a partial line left over from the
    /// previous frame is copied once, and a long line that goes on over many frames grows in
    /// place (each byte is copied once, amortised), not re-joined per frame.
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if let Some(r) = self.raw.as_deref_mut() {
            // The event being read goes on in another buffer: keep what it has taken so far.
            if r.len > 0 {
                let (start, len) = (r.start, std::mem::take(&mut r.len));
                r.spill
                    .get_or_insert_with(BytesMut::new)
                    .extend_from_slice(&r.generation[start..start + len]);
            }
        }
        if !self.pending.is_empty() {
            self.append_pending(&bytes);
        } else if self.buf.is_empty() {
            self.buf = bytes;
            self.new_generation();
        } else {
            let rest = std::mem::take(&mut self.buf);
            self.pending = Vec::with_capacity(rest.len() + bytes.len());
            self.pending.extend_from_slice(&rest);
            self.append_pending(&bytes);
        }
        if !self.bom_checked {
            let held: &[u8] = if self.pending.is_empty() {
                &self.buf
            } else {
                &self.pending
            };
            if held.len() >= 3 {
                self.bom_checked = true;
                if held.starts_with(b"\xEF\xBB\xBF") {
                    if self.pending.is_empty() {
                        self.buf.advance(3);
                    } else {
                        self.pending.drain(..3);
                    }
                    self.scan = self.scan.saturating_sub(3);
                }
            }
        }
    }

    /// Adds to `pending`, and makes it the input to read once it holds a line end.
    fn append_pending(&mut self, bytes: &[u8]) {
        let need = self.pending.len() + bytes.len();
        if self.pending.capacity() < need {
            // Doubling, but not far past the cap: an event over it is refused anyway.
            let grown = self
                .pending
                .capacity()
                .saturating_mul(2)
                .min(self.max.saturating_add(1));
            self.pending
                .reserve_exact(need.max(grown) - self.pending.len());
        }
        self.pending.extend_from_slice(bytes);
        // Searched from where the last search stopped: each byte is looked at once.
        let from = self.scan.min(self.pending.len());
        if memchr::memchr2(b'\n', b'\r', &self.pending[from..]).is_some() {
            self.buf = Bytes::from(std::mem::take(&mut self.pending));
            self.new_generation();
        } else {
            self.scan = self.pending.len();
        }
    }

    /// `buf` is a new input buffer: raw tracking takes it as the current one.
    fn new_generation(&mut self) {
        if let Some(r) = self.raw.as_deref_mut() {
            if r.len == 0 {
                r.generation = self.buf.clone();
            }
        }
    }

    /// Marks the end of input: a trailing line and a last event without a blank line are
    /// delivered by the following [`next_event`](Decoder::next_event) calls.
    pub fn finish(&mut self) {
        self.eof = true;
        self.bom_checked = true;
        if !self.pending.is_empty() {
            self.buf = Bytes::from(std::mem::take(&mut self.pending));
            self.new_generation();
        }
    }

    /// Bytes held for incomplete input.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.pending.len() + self.data_more.as_ref().map_or(0, BytesMut::len)
    }

    /// The next complete event, `Ok(None)` when more input is needed (or, after
    /// [`finish`](Decoder::finish), when the input is exhausted).
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        if let Some(r) = self.raw.as_deref_mut() {
            r.last = None;
        }
        loop {
            if !self.pending.is_empty() {
                // No line end in what is held (it would have been moved to `buf`).
                if self.event_bytes + self.pending.len() > self.max {
                    return Err(self.too_large());
                }
                return Ok(None);
            }
            let Some((len, term)) = self.find_line() else {
                if self.eof && !self.buf.is_empty() {
                    self.raw_consume(self.buf.len());
                    let line = std::mem::take(&mut self.buf);
                    self.scan = 0;
                    self.event_bytes += line.len();
                    self.check_size()?;
                    self.process_line(line);
                    continue;
                }
                if self.eof {
                    self.raw_end(false);
                    return Ok(self.take_event());
                }
                if self.event_bytes + self.buf.len() > self.max {
                    return Err(self.too_large());
                }
                return Ok(None);
            };
            self.raw_consume(len + term);
            let line = self.buf.split_to(len + term).slice(..len);
            self.scan = 0;
            self.event_bytes += len + term;
            self.check_size()?;
            if line.is_empty() {
                if let Some(ev) = self.take_event() {
                    self.raw_end(true);
                    return Ok(Some(ev));
                }
                // A block without data is not passed on: its bytes are not kept either.
                self.raw_end(false);
                continue;
            }
            self.process_line(line);
        }
    }

    fn check_size(&mut self) -> Result<(), SseError> {
        if self.event_bytes > self.max {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&mut self) -> SseError {
        // Drop what is held: the stream cannot go on after this error.
        self.buf = Bytes::new();
        self.pending = Vec::new();
        self.scan = 0;
        self.data_first = None;
        self.data_more = None;
        self.raw_end(false);
        SseError::TooLarge { limit: self.max }
    }

    /// The next line: (length without terminator, terminator length).
    fn find_line(&mut self) -> Option<(usize, usize)> {
        let hay = self.buf.get(self.scan..).unwrap_or_default();
        match memchr::memchr2(b'\n', b'\r', hay) {
            None => {
                self.scan = self.buf.len();
                None
            }
            Some(i) => {
                let at = self.scan + i;
                if self.buf[at] == b'\n' {
                    return Some((at, 1));
                }
                match self.buf.get(at + 1) {
                    Some(b'\n') => Some((at, 2)),
                    Some(_) => Some((at, 1)),
                    // A lone `\r` at the end: wait to see whether `\n` follows.
                    None if self.eof => Some((at, 1)),
                    None => {
                        self.scan = at;
                        None
                    }
                }
            }
        }
    }

    fn process_line(&mut self, line: Bytes) {
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let skip = if line.get(i + 1) == Some(&b' ') { 2 } else { 1 };
                (line.slice(..i), line.slice(i + skip..))
            }
            None => (line.clone(), Bytes::new()),
        };
        match &field[..] {
            b"data" => match (&mut self.data_first, &mut self.data_more) {
                (None, None) => self.data_first = Some(value),
                (first, more) => {
                    let buf = more.get_or_insert_with(|| {
                        let mut b = BytesMut::new();
                        if let Some(f) = first.take() {
                            b.extend_from_slice(&f);
                        }
                        b
                    });
                    buf.put_u8(b'\n');
                    buf.extend_from_slice(&value);
                }
            },
            b"event" => self.event = Some(String::from_utf8_lossy(&value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(&value).into_owned())
            }
            b"retry" => {
                if let Ok(ms) = std::str::from_utf8(&value).unwrap_or("x").parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn take_event(&mut self) -> Option<Event> {
        self.event_bytes = 0;
        let data = match (self.data_first.take(), self.data_more.take()) {
            (_, Some(more)) => more.freeze(),
            (Some(first), None) => first,
            (None, None) => {
                self.event = None;
                return None;
            }
        };
        Some(Event {
            event: self.event.take(),
            data,
            id: self.id.clone(),
            retry: self.retry.take(),
        })
    }
}

// === SSE encoder ===

/// The line ending of encoded events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineEnding {
    /// `\r\n`, as Google's Gemini API sends.
    #[default]
    CrLf,
    /// `\n`, as OpenAI's API sends.
    Lf,
}

impl LineEnding {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::CrLf => b"\r\n",
            LineEnding::Lf => b"\n",
        }
    }
}

/// Encodes data as one event: a `data:` line per line of `data`, then a blank line.
pub fn encode_data(data: &[u8], le: LineEnding) -> Bytes {
    let nl = le.as_bytes();
    let mut out = BytesMut::with_capacity(data.len() + 8 + 2 * nl.len());
    put_data_lines(&mut out, data, nl);
    out.extend_from_slice(nl);
    out.freeze()
}

fn put_data_lines(out: &mut BytesMut, data: &[u8], nl: &[u8]) {
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.extend_from_slice(b"data: ");
        match end {
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(nl);
                return;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(nl);
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// Encodes a whole event (type, id, retry and data).
pub fn encode(event: &Event, le: LineEnding) -> Bytes {
    let nl = le.as_bytes();
    let mut out = BytesMut::with_capacity(event.data.len() + 32);
    if let Some(e) = &event.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(single_line(e).as_bytes());
        out.extend_from_slice(nl);
    }
    if let Some(id) = &event.id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(single_line(id).as_bytes());
        out.extend_from_slice(nl);
    }
    if let Some(r) = event.retry {
        out.extend_from_slice(format!("retry: {r}").as_bytes());
        out.extend_from_slice(nl);
    }
    put_data_lines(&mut out, &event.data, nl);
    out.extend_from_slice(nl);
    out.freeze()
}

/// Encodes a comment line (`: text`), e.g. a keep-alive.
pub fn encode_comment(text: &str, le: LineEnding) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(b": ");
    out.extend_from_slice(single_line(text).as_bytes());
    out.extend_from_slice(le.as_bytes());
    out.freeze()
}

fn single_line(s: &str) -> &str {
    s.split(['\r', '\n']).next().unwrap_or("")
}

// === SseStream ===

pin_project! {
    /// The events of an SSE body, decoded frame by frame (a `futures_core::Stream`).
    pub struct SseStream<B> {
        #[pin]
        body: B,
        decoder: Decoder,
        done: bool,
    }
}

impl<B> SseStream<B> {
    /// Decodes `body` with the default cap.
    pub fn new(body: B) -> Self {
        Self::with_decoder(body, Decoder::new())
    }

    /// Decodes `body` with a configured decoder.
    pub fn with_decoder(body: B, decoder: Decoder) -> Self {
        Self {
            body,
            decoder,
            done: false,
        }
    }
}

impl<B> fmt::Debug for SseStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl<B> futures_core::Stream for SseStream<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Item = Result<Event, SseError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            match this.decoder.next_event() {
                Ok(Some(ev)) => return Poll::Ready(Some(Ok(ev))),
                Ok(None) if *this.done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match std::task::ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(data);
                    }
                }
                Some(Err(e)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(SseError::Body(e.into()))));
                }
                None => {
                    *this.done = true;
                    this.decoder.finish();
                }
            }
        }
    }
}

// === JSON array ===

/// An incremental decoder of a streamed JSON array (`[{..},\r\n{..}]`): yields each top-level
/// element's bytes as soon as it is complete, tracking strings and escapes so braces inside
/// strings do not confuse it.
#[derive(Debug)]
pub struct JsonArrayDecoder {
    buf: BytesMut,
    scan: usize,
    max: usize,
    state: ArrayState,
    depth: u32,
    in_string: bool,
    escape: bool,
    /// Start of the element being read, within `buf`.
    start: Option<usize>,
    eof: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrayState {
    /// Before `[`.
    Open,
    /// Inside the array, between elements.
    Between,
    /// After `]`.
    Closed,
}

impl Default for JsonArrayDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonArrayDecoder {
    /// A decoder with the default cap ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            scan: 0,
            max: DEFAULT_MAX_EVENT_BYTES,
            state: ArrayState::Open,
            depth: 0,
            in_string: false,
            escape: false,
            start: None,
            eof: false,
        }
    }

    /// Sets the cap on one element, in bytes.
    pub fn max_element_bytes(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Appends input.
    pub fn push(&mut self, bytes: Bytes) {
        if self.buf.is_empty() {
            self.buf = BytesMut::from(bytes);
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Marks the end of input.
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Whether the closing `]` was seen.
    pub fn is_closed(&self) -> bool {
        self.state == ArrayState::Closed
    }

    /// The next complete element, `Ok(None)` when more input is needed or the array ended.
    pub fn next_element(&mut self) -> Result<Option<Bytes>, SseError> {
        while self.scan < self.buf.len() {
            let b = self.buf[self.scan];
            if let Some(start) = self.start {
                if self.in_string && !self.escape && b != b'"' && b != b'\\' {
                    // Inside a string (a long base64 image, say): jump to its next quote or
                    // escape instead of stepping byte by byte.
                    let rest = &self.buf[self.scan..];
                    self.scan += memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    if self.scan - start > self.max {
                        self.buf = BytesMut::new();
                        self.scan = 0;
                        return Err(SseError::TooLarge { limit: self.max });
                    }
                    continue;
                }
                if self.in_string {
                    if self.escape {
                        self.escape = false;
                    } else if b == b'\\' {
                        self.escape = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                } else {
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            if self.depth == 0 {
                                return Err(SseError::Malformed(
                                    "unbalanced brackets in JSON array",
                                ));
                            }
                            self.depth -= 1;
                            if self.depth == 0 {
                                let end = self.scan + 1;
                                let mut taken = self.buf.split_to(end);
                                taken.advance(start);
                                self.scan = 0;
                                self.start = None;
                                return Ok(Some(taken.freeze()));
                            }
                        }
                        _ => {}
                    }
                }
                self.scan += 1;
                if self.scan - start > self.max {
                    self.buf = BytesMut::new();
                    self.scan = 0;
                    return Err(SseError::TooLarge { limit: self.max });
                }
                continue;
            }
            // Between elements.
            match (self.state, b) {
                (_, b' ' | b'\t' | b'\r' | b'\n') => {}
                (ArrayState::Open, b'[') => self.state = ArrayState::Between,
                (ArrayState::Open, _) => {
                    return Err(SseError::Malformed("stream does not start with `[`"));
                }
                (ArrayState::Between, b',') => {}
                (ArrayState::Between, b']') => self.state = ArrayState::Closed,
                (ArrayState::Between, b'{' | b'[') => {
                    self.start = Some(0);
                    self.depth = 1;
                    self.scan = 1;
                    continue;
                }
                (ArrayState::Between, _) => {
                    return Err(SseError::Malformed(
                        "array elements must be objects or arrays",
                    ));
                }
                (ArrayState::Closed, _) => {
                    return Err(SseError::Malformed("data after the closing `]`"));
                }
            }
            // Nothing between elements is kept.
            self.buf.advance(1);
        }
        if self.eof && self.start.is_some() {
            return Err(SseError::Malformed("the stream ended inside an element"));
        }
        Ok(None)
    }
}

/// Encodes elements as Gemini streams a JSON array: `[` + first, `,\r\n` + next ..., `]`.
#[derive(Debug, Default)]
pub struct JsonArrayEncoder {
    started: bool,
}

impl JsonArrayEncoder {
    /// A new encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes for the next element (the first one opens the array).
    pub fn element(&mut self, json: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(json.len() + 3);
        out.extend_from_slice(if self.started { b",\r\n" } else { b"[" });
        self.started = true;
        out.extend_from_slice(json);
        out.freeze()
    }

    /// The bytes that close the array (`[]` when there was no element).
    pub fn close(&mut self) -> Bytes {
        let out = if self.started {
            Bytes::from_static(b"]")
        } else {
            Bytes::from_static(b"[]")
        };
        self.started = true;
        out
    }
}

#[cfg(test)]
mod tests;
