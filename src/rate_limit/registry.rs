//! [`RateLimiterRegistry`]: named rate limiters created on first use.

use crate::registry::NamedRegistry;

use super::config::RateLimiterConfig;
use super::metrics::RateLimiterMetrics;
use super::state::RateLimiter;

/// Named rate limiters created on first use from a default configuration:
/// palisade's generic [`NamedRegistry`] (see [`crate::registry`]).
pub type RateLimiterRegistry = NamedRegistry<RateLimiter>;

crate::registry::registrable!(
    RateLimiter,
    RateLimiterConfig,
    RateLimiterMetrics,
    "rate_limiter"
);
