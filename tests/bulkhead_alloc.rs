//! A call through the bulkhead makes no allocation when a permit is free,
//! and a rejection at most one (the boxed error): a counting global
//! allocator watches the calls.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;

use counting_alloc::allocations_during;
use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
use tower::{Layer, Service};

#[path = "support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const MEASURED_CALLS: u64 = 1_000;

fn bulkhead(max_concurrent_calls: usize) -> Bulkhead {
    Bulkhead::new(
        "alloc",
        BulkheadConfig::builder()
            .max_concurrent_calls(max_concurrent_calls)
            .build()
            .expect("valid config"),
    )
}

#[test]
fn a_call_with_a_free_permit_allocates_nothing() {
    let bulkhead = bulkhead(8);
    let mut service = bulkhead.layer().layer(Echo);
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
}

#[test]
fn a_rejection_allocates_at_most_the_boxed_error() {
    let bulkhead = bulkhead(1);
    // The holder takes the only permit in `poll_ready` and keeps it.
    let mut holder = bulkhead.layer().layer(Echo);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(holder.poll_ready(&mut cx).is_ready());
    let mut service = bulkhead.layer().layer(Echo);
    for request in 0..10 {
        assert!(call_now(&mut service, request).is_err());
    }
    let mut rejected = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            if let Err(error) = call_now(&mut service, black_box(request)) {
                rejected += u64::from(error.downcast_ref::<BulkheadFull>().is_some());
            }
        }
    });
    assert_eq!(rejected, MEASURED_CALLS);
    assert!(
        allocations as u64 <= MEASURED_CALLS,
        "{allocations} allocations for {MEASURED_CALLS} rejections"
    );
}
