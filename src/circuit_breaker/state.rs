//! The circuit breaker's state machine, independent of tower: its states,
//! the shared state every handle reads, and the handle itself.
//!
//! [`CircuitBreaker`] is a cheap, cloneable handle; every clone (and every
//! service built from it) shares one state machine. Calls ask it for a
//! [`CallPermit`](super::CallPermit) and report their
//! [`Outcome`](crate::classify::Outcome) through the permit.
//!
//! The state lives in one atomic word, `epoch << 3 | state`: admission in
//! CLOSED is one atomic load, and the epoch (bumped by every transition)
//! tells a finishing call whether the breaker has moved on since it was
//! admitted, in which case its outcome does not count towards the new state.
//! Transitions are rare and take a mutex; the CLOSED hot path never does.
//!
//! The breaker's other jobs have their own files: admitting a call and
//! recording its outcome in `admission.rs`, moving between states (and the
//! timers that move it) in `transition.rs`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::classify::Classify;
use crate::clock::{AnchoredClock, CallClock, duration_nanos};
use crate::events::{EventHub, EventStream};
use crate::sync::{CachePadded, StripedCounter};

use super::config::CircuitBreakerConfig;
use super::error::BreakerOpen;
use super::event::CircuitBreakerEvent;
use super::layer::CircuitBreakerLayer;
use super::metrics::CircuitBreakerMetrics;
use super::window::{Counts, RateThresholds, Window, rate_percent};

/// The states of a circuit breaker, as resilience4j names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass and are recorded; the breaker trips when a threshold is reached.
    Closed,
    /// Calls are rejected until the wait in OPEN is over.
    Open,
    /// A limited number of trial calls pass; their outcome decides CLOSED or OPEN.
    HalfOpen,
    /// Manual: every call passes and nothing is recorded.
    Disabled,
    /// Manual: every call is rejected.
    ForcedOpen,
    /// Manual: every call passes and is recorded, but the breaker never trips.
    MetricsOnly,
}

impl CircuitState {
    /// The resilience4j name: `CLOSED`, `OPEN`, `HALF_OPEN`, `DISABLED`,
    /// `FORCED_OPEN` or `METRICS_ONLY`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "CLOSED",
            CircuitState::Open => "OPEN",
            CircuitState::HalfOpen => "HALF_OPEN",
            CircuitState::Disabled => "DISABLED",
            CircuitState::ForcedOpen => "FORCED_OPEN",
            CircuitState::MetricsOnly => "METRICS_ONLY",
        }
    }

    /// Whether calls in this state are let through (all of them, or trial calls).
    pub fn admits_calls(self) -> bool {
        !matches!(self, CircuitState::Open | CircuitState::ForcedOpen)
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const STATE_BITS: u32 = 3;
pub(super) const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

#[inline]
pub(super) fn state_of(word: u64) -> CircuitState {
    match word & STATE_MASK {
        CLOSED => CircuitState::Closed,
        METRICS_ONLY => CircuitState::MetricsOnly,
        DISABLED => CircuitState::Disabled,
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        _ => CircuitState::ForcedOpen,
    }
}

// State codes in the low bits of the word. The states that let every call
// through come first, so admission in them is one comparison.
const CLOSED: u64 = 0;
const METRICS_ONLY: u64 = 1;
const DISABLED: u64 = 2;
pub(super) const OPEN: u64 = 3;
const HALF_OPEN: u64 = 4;
pub(super) const FORCED_OPEN: u64 = 5;

/// Whether the state in `word` lets every call through without a trial permit.
#[inline]
pub(super) fn admits_every_call(word: u64) -> bool {
    word & STATE_MASK < OPEN
}

#[inline]
pub(super) fn epoch_of(word: u64) -> u64 {
    word >> STATE_BITS
}

pub(super) fn encode(epoch: u64, state: CircuitState) -> u64 {
    let code = match state {
        CircuitState::Closed => CLOSED,
        CircuitState::MetricsOnly => METRICS_ONLY,
        CircuitState::Disabled => DISABLED,
        CircuitState::Open => OPEN,
        CircuitState::HalfOpen => HALF_OPEN,
        CircuitState::ForcedOpen => FORCED_OPEN,
    };
    (epoch << STATE_BITS) | code
}

/// HALF_OPEN trial permits are `epoch_tag << 32 | remaining`, so a permit is
/// never taken from (or returned to) the trial of another epoch.
#[inline]
pub(super) fn trial_tag(word: u64) -> u64 {
    (epoch_of(word) & 0xFFFF_FFFF) << 32
}

pub(super) const NO_DEADLINE: u64 = u64::MAX;

// `Shared::open_armed`: `tag << ARMED_TAG_SHIFT | time`, where `tag` is the
// low bits of the OPEN stay's epoch and `time` the coarse-clock time, in
// [`coarse_units`], before which that stay's wait surely runs.
pub(super) const ARMED_TAG_SHIFT: u32 = 40;
pub(super) const ARMED_TAG_MASK: u64 = (1 << (64 - ARMED_TAG_SHIFT)) - 1;
pub(super) const ARMED_TIME_MASK: u64 = (1 << ARMED_TAG_SHIFT) - 1;
/// log2 of the nanoseconds in one coarse unit (about a millisecond).
pub(super) const COARSE_UNIT_SHIFT: u32 = 20;

/// The coarse clock, in units of 2^20 ns (1.05 ms): 40 bits last 36 years.
#[inline]
pub(super) fn coarse_units() -> u64 {
    crate::clock::coarse_nanos() >> COARSE_UNIT_SHIFT
}

/// A circuit breaker: a shared state machine that lets calls through while
/// the dependency is healthy and rejects them at once while it is not.
///
/// Clones share the breaker. Build tower services from it with
/// [`layer`](Self::layer), or use it directly with
/// [`try_acquire`](Self::try_acquire):
///
/// ```
/// use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState, SlidingWindow};
/// use palisade::classify::Outcome;
///
/// let config = CircuitBreakerConfig::builder()
///     .sliding_window(SlidingWindow::count(4))
///     .minimum_number_of_calls(4)
///     .build()?;
/// let breaker = CircuitBreaker::new("inventory", config);
///
/// for outcome in [Outcome::Success, Outcome::Success] {
///     breaker.try_acquire()?.record(outcome);
/// }
/// for _ in 0..2 {
///     breaker.try_acquire()?.record(Outcome::Failure { retryable: true });
/// }
/// // 2 of 4 calls failed: 50 % reaches the default threshold.
/// assert_eq!(breaker.state(), CircuitState::Open);
/// assert!(breaker.try_acquire().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(super) shared: SharedRef,
}

/// How a handle (or a call) reaches the shared state, and what keeps it
/// alive.
///
/// A counted breaker's state is reached through a fixed set of
/// [`STRIPES`] reference-counted stripes, each on a cache line of its own.
/// Every handle (so every service clone) holds one of them, given
/// round-robin, and the calls it admits clone that stripe's `Arc`, not one
/// count shared by every call: clones used by different threads then never
/// write the same cache line per call.
pub(super) enum SharedRef {
    /// A breaker made by [`CircuitBreaker::new`]. A handle also holds
    /// `handle`, the breaker's stripes (to give its clones other ones); a
    /// call's reference holds its stripe alone.
    Counted {
        stripe: Arc<Stripe>,
        handle: Option<Arc<Stripes>>,
    },
    /// A breaker made with [`CircuitBreaker::new_static`]: never freed, and
    /// no reference is counted.
    Static(&'static Shared),
}

/// Stripes per counted breaker: up to this many service clones calling at
/// once count their calls on different cache lines.
pub(super) const STRIPES: usize = 8;

/// A counted breaker's stripes, held by its handles.
pub(super) struct Stripes {
    stripes: [Arc<Stripe>; STRIPES],
    /// The stripe the next handle gets.
    next: AtomicUsize,
}

/// One stripe: its `Arc`'s reference count is what a call increments and
/// decrements. Aligned so that count has a cache line (pair) of its own.
#[repr(align(128))]
pub(super) struct Stripe {
    shared: Arc<Shared>,
    /// For a timer started by a call, which holds no handle.
    all: Weak<Stripes>,
}

impl Stripes {
    /// The breaker's shared state.
    pub(super) fn shared(&self) -> &Shared {
        &self.stripes[0].shared
    }
}

impl SharedRef {
    /// A counted breaker's first handle.
    fn counted(shared: Shared) -> Self {
        let shared = Arc::new(shared);
        let all = Arc::new_cyclic(|all: &Weak<Stripes>| Stripes {
            stripes: std::array::from_fn(|_| {
                Arc::new(Stripe {
                    shared: Arc::clone(&shared),
                    all: all.clone(),
                })
            }),
            next: AtomicUsize::new(0),
        });
        Self::handle(all)
    }

    /// A new handle of a counted breaker, on the next stripe.
    pub(super) fn handle(all: Arc<Stripes>) -> Self {
        let next = all.next.fetch_add(1, Relaxed) % STRIPES;
        SharedRef::Counted {
            stripe: Arc::clone(&all.stripes[next]),
            handle: Some(all),
        }
    }

    /// A reference for one call: increments the reference count of this
    /// handle's stripe only.
    #[inline]
    pub(super) fn for_call(&self) -> Self {
        match self {
            SharedRef::Counted { stripe, .. } => SharedRef::Counted {
                stripe: Arc::clone(stripe),
                handle: None,
            },
            SharedRef::Static(shared) => SharedRef::Static(shared),
        }
    }

    /// What a timer holds: it must not keep a counted breaker alive.
    pub(super) fn downgrade(&self) -> Option<Weak<Stripes>> {
        match self {
            SharedRef::Counted { stripe, .. } => Some(stripe.all.clone()),
            SharedRef::Static(_) => None,
        }
    }

    /// Whether this is a counted breaker's handle, held by `handles` handles
    /// in all, with no call in flight.
    pub(super) fn is_only_held_by(&self, handles: usize) -> bool {
        let SharedRef::Counted {
            handle: Some(all), ..
        } = self
        else {
            return false;
        };
        let on_stripes: usize = all
            .stripes
            .iter()
            .map(|stripe| Arc::strong_count(stripe) - 1)
            .sum();
        Arc::strong_count(all) == handles && on_stripes == handles
    }
}

/// What a rejection holds of its breaker: the stripe of the handle that
/// rejected it (a counted breaker) or the breaker itself (a static one).
/// Smaller than a call's [`SharedRef`], and simpler to drop.
#[derive(Clone)]
pub(super) enum CallRef {
    Counted(Arc<Stripe>),
    Static(&'static Shared),
}

impl SharedRef {
    /// A reference for one rejection: as [`for_call`](Self::for_call), it
    /// increments the reference count of this handle's stripe only (and
    /// nothing for a static breaker).
    #[inline]
    pub(super) fn call_ref(&self) -> CallRef {
        match self {
            SharedRef::Counted { stripe, .. } => CallRef::Counted(Arc::clone(stripe)),
            SharedRef::Static(shared) => CallRef::Static(shared),
        }
    }
}

impl std::ops::Deref for CallRef {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        match self {
            CallRef::Counted(stripe) => &stripe.shared,
            CallRef::Static(shared) => shared,
        }
    }
}

impl Clone for SharedRef {
    /// A handle's clone is a handle on the next stripe; a call's reference
    /// is cloned on its stripe.
    fn clone(&self) -> Self {
        match self {
            SharedRef::Counted {
                handle: Some(all), ..
            } => Self::handle(Arc::clone(all)),
            other => other.for_call(),
        }
    }
}

impl std::ops::Deref for SharedRef {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        match self {
            SharedRef::Counted { stripe, .. } => &stripe.shared,
            SharedRef::Static(shared) => shared,
        }
    }
}

pub(super) struct Shared {
    /// `epoch << 3 | state`.
    pub(super) word: CachePadded<AtomicU64>,
    pub(super) trial_permits: CachePadded<AtomicU64>,
    /// State-clock nanoseconds at which OPEN lets a trial call through.
    pub(super) open_until: AtomicU64,
    /// While an OPEN stay's wait surely runs, the coarse-clock time before
    /// which a call may be rejected without reading the state clock, tagged
    /// with the stay's epoch; 0 otherwise. See `transition.rs`, "Arming".
    pub(super) open_armed: AtomicU64,
    /// State-clock nanoseconds at which HALF_OPEN gives up, or `NO_DEADLINE`.
    pub(super) half_open_deadline: AtomicU64,
    /// Rejections, striped: a rejection storm comes from every thread at once.
    pub(super) not_permitted: StripedCounter,
    /// Durations (nanoseconds) and number of the timed calls recorded.
    pub(super) call_nanos: StripedCounter,
    pub(super) timed_calls: StripedCounter,
    /// The counters' sums when the current state's figures began: every
    /// transition but one into OPEN (which keeps the figures of the state
    /// that sent it there, as resilience4j's does) starts them afresh.
    pub(super) per_state_base: PerStateBase,
    /// In METRICS_ONLY: whether the threshold-exceeded events of this stay
    /// were published (once each, as resilience4j does).
    pub(super) failure_rate_reported: AtomicBool,
    pub(super) slow_call_rate_reported: AtomicBool,
    pub(super) window: Window,
    pub(super) trial_thresholds: RateThresholds,
    /// `Some` when slow calls are detected.
    pub(super) slow_call_nanos: Option<u64>,
    /// Whether a finished call must read the clock.
    pub(super) needs_end_time: bool,
    pub(super) call_clock: AnchoredClock,
    pub(super) state_clock: AnchoredClock,
    pub(super) name: Arc<str>,
    /// The marker every rejection of this breaker gives as its source, made
    /// once.
    pub(super) rejected: crate::error::Rejected,
    pub(super) config: CircuitBreakerConfig,
    pub(super) control: Mutex<Control>,
    /// Subscribers of [`CircuitBreaker::subscribe`]: every event but the
    /// outcomes of permitted calls.
    pub(super) events: EventHub<CircuitBreakerEvent>,
    /// Subscribers of [`CircuitBreaker::subscribe_all`]: every event.
    pub(super) all_events: EventHub<CircuitBreakerEvent>,
    pub(super) exported: super::metrics::Exported,
}

impl Shared {
    fn new(name: Arc<str>, config: CircuitBreakerConfig) -> Self {
        let call_clock = AnchoredClock::new(config.call_clock);
        let window = Window::new(&config, 0);
        let slow_call_nanos = config.slow_call_duration_threshold.map(duration_nanos);
        Shared {
            word: CachePadded(AtomicU64::new(encode(0, CircuitState::Closed))),
            trial_permits: CachePadded(AtomicU64::new(0)),
            open_until: AtomicU64::new(0),
            open_armed: AtomicU64::new(0),
            half_open_deadline: AtomicU64::new(NO_DEADLINE),
            not_permitted: StripedCounter::new(),
            call_nanos: StripedCounter::new(),
            timed_calls: StripedCounter::new(),
            per_state_base: PerStateBase::default(),
            failure_rate_reported: AtomicBool::new(false),
            slow_call_rate_reported: AtomicBool::new(false),
            needs_end_time: slow_call_nanos.is_some() || window.needs_time(),
            window,
            trial_thresholds: RateThresholds {
                minimum_calls: u64::from(config.permitted_number_of_calls_in_half_open_state),
                failure_rate: config.failure_rate_threshold,
                slow_call_rate: slow_call_nanos.map(|_| config.slow_call_rate_threshold),
            },
            slow_call_nanos,
            call_clock,
            state_clock: AnchoredClock::new(CallClock::Tokio),
            exported: super::metrics::Exported::new(&name),
            rejected: crate::error::Rejected::new(super::error::LAYER, Arc::clone(&name)),
            name,
            events: EventHub::new(config.event_capacity),
            all_events: EventHub::new(config.event_capacity),
            config,
            control: Mutex::new(Control {
                trial_epoch: u64::MAX,
                trial: Counts::default(),
                trips_in_a_row: 0,
                tripped_by: Counts::default(),
                tripped_thresholds: None,
            }),
        }
    }
}

/// State changed only under the transition lock.
pub(super) struct Control {
    pub(super) trial_epoch: u64,
    pub(super) trial: Counts,
    /// Trips since the breaker was last CLOSED, for the growing break duration.
    pub(super) trips_in_a_row: u32,
    /// While OPEN: the figures of the window that sent the breaker there
    /// (the CLOSED window, or the HALF_OPEN trial), frozen when it left.
    pub(super) tripped_by: Counts,
    /// The thresholds that window was judged by (`None` for a
    /// consecutive-failures window or a manual move from a state that
    /// records nothing).
    pub(super) tripped_thresholds: Option<RateThresholds>,
}

/// See [`Shared::per_state_base`].
#[derive(Default)]
pub(super) struct PerStateBase {
    pub(super) not_permitted: AtomicU64,
    pub(super) call_nanos: AtomicU64,
    pub(super) timed_calls: AtomicU64,
}

impl Shared {
    /// Publishes an event that both kinds of subscribers receive
    /// (transitions, resets, thresholds exceeded, rejections).
    #[inline]
    pub(super) fn publish(&self, event: impl FnOnce() -> CircuitBreakerEvent) {
        match (self.events.is_observed(), self.all_events.is_observed()) {
            (false, false) => {}
            (true, false) => self.events.publish_with(event),
            (false, true) => self.all_events.publish_with(event),
            (true, true) => {
                let event = event();
                self.events.publish_with(|| event.clone());
                self.all_events.publish_with(|| event);
            }
        }
    }

    /// Publishes the outcome of a permitted call, which only the
    /// subscribers of [`CircuitBreaker::subscribe_all`] receive.
    #[inline]
    pub(super) fn publish_call(&self, event: impl FnOnce() -> CircuitBreakerEvent) {
        self.all_events.publish_with(event);
    }

    /// Starts the per-state figures afresh (under the transition lock).
    pub(super) fn start_per_state_figures(&self) {
        let base = &self.per_state_base;
        base.not_permitted.store(self.not_permitted.sum(), Release);
        base.call_nanos.store(self.call_nanos.sum(), Release);
        base.timed_calls.store(self.timed_calls.sum(), Release);
    }

    /// What the sliding window holds now, and the thresholds it judges by.
    pub(super) fn window_counts(&self) -> (Counts, Option<RateThresholds>) {
        let now = if self.window.needs_time() {
            self.call_clock.now_nanos()
        } else {
            0
        };
        self.window.counts(now)
    }
}

impl CircuitBreaker {
    /// Creates it after checking `name`, which appears in errors, events,
    /// traces and metrics labels: it must be non-empty, without surrounding
    /// whitespace or control characters, and at most
    /// [`MAX_NAME_LEN`](crate::circuit_breaker::MAX_NAME_LEN) bytes; a
    /// [`ConfigError`](crate::ConfigError) on field `name` says which rule
    /// it broke. Use it for names that come from configuration or requests;
    /// [`new`](Self::new) takes a name written in the code as it is.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("circuit breaker", name)?;
        Ok(Self::new(name, config))
    }

    /// Creates a breaker named `name` (used in errors, events and traces),
    /// in the configured initial state (CLOSED by default). The name is taken
    /// as it is: check names that come from input with
    /// [`try_new`](Self::try_new).
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Self {
        let breaker = Self {
            shared: SharedRef::counted(Shared::new(name.into(), config)),
        };
        breaker.enter_initial_state();
        breaker
    }

    /// Creates a breaker that is never freed, for breakers that live as long
    /// as the process (one per downstream dependency, say).
    ///
    /// It behaves exactly like [`new`](Self::new)'s, but cloning it, and each
    /// call through it, copies a pointer instead of incrementing and
    /// decrementing a reference count (a `new` breaker counts each call on
    /// the stripe of the handle that admitted it, so threads do not contend,
    /// but the two atomic operations remain). Its memory (a few hundred
    /// bytes plus the window) is never returned, so do not create such
    /// breakers in a loop.
    pub fn new_static(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared::new(name.into(), config)));
        let breaker = Self {
            shared: SharedRef::Static(shared),
        };
        breaker.enter_initial_state();
        breaker
    }

    /// Moves a new breaker from CLOSED to its configured initial state,
    /// with that state's deadline and timer, as any transition does.
    fn enter_initial_state(&self) {
        let initial = self.shared.config.initial_state;
        if initial != CircuitState::Closed {
            let word = self.shared.word.load(Acquire);
            self.transition(word, initial, super::event::TransitionReason::InitialState);
        }
    }

    /// A breaker with the [default configuration](CircuitBreakerConfig::default).
    pub fn with_defaults(name: impl Into<Arc<str>>) -> Self {
        Self::new(name, CircuitBreakerConfig::default())
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether `self` and `other` are the same breaker (clones of one handle).
    pub fn ptr_eq(&self, other: &CircuitBreaker) -> bool {
        std::ptr::eq::<Shared>(&*self.shared, &*other.shared)
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.shared.config
    }

    /// The current state. OPEN is reported until a call (or, with automatic
    /// transitions, the timer) moves it to HALF_OPEN.
    pub fn state(&self) -> CircuitState {
        state_of(self.shared.word.load(Acquire))
    }

    /// Runs `call` through the breaker, outside of tower: rejected calls fail
    /// with [`CallError::Rejected`] without running `call`; admitted calls
    /// are classified by `classifier` and recorded. Dropping the returned
    /// future before it completes records nothing.
    ///
    /// ```
    /// use palisade::circuit_breaker::{CallError, CircuitBreaker};
    /// use palisade::classify::DefaultClassifier;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::with_defaults("ledger");
    /// let balance = breaker
    ///     .run(&DefaultClassifier, || async { Ok::<_, std::io::Error>(42) })
    ///     .await;
    /// assert_eq!(balance.ok(), Some(42));
    ///
    /// breaker.transition_to_forced_open();
    /// let rejected = breaker
    ///     .run(&DefaultClassifier, || async { Ok::<_, std::io::Error>(42) })
    ///     .await;
    /// assert!(matches!(rejected, Err(CallError::Rejected(_))));
    /// # }
    /// ```
    pub async fn run<T, E, C, F, Fut>(&self, classifier: &C, call: F) -> Result<T, CallError<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let result = call().await;
        permit.record_result(result.as_ref(), classifier);
        result.map_err(CallError::Inner)
    }

    /// A layer that wraps services with this breaker, classifying outcomes
    /// with [`DefaultClassifier`](crate::classify::DefaultClassifier).
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(self.clone())
    }

    /// Subscribes to what this breaker does: its state transitions,
    /// resets, exceeded thresholds and the calls it rejects. The outcomes
    /// of the calls it lets through (`Success`, `Failure`, `Ignored`) are
    /// not delivered: subscribe with [`subscribe_all`](Self::subscribe_all)
    /// for those.
    ///
    /// A subscriber that is not draining its stream costs the calls the
    /// breaker lets through nothing: the CLOSED hot path publishes nothing
    /// to it. Publishing costs one atomic load while nobody subscribes.
    pub fn subscribe(&self) -> EventStream<CircuitBreakerEvent> {
        self.shared.events.subscribe()
    }

    /// Subscribes to every event of this breaker: what
    /// [`subscribe`](Self::subscribe) delivers, and the outcome of every
    /// call it lets through
    /// ([`Success`](super::CircuitBreakerEventKind::Success),
    /// [`Failure`](super::CircuitBreakerEventKind::Failure),
    /// [`Ignored`](super::CircuitBreakerEventKind::Ignored)), as
    /// resilience4j's `onEvent` consumers receive them.
    ///
    /// While such a subscriber has room in its buffer (`event_capacity`
    /// events), every call sends it an event. Once its buffer is full (it
    /// is not draining), it misses the events that follow
    /// ([`RecvError::Lagged`](crate::events::RecvError::Lagged) tells how
    /// many, after the events it holds: see
    /// [`events`](crate::events#a-subscriber-that-falls-behind)), and a
    /// call only counts the event missed: the CLOSED fast path is kept, at
    /// about 16 instructions more per call (`BENCHMARKS.md` gives the cost).
    /// Use [`subscribe`](Self::subscribe) when transitions and rejections
    /// are enough.
    pub fn subscribe_all(&self) -> EventStream<CircuitBreakerEvent> {
        self.shared.all_events.subscribe()
    }

    /// A snapshot of the breaker's state and figures.
    pub fn metrics(&self) -> CircuitBreakerMetrics {
        let s = &*self.shared;
        let word = s.word.load(Acquire);
        let state = state_of(word);
        let (counts, thresholds, trial_permits_available) = match state {
            CircuitState::HalfOpen => {
                let control = s.control.lock();
                let permits = s.trial_permits.load(Acquire);
                let available = (permits & !0xFFFF_FFFF == trial_tag(word))
                    .then_some((permits & 0xFFFF_FFFF) as u32);
                (control.trial, Some(s.trial_thresholds), available)
            }
            CircuitState::Open => {
                let control = s.control.lock();
                (control.tripped_by, control.tripped_thresholds, None)
            }
            _ => {
                let (counts, thresholds) = s.window_counts();
                (counts, thresholds, None)
            }
        };
        let evaluated = thresholds.filter(|t| counts.total > 0 && counts.total >= t.minimum_calls);
        let retry_in = (state == CircuitState::Open).then(|| {
            let now = s.state_clock.now_nanos();
            Duration::from_nanos(s.open_until.load(Acquire).saturating_sub(now))
        });
        let base = &s.per_state_base;
        let not_permitted_base = base.not_permitted.load(Acquire);
        let call_nanos_base = base.call_nanos.load(Acquire);
        let timed_calls_base = base.timed_calls.load(Acquire);
        let total_call_nanos = s.call_nanos.sum().saturating_sub(call_nanos_base);
        let timed_calls = s.timed_calls.sum().saturating_sub(timed_calls_base);
        CircuitBreakerMetrics {
            state,
            failure_rate: evaluated.map(|_| rate_percent(counts.failed, counts.total)),
            slow_call_rate: evaluated
                .filter(|t| t.slow_call_rate.is_some())
                .map(|_| rate_percent(counts.slow, counts.total)),
            buffered_calls: counts.total,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            successful_calls: counts.total - counts.failed,
            not_permitted_calls: s.not_permitted.sum().saturating_sub(not_permitted_base),
            total_call_duration: Duration::from_nanos(total_call_nanos),
            average_call_duration: (timed_calls > 0)
                .then(|| Duration::from_nanos(total_call_nanos / timed_calls)),
            consecutive_failures: s.window.consecutive_failures(),
            retry_in,
            trial_permits_available,
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The error of [`CircuitBreaker::run`]: the breaker rejected the call, or
/// the call itself failed.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker rejected the call; it did not run.
    Rejected(BreakerOpen),
    /// The call ran and failed with this error.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected(open) => open.fmt(f),
            CallError::Inner(error) => error.fmt(f),
        }
    }
}

/// Transparent: displays as, and has the source of, the error it holds.
impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Rejected(open) => open.source(),
            CallError::Inner(error) => error.source(),
        }
    }
}
