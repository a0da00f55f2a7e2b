//! A point-in-time view of a circuit breaker.

use std::time::Duration;

use super::state::CircuitState;

/// What a breaker's window holds and what it has rejected, from
/// [`CircuitBreaker::metrics`](super::CircuitBreaker::metrics).
///
/// In CLOSED, DISABLED, FORCED_OPEN and METRICS_ONLY the figures are those
/// of the sliding window; in HALF_OPEN those of the trial calls. OPEN keeps,
/// frozen, the figures of whichever window sent it there: the CLOSED (or
/// METRICS_ONLY) window that tripped, or the HALF_OPEN trial that failed
/// (empty after a manual move from DISABLED or FORCED_OPEN), as
/// resilience4j's OPEN state keeps the metrics of the state it came from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerMetrics {
    /// The state now.
    pub state: CircuitState,
    /// Failed calls as a percentage of recorded calls; `None` until the
    /// minimum number of calls is recorded (and always `None` for a
    /// consecutive-failures window).
    pub failure_rate: Option<f32>,
    /// Slow calls as a percentage of recorded calls; `None` until the
    /// minimum number of calls is recorded, or when slow calls are not
    /// detected.
    pub slow_call_rate: Option<f32>,
    /// Calls recorded in the window (or trial calls recorded in HALF_OPEN).
    pub buffered_calls: u64,
    /// Of those, failed calls.
    pub failed_calls: u64,
    /// Of those, slow calls (failed or not).
    pub slow_calls: u64,
    /// Of those, successful calls.
    pub successful_calls: u64,
    /// Calls rejected in the current state, as resilience4j counts them:
    /// every transition (and [`reset`](super::CircuitBreaker::reset)) starts
    /// again from zero, except a move into OPEN, which keeps counting from
    /// the state that sent it there (a HALF_OPEN trial's rejections stay).
    pub not_permitted_calls: u64,
    /// The summed duration of the timed calls recorded in the current state
    /// (counted as `not_permitted_calls` is). A call is timed when slow
    /// calls are detected, or when its duration is given with
    /// [`CallPermit::on_result`](super::CallPermit::on_result); otherwise
    /// this stays zero and no clock is read for it.
    pub total_call_duration: Duration,
    /// `total_call_duration` divided by the number of timed calls; `None`
    /// before the first.
    pub average_call_duration: Option<Duration>,
    /// Failures in a row, for a consecutive-failures window.
    pub consecutive_failures: Option<u32>,
    /// In OPEN, the time left before a trial call is let through.
    pub retry_in: Option<Duration>,
    /// In HALF_OPEN, trial calls that may still start.
    pub trial_permits_available: Option<u32>,
}

/// The breaker's handles into the `metrics` facade (see [`crate::metrics`]),
/// taken once when the breaker is created. Without the `metrics` feature it
/// is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(super) struct Exported {
    name: ::metrics::SharedString,
    successful: ::metrics::Counter,
    failed: ::metrics::Counter,
    ignored: ::metrics::Counter,
    not_permitted: ::metrics::Counter,
    slow_successful: ::metrics::Counter,
    slow_failed: ::metrics::Counter,
    duration_successful: ::metrics::Histogram,
    duration_failed: ::metrics::Histogram,
    /// One gauge per state, in [`STATES`] order.
    state: [::metrics::Gauge; 6],
}

#[cfg(feature = "metrics")]
const STATES: [CircuitState; 6] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::Disabled,
    CircuitState::ForcedOpen,
    CircuitState::MetricsOnly,
];

/// The `state` label: the state's name in lower case.
#[cfg(feature = "metrics")]
fn state_label(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
        CircuitState::Disabled => "disabled",
        CircuitState::ForcedOpen => "forced_open",
        CircuitState::MetricsOnly => "metrics_only",
    }
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the breaker `name`, which starts CLOSED.
    pub(super) fn new(name: &std::sync::Arc<str>) -> Self {
        let name = crate::metrics::name_label(name);
        let calls = |kind: &'static str| ::metrics::counter!("palisade_circuit_breaker_calls_total", "name" => name.clone(), "kind" => kind);
        let slow = |kind: &'static str| ::metrics::counter!("palisade_circuit_breaker_slow_calls_total", "name" => name.clone(), "kind" => kind);
        let duration = |kind: &'static str| ::metrics::histogram!("palisade_circuit_breaker_call_duration_seconds", "name" => name.clone(), "kind" => kind);
        let state = STATES.map(|state| {
            ::metrics::gauge!("palisade_circuit_breaker_state", "name" => name.clone(), "state" => state_label(state))
        });
        for (gauge, s) in state.iter().zip(STATES) {
            gauge.set(if s == CircuitState::Closed { 1.0 } else { 0.0 });
        }
        Self {
            successful: calls("successful"),
            failed: calls("failed"),
            ignored: calls("ignored"),
            not_permitted: calls("not_permitted"),
            slow_successful: slow("successful"),
            slow_failed: slow("failed"),
            duration_successful: duration("successful"),
            duration_failed: duration("failed"),
            state,
            name,
        }
    }

    /// A permitted call finished with `outcome`.
    #[inline]
    pub(super) fn on_call(&self, outcome: crate::classify::Outcome) {
        use crate::classify::Outcome;
        match outcome {
            Outcome::Success => self.successful.increment(1),
            Outcome::Failure { .. } => self.failed.increment(1),
            Outcome::Ignored => self.ignored.increment(1),
        }
    }

    /// A call was timed: `nanos` long (if timed), slow or not.
    #[inline]
    pub(super) fn on_timed_call(&self, failed: bool, nanos: Option<u64>, slow: bool) {
        if slow {
            if failed {
                &self.slow_failed
            } else {
                &self.slow_successful
            }
            .increment(1);
        }
        if let Some(nanos) = nanos {
            let histogram = if failed {
                &self.duration_failed
            } else {
                &self.duration_successful
            };
            histogram.record(Duration::from_nanos(nanos).as_secs_f64());
        }
    }

    /// A call was rejected.
    #[inline]
    pub(super) fn on_rejected(&self) {
        self.not_permitted.increment(1);
    }

    /// The breaker moves from `from` to `to` (under its transition lock, so
    /// the one-hot state gauges are set in the order of the transitions).
    #[cold]
    pub(super) fn on_transition(&self, from: CircuitState, to: CircuitState) {
        for (gauge, s) in self.state.iter().zip(STATES) {
            gauge.set(if s == to { 1.0 } else { 0.0 });
        }
        if from != to {
            ::metrics::counter!(
                "palisade_circuit_breaker_transitions_total",
                "name" => self.name.clone(),
                "from" => state_label(from),
                "to" => state_label(to)
            )
            .increment(1);
        }
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(super) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(super) fn new(_name: &std::sync::Arc<str>) -> Self {
        Self
    }
    #[inline(always)]
    pub(super) fn on_call(&self, _outcome: crate::classify::Outcome) {}
    #[inline(always)]
    pub(super) fn on_timed_call(&self, _failed: bool, _nanos: Option<u64>, _slow: bool) {}
    #[inline(always)]
    pub(super) fn on_rejected(&self) {}
    #[inline(always)]
    pub(super) fn on_transition(&self, _from: CircuitState, _to: CircuitState) {}
}
