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
