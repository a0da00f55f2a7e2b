//! [`CircuitBreakerLayer`]: wraps services with a shared breaker.

use tower_layer::Layer;

use crate::classify::DefaultClassifier;

use super::service::CircuitBreakerService;
use super::state::CircuitBreaker;

/// Wraps services in a [`CircuitBreakerService`] that shares one
/// [`CircuitBreaker`]: every service this layer builds, and every clone of
/// them, trips and recovers together.
///
#[cfg_attr(feature = "http", doc = "```")]
#[cfg_attr(not(feature = "http"), doc = "```ignore")]
/// use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
/// use palisade::classify::HttpStatusClassifier;
/// use tower::ServiceBuilder;
///
/// let breaker = CircuitBreaker::with_defaults("users");
/// let service = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(breaker.clone()).with_classifier(HttpStatusClassifier::new()))
///     .service_fn(|_req: ()| async {
///         Ok::<_, std::io::Error>(http::Response::new(()))
///     });
/// # drop(service);
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer for `breaker`, where `Err` is a failure and `Ok` a success.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Replaces the classifier that decides what counts as a failure.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The breaker shared by the services this layer builds.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The classifier that decides what counts as a failure.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}

impl From<CircuitBreaker> for CircuitBreakerLayer {
    fn from(breaker: CircuitBreaker) -> Self {
        Self::new(breaker)
    }
}
