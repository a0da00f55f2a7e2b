//! A point-in-time view of a chaos layer.

/// A snapshot of a [`Chaos`](super::Chaos), from
/// [`Chaos::metrics`](super::Chaos::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChaosMetrics {
    /// Whether injection is on now.
    pub enabled: bool,
    /// Calls that went through while injection was on (each drew its fate).
    pub calls_while_enabled: u64,
    /// Calls failed with an injected error.
    pub errors_injected: u64,
    /// Calls answered with an injected response.
    pub responses_injected: u64,
    /// Calls delayed.
    pub latencies_injected: u64,
}
