//! Token settlement: reading `usageMetadata.totalTokenCount` from responses.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::store::{RateLimitStore, Settlement};
use crate::body::{Body, BoxError};

const PATTERN: &[u8] = b"\"totalTokenCount\":";

/// Finds the last `"totalTokenCount": N` in a byte stream fed piece by piece (SSE frames, a
/// streamed JSON array or a whole JSON body), without buffering it.
///
/// The pattern cannot match inside a JSON string (quotes there are escaped), so it only finds
/// real keys; Gemini sends `usageMetadata` last, and the last one wins.
///
/// ```
/// use tower_gemini::rate_limit::UsageScanner;
///
/// let mut s = UsageScanner::new();
/// s.feed(b"data: {\"usageMetadata\":{\"totalTok");
/// s.feed(b"enCount\": 12}}\r\n\r\ndata: {\"usageMetadata\":{\"totalTokenCount\":30}}\r\n\r\n");
/// assert_eq!(s.total_tokens(), Some(30));
/// ```
#[derive(Clone, Debug, Default)]
pub struct UsageScanner {
    matched: usize,
    state: ScanState,
    value: u64,
    last: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ScanState {
    #[default]
    Seeking,
    BeforeNumber,
    Number,
}

impl UsageScanner {
    /// A scanner that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            match self.state {
                ScanState::Seeking => self.seek(b),
                ScanState::BeforeNumber => {
                    if b.is_ascii_digit() {
                        self.value = u64::from(b - b'0');
                        self.state = ScanState::Number;
                    } else if !b.is_ascii_whitespace() {
                        self.state = ScanState::Seeking;
                        self.seek(b);
                    }
                }
                ScanState::Number => {
                    if b.is_ascii_digit() {
                        self.value = self
                            .value
                            .saturating_mul(10)
                            .saturating_add(u64::from(b - b'0'));
                    } else {
                        self.last = Some(self.value);
                        self.state = ScanState::Seeking;
                        self.seek(b);
                    }
                }
            }
        }
    }

    fn seek(&mut self, b: u8) {
        if b == PATTERN[self.matched] {
            self.matched += 1;
            if self.matched == PATTERN.len() {
                self.matched = 0;
                self.state = ScanState::BeforeNumber;
            }
        } else {
            // The pattern has no border: on a mismatch only its opening quote can restart it.
            self.matched = usize::from(b == b'"');
        }
    }

    /// The last total token count seen (a number still being read counts, for a body that
    /// ends right after it).
    pub fn total_tokens(&self) -> Option<u64> {
        match self.state {
            ScanState::Number => Some(self.value),
            _ => self.last,
        }
    }
}

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
    scanner: UsageScanner,
    settler: Option<Settler>,
}

impl ResponseBody {
    pub(crate) fn new(inner: Body, settler: Settler) -> Self {
        Self {
            pending: None,
            failed: None,
            inner,
            scanner: UsageScanner::new(),
            settler: Some(settler),
        }
    }

    fn finish(&mut self) {
        if let Some(s) = self.settler.take() {
            s.finish(self.scanner.total_tokens());
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

#[derive(serde::Deserialize)]
struct UsageOnly {
    #[serde(rename = "usageMetadata")]
    usage: Option<UsageMetadata>,
}

#[derive(serde::Deserialize)]
struct UsageMetadata {
    #[serde(rename = "totalTokenCount")]
    total: Option<u64>,
}

fn usage_of_json(bytes: &[u8]) -> Option<u64> {
    let object = bytes.trim_ascii_start().starts_with(b"{");
    match serde_json::from_slice::<UsageOnly>(bytes) {
        Ok(u) if object => u.usage.and_then(|u| u.total),
        _ => {
            // Not one JSON object (an array, or something odd): the scanner still finds usage.
            let mut s = UsageScanner::new();
            s.feed(bytes);
            s.total_tokens()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_the_last_count_across_splits() {
        let text = b"data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":3,\"totalTokenCount\": 17}}\r\n\r\ndata: {\"usageMetadata\":{\"totalTokenCount\":1234}}\r\n\r\n";
        for split in 0..text.len() {
            let mut s = UsageScanner::new();
            s.feed(&text[..split]);
            s.feed(&text[split..]);
            assert_eq!(s.total_tokens(), Some(1234), "split at {split}");
        }
    }

    #[test]
    fn scanner_ignores_escaped_text_and_near_misses() {
        let mut s = UsageScanner::new();
        s.feed(
            br#"{"text":"say \"totalTokenCount\": 99","totalTokenCounts":5,""totalTokenCount":x}"#,
        );
        assert_eq!(s.total_tokens(), None);
        s.feed(br#"{""totalTokenCount":7"#);
        assert_eq!(s.total_tokens(), Some(7));
    }

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
