//! The rewriting stream body: decodes SSE or a streamed JSON array event by event, runs the
//! rules' [`Rewrite`]s on each chunk and encodes it again, holding one event at a time. A
//! stream the decoder refuses (an event over the cap, broken framing) ends with an error
//! event, as any stream fault does.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::Value;

use super::rule::Rewrite;
use crate::body::{Body, BoxError};
use crate::sse::{self, Decoder, JsonArrayDecoder, JsonArrayEncoder, LineEnding};

/// How a stream is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamMode {
    /// `alt=sse`: Server-Sent Events.
    Sse,
    /// A streamed JSON array.
    JsonArray,
}

enum Codec {
    Sse(Decoder),
    Json(JsonArrayDecoder, JsonArrayEncoder),
}

/// Runs every rewriter on one chunk (all of them, even after one dropped it); `false` when
/// one dropped it.
pub(crate) fn rewrite_chunk(rewriters: &mut [Box<dyn Rewrite>], chunk: &mut Value) -> bool {
    let mut keep = true;
    for r in rewriters.iter_mut() {
        keep &= r.chunk(chunk);
    }
    keep
}

pin_project! {
    /// A streamed answer rewritten chunk by chunk.
    pub(crate) struct RewriteStream {
        #[pin]
        inner: Body,
        codec: Codec,
        rewriters: Vec<Box<dyn Rewrite>>,
        trailers: VecDeque<Frame<Bytes>>,
        done: bool,
    }
}

impl RewriteStream {
    /// Rewrites `inner`, refusing an event larger than `max_event_bytes`.
    pub(crate) fn new(
        inner: Body,
        mode: StreamMode,
        rewriters: Vec<Box<dyn Rewrite>>,
        max_event_bytes: usize,
    ) -> Self {
        let codec = match mode {
            StreamMode::Sse => Codec::Sse(Decoder::new().max_event_bytes(max_event_bytes)),
            StreamMode::JsonArray => Codec::Json(
                JsonArrayDecoder::new().max_element_bytes(max_event_bytes),
                JsonArrayEncoder::new(),
            ),
        };
        Self {
            inner,
            codec,
            rewriters,
            trailers: VecDeque::new(),
            done: false,
        }
    }
}

impl fmt::Debug for RewriteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RewriteStream")
            .field("rewriters", &self.rewriters.len())
            .field("done", &self.done)
            .finish()
    }
}

/// Rewrites one element's JSON; the original bytes when it is not JSON, `None` when dropped.
fn rewrite_data(rewriters: &mut [Box<dyn Rewrite>], data: &Bytes) -> Option<Bytes> {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return Some(data.clone());
    };
    if !rewrite_chunk(rewriters, &mut value) {
        return None;
    }
    Some(Bytes::from(
        serde_json::to_vec(&value).unwrap_or_else(|_| data.to_vec()),
    ))
}

/// Decodes what the codec holds, rewriting and encoding each complete element into `out`.
fn drain(
    codec: &mut Codec,
    rewriters: &mut [Box<dyn Rewrite>],
    out: &mut BytesMut,
) -> Result<(), sse::SseError> {
    match codec {
        Codec::Sse(dec) => {
            while let Some(mut event) = dec.next_event()? {
                if let Some(data) = rewrite_data(rewriters, &event.data) {
                    event.data = data;
                    out.extend_from_slice(&sse::encode(&event, LineEnding::CrLf));
                }
            }
        }
        Codec::Json(dec, enc) => {
            while let Some(element) = dec.next_element()? {
                if let Some(data) = rewrite_data(rewriters, &element) {
                    out.extend_from_slice(&enc.element(&data));
                }
            }
        }
    }
    Ok(())
}

/// Ends the stream with a Gemini error event for a decoder refusal, after what `out` holds.
fn fail(codec: &mut Codec, error: &sse::SseError, out: &mut BytesMut) {
    tracing::warn!(%error, "the rewritten stream was refused by its decoder; ending it");
    let json = crate::error::ApiError::bad_gateway(error.client_message())
        .to_json(crate::error::Dialect::Gemini);
    let json = serde_json::to_vec(&json).unwrap_or_default();
    match codec {
        Codec::Sse(_) => out.extend_from_slice(&sse::encode_data(&json, LineEnding::CrLf)),
        Codec::Json(_, enc) => {
            out.extend_from_slice(&enc.element(&json));
            out.extend_from_slice(&enc.close());
        }
    }
}

/// The end of a clean stream: the rewriters' last chunks, and `]` for an array that closed.
fn finish(codec: &mut Codec, rewriters: &mut [Box<dyn Rewrite>], out: &mut BytesMut) {
    let closed = match codec {
        Codec::Sse(_) => true,
        Codec::Json(dec, _) => dec.is_closed(),
    };
    if !closed {
        // A cut-off array stays cut off: adding to it would hide the cut.
        return;
    }
    for i in 0..rewriters.len() {
        let Some(mut extra) = rewriters[i].finish() else {
            continue;
        };
        // Later rewriters see the extra chunk too (e.g. thoughts are stripped from it).
        let keep = rewrite_chunk(&mut rewriters[i + 1..], &mut extra);
        if !keep {
            continue;
        }
        let Ok(json) = serde_json::to_vec(&extra) else {
            continue;
        };
        match codec {
            Codec::Sse(_) => out.extend_from_slice(&sse::encode_data(&json, LineEnding::CrLf)),
            Codec::Json(_, enc) => out.extend_from_slice(&enc.element(&json)),
        }
    }
    if let Codec::Json(_, enc) = codec {
        out.extend_from_slice(&enc.close());
    }
}

impl http_body::Body for RewriteStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.pop_front().map(Ok));
            }
            let mut out = BytesMut::new();
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        match this.codec {
                            Codec::Sse(dec) => dec.push(data),
                            Codec::Json(dec, _) => dec.push(data),
                        }
                        if let Err(e) = drain(this.codec, this.rewriters, &mut out) {
                            *this.done = true;
                            fail(this.codec, &e, &mut out);
                        }
                    }
                    Err(frame) => {
                        if frame.is_trailers() {
                            this.trailers.push_back(frame);
                        }
                    }
                },
                Some(Err(e)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    *this.done = true;
                    match this.codec {
                        Codec::Sse(dec) => dec.finish(),
                        Codec::Json(dec, _) => dec.finish(),
                    }
                    match drain(this.codec, this.rewriters, &mut out) {
                        Ok(()) => finish(this.codec, this.rewriters, &mut out),
                        // An array that ended inside an element stays cut off, as it came
                        // (a body error: the client sees the cut).
                        Err(e @ sse::SseError::Malformed(_)) => {
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        Err(e) => fail(this.codec, &e, &mut out),
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
