//! The validated, immutable configuration of a circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::CallClock;
use crate::error::ConfigError;

use super::state::CircuitState;

const COMPONENT: &str = "circuit breaker";

/// The largest count-based window: counts are packed into 21-bit fields.
pub const MAX_COUNT_WINDOW: u32 = (1 << 21) - 1;
/// The longest time-based window, in seconds (one day).
pub const MAX_TIME_WINDOW_SECONDS: u32 = 86_400;
pub use crate::events::MAX_EVENT_CAPACITY;

/// How the breaker decides, in the CLOSED state, that the dependency is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `size` calls (resilience4j's `COUNT_BASED`).
    Count {
        /// Number of calls kept, 1 to [`MAX_COUNT_WINDOW`].
        size: u32,
    },
    /// The calls of the last `seconds` seconds, in one bucket per second
    /// (resilience4j's `TIME_BASED`).
    Time {
        /// Window length, 1 to [`MAX_TIME_WINDOW_SECONDS`].
        seconds: u32,
    },
    /// Trip after `threshold` failures in a row; any success resets the count
    /// (Finagle's failure accrual, and the seed chapter's breaker). The rate
    /// thresholds and `minimum_number_of_calls` do not apply in CLOSED; they
    /// still decide the HALF_OPEN trial.
    ConsecutiveFailures {
        /// Failures in a row that trip the breaker, at least 1.
        threshold: u32,
    },
}

impl SlidingWindow {
    /// The last `size` calls.
    pub const fn count(size: u32) -> Self {
        SlidingWindow::Count { size }
    }

    /// The calls of the last `seconds` seconds.
    pub const fn time(seconds: u32) -> Self {
        SlidingWindow::Time { seconds }
    }

    /// `threshold` failures in a row.
    pub const fn consecutive_failures(threshold: u32) -> Self {
        SlidingWindow::ConsecutiveFailures { threshold }
    }
}

/// How long the breaker stays OPEN after its `n`th trip in a row (`n` counts
/// trips since the breaker was last CLOSED, starting at 1), as Polly's
/// dynamic break duration.
#[derive(Clone)]
pub enum BreakDuration {
    /// Always `wait_duration_in_open_state`. The default.
    Fixed,
    /// `wait_duration_in_open_state × multiplier^(n-1)`, at most `max`.
    Exponential {
        /// Growth per trip in a row, finite and at least 1.
        multiplier: f64,
        /// Upper bound of the wait, at least `wait_duration_in_open_state`.
        max: Duration,
    },
    /// Computed by a function of `(n, wait_duration_in_open_state)`.
    Custom(Arc<dyn Fn(u32, Duration) -> Duration + Send + Sync>),
}

impl BreakDuration {
    /// Exponential growth with a cap; see [`BreakDuration::Exponential`].
    pub fn exponential(multiplier: f64, max: Duration) -> Self {
        BreakDuration::Exponential { multiplier, max }
    }

    /// A wait computed by `f(n, base)`; see [`BreakDuration::Custom`].
    pub fn custom(f: impl Fn(u32, Duration) -> Duration + Send + Sync + 'static) -> Self {
        BreakDuration::Custom(Arc::new(f))
    }

    /// The wait after the `trips`th trip in a row, from the base wait.
    pub fn wait_after(&self, trips: u32, base: Duration) -> Duration {
        match self {
            BreakDuration::Fixed => base,
            BreakDuration::Exponential { multiplier, max } => {
                let exponent = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
                let secs = base.as_secs_f64() * multiplier.powi(exponent);
                if secs.is_finite() && secs < max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    *max
                }
            }
            BreakDuration::Custom(f) => f(trips, base),
        }
    }
}

impl fmt::Debug for BreakDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakDuration::Fixed => f.write_str("Fixed"),
            BreakDuration::Exponential { multiplier, max } => f
                .debug_struct("Exponential")
                .field("multiplier", multiplier)
                .field("max", max)
                .finish(),
            BreakDuration::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A circuit breaker's configuration: built and validated once by
/// [`CircuitBreakerConfig::builder`], immutable afterwards, cheap to clone.
///
/// See the [module documentation](super) for every option, its default and
/// its meaning.
#[derive(Debug, Clone)]
pub struct CircuitBreakerConfig {
    pub(crate) failure_rate_threshold: f32,
    pub(crate) slow_call_rate_threshold: f32,
    pub(crate) slow_call_duration_threshold: Option<Duration>,
    pub(crate) sliding_window: SlidingWindow,
    pub(crate) minimum_number_of_calls: u32,
    pub(crate) permitted_number_of_calls_in_half_open_state: u32,
    pub(crate) max_wait_duration_in_half_open_state: Option<Duration>,
    pub(crate) transition_to_state_after_wait_duration: CircuitState,
    pub(crate) initial_state: CircuitState,
    pub(crate) wait_duration_in_open_state: Duration,
    pub(crate) break_duration: BreakDuration,
    pub(crate) automatic_transition_from_open_to_half_open: bool,
    pub(crate) call_clock: CallClock,
    pub(crate) event_capacity: usize,
}

impl Default for CircuitBreakerConfig {
    /// The defaults listed in the [module documentation](super).
    fn default() -> Self {
        Self {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_threshold: None,
            sliding_window: SlidingWindow::Count { size: 100 },
            minimum_number_of_calls: 100,
            permitted_number_of_calls_in_half_open_state: 10,
            max_wait_duration_in_half_open_state: None,
            transition_to_state_after_wait_duration: CircuitState::Open,
            initial_state: CircuitState::Closed,
            wait_duration_in_open_state: Duration::from_secs(60),
            break_duration: BreakDuration::Fixed,
            automatic_transition_from_open_to_half_open: false,
            call_clock: CallClock::Tokio,
            event_capacity: 256,
        }
    }
}

impl CircuitBreakerConfig {
    /// Starts from the defaults.
    pub fn builder() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder {
            config: Self::default(),
            slow_call_rate_threshold_set: false,
        }
    }

    /// Failure rate (percent) at or above which the breaker trips.
    pub fn failure_rate_threshold(&self) -> f32 {
        self.failure_rate_threshold
    }

    /// Slow-call rate (percent) at or above which the breaker trips.
    pub fn slow_call_rate_threshold(&self) -> f32 {
        self.slow_call_rate_threshold
    }

    /// Calls longer than this are slow; `None` when slow calls are not detected.
    pub fn slow_call_duration_threshold(&self) -> Option<Duration> {
        self.slow_call_duration_threshold
    }

    /// The window of calls the CLOSED state judges by.
    pub fn sliding_window(&self) -> SlidingWindow {
        self.sliding_window
    }

    /// Calls that must be in the window before rates are evaluated, as
    /// configured (a count window evaluates at `min(this, size)`).
    pub fn minimum_number_of_calls(&self) -> u32 {
        self.minimum_number_of_calls
    }

    /// Trial calls let through in HALF_OPEN.
    pub fn permitted_number_of_calls_in_half_open_state(&self) -> u32 {
        self.permitted_number_of_calls_in_half_open_state
    }

    /// Longest stay in HALF_OPEN before going back to OPEN; `None` waits for
    /// the trial calls indefinitely.
    pub fn max_wait_duration_in_half_open_state(&self) -> Option<Duration> {
        self.max_wait_duration_in_half_open_state
    }

    /// Where HALF_OPEN goes when `max_wait_duration_in_half_open_state`
    /// passes without a decision: OPEN or CLOSED.
    pub fn transition_to_state_after_wait_duration(&self) -> CircuitState {
        self.transition_to_state_after_wait_duration
    }

    /// The state a new breaker starts in.
    pub fn initial_state(&self) -> CircuitState {
        self.initial_state
    }

    /// Base wait in OPEN before trying HALF_OPEN.
    pub fn wait_duration_in_open_state(&self) -> Duration {
        self.wait_duration_in_open_state
    }

    /// How the wait in OPEN grows on repeated trips.
    pub fn break_duration(&self) -> &BreakDuration {
        &self.break_duration
    }

    /// Whether a timer moves OPEN to HALF_OPEN without waiting for a call.
    pub fn automatic_transition_from_open_to_half_open(&self) -> bool {
        self.automatic_transition_from_open_to_half_open
    }

    /// The clock that times calls.
    pub fn call_clock(&self) -> CallClock {
        self.call_clock
    }

    /// Events buffered per subscriber before the oldest are dropped.
    pub fn event_capacity(&self) -> usize {
        self.event_capacity
    }
}

/// Builds a [`CircuitBreakerConfig`]; every setter is checked in
/// [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct CircuitBreakerConfigBuilder {
    config: CircuitBreakerConfig,
    slow_call_rate_threshold_set: bool,
}

impl CircuitBreakerConfigBuilder {
    /// Failure rate in percent, `0 < rate <= 100`, at or above which the
    /// breaker trips. Default 50.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Slow-call rate in percent, `0 < rate <= 100`, at or above which the
    /// breaker trips. Default 100. Needs
    /// [`slow_call_duration_threshold`](Self::slow_call_duration_threshold).
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self.slow_call_rate_threshold_set = true;
        self
    }

    /// A call that takes strictly longer than this is slow. Default: slow
    /// calls are not detected, so no clock is read per call (resilience4j's
    /// default of 60 s with a 100 % rate only trips when every call takes over
    /// a minute).
    pub fn slow_call_duration_threshold(mut self, threshold: Duration) -> Self {
        self.config.slow_call_duration_threshold = Some(threshold);
        self
    }

    /// The window the CLOSED state judges by. Default: the last 100 calls.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.sliding_window = window;
        self
    }

    /// Calls that must be recorded in the window before the rates are
    /// evaluated, at least 1. Default 100. In a count window the breaker
    /// evaluates once `min(minimum_number_of_calls, size)` calls are recorded.
    pub fn minimum_number_of_calls(mut self, calls: u32) -> Self {
        self.config.minimum_number_of_calls = calls;
        self
    }

    /// Trial calls let through in HALF_OPEN, at least 1. Default 10.
    pub fn permitted_number_of_calls_in_half_open_state(mut self, calls: u32) -> Self {
        self.config.permitted_number_of_calls_in_half_open_state = calls;
        self
    }

    /// Longest stay in HALF_OPEN; when it passes before the trial calls have
    /// decided, the breaker goes back to OPEN. Must be non-zero. Default:
    /// wait indefinitely.
    pub fn max_wait_duration_in_half_open_state(mut self, max_wait: Duration) -> Self {
        self.config.max_wait_duration_in_half_open_state = Some(max_wait);
        self
    }

    /// Where HALF_OPEN goes when `max_wait_duration_in_half_open_state`
    /// passes before the trial calls have decided: [`CircuitState::Open`]
    /// (the default) or [`CircuitState::Closed`], as resilience4j's
    /// `transitionToStateAfterWaitDuration`. Any other state is rejected.
    pub fn transition_to_state_after_wait_duration(mut self, state: CircuitState) -> Self {
        self.config.transition_to_state_after_wait_duration = state;
        self
    }

    /// The state a new breaker starts in, any of the six. Default
    /// [`CircuitState::Closed`]. OPEN starts the wait in OPEN when the
    /// breaker is created; HALF_OPEN starts with a full set of trial
    /// permits. [`CircuitBreaker::reset`](super::CircuitBreaker::reset)
    /// still goes to CLOSED.
    pub fn initial_state(mut self, state: CircuitState) -> Self {
        self.config.initial_state = state;
        self
    }

    /// Wait in OPEN before trying HALF_OPEN, non-zero. Default 60 s.
    pub fn wait_duration_in_open_state(mut self, wait: Duration) -> Self {
        self.config.wait_duration_in_open_state = wait;
        self
    }

    /// How the wait in OPEN grows on repeated trips. Default
    /// [`BreakDuration::Fixed`].
    pub fn break_duration(mut self, break_duration: BreakDuration) -> Self {
        self.config.break_duration = break_duration;
        self
    }

    /// When `true`, a timer moves OPEN to HALF_OPEN as soon as the wait is
    /// over (needs a tokio runtime when the breaker trips; without one the
    /// move happens on the next call). When `false`, the next call after the
    /// wait makes the move. Default `false`.
    pub fn automatic_transition_from_open_to_half_open(mut self, automatic: bool) -> Self {
        self.config.automatic_transition_from_open_to_half_open = automatic;
        self
    }

    /// The clock that times calls for slow-call detection and time windows.
    /// Default [`CallClock::Tokio`]; see [`crate::clock`].
    pub fn call_clock(mut self, clock: CallClock) -> Self {
        self.config.call_clock = clock;
        self
    }

    /// Events buffered per subscriber before the oldest are dropped, 1 to
    /// [`MAX_EVENT_CAPACITY`]. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first
    /// field that breaks its rule.
    pub fn build(self) -> Result<CircuitBreakerConfig, ConfigError> {
        let c = &self.config;
        check_percent("failure_rate_threshold", c.failure_rate_threshold)?;
        check_percent("slow_call_rate_threshold", c.slow_call_rate_threshold)?;
        match c.slow_call_duration_threshold {
            Some(d) if d.is_zero() => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "slow_call_duration_threshold",
                    "must be greater than zero",
                ));
            }
            None if self.slow_call_rate_threshold_set => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "slow_call_rate_threshold",
                    "has no effect unless slow_call_duration_threshold is also set",
                ));
            }
            _ => {}
        }
        match c.sliding_window {
            SlidingWindow::Count { size } if !(1..=MAX_COUNT_WINDOW).contains(&size) => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "sliding_window",
                    format!("count window size must be 1 to {MAX_COUNT_WINDOW}, got {size}"),
                ));
            }
            SlidingWindow::Time { seconds }
                if !(1..=MAX_TIME_WINDOW_SECONDS).contains(&seconds) =>
            {
                return Err(ConfigError::new(
                    COMPONENT,
                    "sliding_window",
                    format!(
                        "time window must be 1 to {MAX_TIME_WINDOW_SECONDS} seconds, got {seconds}"
                    ),
                ));
            }
            SlidingWindow::ConsecutiveFailures { threshold: 0 } => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "sliding_window",
                    "consecutive failure threshold must be at least 1, got 0",
                ));
            }
            _ => {}
        }
        check_at_least_one("minimum_number_of_calls", c.minimum_number_of_calls)?;
        check_at_least_one(
            "permitted_number_of_calls_in_half_open_state",
            c.permitted_number_of_calls_in_half_open_state,
        )?;
        if c.max_wait_duration_in_half_open_state == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_wait_duration_in_half_open_state",
                "must be greater than zero (leave it unset to wait indefinitely)",
            ));
        }
        if !matches!(
            c.transition_to_state_after_wait_duration,
            CircuitState::Open | CircuitState::Closed
        ) {
            return Err(ConfigError::new(
                COMPONENT,
                "transition_to_state_after_wait_duration",
                format!(
                    "must be OPEN or CLOSED, got {}",
                    c.transition_to_state_after_wait_duration
                ),
            ));
        }
        if c.wait_duration_in_open_state.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "wait_duration_in_open_state",
                "must be greater than zero",
            ));
        }
        if let BreakDuration::Exponential { multiplier, max } = &c.break_duration {
            if !multiplier.is_finite() || *multiplier < 1.0 {
                return Err(ConfigError::new(
                    COMPONENT,
                    "break_duration",
                    format!(
                        "exponential multiplier must be finite and at least 1, got {multiplier}"
                    ),
                ));
            }
            if *max < c.wait_duration_in_open_state {
                return Err(ConfigError::new(
                    COMPONENT,
                    "break_duration",
                    format!(
                        "exponential max ({max:?}) must be at least wait_duration_in_open_state ({:?})",
                        c.wait_duration_in_open_state
                    ),
                ));
            }
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}

fn check_percent(field: &'static str, value: f32) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be greater than 0 and at most 100 (percent), got {value}"),
        ))
    }
}

fn check_at_least_one(field: &'static str, value: u32) -> Result<(), ConfigError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be at least 1, got {value}"),
        ))
    }
}

/// The longest name a breaker, bulkhead, rate limiter or retry accepts, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Checks the name given to a `try_new` constructor: names appear in
/// errors, events, traces and metrics labels, so they must be non-empty,
/// without surrounding whitespace or control characters, and at most
/// [`MAX_NAME_LEN`] bytes. Shared by the four handles' `try_new`.
pub(crate) fn check_name(
    component: &'static str,
    name: impl Into<Arc<str>>,
) -> Result<Arc<str>, ConfigError> {
    let name = name.into();
    let problem = if name.is_empty() {
        "must not be empty".to_owned()
    } else if name.trim() != &*name {
        format!("must not start or end with whitespace, got {name:?}")
    } else if name.chars().any(char::is_control) {
        format!("must not contain control characters, got {name:?}")
    } else if name.len() > MAX_NAME_LEN {
        format!("must be at most {MAX_NAME_LEN} bytes, got {}", name.len())
    } else {
        return Ok(name);
    };
    Err(ConfigError::new(component, "name", problem))
}
