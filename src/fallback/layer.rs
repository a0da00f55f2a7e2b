//! [`FallbackLayer`]: wraps services with a fallback.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::service::FallbackService;
use super::state::LastGoodStore;

/// Wraps services in a [`FallbackService`]; built by
/// [`Fallback::layer`](super::Fallback::layer) or
/// [`Fallback::layer_keyed`](super::Fallback::layer_keyed).
///
/// The services a layer builds (and their clones) share one store of last
/// good responses; the classifier decides which outcomes are failures
/// ([`DefaultClassifier`](crate::classify::DefaultClassifier): every `Err`).
pub struct FallbackLayer<Res, K, F, C> {
    store: Arc<LastGoodStore<K, Res>>,
    key: F,
    classifier: C,
}

impl<Res, K, F, C: Default> FallbackLayer<Res, K, F, C> {
    pub(crate) fn new(store: Arc<LastGoodStore<K, Res>>, key: F) -> Self {
        Self {
            store,
            key,
            classifier: C::default(),
        }
    }
}

impl<Res, K, F, C> FallbackLayer<Res, K, F, C> {
    /// Replaces the classifier that decides which outcomes the fallback
    /// answers.
    pub fn with_classifier<C2>(self, classifier: C2) -> FallbackLayer<Res, K, F, C2> {
        FallbackLayer {
            store: self.store,
            key: self.key,
            classifier,
        }
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<Res, K, F: Clone, C: Clone> Clone for FallbackLayer<Res, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<Res, K, F, C: fmt::Debug> fmt::Debug for FallbackLayer<Res, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("fallback", &self.store.fallback().name())
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, Res, K, F: Clone, C: Clone> Layer<S> for FallbackLayer<Res, K, F, C> {
    type Service = FallbackService<S, Res, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService::new(
            inner,
            Arc::clone(&self.store),
            self.key.clone(),
            self.classifier.clone(),
        )
    }
}
