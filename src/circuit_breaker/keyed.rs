//! [`KeyedCircuitBreakerLayer`]: one breaker per request key (per host, per
//! tenant), taken from a [`CircuitBreakerRegistry`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::error::{BoxError, ConfigError};

use super::admission::Reservation;
use super::future::ResponseFuture;
use super::registry::CircuitBreakerRegistry;
use super::state::{CircuitBreaker, CircuitState};

/// The default cap on the breakers of a [`KeyedCircuitBreakerLayer`]'s
/// registry: 10,000 (about 2.4 KB each with the default count window and
/// no event subscriber).
pub const DEFAULT_MAX_KEYS: usize = 10_000;

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
/// # A bounded number of keys
///
/// Keys come from requests, so whoever sends them chooses how many there
/// are. The layer keeps its registry at no more than
/// [`with_max_keys`](Self::with_max_keys) breakers ([`DEFAULT_MAX_KEYS`],
/// 10,000, by default; give the layer a registry of its own, as the cap
/// counts every breaker in it). When a new key arrives and the registry is
/// full, the layer evicts breakers until an eighth of the cap is free:
///
/// * only an *idle* breaker is evicted: CLOSED, and held by nothing but
///   the registry (no call in flight, no service or caller keeping a
///   handle). A breaker that is OPEN, HALF_OPEN, FORCED_OPEN, DISABLED or
///   METRICS_ONLY, or has a call in flight, is never evicted, so a failing
///   key keeps rejecting and an operator's override stays;
/// * idle breakers whose window holds no failed or slow call go first (the
///   next call of their key starts from the same empty window), then those
///   with the fewest failed and slow calls; ties by key.
///
/// An evicted key gets a new CLOSED breaker on its next call. If nothing
/// can be evicted (every breaker is busy or not CLOSED), the call goes
/// through a breaker of its own that is not kept in the registry: it is
/// admitted (as a new key's breaker would be) and its outcome is recorded
/// nowhere that lasts. Eviction scans the registry once per eighth of the
/// cap of new keys, so its cost per new key is constant.
///
#[cfg_attr(feature = "http", doc = "```")]
#[cfg_attr(not(feature = "http"), doc = "```ignore")]
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
    keys: Arc<KeyBound>,
}

/// The cap on a keyed layer's breakers, shared by its services.
#[derive(Debug)]
struct KeyBound {
    max_keys: usize,
    /// Held while a new key's breaker is made, so that one caller at a
    /// time evicts.
    making: Mutex<()>,
}

impl KeyBound {
    fn new(max_keys: usize) -> Arc<Self> {
        Arc::new(Self {
            max_keys,
            making: Mutex::new(()),
        })
    }

    /// The breaker of `key`, made for it if it has none, after evicting
    /// idle breakers if the registry is full (see the layer's docs).
    fn breaker(&self, registry: &CircuitBreakerRegistry, key: &str) -> CircuitBreaker {
        if let Some(breaker) = registry.get(key) {
            return breaker;
        }
        let _making = self.making.lock();
        if let Some(breaker) = registry.get(key) {
            return breaker;
        }
        if registry.len() >= self.max_keys {
            self.evict(registry);
        }
        if registry.len() < self.max_keys {
            return registry.breaker(key);
        }
        tracing::debug!(
            key,
            max_keys = self.max_keys,
            "keyed circuit breaker: every breaker is busy or not CLOSED; this call's breaker is not kept"
        );
        CircuitBreaker::new(key, registry.default_config().clone())
    }

    /// Evicts idle breakers, cleanest first, until an eighth of the cap is
    /// free or none is left to evict.
    fn evict(&self, registry: &CircuitBreakerRegistry) {
        let room = (self.max_keys / 8).max(1);
        let all = registry.all();
        let excess = (all.len() + room).saturating_sub(self.max_keys);
        let mut idle: Vec<(u64, &CircuitBreaker)> = all
            .iter()
            .filter(|breaker| is_idle(breaker))
            .map(|breaker| {
                let metrics = breaker.metrics();
                (metrics.failed_calls + metrics.slow_calls, breaker)
            })
            .collect();
        // Stable: ties stay in key order.
        idle.sort_by_key(|(bad_calls, _)| *bad_calls);
        let evicted = idle.len().min(excess);
        for (_, breaker) in idle.into_iter().take(excess) {
            registry.remove(breaker.name());
        }
        tracing::debug!(
            evicted,
            breakers = all.len() - evicted,
            max_keys = self.max_keys,
            "keyed circuit breaker: evicted idle breakers"
        );
    }
}

/// Whether `breaker`, one of `registry.all()`, is CLOSED and held only by
/// the registry and that list (no call in flight, no other handle).
fn is_idle(breaker: &CircuitBreaker) -> bool {
    breaker.shared.is_only_held_by(2) && breaker.state() == CircuitState::Closed
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
            keys: KeyBound::new(DEFAULT_MAX_KEYS),
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
            keys: self.keys,
        }
    }

    /// Keeps at most `max_keys` breakers in the registry, evicting idle
    /// ones as the [layer docs](Self#a-bounded-number-of-keys) describe.
    /// At least 1; default [`DEFAULT_MAX_KEYS`] (10,000).
    pub fn with_max_keys(mut self, max_keys: usize) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::new(
                "keyed circuit breaker",
                "max_keys",
                "must be at least 1, got 0",
            ));
        }
        self.keys = KeyBound::new(max_keys);
        Ok(self)
    }

    /// The most breakers the layer keeps in its registry.
    pub fn max_keys(&self) -> usize {
        self.keys.max_keys
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
            keys: Arc::clone(&self.keys),
        }
    }
}

impl<K, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .field("classifier", &self.classifier)
            .field("max_keys", &self.keys.max_keys)
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
    keys: Arc<KeyBound>,
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
        let breaker = self.keys.breaker(&self.registry, &(self.key)(&request));
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
