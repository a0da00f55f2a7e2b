//! What a rate limiter reports to its subscribers.

use std::sync::Arc;
use std::time::Duration;

/// Something a [`RateLimiter`](super::RateLimiter) did, delivered to
/// subscribers of [`RateLimiter::subscribe`](super::RateLimiter::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimiterEvent {
    /// The limiter's name.
    pub limiter: Arc<str>,
    /// What happened.
    pub kind: RateLimiterEventKind,
}

/// The kinds of [`RateLimiterEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimiterEventKind {
    /// A call got a permit, after waiting this long (zero: at once).
    Acquired {
        /// How long the caller waited.
        waited: Duration,
    },
    /// A call was rejected; the next permit is available after `retry_after`.
    Rejected {
        /// How long until the next permit.
        retry_after: Duration,
    },
    /// A [keyed limiter](super::KeyedRateLimiter) rejected a call because
    /// its key was new and the limiter held `max_keys` keys, none idle.
    TooManyKeys {
        /// The most keys the limiter holds.
        max_keys: usize,
    },
    /// A [keyed limiter](super::KeyedRateLimiter) removed the state of
    /// idle keys (their limits are as if they had never been used).
    IdleKeysEvicted {
        /// Keys removed.
        evicted: usize,
        /// Keys left.
        keys: usize,
    },
}
