//! The circuit breaker, driven through its tower service with paused time.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade::circuit_breaker::{
    BreakDuration, BreakerOpen, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerEvent,
    CircuitBreakerEventKind, CircuitBreakerLayer, CircuitBreakerRegistry, CircuitState,
    SlidingWindow, TransitionReason, TripReason,
};
use palisade::classify::{ClassifyExt, DefaultClassifier, Outcome};
use palisade::{BoxError, ConfigError, find_cause, is_caused_by};
use support::{Backend, Gate, Reply};
use tower::{Layer, Service, ServiceExt};

const SECOND: Duration = Duration::from_secs(1);

fn config() -> palisade::circuit_breaker::CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::builder()
}

fn breaker(builder: palisade::circuit_breaker::CircuitBreakerConfigBuilder) -> CircuitBreaker {
    CircuitBreaker::new("backend", builder.build().expect("valid config"))
}

type Guarded = palisade::circuit_breaker::CircuitBreakerService<Backend, DefaultClassifier>;

fn guard(breaker: &CircuitBreaker) -> (Guarded, Backend) {
    let backend = Backend::default();
    (breaker.layer().layer(backend.clone()), backend)
}

async fn call(service: &mut Guarded, reply: Reply) -> Result<&'static str, BoxError> {
    service.ready().await?.call(reply).await
}

async fn calls(service: &mut Guarded, replies: &[Reply]) {
    for reply in replies {
        let _ = call(service, reply.clone()).await;
    }
}

fn rejected(result: Result<&'static str, BoxError>) -> BreakerOpen {
    let err = result.expect_err("call should be rejected");
    err.downcast_ref::<BreakerOpen>()
        .unwrap_or_else(|| panic!("expected BreakerOpen, got {err}"))
        .clone()
}

fn is_backend_failure(result: &Result<&'static str, BoxError>) -> bool {
    matches!(result, Err(e) if e.to_string() == "backend failed")
}

/// Moves a CLOSED breaker to HALF_OPEN the way resilience4j allows: through
/// OPEN (CLOSED to HALF_OPEN is refused).
fn open_then_half_open(b: &CircuitBreaker) {
    b.transition_to_open().expect("CLOSED -> OPEN");
    b.transition_to_half_open().expect("OPEN -> HALF_OPEN");
}

/// Trips `breaker` (count window, minimum 1) open with one failure.
async fn trip(service: &mut Guarded) {
    let _ = call(service, Reply::Err).await;
    assert_eq!(service.breaker().state(), CircuitState::Open);
}

// ---- sliding windows ------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn count_window_trips_when_failure_rate_reaches_threshold() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4),
    );
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::Ok, Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Closed);
    // 2 of 4 = 50 %, which reaches the (default) 50 % threshold.
    calls(&mut svc, &[Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_judges_only_the_last_n_calls() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4),
    );
    let (mut svc, _) = guard(&b);
    // One failure, then successes that push it out of the window.
    calls(
        &mut svc,
        &[Reply::Err, Reply::Ok, Reply::Ok, Reply::Ok, Reply::Ok],
    )
    .await;
    assert_eq!(b.metrics().failed_calls, 0);
    assert_eq!(b.metrics().buffered_calls, 4);
    // One failure in the last four: 25 %.
    calls(&mut svc, &[Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.metrics().failure_rate, Some(25.0));
}

#[tokio::test(start_paused = true)]
async fn minimum_number_of_calls_delays_evaluation() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(10))
            .minimum_number_of_calls(5),
    );
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Err, Reply::Err, Reply::Err, Reply::Err]).await;
    // 100 % failures, but only 4 of the 5 calls needed.
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.metrics().failure_rate, None);
    calls(&mut svc, &[Reply::Ok]).await;
    // Even a success can trip once the minimum is reached: 4/5 = 80 %.
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_is_capped_at_count_window_size() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(3))
            .minimum_number_of_calls(100),
    );
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::Err, Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Open, "3 calls fill a window of 3");
}

#[tokio::test(start_paused = true)]
async fn time_window_trips_on_failures_within_the_window() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::time(10))
            .minimum_number_of_calls(4),
    );
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::Err]).await;
    tokio::time::advance(3 * SECOND).await;
    calls(&mut svc, &[Reply::Ok]).await;
    tokio::time::advance(3 * SECOND).await;
    assert_eq!(b.state(), CircuitState::Closed);
    calls(&mut svc, &[Reply::Err]).await; // 2 of 4 within 10 s
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_calls_older_than_its_length() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::time(5))
            .minimum_number_of_calls(3),
    );
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Err, Reply::Err]).await;
    assert_eq!(b.metrics().buffered_calls, 2);
    tokio::time::advance(5 * SECOND).await;
    // The two failures are now more than 5 s old.
    assert_eq!(b.metrics().buffered_calls, 0);
    calls(&mut svc, &[Reply::Ok, Reply::Ok, Reply::Err]).await;
    assert_eq!(
        b.state(),
        CircuitState::Closed,
        "1 of 3 calls failed in the window"
    );
    assert_eq!(b.metrics().failed_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_after_n_in_a_row() {
    let b = breaker(config().sliding_window(SlidingWindow::consecutive_failures(3)));
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Err, Reply::Err]).await;
    assert_eq!(b.metrics().consecutive_failures, Some(2));
    assert_eq!(b.state(), CircuitState::Closed);
    calls(&mut svc, &[Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_consecutive_failures() {
    let b = breaker(config().sliding_window(SlidingWindow::consecutive_failures(3)));
    let (mut svc, _) = guard(&b);
    calls(
        &mut svc,
        &[Reply::Err, Reply::Err, Reply::Ok, Reply::Err, Reply::Err],
    )
    .await;
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.metrics().consecutive_failures, Some(2));
}

// ---- slow calls -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips_the_breaker() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4)
            .slow_call_duration_threshold(2 * SECOND)
            .slow_call_rate_threshold(75.0),
    );
    let (mut svc, _) = guard(&b);
    let slow = Reply::OkAfter(3 * SECOND);
    calls(&mut svc, &[slow.clone(), slow.clone(), Reply::Ok]).await;
    assert_eq!(b.state(), CircuitState::Closed);
    calls(&mut svc, &[slow]).await; // 3 of 4 slow, all successful
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(b.metrics().slow_call_rate, Some(75.0));
    assert_eq!(b.metrics().failure_rate, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_call_exactly_at_the_slow_threshold_is_not_slow() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(2))
            .slow_call_duration_threshold(2 * SECOND)
            .slow_call_rate_threshold(50.0),
    );
    let (mut svc, _) = guard(&b);
    calls(
        &mut svc,
        &[Reply::OkAfter(2 * SECOND), Reply::OkAfter(2 * SECOND)],
    )
    .await;
    assert_eq!(b.metrics().slow_calls, 0);
    calls(
        &mut svc,
        &[Reply::OkAfter(2 * SECOND + Duration::from_nanos(1))],
    )
    .await;
    assert_eq!(b.metrics().slow_calls, 1);
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_spent_waiting_for_readiness_is_not_call_time() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1))
            .slow_call_duration_threshold(SECOND),
    );
    let (mut svc, _) = guard(&b);
    let ready = svc.ready().await.expect("ready");
    tokio::time::advance(5 * SECOND).await; // between poll_ready and call
    ready.call(Reply::Ok).await.expect("ok");
    assert_eq!(b.metrics().slow_calls, 0);
}

// ---- OPEN -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn open_rejects_without_reaching_inner_service_and_says_when_to_retry() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1))
            .wait_duration_in_open_state(10 * SECOND),
    );
    let (mut svc, backend) = guard(&b);
    trip(&mut svc).await;
    assert_eq!(backend.calls(), 1);
    tokio::time::advance(4 * SECOND).await;
    let open = rejected(call(&mut svc, Reply::Ok).await);
    assert_eq!(
        backend.calls(),
        1,
        "a rejected call never reaches the backend"
    );
    assert_eq!(open.breaker(), "backend");
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_in(), Some(6 * SECOND));
    assert_eq!(
        open.to_string(),
        "circuit breaker 'backend' is OPEN; calls are rejected for another 6.000s"
    );
    assert_eq!(b.metrics().not_permitted_calls, 1);
}

/// An OPEN wait entered in a runtime is "armed": rejections skip the state
/// clock until a timer set just before the deadline fires. With paused
/// time, `advance` fires it, so the wait still ends exactly at its
/// deadline, whether or not the deadline falls on one of tokio's
/// millisecond ticks.
#[tokio::test(start_paused = true)]
async fn an_open_wait_ends_exactly_at_its_deadline_with_paused_time() {
    for wait in [
        10 * SECOND,
        Duration::from_micros(10_000_300),
        Duration::from_millis(3),
    ] {
        let b = breaker(
            config()
                .sliding_window(SlidingWindow::count(1))
                .wait_duration_in_open_state(wait),
        );
        let (mut svc, backend) = guard(&b);
        // Off tokio's millisecond grid, so the deadline is too.
        tokio::time::advance(Duration::from_nanos(123_457)).await;
        trip(&mut svc).await;
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        let open = rejected(call(&mut svc, Reply::Ok).await);
        assert_eq!(open.retry_in(), Some(Duration::from_millis(1)), "{wait:?}");
        tokio::time::advance(Duration::from_millis(1) - Duration::from_nanos(1)).await;
        let open = rejected(call(&mut svc, Reply::Ok).await);
        assert_eq!(open.retry_in(), Some(Duration::from_nanos(1)), "{wait:?}");
        assert_eq!(b.metrics().not_permitted_calls, 2);
        tokio::time::advance(Duration::from_nanos(1)).await;
        call(&mut svc, Reply::Ok).await.expect("the wait is over");
        assert_eq!(backend.calls(), 2, "{wait:?}");
    }
}

/// A rejection's `retry_in` is the rest of the wait when asked, and its
/// message is written when displayed.
#[tokio::test(start_paused = true)]
async fn a_rejection_says_how_long_is_left_when_asked() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1))
            .wait_duration_in_open_state(10 * SECOND),
    );
    let (mut svc, _) = guard(&b);
    trip(&mut svc).await;
    let open = rejected(call(&mut svc, Reply::Ok).await);
    assert_eq!(open.retry_in(), Some(10 * SECOND));
    let deadline = open.retry_at().expect("an OPEN wait has an end");
    tokio::time::advance(3 * SECOND).await;
    assert_eq!(open.retry_in(), Some(7 * SECOND));
    assert_eq!(open.retry_at(), Some(deadline));
    assert_eq!(
        open.to_string(),
        "circuit breaker 'backend' is OPEN; calls are rejected for another 7.000s"
    );
    tokio::time::advance(10 * SECOND).await;
    assert_eq!(open.retry_in(), Some(Duration::ZERO));
}

/// A rejection answers for its breaker (name, marker, wait) after every
/// handle and service of a counted breaker is dropped, and the same of a
/// static breaker's, boxed or cloned.
#[tokio::test(start_paused = true)]
async fn a_rejection_outlives_its_breaker() {
    let config = || {
        config()
            .wait_duration_in_open_state(10 * SECOND)
            .build()
            .expect("valid config")
    };
    for breaker in [
        CircuitBreaker::new("counted", config()),
        CircuitBreaker::new_static("static", config()),
    ] {
        let name = breaker.name().to_owned();
        breaker.transition_to_open().expect("CLOSED -> OPEN");
        let (mut svc, _) = guard(&breaker);
        let error = call(&mut svc, Reply::Ok)
            .await
            .expect_err("an OPEN breaker rejects");
        let copy = error
            .downcast_ref::<BreakerOpen>()
            .expect("a BreakerOpen")
            .clone();
        drop((svc, breaker));
        tokio::time::advance(4 * SECOND).await;
        for open in [error.downcast_ref::<BreakerOpen>().unwrap(), &copy] {
            assert_eq!(open.breaker(), name);
            assert_eq!(open.state(), CircuitState::Open);
            assert_eq!(open.retry_in(), Some(6 * SECOND));
            assert_eq!(
                open.to_string(),
                format!("circuit breaker '{name}' is OPEN; calls are rejected for another 6.000s")
            );
            let marker = palisade::error::find_rejection(open).expect("a Rejected source");
            assert_eq!((marker.layer(), marker.name()), ("circuit_breaker", &*name));
            assert!(format!("{open:?}").contains(&name));
        }
        assert!(palisade::error::is_rejection(&*error));
    }
}

#[tokio::test(start_paused = true)]
async fn open_moves_to_half_open_lazily_on_first_call_after_wait() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1))
            .wait_duration_in_open_state(10 * SECOND),
    );
    let (mut svc, backend) = guard(&b);
    trip(&mut svc).await;
    tokio::time::advance(10 * SECOND).await;
    assert_eq!(
        b.state(),
        CircuitState::Open,
        "lazy: nothing moves without a call"
    );
    assert_eq!(call(&mut svc, Reply::Ok).await.expect("trial call"), "ok");
    assert_eq!(backend.calls(), 2);
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn automatic_transition_moves_to_half_open_without_a_call() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1))
            .wait_duration_in_open_state(10 * SECOND)
            .automatic_transition_from_open_to_half_open(true),
    );
    let (mut svc, _) = guard(&b);
    trip(&mut svc).await;
    tokio::time::sleep(10 * SECOND - Duration::from_millis(1)).await;
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn break_duration_grows_exponentially_on_repeated_trips_and_resets_on_close() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1))
            .permitted_number_of_calls_in_half_open_state(1)
            .wait_duration_in_open_state(SECOND)
            .break_duration(BreakDuration::exponential(2.0, 5 * SECOND)),
    );
    let (mut svc, _) = guard(&b);
    trip(&mut svc).await;
    let mut waits = vec![b.metrics().retry_in.expect("open")];
    for _ in 0..3 {
        tokio::time::advance(waits[waits.len() - 1]).await;
        let _ = call(&mut svc, Reply::Err).await; // the trial call fails
        assert_eq!(b.state(), CircuitState::Open);
        waits.push(b.metrics().retry_in.expect("open"));
    }
    assert_eq!(waits, [SECOND, 2 * SECOND, 4 * SECOND, 5 * SECOND]);
    // A successful trial closes the breaker and the next trip starts over.
    tokio::time::advance(5 * SECOND).await;
    call(&mut svc, Reply::Ok).await.expect("trial call");
    assert_eq!(b.state(), CircuitState::Closed);
    trip(&mut svc).await;
    assert_eq!(b.metrics().retry_in, Some(SECOND));
}

// ---- HALF_OPEN ----------------------------------------------------------------

fn half_open_breaker(permitted: u32) -> CircuitBreaker {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(10))
            .permitted_number_of_calls_in_half_open_state(permitted),
    );
    open_then_half_open(&b);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_exactly_permitted_calls_under_concurrent_callers() {
    let b = half_open_breaker(3);
    let (svc, backend) = guard(&b);
    let gate = Gate::new();
    let start = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut svc = svc.clone();
        let (gate, start) = (gate.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            svc.ready().await?.call(Reply::OkWhen(gate)).await
        }));
    }
    // Wait until every caller has either been rejected or is in the backend.
    while b.metrics().not_permitted_calls + (backend.calls() as u64) < 64 {
        tokio::task::yield_now().await;
    }
    assert_eq!(backend.calls(), 3);
    assert_eq!(b.metrics().not_permitted_calls, 61);
    gate.open();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert!(is_caused_by::<BreakerOpen>(&*e)),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_when_trial_calls_succeed() {
    let b = half_open_breaker(2);
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok]).await;
    assert_eq!(b.state(), CircuitState::HalfOpen);
    calls(&mut svc, &[Reply::Ok]).await;
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(
        b.metrics().buffered_calls,
        0,
        "CLOSED starts with an empty window"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_when_trial_failure_rate_reaches_threshold() {
    let b = half_open_breaker(4);
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::Err, Reply::Ok]).await;
    assert_eq!(
        b.state(),
        CircuitState::HalfOpen,
        "decides only after all 4 trials"
    );
    calls(&mut svc, &[Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_stays_closed_below_threshold() {
    let b = half_open_breaker(4);
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::Err, Reply::Ok, Reply::Ok]).await;
    assert_eq!(b.state(), CircuitState::Closed, "25 % < 50 %");
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_on_slow_trial_calls() {
    let b = breaker(
        config()
            .slow_call_duration_threshold(SECOND)
            .slow_call_rate_threshold(50.0)
            .permitted_number_of_calls_in_half_open_state(2),
    );
    open_then_half_open(&b);
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::OkAfter(2 * SECOND)]).await;
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_returns_to_open_after_max_wait() {
    let b = breaker(
        config()
            .permitted_number_of_calls_in_half_open_state(2)
            .max_wait_duration_in_half_open_state(5 * SECOND),
    );
    open_then_half_open(&b);
    let mut events = b.subscribe();
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok]).await; // one trial of two recorded: undecided
    tokio::time::sleep(5 * SECOND).await;
    tokio::task::yield_now().await;
    assert_eq!(b.state(), CircuitState::Open);
    let transitions: Vec<_> = events
        .drain()
        .into_iter()
        .filter_map(|e| match e.kind {
            CircuitBreakerEventKind::StateTransition { to, reason, .. } => Some((to, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        transitions,
        [(
            CircuitState::Open,
            TransitionReason::MaxWaitInHalfOpenElapsed
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_applies_lazily_without_a_runtime_timer() {
    let b = breaker(
        config()
            .permitted_number_of_calls_in_half_open_state(1)
            .max_wait_duration_in_half_open_state(5 * SECOND),
    );
    // Enter HALF_OPEN outside of any runtime: no timer can be scheduled.
    std::thread::scope(|s| {
        s.spawn(|| open_then_half_open(&b));
    });
    let permit = b.try_acquire().expect("the trial call");
    // (That thread read real time, a few microseconds past the paused clock.)
    tokio::time::advance(6 * SECOND).await;
    assert_eq!(b.state(), CircuitState::HalfOpen);
    assert_eq!(
        rejected(Err(b.try_acquire().unwrap_err().into())).state(),
        CircuitState::Open
    );
    drop(permit);
}

// ---- manual states --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn disabled_passes_everything_and_records_nothing() {
    let b = breaker(config().sliding_window(SlidingWindow::count(1)));
    b.transition_to_disabled();
    let (mut svc, backend) = guard(&b);
    calls(&mut svc, &[Reply::Err, Reply::Err, Reply::Err]).await;
    assert_eq!(backend.calls(), 3);
    assert_eq!(b.state(), CircuitState::Disabled);
    assert_eq!(b.metrics().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything() {
    let b = breaker(config());
    b.transition_to_forced_open();
    let (mut svc, backend) = guard(&b);
    tokio::time::advance(3600 * SECOND).await;
    let open = rejected(call(&mut svc, Reply::Ok).await);
    assert_eq!(open.state(), CircuitState::ForcedOpen);
    assert_eq!(open.retry_in(), None);
    assert_eq!(backend.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_but_never_trips() {
    let b = breaker(config().sliding_window(SlidingWindow::count(2)));
    b.transition_to_metrics_only();
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Err, Reply::Err, Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::MetricsOnly);
    let m = b.metrics();
    assert_eq!(
        (m.buffered_calls, m.failed_calls, m.failure_rate),
        (2, 2, Some(100.0))
    );
}

#[tokio::test(start_paused = true)]
async fn reset_empties_the_window_and_closes_from_any_state() {
    let b = breaker(config().sliding_window(SlidingWindow::count(2)));
    let (mut svc, _) = guard(&b);
    calls(&mut svc, &[Reply::Ok, Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Open);
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.metrics().buffered_calls, 0);
    b.transition_to_forced_open();
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn every_clone_of_the_service_shares_one_breaker() {
    let b = breaker(config().sliding_window(SlidingWindow::count(2)));
    let (mut first, backend) = guard(&b);
    let mut second = first.clone();
    let mut third = b.layer().layer(backend.clone());
    calls(&mut first, &[Reply::Err]).await;
    calls(&mut second, &[Reply::Err]).await;
    assert_eq!(b.state(), CircuitState::Open);
    rejected(call(&mut third, Reply::Ok).await);
    b.transition_to_closed();
    assert_eq!(
        call(&mut third, Reply::Ok).await.expect("closed again"),
        "ok"
    );
}

// ---- classification -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn classifier_can_count_ok_responses_as_failures() {
    let b = breaker(config().sliding_window(SlidingWindow::count(2)));
    let layer = CircuitBreakerLayer::new(b.clone())
        .with_classifier(DefaultClassifier.fail_responses(|r: &&str| *r == "ok", true));
    let mut svc = layer.layer(Backend::default());
    for _ in 0..2 {
        let _ = svc.ready().await.expect("ready").call(Reply::Ok).await;
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_are_neither_success_nor_failure() {
    let b = breaker(config().sliding_window(SlidingWindow::count(2)));
    let layer = CircuitBreakerLayer::new(b.clone())
        .with_classifier(DefaultClassifier.ignore_errors(|_: &&str| true));
    let mut svc = layer.layer(Backend::default());
    let mut events = b.subscribe_all();
    for _ in 0..5 {
        let result = svc.ready().await.expect("ready").call(Reply::Err).await;
        assert!(is_backend_failure(&result), "the error itself is returned");
    }
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.metrics().buffered_calls, 0);
    let ignored = events
        .drain()
        .into_iter()
        .filter(|e| e.kind == CircuitBreakerEventKind::Ignored)
        .count();
    assert_eq!(ignored, 5);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcome_in_half_open_gives_the_trial_slot_back() {
    let b = half_open_breaker(1);
    let permit = b.try_acquire().expect("the one trial slot");
    assert!(b.try_acquire().is_err());
    permit.record(Outcome::Ignored);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    b.try_acquire()
        .expect("slot given back")
        .record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_status_classifier_trips_on_server_errors_only() {
    use palisade::classify::HttpStatusClassifier;
    let b = breaker(config().sliding_window(SlidingWindow::count(3)));
    let layer = CircuitBreakerLayer::new(b.clone()).with_classifier(HttpStatusClassifier::new());
    let mut svc = layer.layer(tower::service_fn(|status: u16| async move {
        Ok::<_, std::io::Error>(
            http::Response::builder()
                .status(status)
                .body(())
                .expect("valid"),
        )
    }));
    for status in [404, 400, 200] {
        svc.ready()
            .await
            .expect("ready")
            .call(status)
            .await
            .expect("response");
    }
    assert_eq!(
        b.metrics().failed_calls,
        0,
        "client errors are the caller's problem"
    );
    for status in [503, 500] {
        let response = svc.ready().await.expect("ready").call(status).await;
        assert_eq!(response.expect("responses pass through").status(), status);
    }
    assert_eq!(b.state(), CircuitState::Open);
}

// ---- cancellation -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dropped_response_future_records_nothing() {
    let b = breaker(config().sliding_window(SlidingWindow::count(1)));
    let (mut svc, backend) = guard(&b);
    let future = svc
        .ready()
        .await
        .expect("ready")
        .call(Reply::ErrWhen(Gate::new()));
    drop(future);
    assert_eq!(backend.calls(), 1);
    assert_eq!(b.metrics().buffered_calls, 0);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_half_open_future_releases_its_trial_slot() {
    let b = half_open_breaker(1);
    let (mut svc, _) = guard(&b);
    let gate = Gate::new();
    let pending = svc
        .ready()
        .await
        .expect("ready")
        .call(Reply::OkWhen(gate.clone()));
    rejected(call(&mut svc.clone(), Reply::Ok).await);
    // Poll the call once so it is really in flight, then cancel it.
    let mut pending = Box::pin(pending);
    assert!(futures::poll!(&mut pending).is_pending());
    drop(pending);
    assert_eq!(b.metrics().trial_permits_available, Some(1));
    call(&mut svc, Reply::Ok)
        .await
        .expect("the slot is free again");
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn permit_taken_by_poll_ready_is_released_when_the_service_is_dropped() {
    let b = half_open_breaker(1);
    let (mut svc, backend) = guard(&b);
    svc.ready().await.expect("ready: holds the only trial slot");
    assert_eq!(b.metrics().trial_permits_available, Some(0));
    drop(svc);
    assert_eq!(b.metrics().trial_permits_available, Some(1));
    assert_eq!(backend.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clone_of_a_ready_service_does_not_share_its_permit() {
    let b = half_open_breaker(1);
    let (mut svc, _) = guard(&b);
    svc.ready().await.expect("ready");
    let mut clone = svc.clone();
    rejected(call(&mut clone, Reply::Ok).await);
    svc.call(Reply::Ok)
        .await
        .expect("the original keeps its slot");
}

#[tokio::test(start_paused = true)]
async fn outcome_of_a_call_admitted_before_a_transition_is_not_recorded() {
    let b = breaker(config().sliding_window(SlidingWindow::count(1)));
    let (mut svc, _) = guard(&b);
    let gate = Gate::new();
    let slow_failure = tokio::spawn({
        let mut svc = svc.clone();
        let gate = gate.clone();
        async move { call(&mut svc, Reply::ErrWhen(gate)).await }
    });
    tokio::task::yield_now().await;
    open_then_half_open(&b);
    gate.open();
    assert!(is_backend_failure(&slow_failure.await.expect("task")));
    // The CLOSED-era failure did not decide the HALF_OPEN trial.
    assert_eq!(b.state(), CircuitState::HalfOpen);
    assert_eq!(b.metrics().buffered_calls, 0);
    call(&mut svc, Reply::Ok).await.expect("trial");
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_error_releases_the_permit() {
    let b = half_open_breaker(1);
    let failing = tower::service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    let mut svc = b.layer().layer(FailingReady(failing));
    let Err(err) = svc.ready().await.map(|_| ()) else {
        panic!("inner not ready")
    };
    assert_eq!(err.to_string(), "not ready");
    assert_eq!(b.metrics().trial_permits_available, Some(1));
}

struct FailingReady<S>(S);
impl<S: Service<()>> Service<()> for FailingReady<S> {
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::future::Ready<Result<S::Response, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Err("not ready".into()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        unreachable!("never ready")
    }
}

// ---- observability ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn events_report_transitions_calls_and_rejections() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(2))
            .slow_call_duration_threshold(SECOND)
            .wait_duration_in_open_state(10 * SECOND),
    );
    let mut all = b.subscribe_all();
    let mut events = b.subscribe();
    let (mut svc, _) = guard(&b);
    calls(
        &mut svc,
        &[Reply::OkAfter(2 * SECOND), Reply::Err, Reply::Ok],
    )
    .await;
    let kinds = |events: Vec<CircuitBreakerEvent>| -> Vec<CircuitBreakerEventKind> {
        events
            .into_iter()
            .map(|e| {
                assert_eq!(&*e.breaker, "backend");
                e.kind
            })
            .collect()
    };
    let all = kinds(all.drain());
    // `subscribe` delivers everything but the outcomes of permitted calls.
    assert_eq!(kinds(events.drain()), all[2..]);
    assert_eq!(
        all,
        [
            CircuitBreakerEventKind::Success {
                elapsed: Some(2 * SECOND),
                slow: true
            },
            CircuitBreakerEventKind::Failure {
                elapsed: Some(Duration::ZERO),
                slow: false
            },
            CircuitBreakerEventKind::FailureRateExceeded { failure_rate: 50.0 },
            CircuitBreakerEventKind::StateTransition {
                from: CircuitState::Closed,
                to: CircuitState::Open,
                reason: TransitionReason::Tripped(TripReason::FailureRate(50.0)),
            },
            CircuitBreakerEventKind::Rejected {
                state: CircuitState::Open,
                retry_in: Some(10 * SECOND)
            },
        ]
    );
}

/// The kinds `events` holds now, with each gap as `Err(missed)`.
fn kinds_and_gaps(
    events: &mut palisade::events::EventStream<CircuitBreakerEvent>,
) -> Vec<Result<CircuitBreakerEventKind, u64>> {
    use palisade::events::TryRecvError;
    let mut kinds = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => kinds.push(Ok(event.kind)),
            Err(TryRecvError::Lagged(missed)) => kinds.push(Err(missed)),
            Err(_) => return kinds,
        }
    }
}

const SUCCESS: CircuitBreakerEventKind = CircuitBreakerEventKind::Success {
    elapsed: None,
    slow: false,
};

#[test]
fn an_idle_subscribe_all_subscriber_holds_the_first_outcomes_and_is_told_how_many_it_missed() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(2))
            .event_capacity(4),
    );
    let mut all = b.subscribe_all();
    let mut transitions = b.subscribe();
    for _ in 0..10 {
        b.try_acquire().expect("CLOSED").record(Outcome::Success);
    }
    assert_eq!(
        kinds_and_gaps(&mut all),
        [Ok(SUCCESS), Ok(SUCCESS), Ok(SUCCESS), Ok(SUCCESS), Err(6)],
        "the newest outcomes were missed and counted"
    );
    // Drained, it receives every event again, transitions too: 1 failure
    // in 2 calls trips the breaker.
    for outcome in [Outcome::Success, Outcome::Failure { retryable: true }] {
        b.try_acquire().expect("CLOSED").record(outcome);
    }
    assert_eq!(b.state(), CircuitState::Open);
    let kinds = kinds_and_gaps(&mut all);
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[0], Ok(SUCCESS));
    assert!(matches!(
        kinds[1],
        Ok(CircuitBreakerEventKind::Failure { .. })
    ));
    assert!(matches!(
        kinds[2],
        Ok(CircuitBreakerEventKind::FailureRateExceeded { .. })
    ));
    assert!(matches!(
        kinds[3],
        Ok(CircuitBreakerEventKind::StateTransition {
            to: CircuitState::Open,
            ..
        })
    ));
    // The full subscribe_all subscriber did not disturb the other one.
    assert!(matches!(
        kinds_and_gaps(&mut transitions)[..],
        [
            Ok(CircuitBreakerEventKind::FailureRateExceeded { .. }),
            Ok(CircuitBreakerEventKind::StateTransition { .. })
        ]
    ));
}

#[test]
fn a_full_subscriber_misses_no_event_for_calls_in_disabled() {
    let b = breaker(config().event_capacity(1));
    let mut all = b.subscribe_all();
    b.transition_to_disabled();
    for _ in 0..5 {
        b.try_acquire().expect("DISABLED").record(Outcome::Success);
    }
    b.transition_to_closed();
    b.try_acquire().expect("CLOSED").record(Outcome::Success);
    let kinds = kinds_and_gaps(&mut all);
    // Held: the transition to DISABLED; missed: the one back to CLOSED and
    // the CLOSED call's outcome, not the calls in DISABLED (which publish
    // nothing).
    assert!(matches!(
        kinds[..],
        [
            Ok(CircuitBreakerEventKind::StateTransition {
                to: CircuitState::Disabled,
                ..
            }),
            Err(2)
        ]
    ));
}

#[tokio::test(start_paused = true)]
async fn metrics_snapshot_reports_rates_and_counts() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(10))
            .minimum_number_of_calls(4)
            .failure_rate_threshold(80.0)
            .slow_call_duration_threshold(SECOND)
            .slow_call_rate_threshold(90.0),
    );
    let (mut svc, _) = guard(&b);
    calls(
        &mut svc,
        &[Reply::Ok, Reply::Err, Reply::ErrAfter(2 * SECOND)],
    )
    .await;
    let m = b.metrics();
    assert_eq!(
        (m.failure_rate, m.slow_call_rate),
        (None, None),
        "below minimum calls"
    );
    calls(&mut svc, &[Reply::OkAfter(2 * SECOND)]).await;
    let m = b.metrics();
    assert_eq!(m.state, CircuitState::Closed);
    assert_eq!(m.failure_rate, Some(50.0));
    assert_eq!(m.slow_call_rate, Some(50.0));
    assert_eq!(
        (
            m.buffered_calls,
            m.failed_calls,
            m.slow_calls,
            m.successful_calls,
            m.not_permitted_calls
        ),
        (4, 2, 2, 2, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn registry_creates_breakers_on_first_use_and_lists_metrics() {
    let registry = CircuitBreakerRegistry::new(
        config()
            .sliding_window(SlidingWindow::count(1))
            .build()
            .expect("valid"),
    );
    let users = registry.breaker("users");
    assert!(registry.breaker("users").ptr_eq(&users));
    let custom = registry.breaker_with("payments", || {
        config()
            .sliding_window(SlidingWindow::count(5))
            .build()
            .expect("valid")
    });
    assert_eq!(custom.config().sliding_window(), SlidingWindow::count(5));
    users
        .try_acquire()
        .expect("closed")
        .record(Outcome::Failure { retryable: true });
    let listed: Vec<_> = registry
        .metrics()
        .into_iter()
        .map(|(name, m)| (name, m.state))
        .collect();
    assert_eq!(
        listed,
        [
            ("payments".to_owned(), CircuitState::Closed),
            ("users".to_owned(), CircuitState::Open)
        ]
    );
    assert!(registry.remove("users").is_some());
    assert!(
        !registry.breaker("users").ptr_eq(&users),
        "re-created after removal"
    );
}

// ---- errors ----------------------------------------------------------------------------

#[test]
fn config_rejects_invalid_values_naming_the_field() {
    let check = |result: Result<CircuitBreakerConfig, ConfigError>, field: &str| {
        let err = result.expect_err(field);
        assert_eq!(err.field(), field, "{err}");
        assert_eq!(err.component(), "circuit breaker");
    };
    check(
        config().failure_rate_threshold(0.0).build(),
        "failure_rate_threshold",
    );
    check(
        config().failure_rate_threshold(100.5).build(),
        "failure_rate_threshold",
    );
    check(
        config().failure_rate_threshold(f32::NAN).build(),
        "failure_rate_threshold",
    );
    check(
        config()
            .slow_call_duration_threshold(SECOND)
            .slow_call_rate_threshold(-1.0)
            .build(),
        "slow_call_rate_threshold",
    );
    check(
        config().slow_call_rate_threshold(50.0).build(),
        "slow_call_rate_threshold",
    );
    check(
        config()
            .slow_call_duration_threshold(Duration::ZERO)
            .build(),
        "slow_call_duration_threshold",
    );
    check(
        config().sliding_window(SlidingWindow::count(0)).build(),
        "sliding_window",
    );
    check(
        config()
            .sliding_window(SlidingWindow::count(1 << 21))
            .build(),
        "sliding_window",
    );
    check(
        config().sliding_window(SlidingWindow::time(0)).build(),
        "sliding_window",
    );
    check(
        config().sliding_window(SlidingWindow::time(86_401)).build(),
        "sliding_window",
    );
    check(
        config()
            .sliding_window(SlidingWindow::consecutive_failures(0))
            .build(),
        "sliding_window",
    );
    check(
        config().minimum_number_of_calls(0).build(),
        "minimum_number_of_calls",
    );
    check(
        config()
            .permitted_number_of_calls_in_half_open_state(0)
            .build(),
        "permitted_number_of_calls_in_half_open_state",
    );
    check(
        config()
            .max_wait_duration_in_half_open_state(Duration::ZERO)
            .build(),
        "max_wait_duration_in_half_open_state",
    );
    check(
        config().wait_duration_in_open_state(Duration::ZERO).build(),
        "wait_duration_in_open_state",
    );
    check(
        config()
            .break_duration(BreakDuration::exponential(0.5, 60 * SECOND))
            .build(),
        "break_duration",
    );
    check(
        config()
            .break_duration(BreakDuration::exponential(f64::INFINITY, 60 * SECOND))
            .build(),
        "break_duration",
    );
    check(
        config()
            .break_duration(BreakDuration::exponential(2.0, SECOND))
            .build(),
        "break_duration",
    );
    check(config().event_capacity(0).build(), "event_capacity");

    let err = config()
        .sliding_window(SlidingWindow::count(0))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid circuit breaker configuration: `sliding_window` count window size must be 1 to 2097151, got 0"
    );
}

#[test]
fn defaults_follow_resilience4j() {
    let c = CircuitBreakerConfig::default();
    assert_eq!(c.failure_rate_threshold(), 50.0);
    assert_eq!(c.slow_call_rate_threshold(), 100.0);
    assert_eq!(c.sliding_window(), SlidingWindow::count(100));
    assert_eq!(c.minimum_number_of_calls(), 100);
    assert_eq!(c.permitted_number_of_calls_in_half_open_state(), 10);
    assert_eq!(c.wait_duration_in_open_state(), 60 * SECOND);
    assert_eq!(c.max_wait_duration_in_half_open_state(), None);
    assert!(!c.automatic_transition_from_open_to_half_open());
}

#[tokio::test(start_paused = true)]
async fn breaker_open_is_found_in_a_wrapped_box_error() {
    #[derive(Debug, thiserror::Error)]
    #[error("gateway failed")]
    struct GatewayError(#[source] BoxError);

    let b = breaker(config());
    b.transition_to_forced_open();
    let (mut svc, _) = guard(&b);
    let err = call(&mut svc, Reply::Ok).await.unwrap_err();
    let wrapped = GatewayError(err);
    assert!(is_caused_by::<BreakerOpen>(&wrapped));
    assert_eq!(
        find_cause::<BreakerOpen>(&wrapped).map(|e| e.breaker()),
        Some("backend")
    );
}

#[test]
fn counts_survive_many_threads_recording_at_once() {
    let b = breaker(
        config()
            .sliding_window(SlidingWindow::count(1000))
            .failure_rate_threshold(100.0),
    );
    let failures = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (b, failures) = (&b, &failures);
            s.spawn(move || {
                for i in 0..25_000 {
                    let fail = (i + t) % 4 == 0;
                    failures.fetch_add(usize::from(fail), Ordering::Relaxed);
                    let outcome = if fail {
                        Outcome::Failure { retryable: true }
                    } else {
                        Outcome::Success
                    };
                    b.try_acquire()
                        .expect("never trips below 100 %")
                        .record(outcome);
                }
            });
        }
    });
    let m = b.metrics();
    assert_eq!(m.buffered_calls, 1000);
    // Every fourth call failed, in each thread: the window holds about a quarter.
    assert!(
        (150..=350).contains(&m.failed_calls),
        "failed {}",
        m.failed_calls
    );
    assert_eq!(b.state(), CircuitState::Closed);
}

#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn transitions_and_rejections_are_traced_with_the_breaker_name() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let b = breaker(config().sliding_window(SlidingWindow::count(1)));
    let (mut svc, _) = guard(&b);
    trip(&mut svc).await;
    rejected(call(&mut svc, Reply::Ok).await);

    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(
        text.contains("WARN") && text.contains("circuit breaker state changed breaker=backend from=CLOSED to=OPEN reason=Tripped(FailureRate(100.0)) retry_in_ms=60000"),
        "{text}"
    );
    assert!(
        text.contains("DEBUG")
            && text.contains(
                "circuit breaker rejected a call breaker=backend state=OPEN retry_in_ms=60000"
            ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn run_records_outcomes_and_rejects_without_running_the_call() {
    use palisade::circuit_breaker::CallError;
    let b = breaker(config().sliding_window(SlidingWindow::count(1)));
    let ran = AtomicUsize::new(0);
    let attempt = || async {
        ran.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(std::io::Error::other("ledger down"))
    };
    let failed = b.run(&DefaultClassifier, attempt).await;
    assert!(matches!(failed, Err(CallError::Inner(ref e)) if e.to_string() == "ledger down"));
    assert_eq!(b.state(), CircuitState::Open);
    let rejected = b.run(&DefaultClassifier, attempt).await;
    assert!(
        matches!(rejected, Err(CallError::Rejected(ref open)) if open.state() == CircuitState::Open)
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "a rejected call does not run"
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_keys_and_reject_without_calling_the_service() {
    use palisade::circuit_breaker::KeyedCircuitBreakerLayer;
    use std::borrow::Cow;
    let registry = CircuitBreakerRegistry::new(
        config()
            .sliding_window(SlidingWindow::count(2))
            .build()
            .expect("valid"),
    );
    let backend = Backend::default();
    let layer =
        KeyedCircuitBreakerLayer::new(registry.clone(), |(host, _): &(&'static str, Reply)| {
            Cow::Borrowed(*host)
        });
    let mut svc = layer.layer(tower::service_fn({
        let mut backend = backend.clone();
        move |(_, reply): (&'static str, Reply)| backend.call(reply)
    }));
    for _ in 0..2 {
        let _ = svc
            .ready()
            .await
            .expect("ready")
            .call(("db-1", Reply::Err))
            .await;
    }
    let err = svc
        .ready()
        .await
        .expect("ready")
        .call(("db-1", Reply::Ok))
        .await
        .unwrap_err();
    assert_eq!(
        find_cause::<BreakerOpen>(&*err).map(|e| e.breaker()),
        Some("db-1")
    );
    assert_eq!(
        backend.calls(),
        2,
        "the rejected call did not reach the service"
    );
    svc.ready()
        .await
        .expect("ready")
        .call(("db-2", Reply::Ok))
        .await
        .expect("other key flows");
    let states: Vec<_> = registry
        .metrics()
        .into_iter()
        .map(|(k, m)| (k, m.state))
        .collect();
    assert_eq!(
        states,
        [
            ("db-1".to_owned(), CircuitState::Open),
            ("db-2".to_owned(), CircuitState::Closed)
        ]
    );
}
