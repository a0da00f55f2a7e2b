//! A successful call through a CLOSED breaker allocates nothing.
//!
//! This test binary's global allocator counts the allocations made on a
//! thread while that thread is inside [`allocations_during`]; allocations
//! by the test harness and by other tests are not counted. Counting
//! sections are serialized, so tests running in parallel do not add to
//! each other's counts.

use std::hint::black_box;
use std::time::Duration;

use palisade::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitState, SlidingWindow,
};
use palisade::classify::Outcome;
use palisade::clock::CallClock;
use tower::Layer;

/// The system allocator, counting the allocations of threads that ask for it.
#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations_during, bytes_allocated_during};

#[path = "support/echo.rs"]
mod echo;
use echo::Echo;

/// Makes one call with a no-op waker and no runtime, and returns the
/// response (`None` if the service failed).
fn call_now<S: tower::Service<u64>>(service: &mut S, request: u64) -> Option<S::Response> {
    echo::call_now(service, request).ok()
}

const WARM_UP_CALLS: u64 = 10;
const MEASURED_CALLS: u64 = 1_000;

fn config(window: SlidingWindow, slow_calls: bool, clock: CallClock) -> CircuitBreakerConfig {
    let mut config = CircuitBreakerConfig::builder()
        .sliding_window(window)
        .call_clock(clock);
    if slow_calls {
        config = config.slow_call_duration_threshold(Duration::from_secs(60));
    }
    match config.build() {
        Ok(config) => config,
        Err(error) => panic!("test configuration rejected: {error}"),
    }
}

fn breaker(window: SlidingWindow, slow_calls: bool, clock: CallClock) -> CircuitBreaker {
    CircuitBreaker::new("alloc", config(window, slow_calls, clock))
}

/// Warms `breaker` up with a few calls through its layer, then returns the
/// allocations made by [`MEASURED_CALLS`] more, after checking that every
/// call was answered and the breaker stayed CLOSED.
fn allocations_per_thousand_calls(breaker: &CircuitBreaker) -> usize {
    let mut service = breaker.layer().layer(Echo);
    for request in 0..WARM_UP_CALLS {
        assert_eq!(
            call_now(&mut service, request),
            Some(request),
            "warm-up call failed"
        );
    }
    let mut answered = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            if call_now(&mut service, black_box(request)) == Some(request) {
                answered += 1;
            }
        }
    });
    assert_eq!(
        answered, MEASURED_CALLS,
        "every call is answered by the inner service"
    );
    assert_eq!(breaker.state(), CircuitState::Closed);
    allocations
}

#[test]
fn counting_allocator_counts_allocations_on_this_thread() {
    let allocations = allocations_during(|| {
        drop(black_box(Box::new(black_box(7_u64))));
    });
    assert_eq!(
        allocations, 1,
        "a zero count elsewhere in this file would mean nothing"
    );
}

#[test]
fn closed_call_through_count_window_allocates_nothing() {
    let breaker = breaker(SlidingWindow::count(100), false, CallClock::Tokio);
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_call_through_count_window_timing_slow_calls_with_tokio_clock_allocates_nothing() {
    let breaker = breaker(SlidingWindow::count(100), true, CallClock::Tokio);
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_call_through_count_window_timing_slow_calls_with_coarse_clock_allocates_nothing() {
    // The first read of the coarse clock starts its thread (an allocation);
    // the warm-up calls take that.
    let breaker = breaker(SlidingWindow::count(100), true, CallClock::Coarse);
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_call_through_time_window_allocates_nothing() {
    let breaker = breaker(SlidingWindow::time(10), false, CallClock::Tokio);
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_call_through_time_window_timing_slow_calls_allocates_nothing() {
    let breaker = breaker(SlidingWindow::time(10), true, CallClock::Tokio);
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_call_through_consecutive_failures_window_allocates_nothing() {
    let breaker = breaker(
        SlidingWindow::consecutive_failures(5),
        false,
        CallClock::Tokio,
    );
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_call_through_static_breaker_allocates_nothing() {
    let config = config(SlidingWindow::count(100), false, CallClock::Tokio);
    let breaker = CircuitBreaker::new_static("alloc-static", config);
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}

#[test]
fn closed_try_acquire_and_record_success_allocate_nothing() {
    let breaker = breaker(SlidingWindow::count(100), false, CallClock::Tokio);
    let record_success = || match breaker.try_acquire() {
        Ok(permit) => {
            permit.record(Outcome::Success);
            true
        }
        Err(_) => false,
    };
    for _ in 0..WARM_UP_CALLS {
        assert!(record_success(), "a CLOSED breaker rejected a warm-up call");
    }
    let mut admitted = 0;
    let allocations = allocations_during(|| {
        for _ in 0..MEASURED_CALLS {
            admitted += u64::from(record_success());
        }
    });
    assert_eq!(
        admitted, MEASURED_CALLS,
        "a CLOSED breaker admits every call"
    );
    assert_eq!(allocations, 0);
    assert_eq!(
        breaker.metrics().successful_calls,
        100,
        "the window holds the last 100 calls"
    );
}

/// The bytes `CircuitBreaker::new` allocates with a count window of 100
/// calls and `event_capacity` events per subscriber.
fn breaker_bytes(event_capacity: usize) -> usize {
    let config = CircuitBreakerConfig::builder()
        .sliding_window(SlidingWindow::count(100))
        .event_capacity(event_capacity)
        .build()
        .unwrap();
    let name: std::sync::Arc<str> = "payments".into();
    bytes_allocated_during(|| {
        black_box(CircuitBreaker::new(name, config));
    })
}

#[test]
fn a_breaker_without_subscribers_allocates_no_event_buffer() {
    let small = breaker_bytes(256);
    let huge = breaker_bytes(palisade::circuit_breaker::MAX_EVENT_CAPACITY);
    assert_eq!(small, huge, "the event capacity costs nothing unsubscribed");
    // 19 KB when the 256-slot buffer was allocated up front; under 8 KB
    // now (the count window, striped counters, the eight reference-counted
    // call stripes of 256 bytes each and the OPEN snapshot).
    // With the `metrics` feature the breaker also builds its metric keys
    // (names and labels) once, when it is created.
    let bound = if cfg!(feature = "metrics") {
        12 * 1024
    } else {
        8 * 1024
    };
    assert!(small < bound, "a breaker takes {small} bytes");

    let breaker = CircuitBreaker::new(
        "payments",
        CircuitBreakerConfig::builder()
            .event_capacity(256)
            .build()
            .unwrap(),
    );
    let mut events = None;
    let subscribing = bytes_allocated_during(|| events = Some(breaker.subscribe()));
    // Its channel, with a first block of 32 event slots (it grows by such
    // blocks up to `event_capacity` as events wait in it).
    assert!(
        subscribing >= 32 * std::mem::size_of::<usize>(),
        "subscribe() allocates the subscriber's channel: {subscribing} bytes"
    );
    breaker.transition_to_forced_open();
    let event = events
        .unwrap()
        .try_recv()
        .expect("an event after subscribing");
    assert_eq!(&*event.breaker, "payments");
}

/// The allocations [`MEASURED_CALLS`] rejected calls through `breaker`'s
/// layer make, after checking that each was rejected with `BreakerOpen`.
fn allocations_per_thousand_rejections(breaker: &CircuitBreaker) -> usize {
    let mut service = breaker.layer().layer(Echo);
    let mut rejected = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            if let Err(error) = echo::call_now(&mut service, black_box(request)) {
                rejected += u64::from(
                    error
                        .downcast_ref::<palisade::circuit_breaker::BreakerOpen>()
                        .is_some(),
                );
            }
        }
    });
    assert_eq!(rejected, MEASURED_CALLS, "every call is rejected");
    allocations
}

#[test]
fn an_open_rejection_allocates_only_the_boxed_error() {
    let breaker = breaker(SlidingWindow::count(100), false, CallClock::Tokio);
    breaker.transition_to_open().expect("CLOSED -> OPEN");
    assert!(allocations_per_thousand_rejections(&breaker) <= MEASURED_CALLS as usize);
}

#[test]
fn a_forced_open_rejection_allocates_only_the_boxed_error() {
    let breaker = breaker(SlidingWindow::count(100), false, CallClock::Tokio);
    breaker.transition_to_forced_open();
    assert!(allocations_per_thousand_rejections(&breaker) <= MEASURED_CALLS as usize);
}

#[test]
fn an_open_rejection_of_a_wait_armed_in_a_runtime_allocates_only_the_boxed_error() {
    // Entered in a runtime, the OPEN wait is armed: rejections read the
    // coarse clock, not tokio's. The runtime is kept, not driven.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let breaker = breaker(SlidingWindow::count(100), false, CallClock::Tokio);
    {
        let _entered = runtime.enter();
        breaker
            .transition_to_open_for(Duration::from_secs(3600))
            .expect("CLOSED -> OPEN");
    }
    assert!(allocations_per_thousand_rejections(&breaker) <= MEASURED_CALLS as usize);
}

#[test]
fn an_open_rejection_of_a_static_breaker_allocates_only_the_boxed_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let config = config(SlidingWindow::count(100), false, CallClock::Tokio);
    let breaker = CircuitBreaker::new_static("alloc-static", config);
    {
        let _entered = runtime.enter();
        breaker
            .transition_to_open_for(Duration::from_secs(3600))
            .expect("CLOSED -> OPEN");
    }
    assert!(allocations_per_thousand_rejections(&breaker) <= MEASURED_CALLS as usize);
}

/// The boxed error is small: a reference to the breaker, the end of the
/// wait and the state (the name and the `Rejected` marker stay with the
/// breaker; it was 56 bytes with them).
#[test]
fn the_rejection_error_is_six_words_at_most() {
    assert!(std::mem::size_of::<palisade::circuit_breaker::BreakerOpen>() <= 48);
}

#[test]
fn closed_call_with_an_idle_subscriber_allocates_nothing() {
    let breaker = breaker(SlidingWindow::count(100), false, CallClock::Tokio);
    let _transitions = breaker.subscribe();
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
    // A subscriber to every call's outcome is sent an event per call until
    // its buffer is full: the channel allocates a block of 32 slots as it
    // grows to `event_capacity` (256). Once full, a call counts the event
    // the idle subscriber missed and allocates nothing.
    let _every_call = breaker.subscribe_all();
    let filling = allocations_during(|| {
        let mut service = breaker.layer().layer(Echo);
        for request in 0..256 {
            assert_eq!(call_now(&mut service, request), Some(request));
        }
    });
    assert!(
        filling <= 256 / 32,
        "{filling} allocations filling the buffer"
    );
    assert_eq!(allocations_per_thousand_calls(&breaker), 0);
}
