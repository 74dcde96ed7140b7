//! RateLimit benches: the memory store's check (uncontended, two threads, 100,000 keys), the
//! whole layer against the bare service, and — when `REDIS_URL` answers — Redis round trips
//! per check (target: one) and a check's latency.
//!
//! Run: `cargo bench --bench rate_limit` (with `REDIS_URL=redis://127.0.0.1:6379` for Redis).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::Body;
use tower_gemini::facts::Identity;
use tower_gemini::rate_limit::{Check, RateLimitLayer, RateLimitMemoryStore, RateLimitStore, Rule};

/// A bucket that always has room, so every check also writes.
fn roomy(key: String) -> Check {
    Check {
        key,
        interval: Duration::from_nanos(1),
        capacity: u64::MAX / 4,
        cost: 1,
    }
}

/// Polls a future that is ready at once (the memory store's).
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the memory store answers at once"),
    }
}

fn memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_store");

    let store = RateLimitMemoryStore::new();
    let one = [roomy("0:r60/60000ms+60|c=sk-a…0001".to_owned())];
    g.bench_function("check_uncontended", |b| {
        b.iter(|| black_box(now(store.check(black_box(&one))).expect("memory store never fails")))
    });

    let store = Arc::new(RateLimitMemoryStore::new());
    g.bench_function("check_2_threads", |b| {
        // Two clients checking at once on two threads; the time is per pair of checks.
        b.iter_custom(|iters| {
            let start = Instant::now();
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let check = [roomy(format!("0:r60/60000ms+60|c=client-{t}"))];
                        for _ in 0..iters {
                            black_box(now(store.check(&check)).expect("memory store never fails"));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("bench thread");
            }
            start.elapsed()
        })
    });

    let store = RateLimitMemoryStore::new();
    let keys: Vec<[Check; 1]> = (0..100_000)
        .map(|i| [roomy(format!("0:r60/60000ms+60|c=client-{i}"))])
        .collect();
    let mut i = 0;
    g.bench_function("check_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(now(store.check(&keys[i])).expect("memory store never fails"))
        })
    });
    g.finish();
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("layer");
    let leaf = service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    });
    let req = || {
        let mut r = Request::builder()
            .uri("/v1beta/models/gemini-2.5-flash:generateContent")
            .body(Body::from("{}"))
            .expect("request");
        r.extensions_mut()
            .insert(Identity::new("alice", "sk-a…0001", false));
        r
    };
    g.bench_function("bare_service", |b| {
        b.iter(|| rt.block_on(leaf.oneshot(req())))
    });
    let limited = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .rule(Rule::per_client().requests_per_second(1_000_000_000))
                .build()
                .expect("layer"),
        )
        .service(leaf);
    g.bench_function("per_client_rule_memory", |b| {
        b.iter(|| rt.block_on(limited.clone().oneshot(req())))
    });
    g.finish();
}

fn redis(c: &mut Criterion) {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("skipping redis benches: no redis at REDIS_URL (unset)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(mut admin) = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).ok()?;
        tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }) else {
        println!("skipping redis benches: no redis at {url}");
        return;
    };
    let store = tower_gemini::rate_limit::RateLimitRedisStore::new(&url)
        .expect("url")
        .key_prefix(format!("bench-{}:", std::process::id()));
    // Three buckets, as a request under per-client, per-model and token rules has.
    let checks: Vec<Check> = ["a", "b", "c"]
        .iter()
        .map(|k| roomy(format!("{k}|c=bench")))
        .collect();
    // Round trips are the commands this client sends: EVALSHA (EVAL / SCRIPT LOAD only when
    // the script is missing). The script's own GET / SET / TIME run inside Redis, so they do not
    // count; `commandstats` keeps them apart.
    let sent = |admin: &mut redis::aio::MultiplexedConnection| {
        rt.block_on(async {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(admin)
                .await
                .expect("INFO");
            info.lines()
                .filter(|l| {
                    l.starts_with("cmdstat_evalsha:")
                        || l.starts_with("cmdstat_eval:")
                        || l.starts_with("cmdstat_script|load:")
                })
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
    };
    // Warm up (loads the script), then count.
    rt.block_on(store.check(&checks)).expect("redis check");
    let n = 200;
    let before = sent(&mut admin);
    for _ in 0..n {
        rt.block_on(store.check(&checks)).expect("redis check");
    }
    let after = sent(&mut admin);
    let per_check = (after - before) as f64 / f64::from(n);
    println!(
        "redis: {per_check:.2} round trips per check of 3 buckets (target: 1; other clients \
         running scripts on this server add to it)"
    );

    c.bench_function("redis_store/check_3_buckets", |b| {
        b.iter(|| rt.block_on(store.check(&checks)).expect("redis check"))
    });
}

criterion_group!(benches, memory, layer, redis);
criterion_main!(benches);
