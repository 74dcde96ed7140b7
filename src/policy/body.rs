//! The rewriting stream body: decodes SSE or a streamed JSON array event by event, runs the
//! rules' [`Rewrite`]s on each chunk and encodes it again, holding one event at a time.

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
    pub(crate) fn new(inner: Body, mode: StreamMode, rewriters: Vec<Box<dyn Rewrite>>) -> Self {
        let codec = match mode {
            StreamMode::Sse => Codec::Sse(Decoder::new()),
            StreamMode::JsonArray => Codec::Json(JsonArrayDecoder::new(), JsonArrayEncoder::new()),
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
                            return Poll::Ready(Some(Err(e.into())));
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
                    if let Err(e) = drain(this.codec, this.rewriters, &mut out) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    finish(this.codec, this.rewriters, &mut out);
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
