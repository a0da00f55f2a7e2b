//! [`ResponseFuture`]: counts the call in flight on its instance until it
//! completes or is dropped, then records its latency and outcome (on the
//! instance's circuit breaker too, if it has one).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::circuit_breaker::{BreakerOpen, CallPermit};
use crate::classify::Classify;
use crate::discovery::error::NoHealthyInstance;
use crate::error::BoxError;

use super::endpoint::EndpointStats;

pin_project! {
    /// The response future of a [`Balance`](super::Balance): the picked
    /// instance's response, or at once [`NoHealthyInstance`] (no instance)
    /// or [`BreakerOpen`] (every instance's circuit breaker rejected the
    /// call).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called { #[pin] future: F, call: Option<InFlight<C>> },
        NoInstance { error: Option<NoHealthyInstance> },
        Rejected { error: Option<BreakerOpen> },
    }
}

/// A call in flight on one instance; dropping it ends the call's count
/// (and drops its breaker permit unrecorded).
pub(crate) struct InFlight<C> {
    stats: Arc<EndpointStats>,
    /// When the call started, a reading of the balancer's call clock, when
    /// latency is tracked.
    started: Option<u64>,
    classifier: C,
    /// The permit of the instance's circuit breaker, if it has one.
    permit: Option<CallPermit>,
}

impl<C> InFlight<C> {
    /// Counts a call on `stats`; `started` when latency is tracked.
    #[inline]
    pub(crate) fn start(
        stats: Arc<EndpointStats>,
        started: Option<u64>,
        classifier: C,
        permit: Option<CallPermit>,
    ) -> Self {
        stats.hot.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.hot.picks.fetch_add(1, Ordering::Relaxed);
        Self {
            stats,
            started,
            classifier,
            permit,
        }
    }
}

impl<C> Drop for InFlight<C> {
    #[inline]
    fn drop(&mut self) {
        self.stats.hot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(future: F, call: InFlight<C>) -> Self {
        Self {
            kind: Kind::Called {
                future,
                call: Some(call),
            },
        }
    }

    pub(crate) fn no_instance(error: NoHealthyInstance) -> Self {
        Self {
            kind: Kind::NoInstance { error: Some(error) },
        }
    }

    pub(crate) fn rejected(error: BreakerOpen) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, call } => {
                let result = ready!(future.poll(cx));
                if let Some(mut call) = call.take() {
                    if let Some(started) = call.started {
                        let now = call.stats.clock.now_nanos();
                        call.stats.observe_latency(started, now);
                    }
                    let outcome = call.classifier.classify(result.as_ref());
                    call.stats.record(outcome);
                    if let Some(permit) = call.permit.take() {
                        permit.record(outcome);
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::NoInstance { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("balance ResponseFuture polled after completion"),
            },
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("balance ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
