//! [`ResponseFuture`]: a cached response, or the inner call that refreshes
//! the entry (and falls back to the stale one when it fails).

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::classify::{Classify, Outcome};
use crate::coalesce::oneshot::Oneshot;
use crate::error::BoxError;

use super::state::ResponseCache;

pin_project! {
    /// The response future of a [`CacheService`](super::CacheService): a
    /// fresh entry at once, or the inner call, whose successful response is
    /// stored and whose failure a stale entry may answer. Dropping it
    /// cancels the inner call and stores nothing.
    pub struct ResponseFuture<S, Req, K, C>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: Kind<S, Req, K, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, K, C>
    where
        S: Service<Req>,
    {
        Hit {
            response: Option<S::Response>,
        },
        Miss {
            #[pin]
            call: Oneshot<S, Req>,
            key: Option<K>,
            stale: Option<S::Response>,
            cache: ResponseCache<K, S::Response>,
            classifier: C,
        },
    }
}

impl<S: Service<Req>, Req, K, C> ResponseFuture<S, Req, K, C> {
    pub(crate) fn hit(response: S::Response) -> Self {
        Self {
            kind: Kind::Hit {
                response: Some(response),
            },
        }
    }

    pub(crate) fn miss(
        call: Oneshot<S, Req>,
        key: K,
        stale: Option<S::Response>,
        cache: ResponseCache<K, S::Response>,
        classifier: C,
    ) -> Self {
        Self {
            kind: Kind::Miss {
                call,
                key: Some(key),
                stale,
                cache,
                classifier,
            },
        }
    }
}

impl<S, Req, K, C> Future for ResponseFuture<S, Req, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone + Send + Sync + 'static,
    K: Hash + Eq + Send + Sync + 'static,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Hit { response } => Poll::Ready(Ok(response
                .take()
                .expect("cache ResponseFuture polled after completion"))),
            KindProj::Miss {
                call,
                key,
                stale,
                cache,
                classifier,
            } => {
                let result = ready!(call.poll(cx));
                let outcome = classifier.classify(result.as_ref());
                let result = result.map_err(Into::into);
                let on_rejection = cache.config().stale_on_rejection;
                if let Some(cause) = crate::fallback::failure_cause(&result, outcome, on_rejection)
                {
                    if let Some(stale) = stale.take() {
                        cache.served_stale(cause);
                        return Poll::Ready(Ok(stale));
                    }
                } else if let (Ok(response), Outcome::Success, Some(key)) =
                    (&result, outcome, key.take())
                {
                    cache.store(key, response.clone());
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<S: Service<Req>, Req, K, C> fmt::Debug for ResponseFuture<S, Req, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
