//! A point-in-time view of a rate limiter.

/// A snapshot of a rate limiter's counters, from [`RateLimiter::metrics`](super::RateLimiter::metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RateLimiterMetrics {
    /// Calls that got a permit.
    pub permitted: u64,
    /// Of those, calls that had to wait for it.
    pub permitted_after_waiting: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Callers waiting for a permit right now.
    pub waiting: usize,
}

/// A limiter's handles into the `metrics` facade (see [`crate::metrics`]),
/// taken once when the limiter is created; shared by the plain and the
/// keyed limiter. Without the `metrics` feature it is zero-sized and its
/// methods are empty.
#[cfg(feature = "metrics")]
pub(super) struct Exported {
    /// Only for a keyed limiter.
    keys: Option<::metrics::Gauge>,
    permitted: ::metrics::Counter,
    rejected: ::metrics::Counter,
    waiting: ::metrics::Gauge,
    wait_duration: ::metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the limiter `name`, `keyed` or not.
    pub(super) fn new(name: &std::sync::Arc<str>, keyed: bool) -> Self {
        let name = crate::metrics::name_label(name);
        let exported = Self {
            permitted: ::metrics::counter!("palisade_rate_limiter_calls_total", "name" => name.clone(), "outcome" => "permitted"),
            rejected: ::metrics::counter!("palisade_rate_limiter_calls_total", "name" => name.clone(), "outcome" => "rejected"),
            waiting: ::metrics::gauge!("palisade_rate_limiter_waiting_calls", "name" => name.clone()),
            wait_duration: ::metrics::histogram!("palisade_rate_limiter_wait_duration_seconds", "name" => name.clone()),
            keys: keyed.then(|| ::metrics::gauge!("palisade_rate_limiter_keys", "name" => name)),
        };
        exported.waiting.set(0.0);
        exported.on_keys(0);
        exported
    }

    /// A call got a permit after waiting `waited`.
    #[inline]
    pub(super) fn on_permitted(&self, waited: std::time::Duration) {
        self.permitted.increment(1);
        self.wait_duration.record(waited.as_secs_f64());
    }

    /// A call was rejected.
    #[inline]
    pub(super) fn on_rejected(&self) {
        self.rejected.increment(1);
    }

    /// A caller starts (`+1`) or stops (`-1`) waiting.
    #[inline]
    pub(super) fn on_waiting(&self, change: i8) {
        self.waiting.increment(f64::from(change));
    }

    /// A keyed limiter holds state for `keys` keys now.
    pub(super) fn on_keys(&self, keys: usize) {
        if let Some(gauge) = &self.keys {
            gauge.set(keys as f64);
        }
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(super) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(super) fn new(_name: &std::sync::Arc<str>, _keyed: bool) -> Self {
        Self
    }
    #[inline(always)]
    pub(super) fn on_permitted(&self, _waited: std::time::Duration) {}
    #[inline(always)]
    pub(super) fn on_rejected(&self) {}
    #[inline(always)]
    pub(super) fn on_waiting(&self, _change: i8) {}
    #[inline(always)]
    pub(super) fn on_keys(&self, _keys: usize) {}
}

/// A snapshot of a keyed rate limiter's counters, from
/// [`KeyedRateLimiter::metrics`](super::KeyedRateLimiter::metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyedRateLimiterMetrics {
    /// Calls that got a permit, all keys together.
    pub permitted: u64,
    /// Of those, calls that had to wait for it.
    pub permitted_after_waiting: u64,
    /// Calls rejected because their key's permits were used up.
    pub rejected: u64,
    /// Calls rejected because their key was new and the limiter held
    /// `max_keys` keys ([`TooManyKeys`](super::TooManyKeys)).
    pub rejected_too_many_keys: u64,
    /// Callers waiting for a permit right now.
    pub waiting: usize,
    /// Keys the limiter holds state for now.
    pub keys: usize,
    /// Idle keys removed by cleanups, ever.
    pub evicted_keys: u64,
}
