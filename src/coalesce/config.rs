//! The validated, immutable configuration of a coalescing layer.

use crate::error::ConfigError;

const COMPONENT: &str = "coalesce";

/// The largest `max_in_flight_keys`.
pub const MAX_IN_FLIGHT_KEYS: usize = 1 << 24;

/// A coalescing layer's configuration, built and validated by
/// [`CoalesceConfig::builder`]. See the [module docs](super) for every option.
#[derive(Debug, Clone)]
pub struct CoalesceConfig {
    pub(crate) max_in_flight_keys: usize,
    pub(crate) event_capacity: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self {
            max_in_flight_keys: 10_000,
            event_capacity: 256,
        }
    }
}

impl CoalesceConfig {
    /// Starts from the defaults.
    pub fn builder() -> CoalesceConfigBuilder {
        CoalesceConfigBuilder {
            config: Self::default(),
        }
    }

    /// Keys that may have a shared call in flight at once; a request for
    /// another key beyond it runs on its own, uncoalesced.
    pub fn max_in_flight_keys(&self) -> usize {
        self.max_in_flight_keys
    }
}

/// Builds a [`CoalesceConfig`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct CoalesceConfigBuilder {
    config: CoalesceConfig,
}

impl CoalesceConfigBuilder {
    /// Keys that may have a shared call in flight at once, 1 to
    /// [`MAX_IN_FLIGHT_KEYS`]. A request for a new key beyond it is not
    /// rejected: it runs its own call, uncoalesced. Default 10,000.
    pub fn max_in_flight_keys(mut self, keys: usize) -> Self {
        self.config.max_in_flight_keys = keys;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<CoalesceConfig, ConfigError> {
        let c = &self.config;
        if !(1..=MAX_IN_FLIGHT_KEYS).contains(&c.max_in_flight_keys) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_in_flight_keys",
                format!(
                    "must be 1 to {MAX_IN_FLIGHT_KEYS}, got {}",
                    c.max_in_flight_keys
                ),
            ));
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}
