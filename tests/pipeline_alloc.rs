//! A call through a pipeline makes no allocation when every stage lets it
//! through (empty, or with all five core stages), and a rejection at most
//! one (the boxed error): a counting global allocator watches the calls.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;
use std::time::Duration;

use counting_alloc::allocations_during;
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::CircuitBreaker;
use palisade::pipeline::{Pipeline, PipelineError, Stage};
use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use tower::Layer;

#[path = "support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const MEASURED_CALLS: u64 = 1_000;

fn limiter() -> RateLimiter {
    RateLimiter::new(
        "alloc",
        RateLimiterConfig::builder()
            .limit_for_period(1_000_000_000)
            .limit_refresh_period(Duration::from_secs(1))
            .build()
            .expect("valid config"),
    )
}

fn bulkhead() -> Bulkhead {
    Bulkhead::new(
        "alloc",
        BulkheadConfig::builder()
            .max_concurrent_calls(8)
            .build()
            .expect("valid config"),
    )
}

fn retry() -> Retry {
    Retry::new(
        "alloc",
        RetryConfig::builder()
            .max_attempts(3)
            .build()
            .expect("valid config"),
    )
}

/// tower's Timeout and the rate limiter read tokio's clock: the calls run
/// inside a runtime's context (but are polled by hand).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

#[test]
fn a_call_through_an_empty_pipeline_allocates_nothing() {
    let mut service = Pipeline::builder("alloc")
        .build()
        .expect("valid pipeline")
        .layer(Echo);
    for request in 0..10 {
        assert_eq!(call_now(&mut service, request).ok(), Some(request));
    }
    let mut answered = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            answered += u64::from(call_now(&mut service, black_box(request)).is_ok());
        }
    });
    assert_eq!(answered, MEASURED_CALLS);
    assert_eq!(allocations, 0, "allocations in {MEASURED_CALLS} calls");
}

#[test]
fn a_call_through_every_core_stage_allocates_nothing() {
    let runtime = runtime();
    let _entered = runtime.enter();
    let breaker = CircuitBreaker::with_defaults("alloc");
    let bulkhead = bulkhead();
    let mut service = Pipeline::builder("alloc")
        .retry(retry())
        .circuit_breaker(breaker.clone())
        .rate_limiter(limiter())
        .timeout(Duration::from_secs(5))
        .bulkhead(bulkhead.clone())
        .build()
        .expect("valid pipeline")
        .layer(Echo);
    for request in 0..10 {
        assert_eq!(call_now(&mut service, request).ok(), Some(request));
    }
    let mut answered = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            answered += u64::from(call_now(&mut service, black_box(request)).is_ok());
        }
    });
    assert_eq!(answered, MEASURED_CALLS);
    assert_eq!(allocations, 0, "allocations in {MEASURED_CALLS} calls");
    assert_eq!(bulkhead.metrics().in_flight, 0, "every permit came back");
    assert!(
        breaker.metrics().successful_calls > 0,
        "the calls went through the breaker"
    );
}

#[test]
fn a_rejection_by_an_open_breaker_allocates_at_most_the_boxed_error() {
    let runtime = runtime();
    let _entered = runtime.enter();
    let breaker = CircuitBreaker::with_defaults("alloc");
    breaker.transition_to_open().expect("CLOSED -> OPEN");
    let mut service = Pipeline::builder("alloc")
        .retry(retry())
        .circuit_breaker(breaker)
        .timeout(Duration::from_secs(5))
        .bulkhead(bulkhead())
        .build()
        .expect("valid pipeline")
        .layer(Echo);
    for request in 0..10 {
        assert!(call_now(&mut service, request).is_err());
    }
    let mut rejected = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            if let Err(PipelineError::Rejected(rejection)) =
                call_now(&mut service, black_box(request))
            {
                rejected += u64::from(rejection.stage() == Stage::CircuitBreaker);
            }
        }
    });
    assert_eq!(rejected, MEASURED_CALLS);
    assert!(
        allocations as u64 <= MEASURED_CALLS,
        "{allocations} allocations for {MEASURED_CALLS} rejections"
    );
}
