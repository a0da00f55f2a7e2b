//! What an adaptive concurrency limit reports to its subscribers.

use std::sync::Arc;

/// One thing that happened to an
/// [`AdaptiveConcurrency`](super::AdaptiveConcurrency) limit; delivered by
/// [`AdaptiveConcurrency::subscribe`](super::AdaptiveConcurrency::subscribe).
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrencyEvent {
    /// The limit's name.
    pub name: Arc<str>,
    /// What happened.
    pub kind: AdaptiveConcurrencyEventKind,
}

/// The kinds of [`AdaptiveConcurrencyEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdaptiveConcurrencyEventKind {
    /// The limit changed (its whole part: the estimate moves by fractions).
    LimitChanged {
        /// Limit before.
        from: usize,
        /// Limit after.
        to: usize,
    },
    /// A call was rejected.
    Rejected {
        /// The limit then.
        limit: usize,
    },
}
