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

/// The retry's handles into the `metrics` facade (see [`crate::metrics`]),
/// taken once when the retry is created. Without the `metrics` feature it
/// is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    succeeded_without_retry: ::metrics::Counter,
    succeeded_after_retry: ::metrics::Counter,
    failed_without_retry: ::metrics::Counter,
    failed_after_retries: ::metrics::Counter,
    retries: ::metrics::Counter,
    budget_exhausted: ::metrics::Counter,
    attempt_timeouts: ::metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the retry `name`.
    pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
        let name = crate::metrics::name_label(name);
        let calls = |outcome: &'static str| ::metrics::counter!("palisade_retry_calls_total", "name" => name.clone(), "outcome" => outcome);
        Self {
            succeeded_without_retry: calls("succeeded_without_retry"),
            succeeded_after_retry: calls("succeeded_after_retry"),
            failed_without_retry: calls("failed_without_retry"),
            failed_after_retries: calls("failed_after_retries"),
            retries: ::metrics::counter!("palisade_retry_retries_total", "name" => name.clone()),
            budget_exhausted: ::metrics::counter!("palisade_retry_budget_exhausted_total", "name" => name.clone()),
            attempt_timeouts: ::metrics::counter!("palisade_retry_attempt_timeouts_total", "name" => name),
        }
    }

    /// A call finished, `failed` or not, after one attempt or `retried`.
    #[inline]
    pub(crate) fn on_finish(&self, failed: bool, retried: bool) {
        match (failed, retried) {
            (false, false) => &self.succeeded_without_retry,
            (false, true) => &self.succeeded_after_retry,
            (true, false) => &self.failed_without_retry,
            (true, true) => &self.failed_after_retries,
        }
        .increment(1);
    }

    /// A retry is about to be made.
    #[inline]
    pub(crate) fn on_retry(&self) {
        self.retries.increment(1);
    }

    /// The budget refused a retry.
    #[inline]
    pub(crate) fn on_budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }

    /// An attempt was cancelled by `attempt_timeout`.
    #[inline]
    pub(crate) fn on_attempt_timeout(&self) {
        self.attempt_timeouts.increment(1);
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(crate) fn new(_name: &std::sync::Arc<str>) -> Self {
        Self
    }
    #[inline(always)]
    pub(crate) fn on_finish(&self, _failed: bool, _retried: bool) {}
    #[inline(always)]
    pub(crate) fn on_retry(&self) {}
    #[inline(always)]
    pub(crate) fn on_budget_exhausted(&self) {}
    #[inline(always)]
    pub(crate) fn on_attempt_timeout(&self) {}
}
