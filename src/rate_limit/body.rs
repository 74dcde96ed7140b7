//! Token settlement: the answer's real total, read with the crate's one [`TokenScanner`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::store::{RateLimitStore, Settlement};
use crate::body::{Body, BoxError};
use crate::tokens::TokenScanner;

/// The token charges of one request, settled once the real count is known.
pub(crate) struct Settler {
    pub(crate) store: Arc<dyn RateLimitStore>,
    /// (key, interval, units charged)
    pub(crate) charged: Vec<(String, Duration, u64)>,
}

impl Settler {
    /// Settles with the real total; `None` keeps the estimates.
    pub(crate) fn finish(self, actual: Option<u64>) {
        let Some(actual) = actual else {
            tracing::trace!("no token usage in the response; the estimate stands");
            return;
        };
        let actual = i64::try_from(actual).unwrap_or(i64::MAX);
        let settlements: Vec<Settlement> = self
            .charged
            .into_iter()
            .filter_map(|(key, interval, charged)| {
                let delta = actual.saturating_sub(i64::try_from(charged).unwrap_or(i64::MAX));
                (delta != 0).then_some(Settlement {
                    key,
                    interval,
                    delta,
                })
            })
            .collect();
        if settlements.is_empty() {
            return;
        }
        let mut fut = self.store.settle(settlements);
        // The memory store is done at once; a networked one finishes on its own task.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => tracing::warn!(error = %e, "token settlement failed"),
            Poll::Pending => match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(e) = fut.await {
                            tracing::warn!(error = %e, "token settlement failed");
                        }
                    });
                }
                Err(_) => tracing::warn!("no tokio runtime: token settlement dropped"),
            },
        }
    }
}

/// A response body that settles the token charges from the usage it carries, relaying the
/// frames as they come (nothing is held back).
pub(crate) struct ResponseBody {
    /// Bytes read (and scanned) before relaying started.
    pending: Option<Bytes>,
    /// An error met while reading `pending`, yielded after it.
    failed: Option<BoxError>,
    inner: Body,
    scanner: TokenScanner,
    settler: Option<Settler>,
}

impl ResponseBody {
    pub(crate) fn new(inner: Body, settler: Settler) -> Self {
        Self {
            pending: None,
            failed: None,
            inner,
            scanner: TokenScanner::new(),
            settler: Some(settler),
        }
    }

    fn finish(&mut self) {
        if let Some(s) = self.settler.take() {
            s.finish(self.scanner.tokens().map(|t| t.total));
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if let Some(e) = this.failed.take() {
            this.finish();
            return Poll::Ready(Some(Err(e)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.scanner.feed(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let n = self.pending.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(n));
        }
        hint.set_lower(inner.lower().saturating_add(n));
        hint
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A client that hangs up mid-stream still pays for what was generated so far.
        self.finish();
    }
}

/// Reads a non-streamed answer (up to `max` bytes) to settle with its `usageMetadata`, and
/// returns it buffered. A larger answer is relayed on, and settled as it passes.
pub(crate) async fn buffer_and_settle(mut body: Body, settler: Settler, max: usize) -> Body {
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let bytes = buf.freeze();
                settler.finish(usage_of_json(&bytes));
                return Body::from(bytes);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                if buf.len() > max {
                    let pending = buf.freeze();
                    let mut relay = ResponseBody::new(body, settler);
                    relay.scanner.feed(&pending);
                    relay.pending = Some(pending);
                    return Body::new(relay);
                }
            }
            Some(Err(e)) => {
                let pending = buf.freeze();
                let mut relay = ResponseBody::new(Body::empty(), settler);
                relay.scanner.feed(&pending);
                relay.pending = (!pending.is_empty()).then_some(pending);
                relay.failed = Some(e);
                return Body::new(relay);
            }
        }
    }
}

/// The total token count of a whole answer (one JSON object, or a JSON array of chunks).
fn usage_of_json(bytes: &[u8]) -> Option<u64> {
    let mut s = TokenScanner::new();
    s.feed(bytes);
    s.tokens().map(|t| t.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_is_parsed() {
        assert_eq!(
            usage_of_json(
                br#"{"candidates":[{"content":{}}],"usageMetadata":{"totalTokenCount":42}}"#
            ),
            Some(42)
        );
        assert_eq!(usage_of_json(br#"{"candidates":[]}"#), None);
        assert_eq!(
            usage_of_json(br#"[{"usageMetadata":{"totalTokenCount":5}}]"#),
            Some(5)
        );
    }
}
