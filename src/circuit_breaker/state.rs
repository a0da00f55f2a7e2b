//! The circuit breaker's state machine, independent of tower.
//!
//! [`CircuitBreaker`] is a cheap, cloneable handle; every clone (and every
//! service built from it) shares one state machine. Calls ask it for a
//! [`CallPermit`] and report their [`Outcome`] through the permit.
//!
//! The state lives in one atomic word, `epoch << 3 | state`: admission in
//! CLOSED is one atomic load, and the epoch (bumped by every transition)
//! tells a finishing call whether the breaker has moved on since it was
//! admitted, in which case its outcome does not count towards the new state.
//! Transitions are rare and take a mutex; the CLOSED hot path never does.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::classify::{Classify, Outcome};
use crate::clock::{AnchoredClock, CallClock, duration_nanos};
use crate::events::{EventHub, EventStream};
use crate::sync::{CachePadded, StripedCounter};

use super::config::CircuitBreakerConfig;
use super::error::BreakerOpen;
use super::event::{CircuitBreakerEvent, CircuitBreakerEventKind as EventKind, TransitionReason};
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
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

#[inline]
fn state_of(word: u64) -> CircuitState {
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
const OPEN: u64 = 3;
const HALF_OPEN: u64 = 4;
const FORCED_OPEN: u64 = 5;

/// Whether the state in `word` lets every call through without a trial permit.
#[inline]
fn admits_every_call(word: u64) -> bool {
    word & STATE_MASK < OPEN
}

#[inline]
fn epoch_of(word: u64) -> u64 {
    word >> STATE_BITS
}

fn encode(epoch: u64, state: CircuitState) -> u64 {
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
fn trial_tag(word: u64) -> u64 {
    (epoch_of(word) & 0xFFFF_FFFF) << 32
}

const NO_DEADLINE: u64 = u64::MAX;

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
    shared: SharedRef,
}

/// How a handle reaches the shared state: reference-counted, or leaked for
/// the life of the process so that clones and permits copy a pointer instead
/// of touching a reference count (see [`CircuitBreaker::new_static`]).
#[derive(Clone)]
enum SharedRef {
    Counted(Arc<Shared>),
    Static(&'static Shared),
}

impl std::ops::Deref for SharedRef {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        match self {
            SharedRef::Counted(shared) => shared,
            SharedRef::Static(shared) => shared,
        }
    }
}

/// What a timer task holds: it must not keep a counted breaker alive.
enum TimerRef {
    Counted(Weak<Shared>),
    Static(&'static Shared),
}

impl TimerRef {
    fn upgrade(&self) -> Option<CircuitBreaker> {
        let shared = match self {
            TimerRef::Counted(weak) => SharedRef::Counted(weak.upgrade()?),
            TimerRef::Static(shared) => SharedRef::Static(shared),
        };
        Some(CircuitBreaker { shared })
    }
}

struct Shared {
    /// `epoch << 3 | state`.
    word: CachePadded<AtomicU64>,
    trial_permits: CachePadded<AtomicU64>,
    /// State-clock nanoseconds at which OPEN lets a trial call through.
    open_until: AtomicU64,
    /// State-clock nanoseconds at which HALF_OPEN gives up, or `NO_DEADLINE`.
    half_open_deadline: AtomicU64,
    /// Rejections, striped: a rejection storm comes from every thread at once.
    not_permitted: StripedCounter,
    window: Window,
    trial_thresholds: RateThresholds,
    /// `Some` when slow calls are detected.
    slow_call_nanos: Option<u64>,
    /// Whether a finished call must read the clock.
    needs_end_time: bool,
    call_clock: AnchoredClock,
    state_clock: AnchoredClock,
    name: Arc<str>,
    config: CircuitBreakerConfig,
    control: Mutex<Control>,
    events: EventHub<CircuitBreakerEvent>,
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
            half_open_deadline: AtomicU64::new(NO_DEADLINE),
            not_permitted: StripedCounter::new(),
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
            name,
            events: EventHub::new(config.event_capacity),
            config,
            control: Mutex::new(Control {
                trial_epoch: u64::MAX,
                trial: Counts::default(),
                trips_in_a_row: 0,
            }),
        }
    }
}

/// State changed only under the transition lock.
struct Control {
    trial_epoch: u64,
    trial: Counts,
    /// Trips since the breaker was last CLOSED, for the growing break duration.
    trips_in_a_row: u32,
}

/// A transition that happened, to announce once the lock is released.
struct Transition {
    from: CircuitState,
    to: CircuitState,
    reason: TransitionReason,
    word: u64,
    /// State-clock deadline of the new state, if it has one.
    deadline: Option<u64>,
}

impl CircuitBreaker {
    /// Creates a breaker named `name` (used in errors, events and traces), CLOSED.
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Self {
        Self {
            shared: SharedRef::Counted(Arc::new(Shared::new(name.into(), config))),
        }
    }

    /// Creates a breaker that is never freed, for breakers that live as long
    /// as the process (one per downstream dependency, say).
    ///
    /// It behaves exactly like [`new`](Self::new)'s, but cloning it, and each
    /// call through it, copies a pointer instead of incrementing and
    /// decrementing a shared reference count: on the benchmark machine those
    /// two uncontended atomic read-modify-writes cost about 17 ns, most of a
    /// CLOSED call's overhead. Its memory (a few hundred bytes plus the
    /// window) is never returned, so do not create such breakers in a loop.
    pub fn new_static(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared::new(name.into(), config)));
        Self {
            shared: SharedRef::Static(shared),
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

    /// Subscribes to this breaker's events (transitions, call outcomes,
    /// rejections). Publishing costs one atomic load while nobody subscribes.
    pub fn subscribe(&self) -> EventStream<CircuitBreakerEvent> {
        self.shared.events.subscribe()
    }

    /// Asks to make a call. On success the returned permit must be given the
    /// call's outcome ([`CallPermit::record`]); a permit dropped without an
    /// outcome (a cancelled call) records nothing and gives its HALF_OPEN
    /// trial slot back.
    ///
    /// Fails with [`BreakerOpen`] when the breaker rejects the call.
    #[inline]
    pub fn try_acquire(&self) -> Result<CallPermit, BreakerOpen> {
        let mut permit = self.try_acquire_untimed()?;
        permit.start_timer();
        Ok(permit)
    }

    /// [`try_acquire`](Self::try_acquire) without starting the call's timer
    /// (for services, which start it in `call`, not in `poll_ready`).
    #[inline]
    pub(crate) fn try_acquire_untimed(&self) -> Result<CallPermit, BreakerOpen> {
        let word = self.shared.word.load(Acquire);
        if admits_every_call(word) {
            Ok(self.permit(word, false))
        } else {
            self.acquire_slow(word)
        }
    }

    /// Admission for a service's `poll_ready`: in the states that let every
    /// call through this is just the state word, so nothing is cloned or
    /// moved until `call` builds the permit with [`permit_for`](Self::permit_for).
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let word = self.shared.word.load(Acquire);
        if admits_every_call(word) {
            Admission::Granted(word)
        } else {
            match self.acquire_slow(word) {
                Ok(permit) => Admission::Permit(permit),
                Err(rejection) => Admission::Rejected(rejection),
            }
        }
    }

    /// Whether [`admit`](Self::admit) would let a call through now, without
    /// asking: nothing is counted, no transition is made, no trial slot is
    /// taken. An OPEN breaker whose wait is over answers `true` (the call
    /// that follows moves it to HALF_OPEN). For a balancer choosing among
    /// several breakers; `admit` may still reject if the state moves between.
    #[inline]
    pub(crate) fn would_admit(&self) -> bool {
        let s = &*self.shared;
        let word = s.word.load(Acquire);
        if admits_every_call(word) {
            return true;
        }
        match state_of(word) {
            CircuitState::Open => s.state_clock.now_nanos() >= s.open_until.load(Acquire),
            CircuitState::HalfOpen => {
                let permits = s.trial_permits.load(Acquire);
                // Another epoch's trial: let `admit` decide.
                permits & !0xFFFF_FFFF != trial_tag(word) || permits & 0xFFFF_FFFF != 0
            }
            CircuitState::ForcedOpen => false,
            CircuitState::Closed | CircuitState::MetricsOnly | CircuitState::Disabled => true,
        }
    }

    /// The permit of an [`Admission::Granted`] call, its timer started.
    #[inline]
    pub(crate) fn permit_for(&self, word: u64) -> CallPermit {
        let mut permit = self.permit(word, false);
        permit.start_timer();
        permit
    }

    #[inline]
    fn permit(&self, word: u64, trial: bool) -> CallPermit {
        CallPermit {
            breaker: self.clone(),
            word,
            started: 0,
            trial,
            settled: false,
        }
    }

    #[inline]
    fn start_time(&self) -> u64 {
        match self.shared.slow_call_nanos {
            Some(_) => self.shared.call_clock.now_nanos(),
            None => 0,
        }
    }

    #[cold]
    fn acquire_slow(&self, mut word: u64) -> Result<CallPermit, BreakerOpen> {
        let s = &*self.shared;
        loop {
            match state_of(word) {
                CircuitState::Closed | CircuitState::MetricsOnly | CircuitState::Disabled => {
                    return Ok(self.permit(word, false));
                }
                CircuitState::ForcedOpen => return Err(self.reject(CircuitState::ForcedOpen, None)),
                CircuitState::Open => {
                    let now = s.state_clock.now_nanos();
                    let until = s.open_until.load(Acquire);
                    if now < until {
                        let retry_in = Duration::from_nanos(until - now);
                        return Err(self.reject(CircuitState::Open, Some(retry_in)));
                    }
                    self.transition(
                        word,
                        CircuitState::HalfOpen,
                        TransitionReason::WaitDurationElapsed,
                    );
                }
                CircuitState::HalfOpen => {
                    let deadline = s.half_open_deadline.load(Acquire);
                    if deadline != NO_DEADLINE && s.state_clock.now_nanos() >= deadline {
                        self.transition(
                            word,
                            CircuitState::Open,
                            TransitionReason::MaxWaitInHalfOpenElapsed,
                        );
                    } else {
                        match self.take_trial_permit(word) {
                            Some(true) => return Ok(self.permit(word, true)),
                            Some(false) => return Err(self.reject(CircuitState::HalfOpen, None)),
                            None if s.word.load(Acquire) == word => {
                                return Err(self.reject(CircuitState::HalfOpen, None));
                            }
                            None => {}
                        }
                    }
                }
            }
            word = s.word.load(Acquire);
        }
    }

    /// `Some(true)`: a permit was taken; `Some(false)`: none left;
    /// `None`: the trial belongs to another epoch.
    fn take_trial_permit(&self, word: u64) -> Option<bool> {
        let tag = trial_tag(word);
        let permits = &self.shared.trial_permits;
        let mut current = permits.load(Acquire);
        loop {
            if current & !0xFFFF_FFFF != tag {
                return None;
            }
            if current & 0xFFFF_FFFF == 0 {
                return Some(false);
            }
            match permits.compare_exchange_weak(current, current - 1, AcqRel, Acquire) {
                Ok(_) => return Some(true),
                Err(actual) => current = actual,
            }
        }
    }

    fn release_trial_permit(&self, word: u64) {
        let tag = trial_tag(word);
        let _ = self
            .shared
            .trial_permits
            .fetch_update(AcqRel, Acquire, |current| {
                (current & !0xFFFF_FFFF == tag).then_some(current + 1)
            });
    }

    fn reject(&self, state: CircuitState, retry_in: Option<Duration>) -> BreakerOpen {
        let s = &*self.shared;
        s.not_permitted.add(1);
        tracing::debug!(
            breaker = %s.name,
            state = %state,
            retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
            "circuit breaker rejected a call"
        );
        s.events.publish_with(|| CircuitBreakerEvent {
            breaker: Arc::clone(&s.name),
            kind: EventKind::Rejected { state, retry_in },
        });
        BreakerOpen::new(Arc::clone(&s.name), state, retry_in)
    }

    /// Records the outcome of a call admitted under `word`.
    #[inline(always)]
    fn on_result(&self, word: u64, trial: bool, started: u64, outcome: Outcome) {
        let s = &*self.shared;
        // The steady state of a healthy dependency: an untimed, unobserved
        // success that the window would not change. Recording it is a load.
        if outcome == Outcome::Success
            && !trial
            && !s.needs_end_time
            && !s.events.is_observed()
            && s.window.success_changes_nothing()
        {
            return;
        }
        self.on_result_slow(word, trial, started, outcome);
    }

    #[inline(never)]
    fn on_result_slow(&self, word: u64, trial: bool, started: u64, outcome: Outcome) {
        let s = &*self.shared;
        let state = state_of(word);
        if state == CircuitState::Disabled {
            return;
        }
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure { .. } => true,
            Outcome::Ignored => {
                s.events.publish_with(|| CircuitBreakerEvent {
                    breaker: Arc::clone(&s.name),
                    kind: EventKind::Ignored,
                });
                if trial {
                    self.release_trial_permit(word);
                }
                return;
            }
        };
        let now = if s.needs_end_time {
            s.call_clock.now_nanos()
        } else {
            0
        };
        let elapsed = s.slow_call_nanos.map(|_| now.saturating_sub(started));
        let slow = match (elapsed, s.slow_call_nanos) {
            (Some(elapsed), Some(threshold)) => elapsed > threshold,
            _ => false,
        };
        s.events.publish_with(|| {
            let elapsed = elapsed.map(Duration::from_nanos);
            CircuitBreakerEvent {
                breaker: Arc::clone(&s.name),
                kind: if failed {
                    EventKind::Failure { elapsed, slow }
                } else {
                    EventKind::Success { elapsed, slow }
                },
            }
        });
        if s.word.load(Acquire) != word {
            // The breaker changed state since this call was admitted: its
            // outcome belongs to a state that no longer exists.
            return;
        }
        if trial {
            self.record_trial(word, failed, slow);
        } else if let Some(reason) = s.window.record(failed, slow, now) {
            if state == CircuitState::Closed {
                self.transition(word, CircuitState::Open, TransitionReason::Tripped(reason));
            }
        }
    }

    fn record_trial(&self, word: u64, failed: bool, slow: bool) {
        let s = &*self.shared;
        let transition = {
            let mut control = s.control.lock();
            if s.word.load(Acquire) != word || control.trial_epoch != epoch_of(word) {
                return;
            }
            control.trial.total += 1;
            control.trial.failed += u64::from(failed);
            control.trial.slow += u64::from(slow);
            if control.trial.total < s.trial_thresholds.minimum_calls {
                return;
            }
            match s.trial_thresholds.evaluate(control.trial) {
                Some(reason) => self.transition_locked(
                    &mut control,
                    word,
                    CircuitState::Open,
                    TransitionReason::Tripped(reason),
                ),
                None => self.transition_locked(
                    &mut control,
                    word,
                    CircuitState::Closed,
                    TransitionReason::TrialCallsSucceeded,
                ),
            }
        };
        if let Some(transition) = transition {
            self.announce(transition);
        }
    }

    /// Moves from the state in `from_word` to `to`, unless another thread
    /// moved the breaker first. Returns whether this call made the move.
    fn transition(&self, from_word: u64, to: CircuitState, reason: TransitionReason) -> bool {
        let transition = {
            let mut control = self.shared.control.lock();
            self.transition_locked(&mut control, from_word, to, reason)
        };
        match transition {
            Some(transition) => {
                self.announce(transition);
                true
            }
            None => false,
        }
    }

    fn transition_locked(
        &self,
        control: &mut Control,
        from_word: u64,
        to: CircuitState,
        reason: TransitionReason,
    ) -> Option<Transition> {
        let s = &*self.shared;
        let current = s.word.load(Acquire);
        if current != from_word {
            return None;
        }
        let new_word = encode(epoch_of(current) + 1, to);
        let now = s.state_clock.now_nanos();
        let mut deadline = None;
        match to {
            CircuitState::Closed | CircuitState::MetricsOnly => {
                let call_now = if s.window.needs_time() {
                    s.call_clock.now_nanos()
                } else {
                    0
                };
                s.window.reset(call_now);
                if to == CircuitState::Closed {
                    control.trips_in_a_row = 0;
                }
            }
            CircuitState::Open => {
                control.trips_in_a_row = control.trips_in_a_row.saturating_add(1);
                let wait = s
                    .config
                    .break_duration
                    .wait_after(control.trips_in_a_row, s.config.wait_duration_in_open_state);
                let until = now.saturating_add(duration_nanos(wait));
                s.open_until.store(until, Release);
                deadline = Some(until);
            }
            CircuitState::HalfOpen => {
                let permitted = u64::from(s.config.permitted_number_of_calls_in_half_open_state);
                s.trial_permits
                    .store(trial_tag(new_word) | permitted, Release);
                control.trial_epoch = epoch_of(new_word);
                control.trial = Counts::default();
                let max_wait = s.config.max_wait_duration_in_half_open_state;
                let until = max_wait.map_or(NO_DEADLINE, |d| now.saturating_add(duration_nanos(d)));
                s.half_open_deadline.store(until, Release);
                deadline = max_wait.map(|_| until);
            }
            CircuitState::Disabled | CircuitState::ForcedOpen => {}
        }
        s.word.store(new_word, Release);
        Some(Transition {
            from: state_of(current),
            to,
            reason,
            word: new_word,
            deadline,
        })
    }

    fn announce(&self, t: Transition) {
        let s = &*self.shared;
        let retry_in_ms = t
            .deadline
            .map(|d| d.saturating_sub(s.state_clock.now_nanos()) / 1_000_000);
        if matches!(t.to, CircuitState::Open | CircuitState::ForcedOpen) {
            tracing::warn!(breaker = %s.name, from = %t.from, to = %t.to, reason = ?t.reason, retry_in_ms, "circuit breaker state changed");
        } else {
            tracing::info!(breaker = %s.name, from = %t.from, to = %t.to, reason = ?t.reason, "circuit breaker state changed");
        }
        s.events.publish_with(|| CircuitBreakerEvent {
            breaker: Arc::clone(&s.name),
            kind: EventKind::StateTransition {
                from: t.from,
                to: t.to,
                reason: t.reason,
            },
        });
        let timer = match (t.to, t.deadline) {
            (CircuitState::Open, Some(until))
                if s.config.automatic_transition_from_open_to_half_open =>
            {
                Some((
                    until,
                    CircuitState::HalfOpen,
                    TransitionReason::WaitDurationElapsed,
                ))
            }
            (CircuitState::HalfOpen, Some(until)) => Some((
                until,
                CircuitState::Open,
                TransitionReason::MaxWaitInHalfOpenElapsed,
            )),
            _ => None,
        };
        if let Some((until, to, reason)) = timer {
            self.schedule(t.word, until, to, reason);
        }
    }

    /// Moves `word` to `to` at state-clock time `until`, if a tokio runtime
    /// is available; otherwise the next call makes the move lazily.
    fn schedule(&self, word: u64, until: u64, to: CircuitState, reason: TransitionReason) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(breaker = %self.shared.name, "no tokio runtime: the timed transition happens on the next call");
            return;
        };
        let at = self.shared.state_clock.instant_at(until);
        let target = match &self.shared {
            SharedRef::Counted(shared) => TimerRef::Counted(Arc::downgrade(shared)),
            SharedRef::Static(shared) => TimerRef::Static(shared),
        };
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(breaker) = target.upgrade() {
                breaker.transition(word, to, reason);
            }
        });
    }

    fn force(&self, to: CircuitState, reason: TransitionReason) {
        loop {
            let word = self.shared.word.load(Acquire);
            if state_of(word) == to && reason != TransitionReason::Reset {
                return;
            }
            if self.transition(word, to, reason) {
                return;
            }
        }
    }

    /// Empties the window and moves to CLOSED, from any state.
    pub fn reset(&self) {
        self.force(CircuitState::Closed, TransitionReason::Reset);
    }

    /// Moves to CLOSED with an empty window (no-op if already CLOSED).
    pub fn transition_to_closed(&self) {
        self.force(CircuitState::Closed, TransitionReason::Manual);
    }

    /// Moves to OPEN for the configured wait (no-op if already OPEN).
    pub fn transition_to_open(&self) {
        self.force(CircuitState::Open, TransitionReason::Manual);
    }

    /// Moves to HALF_OPEN with a fresh set of trial permits (no-op if
    /// already HALF_OPEN).
    pub fn transition_to_half_open(&self) {
        self.force(CircuitState::HalfOpen, TransitionReason::Manual);
    }

    /// Moves to DISABLED: every call passes, nothing is recorded.
    pub fn transition_to_disabled(&self) {
        self.force(CircuitState::Disabled, TransitionReason::Manual);
    }

    /// Moves to FORCED_OPEN: every call is rejected until another manual
    /// transition or [`reset`](Self::reset).
    pub fn transition_to_forced_open(&self) {
        self.force(CircuitState::ForcedOpen, TransitionReason::Manual);
    }

    /// Moves to METRICS_ONLY with an empty window: every call passes and is
    /// recorded, and the breaker never trips.
    pub fn transition_to_metrics_only(&self) {
        self.force(CircuitState::MetricsOnly, TransitionReason::Manual);
    }

    /// A snapshot of the breaker's state and figures.
    pub fn metrics(&self) -> CircuitBreakerMetrics {
        let s = &*self.shared;
        let word = s.word.load(Acquire);
        let state = state_of(word);
        let (counts, thresholds, trial_permits_available) = if state == CircuitState::HalfOpen {
            let control = s.control.lock();
            let permits = s.trial_permits.load(Acquire);
            let available = (permits & !0xFFFF_FFFF == trial_tag(word))
                .then_some((permits & 0xFFFF_FFFF) as u32);
            (control.trial, Some(s.trial_thresholds), available)
        } else {
            let now = if s.window.needs_time() {
                s.call_clock.now_nanos()
            } else {
                0
            };
            let (counts, thresholds) = s.window.counts(now);
            (counts, thresholds, None)
        };
        let evaluated = thresholds.filter(|t| counts.total > 0 && counts.total >= t.minimum_calls);
        let retry_in = (state == CircuitState::Open).then(|| {
            let now = s.state_clock.now_nanos();
            Duration::from_nanos(s.open_until.load(Acquire).saturating_sub(now))
        });
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
            not_permitted_calls: s.not_permitted.sum(),
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

/// What a service's `poll_ready` got from the breaker.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The state in this word lets every call through: no permit to hold.
    Granted(u64),
    /// A permit to hold until `call` (a HALF_OPEN trial slot, say).
    Permit(CallPermit),
    /// The call is rejected.
    Rejected(BreakerOpen),
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`].
///
/// Give it the call's outcome with [`record`](Self::record). Dropping it
/// without an outcome (the call was cancelled) records nothing and, in
/// HALF_OPEN, returns the trial slot so another call can take it.
#[must_use = "a permit records nothing unless given the call's outcome"]
pub struct CallPermit {
    breaker: CircuitBreaker,
    word: u64,
    started: u64,
    trial: bool,
    settled: bool,
}

impl CallPermit {
    /// Records the outcome of the call.
    #[inline(always)]
    pub fn record(mut self, outcome: Outcome) {
        self.settled = true;
        self.breaker
            .on_result(self.word, self.trial, self.started, outcome);
    }

    /// Classifies `result` with `classifier` and records the outcome.
    #[inline(always)]
    pub fn record_result<T, E, C: Classify<T, E>>(self, result: Result<&T, &E>, classifier: &C) {
        self.record(classifier.classify(result));
    }

    /// The state the call was admitted in.
    pub fn admitted_in(&self) -> CircuitState {
        state_of(self.word)
    }

    /// Restarts the call's timer: the call starts now, not when the permit
    /// was taken (services take it in `poll_ready`).
    #[inline]
    pub(crate) fn start_timer(&mut self) {
        self.started = self.breaker.start_time();
    }
}

impl Drop for CallPermit {
    #[inline]
    fn drop(&mut self) {
        if !self.settled && self.trial {
            self.breaker.release_trial_permit(self.word);
        }
    }
}

impl fmt::Debug for CallPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallPermit")
            .field("breaker", &self.breaker.name())
            .field("admitted_in", &self.admitted_in())
            .field("trial", &self.trial)
            .finish()
    }
}
