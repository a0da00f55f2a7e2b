//! [`BulkheadService`]: the tower adapter over the bulkhead.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower_service::Service;

use crate::error::BoxError;

use super::error::BulkheadFull;
use super::future::ResponseFuture;
use super::state::{Bulkhead, BulkheadPermit};

type Acquiring = Pin<Box<dyn Future<Output = Result<BulkheadPermit, BulkheadFull>> + Send + Sync>>;

type Admission = crate::future::Admission<Acquiring, BulkheadPermit, BulkheadFull>;

/// A service whose calls hold a permit of a [`Bulkhead`]; built by
/// [`BulkheadLayer`](super::BulkheadLayer).
///
/// `poll_ready` first takes a permit, waiting for one (in FIFO order) if
/// the bulkhead allows it, and only then waits for the inner service to be
/// ready, holding the permit meanwhile (tower's `ConcurrencyLimit` order).
/// A rejected call makes `poll_ready` return `Ready(Ok)` without polling the
/// inner service, and `call` fail at once with [`BulkheadFull`]: the
/// rejection reserves nothing in the layers inside (a rate limiter's
/// permit, another bulkhead's). The permit is held by the response future
/// and given back when it completes or is dropped; a permit taken by
/// `poll_ready` and never used is given back when the service is dropped,
/// or when the inner service's `poll_ready` fails.
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
    admission: Admission,
}

impl<S> BulkheadService<S> {
    /// Wraps `inner` with `bulkhead`.
    pub fn new(inner: S, bulkhead: Bulkhead) -> Self {
        Self {
            inner,
            bulkhead,
            admission: Admission::Idle,
        }
    }

    /// The bulkhead guarding this service.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service (giving back any permit held).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let Some(ready) = self.admission.poll_decided(&mut self.inner, cx) {
                return ready;
            }
            match &mut self.admission {
                Admission::Idle => {
                    self.admission = if self.bulkhead.config().max_wait_duration.is_zero() {
                        match self.bulkhead.try_acquire() {
                            Ok(permit) => Admission::Permitted(permit),
                            Err(full) => Admission::Rejected(full),
                        }
                    } else {
                        // Waiting needs a future to keep; free permits do not.
                        match self.bulkhead.try_acquire_quietly() {
                            Some(permit) => Admission::Permitted(permit),
                            None => {
                                Admission::Waiting(Box::pin(self.bulkhead.clone().acquire_owned()))
                            }
                        }
                    };
                }
                Admission::Waiting(acquiring) => {
                    self.admission = match ready!(acquiring.as_mut().poll(cx)) {
                        Ok(permit) => Admission::Permitted(permit),
                        Err(full) => Admission::Rejected(full),
                    };
                }
                Admission::Permitted(_) | Admission::Rejected(_) => {
                    unreachable!("poll_decided answers once the bulkhead has decided")
                }
            }
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let inner = &mut self.inner;
        self.admission
            .call("BulkheadService", || inner.call(request))
    }
}

impl<S: Clone> Clone for BulkheadService<S> {
    /// Clones without the permit the original may hold: a permit is for one
    /// call, and a clone takes its own in `poll_ready`.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.bulkhead.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for BulkheadService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead.name())
            .finish_non_exhaustive()
    }
}
