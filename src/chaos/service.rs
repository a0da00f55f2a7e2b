//! [`ChaosService`]: the tower adapter over a [`Chaos`].

use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::error::BoxError;

use super::future::ResponseFuture;
use super::state::{Chaos, Decision};

/// A service that injects the faults of a [`Chaos`] into its calls; built
/// by [`ChaosLayer`](super::ChaosLayer).
///
/// `poll_ready` is the inner service's. `call` draws the call's fate: a
/// delay (the inner call is made at once and polled only after the delay),
/// then an injected error or response, or the inner service's answer. An
/// injected outcome does not call the inner service, whose readiness then
/// serves the next call.
pub struct ChaosService<S, Res> {
    inner: S,
    chaos: Chaos<Res>,
}

impl<S, Res> ChaosService<S, Res> {
    /// Wraps `inner` with `chaos`.
    pub fn new(inner: S, chaos: Chaos<Res>) -> Self {
        Self { inner, chaos }
    }

    /// The chaos injecting faults into this service.
    pub fn chaos(&self) -> &Chaos<Res> {
        &self.chaos
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, Res> Service<Req> for ChaosService<S, Res>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
{
    type Response = Res;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Res>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        match self.chaos.decide() {
            None => ResponseFuture::passthrough(self.inner.call(request)),
            Some(Decision {
                delay,
                injected: Some(outcome),
            }) => ResponseFuture::injected(delay, outcome),
            Some(Decision {
                delay: Some(delay),
                injected: None,
            }) => ResponseFuture::delayed(delay, self.inner.call(request)),
            Some(Decision {
                delay: None,
                injected: None,
            }) => ResponseFuture::passthrough(self.inner.call(request)),
        }
    }
}

impl<S: Clone, Res> Clone for ChaosService<S, Res> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.chaos.clone())
    }
}

impl<S: fmt::Debug, Res> fmt::Debug for ChaosService<S, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosService")
            .field("inner", &self.inner)
            .field("chaos", &self.chaos.name())
            .finish()
    }
}
