//! [`RetryRegistry`]: named retries created on first use.

use std::sync::Arc;

use crate::registry::{NamedRegistry, Registrable};

use super::config::RetryConfig;
use super::metrics::RetryMetrics;
use super::state::Retry;

/// Named retries created on first use from a default configuration:
/// palisade's generic [`NamedRegistry`] (see [`crate::registry`]).
pub type RetryRegistry = NamedRegistry<Retry>;

impl Registrable for Retry {
    type Config = RetryConfig;
    type Metrics = RetryMetrics;
    const KIND: &'static str = "retry";

    fn create(name: Arc<str>, config: RetryConfig) -> Self {
        Retry::new(name, config)
    }

    fn name(&self) -> &str {
        Retry::name(self)
    }

    fn metrics(&self) -> RetryMetrics {
        Retry::metrics(self)
    }
}
