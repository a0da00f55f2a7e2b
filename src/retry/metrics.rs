//! A point-in-time view of a retry.

/// Counts of what a retry's services did, from
/// [`Retry::metrics`](super::Retry::metrics).
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
