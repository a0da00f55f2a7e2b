//! [`ResponseFuture`]: settles the call's outcome with the fallback.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::error::BoxError;

use super::state::LastGoodStore;

pin_project! {
    /// The response future of a [`FallbackService`](super::FallbackService):
    /// the inner response, or the fallback's answer to a handled failure.
    /// Dropping it drops the inner call and records nothing.
    pub struct ResponseFuture<F, Res, K, C> {
        #[pin]
        future: F,
        key: Option<K>,
        store: Arc<LastGoodStore<K, Res>>,
        classifier: C,
    }
}

impl<F, Res, K, C> ResponseFuture<F, Res, K, C> {
    pub(crate) fn new(
        future: F,
        key: Option<K>,
        store: Arc<LastGoodStore<K, Res>>,
        classifier: C,
    ) -> Self {
        Self {
            future,
            key,
            store,
            classifier,
        }
    }
}

impl<F, Res, E, K, C> Future for ResponseFuture<F, Res, K, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Res: Clone,
    K: Hash + Eq + Clone,
    C: Classify<Res, E>,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let outcome = this.classifier.classify(result.as_ref());
        let result = result.map_err(Into::into);
        Poll::Ready(this.store.settle(result, outcome, this.key.take()))
    }
}

impl<F, Res, K, C> fmt::Debug for ResponseFuture<F, Res, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("fallback", &self.store.fallback().name())
            .finish_non_exhaustive()
    }
}
