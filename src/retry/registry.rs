//! [`RetryRegistry`]: named retries created on first use.

use crate::registry::NamedRegistry;

use super::config::RetryConfig;
use super::metrics::RetryMetrics;
use super::state::Retry;

/// Named retries created on first use from a default configuration:
/// palisade's generic [`NamedRegistry`] (see [`crate::registry`]).
pub type RetryRegistry = NamedRegistry<Retry>;

crate::registry::registrable!(Retry, RetryConfig, RetryMetrics, "retry");
