//! resilience4j's state-machine scenarios, translated: a user who ports a
//! resilience4j configuration and its tests gets the same decisions, the
//! same metrics and the same events (where palisade deliberately differs,
//! the `circuit_breaker` module docs say so in "coming from resilience4j").

use std::time::Duration;

use palisade::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerConfigBuilder, CircuitState, SlidingWindow,
};
use palisade::classify::Outcome;

const FAILURE: Outcome = Outcome::Failure { retryable: true };
const SECOND: Duration = Duration::from_secs(1);

fn breaker(builder: CircuitBreakerConfigBuilder) -> CircuitBreaker {
    CircuitBreaker::new("r4j", builder.build().expect("valid config"))
}

fn record(breaker: &CircuitBreaker, outcomes: &[Outcome]) {
    for &outcome in outcomes {
        breaker.try_acquire().expect("admitted").record(outcome);
    }
}

// ---- OPEN reports the window that tripped it ---------------------------------

#[tokio::test(start_paused = true)]
async fn open_after_a_failed_trial_reports_the_trial_calls() {
    let b = breaker(
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4)
            .permitted_number_of_calls_in_half_open_state(2)
            .wait_duration_in_open_state(SECOND),
    );
    record(&b, &[Outcome::Success, Outcome::Success, FAILURE, FAILURE]);
    assert_eq!(b.state(), CircuitState::Open);
    let m = b.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (4, 2));
    assert_eq!(m.failure_rate, Some(50.0));

    tokio::time::advance(SECOND).await;
    record(&b, &[FAILURE, Outcome::Success]);
    assert_eq!(b.state(), CircuitState::Open, "the trial failed");
    let m = b.metrics();
    assert_eq!(
        (m.buffered_calls, m.failed_calls, m.successful_calls),
        (2, 1, 1),
        "OPEN shows the trial that sent it back, not the CLOSED window"
    );
    assert_eq!(m.failure_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn open_keeps_the_time_window_that_tripped_it_after_the_window_has_passed() {
    let b = breaker(
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::time(2))
            .minimum_number_of_calls(2)
            .wait_duration_in_open_state(Duration::from_secs(30)),
    );
    record(&b, &[FAILURE, FAILURE]);
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let m = b.metrics();
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!((m.buffered_calls, m.failed_calls), (2, 2));
    assert_eq!(m.failure_rate, Some(100.0));
}

// ---- transitions resilience4j refuses ----------------------------------------

#[test]
fn closed_to_half_open_is_refused_with_a_typed_error() {
    let b = CircuitBreaker::with_defaults("r4j");
    let err = b.transition_to_half_open().unwrap_err();
    assert_eq!(
        (err.breaker(), err.from(), err.to()),
        ("r4j", CircuitState::Closed, CircuitState::HalfOpen)
    );
    assert_eq!(
        err.to_string(),
        "circuit breaker 'r4j' cannot move from CLOSED to HALF_OPEN"
    );
    assert_eq!(b.state(), CircuitState::Closed, "nothing changed");
}

#[test]
fn metrics_only_to_open_or_half_open_is_refused() {
    let b = CircuitBreaker::with_defaults("r4j");
    b.transition_to_metrics_only();
    let open = b.transition_to_open().unwrap_err();
    assert_eq!(
        (open.from(), open.to()),
        (CircuitState::MetricsOnly, CircuitState::Open)
    );
    let half_open = b.transition_to_half_open().unwrap_err();
    assert_eq!(half_open.to(), CircuitState::HalfOpen);
    assert_eq!(b.state(), CircuitState::MetricsOnly);
}

#[test]
fn transitions_resilience4j_allows_are_accepted() {
    let b = CircuitBreaker::with_defaults("r4j");
    b.transition_to_open().expect("CLOSED -> OPEN");
    b.transition_to_half_open().expect("OPEN -> HALF_OPEN");
    b.transition_to_open().expect("HALF_OPEN -> OPEN");
    b.transition_to_forced_open();
    b.transition_to_half_open()
        .expect("FORCED_OPEN -> HALF_OPEN");
    b.transition_to_disabled();
    b.transition_to_open().expect("DISABLED -> OPEN");
    assert_eq!(b.state(), CircuitState::Open);
}
