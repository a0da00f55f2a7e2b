//! What a rate limiter reports: events and a metrics snapshot.

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
}

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
