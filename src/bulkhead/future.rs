//! [`ResponseFuture`]: holds the permit while the call runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::error::BoxError;

use super::error::BulkheadFull;
use super::state::BulkheadPermit;

pin_project! {
    /// The response future of a [`BulkheadService`](super::BulkheadService):
    /// holds the call's permit until it completes or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F, permit: Option<BulkheadPermit> },
        Rejected { error: Option<BulkheadFull> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(future: F, permit: BulkheadPermit) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(error: BulkheadFull) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                // The call is over: give the slot back now, not when the
                // future is dropped.
                drop(permit.take());
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("bulkhead ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
