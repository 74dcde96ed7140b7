//! Reading one upstream answer: its events, its idle clock, and why it ended early.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use tokio::time::{Instant, Sleep};

use super::request::Mode;
use crate::body::Body;
use crate::sse::{Decoder, JsonArrayDecoder, RawSpan};
use crate::stream_resume::layer::Config;

/// Why an attempt ended early.
#[derive(Debug)]
pub(super) enum Interruption {
    Dropped,
    EndedWithoutFinish,
    Stalled,
    Finish(#[allow(dead_code, reason = "read through Debug in logs")] String),
    ErrorEvent,
    Malformed,
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
    pub(super) fn new(body: Body, config: &Config) -> Self {
        Attempt {
            body,
            sse: Decoder::new()
                .max_event_bytes(config.max_event_bytes)
                .keep_raw(),
            array: JsonArrayDecoder::new().max_element_bytes(config.max_event_bytes),
            ended: false,
            last_frame: Instant::now(),
            idle: None,
        }
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
    ) -> Poll<Result<Option<(Bytes, Option<RawSpan>)>, Interruption>> {
        loop {
            let next = match mode {
                Mode::JsonArray => self.array.next_element().map(|e| e.map(|e| (e, None))),
                _ => self
                    .sse
                    .next_event()
                    .map(|e| e.map(|e| (e.data, self.sse.take_raw()))),
            };
            match next {
                Ok(Some(event)) => return Poll::Ready(Ok(Some(event))),
                Ok(None) if self.ended => {
                    return Poll::Ready(Err(Interruption::EndedWithoutFinish));
                }
                Ok(None) if !may_read => return Poll::Ready(Ok(None)),
                Ok(None) => {}
                Err(_) => return Poll::Ready(Err(Interruption::Malformed)),
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
                    return Poll::Ready(Err(Interruption::Stalled));
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
                    return Poll::Ready(Err(if timeout {
                        Interruption::Stalled
                    } else {
                        Interruption::Dropped
                    }));
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
