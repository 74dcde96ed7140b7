//! Reading one upstream answer: its events, its idle clock, and why it ended early.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use serde::de::IgnoredAny;
use tokio::time::{Instant, Sleep};

use super::request::Mode;
use crate::body::Body;
use crate::sse::{Decoder, JsonArrayDecoder, RawSpan, SseError};

/// Why an attempt ended early, when the answer may go on in a continuation: the connection
/// dropped, the body ended without a finishReason, it stalled, a retryable finishReason, or
/// an error event.
#[derive(Debug)]
pub(super) enum Interruption {
    Dropped,
    EndedWithoutFinish,
    Stalled,
    Finish(#[allow(dead_code, reason = "read through Debug in logs")] String),
    ErrorEvent,
}

/// A fault that is not an interruption: asking again would meet it again (and pay for the
/// answer again), so the stream ends with an error instead of a continuation.
#[derive(Debug)]
pub(super) enum Fault {
    /// The decoder refused the stream: an event over the cap, or broken framing.
    Decoder(SseError),
    /// An event that is not a Gemini response (not a JSON object).
    NotJson,
}

impl Fault {
    /// The client's error message: what went wrong, and that it was not retried.
    pub(super) fn message(&self) -> String {
        match self {
            Fault::Decoder(e) => e.client_message(),
            Fault::NotJson => "the upstream sent a stream event that is not a Gemini response; \
                 the stream was ended and not retried"
                .to_owned(),
        }
    }
}

/// How an attempt ended without a final event.
#[derive(Debug)]
pub(super) enum Break {
    Interrupted(Interruption),
    Fault(Fault),
}

/// One upstream answer being read: its body, the decoder of its format, and its idle clock.
pub(super) struct Attempt {
    body: Body,
    sse: Decoder,
    array: JsonArrayDecoder,
    ended: bool,
    /// When the last frame arrived; the idle timer is only moved when it fires early, so a
    /// busy stream does not touch the timer wheel per frame.
    last_frame: Instant,
    idle: Option<Pin<Box<Sleep>>>,
}

impl Attempt {
    /// Reads `body`, refusing any event larger than `max_event_bytes`.
    pub(super) fn new(body: Body, max_event_bytes: usize) -> Self {
        Attempt {
            body,
            sse: Decoder::new().max_event_bytes(max_event_bytes).keep_raw(),
            array: JsonArrayDecoder::new().max_element_bytes(max_event_bytes),
            ended: false,
            last_frame: Instant::now(),
            idle: None,
        }
    }

    /// Drops the upstream answer (its connection is released at once) and what the decoders
    /// hold.
    pub(super) fn close(&mut self) {
        *self = Attempt::new(Body::empty(), 1);
        self.ended = true;
    }

    /// The next event of this attempt (with its bytes as they came, when kept), or why it
    /// ended without a finish; `Ok(None)` when no event is buffered and `may_read` is false.
    #[allow(clippy::type_complexity, reason = "one private call site")]
    pub(super) fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        mode: Mode,
        idle: Option<Duration>,
        may_read: bool,
    ) -> Poll<Result<Option<(Bytes, Option<RawSpan>)>, Break>> {
        loop {
            let next = match mode {
                Mode::JsonArray => self.array.next_element().map(|e| e.map(|e| (e, None))),
                _ => self
                    .sse
                    .next_event()
                    .map(|e| e.map(|e| (e.data, self.sse.take_raw()))),
            };
            let cut = Break::Interrupted(Interruption::EndedWithoutFinish);
            match next {
                // The last event, cut short by the end of the body: a cut, not a fault.
                Ok(Some((data, None)))
                    if self.ended
                        && mode != Mode::JsonArray
                        && serde_json::from_slice::<IgnoredAny>(&data).is_err() =>
                {
                    return Poll::Ready(Err(cut));
                }
                Ok(Some(event)) => return Poll::Ready(Ok(Some(event))),
                Ok(None) if self.ended => return Poll::Ready(Err(cut)),
                Ok(None) if !may_read => return Poll::Ready(Ok(None)),
                Ok(None) => {}
                // Everything pushed was read before the end was marked: the one error after
                // it is an array that ended inside an element, a cut.
                Err(SseError::Malformed(_)) if self.ended => return Poll::Ready(Err(cut)),
                Err(e) => return Poll::Ready(Err(Break::Fault(Fault::Decoder(e)))),
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => {
                    let Some(t) = idle else {
                        return Poll::Pending;
                    };
                    let deadline = self.last_frame + t;
                    let sleep = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Err(Break::Interrupted(Interruption::Stalled)));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    self.sse.finish();
                    self.array.finish();
                }
                Poll::Ready(Some(Err(e))) => {
                    let timeout = e
                        .downcast_ref::<crate::Error>()
                        .is_some_and(crate::Error::is_timeout);
                    return Poll::Ready(Err(Break::Interrupted(if timeout {
                        Interruption::Stalled
                    } else {
                        Interruption::Dropped
                    })));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if idle.is_some() {
                        self.last_frame = Instant::now();
                    }
                    if let Ok(d) = frame.into_data() {
                        match mode {
                            Mode::JsonArray => self.array.push(d),
                            _ => self.sse.push(d),
                        }
                    }
                }
            }
        }
    }
}
