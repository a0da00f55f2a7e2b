//! What a call through the bulkhead costs when a permit is free, next to a
//! bare service and to tower's `ConcurrencyLimit`, in one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use tower::Layer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

fn free_permit(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulkhead");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let bulkhead = Bulkhead::new(
        "bench",
        BulkheadConfig::builder()
            .max_concurrent_calls(64)
            .build()
            .expect("valid config"),
    );
    let mut service = bulkhead.layer().layer(Echo);
    group.bench_function("palisade", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let mut limited = tower::limit::ConcurrencyLimitLayer::new(64).layer(Echo);
    group.bench_function("tower/concurrency-limit", |b| {
        b.iter(|| call_now(&mut limited, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, free_permit);
criterion_main!(benches);
