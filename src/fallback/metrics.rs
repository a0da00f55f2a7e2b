//! A point-in-time view of a fallback.

/// A snapshot of a fallback, from [`Fallback::metrics`](super::Fallback::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FallbackMetrics {
    /// Calls answered by the static value, ever.
    pub answered_by_value: u64,
    /// Calls answered by the function of the failure, ever.
    pub answered_by_function: u64,
    /// Calls answered by the last good response for their key, ever.
    pub answered_by_last_good: u64,
    /// Calls to be answered by the last good response whose key had none,
    /// ever (the failure passed through).
    pub no_last_good: u64,
    /// Of the calls answered, those an inner layer had rejected, ever.
    pub answered_rejections: u64,
    /// Keys with a last good response kept now, over every layer built
    /// from this handle.
    pub last_good_entries: usize,
}

impl FallbackMetrics {
    /// Calls answered by the fallback, ever.
    pub fn answered(&self) -> u64 {
        self.answered_by_value + self.answered_by_function + self.answered_by_last_good
    }
}
