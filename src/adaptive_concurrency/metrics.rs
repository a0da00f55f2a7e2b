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

/// The limit's handles into the `metrics` facade (see [`crate::metrics`]),
/// taken once when the limit is created. Without the `metrics` feature it
/// is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    limit: ::metrics::Gauge,
    in_flight: ::metrics::Gauge,
    rejected: ::metrics::Counter,
    succeeded: ::metrics::Counter,
    failed: ::metrics::Counter,
    cancelled: ::metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the limit `name`, at `limit` with no call in flight.
    pub(crate) fn new(name: &std::sync::Arc<str>, limit: usize) -> Self {
        let name = crate::metrics::name_label(name);
        let samples = |outcome: &'static str| ::metrics::counter!("palisade_adaptive_concurrency_samples_total", "name" => name.clone(), "outcome" => outcome);
        let exported = Self {
            limit: ::metrics::gauge!("palisade_adaptive_concurrency_limit", "name" => name.clone()),
            in_flight: ::metrics::gauge!("palisade_adaptive_concurrency_in_flight", "name" => name.clone()),
            rejected: ::metrics::counter!("palisade_adaptive_concurrency_rejected_total", "name" => name.clone()),
            succeeded: samples("success"),
            failed: samples("failure"),
            cancelled: ::metrics::counter!("palisade_adaptive_concurrency_cancelled_total", "name" => name),
        };
        exported.limit.set(limit as f64);
        exported.in_flight.set(0.0);
        exported
    }

    /// A call took a slot.
    #[inline]
    pub(crate) fn on_acquired(&self) {
        self.in_flight.increment(1.0);
    }

    /// A call gave its slot back.
    #[inline]
    pub(crate) fn on_released(&self) {
        self.in_flight.decrement(1.0);
    }

    /// A call was rejected.
    #[inline]
    pub(crate) fn on_rejected(&self) {
        self.rejected.increment(1);
    }

    /// The algorithm took a call's latency; `failed` if the classifier
    /// called it a failure.
    #[inline]
    pub(crate) fn on_sample(&self, failed: bool) {
        if failed {
            &self.failed
        } else {
            &self.succeeded
        }
        .increment(1);
    }

    /// A call was dropped before it finished.
    #[inline]
    pub(crate) fn on_cancelled(&self) {
        self.cancelled.increment(1);
    }

    /// The limit changed to `limit`.
    #[inline]
    pub(crate) fn on_limit(&self, limit: usize) {
        self.limit.set(limit as f64);
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(crate) fn new(_name: &std::sync::Arc<str>, _limit: usize) -> Self {
        Self
    }
    #[inline(always)]
    pub(crate) fn on_acquired(&self) {}
    #[inline(always)]
    pub(crate) fn on_released(&self) {}
    #[inline(always)]
    pub(crate) fn on_rejected(&self) {}
    #[inline(always)]
    pub(crate) fn on_sample(&self, _failed: bool) {}
    #[inline(always)]
    pub(crate) fn on_cancelled(&self) {}
    #[inline(always)]
    pub(crate) fn on_limit(&self, _limit: usize) {}
}
