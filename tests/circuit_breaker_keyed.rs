//! `KeyedCircuitBreakerLayer` keeps a bounded number of breakers (issue 12,
//! item 11): request keys are chosen by whoever sends requests, so the
//! registry must not grow with them. No runtime is needed: every call
//! answers on its first poll, or is held unpolled to stay in flight.

use std::borrow::Cow;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use futures::task::noop_waker_ref;
use palisade::BoxError;
use palisade::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerRegistry, CircuitState, DEFAULT_MAX_KEYS,
    KeyedCircuitBreakerLayer, SlidingWindow,
};
use tower::{Layer, Service};

/// A request: its key, and whether the call fails.
type Request = (String, bool);

/// Answers at once: `Err` when the request says so.
#[derive(Clone, Copy)]
struct Answer;

impl Service<Request> for Answer {
    type Response = ();
    type Error = BoxError;
    type Future = Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (_, fail): Request) -> Self::Future {
        ready(if fail { Err("failed".into()) } else { Ok(()) })
    }
}

fn keyed(
    max_keys: usize,
) -> (
    CircuitBreakerRegistry,
    impl Service<
        Request,
        Response = (),
        Error = BoxError,
        Future = impl Future<Output = Result<(), BoxError>>,
    >,
) {
    // Ten calls decide; half of them failing opens the breaker.
    let registry = CircuitBreakerRegistry::new(
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(10))
            .minimum_number_of_calls(10)
            .failure_rate_threshold(50.0)
            .build()
            .unwrap(),
    );
    let layer = KeyedCircuitBreakerLayer::new(registry.clone(), |(key, _): &Request| {
        Cow::Borrowed(key.as_str())
    })
    .with_max_keys(max_keys)
    .unwrap();
    assert_eq!(layer.max_keys(), max_keys);
    (registry, layer.layer(Answer))
}

/// One call that completes at once.
fn call<S>(service: &mut S, key: &str, fail: bool) -> Result<(), BoxError>
where
    S: Service<Request, Response = (), Error = BoxError>,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(service.poll_ready(&mut cx).is_ready());
    let mut future = std::pin::pin!(service.call((key.to_owned(), fail)));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("answers at once"),
    }
}

#[test]
fn the_keyed_map_stays_under_its_cap_over_100_000_keys_and_keeps_busy_open_and_failing_breakers() {
    const MAX_KEYS: usize = 1_000;
    let (registry, mut service) = keyed(MAX_KEYS);

    // "down" is OPEN: ten failures.
    for _ in 0..10 {
        let _ = call(&mut service, "down", true);
    }
    let down = registry.get("down").unwrap();
    assert_eq!(down.state(), CircuitState::Open);
    // "flaky" is CLOSED with failures in its window.
    call(&mut service, "flaky", true).unwrap_err();
    call(&mut service, "flaky", false).unwrap();
    let flaky = registry.get("flaky").unwrap();
    drop(flaky.clone());
    // "busy" has a call in flight: called, not yet polled.
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(service.poll_ready(&mut cx).is_ready());
    let in_flight = service.call(("busy".to_owned(), false));
    let busy = registry.get("busy").unwrap();

    for i in 0..100_000u32 {
        call(&mut service, &format!("key-{i}"), false).unwrap();
        assert!(
            registry.len() <= MAX_KEYS,
            "{} breakers after key {i}",
            registry.len()
        );
    }
    assert!(
        registry.len() > MAX_KEYS / 2,
        "evicts an eighth at a time, not everything"
    );
    assert!(
        registry.get("down").unwrap().ptr_eq(&down),
        "an OPEN breaker stays"
    );
    assert_eq!(down.state(), CircuitState::Open);
    assert!(
        registry.get("busy").unwrap().ptr_eq(&busy),
        "a breaker with a call in flight stays"
    );
    assert!(
        registry.get("flaky").unwrap().ptr_eq(&flaky),
        "a breaker with failures in its window goes after the clean ones"
    );
    assert!(
        registry.get("key-0").is_none(),
        "an early idle key was evicted"
    );
    drop(in_flight);
}

#[test]
fn with_every_breaker_busy_a_new_key_is_served_by_a_breaker_that_is_not_kept() {
    let (registry, mut service) = keyed(2);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut held = Vec::new();
    for key in ["a", "b"] {
        assert!(service.poll_ready(&mut cx).is_ready());
        held.push(service.call((key.to_owned(), false)));
    }
    assert_eq!(registry.len(), 2);

    call(&mut service, "c", false).expect("admitted");
    assert_eq!(registry.len(), 2, "the cap holds");
    assert!(registry.get("c").is_none());

    drop(held);
    call(&mut service, "c", false).unwrap();
    assert!(registry.get("c").is_some(), "idle breakers make room again");
    assert_eq!(registry.len(), 2);
}

#[test]
fn max_keys_defaults_to_10_000_and_zero_is_rejected_naming_the_field() {
    let registry = CircuitBreakerRegistry::new(CircuitBreakerConfig::default());
    let layer = KeyedCircuitBreakerLayer::new(registry, |key: &String| Cow::Borrowed(key.as_str()));
    assert_eq!(layer.max_keys(), DEFAULT_MAX_KEYS);
    assert_eq!(DEFAULT_MAX_KEYS, 10_000);
    assert_eq!(layer.with_max_keys(0).unwrap_err().field(), "max_keys");
}
