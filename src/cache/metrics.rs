//! A point-in-time view of a response cache.

/// A snapshot of a response cache, from
/// [`ResponseCache::metrics`](super::ResponseCache::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheMetrics {
    /// Requests answered by a fresh entry, ever.
    pub hits: u64,
    /// Requests that called the service, ever.
    pub misses: u64,
    /// Failed or rejected calls answered by a stale entry, ever.
    pub stale_served: u64,
    /// Responses stored, ever.
    pub stored: u64,
    /// Entries kept now, fresh or stale. moka counts them lazily: the
    /// number may lag recent inserts and evictions.
    pub entries: u64,
}

/// The cache's handles into the `metrics` facade (see [`crate::metrics`]),
/// taken once when the cache is created. Without the `metrics` feature it
/// is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    hits: ::metrics::Counter,
    misses: ::metrics::Counter,
    stale_served: ::metrics::Counter,
    stored: ::metrics::Counter,
    entries: ::metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the cache `name`, which is empty.
    pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
        let name = crate::metrics::name_label(name);
        let requests = |result: &'static str| ::metrics::counter!("palisade_cache_requests_total", "name" => name.clone(), "result" => result);
        let exported = Self {
            hits: requests("hit"),
            misses: requests("miss"),
            stale_served: ::metrics::counter!("palisade_cache_stale_served_total", "name" => name.clone()),
            stored: ::metrics::counter!("palisade_cache_stored_total", "name" => name.clone()),
            entries: ::metrics::gauge!("palisade_cache_entries", "name" => name),
        };
        exported.entries.set(0.0);
        exported
    }

    /// A request was answered by a fresh entry.
    #[inline]
    pub(crate) fn on_hit(&self) {
        self.hits.increment(1);
    }

    /// A request called the service.
    #[inline]
    pub(crate) fn on_miss(&self) {
        self.misses.increment(1);
    }

    /// A stale entry answered a failed or rejected call.
    #[inline]
    pub(crate) fn on_stale_served(&self) {
        self.stale_served.increment(1);
    }

    /// A response was stored.
    #[inline]
    pub(crate) fn on_stored(&self) {
        self.stored.increment(1);
    }

    /// The cache holds `entries` now (moka's lazy count).
    #[inline]
    pub(crate) fn on_entries(&self, entries: u64) {
        self.entries.set(entries as f64);
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
    pub(crate) fn on_hit(&self) {}
    #[inline(always)]
    pub(crate) fn on_miss(&self) {}
    #[inline(always)]
    pub(crate) fn on_stale_served(&self) {}
    #[inline(always)]
    pub(crate) fn on_stored(&self) {}
    #[inline(always)]
    pub(crate) fn on_entries(&self, _entries: u64) {}
}
