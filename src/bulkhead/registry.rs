//! [`BulkheadRegistry`]: named bulkheads, one per dependency.

use crate::registry::NamedRegistry;

use super::config::BulkheadConfig;
use super::metrics::BulkheadMetrics;
use super::state::Bulkhead;

/// Named bulkheads created on first use from a default configuration, so
/// each dependency gets its own pool: palisade's generic
/// [`NamedRegistry`] (see [`crate::registry`]).
///
/// ```
/// use palisade::bulkhead::{BulkheadConfig, BulkheadRegistry};
///
/// let registry = BulkheadRegistry::new(BulkheadConfig::default());
/// let users = registry.bulkhead_with("users", || BulkheadConfig::builder().max_concurrent_calls(10).build().unwrap());
/// let payments = registry.bulkhead_with("payments", || BulkheadConfig::builder().max_concurrent_calls(5).build().unwrap());
/// assert_eq!(registry.metrics()[0].1.max_concurrent_calls, 5); // sorted by name
/// assert!(registry.bulkhead("users").ptr_eq(&users));
/// assert!(registry.remove("payments").is_some_and(|removed| removed.ptr_eq(&payments)));
/// ```
pub type BulkheadRegistry = NamedRegistry<Bulkhead>;

crate::registry::registrable!(Bulkhead, BulkheadConfig, BulkheadMetrics, "bulkhead");

impl NamedRegistry<Bulkhead> {
    /// The bulkhead named `name`, created with the default configuration if
    /// it does not exist yet ([`get_or_create`](Self::get_or_create)).
    pub fn bulkhead(&self, name: &str) -> Bulkhead {
        self.get_or_create(name)
    }

    /// The bulkhead named `name`, created with `config()` if it does not
    /// exist yet ([`get_or_create_with`](Self::get_or_create_with)).
    pub fn bulkhead_with(&self, name: &str, config: impl FnOnce() -> BulkheadConfig) -> Bulkhead {
        self.get_or_create_with(name, config)
    }
}
