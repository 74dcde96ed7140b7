//! Key selection cost (1, 100 and 10,000 keys, alone and under 2-thread contention) and the
//! latency KeyRotationLayer adds over the bare inner service, in one run.
//!
//! `cargo bench --features key-rotation --bench key_rotation`
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::Body;
use tower_gemini::key_rotation::{KeyPool, KeyRotationLayer, Strategy};

const MODEL: &str = "gemini-2.5-flash";
const SIZES: [usize; 3] = [1, 100, 10_000];

fn pool(n: usize, strategy: Strategy) -> Arc<KeyPool> {
    let keys = (0..n).map(|i| format!("AIzaSyBenchKey{i:0>25}"));
    KeyPool::builder()
        .keys(keys)
        .strategy(strategy)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn pick(c: &mut Criterion) {
    // The pool reads tokio's clock, so the picks run inside a runtime context.
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("key_pick");
    for strategy in [Strategy::RoundRobin, Strategy::LeastUsed, Strategy::Random] {
        for n in SIZES {
            let pool = pool(n, strategy);
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &pool, |b, pool| {
                b.iter(|| black_box(pool.__bench_pick(black_box(MODEL))))
            });
        }
    }
    group.finish();
}

fn pick_contended(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("key_pick_2_threads");
    for n in SIZES {
        let pool = pool(n, Strategy::RoundRobin);
        let stop = Arc::new(AtomicBool::new(false));
        let other = {
            let (pool, stop) = (pool.clone(), stop.clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let _guard = handle.enter();
                while !stop.load(Ordering::Relaxed) {
                    black_box(pool.__bench_pick(MODEL));
                }
            })
        };
        group.bench_with_input(BenchmarkId::new("round_robin", n), &pool, |b, pool| {
            b.iter(|| black_box(pool.__bench_pick(black_box(MODEL))))
        });
        stop.store(true, Ordering::Relaxed);
        other.join().unwrap();
    }
    group.finish();
}

fn layer_latency(c: &mut Criterion) {
    let rt = runtime();
    let upstream = service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from(r#"{"candidates":[]}"#)))
    });
    let layered = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(pool(10, Strategy::RoundRobin)))
        .service(upstream);
    let request = || {
        Request::post("/v1beta/models/gemini-2.5-flash:generateContent?key=client")
            .header("authorization", "Bearer client")
            .body(Body::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#))
            .unwrap()
    };
    let mut group = c.benchmark_group("layer_latency");
    group.bench_function("bare_service_fn", |b| {
        b.iter(|| rt.block_on(upstream.oneshot(request())).unwrap())
    });
    group.bench_function("key_rotation", |b| {
        b.iter(|| rt.block_on(layered.clone().oneshot(request())).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick, pick_contended, layer_latency
}
criterion_main!(benches);
