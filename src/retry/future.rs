//! [`ResponseFuture`]: attempts, waits and decides, until done.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tower_service::Service;

use crate::classify::{Classify, Outcome};
use crate::error::BoxError;

use super::error::{AttemptTimedOut, RetryTimedOut};
use super::event::{GiveUpReason, RetryEvent, RetryEventKind};
use super::policy::{RetryPolicy, ServerDelay};
use super::state::Shared;

pin_project! {
    /// The response future of a [`RetryService`](super::RetryService).
    ///
    /// Resolves to the first successful (or not retryable) outcome, or to
    /// the last failure once no further attempt may be made. Dropping it
    /// cancels the attempt in flight or the wait, and nothing more is sent.
    ///
    /// With `max_elapsed`, the wait for the inner service to be ready for a
    /// retry is bounded too: if it is not ready by the last moment an
    /// attempt could start (and, with `attempt_timeout`, finish), the call
    /// gives up with the last failure.
    ///
    /// It holds the attempt in flight, the copy of the request and the
    /// clone of the service kept for a retry, the retry's shared state, the
    /// classifier, the policy, the attempt number and, with `max_elapsed`,
    /// the moment the call started. Everything else (timers, the backoff's
    /// progress, the failure being retried) is only needed by a call that
    /// waits or retries: the one timer of the current step (attempt
    /// timeout, backoff or readiness deadline) is kept inline, the rest is
    /// boxed the first time it is needed. A call answered at once, or one
    /// that waits with only `attempt_timeout` set, allocates nothing; one
    /// that waits with `overall_timeout` set allocates one box, and a
    /// retried call one box in all.
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // The one timer of the current step, never two at once: the attempt
        // timeout (while calling), the backoff (while waiting) or the
        // deadline of the wait for readiness. Emptied between steps. Kept
        // inline: a call that waits on an attempt timeout allocates nothing.
        #[pin]
        timer: Option<Sleep>,
        waits: Option<Pin<Box<Waits<S::Response, S::Error>>>>,
        service: Option<S>,
        request: Option<Req>,
        started: Option<Instant>,
        shared: Arc<Shared>,
        classifier: C,
        policy: P,
        attempt: u32,
        blocked: Option<GiveUpReason>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // The backoff runs in the future's `timer`.
        Waiting,
        // Waiting for the service to be ready for the next attempt; with
        // `max_elapsed`, the future's `timer` holds the last moment it may start,
        // set the first time the service is not ready at once.
        Readying,
    }
}

pin_project! {
    /// What only a call that waits or retries needs.
    struct Waits<T, E> {
        // The whole call's limit, started the first time the call waits.
        #[pin]
        overall: Option<Sleep>,
        // The failure being retried, kept (with `max_elapsed` only) to be
        // returned if the deadline passes before the next attempt starts.
        last: Option<Attempt<T, E>>,
        backoff: BackoffProgress,
    }
}

impl<T, E> Waits<T, E> {
    fn new() -> Pin<Box<Self>> {
        Box::pin(Waits {
            overall: None,
            last: None,
            backoff: BackoffProgress::default(),
        })
    }
}

/// The call's [`Waits`], boxed now if this is the first time it waits.
fn waits<T, E>(waits: &mut Option<Pin<Box<Waits<T, E>>>>) -> Pin<&mut Waits<T, E>> {
    waits.get_or_insert_with(Waits::new).as_mut()
}

enum Attempt<T, E> {
    Done(Result<T, E>),
    TimedOut,
}

enum Decision {
    Return(Option<GiveUpReason>),
    Retry {
        delay: Duration,
        server: ServerDelay,
    },
}

/// Where the call is in its backoff's sequence of delays.
#[derive(Debug, Clone, Copy, Default)]
struct BackoffProgress {
    /// Retries already counted in the sequence: a gRPC pushback sets it to
    /// the attempt it answered, so the next backoff delay is the first one
    /// again (gRFC A6).
    restarted_after: u32,
    /// The wait before the attempt in flight, when it belongs to the
    /// sequence (decorrelated jitter grows from it).
    previous_delay: Option<Duration>,
}

impl BackoffProgress {
    /// Records the wait before the next attempt, taken after `attempt`.
    fn record(&mut self, attempt: u32, delay: Duration, server: ServerDelay) {
        if let ServerDelay::Pushback(_) = server {
            *self = BackoffProgress {
                restarted_after: attempt,
                previous_delay: None,
            };
        } else {
            self.previous_delay = Some(delay);
        }
    }

    /// The backoff's retry number for the retry after `attempt`: 1 for the
    /// first retry, or the first after a pushback.
    fn retry_number(&self, attempt: u32) -> u32 {
        attempt.saturating_sub(self.restarted_after)
    }
}

impl<S, Req, C, P> ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    #[inline]
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        request: Option<Req>,
        blocked: Option<GiveUpReason>,
        shared: Arc<Shared>,
        classifier: C,
        policy: P,
    ) -> Self {
        // The only clock read a call may make before it waits: `max_elapsed`
        // counts from the first attempt.
        let started = (shared.config.max_elapsed.is_some() && blocked.is_none()).then(Instant::now);
        Self {
            state: State::Calling { future },
            timer: None,
            waits: None,
            service,
            request,
            started,
            shared,
            classifier,
            policy,
            attempt: 1,
            blocked,
        }
    }

    /// The attempt in flight (1 for the first call), or once the future
    /// has resolved, the number of attempts it made.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

impl<T, E: Into<BoxError>> Attempt<T, E> {
    /// What the caller gets when this attempt is the last.
    fn into_result(self, attempt: u32, config: &super::RetryConfig) -> Result<T, BoxError> {
        match self {
            Attempt::Done(result) => result.map_err(Into::into),
            Attempt::TimedOut => Err(AttemptTimedOut {
                attempt,
                timeout: config.attempt_timeout.unwrap_or_default(),
            }
            .into()),
        }
    }
}

/// The last moment an attempt may start: `max_elapsed` after the first one,
/// less the time the attempt may take (`attempt_timeout`). `None` without
/// `max_elapsed`, or if the clock cannot represent that moment (a deadline
/// centuries away: never reached).
fn latest_start(config: &super::RetryConfig, started: Option<Instant>) -> Option<Instant> {
    let budget = config
        .max_elapsed?
        .saturating_sub(config.attempt_timeout.unwrap_or_default());
    started?.checked_add(budget)
}

/// Counts a call that ends after `attempts` attempts, and tells the
/// subscribers if there are any.
#[inline(always)]
fn finish(shared: &Shared, attempts: u32, failed: bool, reason: Option<GiveUpReason>) {
    if failed {
        return finish_failed(shared, attempts, reason);
    }
    let retried = attempts > 1;
    if retried {
        &shared.succeeded_after_retry
    } else {
        &shared.succeeded_without_retry
    }
    .add(1);
    shared.exported.on_finish(false, retried);
    if shared.events.is_observed() {
        publish_succeeded(shared, attempts);
    }
}

#[cold]
#[inline(never)]
fn publish_succeeded(shared: &Shared, attempts: u32) {
    shared.events.publish_with(|| RetryEvent {
        layer: Arc::clone(&shared.name),
        kind: RetryEventKind::Succeeded { attempts },
    });
}

#[cold]
#[inline(never)]
fn finish_failed(shared: &Shared, attempts: u32, reason: Option<GiveUpReason>) {
    let retried = attempts > 1;
    if retried {
        &shared.failed_after_retries
    } else {
        &shared.failed_without_retry
    }
    .add(1);
    shared.exported.on_finish(true, retried);
    tracing::debug!(retry = %shared.name, attempts, reason = ?reason, "call failed; not retrying");
    shared.events.publish_with(|| RetryEvent {
        layer: Arc::clone(&shared.name),
        kind: RetryEventKind::Failed {
            attempts,
            reason: reason.unwrap_or(GiveUpReason::NotRetryable),
        },
    });
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    P: RetryPolicy<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Shared = this.shared;
        let config = &shared.config;
        if let Some(waits) = this.waits.as_mut() {
            let overall = waits.as_mut().project().overall;
            if overall
                .as_pin_mut()
                .is_some_and(|overall| overall.poll(cx).is_ready())
            {
                finish(shared, *this.attempt, true, Some(GiveUpReason::TimedOut));
                let timeout = config.overall_timeout.unwrap_or_default();
                return Poll::Ready(Err(RetryTimedOut {
                    timeout,
                    attempts: *this.attempt,
                }
                .into()));
            }
        }
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    // The attempt is polled first: one that answers at once
                    // never creates (or registers) a timer.
                    let attempt = match future.poll(cx) {
                        Poll::Ready(result) => Attempt::Done(result),
                        Poll::Pending => {
                            if !attempt_timed_out(this.timer.as_mut(), this.waits, config, cx) {
                                return Poll::Pending;
                            }
                            shared.attempt_timeouts.add(1);
                            shared.exported.on_attempt_timeout();
                            Attempt::TimedOut
                        }
                    };
                    let outcome = match &attempt {
                        Attempt::Done(result) => this.classifier.classify(result.as_ref()),
                        Attempt::TimedOut => Outcome::Failure { retryable: true },
                    };
                    if !outcome.is_retryable() {
                        // A success, or a failure no attempt can mend; an
                        // ignored error is still an error to the caller.
                        let failed =
                            outcome.is_failure() || !matches!(attempt, Attempt::Done(Ok(_)));
                        finish(
                            shared,
                            *this.attempt,
                            failed,
                            failed.then_some(GiveUpReason::NotRetryable),
                        );
                        return Poll::Ready(attempt.into_result(*this.attempt, config));
                    }
                    let server_delay = || match &attempt {
                        Attempt::Done(result) if config.honor_server_delay => {
                            this.policy.server_delay(result.as_ref())
                        }
                        _ => ServerDelay::None,
                    };
                    let backoff = this
                        .waits
                        .as_ref()
                        .map_or_else(BackoffProgress::default, |waits| waits.backoff);
                    let decision = decide(
                        shared,
                        outcome,
                        server_delay,
                        *this.attempt,
                        *this.blocked,
                        *this.started,
                        backoff,
                    );
                    let (delay, server) = match decision {
                        Decision::Return(reason) => {
                            finish(shared, *this.attempt, true, reason);
                            return Poll::Ready(attempt.into_result(*this.attempt, config));
                        }
                        Decision::Retry { delay, server } => (delay, server),
                    };
                    retrying(shared, *this.attempt, delay, outcome, server);
                    let waits = waits(this.waits).project();
                    waits.backoff.record(*this.attempt, delay, server);
                    if this.started.is_some() {
                        // Returned if the deadline passes while the service
                        // gets ready for the next attempt.
                        *waits.last = Some(attempt);
                    }
                    start_overall_timer(waits.overall, config.overall_timeout, cx);
                    this.timer.set(Some(sleep(delay)));
                    this.state.set(State::Waiting);
                }
                StateProj::Waiting => {
                    if let Some(backoff) = this.timer.as_mut().as_pin_mut() {
                        ready!(backoff.poll(cx));
                    }
                    this.timer.set(None);
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Some(service) = this.service.as_mut() else {
                        unreachable!("a retry is only scheduled with a service to send it to")
                    };
                    let Some(waits) = this.waits.as_mut() else {
                        unreachable!("a retried call has its `Waits`")
                    };
                    let waits = waits.as_mut().project();
                    let latest = latest_start(config, *this.started);
                    let too_late = match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => latest.is_some_and(|latest| Instant::now() > latest),
                        Poll::Ready(Err(error)) => {
                            finish(shared, *this.attempt, true, None);
                            return Poll::Ready(Err(error.into()));
                        }
                        Poll::Pending => {
                            // The wait for readiness (a bulkhead's, a rate
                            // limiter's) may not outlast the deadline.
                            let Some(latest) = latest else {
                                return Poll::Pending;
                            };
                            if this.timer.is_none() {
                                this.timer.set(Some(sleep_until(latest)));
                            }
                            let expired = this
                                .timer
                                .as_mut()
                                .as_pin_mut()
                                .is_some_and(|deadline| deadline.poll(cx).is_ready());
                            if !expired {
                                return Poll::Pending;
                            }
                            true
                        }
                    };
                    if too_late {
                        // Drop the service now: it gives back whatever it
                        // reserved (or is waiting for) downstream.
                        *this.service = None;
                        finish(
                            shared,
                            *this.attempt,
                            true,
                            Some(GiveUpReason::DeadlineReached),
                        );
                        let Some(last) = waits.last.take() else {
                            unreachable!("the failure is kept whenever there is a deadline")
                        };
                        return Poll::Ready(last.into_result(*this.attempt, config));
                    }
                    *waits.last = None;
                    this.timer.set(None);
                    *this.attempt += 1;
                    let copy = if *this.attempt < config.max_attempts {
                        this.request
                            .as_ref()
                            .and_then(|request| this.policy.clone_request(request))
                    } else {
                        None
                    };
                    let request = match copy {
                        Some(copy) => copy,
                        None => {
                            // The last attempt (or the policy stopped copying):
                            // send the kept request itself.
                            *this.blocked = Some(if *this.attempt < config.max_attempts {
                                GiveUpReason::RequestNotRetryable
                            } else {
                                GiveUpReason::AttemptsExhausted
                            });
                            match this.request.take() {
                                Some(request) => request,
                                None => unreachable!("the kept request is sent only once"),
                            }
                        }
                    };
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

/// The attempt in flight is pending: starts its timeout and the overall
/// timer if they are configured and not yet running (boxing the call's
/// [`Waits`] the first time), and says whether the attempt timed out.
fn attempt_timed_out<T, E>(
    mut timer: Pin<&mut Option<Sleep>>,
    waits: &mut Option<Pin<Box<Waits<T, E>>>>,
    config: &super::RetryConfig,
    cx: &mut Context<'_>,
) -> bool {
    if config.overall_timeout.is_some() {
        start_overall_timer(
            self::waits(waits).project().overall,
            config.overall_timeout,
            cx,
        );
    }
    if timer.is_none() {
        match config.attempt_timeout {
            Some(limit) => timer.set(Some(sleep(limit))),
            None => return false,
        }
    }
    timer
        .as_pin_mut()
        .is_some_and(|limit| limit.poll(cx).is_ready())
}

/// Starts the overall timer the first time the call has to wait (an attempt
/// that is pending, or a backoff), so a call answered at once never creates
/// one. The limit counts from then: in practice from the first poll.
fn start_overall_timer(
    mut overall: Pin<&mut Option<Sleep>>,
    limit: Option<Duration>,
    cx: &mut Context<'_>,
) {
    if let (None, Some(limit)) = (overall.as_ref().get_ref(), limit) {
        overall.set(Some(sleep(limit)));
        if let Some(timer) = overall.as_pin_mut() {
            // Registers the waker; a timer just set cannot be due.
            let _ = timer.poll(cx);
        }
    }
}

/// Counts and reports a retry about to be made.
fn retrying(shared: &Shared, attempt: u32, delay: Duration, outcome: Outcome, server: ServerDelay) {
    shared.retries.add(1);
    shared.exported.on_retry();
    tracing::debug!(
        retry = %shared.name,
        attempt,
        delay_ms = delay.as_millis() as u64,
        outcome = ?outcome,
        server_delay = server != ServerDelay::None,
        "retrying"
    );
    shared.events.publish_with(|| RetryEvent {
        layer: Arc::clone(&shared.name),
        kind: RetryEventKind::Retrying {
            attempt,
            delay,
            outcome,
            server_delay: server != ServerDelay::None,
        },
    });
}

/// What to do after a retryable failure. The server's word
/// (`server_delay`) is read only when the call's own limits leave room for
/// another attempt.
fn decide(
    shared: &Shared,
    outcome: Outcome,
    server_delay: impl FnOnce() -> ServerDelay,
    attempt: u32,
    blocked: Option<GiveUpReason>,
    started: Option<Instant>,
    backoff: BackoffProgress,
) -> Decision {
    let config = &shared.config;
    if let Some(reason) = blocked {
        return Decision::Return(Some(reason));
    }
    if attempt >= config.max_attempts {
        return Decision::Return(Some(GiveUpReason::AttemptsExhausted));
    }
    let server_delay = server_delay();
    let delay = match server_delay {
        ServerDelay::DoNotRetry => {
            return Decision::Return(Some(GiveUpReason::ServerDeclinedRetry));
        }
        ServerDelay::After(delay) | ServerDelay::Pushback(delay) => {
            delay.min(config.backoff.max_interval())
        }
        ServerDelay::None => match config.backoff.delay(
            backoff.retry_number(attempt),
            &outcome,
            backoff.previous_delay,
            &mut rand::rng(),
        ) {
            Some(delay) => delay,
            None => return Decision::Return(Some(GiveUpReason::BackoffStopped)),
        },
    };
    if let (Some(max_elapsed), Some(started)) = (config.max_elapsed, started) {
        let next_start = started.elapsed().saturating_add(delay);
        let next_end = next_start.saturating_add(config.attempt_timeout.unwrap_or_default());
        if next_start > max_elapsed || next_end > max_elapsed {
            return Decision::Return(Some(GiveUpReason::DeadlineReached));
        }
    }
    if let Some(budget) = &config.budget {
        if !budget.withdraw() {
            shared.budget_exhaustions.add(1);
            shared.exported.on_budget_exhausted();
            return Decision::Return(Some(GiveUpReason::BudgetExhausted));
        }
    }
    Decision::Retry {
        delay,
        server: server_delay,
    }
}

impl<S, Req, C, P> fmt::Debug for ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retry", &self.shared.name)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
