//! What a retry layer reports: events and a metrics snapshot.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::Outcome;

/// One thing a retry layer did; from [`RetryLayer::subscribe`](super::RetryLayer::subscribe).
#[derive(Debug, Clone)]
pub struct RetryEvent {
    /// The retry layer's name.
    pub layer: Arc<str>,
    /// What happened.
    pub kind: RetryEventKind,
}

/// The kinds of [`RetryEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RetryEventKind {
    /// Attempt `attempt` failed and attempt `attempt + 1` starts after `delay`.
    Retrying {
        /// The attempt that failed (1 = the first).
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// Why it is retried: the failure's classification.
        outcome: Outcome,
        /// Whether the server chose the delay (`Retry-After`).
        server_delay: bool,
    },
    /// The call succeeded after `attempts` attempts.
    Succeeded {
        /// Attempts made.
        attempts: u32,
    },
    /// The call failed after `attempts` attempts; `reason` says why no
    /// further attempt was made.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// Why it stopped.
        reason: GiveUpReason,
    },
}

/// Why a retry layer returned a failure instead of trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The classifier says another attempt would not help.
    NotRetryable,
    /// The request cannot be copied, or may not be sent twice (not idempotent).
    RequestNotRetryable,
    /// `max_attempts` attempts were made.
    AttemptsExhausted,
    /// The next attempt could not start (or finish) before `max_elapsed`.
    DeadlineReached,
    /// The retry budget is empty.
    BudgetExhausted,
    /// The backoff (a custom one) said to stop.
    BackoffStopped,
    /// `overall_timeout` passed.
    TimedOut,
}

/// Counts of what a retry layer did, from
/// [`RetryLayer::metrics`](super::RetryLayer::metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryMetrics {
    /// Calls that succeeded at the first attempt.
    pub succeeded_without_retry: u64,
    /// Calls that succeeded after one or more retries.
    pub succeeded_after_retry: u64,
    /// Calls that failed at the first attempt and were not retried.
    pub failed_without_retry: u64,
    /// Calls that failed after one or more retries.
    pub failed_after_retries: u64,
    /// Retries made (attempts after the first).
    pub retries: u64,
    /// Retries refused because the budget was empty.
    pub budget_exhaustions: u64,
    /// Attempts cancelled by `attempt_timeout`.
    pub attempt_timeouts: u64,
}
