//! [`HedgeService`]: the tower adapter over a [`Hedge`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;
use crate::retry::RetryPolicy;

use super::event::HedgeEventKind;
use super::future::{Hedging, ResponseFuture};
use super::state::Hedge;

/// A service that races slow or failed calls with copies sent to a clone
/// of the inner service; built by [`HedgeLayer`](super::HedgeLayer).
///
/// `call` sends the request to the inner service made ready by
/// `poll_ready`; each hedged attempt goes to a fresh clone of the inner
/// service, made ready by the response future. Requests the policy will
/// not send twice (or cannot copy) are sent once, unhedged.
pub struct HedgeService<S, C, P> {
    inner: S,
    hedge: Hedge,
    classifier: C,
    policy: P,
}

impl<S, C, P> HedgeService<S, C, P> {
    /// Wraps `inner` with `hedge`, judging answers with `classifier` and
    /// copying requests with `policy`.
    pub fn new(inner: S, hedge: Hedge, classifier: C, policy: P) -> Self {
        Self {
            inner,
            hedge,
            classifier,
            policy,
        }
    }

    /// The hedge shared by this service.
    pub fn hedge(&self) -> &Hedge {
        &self.hedge
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

impl<S, C, P, Req> Service<Req> for HedgeService<S, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    P: RetryPolicy<Req, S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.hedge.shared;
        shared.calls.add(1);
        shared.exported.on_call();
        if let Some(budget) = &shared.config.budget {
            budget.deposit();
        }
        let template = if self.policy.may_retry(&request) {
            self.policy.clone_request(&request)
        } else {
            None
        };
        let hedging = match template {
            Some(template) => Some(Hedging {
                service: self.inner.clone(),
                template,
                policy: self.policy.clone(),
            }),
            None => {
                shared.not_hedgeable.add(1);
                shared.exported.on_not_hedgeable();
                tracing::debug!(hedge = %shared.name, "request not hedgeable: sent once");
                shared.publish(HedgeEventKind::NotHedgeable);
                None
            }
        };
        let primary = self.inner.call(request);
        ResponseFuture::new(
            primary,
            hedging,
            self.classifier.clone(),
            Arc::clone(shared),
        )
    }
}

impl<S: Clone, C: Clone, P: Clone> Clone for HedgeService<S, C, P> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.hedge.clone(),
            self.classifier.clone(),
            self.policy.clone(),
        )
    }
}

impl<S: fmt::Debug, C, P> fmt::Debug for HedgeService<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeService")
            .field("inner", &self.inner)
            .field("hedge", &self.hedge.name())
            .finish_non_exhaustive()
    }
}
