//! What the pipeline costs per call: empty, with every stage, and next to
//! the same layers stacked by hand; and the rate limiter alone. One run.
//! Prints the size of each service and of its response future first.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::CircuitBreaker;
use palisade::pipeline::Pipeline;
use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use tower::{Layer, Service, ServiceBuilder};

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

fn limiter() -> RateLimiter {
    RateLimiter::new(
        "bench",
        RateLimiterConfig::builder()
            .limit_for_period(1_000_000_000)
            .limit_refresh_period(Duration::from_secs(1))
            .build()
            .expect("valid config"),
    )
}

fn bulkhead() -> Bulkhead {
    Bulkhead::new(
        "bench",
        BulkheadConfig::builder()
            .max_concurrent_calls(64)
            .build()
            .expect("valid config"),
    )
}

fn retry() -> Retry {
    Retry::new(
        "bench",
        RetryConfig::builder()
            .max_attempts(3)
            .build()
            .expect("valid config"),
    )
}

fn pipeline(c: &mut Criterion) {
    // tower's Timeout and the rate limiter read tokio's clock.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();

    /// What a call moves around: the service and its response future.
    fn sizes<S: Service<u64>>(name: &str, _: &S) {
        println!(
            "{name}: service {} bytes, response future {} bytes",
            std::mem::size_of::<S>(),
            std::mem::size_of::<S::Future>()
        );
    }

    let mut group = c.benchmark_group("pipeline");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let mut limited = limiter().layer().layer(Echo);
    group.bench_function("rate-limiter", |b| {
        b.iter(|| call_now(&mut limited, black_box(7)))
    });

    let mut empty = Pipeline::builder("bench")
        .build()
        .expect("valid pipeline")
        .layer(Echo);
    group.bench_function("pipeline/empty", |b| {
        b.iter(|| call_now(&mut empty, black_box(7)))
    });

    let mut full = Pipeline::builder("bench")
        .retry(retry())
        .circuit_breaker(CircuitBreaker::with_defaults("bench"))
        .rate_limiter(limiter())
        .timeout(Duration::from_secs(5))
        .bulkhead(bulkhead())
        .build()
        .expect("valid pipeline")
        .layer(Echo);
    group.bench_function("pipeline/all-stages", |b| {
        b.iter(|| call_now(&mut full, black_box(7)))
    });

    let mut by_hand = ServiceBuilder::new()
        .layer(retry().layer())
        .layer(CircuitBreaker::with_defaults("bench").layer())
        .layer(limiter().layer())
        .timeout(Duration::from_secs(5))
        .layer(bulkhead().layer())
        .service(Echo);
    sizes("bare", &bare);
    sizes("pipeline, empty", &empty);
    sizes("pipeline, all stages", &full);
    sizes("by hand, all stages", &by_hand);
    group.bench_function("by-hand/all-stages", |b| {
        b.iter(|| call_now(&mut by_hand, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
