//! [`CircuitBreakerService`]: the tower adapter over the state machine.

use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;

use super::admission::Reservation;
use super::error::BreakerOpen;
use super::future::ResponseFuture;
use super::state::CircuitBreaker;

/// A service guarded by a [`CircuitBreaker`]; built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` asks the breaker for admission before the inner service:
/// an admitted call holds its permit (in HALF_OPEN, one of the trial slots)
/// until it completes or is dropped. A rejected call makes `poll_ready`
/// return `Ready(Ok)` without polling the inner service, and `call` returns
/// a future that fails at once with [`BreakerOpen`](super::BreakerOpen), so a rejection never
/// reaches the inner service and never poisons a `Buffer` or balancer the
/// way a `poll_ready` error would.
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    /// What `poll_ready` got from the breaker, for `call`.
    admission: Option<Result<Reservation, BreakerOpen>>,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// Wraps `inner` with `breaker`, classifying outcomes with `classifier`.
    pub fn new(inner: S, breaker: CircuitBreaker, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            admission: None,
        }
    }

    /// The breaker guarding this service.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (dropping any permit taken by `poll_ready`).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self
            .admission
            .get_or_insert_with(|| Reservation::take(&self.breaker));
        if admission.is_err() {
            // `call` fails fast without touching the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                // The inner service failed before any call: give the permit
                // back unrecorded.
                self.admission = None;
                Poll::Ready(Err(error.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let admission = self.admission.take().expect(
            "CircuitBreakerService: poll_ready must be called (and return Ready(Ok)) before call",
        );
        match admission {
            Ok(reservation) => ResponseFuture::admitted(
                self.inner.call(request),
                reservation.start(),
                self.classifier.clone(),
            ),
            Err(rejection) => ResponseFuture::rejected(rejection, self.classifier.clone()),
        }
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreakerService<S, C> {
    /// Clones the service without the permit the original may hold: a permit
    /// is for one call, and a clone must ask for its own in `poll_ready`.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            admission: None,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}
