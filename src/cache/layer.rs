//! [`CacheLayer`]: wraps services with a response cache.

use std::fmt;

use tower_layer::Layer;

use super::service::CacheService;
use super::state::ResponseCache;

/// Wraps services in a [`CacheService`]; built by
/// [`ResponseCache::layer`] with the function that extracts a request's
/// key. The classifier decides which responses are stored (successes) and
/// which outcomes a stale entry may answer (failures);
/// [`DefaultClassifier`](crate::classify::DefaultClassifier) by default.
pub struct CacheLayer<K, Res, F, C> {
    cache: ResponseCache<K, Res>,
    key: F,
    classifier: C,
}

impl<K, Res, F, C: Default> CacheLayer<K, Res, F, C> {
    pub(crate) fn new(cache: ResponseCache<K, Res>, key: F) -> Self {
        Self {
            cache,
            key,
            classifier: C::default(),
        }
    }
}

impl<K, Res, F, C> CacheLayer<K, Res, F, C> {
    /// Replaces the classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> CacheLayer<K, Res, F, C2> {
        CacheLayer {
            cache: self.cache,
            key: self.key,
            classifier,
        }
    }

    /// The cache the services share.
    pub fn cache(&self) -> &ResponseCache<K, Res> {
        &self.cache
    }
}

impl<K, Res, F: Clone, C: Clone> Clone for CacheLayer<K, Res, F, C> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, Res, F, C: fmt::Debug> fmt::Debug for CacheLayer<K, Res, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache.name())
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, Res, F: Clone, C: Clone> Layer<S> for CacheLayer<K, Res, F, C> {
    type Service = CacheService<S, K, Res, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(
            inner,
            self.cache.clone(),
            self.key.clone(),
            self.classifier.clone(),
        )
    }
}
