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

/// The coalescing layer's handles into the `metrics` facade (see
/// [`crate::metrics`]), taken once when it is created. Without the
/// `metrics` feature it is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    leaders: ::metrics::Counter,
    followers: ::metrics::Counter,
    uncoalesced: ::metrics::Counter,
    abandoned: ::metrics::Counter,
    in_flight_keys: ::metrics::Gauge,
    waiters: ::metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the coalescing layer `name`, with nothing in flight.
    pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
        let name = crate::metrics::name_label(name);
        let calls = |role: &'static str| ::metrics::counter!("palisade_coalesce_requests_total", "name" => name.clone(), "role" => role);
        let exported = Self {
            leaders: calls("leader"),
            followers: calls("follower"),
            uncoalesced: calls("uncoalesced"),
            abandoned: ::metrics::counter!("palisade_coalesce_abandoned_total", "name" => name.clone()),
            in_flight_keys: ::metrics::gauge!("palisade_coalesce_in_flight_keys", "name" => name.clone()),
            waiters: ::metrics::gauge!("palisade_coalesce_waiters", "name" => name),
        };
        exported.in_flight_keys.set(0.0);
        exported.waiters.set(0.0);
        exported
    }

    /// A request started a shared call (it waits for it).
    #[inline]
    pub(crate) fn on_leader(&self) {
        self.leaders.increment(1);
        self.in_flight_keys.increment(1.0);
        self.waiters.increment(1.0);
    }

    /// A request joined a shared call in flight.
    #[inline]
    pub(crate) fn on_follower(&self) {
        self.followers.increment(1);
        self.waiters.increment(1.0);
    }

    /// A request ran its own call: too many keys in flight.
    #[inline]
    pub(crate) fn on_uncoalesced(&self) {
        self.uncoalesced.increment(1);
    }

    /// A waiter left (answered or dropped).
    #[inline]
    pub(crate) fn on_waiter_left(&self) {
        self.waiters.decrement(1.0);
    }

    /// A key's shared call ended: finished, or abandoned by every waiter.
    #[inline]
    pub(crate) fn on_flight_ended(&self, finished: bool) {
        self.in_flight_keys.decrement(1.0);
        if !finished {
            self.abandoned.increment(1);
        }
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
    pub(crate) fn on_leader(&self) {}
    #[inline(always)]
    pub(crate) fn on_follower(&self) {}
    #[inline(always)]
    pub(crate) fn on_uncoalesced(&self) {}
    #[inline(always)]
    pub(crate) fn on_waiter_left(&self) {}
    #[inline(always)]
    pub(crate) fn on_flight_ended(&self, _finished: bool) {}
}
