//! A call's way through the breaker: admitted or rejected, then holding a
//! permit until its outcome is recorded (or it is dropped).
//!
//! Direct users take a [`CallPermit`] with [`CircuitBreaker::try_acquire`]
//! (or let [`CircuitBreaker::run`] do it). Tower services admit a call
//! before they make it, in `poll_ready` or when picking an instance: they
//! hold a [`Reservation`] and [`start`](Reservation::start) it into the
//! call's permit in `call`. The plain service, the keyed service and the
//! balancer all hold this one type, so none of them reaches the breaker's
//! state word or trial slots.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::time::Duration;

use crate::classify::{Classify, Outcome};

use super::error::BreakerOpen;
use super::event::{CircuitBreakerEvent, CircuitBreakerEventKind as EventKind, TransitionReason};
use super::state::{
    ARMED_TAG_MASK, ARMED_TAG_SHIFT, ARMED_TIME_MASK, CircuitBreaker, CircuitState, FORCED_OPEN,
    NO_DEADLINE, OPEN, STATE_MASK, admits_every_call, coarse_units, epoch_of, state_of, trial_tag,
};
use super::window::TripReason;

impl CircuitBreaker {
    /// Asks to make a call. On success the returned permit must be given the
    /// call's outcome ([`CallPermit::record`]); a permit dropped without an
    /// outcome (a cancelled call) records nothing and gives its HALF_OPEN
    /// trial slot back.
    ///
    /// Fails with [`BreakerOpen`] when the breaker rejects the call.
    #[inline]
    pub fn try_acquire(&self) -> Result<CallPermit, BreakerOpen> {
        // What `Reservation::take(self)?.start()` does, written out: the
        // direct path is measured to be two instructions shorter this way.
        let mut permit = self.acquire_untimed()?;
        permit.started = self.start_time();
        Ok(permit)
    }

    /// A permit whose timer is not started. In the states that let every
    /// call through this is one atomic load (and a clone of the handle).
    #[inline]
    fn acquire_untimed(&self) -> Result<CallPermit, BreakerOpen> {
        let word = self.shared.word.load(Acquire);
        if admits_every_call(word) {
            Ok(self.permit(word, false))
        } else {
            self.acquire_refused(word)
        }
    }

    /// The states that do not let every call through. A rejection whose
    /// answer is sure without a transition (FORCED_OPEN, or OPEN while the
    /// coarse clock is short of its armed wait) is this function alone: a
    /// load of the armed deadline, one of the coarse clock, the count of
    /// the rejection and its error. Everything else is `acquire_slow`.
    /// Cold only for the callers' sake: their CLOSED path is laid out first.
    #[cold]
    #[inline(never)]
    fn acquire_refused(&self, word: u64) -> Result<CallPermit, BreakerOpen> {
        let s = &*self.shared;
        let (state, until) = match word & STATE_MASK {
            OPEN if self.open_wait_surely_runs(word) => {
                (CircuitState::Open, s.open_until.load(Acquire))
            }
            FORCED_OPEN => (CircuitState::ForcedOpen, NO_DEADLINE),
            _ => return self.acquire_slow(word),
        };
        Err(self.reject(state, until))
    }

    /// Whether [`acquire_untimed`](Self::acquire_untimed) would let a call
    /// through now, without asking: nothing is counted, no transition is
    /// made, no trial slot is taken. An OPEN breaker whose wait is over
    /// answers `true` (the call that follows moves it to HALF_OPEN).
    #[inline]
    // Only the balancer (feature `discovery`) passes over rejecting breakers.
    #[cfg_attr(not(feature = "discovery"), allow(dead_code))]
    fn would_admit(&self) -> bool {
        let s = &*self.shared;
        let word = s.word.load(Acquire);
        if admits_every_call(word) {
            return true;
        }
        match state_of(word) {
            CircuitState::Open => {
                !self.open_wait_surely_runs(word)
                    && s.state_clock.now_nanos() >= s.open_until.load(Acquire)
            }
            CircuitState::HalfOpen => {
                let permits = s.trial_permits.load(Acquire);
                // Another epoch's trial: let the acquisition decide.
                permits & !0xFFFF_FFFF != trial_tag(word) || permits & 0xFFFF_FFFF != 0
            }
            CircuitState::ForcedOpen => false,
            CircuitState::Closed | CircuitState::MetricsOnly | CircuitState::Disabled => true,
        }
    }

    #[inline]
    fn permit(&self, word: u64, trial: bool) -> CallPermit {
        CallPermit {
            breaker: CircuitBreaker {
                shared: self.shared.for_call(),
            },
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
                CircuitState::ForcedOpen => {
                    return Err(self.reject(CircuitState::ForcedOpen, NO_DEADLINE));
                }
                CircuitState::Open => {
                    let until = s.open_until.load(Acquire);
                    // While the wait surely runs, no clock but the coarse
                    // one is read.
                    if self.open_wait_surely_runs(word) || s.state_clock.now_nanos() < until {
                        return Err(self.reject(CircuitState::Open, until));
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
                            s.config.transition_to_state_after_wait_duration,
                            TransitionReason::MaxWaitInHalfOpenElapsed,
                        );
                    } else {
                        match self.take_trial_permit(word) {
                            Some(true) => return Ok(self.permit(word, true)),
                            Some(false) => {
                                return Err(self.reject(CircuitState::HalfOpen, NO_DEADLINE));
                            }
                            None if s.word.load(Acquire) == word => {
                                return Err(self.reject(CircuitState::HalfOpen, NO_DEADLINE));
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

    /// Whether the OPEN stay of `word` surely has not reached its deadline
    /// yet, by the coarse clock alone: its wait is armed (a tokio timer
    /// watches its end, see `transition.rs`, "Arming") and the coarse clock
    /// is short of the armed time. `false` means "read the state clock".
    #[inline]
    fn open_wait_surely_runs(&self, word: u64) -> bool {
        let armed = self.shared.open_armed.load(Acquire);
        armed >> ARMED_TAG_SHIFT == epoch_of(word) & ARMED_TAG_MASK
            && armed != 0
            && coarse_units() < armed & ARMED_TIME_MASK
    }

    /// `until`: the state-clock deadline of an OPEN wait, or `NO_DEADLINE`.
    /// Counts the rejection and builds its error; no clock is read, no
    /// string is copied and nothing is formatted unless a subscriber or a
    /// `debug` trace wants the figures.
    #[inline(always)]
    fn reject(&self, state: CircuitState, until: u64) -> BreakerOpen {
        let s = &*self.shared;
        s.not_permitted.add(1);
        s.exported.on_rejected();
        if s.events.is_observed()
            || s.all_events.is_observed()
            || tracing::level_enabled!(tracing::Level::DEBUG)
        {
            self.announce_rejection(state, until);
        }
        BreakerOpen::new(self.shared.call_ref(), state, until)
    }

    /// Traces and publishes a rejection; `state` and `until` as
    /// [`reject`](Self::reject) takes them.
    #[cold]
    #[inline(never)]
    fn announce_rejection(&self, state: CircuitState, until: u64) {
        let s = &*self.shared;
        let retry_in = (until != NO_DEADLINE).then(|| {
            s.state_clock
                .instant_at(until)
                .saturating_duration_since(tokio::time::Instant::now())
        });
        tracing::debug!(
            breaker = %s.name,
            state = %state,
            retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
            "circuit breaker rejected a call"
        );
        s.publish(|| CircuitBreakerEvent {
            breaker: Arc::clone(&s.name),
            kind: EventKind::Rejected { state, retry_in },
        });
    }

    /// Records the outcome of a call admitted under `word`.
    #[inline(always)]
    fn on_result(&self, word: u64, trial: bool, started: u64, outcome: Outcome) {
        let s = &*self.shared;
        s.exported.on_call(outcome);
        // The steady state of a healthy dependency: an untimed success that
        // the window would not change, whose event nobody takes (no
        // `subscribe_all` subscriber, or each one's buffer full: the event
        // is then counted as missed, not built). Recording it is a load or
        // two.
        if outcome == Outcome::Success && !trial && !s.needs_end_time {
            if !s.all_events.is_observed() {
                if s.window.success_changes_nothing() {
                    return;
                }
            } else if s.window.success_changes_nothing()
                // DISABLED publishes no outcome: none is missed either.
                && (state_of(word) == CircuitState::Disabled || s.all_events.missed_by_all())
            {
                return;
            }
        }
        self.on_result_slow(word, trial, started, outcome, None);
    }

    /// `given_nanos`: the call's duration measured by the caller, used
    /// instead of the breaker's own timing.
    #[inline(never)]
    fn on_result_slow(
        &self,
        word: u64,
        trial: bool,
        started: u64,
        outcome: Outcome,
        given_nanos: Option<u64>,
    ) {
        let s = &*self.shared;
        let state = state_of(word);
        if state == CircuitState::Disabled {
            return;
        }
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure { .. } => true,
            Outcome::Ignored => {
                s.publish_call(|| CircuitBreakerEvent {
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
        let elapsed =
            given_nanos.or_else(|| s.slow_call_nanos.map(|_| now.saturating_sub(started)));
        let slow = match (elapsed, s.slow_call_nanos) {
            (Some(elapsed), Some(threshold)) => elapsed > threshold,
            _ => false,
        };
        s.exported.on_timed_call(failed, elapsed, slow);
        s.publish_call(|| {
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
        if let Some(elapsed) = elapsed {
            s.call_nanos.add(elapsed);
            s.timed_calls.add(1);
        }
        if trial {
            self.record_trial(word, failed, slow);
        } else if let Some(reason) = s.window.record(failed, slow, now) {
            match state {
                CircuitState::Closed => {
                    self.publish_threshold_exceeded(reason);
                    self.transition(word, CircuitState::Open, TransitionReason::Tripped(reason));
                }
                CircuitState::MetricsOnly => {
                    // Reported instead of tripping, once per kind and stay.
                    let reported = match reason {
                        TripReason::FailureRate(_) => &s.failure_rate_reported,
                        TripReason::SlowCallRate(_) => &s.slow_call_rate_reported,
                        TripReason::ConsecutiveFailures(_) => return,
                    };
                    if !reported.swap(true, Relaxed) {
                        self.publish_threshold_exceeded(reason);
                    }
                }
                _ => {}
            }
        }
    }

    /// Publishes resilience4j's failure- or slow-call-rate-exceeded event.
    #[cold]
    fn publish_threshold_exceeded(&self, reason: TripReason) {
        let s = &*self.shared;
        let kind = match reason {
            TripReason::FailureRate(failure_rate) => {
                EventKind::FailureRateExceeded { failure_rate }
            }
            TripReason::SlowCallRate(slow_call_rate) => {
                EventKind::SlowCallRateExceeded { slow_call_rate }
            }
            TripReason::ConsecutiveFailures(_) => return,
        };
        tracing::debug!(breaker = %s.name, ?reason, "circuit breaker threshold exceeded");
        s.publish(|| CircuitBreakerEvent {
            breaker: Arc::clone(&s.name),
            kind,
        });
    }

    /// A result matched the classifier's `transition_to_open_on_result`
    /// predicate: CLOSED moves to OPEN (other states ignore it, as
    /// resilience4j's do), unless the breaker moved since `word`.
    #[cold]
    fn open_on_result(&self, word: u64) {
        if state_of(word) == CircuitState::Closed {
            self.transition(word, CircuitState::Open, TransitionReason::ResultPredicate);
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
}

/// A breaker's yes to one call that has not started yet: what a service
/// holds between admitting a call (in `poll_ready`, or when a balancer
/// picks an instance) and making it (in `call`).
///
/// [`start`](Self::start) turns it into the call's [`CallPermit`] and starts
/// the call's timer then, so the time spent waiting for the inner service to
/// be ready does not count towards a slow call. Dropping a reservation
/// records nothing and, in HALF_OPEN, gives its trial slot back, exactly as
/// dropping a permit does.
#[must_use = "a reservation admits one call: start it in `call`, or drop it to give the admission back"]
#[derive(Debug)]
pub(crate) struct Reservation {
    /// The call's permit, its timer not started.
    permit: CallPermit,
}

impl Reservation {
    /// Asks `breaker` for a call. A rejection is counted, traced and
    /// announced as [`CircuitBreakerEventKind::Rejected`](super::CircuitBreakerEventKind::Rejected): use it when the rejection is
    /// the answer the caller gets.
    #[inline]
    pub(crate) fn take(breaker: &CircuitBreaker) -> Result<Self, BreakerOpen> {
        breaker.acquire_untimed().map(|permit| Self { permit })
    }

    /// Asks `breaker` for a call only if it would admit one now, so that a
    /// breaker that is rejecting calls is passed over without a rejection
    /// counted or announced: for a balancer choosing among several
    /// breakers. An OPEN breaker whose wait is over admits the call as its
    /// first HALF_OPEN trial. `None` when the breaker rejects; a rejection
    /// is counted only if the breaker's state moved between the check and
    /// the ask.
    #[inline]
    #[cfg_attr(not(feature = "discovery"), allow(dead_code))]
    pub(crate) fn take_if_admitting(breaker: &CircuitBreaker) -> Option<Self> {
        if !breaker.would_admit() {
            return None;
        }
        Self::take(breaker).ok()
    }

    /// The call starts now: its permit, with the call's timer started (a
    /// clock read only when slow calls are detected).
    #[inline]
    pub(crate) fn start(self) -> CallPermit {
        let mut permit = self.permit;
        permit.started = permit.breaker.start_time();
        permit
    }
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

    /// Classifies `result` with `classifier` and records the outcome. If
    /// the classifier says the result
    /// [forces the breaker open](crate::classify::Classify::forces_open)
    /// and the call was admitted in CLOSED, the breaker then moves to OPEN
    /// (unless it has moved since).
    #[inline(always)]
    pub fn record_result<T, E, C: Classify<T, E>>(self, result: Result<&T, &E>, classifier: &C) {
        let outcome = classifier.classify(result);
        if classifier.forces_open(result) {
            self.record_forcing_open(outcome);
        } else {
            self.record(outcome);
        }
    }

    #[cold]
    fn record_forcing_open(self, outcome: Outcome) {
        let breaker = self.breaker.clone();
        let word = self.word;
        self.record(outcome);
        breaker.open_on_result(word);
    }

    /// Records the outcome of a call whose duration was measured outside
    /// the breaker (resilience4j's `onResult(duration, unit, result)`):
    /// `duration` decides whether it is slow and is what events and the
    /// call-duration metrics report, whether or not the breaker times
    /// calls itself.
    pub fn on_result(mut self, duration: Duration, outcome: Outcome) {
        self.settled = true;
        self.breaker.shared.exported.on_call(outcome);
        self.breaker.on_result_slow(
            self.word,
            self.trial,
            self.started,
            outcome,
            Some(crate::clock::duration_nanos(duration)),
        );
    }

    /// Gives the permission back without a result (resilience4j's
    /// `releasePermission`): nothing is recorded and, in HALF_OPEN, the
    /// trial slot goes back for another call. Dropping the permit does the
    /// same; this says so at the call site.
    pub fn release(self) {
        drop(self);
    }

    /// The state the call was admitted in.
    pub fn admitted_in(&self) -> CircuitState {
        state_of(self.word)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};

    const FAILURE: Outcome = Outcome::Failure { retryable: true };

    /// Trips on one failure; two trial calls in HALF_OPEN.
    fn breaker() -> CircuitBreaker {
        let config = CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(1))
            .minimum_number_of_calls(1)
            .permitted_number_of_calls_in_half_open_state(2)
            .build()
            .unwrap();
        CircuitBreaker::new("reservation", config)
    }

    #[test]
    fn a_dropped_reservation_gives_its_half_open_trial_slot_back() {
        let breaker = breaker();
        breaker.transition_to_open().unwrap();
        breaker.transition_to_half_open().unwrap();
        let reservation = Reservation::take(&breaker).unwrap();
        assert_eq!(breaker.metrics().trial_permits_available, Some(1));
        drop(reservation);
        assert_eq!(breaker.metrics().trial_permits_available, Some(2));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn a_started_reservation_records_its_outcome() {
        let breaker = breaker();
        Reservation::take(&breaker).unwrap().start().record(FAILURE);
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[test]
    fn an_outcome_after_a_state_change_is_not_recorded() {
        let breaker = breaker();
        let reservation = Reservation::take(&breaker).unwrap();
        breaker.transition_to_metrics_only();
        breaker.transition_to_closed();
        reservation.start().record(FAILURE);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.metrics().buffered_calls, 0);
    }

    #[test]
    fn take_if_admitting_passes_over_a_rejecting_breaker_without_counting() {
        let breaker = breaker();
        breaker.transition_to_forced_open();
        assert!(Reservation::take_if_admitting(&breaker).is_none());
        assert_eq!(breaker.metrics().not_permitted_calls, 0);
        assert!(Reservation::take(&breaker).is_err());
        assert_eq!(breaker.metrics().not_permitted_calls, 1);
    }

    #[test]
    fn take_if_admitting_stops_at_an_exhausted_trial() {
        let breaker = breaker();
        breaker.transition_to_open().unwrap();
        breaker.transition_to_half_open().unwrap();
        let trials: Vec<_> = (0..2)
            .map(|_| Reservation::take_if_admitting(&breaker).unwrap())
            .collect();
        assert!(Reservation::take_if_admitting(&breaker).is_none());
        assert_eq!(breaker.metrics().not_permitted_calls, 0);
        drop(trials);
        assert!(Reservation::take_if_admitting(&breaker).is_some());
    }
}
