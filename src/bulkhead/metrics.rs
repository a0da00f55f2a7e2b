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

/// The bulkhead's handles into the `metrics` facade (see
/// [`crate::metrics`]), taken once when the bulkhead is created. Without
/// the `metrics` feature it is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(super) struct Exported {
    permitted: ::metrics::Counter,
    rejected: ::metrics::Counter,
    available_permits: ::metrics::Gauge,
    max_concurrent_calls: ::metrics::Gauge,
    wait_duration: ::metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the bulkhead `name` with `limit` permits, all free.
    pub(super) fn new(name: &std::sync::Arc<str>, limit: usize) -> Self {
        let name = crate::metrics::name_label(name);
        let exported = Self {
            permitted: ::metrics::counter!("palisade_bulkhead_calls_total", "name" => name.clone(), "outcome" => "permitted"),
            rejected: ::metrics::counter!("palisade_bulkhead_calls_total", "name" => name.clone(), "outcome" => "rejected"),
            available_permits: ::metrics::gauge!("palisade_bulkhead_available_permits", "name" => name.clone()),
            max_concurrent_calls: ::metrics::gauge!("palisade_bulkhead_max_concurrent_calls", "name" => name.clone()),
            wait_duration: ::metrics::histogram!("palisade_bulkhead_wait_duration_seconds", "name" => name),
        };
        exported.available_permits.set(limit as f64);
        exported.max_concurrent_calls.set(limit as f64);
        exported
    }

    /// A call got a permit after waiting `waited`.
    #[inline]
    pub(super) fn on_permitted(
        &self,
        waited: std::time::Duration,
        available: impl FnOnce() -> usize,
    ) {
        self.permitted.increment(1);
        self.wait_duration.record(waited.as_secs_f64());
        self.available_permits.set(available() as f64);
    }

    /// A call was rejected.
    #[inline]
    pub(super) fn on_rejected(&self) {
        self.rejected.increment(1);
    }

    /// A permit was given back (or the limit changed to `limit`).
    #[inline]
    pub(super) fn on_released(&self, available: impl FnOnce() -> usize) {
        self.available_permits.set(available() as f64);
    }

    /// The limit changed to `limit`.
    #[cold]
    pub(super) fn on_resized(&self, limit: usize, available: impl FnOnce() -> usize) {
        self.max_concurrent_calls.set(limit as f64);
        self.on_released(available);
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(super) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(super) fn new(_name: &std::sync::Arc<str>, _limit: usize) -> Self {
        Self
    }
    #[inline(always)]
    pub(super) fn on_permitted(
        &self,
        _waited: std::time::Duration,
        _available: impl FnOnce() -> usize,
    ) {
    }
    #[inline(always)]
    pub(super) fn on_rejected(&self) {}
    #[inline(always)]
    pub(super) fn on_released(&self, _available: impl FnOnce() -> usize) {}
    #[inline(always)]
    pub(super) fn on_resized(&self, _limit: usize, _available: impl FnOnce() -> usize) {}
}
