//! What a response cache reports to its subscribers.

use std::sync::Arc;

use crate::fallback::FailureCause;

/// One thing that happened to a response cache; delivered by
/// [`ResponseCache::subscribe`](super::ResponseCache::subscribe).
#[derive(Debug, Clone)]
pub struct CacheEvent {
    /// The cache's name.
    pub cache: Arc<str>,
    /// What happened.
    pub kind: CacheEventKind,
}

/// The kinds of [`CacheEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEventKind {
    /// A fresh entry answered the request; the service was not called.
    Hit,
    /// No fresh entry: the service was called.
    Miss {
        /// Whether a stale entry was kept to answer a failure.
        stale_available: bool,
    },
    /// A successful response was stored.
    Stored,
    /// The call failed or was rejected and a stale entry answered it.
    StaleServed {
        /// Why.
        cause: FailureCause,
    },
}
