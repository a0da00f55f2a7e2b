//! [`RetryService`]: the tower adapter that starts the first attempt.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;

use super::event::GiveUpReason;
use super::future::ResponseFuture;
use super::policy::RetryPolicy;
use super::state::Shared;

/// A service whose failed calls are tried again; built by
/// [`RetryLayer`](super::RetryLayer) from a [`Retry`](super::Retry).
///
/// `call` sends the request at once on the service made ready by
/// `poll_ready`, keeping a copy of the request (from the policy) and a clone
/// of the service for later attempts; a request that cannot be copied or may
/// not be sent twice is sent once. Later attempts wait for the clone's
/// `poll_ready` before they are sent.
pub struct RetryService<S, C, P> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
    policy: P,
}

impl<S, C, P> RetryService<S, C, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C, policy: P) -> Self {
        Self {
            inner,
            shared,
            classifier,
            policy,
        }
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

impl<S, C, P, Req> Service<Req> for RetryService<S, C, P>
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

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let config = &self.shared.config;
        if let Some(budget) = &config.budget {
            budget.deposit();
        }
        let (copy, blocked) = if config.max_attempts <= 1 {
            (None, Some(GiveUpReason::AttemptsExhausted))
        } else if !self.policy.may_retry(&request) {
            (None, Some(GiveUpReason::RequestNotRetryable))
        } else {
            match self.policy.clone_request(&request) {
                Some(copy) => (Some(copy), None),
                None => (None, Some(GiveUpReason::RequestNotRetryable)),
            }
        };
        // Later attempts go to a clone; this (ready) service takes the first.
        let service = copy.as_ref().map(|_| self.inner.clone());
        let future = self.inner.call(request);
        ResponseFuture::new(
            future,
            service,
            copy,
            blocked,
            Arc::clone(&self.shared),
            self.classifier.clone(),
            self.policy.clone(),
        )
    }
}

impl<S: Clone, C: Clone, P: Clone> Clone for RetryService<S, C, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, C, P> fmt::Debug for RetryService<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("name", &self.shared.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
