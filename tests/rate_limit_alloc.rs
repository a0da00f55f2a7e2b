//! A call through the rate limiter makes no allocation when a permit is
//! free, and a rejection at most one (the boxed error): a counting global
//! allocator watches the calls.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;
use std::time::Duration;

use counting_alloc::allocations_during;
use palisade::rate_limit::{RateLimited, RateLimiter, RateLimiterConfig};
use tower::Layer;

#[path = "support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const MEASURED_CALLS: u64 = 1_000;

fn limiter(limit_for_period: u32) -> RateLimiter {
    RateLimiter::new(
        "alloc",
        RateLimiterConfig::builder()
            .limit_for_period(limit_for_period)
            .limit_refresh_period(Duration::from_secs(3600))
            .build()
            .expect("valid config"),
    )
}

#[test]
fn a_permitted_call_allocates_nothing() {
    let limiter = limiter(10_000);
    let mut service = limiter.layer().layer(Echo);
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
fn a_rejection_allocates_at_most_the_boxed_error() {
    let limiter = limiter(1);
    let mut service = limiter.layer().layer(Echo);
    assert!(call_now(&mut service, 0).is_ok(), "the one permit");
    for request in 0..10 {
        assert!(call_now(&mut service, request).is_err());
    }
    let mut rejected = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            if let Err(error) = call_now(&mut service, black_box(request)) {
                rejected += u64::from(error.downcast_ref::<RateLimited>().is_some());
            }
        }
    });
    assert_eq!(rejected, MEASURED_CALLS);
    assert!(
        allocations as u64 <= MEASURED_CALLS,
        "{allocations} allocations for {MEASURED_CALLS} rejections"
    );
}
