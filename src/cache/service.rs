//! [`CacheService`]: the tower adapter over the response cache.

use std::fmt;
use std::hash::Hash;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::coalesce::oneshot::{Oneshot, take_service};
use crate::error::BoxError;

use super::future::ResponseFuture;
use super::state::{Lookup, ResponseCache};

/// A service that answers from a [`ResponseCache`] when it can; built by
/// [`CacheLayer`](super::CacheLayer).
///
/// `poll_ready` is always ready and reserves nothing in the inner service:
/// whether a request needs it is only known in `call`, from its key. A
/// miss takes a clone of the inner service and waits for its readiness in
/// the response future (as tower's `Oneshot` does), so a hit reserves
/// nothing downstream (no bulkhead permit, no rate permit).
pub struct CacheService<S, K, Res, F, C> {
    inner: S,
    cache: ResponseCache<K, Res>,
    key: F,
    classifier: C,
}

impl<S, K, Res, F, C> CacheService<S, K, Res, F, C> {
    pub(crate) fn new(inner: S, cache: ResponseCache<K, Res>, key: F, classifier: C) -> Self {
        Self {
            inner,
            cache,
            key,
            classifier,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, K, F, C> Service<Req> for CacheService<S, K, S::Response, F, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: Clone + Send + Sync + 'static,
    K: Hash + Eq + Send + Sync + 'static,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, K, C>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A miss waits for the inner service's readiness in its future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key)(&request);
        let stale = match self.cache.lookup(&key) {
            Lookup::Fresh(response) => return ResponseFuture::hit(response),
            Lookup::Stale(response) => Some(response),
            Lookup::Missing => None,
        };
        ResponseFuture::miss(
            Oneshot::new(take_service(&mut self.inner), request),
            key,
            stale,
            self.cache.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: Clone, K, Res, F: Clone, C: Clone> Clone for CacheService<S, K, Res, F, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.cache.clone(),
            self.key.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, K, Res, F, C> fmt::Debug for CacheService<S, K, Res, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache.name())
            .finish_non_exhaustive()
    }
}
