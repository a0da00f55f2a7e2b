//! A point-in-time view of a hedging layer.

use std::time::Duration;

/// A snapshot of a [`Hedge`](super::Hedge), from
/// [`Hedge::metrics`](super::Hedge::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HedgeMetrics {
    /// Calls made, ever.
    pub calls: u64,
    /// Hedged attempts started, ever.
    pub hedges_started: u64,
    /// Calls answered by a hedged attempt rather than the primary.
    pub hedge_wins: u64,
    /// Hedged attempts refused by the budget.
    pub budget_exhaustions: u64,
    /// Calls that could not be hedged (not idempotent, or not copyable).
    pub not_hedgeable: u64,
    /// The delay before a hedged attempt now: the fixed delay, or the
    /// latency percentile of the last window (`None` while unknown).
    pub delay: Option<Duration>,
}
