//! [`CoalesceService`]: the tower adapter over the map of calls in flight.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::error::BoxError;

use super::future::{ResponseFuture, SharedCall};
use super::oneshot::{Oneshot, take_service};
use super::state::{Flights, Joined};

/// A service whose concurrent requests with equal keys share one inner
/// call; built by [`CoalesceLayer`](super::CoalesceLayer).
///
/// `poll_ready` is always ready and reserves nothing in the inner service:
/// whether a request needs the inner service is only known in `call`, from
/// its key. The request that starts a shared call takes a clone of the
/// inner service and waits for its readiness inside the shared call (as
/// tower's `Oneshot` does), so a request that joins a call in flight
/// reserves nothing downstream (no bulkhead permit, no rate permit).
pub struct CoalesceService<S, Req, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
{
    inner: S,
    key: F,
    flights: Arc<Flights<K, SharedCall<S, Req>>>,
}

impl<S, Req, K, F> CoalesceService<S, Req, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
{
    pub(crate) fn new(inner: S, key: F, flights: Arc<Flights<K, SharedCall<S, Req>>>) -> Self {
        Self {
            inner,
            key,
            flights,
        }
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

impl<S, Req, K, F> Service<Req> for CoalesceService<S, Req, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, K>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service's readiness is awaited by the call that needs it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key)(&request);
        let inner = &mut self.inner;
        match self.flights.join(key, request, |request| {
            SharedCall::new(Oneshot::new(take_service(inner), request))
        }) {
            Joined::Waiting(waiter) => ResponseFuture::shared(waiter),
            Joined::Uncoalesced(request) => {
                ResponseFuture::uncoalesced(Oneshot::new(take_service(inner), request))
            }
        }
    }
}

impl<S, Req, K, F> Clone for CoalesceService<S, Req, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    F: Clone,
{
    /// Clones share the map of calls in flight.
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.key.clone(),
            Arc::clone(&self.flights),
        )
    }
}

impl<S, Req, K, F> fmt::Debug for CoalesceService<S, Req, K, F>
where
    S: Service<Req> + fmt::Debug,
    S::Error: Into<BoxError>,
    S::Response: Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
