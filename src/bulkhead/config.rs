//! The validated, immutable configuration of a bulkhead.

use std::time::Duration;

use crate::error::ConfigError;

const COMPONENT: &str = "bulkhead";

/// The largest `max_concurrent_calls` (tokio's semaphore limit, rounded down).
pub const MAX_CONCURRENT_CALLS: usize = 1 << 28;

/// A bulkhead's configuration, built and validated by
/// [`BulkheadConfig::builder`]. See the [module docs](super) for every option.
#[derive(Debug, Clone)]
pub struct BulkheadConfig {
    pub(crate) max_concurrent_calls: usize,
    pub(crate) max_wait_duration: Duration,
    pub(crate) max_waiting: usize,
    pub(crate) event_capacity: usize,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 25,
            max_wait_duration: Duration::ZERO,
            max_waiting: 100,
            event_capacity: 256,
        }
    }
}

impl BulkheadConfig {
    /// Starts from the defaults.
    pub fn builder() -> BulkheadConfigBuilder {
        BulkheadConfigBuilder {
            config: Self::default(),
        }
    }

    /// Calls allowed to run at once (at creation; see [`Bulkhead::resize`](super::Bulkhead::resize)).
    pub fn max_concurrent_calls(&self) -> usize {
        self.max_concurrent_calls
    }

    /// Longest a caller waits for a permit; zero fails fast.
    pub fn max_wait_duration(&self) -> Duration {
        self.max_wait_duration
    }

    /// Callers that may wait at once; more are rejected at once.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }
}

/// Builds a [`BulkheadConfig`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct BulkheadConfigBuilder {
    config: BulkheadConfig,
}

impl BulkheadConfigBuilder {
    /// Calls allowed to run at once, 1 to [`MAX_CONCURRENT_CALLS`]. Default 25.
    pub fn max_concurrent_calls(mut self, calls: usize) -> Self {
        self.config.max_concurrent_calls = calls;
        self
    }

    /// Longest a caller waits for a permit, in FIFO order; zero fails fast
    /// when none is free. Any duration is accepted: one too long for the
    /// clock to represent its end (`Duration::MAX`) waits without limit.
    /// Default zero.
    pub fn max_wait_duration(mut self, wait: Duration) -> Self {
        self.config.max_wait_duration = wait;
        self
    }

    /// Callers that may wait for a permit at once; beyond it callers are
    /// rejected at once. Default 100. Ignored when `max_wait_duration` is zero.
    pub fn max_waiting(mut self, waiting: usize) -> Self {
        self.config.max_waiting = waiting;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<BulkheadConfig, ConfigError> {
        let c = &self.config;
        if !(1..=MAX_CONCURRENT_CALLS).contains(&c.max_concurrent_calls) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_concurrent_calls",
                format!(
                    "must be 1 to {MAX_CONCURRENT_CALLS}, got {}",
                    c.max_concurrent_calls
                ),
            ));
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}
