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

/// The hedge's handles into the `metrics` facade (see [`crate::metrics`]),
/// taken once when the hedge is created. Without the `metrics` feature it
/// is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    calls: ::metrics::Counter,
    hedges: ::metrics::Counter,
    wins: ::metrics::Counter,
    budget_exhausted: ::metrics::Counter,
    not_hedgeable: ::metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the hedge `name`.
    pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
        let name = crate::metrics::name_label(name);
        Self {
            calls: ::metrics::counter!("palisade_hedge_calls_total", "name" => name.clone()),
            hedges: ::metrics::counter!("palisade_hedge_hedges_total", "name" => name.clone()),
            wins: ::metrics::counter!("palisade_hedge_wins_total", "name" => name.clone()),
            budget_exhausted: ::metrics::counter!("palisade_hedge_budget_exhausted_total", "name" => name.clone()),
            not_hedgeable: ::metrics::counter!("palisade_hedge_not_hedgeable_total", "name" => name),
        }
    }

    /// A call was made.
    #[inline]
    pub(crate) fn on_call(&self) {
        self.calls.increment(1);
    }

    /// A hedged attempt started.
    #[inline]
    pub(crate) fn on_hedge(&self) {
        self.hedges.increment(1);
    }

    /// A hedged attempt, not the primary, answered a call.
    #[inline]
    pub(crate) fn on_win(&self) {
        self.wins.increment(1);
    }

    /// The budget refused a hedged attempt.
    #[inline]
    pub(crate) fn on_budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }

    /// A call could not be hedged.
    #[inline]
    pub(crate) fn on_not_hedgeable(&self) {
        self.not_hedgeable.increment(1);
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
    pub(crate) fn on_call(&self) {}
    #[inline(always)]
    pub(crate) fn on_hedge(&self) {}
    #[inline(always)]
    pub(crate) fn on_win(&self) {}
    #[inline(always)]
    pub(crate) fn on_budget_exhausted(&self) {}
    #[inline(always)]
    pub(crate) fn on_not_hedgeable(&self) {}
}
