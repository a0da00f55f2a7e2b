//! [`AdaptiveConcurrencyLayer`]: wraps services with a shared adaptive limit.

use tower_layer::Layer;

use crate::classify::DefaultClassifier;

use super::service::AdaptiveConcurrencyService;
use super::state::AdaptiveConcurrency;

/// Wraps services in an [`AdaptiveConcurrencyService`] sharing one
/// [`AdaptiveConcurrency`] limit; the classifier decides which outcomes are
/// failures (a drop signal for the algorithm) and which are ignored (no
/// sample). Every `Err` is a failure until you say otherwise with
/// [`with_classifier`](Self::with_classifier).
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrencyLayer<C = DefaultClassifier> {
    limit: AdaptiveConcurrency,
    classifier: C,
}

impl AdaptiveConcurrencyLayer {
    /// A layer for `limit` with the [`DefaultClassifier`].
    pub fn new(limit: AdaptiveConcurrency) -> Self {
        Self {
            limit,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> AdaptiveConcurrencyLayer<C> {
    /// Replaces the classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> AdaptiveConcurrencyLayer<C2> {
        AdaptiveConcurrencyLayer {
            limit: self.limit,
            classifier,
        }
    }

    /// The limit shared by the services this layer builds.
    pub fn limit(&self) -> &AdaptiveConcurrency {
        &self.limit
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveConcurrencyLayer<C> {
    type Service = AdaptiveConcurrencyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrencyService::new(inner, self.limit.clone(), self.classifier.clone())
    }
}
