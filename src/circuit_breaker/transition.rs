//! Moving a circuit breaker between states: the transition itself (under
//! the breaker's lock), its announcement (trace, event, and the timer of a
//! timed state), and the manual transitions of the public API.

use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::duration_nanos;

use super::error::IllegalStateTransition;
use super::event::{CircuitBreakerEvent, CircuitBreakerEventKind as EventKind, TransitionReason};
use super::state::{
    CircuitBreaker, CircuitState, Control, NO_DEADLINE, Shared, SharedRef, Stripes, encode,
    epoch_of, state_of, trial_tag,
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
}

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
            s.events.publish_with(|| CircuitBreakerEvent {
                breaker: Arc::clone(&s.name),
                kind: EventKind::StateTransition {
                    from: t.from,
                    to: t.to,
                    reason: t.reason,
                },
            });
        }
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
                s.config.transition_to_state_after_wait_duration,
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
        s.events.publish_with(|| CircuitBreakerEvent {
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
