//! What a coalescing layer reports to its subscribers.

use std::sync::Arc;

/// One thing that happened in a coalescing layer; delivered by
/// [`Coalesce::subscribe`](super::Coalesce::subscribe).
#[derive(Debug, Clone)]
pub struct CoalesceEvent {
    /// The layer's name.
    pub coalesce: Arc<str>,
    /// What happened.
    pub kind: CoalesceEventKind,
}

/// The kinds of [`CoalesceEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoalesceEventKind {
    /// A request found no call in flight for its key and started one.
    Started,
    /// A request joined the call in flight for its key.
    Joined {
        /// Requests waiting for that call now, this one included.
        waiters: usize,
    },
    /// A shared call finished and answered its waiters (or panicked: the
    /// other waiters then get a
    /// [`CoalescedError`](super::CoalescedError) saying so).
    Completed {
        /// Requests still waiting for it when it finished.
        waiters: usize,
    },
    /// Every request waiting for a shared call went away before it
    /// finished: the call was dropped (cancelled).
    Abandoned,
    /// `max_in_flight_keys` keys had a call in flight: the request ran its
    /// own call, uncoalesced.
    Uncoalesced {
        /// Keys with a call in flight.
        in_flight_keys: usize,
    },
}
