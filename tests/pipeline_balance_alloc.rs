//! A pipeline call (empty, and with all five core stages) and a balancer's
//! pick and call make no allocation on their success paths: a counting
//! global allocator watches the calls.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;
use std::time::Duration;

use counting_alloc::allocations_during;
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::CircuitBreaker;
use palisade::pipeline::Pipeline;
use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use tower::{Layer, Service};

#[path = "support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const MEASURED_CALLS: u64 = 1_000;

/// Warms `service` up, then counts the allocations of `MEASURED_CALLS`
/// calls, each of which must succeed.
fn allocations_per_call<S: Service<u64, Response = u64>>(mut service: S) -> usize
where
    S::Error: std::fmt::Debug,
{
    for request in 0..10 {
        assert_eq!(call_now(&mut service, request).unwrap(), request);
    }
    let mut answered = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            answered += u64::from(call_now(&mut service, black_box(request)).is_ok());
        }
    });
    assert_eq!(answered, MEASURED_CALLS);
    allocations
}

#[test]
fn an_empty_pipeline_call_allocates_nothing() {
    let pipeline = Pipeline::builder("alloc").build().unwrap();
    assert_eq!(allocations_per_call(pipeline.layer(Echo)), 0);
}

#[test]
fn a_call_through_all_five_core_stages_allocates_nothing() {
    // The timeout stage's timer and the rate limiter need a runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let pipeline = Pipeline::builder("alloc")
        .retry(Retry::new(
            "alloc",
            RetryConfig::builder().max_attempts(3).build().unwrap(),
        ))
        .circuit_breaker(CircuitBreaker::with_defaults("alloc"))
        .rate_limiter(RateLimiter::new(
            "alloc",
            RateLimiterConfig::builder()
                .limit_for_period(1_000_000_000)
                .limit_refresh_period(Duration::from_secs(1))
                .build()
                .unwrap(),
        ))
        .timeout(Duration::from_secs(5))
        .bulkhead(Bulkhead::new(
            "alloc",
            BulkheadConfig::builder()
                .max_concurrent_calls(8)
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    assert_eq!(allocations_per_call(pipeline.layer(Echo)), 0);
}

#[cfg(feature = "discovery")]
#[test]
fn a_balancer_pick_and_call_allocates_nothing_with_every_picker() {
    use palisade::discovery::{Balance, BalanceConfig, Instance, Picker, StaticRegistry, make_fn};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let registry = StaticRegistry::new((0..100).map(|i| {
        Instance::builder("alloc", format!("i{i}"), format!("10.0.0.{i}:80"))
            .weight(1 + i % 3)
            .build()
            .unwrap()
    }));
    for picker in [
        Picker::RoundRobin,
        Picker::Random,
        Picker::Weighted,
        Picker::LeastLoaded,
        Picker::peak_ewma(),
    ] {
        let config = BalanceConfig::builder().picker(picker).build().unwrap();
        let mut balance = Balance::new(
            "alloc",
            &registry,
            make_fn(|_: &Instance| Ok::<_, std::convert::Infallible>(Echo)),
            config,
        )
        .unwrap();
        // Let the watch task deliver the instances.
        runtime.block_on(async {
            use tower::ServiceExt;
            let _ = ServiceExt::<u64>::ready(&mut balance).await;
        });
        assert_eq!(balance.metrics().instances, 100);
        assert_eq!(allocations_per_call(balance), 0, "{picker:?}");
    }
}
