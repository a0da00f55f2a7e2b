//! Moving a circuit breaker between states: the transition itself (under
//! the breaker's lock), its announcement (trace, event, and the timer of a
//! timed state), and the manual transitions of the public API.

use std::future::Future;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Weak};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::clock::{coarse_nanos, duration_nanos};

use super::error::IllegalStateTransition;
use super::event::{CircuitBreakerEvent, CircuitBreakerEventKind as EventKind, TransitionReason};
use super::state::{
    ARMED_TAG_MASK, ARMED_TAG_SHIFT, ARMED_TIME_MASK, COARSE_UNIT_SHIFT, CircuitBreaker,
    CircuitState, Control, NO_DEADLINE, Shared, SharedRef, Stripes, encode, epoch_of, state_of,
    trial_tag,
};
use super::window::Counts;

/// What a timer task holds: it must not keep a counted breaker alive.
enum TimerRef {
    Counted(Weak<Stripes>),
    Static(&'static Shared),
}

impl TimerRef {
    fn upgrade(&self) -> Option<CircuitBreaker> {
        let shared = match self {
            TimerRef::Counted(weak) => SharedRef::handle(weak.upgrade()?),
            TimerRef::Static(shared) => SharedRef::Static(shared),
        };
        Some(CircuitBreaker { shared })
    }

    /// Disarms the OPEN stay armed with `armed`, if it still is (see
    /// "Arming" on [`CircuitBreaker::watch_open_wait`]).
    fn disarm(&self, armed: u64) {
        let disarm = |shared: &Shared| {
            let _ = shared
                .open_armed
                .compare_exchange(armed, 0, AcqRel, Relaxed);
        };
        match self {
            TimerRef::Counted(weak) => {
                if let Some(stripes) = weak.upgrade() {
                    disarm(stripes.shared());
                }
            }
            TimerRef::Static(shared) => disarm(shared),
        }
    }
}

/// The waker the timer of an armed OPEN wait polls its `Sleep` with: the
/// time driver wakes it when the timer fires, and it disarms the wait
/// right then, before any task runs (see "Arming").
struct Disarm {
    target: TimerRef,
    armed: u64,
    /// The timer task's own waker.
    task: AtomicWaker,
}

impl Wake for Disarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.target.disarm(self.armed);
        self.task.wake();
    }
}

/// Disarms when dropped: when the timer ends, and when its task is dropped
/// unfinished (its runtime shut down), so that no wait stays armed without
/// a timer watching its end.
struct DisarmOnDrop(Arc<Disarm>);

impl Drop for DisarmOnDrop {
    fn drop(&mut self) {
        self.0.target.disarm(self.0.armed);
    }
}

/// How long before the deadline, by the coarse clock, rejections go back to
/// reading the state clock: more than the coarse clock lags behind.
const ARM_MARGIN_NANOS: u64 = 2_000_000;
/// How long before the deadline the timer that disarms fires: tokio rounds
/// a timer's deadline up to its next millisecond.
const DISARM_EARLY_NANOS: u64 = 1_000_000;

/// A transition that happened, to announce once the lock is released.
pub(super) struct Transition {
    from: CircuitState,
    to: CircuitState,
    reason: TransitionReason,
    word: u64,
    /// State-clock deadline of the new state, if it has one.
    deadline: Option<u64>,
}

impl CircuitBreaker {
    /// Moves from the state in `from_word` to `to`, unless another thread
    /// moved the breaker first. Returns whether this call made the move.
    pub(super) fn transition(
        &self,
        from_word: u64,
        to: CircuitState,
        reason: TransitionReason,
    ) -> bool {
        self.transition_with(from_word, to, reason, None)
    }

    /// [`transition`](Self::transition), with the OPEN deadline given
    /// (state-clock nanoseconds) instead of computed from the configured wait.
    fn transition_with(
        &self,
        from_word: u64,
        to: CircuitState,
        reason: TransitionReason,
        open_until: Option<u64>,
    ) -> bool {
        let transition = {
            let mut control = self.shared.control.lock();
            self.transition_locked_with(&mut control, from_word, to, reason, open_until)
        };
        match transition {
            Some(transition) => {
                self.announce(transition);
                true
            }
            None => false,
        }
    }

    pub(super) fn transition_locked(
        &self,
        control: &mut Control,
        from_word: u64,
        to: CircuitState,
        reason: TransitionReason,
    ) -> Option<Transition> {
        self.transition_locked_with(control, from_word, to, reason, None)
    }

    fn transition_locked_with(
        &self,
        control: &mut Control,
        from_word: u64,
        to: CircuitState,
        reason: TransitionReason,
        open_until: Option<u64>,
    ) -> Option<Transition> {
        let s = &*self.shared;
        let current = s.word.load(Acquire);
        if current != from_word {
            return None;
        }
        let new_word = encode(epoch_of(current) + 1, to);
        let now = s.state_clock.now_nanos();
        let mut deadline = None;
        if to != CircuitState::Open {
            s.start_per_state_figures();
        }
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
                } else {
                    s.failure_rate_reported.store(false, Relaxed);
                    s.slow_call_rate_reported.store(false, Relaxed);
                }
            }
            CircuitState::Open => {
                // OPEN keeps the figures of the window that sent it there.
                let (tripped_by, thresholds) = match state_of(current) {
                    CircuitState::HalfOpen => (control.trial, Some(s.trial_thresholds)),
                    CircuitState::Closed | CircuitState::MetricsOnly => s.window_counts(),
                    CircuitState::Open => (control.tripped_by, control.tripped_thresholds),
                    CircuitState::Disabled | CircuitState::ForcedOpen => (Counts::default(), None),
                };
                control.tripped_by = tripped_by;
                control.tripped_thresholds = thresholds;
                // A wait given by the operator is not a trip: the growing
                // break duration does not count it (resilience4j's
                // `transitionToOpenStateFor` keeps the attempts too).
                let until = open_until.unwrap_or_else(|| {
                    control.trips_in_a_row = control.trips_in_a_row.saturating_add(1);
                    let wait = s
                        .config
                        .break_duration
                        .wait_after(control.trips_in_a_row, s.config.wait_duration_in_open_state);
                    now.saturating_add(duration_nanos(wait))
                });
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
        s.exported.on_transition(state_of(current), to);
        s.word.store(new_word, Release);
        Some(Transition {
            from: state_of(current),
            to,
            reason,
            word: new_word,
            deadline,
        })
    }

    pub(super) fn announce(&self, t: Transition) {
        let s = &*self.shared;
        let retry_in_ms = t
            .deadline
            .map(|d| d.saturating_sub(s.state_clock.now_nanos()) / 1_000_000);
        // A move within one state (a reset from CLOSED, a new OPEN wait) is
        // internal: resilience4j publishes no transition for it either.
        if t.from != t.to {
            if matches!(t.to, CircuitState::Open | CircuitState::ForcedOpen) {
                tracing::warn!(breaker = %s.name, from = %t.from, to = %t.to, reason = ?t.reason, retry_in_ms, "circuit breaker state changed");
            } else {
                tracing::info!(breaker = %s.name, from = %t.from, to = %t.to, reason = ?t.reason, "circuit breaker state changed");
            }
            s.publish(|| CircuitBreakerEvent {
                breaker: Arc::clone(&s.name),
                kind: EventKind::StateTransition {
                    from: t.from,
                    to: t.to,
                    reason: t.reason,
                },
            });
        }
        let timer = match (t.to, t.deadline) {
            (CircuitState::Open, Some(until)) => {
                self.watch_open_wait(t.word, until);
                None
            }
            (CircuitState::HalfOpen, Some(until)) => Some((
                until,
                s.config.transition_to_state_after_wait_duration,
                TransitionReason::MaxWaitInHalfOpenElapsed,
            )),
            _ => None,
        };
        if let Some((until, to, reason)) = timer {
            self.schedule(t.word, until, to, reason);
        }
    }

    /// Starts the timer of the OPEN stay `word`, which ends at state-clock
    /// time `until`: it arms the wait, and with automatic transitions moves
    /// the breaker to HALF_OPEN at `until`.
    ///
    /// # Arming
    ///
    /// A rejection in OPEN must not read the state clock (tokio's, exact,
    /// following `tokio::time::pause()`) on every call, yet must let the
    /// first call at or after `until` through by that clock. While the wait
    /// is *armed*, a call is rejected on two cheap facts: a tokio timer set
    /// just before `until` has not fired yet, and the coarse clock (real
    /// time, one atomic load) is short of `until`, less a margin. Either
    /// fact failing sends the call to the exact check:
    ///
    /// * with paused time, the coarse clock stands still, but
    ///   `tokio::time::advance` (or auto-advance) fires due timers inside
    ///   the time driver, and this timer disarms the wait from its waker
    ///   right there, before the advancing task resumes;
    /// * in real time, a runtime that is not driven (a current-thread
    ///   runtime outside `block_on`, a thread blocked in synchronous code)
    ///   fires no timer, but the coarse clock moves on.
    ///
    /// A wait is armed only when a tokio runtime is there to run the timer;
    /// otherwise (and for waits shorter than the margin) every rejection
    /// reads the state clock, as does every call near the deadline.
    fn watch_open_wait(&self, word: u64, until: u64) {
        let s = &*self.shared;
        let automatic = s.config.automatic_transition_from_open_to_half_open;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if automatic {
                tracing::debug!(breaker = %s.name, "no tokio runtime: the timed transition happens on the next call");
            }
            return;
        };
        let target = match (self.shared.downgrade(), &self.shared) {
            (Some(stripes), _) => TimerRef::Counted(stripes),
            (None, SharedRef::Static(shared)) => TimerRef::Static(shared),
            (None, SharedRef::Counted { .. }) => return,
        };
        let wait = until.saturating_sub(s.state_clock.now_nanos());
        let armed = if wait > ARM_MARGIN_NANOS {
            let time =
                (coarse_nanos().saturating_add(wait - ARM_MARGIN_NANOS)) >> COARSE_UNIT_SHIFT;
            let tag = epoch_of(word) & ARMED_TAG_MASK;
            if time == 0 || time > ARMED_TIME_MASK {
                0
            } else {
                tag << ARMED_TAG_SHIFT | time
            }
        } else {
            0
        };
        if armed == 0 && !automatic {
            return;
        }
        if armed != 0 {
            s.open_armed.store(armed, Release);
        }
        let disarm_at = s
            .state_clock
            .instant_at(until.saturating_sub(DISARM_EARLY_NANOS));
        let at = s.state_clock.instant_at(until);
        let disarm = Arc::new(Disarm {
            target,
            armed,
            task: AtomicWaker::new(),
        });
        // Made here, not in the task: a task dropped before its first poll
        // must disarm too.
        let disarm_on_drop = DisarmOnDrop(Arc::clone(&disarm));
        runtime.spawn(async move {
            if armed != 0 {
                let _disarm_on_drop = disarm_on_drop;
                let waker = Waker::from(Arc::clone(&disarm));
                let sleep = tokio::time::sleep_until(disarm_at);
                tokio::pin!(sleep);
                std::future::poll_fn(|cx| {
                    disarm.task.register(cx.waker());
                    sleep.as_mut().poll(&mut Context::from_waker(&waker))
                })
                .await;
            }
            if automatic {
                tokio::time::sleep_until(at).await;
                if let Some(breaker) = disarm.target.upgrade() {
                    breaker.transition(
                        word,
                        CircuitState::HalfOpen,
                        TransitionReason::WaitDurationElapsed,
                    );
                }
            }
        });
    }

    /// Moves `word` to `to` at state-clock time `until`, if a tokio runtime
    /// is available; otherwise the next call makes the move lazily.
    fn schedule(&self, word: u64, until: u64, to: CircuitState, reason: TransitionReason) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(breaker = %self.shared.name, "no tokio runtime: the timed transition happens on the next call");
            return;
        };
        let at = self.shared.state_clock.instant_at(until);
        let target = match (self.shared.downgrade(), &self.shared) {
            (Some(stripes), _) => TimerRef::Counted(stripes),
            (None, SharedRef::Static(shared)) => TimerRef::Static(shared),
            (None, SharedRef::Counted { .. }) => return,
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

    /// [`force`](Self::force) for the targets resilience4j refuses from
    /// some states (OPEN, HALF_OPEN): the refusal is checked against the
    /// state the move is made from.
    fn force_checked(
        &self,
        to: CircuitState,
        reason: TransitionReason,
    ) -> Result<(), IllegalStateTransition> {
        loop {
            let word = self.shared.word.load(Acquire);
            let from = state_of(word);
            if !allowed(from, to) {
                return Err(IllegalStateTransition::new(
                    Arc::clone(&self.shared.name),
                    from,
                    to,
                ));
            }
            if from == to || self.transition(word, to, reason) {
                return Ok(());
            }
        }
    }

    /// Empties the window and moves to CLOSED, from any state, starting
    /// the per-state figures (`not_permitted_calls`, call durations) afresh.
    ///
    /// Publishes [`Reset`](super::CircuitBreakerEventKind::Reset), after a
    /// transition to CLOSED when the breaker was in another state (from
    /// CLOSED there is no transition to announce), as resilience4j does.
    pub fn reset(&self) {
        self.force(CircuitState::Closed, TransitionReason::Reset);
        let s = &*self.shared;
        tracing::info!(breaker = %s.name, "circuit breaker reset");
        s.publish(|| CircuitBreakerEvent {
            breaker: Arc::clone(&s.name),
            kind: EventKind::Reset,
        });
    }

    /// Moves to OPEN for `wait` instead of the configured wait (from OPEN
    /// too: the new wait replaces the one running). The growing
    /// [`break_duration`](super::CircuitBreakerConfigBuilder::break_duration)
    /// does not count this as a trip. resilience4j's
    /// `transitionToOpenStateFor`.
    ///
    /// Fails with [`IllegalStateTransition`] from METRICS_ONLY.
    pub fn transition_to_open_for(&self, wait: Duration) -> Result<(), IllegalStateTransition> {
        let until = self
            .shared
            .state_clock
            .now_nanos()
            .saturating_add(duration_nanos(wait));
        self.open_until(until)
    }

    /// Moves to OPEN until `deadline` (a tokio [`Instant`], so paused time
    /// moves it; a deadline already past lets the next call through as a
    /// trial). As [`transition_to_open_for`](Self::transition_to_open_for)
    /// otherwise; resilience4j's `transitionToOpenStateUntil`.
    ///
    /// Fails with [`IllegalStateTransition`] from METRICS_ONLY.
    pub fn transition_to_open_until(
        &self,
        deadline: Instant,
    ) -> Result<(), IllegalStateTransition> {
        let clock = &self.shared.state_clock;
        let now = Instant::now();
        let until = match deadline.checked_duration_since(now) {
            Some(wait) => clock.now_nanos().saturating_add(duration_nanos(wait)),
            None => clock.now_nanos(),
        };
        self.open_until(until)
    }

    fn open_until(&self, until: u64) -> Result<(), IllegalStateTransition> {
        loop {
            let word = self.shared.word.load(Acquire);
            let from = state_of(word);
            if !allowed(from, CircuitState::Open) {
                return Err(IllegalStateTransition::new(
                    Arc::clone(&self.shared.name),
                    from,
                    CircuitState::Open,
                ));
            }
            if self.transition_with(
                word,
                CircuitState::Open,
                TransitionReason::Manual,
                Some(until),
            ) {
                return Ok(());
            }
        }
    }

    /// Moves to CLOSED with an empty window (no-op if already CLOSED).
    pub fn transition_to_closed(&self) {
        self.force(CircuitState::Closed, TransitionReason::Manual);
    }

    /// Moves to OPEN for the configured wait (no-op if already OPEN).
    ///
    /// Fails with [`IllegalStateTransition`], leaving the breaker as it is,
    /// from METRICS_ONLY (which never trips), as resilience4j refuses it.
    pub fn transition_to_open(&self) -> Result<(), IllegalStateTransition> {
        self.force_checked(CircuitState::Open, TransitionReason::Manual)
    }

    /// Moves to HALF_OPEN with a fresh set of trial permits (no-op if
    /// already HALF_OPEN).
    ///
    /// Fails with [`IllegalStateTransition`], leaving the breaker as it is,
    /// from CLOSED and from METRICS_ONLY, as resilience4j refuses them.
    pub fn transition_to_half_open(&self) -> Result<(), IllegalStateTransition> {
        self.force_checked(CircuitState::HalfOpen, TransitionReason::Manual)
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
}

/// Whether resilience4j's `StateTransition` table lists the move. It lists
/// every pair but CLOSED to HALF_OPEN and METRICS_ONLY to OPEN or HALF_OPEN.
fn allowed(from: CircuitState, to: CircuitState) -> bool {
    !matches!(
        (from, to),
        (CircuitState::Closed, CircuitState::HalfOpen)
            | (
                CircuitState::MetricsOnly,
                CircuitState::Open | CircuitState::HalfOpen
            )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::CircuitBreakerConfig;

    fn armed(breaker: &CircuitBreaker) -> bool {
        breaker.shared.open_armed.load(Acquire) != 0
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_wait_entered_without_a_runtime_is_not_armed() {
        let breaker = CircuitBreaker::with_defaults("arming");
        breaker.transition_to_open().unwrap();
        assert!(!armed(&breaker));
        assert!(breaker.try_acquire().is_err());
    }

    #[test]
    fn a_wait_is_disarmed_when_the_runtime_of_its_timer_shuts_down() {
        let breaker = CircuitBreaker::with_defaults("arming");
        let runtime = runtime();
        runtime.block_on(async { breaker.transition_to_open().unwrap() });
        assert!(armed(&breaker));
        drop(runtime);
        assert!(!armed(&breaker), "no timer watches the wait any more");
        assert!(breaker.try_acquire().is_err(), "the wait runs on");
    }

    #[test]
    fn a_new_state_is_not_fooled_by_the_arming_of_an_old_open_wait() {
        let breaker = CircuitBreaker::with_defaults("arming");
        let runtime = runtime();
        let _entered = runtime.enter();
        breaker.transition_to_open().unwrap();
        assert!(armed(&breaker));
        breaker.transition_to_half_open().unwrap();
        assert!(breaker.try_acquire().is_ok(), "a trial call");
        breaker.transition_to_open_for(Duration::ZERO).unwrap();
        assert!(
            breaker.try_acquire().is_ok(),
            "a zero wait lets the next call through"
        );
    }

    /// In real time a runtime that is not driven fires no timer; the
    /// coarse clock ends the armed part of the wait all the same.
    #[test]
    fn an_armed_wait_ends_by_the_coarse_clock_when_no_runtime_runs_its_timer() {
        let config = CircuitBreakerConfig::builder()
            .wait_duration_in_open_state(Duration::from_millis(5))
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new("arming", config);
        let runtime = runtime();
        {
            let _entered = runtime.enter();
            breaker.transition_to_open().unwrap();
        }
        assert!(armed(&breaker));
        let begun = std::time::Instant::now();
        // Real time is what this checks, so wait on it (bounded).
        while breaker.try_acquire().is_err() && begun.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(begun.elapsed() < Duration::from_secs(5));
    }
}
