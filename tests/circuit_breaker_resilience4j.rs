//! resilience4j's state-machine scenarios, translated: a user who ports a
//! resilience4j configuration and its tests gets the same decisions, the
//! same metrics and the same events (where palisade deliberately differs,
//! the `circuit_breaker` module docs say so in "coming from resilience4j").

use std::time::Duration;

use palisade::circuit_breaker::{
    BreakDuration, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerConfigBuilder,
    CircuitBreakerEvent, CircuitBreakerEventKind as Kind, CircuitState, SlidingWindow,
    TransitionReason, TripReason,
};
use palisade::classify::{ClassifyExt, DefaultClassifier, Outcome};

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

// ---- opening for a given time ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn transition_to_open_for_waits_the_given_time_instead_of_the_configured_one() {
    let b = breaker(
        CircuitBreakerConfig::builder()
            .wait_duration_in_open_state(Duration::from_secs(60))
            .break_duration(BreakDuration::exponential(2.0, Duration::from_secs(600))),
    );
    b.transition_to_open_for(5 * SECOND)
        .expect("CLOSED -> OPEN");
    assert_eq!(b.metrics().retry_in, Some(5 * SECOND));
    b.transition_to_open_for(3 * SECOND)
        .expect("OPEN -> OPEN, a new wait");
    assert_eq!(b.metrics().retry_in, Some(3 * SECOND));
    tokio::time::advance(3 * SECOND).await;
    assert!(b.try_acquire().is_ok(), "the first trial call");
    assert_eq!(b.state(), CircuitState::HalfOpen);
    b.transition_to_open().expect("HALF_OPEN -> OPEN");
    assert_eq!(
        b.metrics().retry_in,
        Some(Duration::from_secs(60)),
        "a given wait is not a trip: the growing wait starts at its base"
    );
}

#[tokio::test(start_paused = true)]
async fn transition_to_open_until_waits_until_the_instant() {
    let b = CircuitBreaker::with_defaults("r4j");
    let deadline = tokio::time::Instant::now() + 7 * SECOND;
    b.transition_to_open_until(deadline)
        .expect("CLOSED -> OPEN");
    assert_eq!(b.metrics().retry_in, Some(7 * SECOND));
    tokio::time::advance(6 * SECOND).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(SECOND).await;
    assert!(b.try_acquire().is_ok());

    b.transition_to_metrics_only();
    assert!(
        b.transition_to_open_for(SECOND).is_err(),
        "refused from METRICS_ONLY"
    );
    assert!(b.transition_to_open_until(deadline).is_err());
}

// ---- where the HALF_OPEN max wait leads ---------------------------------------------

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_can_lead_to_closed() {
    let b = breaker(
        CircuitBreakerConfig::builder()
            .permitted_number_of_calls_in_half_open_state(2)
            .max_wait_duration_in_half_open_state(5 * SECOND)
            .transition_to_state_after_wait_duration(CircuitState::Closed),
    );
    b.transition_to_open().unwrap();
    b.transition_to_half_open().unwrap();
    let mut events = b.subscribe();
    tokio::time::sleep(5 * SECOND).await;
    tokio::task::yield_now().await;
    assert_eq!(b.state(), CircuitState::Closed);
    assert!(events.drain().iter().any(|e| e.kind
        == Kind::StateTransition {
            from: CircuitState::HalfOpen,
            to: CircuitState::Closed,
            reason: TransitionReason::MaxWaitInHalfOpenElapsed,
        }));
}

#[test]
fn state_after_max_wait_must_be_open_or_closed() {
    let err = CircuitBreakerConfig::builder()
        .transition_to_state_after_wait_duration(CircuitState::ForcedOpen)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "transition_to_state_after_wait_duration");
    assert_eq!(
        CircuitBreakerConfig::default().transition_to_state_after_wait_duration(),
        CircuitState::Open
    );
}

// ---- threshold-exceeded events -------------------------------------------------------

fn kinds(events: Vec<CircuitBreakerEvent>) -> Vec<Kind> {
    events
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| !matches!(k, Kind::Success { .. } | Kind::Failure { .. }))
        .collect()
}

fn two_call_window() -> CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::builder()
        .sliding_window(SlidingWindow::count(2))
        .minimum_number_of_calls(2)
        .slow_call_duration_threshold(SECOND)
}

#[test]
fn closed_publishes_failure_rate_exceeded_before_tripping() {
    let b = breaker(two_call_window());
    let mut events = b.subscribe();
    record(&b, &[FAILURE, FAILURE]);
    assert_eq!(
        kinds(events.drain()),
        [
            Kind::FailureRateExceeded {
                failure_rate: 100.0
            },
            Kind::StateTransition {
                from: CircuitState::Closed,
                to: CircuitState::Open,
                reason: TransitionReason::Tripped(TripReason::FailureRate(100.0)),
            },
        ]
    );
}

#[test]
fn metrics_only_publishes_each_exceeded_threshold_once_per_stay() {
    let b = breaker(two_call_window());
    b.transition_to_metrics_only();
    let mut events = b.subscribe();
    record(&b, &[FAILURE, FAILURE, FAILURE]);
    let slow = |b: &CircuitBreaker| {
        b.try_acquire()
            .unwrap()
            .on_result(2 * SECOND, Outcome::Success)
    };
    slow(&b);
    slow(&b);
    slow(&b);
    assert_eq!(b.state(), CircuitState::MetricsOnly, "never trips");
    assert_eq!(
        kinds(events.drain()),
        [
            Kind::FailureRateExceeded {
                failure_rate: 100.0
            },
            Kind::SlowCallRateExceeded {
                slow_call_rate: 100.0
            },
        ]
    );
    b.transition_to_closed();
    b.transition_to_metrics_only();
    record(&b, &[FAILURE, FAILURE]);
    assert!(
        kinds(events.drain()).contains(&Kind::FailureRateExceeded {
            failure_rate: 100.0
        }),
        "a new stay reports again"
    );
}

// ---- a result that forces OPEN -------------------------------------------------------------

#[test]
fn a_result_matching_the_predicate_opens_a_closed_breaker() {
    let classifier = DefaultClassifier
        .transition_to_open_on_result(|r: Result<&u16, &std::io::Error>| matches!(r, Ok(&429)));
    let b = CircuitBreaker::with_defaults("r4j");
    let mut events = b.subscribe();
    b.try_acquire()
        .unwrap()
        .record_result(Ok(&200), &classifier);
    assert_eq!(b.state(), CircuitState::Closed);
    b.try_acquire()
        .unwrap()
        .record_result(Ok(&429), &classifier);
    assert_eq!(b.state(), CircuitState::Open);
    assert!(kinds(events.drain()).contains(&Kind::StateTransition {
        from: CircuitState::Closed,
        to: CircuitState::Open,
        reason: TransitionReason::ResultPredicate,
    }));
    let m = b.metrics();
    assert_eq!(
        (m.buffered_calls, m.successful_calls),
        (2, 2),
        "both outcomes recorded first"
    );
}

// ---- initial state ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_breaker_can_start_open_or_half_open() {
    let open = breaker(
        CircuitBreakerConfig::builder()
            .initial_state(CircuitState::Open)
            .wait_duration_in_open_state(10 * SECOND),
    );
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(
        open.try_acquire().unwrap_err().retry_in(),
        Some(10 * SECOND)
    );

    let half_open = breaker(
        CircuitBreakerConfig::builder()
            .initial_state(CircuitState::HalfOpen)
            .permitted_number_of_calls_in_half_open_state(1),
    );
    let trial = half_open.try_acquire().expect("one trial call");
    assert!(half_open.try_acquire().is_err());
    trial.record(Outcome::Success);
    assert_eq!(half_open.state(), CircuitState::Closed);

    let metrics_only =
        breaker(CircuitBreakerConfig::builder().initial_state(CircuitState::MetricsOnly));
    assert_eq!(metrics_only.state(), CircuitState::MetricsOnly);
    assert_eq!(
        CircuitBreakerConfig::default().initial_state(),
        CircuitState::Closed
    );
}

// ---- outcomes timed outside the breaker, released permissions ---------------------------------

#[test]
fn on_result_records_the_given_duration() {
    let b = breaker(two_call_window().slow_call_rate_threshold(50.0));
    b.try_acquire()
        .unwrap()
        .on_result(Duration::from_millis(200), Outcome::Success);
    let m = b.metrics();
    assert_eq!(
        (m.slow_calls, m.total_call_duration),
        (0, Duration::from_millis(200))
    );
    b.try_acquire()
        .unwrap()
        .on_result(3 * SECOND, Outcome::Success);
    let m = b.metrics();
    assert_eq!(m.state, CircuitState::Open, "one of two calls slow: 50 %");
    assert_eq!(m.slow_calls, 1);
    assert_eq!(m.total_call_duration, Duration::from_millis(3200));
    assert_eq!(m.average_call_duration, Some(Duration::from_millis(1600)));
}

#[test]
fn untimed_calls_report_no_duration() {
    let b = CircuitBreaker::with_defaults("r4j");
    record(&b, &[Outcome::Success, FAILURE]);
    let m = b.metrics();
    assert_eq!(
        (m.total_call_duration, m.average_call_duration),
        (Duration::ZERO, None)
    );
}

#[test]
fn a_released_permission_gives_its_trial_slot_back() {
    let b =
        breaker(CircuitBreakerConfig::builder().permitted_number_of_calls_in_half_open_state(1));
    b.transition_to_open().unwrap();
    b.transition_to_half_open().unwrap();
    b.try_acquire().unwrap().release();
    assert_eq!(b.metrics().trial_permits_available, Some(1));
    assert_eq!(b.metrics().buffered_calls, 0, "nothing recorded");
}

// ---- not_permitted_calls, per state -------------------------------------------------------------

#[test]
fn not_permitted_calls_are_counted_per_state() {
    let b =
        breaker(CircuitBreakerConfig::builder().permitted_number_of_calls_in_half_open_state(1));
    b.transition_to_forced_open();
    for _ in 0..3 {
        assert!(b.try_acquire().is_err());
    }
    assert_eq!(b.metrics().not_permitted_calls, 3);
    b.transition_to_half_open().unwrap();
    assert_eq!(
        b.metrics().not_permitted_calls,
        0,
        "a new state counts afresh"
    );
    let trial = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    trial.record(FAILURE);
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(
        b.metrics().not_permitted_calls,
        1,
        "OPEN keeps the figures of the trial that sent it there"
    );
    assert!(b.try_acquire().is_err());
    assert_eq!(b.metrics().not_permitted_calls, 2);
    b.reset();
    assert_eq!(b.metrics().not_permitted_calls, 0, "reset clears it");
}

// ---- reset ----------------------------------------------------------------------------------------

#[test]
fn reset_from_closed_publishes_a_reset_event_and_no_transition() {
    let b = CircuitBreaker::with_defaults("r4j");
    let mut events = b.subscribe();
    b.reset();
    assert_eq!(kinds(events.drain()), [Kind::Reset]);

    b.transition_to_forced_open();
    events.drain();
    b.reset();
    assert_eq!(
        kinds(events.drain()),
        [
            Kind::StateTransition {
                from: CircuitState::ForcedOpen,
                to: CircuitState::Closed,
                reason: TransitionReason::Reset,
            },
            Kind::Reset,
        ]
    );
}

// ---- record and ignore lists ------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("no such customer")]
struct UnknownCustomer;

#[tokio::test]
async fn errors_are_classified_by_type_as_record_and_ignore_lists() {
    use palisade::classify::by_error;
    use std::io;

    let b = breaker(
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(2))
            .minimum_number_of_calls(2),
    );
    let classifier = by_error().record::<io::Error>().ignore::<UnknownCustomer>();
    let fail = |e: palisade::BoxError| async move { Err::<(), _>(e) };
    let _ = b.run(&classifier, || fail(UnknownCustomer.into())).await;
    let _ = b.run(&classifier, || fail("bad request".into())).await;
    let m = b.metrics();
    assert_eq!(
        (m.buffered_calls, m.failed_calls),
        (1, 0),
        "ignored, then an unlisted error counted as a success"
    );
    let _ = b
        .run(&classifier, || fail(io::Error::other("reset").into()))
        .await;
    assert_eq!(b.metrics().failed_calls, 1);
    assert_eq!(b.state(), CircuitState::Open, "1 of 2 failed: 50 %");
}

// ---- names -------------------------------------------------------------------------------------

#[test]
fn try_new_rejects_names_that_cannot_label_errors_events_and_metrics() {
    use palisade::bulkhead::{Bulkhead, BulkheadConfig};
    use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
    use palisade::retry::{Retry, RetryConfig};

    for bad in ["", " padded", "line\nbreak"] {
        let err = CircuitBreaker::try_new(bad, CircuitBreakerConfig::default()).unwrap_err();
        assert_eq!(
            (err.component(), err.field()),
            ("circuit breaker", "name"),
            "{bad:?}"
        );
        let err = Bulkhead::try_new(bad, BulkheadConfig::default()).unwrap_err();
        assert_eq!(err.field(), "name");
        let err = RateLimiter::try_new(bad, RateLimiterConfig::default()).unwrap_err();
        assert_eq!(err.field(), "name");
        let err = Retry::try_new(bad, RetryConfig::default()).unwrap_err();
        assert_eq!(err.field(), "name");
    }
    let long = "x".repeat(palisade::circuit_breaker::MAX_NAME_LEN + 1);
    assert!(CircuitBreaker::try_new(long, CircuitBreakerConfig::default()).is_err());
    let b = CircuitBreaker::try_new("inventory", CircuitBreakerConfig::default()).unwrap();
    assert_eq!(b.name(), "inventory");
}
