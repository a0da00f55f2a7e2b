//! What a call through the coalescing layer allocates when no other request
//! shares its key: the shared call's slot and the boxed inner call, two
//! allocations (`futures`' `Shared` made three and cloned the answer); a
//! request run uncoalesced allocates nothing. A counting global allocator
//! watches the calls.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;

use counting_alloc::allocations_during;
use palisade::coalesce::{Coalesce, CoalesceConfig};
use tower::{Layer, Service};

#[path = "support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const MEASURED_CALLS: u64 = 1_000;

#[test]
fn an_unshared_call_allocates_its_slot_and_its_boxed_call() {
    let coalesce = Coalesce::with_defaults("alloc");
    let mut service = coalesce.layer(|request: &u64| *request).layer(Echo);
    for request in 0..10 {
        assert_eq!(call_now(&mut service, request).ok(), Some(request));
    }
    let mut answered = 0;
    let allocations = allocations_during(|| {
        // A key of its own for every call: each one starts and finishes a
        // shared call that nobody joins.
        for request in 0..MEASURED_CALLS {
            answered += u64::from(call_now(&mut service, black_box(request)).is_ok());
        }
    });
    assert_eq!(answered, MEASURED_CALLS);
    assert_eq!(
        allocations as u64,
        2 * MEASURED_CALLS,
        "allocations in {MEASURED_CALLS} unshared calls"
    );
    let metrics = coalesce.metrics();
    assert_eq!((metrics.in_flight_keys, metrics.waiters), (0, 0));
    assert_eq!(metrics.calls, MEASURED_CALLS + 10);
}

#[test]
fn a_request_run_uncoalesced_allocates_nothing() {
    let coalesce = Coalesce::new(
        "alloc",
        CoalesceConfig::builder()
            .max_in_flight_keys(1)
            .build()
            .expect("valid config"),
    );
    let mut service = coalesce.layer(|request: &u64| *request).layer(Echo);
    // A call made and never polled keeps the only key in flight.
    let holder = service.call(u64::MAX);
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
    assert_eq!(coalesce.metrics().uncoalesced, MEASURED_CALLS + 10);
    drop(holder);
    assert_eq!(coalesce.metrics().in_flight_keys, 0);
}
