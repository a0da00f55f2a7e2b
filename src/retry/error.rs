//! Errors the retry layer adds to those of the service it wraps.

use std::fmt;
use std::time::Duration;

/// An attempt took longer than the configured `attempt_timeout` and was
/// cancelled. It counts as a retryable failure; when no attempt is left it
/// is what the call fails with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTimedOut {
    pub(crate) attempt: u32,
    pub(crate) timeout: Duration,
}

impl AttemptTimedOut {
    /// Which attempt timed out (1 = the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The per-attempt limit it exceeded.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempt {} timed out after {:?}",
            self.attempt, self.timeout
        )
    }
}

impl std::error::Error for AttemptTimedOut {}

/// The call, retries and waits included, took longer than the configured
/// `overall_timeout`; the attempt in flight was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTimedOut {
    pub(crate) timeout: Duration,
    pub(crate) attempts: u32,
}

impl RetryTimedOut {
    /// The overall limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Attempts started before the limit passed.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for RetryTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "call timed out after {:?} ({} attempt{} started)",
            self.timeout,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for RetryTimedOut {}
