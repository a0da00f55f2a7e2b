//! [`AdaptiveConcurrencyService`]: the tower adapter over the limit.

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;
use crate::future::Admission;

use super::error::ConcurrencyLimitExceeded;
use super::future::ResponseFuture;
use super::state::{AdaptiveConcurrency, AdaptivePermit};

/// A service whose calls hold a slot of an [`AdaptiveConcurrency`] limit;
/// built by [`AdaptiveConcurrencyLayer`](super::AdaptiveConcurrencyLayer).
///
/// `poll_ready` takes a slot first and only then waits for the inner
/// service, holding the slot meanwhile (the bulkhead's order). A call over
/// the limit makes `poll_ready` return `Ready(Ok)` without polling the inner
/// service, and `call` fail at once with [`ConcurrencyLimitExceeded`]: the
/// limit never queues, since a queue in front of the dependency is what it
/// exists to avoid. The slot is held by the response future, which reports
/// the call's latency and outcome when it completes and gives the slot back
/// without a sample when dropped.
pub struct AdaptiveConcurrencyService<S, C> {
    inner: S,
    limit: AdaptiveConcurrency,
    classifier: C,
    admission: Admission<Infallible, AdaptivePermit, ConcurrencyLimitExceeded>,
}

impl<S, C> AdaptiveConcurrencyService<S, C> {
    /// Wraps `inner` with `limit`, classifying outcomes with `classifier`.
    pub fn new(inner: S, limit: AdaptiveConcurrency, classifier: C) -> Self {
        Self {
            inner,
            limit,
            classifier,
            admission: Admission::Idle,
        }
    }

    /// The limit guarding this service.
    pub fn limit(&self) -> &AdaptiveConcurrency {
        &self.limit
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (giving back any slot held).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for AdaptiveConcurrencyService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let Some(ready) = self.admission.poll_decided(&mut self.inner, cx) {
                return ready;
            }
            self.admission = match self.limit.reserve() {
                Ok(permit) => Admission::Permitted(permit),
                Err(exceeded) => Admission::Rejected(exceeded),
            };
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match std::mem::replace(&mut self.admission, Admission::Idle) {
            Admission::Permitted(mut permit) => {
                permit.start();
                ResponseFuture::called(self.inner.call(request), permit, self.classifier.clone())
            }
            Admission::Rejected(exceeded) => ResponseFuture::rejected(exceeded),
            Admission::Idle | Admission::Waiting(_) => {
                panic!("AdaptiveConcurrencyService: poll_ready must return Ready(Ok) before call")
            }
        }
    }
}

impl<S: Clone, C: Clone> Clone for AdaptiveConcurrencyService<S, C> {
    /// Clones without the slot the original may hold: a slot is for one
    /// call, and a clone takes its own in `poll_ready`.
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.limit.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for AdaptiveConcurrencyService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyService")
            .field("inner", &self.inner)
            .field("limit", &self.limit.name())
            .finish_non_exhaustive()
    }
}
