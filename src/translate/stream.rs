//! The body of a translated stream: each upstream Gemini SSE event goes through a front's
//! translator as it arrives and leaves as one frame of the front's events.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http_body::Frame;
use pin_project_lite::pin_project;

use crate::body::BoxError;
use crate::error::ApiError;
use crate::sse::{SseError, SseStream};

/// What a front's stream translator offers the body: events in, its own events out.
pub(crate) trait EventTranslator {
    /// Translates the data of one upstream event, appending to `out`.
    fn translate(&mut self, data: &[u8], out: &mut BytesMut);
    /// Ends the stream at the end of the upstream body.
    fn end(&mut self, out: &mut BytesMut);
    /// Ends the stream with an error event (the upstream body failed).
    fn abort(&mut self, error: &ApiError, out: &mut BytesMut);
    /// Whether the stream is over.
    fn done(&self) -> bool;
}

pin_project! {
    /// A translated SSE body: one upstream event in, its translation out as one frame.
    pub(crate) struct TranslatedBody<B, T> {
        #[pin]
        events: SseStream<B>,
        translator: T,
        ended: bool,
    }
}

impl<B, T> TranslatedBody<B, T> {
    /// Translates `body` with `translator`, refusing an upstream event larger than
    /// `max_event_bytes`.
    pub(crate) fn new(body: B, translator: T, max_event_bytes: usize) -> Self {
        let decoder = crate::sse::Decoder::new().max_event_bytes(max_event_bytes);
        Self {
            events: SseStream::with_decoder(body, decoder),
            translator,
            ended: false,
        }
    }
}

impl<B, T: fmt::Debug> fmt::Debug for TranslatedBody<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TranslatedBody")
            .field("translator", &self.translator)
            .finish()
    }
}

impl<B, T> http_body::Body for TranslatedBody<B, T>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    T: EventTranslator,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.ended {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match std::task::ready!(this.events.as_mut().poll_next(cx)) {
                Some(Ok(event)) => {
                    // About what the event becomes, so writing it does not grow the buffer
                    // step by step.
                    out.reserve(event.data.len() + 256);
                    this.translator.translate(&event.data, &mut out);
                }
                Some(Err(e)) => {
                    match &e {
                        SseError::Body(e) => {
                            tracing::debug!(error = %crate::secret::scrub(&e.to_string()), "upstream stream failed");
                        }
                        refused => {
                            tracing::warn!(error = %refused, "the upstream stream was refused by its decoder; ending it");
                        }
                    }
                    this.translator
                        .abort(&ApiError::bad_gateway(e.client_message()), &mut out);
                }
                None => this.translator.end(&mut out),
            }
            if this.translator.done() {
                *this.ended = true;
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }
}
