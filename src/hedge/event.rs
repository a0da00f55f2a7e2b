//! What a hedging layer reports to its subscribers.

use std::sync::Arc;
use std::time::Duration;

/// One thing a [`Hedge`](super::Hedge) did; delivered by
/// [`Hedge::subscribe`](super::Hedge::subscribe).
#[derive(Debug, Clone)]
pub struct HedgeEvent {
    /// The hedge's name.
    pub hedge: Arc<str>,
    /// What happened.
    pub kind: HedgeEventKind,
}

/// The kinds of [`HedgeEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HedgeEventKind {
    /// A hedged attempt started.
    Started {
        /// 1 for the first hedged attempt (the primary is 0).
        attempt: u32,
        /// Time since the call started.
        after: Duration,
        /// Why: the delay passed (`false`) or an attempt failed (`true`).
        after_failure: bool,
    },
    /// A hedged attempt's answer won; the other attempts were dropped.
    Won {
        /// Which attempt (1 for the first hedged one).
        attempt: u32,
    },
    /// A hedged attempt was due but the budget had no token for it.
    BudgetExhausted,
    /// A call could not be hedged: its request may not be sent twice, or
    /// cannot be copied.
    NotHedgeable,
}
