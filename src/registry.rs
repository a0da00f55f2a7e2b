//! Named instances of a resilience component, created on first use.
//!
//! Give each dependency (or each host, each tenant) its own breaker, its
//! own bulkhead: a [`NamedRegistry`] keeps one instance per name, creates
//! it from a default configuration the first time the name is asked for,
//! and lists every instance's metrics for a status page.
//!
//! One registry type serves every component that implements
//! [`Registrable`]; each module names its own:
//!
//! | alias | component |
//! |---|---|
//! | [`CircuitBreakerRegistry`](crate::circuit_breaker::CircuitBreakerRegistry) | [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker) |
//! | [`BulkheadRegistry`](crate::bulkhead::BulkheadRegistry) | [`Bulkhead`](crate::bulkhead::Bulkhead) |
//! | [`RateLimiterRegistry`](crate::rate_limit::RateLimiterRegistry) | [`RateLimiter`](crate::rate_limit::RateLimiter) |
//! | [`RetryRegistry`](crate::retry::RetryRegistry) | [`Retry`](crate::retry::Retry) |
//!
//! ```
//! use palisade::bulkhead::{BulkheadConfig, BulkheadRegistry};
//!
//! let registry = BulkheadRegistry::new(BulkheadConfig::default());
//! let users = registry.get_or_create("users");
//! let payments = registry.get_or_create_with("payments", || {
//!     BulkheadConfig::builder().max_concurrent_calls(5).build().unwrap()
//! });
//! assert!(registry.get_or_create("users").ptr_eq(&users), "one bulkhead per name");
//! assert_eq!(registry.names(), ["payments", "users"]);
//! assert_eq!(registry.metrics()[0].1.max_concurrent_calls, 5);
//!
//! let removed = registry.remove("payments").expect("it was there");
//! assert!(removed.ptr_eq(&payments));
//! assert!(registry.get("payments").is_none());
//! ```
//!
//! It is called `NamedRegistry`, not `Registry`, because
//! [`discovery::Registry`](crate::discovery::Registry) is something else: a
//! *service* registry, where instances of remote services are found.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

/// A component a [`NamedRegistry`] can hold: cheap to clone (clones share
/// one instance), built from a name and a configuration.
pub trait Registrable: Clone {
    /// The configuration it is built from.
    type Config: Clone;
    /// The snapshot [`metrics`](Self::metrics) returns.
    type Metrics;

    /// What it is, for traces: e.g. `"circuit_breaker"`.
    const KIND: &'static str;

    /// A new instance named `name`.
    fn create(name: Arc<str>, config: Self::Config) -> Self;

    /// Its name.
    fn name(&self) -> &str;

    /// A snapshot of its metrics.
    fn metrics(&self) -> Self::Metrics;
}

/// Implements [`Registrable`] for a palisade component from its inherent
/// `new(name, config)`, `name()` and `metrics()`.
macro_rules! registrable {
    ($component:ty, $config:ty, $metrics:ty, $kind:literal) => {
        impl $crate::registry::Registrable for $component {
            type Config = $config;
            type Metrics = $metrics;
            const KIND: &'static str = $kind;

            fn create(name: std::sync::Arc<str>, config: $config) -> Self {
                <$component>::new(name, config)
            }

            fn name(&self) -> &str {
                <$component>::name(self)
            }

            fn metrics(&self) -> $metrics {
                <$component>::metrics(self)
            }
        }
    };
}
pub(crate) use registrable;

/// A set of named `T`s, created on first use from a shared default
/// configuration; see the [module docs](self).
///
/// Clones share the set. A lookup takes a read lock: keep the returned `T`
/// (or a layer built from it) rather than looking it up per call when the
/// name is fixed. Removing a name does not stop the services already built
/// from its instance; the next lookup creates a new one.
pub struct NamedRegistry<T: Registrable> {
    inner: Arc<Inner<T>>,
}

struct Inner<T: Registrable> {
    default_config: T::Config,
    entries: RwLock<HashMap<Arc<str>, T>>,
}

impl<T: Registrable> NamedRegistry<T> {
    /// An empty registry whose instances use `default_config` unless created
    /// with [`get_or_create_with`](Self::get_or_create_with).
    pub fn new(default_config: T::Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                default_config,
                entries: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The configuration new instances get.
    pub fn default_config(&self) -> &T::Config {
        &self.inner.default_config
    }

    /// The instance named `name`, created with the default configuration if
    /// it does not exist yet.
    pub fn get_or_create(&self, name: &str) -> T {
        self.get_or_create_with(name, || self.inner.default_config.clone())
    }

    /// The instance named `name`, created with `config()` if it does not
    /// exist yet (an existing one keeps its configuration).
    pub fn get_or_create_with(&self, name: &str, config: impl FnOnce() -> T::Config) -> T {
        if let Some(found) = self.inner.entries.read().get(name) {
            return found.clone();
        }
        let mut entries = self.inner.entries.write();
        if let Some(found) = entries.get(name) {
            return found.clone();
        }
        let name: Arc<str> = Arc::from(name);
        let created = T::create(Arc::clone(&name), config());
        tracing::debug!(kind = T::KIND, name = %name, "created a registry entry");
        entries.insert(name, created.clone());
        created
    }

    /// The instance named `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<T> {
        self.inner.entries.read().get(name).cloned()
    }

    /// Removes the instance named `name` and returns it. Services already
    /// built from it keep using it; the next lookup creates a new one.
    pub fn remove(&self, name: &str) -> Option<T> {
        self.inner.entries.write().remove(name)
    }

    /// Every instance's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .entries
            .read()
            .keys()
            .map(|name| name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Every instance, sorted by name.
    pub fn all(&self) -> Vec<T> {
        let mut all: Vec<T> = self.inner.entries.read().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Every instance's name and metrics, sorted by name.
    pub fn metrics(&self) -> Vec<(String, T::Metrics)> {
        self.all()
            .into_iter()
            .map(|entry| (entry.name().to_owned(), entry.metrics()))
            .collect()
    }

    /// How many instances the registry holds.
    pub fn len(&self) -> usize {
        self.inner.entries.read().len()
    }

    /// Whether the registry holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Registrable> Clone for NamedRegistry<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Registrable> fmt::Debug for NamedRegistry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedRegistry")
            .field("kind", &T::KIND)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug)]
    struct Counter {
        name: Arc<str>,
        start: u32,
    }

    impl Registrable for Counter {
        type Config = u32;
        type Metrics = u32;
        const KIND: &'static str = "counter";

        fn create(name: Arc<str>, start: u32) -> Self {
            Self { name, start }
        }

        fn name(&self) -> &str {
            &self.name
        }

        fn metrics(&self) -> u32 {
            self.start
        }
    }

    #[test]
    fn an_existing_entry_keeps_its_configuration() {
        let registry = NamedRegistry::<Counter>::new(1);
        assert_eq!(registry.get_or_create_with("a", || 7).start, 7);
        assert_eq!(registry.get_or_create("a").start, 7);
        assert_eq!(registry.get_or_create("b").start, 1);
        assert_eq!(
            registry.metrics(),
            [("a".to_owned(), 7), ("b".to_owned(), 1)]
        );
    }

    #[test]
    fn remove_forgets_the_entry_and_the_next_lookup_creates_a_new_one() {
        let registry = NamedRegistry::<Counter>::new(1);
        registry.get_or_create_with("a", || 7);
        let removed = registry.remove("a").expect("present");
        assert_eq!(removed.start, 7);
        assert!(registry.get("a").is_none());
        assert!(registry.is_empty());
        assert!(
            registry.remove("a").is_none(),
            "removing twice finds nothing"
        );
        assert_eq!(registry.get_or_create("a").start, 1, "created anew");
        assert_eq!(registry.names(), ["a"]);
    }
}
