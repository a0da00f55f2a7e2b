//! [`Oneshot`]: waits for a service to be ready, then calls it once.
//!
//! Layers that decide only in `call` whether the inner service is needed at
//! all (a coalesced call that joins another, a cache hit) cannot reserve the
//! inner service's readiness in their own `poll_ready`: a reservation made
//! for a call that never reaches the inner service would sit in it (a
//! bulkhead permit, a rate permit) until the service is dropped. They take
//! a clone of the inner service instead and wait for its readiness inside
//! the response future, only for the calls that need it, as tower's
//! `Oneshot` does.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

pin_project! {
    /// Readies `service` and calls it with `request`; resolves to the
    /// response. Dropping it before the call drops the service and the
    /// request; dropping it after cancels the inner call.
    #[project = OneshotProj]
    pub(crate) enum Oneshot<S: Service<Req>, Req> {
        NotReady { service: S, request: Option<Req> },
        Called { #[pin] future: S::Future },
    }
}

impl<S: Service<Req>, Req> Oneshot<S, Req> {
    pub(crate) fn new(service: S, request: Req) -> Self {
        Oneshot::NotReady {
            service,
            request: Some(request),
        }
    }
}

impl<S: Service<Req>, Req> Future for Oneshot<S, Req> {
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                OneshotProj::NotReady { service, request } => {
                    ready!(service.poll_ready(cx))?;
                    let request = request
                        .take()
                        .expect("Oneshot: the request is taken only once, by the call");
                    let future = service.call(request);
                    self.set(Oneshot::Called { future });
                }
                OneshotProj::Called { future } => return future.poll(cx),
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for Oneshot<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Oneshot::NotReady { .. } => f.write_str("Oneshot::NotReady"),
            Oneshot::Called { .. } => f.write_str("Oneshot::Called"),
        }
    }
}

/// Takes the service to call out of `slot`, leaving a clone behind: the
/// clone that was made ready stays with the call (tower's advice for
/// services that call a clone).
pub(crate) fn take_service<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}
