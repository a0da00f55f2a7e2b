//! What a bulkhead reports to its subscribers.

use std::sync::Arc;
use std::time::Duration;

/// One thing that happened to a bulkhead; delivered by
/// [`Bulkhead::subscribe`](super::Bulkhead::subscribe).
#[derive(Debug, Clone)]
pub struct BulkheadEvent {
    /// The bulkhead's name.
    pub bulkhead: Arc<str>,
    /// What happened.
    pub kind: BulkheadEventKind,
}

/// The kinds of [`BulkheadEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkheadEventKind {
    /// A call got a permit after waiting this long (zero: at once).
    Permitted {
        /// Time spent waiting.
        waited: Duration,
    },
    /// A call was rejected.
    Rejected {
        /// Whether the waiting queue was full.
        queue_full: bool,
        /// Time spent waiting.
        waited: Duration,
    },
    /// The limit changed.
    Resized {
        /// Limit before.
        from: usize,
        /// Limit after.
        to: usize,
    },
}
