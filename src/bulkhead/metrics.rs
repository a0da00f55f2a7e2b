//! A point-in-time view of a bulkhead.

/// A snapshot of a bulkhead, from [`Bulkhead::metrics`](super::Bulkhead::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadMetrics {
    /// The current limit.
    pub max_concurrent_calls: usize,
    /// Permits free now.
    pub available_permits: usize,
    /// Calls holding a permit now.
    pub in_flight: usize,
    /// Callers waiting for a permit now.
    pub waiting: usize,
    /// The most calls that held a permit at once, ever.
    pub max_in_flight_observed: usize,
    /// Calls rejected, ever.
    pub rejected: u64,
}
