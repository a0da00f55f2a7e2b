//! [`ResponseFuture`]: the primary attempt and its hedged copies, racing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::classify::{Classify, Outcome};
use crate::error::BoxError;
use crate::retry::RetryPolicy;

use super::event::HedgeEventKind;
use super::state::Shared;

/// What a call needs to start hedged attempts: a clone of the inner
/// service, a copy of the request and the policy that copies it.
pub(crate) struct Hedging<S, Req, P> {
    pub(crate) service: S,
    pub(crate) template: Req,
    pub(crate) policy: P,
}

/// One hedged attempt: its own clone of the service, made ready, then
/// called.
struct HedgedAttempt<S: Service<Req>, Req> {
    attempt: u32,
    service: S,
    request: Option<Req>,
    future: Option<Pin<Box<S::Future>>>,
}

impl<S: Service<Req>, Req> HedgedAttempt<S, Req> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<S::Response, S::Error>> {
        if self.future.is_none() {
            if let Err(error) = std::task::ready!(self.service.poll_ready(cx)) {
                return Poll::Ready(Err(error));
            }
            let request = self
                .request
                .take()
                .unwrap_or_else(|| unreachable!("a hedged attempt is called once"));
            self.future = Some(Box::pin(self.service.call(request)));
        }
        match &mut self.future {
            Some(future) => future.as_mut().poll(cx),
            None => unreachable!("set above"),
        }
    }
}

pin_project! {
    #[project = PrimaryProj]
    enum Primary<F> {
        Running { #[pin] future: F },
        Done,
    }
}

pin_project! {
    #[project = TimerProj]
    enum Timer {
        Armed { #[pin] sleep: Sleep },
        Off,
    }
}

pin_project! {
    /// The response future of a [`HedgeService`](super::HedgeService): the
    /// primary attempt, and hedged attempts started after the delay or
    /// after a failure, until one answers acceptably. The others are
    /// dropped (cancelled) at once; dropping this future drops them all.
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Primary<S::Future>,
        #[pin]
        timer: Timer,
        hedges: Vec<HedgedAttempt<S, Req>>,
        hedging: Option<Hedging<S, Req, P>>,
        launched: u32,
        last_failure: Option<Result<S::Response, S::Error>>,
        classifier: C,
        shared: Arc<Shared>,
        started: Instant,
    }
}

impl<S, Req, C, P> ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        primary: S::Future,
        hedging: Option<Hedging<S, Req, P>>,
        classifier: C,
        shared: Arc<Shared>,
    ) -> Self {
        let timer = match (&hedging, shared.delay()) {
            (Some(_), Some(delay)) => Timer::Armed {
                sleep: tokio::time::sleep(delay),
            },
            _ => Timer::Off,
        };
        Self {
            primary: Primary::Running { future: primary },
            timer,
            hedges: Vec::new(),
            hedging,
            launched: 0,
            last_failure: None,
            classifier,
            shared,
            started: Instant::now(),
        }
    }
}

/// What an attempt's result means for the call.
enum Verdict<T> {
    /// The call ends with it.
    Answer(T),
    /// A failure another attempt may beat.
    Failed(T),
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    P: RetryPolicy<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let max_hedges = shared.config.max_hedged_attempts;
        // An attempt failed since the last decision to start another.
        let mut failed_now = false;
        loop {
            // At most one finished attempt per turn, so no allocation.
            let mut finished = None;
            if let PrimaryProj::Running { future } = this.primary.as_mut().project() {
                if let Poll::Ready(result) = future.poll(cx) {
                    this.primary.set(Primary::Done);
                    finished = Some((0, result));
                }
            }
            if finished.is_none() {
                for index in 0..this.hedges.len() {
                    if let Poll::Ready(result) = this.hedges[index].poll(cx) {
                        let attempt = this.hedges.swap_remove(index).attempt;
                        finished = Some((attempt, result));
                        break;
                    }
                }
            }
            if let Some((attempt, result)) = finished {
                match judge(this.classifier, result) {
                    Verdict::Answer(result) => {
                        // The race is over: cancel every other attempt now.
                        this.primary.set(Primary::Done);
                        this.hedges.clear();
                        *this.hedging = None;
                        if result.is_ok() {
                            shared.record_latency(this.started.elapsed());
                        }
                        if attempt > 0 {
                            shared.hedge_wins.add(1);
                            shared.exported.on_win();
                            tracing::debug!(hedge = %shared.name, attempt, "a hedged attempt won");
                            shared.publish(HedgeEventKind::Won { attempt });
                        }
                        return Poll::Ready(result.map_err(Into::into));
                    }
                    Verdict::Failed(result) => {
                        *this.last_failure = Some(result);
                        failed_now = true;
                        // Poll the others again: another may be done too.
                        continue;
                    }
                }
            }

            if this.hedging.is_some() && *this.launched < max_hedges {
                let due = failed_now
                    || match this.timer.as_mut().project() {
                        TimerProj::Armed { sleep } => sleep.poll(cx).is_ready(),
                        TimerProj::Off => false,
                    };
                if due {
                    let after_failure = std::mem::take(&mut failed_now);
                    let request = match this.hedging.as_ref() {
                        Some(hedging) if shared.withdraw() => {
                            hedging.policy.clone_request(&hedging.template)
                        }
                        _ => None,
                    };
                    match (request, this.hedging.as_ref()) {
                        (Some(request), Some(hedging)) => {
                            *this.launched += 1;
                            let attempt = *this.launched;
                            let after = this.started.elapsed();
                            shared.hedges_started.add(1);
                            shared.exported.on_hedge();
                            tracing::debug!(
                                hedge = %shared.name,
                                attempt,
                                after_ms = after.as_millis() as u64,
                                after_failure,
                                "starting a hedged attempt"
                            );
                            shared.publish(HedgeEventKind::Started {
                                attempt,
                                after,
                                after_failure,
                            });
                            this.hedges.push(HedgedAttempt {
                                attempt,
                                service: hedging.service.clone(),
                                request: Some(request),
                                future: None,
                            });
                            match shared.delay() {
                                Some(delay) if attempt < max_hedges => {
                                    this.timer.set(Timer::Armed {
                                        sleep: tokio::time::sleep(delay),
                                    })
                                }
                                _ => this.timer.set(Timer::Off),
                            }
                            // Poll the new attempt (and register its waker).
                            continue;
                        }
                        _ => {
                            // No token, or the request could not be copied:
                            // no more hedged attempts for this call.
                            *this.hedging = None;
                            this.timer.set(Timer::Off);
                        }
                    }
                }
            }

            let running =
                matches!(*this.primary, Primary::Running { .. }) || !this.hedges.is_empty();
            if !running {
                return match this.last_failure.take() {
                    Some(result) => Poll::Ready(result.map_err(Into::into)),
                    None => panic!("hedge ResponseFuture polled after completion"),
                };
            }
            return Poll::Pending;
        }
    }
}

fn judge<T, E, C: Classify<T, E>>(classifier: &C, result: Result<T, E>) -> Verdict<Result<T, E>> {
    match classifier.classify(result.as_ref()) {
        Outcome::Failure { retryable: true } => Verdict::Failed(result),
        Outcome::Success | Outcome::Ignored | Outcome::Failure { retryable: false } => {
            Verdict::Answer(result)
        }
    }
}
