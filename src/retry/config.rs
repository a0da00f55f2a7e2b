//! The validated, immutable configuration of a retry layer.

use std::time::Duration;

use crate::error::ConfigError;

use super::budget::RetryBudget;
use crate::backoff::Backoff;

const COMPONENT: &str = "retry";

/// The most attempts a retry layer may be configured to make.
pub const MAX_ATTEMPTS: u32 = 100;

/// A retry layer's configuration: built and validated once by
/// [`RetryConfig::builder`], immutable afterwards, cheap to clone (the
/// budget inside is shared by every clone).
///
/// See the [module documentation](super) for every option, its default and
/// its meaning.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) overall_timeout: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) honor_server_delay: bool,
    pub(crate) event_capacity: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_elapsed: None,
            attempt_timeout: None,
            overall_timeout: None,
            backoff: Backoff::default(),
            budget: Some(RetryBudget::default()),
            honor_server_delay: true,
            event_capacity: 256,
        }
    }
}

impl RetryConfig {
    /// Starts from the defaults.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder {
            config: Self::default(),
        }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Deadline over all attempts and waits, from the first attempt.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// Time limit of each attempt.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Time limit of the whole call, retries included.
    pub fn overall_timeout(&self) -> Option<Duration> {
        self.overall_timeout
    }

    /// The delays between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The budget retries are drawn from, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    /// Whether a delay asked for by the server replaces the backoff's.
    pub fn honor_server_delay(&self) -> bool {
        self.honor_server_delay
    }
}

/// Builds a [`RetryConfig`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

impl RetryConfigBuilder {
    /// Attempts in all, the first included: 1 (never retry) to
    /// [`MAX_ATTEMPTS`]. Default 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// A deadline over all attempts and the waits between them, counted
    /// from the first attempt. No wait ends after it and, when an
    /// `attempt_timeout` is set, no attempt starts that could not finish
    /// before it. That includes the wait for the inner service to be ready
    /// for a retry (a bulkhead's or a rate limiter's wait inside the retry):
    /// if it is not ready by the last moment an attempt could start, the
    /// call gives up with the last failure
    /// ([`GiveUpReason::DeadlineReached`](super::GiveUpReason::DeadlineReached)).
    /// Without an `attempt_timeout`, the last attempt itself may run past
    /// the deadline. Non-zero. Default: none.
    pub fn max_elapsed(mut self, deadline: Duration) -> Self {
        self.config.max_elapsed = Some(deadline);
        self
    }

    /// Time limit of each attempt; an attempt that exceeds it is cancelled
    /// and counts as a retryable failure ([`AttemptTimedOut`](super::AttemptTimedOut)).
    /// Non-zero. Default: none.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// Time limit of the whole call, retries and waits included; when it
    /// passes the call fails with [`RetryTimedOut`](super::RetryTimedOut).
    /// Non-zero. Default: none.
    pub fn overall_timeout(mut self, timeout: Duration) -> Self {
        self.config.overall_timeout = Some(timeout);
        self
    }

    /// The delays between attempts. Default [`Backoff::default`]:
    /// exponential from 100 ms, doubling, at most 10 s, full jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The budget every retry must draw from, shared by every service built
    /// from this configuration (pass a clone of one budget to share it more
    /// widely). Default: [`RetryBudget::default`], 20 % on top of first
    /// attempts plus 10 retries a second.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Retries are limited by `max_attempts` and deadlines only. Default:
    /// a budget is used.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Whether the server's word on a retry, as the policy reads it
    /// ([`ServerDelay`](super::ServerDelay)), is followed: a delay
    /// (`Retry-After`, `grpc-retry-pushback-ms`) replaces the backoff's
    /// (after a gRPC pushback the backoff restarts from its first delay),
    /// and "do not retry" ends the call
    /// ([`GiveUpReason::ServerDeclinedRetry`](super::GiveUpReason::ServerDeclinedRetry)).
    /// The delay is cut to the backoff's `max_interval`,
    /// but never shortened to fit `max_elapsed`: when the retry after it
    /// could not start (or, with an `attempt_timeout`, finish) before the
    /// deadline, the call gives up at once with the server's answer
    /// ([`GiveUpReason::DeadlineReached`](super::GiveUpReason::DeadlineReached)),
    /// as it does for a backoff delay. Default `true`.
    pub fn honor_server_delay(mut self, honor: bool) -> Self {
        self.config.honor_server_delay = honor;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<RetryConfig, ConfigError> {
        let c = &self.config;
        if !(1..=MAX_ATTEMPTS).contains(&c.max_attempts) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS}, got {}", c.max_attempts),
            ));
        }
        for (field, value) in [
            ("max_elapsed", c.max_elapsed),
            ("attempt_timeout", c.attempt_timeout),
            ("overall_timeout", c.overall_timeout),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    COMPONENT,
                    field,
                    "must be greater than zero (leave it unset for no limit)",
                ));
            }
        }
        if let (Some(attempt), Some(elapsed)) = (c.attempt_timeout, c.max_elapsed) {
            if attempt > elapsed {
                return Err(ConfigError::new(
                    COMPONENT,
                    "attempt_timeout",
                    format!(
                        "({attempt:?}) must not exceed max_elapsed ({elapsed:?}): no attempt could finish in time"
                    ),
                ));
            }
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}
