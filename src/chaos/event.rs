//! What a chaos layer reports to its subscribers.

use std::sync::Arc;
use std::time::Duration;

/// One thing a [`Chaos`](super::Chaos) did; delivered by
/// [`Chaos::subscribe`](super::Chaos::subscribe).
#[derive(Debug, Clone)]
pub struct ChaosEvent {
    /// The chaos layer's name.
    pub chaos: Arc<str>,
    /// What happened.
    pub kind: ChaosEventKind,
}

/// The kinds of [`ChaosEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChaosEventKind {
    /// A call failed with an injected error, without reaching the service.
    ErrorInjected,
    /// A call was answered with an injected response, without reaching the
    /// service.
    ResponseInjected,
    /// A call was delayed.
    LatencyInjected {
        /// The delay.
        delay: Duration,
    },
    /// Injection was switched on or off.
    Switched {
        /// Whether it is on now.
        enabled: bool,
    },
    /// A new configuration took effect.
    Reconfigured,
}
