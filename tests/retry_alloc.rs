//! The retry layer's success path makes no allocation per call: a counting
//! global allocator watches calls whose first attempt succeeds.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;
use std::time::Duration;

use counting_alloc::allocations_during;
use palisade::retry::{Retry, RetryConfig};
use tower::{Layer, Service};

#[path = "support/echo.rs"]
mod echo;
use echo::Echo;

fn call_now<S: Service<u64, Response = u64>>(service: &mut S, request: u64) -> u64
where
    S::Error: std::fmt::Debug,
{
    echo::call_now(service, request).expect("Echo succeeds")
}

fn assert_success_path_allocates_nothing(config: RetryConfig) {
    let retry = Retry::new("alloc", config);
    let mut service = retry.layer().layer(Echo);
    for request in 0..10 {
        call_now(&mut service, request);
    }
    let allocations = allocations_during(|| {
        for request in 0..1_000 {
            black_box(call_now(&mut service, black_box(request)));
        }
    });
    assert_eq!(allocations, 0, "allocations in 1,000 successful calls");
    assert_eq!(retry.metrics().succeeded_without_retry, 1_010);
}

#[test]
fn first_attempt_success_with_the_default_budget_allocates_nothing() {
    assert_success_path_allocates_nothing(RetryConfig::default());
}

#[test]
fn first_attempt_success_with_timeouts_and_a_deadline_allocates_nothing() {
    // The timers are only created when the call has to wait; the runtime is
    // there because they could be.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    assert_success_path_allocates_nothing(
        RetryConfig::builder()
            .attempt_timeout(Duration::from_secs(1))
            .overall_timeout(Duration::from_secs(5))
            .max_elapsed(Duration::from_secs(3))
            .build()
            .expect("valid config"),
    );
}

#[test]
fn the_counter_sees_an_allocation() {
    let allocations = allocations_during(|| {
        black_box(Box::new(black_box(7u64)));
    });
    assert_eq!(allocations, 1);
}
