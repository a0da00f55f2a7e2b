//! [`CircuitBreakerRegistry`]: named breakers created on first use.

use crate::registry::NamedRegistry;

use super::config::CircuitBreakerConfig;
use super::metrics::CircuitBreakerMetrics;
use super::state::CircuitBreaker;

/// A set of named circuit breakers, one per dependency or per key (a host,
/// a tenant), created on first use from a shared default configuration:
/// palisade's generic [`NamedRegistry`] (see [`crate::registry`]).
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
pub type CircuitBreakerRegistry = NamedRegistry<CircuitBreaker>;

crate::registry::registrable!(
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerMetrics,
    "circuit_breaker"
);

impl NamedRegistry<CircuitBreaker> {
    /// The breaker named `name`, created with the default configuration if
    /// it does not exist yet ([`get_or_create`](Self::get_or_create)).
    pub fn breaker(&self, name: &str) -> CircuitBreaker {
        self.get_or_create(name)
    }

    /// The breaker named `name`, created with `config()` if it does not
    /// exist yet ([`get_or_create_with`](Self::get_or_create_with)).
    pub fn breaker_with(
        &self,
        name: &str,
        config: impl FnOnce() -> CircuitBreakerConfig,
    ) -> CircuitBreaker {
        self.get_or_create_with(name, config)
    }

    /// Every breaker, sorted by name ([`all`](Self::all)).
    pub fn breakers(&self) -> Vec<CircuitBreaker> {
        self.all()
    }
}
