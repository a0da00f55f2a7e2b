//! The retry layer's success path makes no allocation per call (a counting
//! global allocator watches calls whose first attempt succeeds), and its
//! response future carries only what a call answered at once needs.

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

/// Answers on its second poll, as a service that waits for I/O does.
#[derive(Clone, Copy)]
struct AnswersLater;

/// [`AnswersLater`]'s future: pending once, then its request.
struct SecondPoll {
    request: u64,
    polled: bool,
}

impl std::future::Future for SecondPoll {
    type Output = Result<u64, std::convert::Infallible>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if std::mem::replace(&mut self.polled, true) {
            return std::task::Poll::Ready(Ok(self.request));
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Service<u64> for AnswersLater {
    type Response = u64;
    type Error = std::convert::Infallible;
    type Future = SecondPoll;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        SecondPoll {
            request,
            polled: false,
        }
    }
}

/// Allocations in 100 calls (after one unmeasured) whose first attempt is
/// pending once and then succeeds, through a retry configured by `config`
/// (inside a runtime, for the timers); checks every call succeeded.
fn allocations_of_calls_that_wait_once(config: RetryConfig) -> usize {
    use std::future::Future;
    use std::task::{Context, Poll};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let retry = Retry::new("alloc", config);
    let mut service = retry.layer().layer(AnswersLater);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut call = |request: u64| {
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut response = std::pin::pin!(service.call(request));
        assert!(response.as_mut().poll(&mut cx).is_pending());
        match response.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(answer)) => answer,
            other => panic!("the second poll should answer, got {other:?}"),
        }
    };
    call(0);
    let allocations = allocations_during(|| {
        for request in 0..100 {
            black_box(call(black_box(request)));
        }
    });
    assert_eq!(retry.metrics().succeeded_without_retry, 101);
    allocations
}

#[test]
fn a_first_attempt_that_waits_allocates_nothing_without_timeouts() {
    // Only a timeout to start could need the call's box.
    assert_eq!(
        allocations_of_calls_that_wait_once(RetryConfig::default()),
        0,
        "allocations in 100 calls that waited once"
    );
}

#[test]
fn a_first_attempt_that_waits_with_an_attempt_timeout_allocates_nothing() {
    // The attempt's timer lives in the future itself.
    let config = RetryConfig::builder()
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("valid config");
    assert_eq!(
        allocations_of_calls_that_wait_once(config),
        0,
        "allocations in 100 calls that waited once"
    );
}

#[test]
fn a_first_attempt_that_waits_with_an_overall_timeout_allocates_one_box() {
    // The overall timer lives in a box, made when the attempt is first
    // pending; the attempt's timer in the future itself.
    let config = RetryConfig::builder()
        .attempt_timeout(Duration::from_secs(1))
        .overall_timeout(Duration::from_secs(5))
        .build()
        .expect("valid config");
    assert_eq!(
        allocations_of_calls_that_wait_once(config),
        100,
        "allocations in 100 calls that waited once"
    );
}

/// The response future holds the attempt in flight (16 bytes here), the
/// request copy kept for a retry (16), the `max_elapsed` start (16), the
/// step's timer slot (an `Option<Sleep>`, 112 on 64-bit Linux: kept inline
/// so that an attempt timeout allocates nothing), the box of what only a
/// retried call or an overall timeout needs (8), the shared state (8), the
/// attempt number and the reason a retry is barred: 184 bytes for a `u64`
/// request to a zero-sized service (216 before the timers were merged).
#[test]
#[cfg(target_pointer_width = "64")]
fn the_response_future_of_a_small_request_is_at_most_184_bytes() {
    let retry = Retry::new("size", RetryConfig::default());
    let mut service = retry.layer().layer(Echo);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = service.call(7);
    assert!(
        std::mem::size_of_val(&future) <= 184,
        "{} bytes",
        std::mem::size_of_val(&future)
    );
}

#[test]
fn the_counter_sees_an_allocation() {
    let allocations = allocations_during(|| {
        black_box(Box::new(black_box(7u64)));
    });
    assert_eq!(allocations, 1);
}
