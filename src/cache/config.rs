//! The validated, immutable configuration of a response cache.

use std::time::Duration;

use crate::error::ConfigError;

const COMPONENT: &str = "cache";

/// The longest an entry may be kept, `ttl` plus `max_staleness`: 100
/// years (moka refuses more than 1,000).
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A response cache's configuration, built and validated by
/// [`CacheConfig::builder`]. See the [module docs](super) for every option.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub(crate) ttl: Duration,
    pub(crate) max_entries: u64,
    pub(crate) max_staleness: Duration,
    pub(crate) stale_on_rejection: bool,
    pub(crate) event_capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_entries: 10_000,
            max_staleness: Duration::ZERO,
            stale_on_rejection: true,
            event_capacity: 256,
        }
    }
}

impl CacheConfig {
    /// Starts from the defaults.
    pub fn builder() -> CacheConfigBuilder {
        CacheConfigBuilder {
            config: Self::default(),
        }
    }

    /// How long a stored response answers requests.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most entries kept.
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// How long past its `ttl` an entry may still answer a failed call.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Whether a stale entry answers a call an inner layer rejected.
    pub fn stale_on_rejection(&self) -> bool {
        self.stale_on_rejection
    }
}

/// Builds a [`CacheConfig`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct CacheConfigBuilder {
    config: CacheConfig,
}

impl CacheConfigBuilder {
    /// How long a stored response answers requests for its key without
    /// calling the service, more than zero. Default 60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// The most entries kept, at least 1; beyond it moka evicts the entries
    /// least likely to be used again (TinyLFU). Default 10,000.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.config.max_entries = entries;
        self
    }

    /// How long past its `ttl` an entry is kept to answer a call that
    /// failed or was rejected (stale-on-error); zero turns stale answers
    /// off. `ttl + max_staleness` must be at most [`MAX_RETENTION`].
    /// Default zero.
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.config.max_staleness = staleness;
        self
    }

    /// Whether a stale entry answers a call an inner layer rejected (an
    /// open breaker, a full bulkhead, a rate limit), as well as a failed
    /// one. Default `true`.
    pub fn stale_on_rejection(mut self, serve_stale: bool) -> Self {
        self.config.stale_on_rejection = serve_stale;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        let c = &self.config;
        if c.ttl.is_zero() || c.ttl > MAX_RETENTION {
            return Err(ConfigError::new(
                COMPONENT,
                "ttl",
                format!(
                    "must be more than zero and at most {MAX_RETENTION:?}, got {:?}",
                    c.ttl
                ),
            ));
        }
        if c.max_entries == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "max_entries",
                "must be at least 1, got 0",
            ));
        }
        if c.max_staleness > MAX_RETENTION - c.ttl {
            return Err(ConfigError::new(
                COMPONENT,
                "max_staleness",
                format!(
                    "must be at most {:?} (ttl + max_staleness at most {MAX_RETENTION:?}), got {:?}",
                    MAX_RETENTION - c.ttl,
                    c.max_staleness
                ),
            ));
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}
