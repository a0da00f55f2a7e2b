//! [`RateLimiterRegistry`]: named rate limiters created on first use.

use std::sync::Arc;

use crate::registry::{NamedRegistry, Registrable};

use super::config::RateLimiterConfig;
use super::metrics::RateLimiterMetrics;
use super::state::RateLimiter;

/// Named rate limiters created on first use from a default configuration:
/// palisade's generic [`NamedRegistry`] (see [`crate::registry`]).
pub type RateLimiterRegistry = NamedRegistry<RateLimiter>;

impl Registrable for RateLimiter {
    type Config = RateLimiterConfig;
    type Metrics = RateLimiterMetrics;
    const KIND: &'static str = "rate_limiter";

    fn create(name: Arc<str>, config: RateLimiterConfig) -> Self {
        RateLimiter::new(name, config)
    }

    fn name(&self) -> &str {
        RateLimiter::name(self)
    }

    fn metrics(&self) -> RateLimiterMetrics {
        RateLimiter::metrics(self)
    }
}
