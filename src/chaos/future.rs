//! [`ResponseFuture`]: the inner call, possibly delayed, or an injected
//! outcome.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::error::BoxError;

pin_project! {
    /// The response future of a [`ChaosService`](super::ChaosService).
    pub struct ResponseFuture<F, Res> {
        #[pin]
        kind: Kind<F, Res>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Res> {
        Passthrough { #[pin] future: F },
        // The sleeps are boxed: a delayed call is the slow path, and an
        // inline `Sleep` would make every passthrough future large.
        Delayed { sleep: Pin<Box<Sleep>>, #[pin] future: F },
        Injected { result: Option<Result<Res, BoxError>> },
        DelayedInjected { sleep: Pin<Box<Sleep>>, result: Option<Result<Res, BoxError>> },
    }
}

impl<F, Res> ResponseFuture<F, Res> {
    #[inline]
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn delayed(delay: Duration, future: F) -> Self {
        Self {
            kind: Kind::Delayed {
                sleep: Box::pin(tokio::time::sleep(delay)),
                future,
            },
        }
    }

    pub(crate) fn injected(delay: Option<Duration>, result: Result<Res, BoxError>) -> Self {
        let result = Some(result);
        Self {
            kind: match delay {
                Some(delay) => Kind::DelayedInjected {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                    result,
                },
                None => Kind::Injected { result },
            },
        }
    }
}

impl<F, Res, E> Future for ResponseFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future.poll(cx).map_err(Into::into),
            KindProj::Delayed { sleep, future } => {
                ready!(sleep.as_mut().poll(cx));
                future.poll(cx).map_err(Into::into)
            }
            KindProj::Injected { result } => Poll::Ready(take(result)),
            KindProj::DelayedInjected { sleep, result } => {
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(take(result))
            }
        }
    }
}

fn take<Res>(result: &mut Option<Result<Res, BoxError>>) -> Result<Res, BoxError> {
    result
        .take()
        .unwrap_or_else(|| panic!("chaos ResponseFuture polled after completion"))
}
