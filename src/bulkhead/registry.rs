//! [`BulkheadRegistry`]: named bulkheads, one per dependency.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

use super::config::BulkheadConfig;
use super::state::{Bulkhead, BulkheadMetrics};

/// Named bulkheads created on first use from a default configuration, so
/// each dependency gets its own pool (the seed's 10 for users, 5 for
/// payments).
///
/// ```
/// use palisade::bulkhead::{BulkheadConfig, BulkheadRegistry};
///
/// let registry = BulkheadRegistry::new(BulkheadConfig::default());
/// let users = registry.bulkhead_with("users", || BulkheadConfig::builder().max_concurrent_calls(10).build().unwrap());
/// let payments = registry.bulkhead_with("payments", || BulkheadConfig::builder().max_concurrent_calls(5).build().unwrap());
/// assert_eq!(registry.metrics()[0].1.max_concurrent_calls, 5); // sorted by name
/// assert!(registry.bulkhead("users").ptr_eq(&users));
/// # drop(payments);
/// ```
#[derive(Clone)]
pub struct BulkheadRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    default_config: BulkheadConfig,
    bulkheads: RwLock<HashMap<Arc<str>, Bulkhead>>,
}

impl BulkheadRegistry {
    /// An empty registry whose bulkheads use `default_config` unless created
    /// with [`bulkhead_with`](Self::bulkhead_with).
    pub fn new(default_config: BulkheadConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                default_config,
                bulkheads: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The bulkhead named `name`, created with the default configuration if
    /// it does not exist yet.
    pub fn bulkhead(&self, name: &str) -> Bulkhead {
        self.bulkhead_with(name, || self.inner.default_config.clone())
    }

    /// The bulkhead named `name`, created with `config()` if it does not
    /// exist yet (an existing one keeps its configuration).
    pub fn bulkhead_with(&self, name: &str, config: impl FnOnce() -> BulkheadConfig) -> Bulkhead {
        if let Some(bulkhead) = self.inner.bulkheads.read().get(name) {
            return bulkhead.clone();
        }
        let mut bulkheads = self.inner.bulkheads.write();
        if let Some(bulkhead) = bulkheads.get(name) {
            return bulkhead.clone();
        }
        let name: Arc<str> = Arc::from(name);
        let bulkhead = Bulkhead::new(Arc::clone(&name), config());
        bulkheads.insert(name, bulkhead.clone());
        bulkhead
    }

    /// The bulkhead named `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Bulkhead> {
        self.inner.bulkheads.read().get(name).cloned()
    }

    /// Every bulkhead's name and metrics, sorted by name.
    pub fn metrics(&self) -> Vec<(String, BulkheadMetrics)> {
        let mut all: Vec<_> = self
            .inner
            .bulkheads
            .read()
            .iter()
            .map(|(name, b)| (name.to_string(), b.metrics()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl fmt::Debug for BulkheadRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadRegistry")
            .field("bulkheads", &self.inner.bulkheads.read().len())
            .finish_non_exhaustive()
    }
}
