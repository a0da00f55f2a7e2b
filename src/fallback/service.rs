//! [`FallbackService`]: the tower adapter over the fallback.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;

use super::future::ResponseFuture;
use super::key::LastGoodKey;
use super::state::LastGoodStore;

/// A service whose handled failures are answered by a
/// [`Fallback`](super::Fallback); built by [`FallbackLayer`](super::FallbackLayer).
///
/// Readiness is the inner service's (an error from its `poll_ready` is
/// returned as it is: the service cannot take calls, and there is no call
/// to answer yet). Every call reaches the inner service; its outcome
/// decides whether the fallback answers.
pub struct FallbackService<S, Res, K, F, C> {
    inner: S,
    store: Arc<LastGoodStore<K, Res>>,
    key: F,
    classifier: C,
}

impl<S, Res, K, F, C> FallbackService<S, Res, K, F, C> {
    pub(crate) fn new(inner: S, store: Arc<LastGoodStore<K, Res>>, key: F, classifier: C) -> Self {
        Self {
            inner,
            store,
            key,
            classifier,
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

impl<S, Req, K, F, C> Service<Req> for FallbackService<S, S::Response, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: std::hash::Hash + Eq + Clone,
    F: LastGoodKey<Req, Key = K>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response, K, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.store.key_of(&self.key, &request);
        ResponseFuture::new(
            self.inner.call(request),
            key,
            Arc::clone(&self.store),
            self.classifier.clone(),
        )
    }
}

impl<S: Clone, Res, K, F: Clone, C: Clone> Clone for FallbackService<S, Res, K, F, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.store),
            self.key.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, Res, K, F, C> fmt::Debug for FallbackService<S, Res, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .field("fallback", &self.store.fallback().name())
            .finish_non_exhaustive()
    }
}
