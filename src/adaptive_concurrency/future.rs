//! [`ResponseFuture`]: holds the slot while the call runs and reports its
//! latency when it ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::error::BoxError;

use super::error::ConcurrencyLimitExceeded;
use super::state::AdaptivePermit;

pin_project! {
    /// The response future of an
    /// [`AdaptiveConcurrencyService`](super::AdaptiveConcurrencyService):
    /// the inner call holding its slot, or the rejection. When the call
    /// completes its outcome (by the classifier) and latency go to the
    /// limit's algorithm; dropped before, it gives the slot back and takes
    /// no sample.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called { #[pin] future: F, permit: Option<AdaptivePermit>, classifier: C },
        Rejected { error: Option<ConcurrencyLimitExceeded> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, permit: AdaptivePermit, classifier: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                classifier,
            },
        }
    }

    pub(crate) fn rejected(error: ConcurrencyLimitExceeded) -> Self {
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.finish(classifier.classify(result.as_ref()));
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("adaptive concurrency ResponseFuture polled after completion"),
            },
        }
    }
}
