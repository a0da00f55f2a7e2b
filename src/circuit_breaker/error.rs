//! The error a rejected call fails with.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::Rejected;

use super::state::{CallRef, CircuitState};

/// The layer kind a breaker's [`Rejected`] marker names.
pub(crate) const LAYER: &str = "circuit_breaker";

/// A call was rejected by a circuit breaker without reaching the service.
///
/// Returned (boxed in a `tower::BoxError`) when the breaker is OPEN or
/// FORCED_OPEN, or HALF_OPEN with every trial call already in flight. Find it
/// with `downcast_ref` or [`crate::find_cause`]. Its
/// [`source`](std::error::Error::source) is a [`Rejected`] marker (layer
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
/// count shared by every thread. The breaker's name and its
/// [`Rejected`] marker are made once, when the
/// breaker is; a rejection finds them through
///
/// - the marker interned for the breaker's name (a counted breaker, while
///   fewer than 1,024 names are interned): no reference
///   is counted, and the error does not keep the breaker alive;
/// - or the breaker itself: nothing to count for a
///   [`new_static`](super::CircuitBreaker::new_static) breaker; for a
///   counted one past the interning limit, the reference count of the
///   stripe of the handle that rejected the call (not one count that every
///   thread writes), which keeps the breaker's state alive while the error
///   lives, as a call in flight does.
///
/// Boxed, it takes one small allocation. The message is written by
/// `Display`, and [`retry_in`](Self::retry_in) is computed when asked.
#[derive(Clone)]
pub struct BreakerOpen {
    origin: Origin,
    /// The end of the OPEN wait, when known: nanoseconds after an instant
    /// (the breaker's state-clock anchor), added up only when asked.
    until: Option<(Instant, u64)>,
    state: CircuitState,
}

/// Where a [`BreakerOpen`] finds its breaker's name and marker.
#[derive(Clone)]
pub(super) enum Origin {
    /// The marker interned for the breaker's name.
    Interned(&'static Rejected),
    /// The breaker (see [`SharedRef::call_ref`](super::state::SharedRef::call_ref)).
    Breaker(CallRef),
}

/// How many breaker names [`BreakerOpen`]s share an interned, never freed
/// marker for (a counted breaker whose name comes later holds its breaker
/// instead). The bound keeps what is never freed small (names are at most
/// [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes when checked) however many
/// breakers a keyed layer or a balancer creates and drops.
const MAX_INTERNED_NAMES: usize = 1024;

/// The marker interned for `name`, interning it if there is room: `None`
/// once [`MAX_INTERNED_NAMES`] other names are.
pub(super) fn interned_marker(name: &Arc<str>) -> Option<&'static Rejected> {
    static MARKERS: OnceLock<Mutex<HashMap<Arc<str>, &'static Rejected>>> = OnceLock::new();
    let mut markers = MARKERS.get_or_init(Default::default).lock();
    if let Some(marker) = markers.get(name) {
        return Some(marker);
    }
    if markers.len() >= MAX_INTERNED_NAMES {
        return None;
    }
    let marker: &'static Rejected = Box::leak(Box::new(Rejected::new(LAYER, Arc::clone(name))));
    markers.insert(Arc::clone(name), marker);
    Some(marker)
}

impl BreakerOpen {
    /// `until`: the end of an OPEN wait, as the breaker's state-clock
    /// anchor and nanoseconds after it.
    #[inline]
    pub(super) fn new(origin: Origin, state: CircuitState, until: Option<(Instant, u64)>) -> Self {
        Self {
            origin,
            until,
            state,
        }
    }

    /// The breaker's marker.
    fn marker(&self) -> &Rejected {
        match &self.origin {
            Origin::Interned(marker) => marker,
            Origin::Breaker(breaker) => &breaker.rejected,
        }
    }

    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        self.marker().name()
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
    /// The breaker's [`Rejected`] marker (layer `"circuit_breaker"`).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.marker())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once() {
        let name: Arc<str> = "interned-once".into();
        let first = interned_marker(&name).expect("room for a name");
        let again = interned_marker(&"interned-once".into()).expect("interned");
        assert!(std::ptr::eq(first, again));
        assert_eq!((first.layer(), first.name()), (LAYER, "interned-once"));
    }
}
