//! A point-in-time view of an adaptive concurrency limit.

use std::time::Duration;

/// A snapshot of an [`AdaptiveConcurrency`](super::AdaptiveConcurrency)
/// limit, from [`AdaptiveConcurrency::metrics`](super::AdaptiveConcurrency::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdaptiveConcurrencyMetrics {
    /// The current limit.
    pub limit: usize,
    /// Calls holding a slot now.
    pub in_flight: usize,
    /// Calls rejected, ever.
    pub rejected: u64,
    /// Calls whose latency the algorithm took, ever (failures included).
    pub samples: u64,
    /// Of the samples, the calls the classifier called failures.
    pub failures: u64,
    /// Calls dropped (cancelled) before they finished: their slot came back
    /// and their latency was not taken.
    pub cancelled: u64,
    /// Vegas's no-load latency (the lowest since its last probe); `None`
    /// for AIMD or before any sample.
    pub no_load_latency: Option<Duration>,
}
