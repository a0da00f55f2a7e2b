//! Futures shared by the layers: [`BoxFuture`], the crate's one boxed
//! future, and [`AdmittedFuture`], the response future of every layer that
//! admits or rejects calls in `poll_ready`.
//!
//! Hot paths use named `pin_project` futures; a boxed future is for slow
//! paths and object-safe traits (the saga log, the service registries, the
//! retry's request-body buffering). They all spell it [`BoxFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;

/// A boxed, `Send` future that may borrow for `'a`, as
/// `futures::future::BoxFuture` is.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pin_project! {
    /// The response future of a layer that decides in `poll_ready` whether a
    /// call may go ahead (a bulkhead, a rate limiter): the inner call, which
    /// holds the layer's permit `P` until it completes, or the rejection `E`,
    /// returned at once.
    ///
    /// The permit is given back as soon as the call completes, not when the
    /// future is dropped.
    pub struct AdmittedFuture<F, P, E> {
        #[pin]
        kind: Kind<F, P, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, P, E> {
        Called { #[pin] future: F, permit: Option<P> },
        Rejected { error: Option<E> },
    }
}

impl<F, P, E> AdmittedFuture<F, P, E> {
    pub(crate) fn admitted(future: F, permit: P) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(error: E) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

/// What `poll_ready` decided for the next call of a layer that admits
/// calls: nothing yet, waiting (`W`), admitted with a permit (`P`), or
/// rejected (`E`).
pub(crate) enum Admission<W, P, E> {
    Idle,
    Waiting(W),
    Permitted(P),
    Rejected(E),
}

impl<W, P, E> Admission<W, P, E> {
    /// The end of `poll_ready` once the layer has decided, or `None` while
    /// it has not (`Idle`, `Waiting`).
    ///
    /// The layer decides first and asks `inner` only once it has admitted
    /// the call, as tower's `ConcurrencyLimit` does: a rejected call never
    /// polls `inner`, so it reserves nothing downstream (a bulkhead permit,
    /// a rate permit) that it would then hold without using, and leaves no
    /// decision of `inner`'s behind for a later call. An admitted call
    /// keeps its permit while `inner` is not ready; if `inner` fails, the
    /// permit is dropped (given back, if the layer can) with the decision.
    #[inline]
    pub(crate) fn poll_decided<S, Req>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<(), BoxError>>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        match self {
            Admission::Idle | Admission::Waiting(_) => None,
            // `call` fails at once, without the inner service.
            Admission::Rejected(_) => Some(Poll::Ready(Ok(()))),
            Admission::Permitted(_) => Some(match inner.poll_ready(cx) {
                Poll::Ready(Err(error)) => {
                    *self = Admission::Idle;
                    Poll::Ready(Err(error.into()))
                }
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            }),
        }
    }

    /// Starts the call `poll_ready` admitted (with `call`), or returns its
    /// rejection; the next call needs a new `poll_ready`. Panics, as tower's
    /// contract allows, if `poll_ready` did not return `Ready(Ok)` first.
    pub(crate) fn call<F>(
        &mut self,
        service: &'static str,
        call: impl FnOnce() -> F,
    ) -> AdmittedFuture<F, P, E> {
        match std::mem::replace(self, Admission::Idle) {
            Admission::Permitted(permit) => AdmittedFuture::admitted(call(), permit),
            Admission::Rejected(error) => AdmittedFuture::rejected(error),
            Admission::Idle | Admission::Waiting(_) => {
                panic!("{service}: poll_ready must return Ready(Ok) before call")
            }
        }
    }
}

impl<F, P, E, T, Inner> Future for AdmittedFuture<F, P, E>
where
    F: Future<Output = Result<T, Inner>>,
    Inner: Into<BoxError>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                // The call is over: give the permit back now.
                drop(permit.take());
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("AdmittedFuture polled after completion"),
            },
        }
    }
}

impl<F, P, E> fmt::Debug for AdmittedFuture<F, P, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmittedFuture").finish_non_exhaustive()
    }
}
