//! What a call through the adaptive concurrency limit costs when a slot is
//! free (admission, a clock read at each end, the algorithm's update),
//! next to a bare service, tower's fixed `ConcurrencyLimit` and
//! tower-resilience's adaptive limiter, in one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig, Aimd, Vegas};
use tower::Layer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

fn free_slot(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("adaptive_concurrency");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let config = |algorithm: palisade::adaptive_concurrency::LimitAlgorithm| {
        AdaptiveConcurrencyConfig::builder()
            .algorithm(algorithm)
            .initial_limit(64)
            .build()
            .expect("valid config")
    };
    let vegas = AdaptiveConcurrency::new("bench", config(Vegas::default().into()));
    let mut service = vegas.layer().layer(Echo);
    group.bench_function("palisade/vegas", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });
    let aimd = AdaptiveConcurrency::new(
        "bench",
        config(Aimd::new(Duration::from_millis(100)).into()),
    );
    let mut service = aimd.layer().layer(Echo);
    group.bench_function("palisade/aimd", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let mut peer = tower_resilience_adaptive::AdaptiveLimiterLayer::new(
        tower_resilience_adaptive::Vegas::builder()
            .initial_limit(64)
            .build()
            .expect("valid config"),
    )
    .layer(Echo);
    group.bench_function("tower-resilience/vegas", |b| {
        b.iter(|| call_now(&mut peer, black_box(7)))
    });

    let mut fixed = tower::limit::ConcurrencyLimitLayer::new(64).layer(Echo);
    group.bench_function("tower/concurrency-limit (fixed)", |b| {
        b.iter(|| call_now(&mut fixed, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, free_slot);
criterion_main!(benches);
