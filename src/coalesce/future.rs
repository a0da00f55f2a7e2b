//! [`ResponseFuture`]: waits for the shared call, or runs its own.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;

use super::error::CoalescedError;
use super::oneshot::Oneshot;
use super::slot::{Polled, SharedCallPanicked};
use super::state::Waiter;

pin_project! {
    /// The one inner call a key's waiters share: its error is wrapped in a
    /// [`CoalescedError`] so that every waiter gets a copy.
    pub(crate) struct SharedCall<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        call: Oneshot<S, Req>,
    }
}

impl<S: Service<Req>, Req> SharedCall<S, Req> {
    pub(crate) fn new(call: Oneshot<S, Req>) -> Self {
        Self { call }
    }
}

impl<S, Req> Future for SharedCall<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, CoalescedError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().call.poll(cx));
        Poll::Ready(result.map_err(|error| CoalescedError::new(error.into())))
    }
}

impl<S: Service<Req>, Req> fmt::Debug for SharedCall<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCall").finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of a [`CoalesceService`](super::CoalesceService):
    /// a clone of the shared call's response (or a [`CoalescedError`]), or
    /// the response of the request's own call when it ran uncoalesced.
    ///
    /// Dropping it leaves the shared call to the other waiters; the last
    /// waiter to leave an unfinished call cancels it.
    pub struct ResponseFuture<S, Req, K>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
        S::Response: Clone,
        K: Hash,
        K: Eq,
        K: Clone,
    {
        #[pin]
        kind: Kind<S, Req, K>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, K>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
        S::Response: Clone,
        K: Hash,
        K: Eq,
        K: Clone,
    {
        Waiting {
            waiter: Waiter<K, SharedCall<S, Req>>,
        },
        Uncoalesced {
            #[pin]
            call: Oneshot<S, Req>,
        },
    }
}

impl<S, Req, K> ResponseFuture<S, Req, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    pub(crate) fn shared(waiter: Waiter<K, SharedCall<S, Req>>) -> Self {
        Self {
            kind: Kind::Waiting { waiter },
        }
    }

    pub(crate) fn uncoalesced(call: Oneshot<S, Req>) -> Self {
        Self {
            kind: Kind::Uncoalesced { call },
        }
    }
}

impl<S, Req, K> Future for ResponseFuture<S, Req, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Waiting { waiter } => match ready!(waiter.poll(cx)) {
                Polled::Answer(result) => {
                    Poll::Ready(result.map_err(|error| Box::new(error) as BoxError))
                }
                Polled::Lost => Poll::Ready(Err(Box::new(CoalescedError::new(Box::new(
                    SharedCallPanicked,
                ))))),
            },
            KindProj::Uncoalesced { call } => {
                Poll::Ready(ready!(call.poll(cx)).map_err(Into::into))
            }
        }
    }
}

impl<S, Req, K> fmt::Debug for ResponseFuture<S, Req, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
