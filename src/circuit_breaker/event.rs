//! What a circuit breaker reports to its subscribers.

use std::sync::Arc;
use std::time::Duration;

use super::state::CircuitState;
use super::window::TripReason;

/// One thing that happened to a circuit breaker; delivered by
/// [`CircuitBreaker::subscribe`](super::CircuitBreaker::subscribe) (every
/// kind but the outcomes of permitted calls) and
/// [`CircuitBreaker::subscribe_all`](super::CircuitBreaker::subscribe_all)
/// (every kind).
#[derive(Debug, Clone)]
pub struct CircuitBreakerEvent {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// What happened.
    pub kind: CircuitBreakerEventKind,
}

/// The kinds of [`CircuitBreakerEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CircuitBreakerEventKind {
    /// The breaker changed state.
    StateTransition {
        /// State before.
        from: CircuitState,
        /// State after.
        to: CircuitState,
        /// Why.
        reason: TransitionReason,
    },
    /// A permitted call succeeded. `elapsed` is measured when slow calls are
    /// detected or the window is time-based, `None` otherwise. Delivered
    /// only by [`subscribe_all`](super::CircuitBreaker::subscribe_all), as
    /// are `Failure` and `Ignored`.
    Success {
        /// How long the call took, when timed.
        elapsed: Option<Duration>,
        /// Whether it took longer than the slow-call threshold.
        slow: bool,
    },
    /// A permitted call failed (as the classifier decided).
    Failure {
        /// How long the call took, when timed.
        elapsed: Option<Duration>,
        /// Whether it took longer than the slow-call threshold.
        slow: bool,
    },
    /// A permitted call ended in an outcome the classifier ignores.
    Ignored,
    /// The failure rate reached `failure_rate_threshold`: published when
    /// CLOSED trips on it (just before the transition to OPEN), and once
    /// per stay in METRICS_ONLY, which reports it instead of tripping
    /// (resilience4j's `FAILURE_RATE_EXCEEDED`).
    FailureRateExceeded {
        /// The failure rate, in percent.
        failure_rate: f32,
    },
    /// The slow-call rate reached `slow_call_rate_threshold`; published as
    /// [`FailureRateExceeded`](Self::FailureRateExceeded) is
    /// (resilience4j's `SLOW_CALL_RATE_EXCEEDED`).
    SlowCallRateExceeded {
        /// The slow-call rate, in percent.
        slow_call_rate: f32,
    },
    /// [`reset`](super::CircuitBreaker::reset) was called. From any state
    /// but CLOSED a [`StateTransition`](Self::StateTransition) to CLOSED
    /// comes first; from CLOSED this event is the only one.
    Reset,
    /// A call was rejected without reaching the service.
    Rejected {
        /// The state that rejected it.
        state: CircuitState,
        /// Time until a trial call will be let through, when known.
        retry_in: Option<Duration>,
    },
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TransitionReason {
    /// CLOSED tripped to OPEN (or a HALF_OPEN trial failed) for this reason.
    Tripped(TripReason),
    /// The wait in OPEN is over; trial calls may go through.
    WaitDurationElapsed,
    /// Every HALF_OPEN trial call was recorded and the rates stayed under
    /// their thresholds.
    TrialCallsSucceeded,
    /// HALF_OPEN lasted `max_wait_duration_in_half_open_state` without a decision.
    MaxWaitInHalfOpenElapsed,
    /// An operator called a `transition_to_*` method.
    Manual,
    /// An operator called [`reset`](super::CircuitBreaker::reset).
    Reset,
    /// A call's result matched the classifier's
    /// [`transition_to_open_on_result`](crate::classify::ClassifyExt::transition_to_open_on_result)
    /// predicate while CLOSED.
    ResultPredicate,
    /// The breaker was created in this state
    /// ([`initial_state`](super::CircuitBreakerConfigBuilder::initial_state)).
    InitialState,
}
