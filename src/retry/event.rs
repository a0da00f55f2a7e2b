//! What a retry reports to its subscribers.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::Outcome;

/// One thing a retry did; from [`Retry::subscribe`](super::Retry::subscribe).
#[derive(Debug, Clone)]
pub struct RetryEvent {
    /// The retry's name.
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
        /// Whether the server chose the delay (`Retry-After`,
        /// `grpc-retry-pushback-ms`).
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

/// Why a retry returned a failure instead of trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The classifier says another attempt would not help.
    NotRetryable,
    /// The request cannot be copied, or may not be sent twice (not idempotent).
    RequestNotRetryable,
    /// `max_attempts` attempts were made.
    AttemptsExhausted,
    /// The next attempt could not start (or finish) before `max_elapsed`:
    /// the backoff, or the wait for the service to be ready, would end too late.
    DeadlineReached,
    /// The retry budget is empty.
    BudgetExhausted,
    /// The backoff (a custom one) said to stop.
    BackoffStopped,
    /// The server asked not to retry
    /// ([`ServerDelay::DoNotRetry`](super::ServerDelay::DoNotRetry): with
    /// `HttpRetryPolicy`, a negative or unreadable
    /// `grpc-retry-pushback-ms`).
    ServerDeclinedRetry,
    /// `overall_timeout` passed.
    TimedOut,
}
