//! A point-in-time view of a rate limiter.

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
