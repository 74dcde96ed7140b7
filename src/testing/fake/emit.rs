//! Steps on the wire: a unary JSON body, SSE events or a streamed JSON array, and the cuts.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::generate::{Mode, Step};
use super::server::{State, lock};
use crate::body::{Body, BoxError};

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// Sends steps as a unary JSON body, SSE events or a streamed JSON array.
pub(super) async fn emit(
    state: &State,
    kill: &Arc<tokio::sync::Notify>,
    candidates: usize,
    mode: Mode,
    steps: Vec<Step>,
) -> Response<Body> {
    let delay = *lock(&state.chunk_delay);
    let kill = kill.clone();
    let (tx, rx) = mpsc::channel::<FrameResult>(4);
    // Set before the fake cuts the answer itself, so only a client's abandon is counted.
    let cut = Arc::new(AtomicBool::new(false));
    let stream = ChannelStream {
        rx,
        ended: false,
        cut: cut.clone(),
        cancelled: state.cancelled.clone(),
    };
    tokio::spawn(async move {
        let mut first = true;
        if mode == Mode::JsonArray
            && tx
                .send(Ok(Frame::data(Bytes::from_static(b"["))))
                .await
                .is_err()
        {
            return;
        }
        for step in steps {
            match step {
                Step::Chunk(mut v) => {
                    fan_out(&mut v, candidates);
                    if !first && mode != Mode::Unary && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let json = serde_json::to_string(&v).unwrap_or_default();
                    let bytes = match mode {
                        Mode::Unary => Bytes::from(json),
                        Mode::Sse => Bytes::from(format!("data: {json}\r\n\r\n")),
                        Mode::JsonArray if first => Bytes::from(json),
                        Mode::JsonArray => Bytes::from(format!(",\r\n{json}")),
                    };
                    first = false;
                    if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => {
                    if d == Duration::MAX {
                        // Hold the stream open until the client goes away.
                        tx.closed().await;
                        return;
                    }
                    tokio::time::sleep(d).await;
                }
                Step::Break => {
                    // Let the server write what was sent (a real cut happens after the bytes
                    // left), then drop the connection without a clean end of the body.
                    drained(&tx).await;
                    cut.store(true, Ordering::SeqCst);
                    kill.notify_one();
                    tx.closed().await;
                    return;
                }
                Step::Reset => {
                    // The same wait: a reset discards data still queued for the stream.
                    drained(&tx).await;
                    cut.store(true, Ordering::SeqCst);
                    let _ = tx.send(Err("the fake reset the stream".into())).await;
                    return;
                }
            }
        }
        if mode == Mode::JsonArray {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"]")))).await;
        }
    });
    let content_type = if mode == Mode::Sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    let mut res = Response::new(Body::new(StreamBody::new(stream)));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// Copies candidate 0 of a chunk into `n` candidates with indexes 0..n.
fn fan_out(chunk: &mut Value, n: usize) {
    if n <= 1 {
        return;
    }
    if let Some(cands) = chunk["candidates"].as_array_mut()
        && cands.len() == 1
    {
        let first = cands[0].clone();
        cands.clear();
        for i in 0..n {
            let mut c = first.clone();
            c["index"] = json!(i);
            cands.push(c);
        }
    }
}

/// Waits until the server has taken every frame sent, and a little more for it to write them.
async fn drained(tx: &mpsc::Sender<FrameResult>) {
    while tx.capacity() < tx.max_capacity() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// The answer body; dropped before its end without a cut of the fake's own, it counts as
/// cancelled by the client.
struct ChannelStream {
    rx: mpsc::Receiver<FrameResult>,
    ended: bool,
    cut: Arc<AtomicBool>,
    cancelled: Arc<AtomicU64>,
}

impl futures_core::Stream for ChannelStream {
    type Item = FrameResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        if !self.ended && !self.cut.load(Ordering::SeqCst) {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
