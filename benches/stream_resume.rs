//! What StreamResumeLayer costs a healthy stream: relay time per event with and without the
//! layer (a 20-event SSE answer from an in-memory upstream), and the memory it holds per open
//! stream (counted by a global allocator wrapper, printed once).
//!
//! `cargo bench --features stream-resume --bench stream_resume`
#![allow(missing_docs, clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::Body;
use tower_gemini::stream_resume::StreamResumeLayer;

/// Counts live heap bytes, to report the memory one open stream holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const EVENTS: usize = 20;

/// The SSE events of a healthy 20-event answer, the last with `STOP` and usage.
fn events() -> Vec<Bytes> {
    (0..EVENTS)
        .map(|i| {
            let mut c = serde_json::json!({
                "content": {"role": "model", "parts": [{"text": format!("word{i} and some more text ")}]},
                "index": 0
            });
            let mut v = serde_json::json!({"modelVersion": "gemini-2.5-flash", "responseId": "r1"});
            if i + 1 == EVENTS {
                c["finishReason"] = "STOP".into();
                v["usageMetadata"] =
                    serde_json::json!({"promptTokenCount": 5, "candidatesTokenCount": 80, "totalTokenCount": 85});
            }
            v["candidates"] = serde_json::json!([c]);
            Bytes::from(format!("data: {v}\r\n\r\n"))
        })
        .collect()
}

/// A response body yielding one event per frame; `hold` keeps it open after the events.
struct Events {
    frames: VecDeque<Bytes>,
    hold: bool,
}

impl HttpBody for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.frames.pop_front() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None if self.hold => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

fn upstream(
    events: Vec<Bytes>,
    hold: bool,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<Body>| {
        let body = Events {
            frames: events.clone().into(),
            hold,
        };
        async move { Ok::<_, Infallible>(Response::new(Body::new(body))) }
    })
}

fn request() -> Request<Body> {
    Request::post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        .body(Body::from(
            r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#,
        ))
        .unwrap()
}

fn relay(c: &mut Criterion) {
    // One thread, like a server worker that runs the connection and its relay task together.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = events();
    let mut g = c.benchmark_group("stream_20_events");
    g.throughput(Throughput::Elements(EVENTS as u64));
    let bare = upstream(events.clone(), false);
    g.bench_function("bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = bare.clone().oneshot(request()).await.unwrap();
                res.into_body().collect().await.unwrap().to_bytes()
            })
        })
    });
    let layered = ServiceBuilder::new()
        .layer(StreamResumeLayer::new())
        .service(upstream(events.clone(), false));
    g.bench_function("stream_resume", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = layered.clone().oneshot(request()).await.unwrap();
                res.into_body().collect().await.unwrap().to_bytes()
            })
        })
    });
    g.finish();
}

/// Opens 1,000 streams that have relayed every event but the last and stay open, and prints
/// the heap they hold, per stream, with and without the layer.
fn memory(_c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut events = events();
    events.pop();
    let open = |layered: bool| {
        rt.block_on(async {
            let before = LIVE.load(Ordering::Relaxed);
            let mut bodies = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let res = if layered {
                    ServiceBuilder::new()
                        .layer(StreamResumeLayer::new())
                        .service(upstream(events.clone(), true))
                        .oneshot(request())
                        .await
                } else {
                    upstream(events.clone(), true).oneshot(request()).await
                };
                let mut body = res.unwrap().into_body();
                for _ in 0..events.len() {
                    body.frame().await.unwrap().unwrap();
                }
                bodies.push(body);
            }
            let held = LIVE.load(Ordering::Relaxed) - before;
            drop(bodies);
            held / 1000
        })
    };
    let bare = open(false);
    let layered = open(true);
    println!(
        "memory per open stream after {} events: bare {bare} B, with StreamResume {layered} B (+{} B)",
        events.len(),
        layered - bare
    );
}

criterion_group!(benches, relay, memory);
criterion_main!(benches);
