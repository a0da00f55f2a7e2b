//! [`ResponseFuture`]: records the call's outcome when it completes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::error::BoxError;

use super::admission::CallPermit;
use super::error::BreakerOpen;

pin_project! {
    /// The response future of a [`CircuitBreakerService`](super::CircuitBreakerService).
    ///
    /// Resolves to the inner response, or to a [`BreakerOpen`] error at once
    /// if the breaker rejected the call. Dropping it before it completes
    /// records nothing and releases its HALF_OPEN trial slot.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        classifier: C,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F, permit: Option<CallPermit> },
        Rejected { error: Option<BreakerOpen> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn admitted(future: F, permit: CallPermit, classifier: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
            },
            classifier,
        }
    }

    pub(crate) fn rejected(error: BreakerOpen, classifier: C) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            classifier,
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
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    // A response whose outcome comes at the end of its body
                    // (gRPC trailers) may take the permit with it.
                    let permit = match &result {
                        Ok(response) => this.classifier.hold_until_end(response, permit),
                        Err(_) => Some(permit),
                    };
                    if let Some(permit) = permit {
                        permit.record_result(result.as_ref(), this.classifier);
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("circuit breaker ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let permit = match &self.kind {
            Kind::Called { permit, .. } => permit.as_ref(),
            Kind::Rejected { .. } => None,
        };
        f.debug_struct("ResponseFuture")
            .field("permit", &permit)
            .finish_non_exhaustive()
    }
}
