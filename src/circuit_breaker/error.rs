//! The error a rejected call fails with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{CallRef, CircuitState, NO_DEADLINE};

/// The layer kind a breaker's [`Rejected`](crate::error::Rejected) marker names.
pub(crate) const LAYER: &str = "circuit_breaker";

/// A call was rejected by a circuit breaker without reaching the service.
///
/// Returned (boxed in a `tower::BoxError`) when the breaker is OPEN or
/// FORCED_OPEN, or HALF_OPEN with every trial call already in flight. Find it
/// with `downcast_ref` or [`crate::find_cause`]. Its
/// [`source`](std::error::Error::source) is a [`Rejected`](crate::error::Rejected) marker (layer
/// `"circuit_breaker"`), so every rejection-aware part of palisade treats it
/// as a rejection:
///
/// ```
/// use std::time::Duration;
/// use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker, CircuitBreakerConfig, CircuitState};
///
/// let breaker = CircuitBreaker::new("payments", CircuitBreakerConfig::default());
/// breaker.transition_to_forced_open();
/// let err = breaker.try_acquire().unwrap_err();
/// assert_eq!(err.breaker(), "payments");
/// assert_eq!(err.state(), CircuitState::ForcedOpen);
/// assert_eq!(err.retry_in(), None);
///
/// let boxed: palisade::BoxError = err.into();
/// assert!(boxed.downcast_ref::<BreakerOpen>().is_some());
/// assert!(palisade::error::is_rejection(&*boxed));
/// ```
///
/// Building it formats nothing, copies no string and touches no reference
/// count shared by every thread: it holds the breaker itself (through the
/// handle that rejected the call: the reference count of that handle's
/// stripe, or nothing at all for a [`new_static`](super::CircuitBreaker::new_static)
/// breaker), whose name and [`Rejected`](crate::error::Rejected) marker are made once, when the
/// breaker is. Boxed, it takes one small allocation. The message is written
/// by `Display`, and [`retry_in`](Self::retry_in) is computed when asked.
///
/// While it lives it keeps the breaker's shared state alive, as a call in
/// flight does (a keyed layer does not evict a breaker whose rejection is
/// still held).
#[derive(Clone)]
pub struct BreakerOpen {
    breaker: CallRef,
    /// The end of the OPEN wait, when known: nanoseconds after an instant
    /// (the breaker's state-clock anchor, copied: it also lays the
    /// admission `Result` out so that the CLOSED path moves less), added up
    /// only when asked.
    until: Option<(Instant, u64)>,
    state: CircuitState,
}

impl BreakerOpen {
    /// `breaker`: see [`SharedRef::call_ref`](super::state::SharedRef::call_ref);
    /// `until`: the state-clock deadline of an OPEN wait, or `NO_DEADLINE`.
    #[inline]
    pub(super) fn new(breaker: CallRef, state: CircuitState, until: u64) -> Self {
        let until = (until != NO_DEADLINE).then(|| (breaker.state_clock.tokio_anchor(), until));
        Self {
            breaker,
            until,
            state,
        }
    }

    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        &self.breaker.name
    }

    /// The breaker's state when it rejected the call: `Open`, `ForcedOpen`
    /// or `HalfOpen`.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// How long until the breaker lets a trial call through, when known:
    /// the rest of the OPEN wait, from now (tokio's clock, read when this
    /// is called; zero once the wait is over). `None` when FORCED_OPEN
    /// (only an operator ends it) or HALF_OPEN (it waits for the trial
    /// calls in flight).
    pub fn retry_in(&self) -> Option<Duration> {
        self.retry_at()
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// When the breaker lets a trial call through, when known: the end of
    /// the OPEN wait (`None` as for [`retry_in`](Self::retry_in)).
    pub fn retry_at(&self) -> Option<Instant> {
        self.until.map(|(anchor, nanos)| {
            crate::clock::saturating_add(anchor, Duration::from_nanos(nanos))
        })
    }
}

impl fmt::Debug for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerOpen")
            .field("breaker", &self.breaker())
            .field("state", &self.state)
            .field("retry_at", &self.retry_at())
            .finish()
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker '{}' is {}", self.breaker(), self.state)?;
        match (self.state, self.retry_in()) {
            (_, Some(wait)) => write!(
                f,
                "; calls are rejected for another {:.3}s",
                wait.as_secs_f64()
            ),
            (CircuitState::HalfOpen, None) => {
                f.write_str("; all trial calls are in flight, waiting for their outcome")
            }
            (CircuitState::ForcedOpen, None) => {
                f.write_str("; calls are rejected until it is reset or moved to another state")
            }
            _ => f.write_str("; the call was rejected"),
        }
    }
}

impl std::error::Error for BreakerOpen {
    /// The breaker's [`Rejected`](crate::error::Rejected) marker (layer `"circuit_breaker"`).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.breaker.rejected)
    }
}

/// A `transition_to_*` call asked for a move resilience4j refuses: CLOSED
/// to HALF_OPEN (a trial needs an OPEN wait before it), or METRICS_ONLY to
/// OPEN or HALF_OPEN (METRICS_ONLY never trips; leave it with
/// `transition_to_closed`, `reset` or a manual state first). The breaker
/// is left as it was.
///
/// ```
/// use palisade::circuit_breaker::{CircuitBreaker, CircuitState};
///
/// let breaker = CircuitBreaker::with_defaults("payments");
/// let err = breaker.transition_to_half_open().unwrap_err();
/// assert_eq!((err.from(), err.to()), (CircuitState::Closed, CircuitState::HalfOpen));
/// assert_eq!(breaker.state(), CircuitState::Closed);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker '{breaker}' cannot move from {from} to {to}")]
pub struct IllegalStateTransition {
    breaker: Arc<str>,
    from: CircuitState,
    to: CircuitState,
}

impl IllegalStateTransition {
    pub(crate) fn new(breaker: Arc<str>, from: CircuitState, to: CircuitState) -> Self {
        Self { breaker, from, to }
    }

    /// The name of the breaker asked to move.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// The state it was in (and still is).
    pub fn from(&self) -> CircuitState {
        self.from
    }

    /// The state it was asked to move to.
    pub fn to(&self) -> CircuitState {
        self.to
    }
}
