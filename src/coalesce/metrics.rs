//! A point-in-time view of a coalescing layer.

/// A snapshot of a coalescing layer, from [`Coalesce::metrics`](super::Coalesce::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalesceMetrics {
    /// The bound on keys with a call in flight.
    pub max_in_flight_keys: usize,
    /// Keys with a shared call in flight now.
    pub in_flight_keys: usize,
    /// Requests waiting for a shared call now.
    pub waiters: usize,
    /// Shared calls started, ever.
    pub calls: u64,
    /// Requests that joined a call in flight instead of making one, ever.
    pub coalesced: u64,
    /// Requests that ran their own call because too many keys were in
    /// flight, ever.
    pub uncoalesced: u64,
    /// Shared calls cancelled because every waiter went away, ever.
    pub abandoned: u64,
}
