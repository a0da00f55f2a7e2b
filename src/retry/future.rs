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
    /// A call answered at once allocates nothing. What only a waiting or
    /// retried call needs is boxed when first needed, so that the future
    /// stays small: the overall timer (one allocation, the first time a
    /// call with `overall_timeout` waits) and, with `max_elapsed`, the
    /// failure being retried (one allocation per retry).
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // Boxed: only a call that waits with an overall timeout creates
        // it, and a call answered at once should not carry its size.
        overall: Option<Pin<Box<Sleep>>>,
        service: Option<S>,
        request: Option<Req>,
        blocked: Option<GiveUpReason>,
        // The failure being retried, kept (with `max_elapsed` only) to be
        // returned if the deadline passes before the next attempt starts.
        // Boxed: retry-only state, and a response can be large.
        last: Option<Box<Attempt<S::Response, S::Error>>>,
        attempt: u32,
        started: Option<Instant>,
        backoff: BackoffProgress,
        shared: Arc<Shared>,
        classifier: C,
        policy: P,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F, #[pin] timeout: Option<Sleep> },
        Waiting { #[pin] sleep: Sleep },
        // `deadline`: the last moment the next attempt may start, set the
        // first time the service is not ready at once.
        Readying { #[pin] deadline: Option<Sleep> },
    }
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
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        request: Option<Req>,
        blocked: Option<GiveUpReason>,
        shared: Arc<Shared>,
        classifier: C,
        policy: P,
    ) -> Self {
        let config = &shared.config;
        let started = (config.max_elapsed.is_some() && blocked.is_none()).then(Instant::now);
        Self {
            state: State::Calling {
                future,
                timeout: None,
            },
            overall: None,
            service,
            request,
            blocked,
            last: None,
            attempt: 1,
            started,
            backoff: BackoffProgress::default(),
            shared,
            classifier,
            policy,
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

fn finish(shared: &Shared, attempts: u32, failed: bool, reason: Option<GiveUpReason>) {
    let counter = match (failed, attempts > 1) {
        (false, false) => &shared.succeeded_without_retry,
        (false, true) => &shared.succeeded_after_retry,
        (true, false) => &shared.failed_without_retry,
        (true, true) => &shared.failed_after_retries,
    };
    counter.add(1);
    shared.exported.on_finish(failed, attempts > 1);
    if failed {
        tracing::debug!(retry = %shared.name, attempts, reason = ?reason, "call failed; not retrying");
    }
    shared.events.publish_with(|| RetryEvent {
        layer: Arc::clone(&shared.name),
        kind: if failed {
            RetryEventKind::Failed {
                attempts,
                reason: reason.unwrap_or(GiveUpReason::NotRetryable),
            }
        } else {
            RetryEventKind::Succeeded { attempts }
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
        if let Some(overall) = this.overall.as_mut() {
            if overall.as_mut().poll(cx).is_ready() {
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
                StateProj::Calling {
                    future,
                    mut timeout,
                } => {
                    // The attempt is polled first: one that answers at once
                    // never creates (or registers) a timer.
                    let attempt = match future.poll(cx) {
                        Poll::Ready(result) => Attempt::Done(result),
                        Poll::Pending => {
                            if timeout.is_none() {
                                if let Some(limit) = config.attempt_timeout {
                                    timeout.set(Some(sleep(limit)));
                                }
                            }
                            start_overall_timer(this.overall, config.overall_timeout, cx);
                            let expired = timeout
                                .as_pin_mut()
                                .is_some_and(|limit| limit.poll(cx).is_ready());
                            if !expired {
                                return Poll::Pending;
                            }
                            shared.attempt_timeouts.add(1);
                            shared.exported.on_attempt_timeout();
                            Attempt::TimedOut
                        }
                    };
                    let (outcome, server_delay) = match &attempt {
                        Attempt::Done(result) => (
                            this.classifier.classify(result.as_ref()),
                            if config.honor_server_delay {
                                this.policy.server_delay(result.as_ref())
                            } else {
                                ServerDelay::None
                            },
                        ),
                        Attempt::TimedOut => {
                            (Outcome::Failure { retryable: true }, ServerDelay::None)
                        }
                    };
                    let decision = decide(
                        shared,
                        outcome,
                        server_delay,
                        *this.attempt,
                        *this.blocked,
                        *this.started,
                        *this.backoff,
                    );
                    match decision {
                        Decision::Return(reason) => {
                            // An ignored error is still an error to the caller.
                            let failed =
                                outcome.is_failure() || !matches!(attempt, Attempt::Done(Ok(_)));
                            let reason = match (failed, reason) {
                                (true, None) => Some(GiveUpReason::NotRetryable),
                                (_, reason) => reason,
                            };
                            finish(shared, *this.attempt, failed, reason);
                            return Poll::Ready(attempt.into_result(*this.attempt, config));
                        }
                        Decision::Retry { delay, server } => {
                            shared.retries.add(1);
                            shared.exported.on_retry();
                            tracing::debug!(
                                retry = %shared.name,
                                attempt = *this.attempt,
                                delay_ms = delay.as_millis() as u64,
                                outcome = ?outcome,
                                server_delay = server != ServerDelay::None,
                                "retrying"
                            );
                            shared.events.publish_with(|| RetryEvent {
                                layer: Arc::clone(&shared.name),
                                kind: RetryEventKind::Retrying {
                                    attempt: *this.attempt,
                                    delay,
                                    outcome,
                                    server_delay: server != ServerDelay::None,
                                },
                            });
                            this.backoff.record(*this.attempt, delay, server);
                            if this.started.is_some() {
                                // Returned if the deadline passes while the
                                // service gets ready for the next attempt.
                                *this.last = Some(Box::new(attempt));
                            }
                            start_overall_timer(this.overall, config.overall_timeout, cx);
                            this.state.set(State::Waiting {
                                sleep: sleep(delay),
                            });
                        }
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying { deadline: None });
                }
                StateProj::Readying { mut deadline } => {
                    let Some(service) = this.service.as_mut() else {
                        unreachable!("a retry is only scheduled with a service to send it to")
                    };
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
                            if deadline.is_none() {
                                deadline.set(Some(sleep_until(latest)));
                            }
                            let expired = deadline
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
                        let Some(last) = this.last.take() else {
                            unreachable!("the failure is kept whenever there is a deadline")
                        };
                        return Poll::Ready(last.into_result(*this.attempt, config));
                    }
                    *this.last = None;
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
                    this.state.set(State::Calling {
                        future,
                        timeout: None,
                    });
                }
            }
        }
    }
}

/// Starts the overall timer the first time the call has to wait (an attempt
/// that is pending, or a backoff), so a call answered at once never creates
/// one. The limit counts from then: in practice from the first poll.
fn start_overall_timer(
    overall: &mut Option<Pin<Box<Sleep>>>,
    limit: Option<Duration>,
    cx: &mut Context<'_>,
) {
    if let (None, Some(limit)) = (overall.as_ref(), limit) {
        let timer = overall.insert(Box::pin(sleep(limit)));
        // Registers the waker; a timer just set cannot be due.
        let _ = timer.as_mut().poll(cx);
    }
}

fn decide(
    shared: &Shared,
    outcome: Outcome,
    server_delay: ServerDelay,
    attempt: u32,
    blocked: Option<GiveUpReason>,
    started: Option<Instant>,
    backoff: BackoffProgress,
) -> Decision {
    let config = &shared.config;
    if !outcome.is_retryable() {
        return Decision::Return(outcome.is_failure().then_some(GiveUpReason::NotRetryable));
    }
    if let Some(reason) = blocked {
        return Decision::Return(Some(reason));
    }
    if attempt >= config.max_attempts {
        return Decision::Return(Some(GiveUpReason::AttemptsExhausted));
    }
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
