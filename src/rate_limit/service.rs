//! [`RateLimiterService`]: the tower adapter over the limiter.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower_service::Service;

use crate::error::BoxError;

use super::error::RateLimited;
use super::future::ResponseFuture;
use super::state::{RateLimiter, Waiting};

type Admission = crate::future::Admission<(Waiting, Pin<Box<tokio::time::Sleep>>), (), RateLimited>;

/// A service whose calls each take a permit of a [`RateLimiter`]; built by
/// [`RateLimiterLayer`](super::RateLimiterLayer).
///
/// `poll_ready` first takes a permit, waiting for it if the limiter's
/// `max_wait_duration` allows, and only then waits for the inner service to
/// be ready (tower's `ConcurrencyLimit` order). A rejected call makes
/// `poll_ready` return `Ready(Ok)` without polling the inner service, and
/// `call` fail at once with [`RateLimited`]: the rejection reserves nothing
/// in the layers inside (a bulkhead's permit) and never poisons a `Buffer`.
/// Permits are not given back: one taken by `poll_ready` and never used by
/// a `call` (the service dropped, or its inner service failing in
/// `poll_ready`) is spent.
pub struct RateLimiterService<S> {
    inner: S,
    limiter: RateLimiter,
    admission: Admission,
}

impl<S> RateLimiterService<S> {
    /// Wraps `inner` with `limiter`.
    pub fn new(inner: S, limiter: RateLimiter) -> Self {
        Self {
            inner,
            limiter,
            admission: Admission::Idle,
        }
    }

    /// The limiter guarding this service.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for RateLimiterService<S>
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
                    self.admission = match self.limiter.check() {
                        Ok(()) => {
                            self.limiter.on_permitted(std::time::Duration::ZERO);
                            Admission::Permitted(())
                        }
                        Err(retry_after) => match self.limiter.start_waiting(retry_after) {
                            Ok(waiting) => {
                                let sleep = Box::pin(tokio::time::sleep_until(waiting.due()));
                                Admission::Waiting((waiting, sleep))
                            }
                            Err(rejected) => Admission::Rejected(rejected),
                        },
                    };
                }
                Admission::Waiting((waiting, sleep)) => {
                    ready!(sleep.as_mut().poll(cx));
                    match waiting.poll_permit() {
                        None => sleep.as_mut().reset(waiting.due()),
                        Some(Ok(())) => self.admission = Admission::Permitted(()),
                        Some(Err(rejected)) => self.admission = Admission::Rejected(rejected),
                    }
                }
                Admission::Permitted(_) | Admission::Rejected(_) => {
                    unreachable!("poll_decided answers once the limiter has decided")
                }
            }
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let inner = &mut self.inner;
        self.admission
            .call("RateLimiterService", || inner.call(request))
    }
}

impl<S: Clone> Clone for RateLimiterService<S> {
    /// Clones without the permit the original may hold: a clone takes its
    /// own in `poll_ready`.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.limiter.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimiterService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterService")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter.name())
            .finish_non_exhaustive()
    }
}
