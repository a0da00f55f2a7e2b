//! [`KeyedCircuitBreakerLayer`]: one breaker per request key (per host, per
//! tenant), taken from a [`CircuitBreakerRegistry`].

use std::borrow::Cow;
use std::fmt;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::error::BoxError;

use super::admission::Reservation;
use super::future::ResponseFuture;
use super::registry::CircuitBreakerRegistry;

/// Wraps services so that each request goes through the breaker named by
/// its key, created on first use from the registry's default configuration.
///
/// A failing host then opens only its own breaker: requests to the other
/// hosts keep flowing. The key function returns a `Cow<str>`, so keys taken
/// from the request (a URI's host) cost no allocation.
///
/// Unlike [`CircuitBreakerService`](super::CircuitBreakerService), which
/// asks its breaker in `poll_ready`, the keyed service can only ask in
/// `call`, once the request (and so its key) is known. Each call looks its
/// breaker up in the registry (a read lock and a hash): use a plain
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer) when the breaker is
/// fixed.
///
/// ```
/// use std::borrow::Cow;
/// use palisade::circuit_breaker::{
///     CircuitBreakerConfig, CircuitBreakerRegistry, CircuitState, KeyedCircuitBreakerLayer,
///     SlidingWindow,
/// };
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let registry = CircuitBreakerRegistry::new(
///     CircuitBreakerConfig::builder().sliding_window(SlidingWindow::count(1)).build()?,
/// );
/// let layer = KeyedCircuitBreakerLayer::new(registry.clone(), |req: &http::Request<()>| {
///     Cow::Borrowed(req.uri().host().unwrap_or("unknown"))
/// });
/// let mut client = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
///     match req.uri().host() {
///         Some("down.example") => Err("connection refused"),
///         _ => Ok("200 OK"),
///     }
/// }));
///
/// let request = |uri: &str| http::Request::get(uri).body(()).unwrap();
/// let _ = client.ready().await?.call(request("http://down.example/")).await;
/// client.ready().await?.call(request("http://up.example/")).await?;
///
/// assert_eq!(registry.get("down.example").unwrap().state(), CircuitState::Open);
/// assert_eq!(registry.get("up.example").unwrap().state(), CircuitState::Closed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KeyedCircuitBreakerLayer<K, C = DefaultClassifier> {
    registry: CircuitBreakerRegistry,
    key: K,
    classifier: C,
}

impl<K> KeyedCircuitBreakerLayer<K> {
    /// Breakers from `registry`, named by `key(&request)`.
    pub fn new<Req>(registry: CircuitBreakerRegistry, key: K) -> Self
    where
        K: for<'r> Fn(&'r Req) -> Cow<'r, str>,
    {
        Self {
            registry,
            key,
            classifier: DefaultClassifier,
        }
    }
}

impl<K, C> KeyedCircuitBreakerLayer<K, C> {
    /// Replaces the classifier that decides what counts as a failure.
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<K, C2> {
        KeyedCircuitBreakerLayer {
            registry: self.registry,
            key: self.key,
            classifier,
        }
    }
}

impl<S, K: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, C> {
    type Service = KeyedCircuitBreakerService<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreakerService {
            inner,
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

/// A service whose calls each go through the breaker of their key; built by
/// [`KeyedCircuitBreakerLayer`].
#[derive(Clone)]
pub struct KeyedCircuitBreakerService<S, K, C> {
    inner: S,
    registry: CircuitBreakerRegistry,
    key: K,
    classifier: C,
}

impl<S, K, C> KeyedCircuitBreakerService<S, K, C> {
    /// The registry the breakers come from.
    pub fn registry(&self) -> &CircuitBreakerRegistry {
        &self.registry
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

impl<S, K, C, Req> Service<Req> for KeyedCircuitBreakerService<S, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: for<'r> Fn(&'r Req) -> Cow<'r, str>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let breaker = self.registry.breaker(&(self.key)(&request));
        match Reservation::take(&breaker) {
            Ok(reservation) => ResponseFuture::admitted(
                self.inner.call(request),
                reservation.start(),
                self.classifier.clone(),
            ),
            Err(rejection) => ResponseFuture::rejected(rejection, self.classifier.clone()),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for KeyedCircuitBreakerService<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerService")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}
