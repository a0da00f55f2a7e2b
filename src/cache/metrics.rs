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
