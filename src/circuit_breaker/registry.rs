//! [`CircuitBreakerRegistry`]: named breakers created on first use.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

use super::config::CircuitBreakerConfig;
use super::metrics::CircuitBreakerMetrics;
use super::state::CircuitBreaker;

/// A set of named circuit breakers, one per dependency or per key (a host,
/// a tenant), created on first use from a shared default configuration.
///
/// Clones share the set. Looking a breaker up takes a read lock; keep the
/// returned [`CircuitBreaker`] (or a layer built from it) rather than looking
/// it up per call when the name is fixed.
///
/// ```
/// use palisade::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerRegistry, CircuitState};
///
/// let registry = CircuitBreakerRegistry::new(CircuitBreakerConfig::default());
/// let users = registry.breaker("users");
/// let payments = registry.breaker("payments");
/// assert!(registry.breaker("users").ptr_eq(&users)); // same breaker
///
/// payments.transition_to_forced_open();
/// let all = registry.metrics();
/// assert_eq!(all.len(), 2);
/// assert_eq!(all[0].0, "payments"); // sorted by name
/// assert_eq!(all[0].1.state, CircuitState::ForcedOpen);
/// ```
#[derive(Clone)]
pub struct CircuitBreakerRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    default_config: CircuitBreakerConfig,
    breakers: RwLock<HashMap<Arc<str>, CircuitBreaker>>,
}

impl CircuitBreakerRegistry {
    /// An empty registry whose breakers use `default_config` unless created
    /// with [`breaker_with`](Self::breaker_with).
    pub fn new(default_config: CircuitBreakerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                default_config,
                breakers: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The configuration new breakers get.
    pub fn default_config(&self) -> &CircuitBreakerConfig {
        &self.inner.default_config
    }

    /// The breaker named `name`, created with the default configuration if
    /// it does not exist yet.
    pub fn breaker(&self, name: &str) -> CircuitBreaker {
        self.breaker_with(name, || self.inner.default_config.clone())
    }

    /// The breaker named `name`, created with `config()` if it does not
    /// exist yet (an existing breaker keeps its configuration).
    pub fn breaker_with(
        &self,
        name: &str,
        config: impl FnOnce() -> CircuitBreakerConfig,
    ) -> CircuitBreaker {
        if let Some(breaker) = self.inner.breakers.read().get(name) {
            return breaker.clone();
        }
        let mut breakers = self.inner.breakers.write();
        if let Some(breaker) = breakers.get(name) {
            return breaker.clone();
        }
        let name: Arc<str> = Arc::from(name);
        let breaker = CircuitBreaker::new(Arc::clone(&name), config());
        tracing::debug!(breaker = %name, "circuit breaker created");
        breakers.insert(name, breaker.clone());
        breaker
    }

    /// The breaker named `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        self.inner.breakers.read().get(name).cloned()
    }

    /// Removes the breaker named `name` from the registry. Services already
    /// built from it keep using it; the next lookup creates a new one.
    pub fn remove(&self, name: &str) -> Option<CircuitBreaker> {
        self.inner.breakers.write().remove(name)
    }

    /// Every breaker, sorted by name.
    pub fn breakers(&self) -> Vec<CircuitBreaker> {
        let mut all: Vec<_> = self.inner.breakers.read().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Every breaker's name and metrics, sorted by name.
    pub fn metrics(&self) -> Vec<(String, CircuitBreakerMetrics)> {
        self.breakers()
            .into_iter()
            .map(|b| (b.name().to_owned(), b.metrics()))
            .collect()
    }
}

impl fmt::Debug for CircuitBreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerRegistry")
            .field("breakers", &self.inner.breakers.read().len())
            .finish_non_exhaustive()
    }
}
