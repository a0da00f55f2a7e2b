//! The validated, immutable configuration of a rate limiter.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::ConfigError;

const COMPONENT: &str = "rate_limiter";

/// The longest `limit_refresh_period`: 100 years (of 365 days).
///
/// governor counts time in `u64` nanoseconds (about 584 years) and adds a
/// period to the limiter's age, so a longer period would overflow it; 100
/// years leaves centuries of headroom and is far beyond any useful period.
pub const MAX_LIMIT_REFRESH_PERIOD: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A rate limiter's configuration, built and validated by
/// [`RateLimiterConfig::builder`]. See the [module docs](super) for every option.
#[derive(Debug, Clone)]
pub struct RateLimiterConfig {
    pub(crate) limit_for_period: NonZeroU32,
    pub(crate) limit_refresh_period: Duration,
    pub(crate) max_wait_duration: Duration,
    pub(crate) event_capacity: usize,
}

impl Default for RateLimiterConfig {
    fn default() -> Self {
        Self {
            limit_for_period: NonZeroU32::new(50).expect("50 is not zero"),
            limit_refresh_period: Duration::from_secs(1),
            max_wait_duration: Duration::ZERO,
            event_capacity: 256,
        }
    }
}

impl RateLimiterConfig {
    /// Starts from the defaults.
    pub fn builder() -> RateLimiterConfigBuilder {
        RateLimiterConfigBuilder {
            config: Self::default(),
            limit_for_period: 50,
        }
    }

    /// Calls permitted per refresh period (also the largest burst).
    pub fn limit_for_period(&self) -> u32 {
        self.limit_for_period.get()
    }

    /// The period over which `limit_for_period` calls are permitted.
    pub fn limit_refresh_period(&self) -> Duration {
        self.limit_refresh_period
    }

    /// Longest a caller waits for a permit; zero fails fast.
    pub fn max_wait_duration(&self) -> Duration {
        self.max_wait_duration
    }

    /// The interval at which one permit is replenished.
    pub fn replenish_interval(&self) -> Duration {
        self.limit_refresh_period / self.limit_for_period.get()
    }
}

/// Builds a [`RateLimiterConfig`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct RateLimiterConfigBuilder {
    config: RateLimiterConfig,
    limit_for_period: u32,
}

impl RateLimiterConfigBuilder {
    /// Calls permitted per `limit_refresh_period`, at least 1. Default 50.
    /// This is also the largest burst: an idle limiter lets this many calls
    /// through at once.
    pub fn limit_for_period(mut self, limit: u32) -> Self {
        self.limit_for_period = limit;
        self
    }

    /// The period over which `limit_for_period` calls are permitted; more
    /// than zero, at least one nanosecond per permit, and at most
    /// [`MAX_LIMIT_REFRESH_PERIOD`] (100 years). Default 1 s.
    pub fn limit_refresh_period(mut self, period: Duration) -> Self {
        self.config.limit_refresh_period = period;
        self
    }

    /// Longest a caller waits for a permit; zero fails fast when none is
    /// available. A caller whose permit would come later than this is
    /// rejected at once rather than after waiting. Any duration is
    /// accepted: a wait whose end the clock cannot represent (say
    /// `Duration::MAX`) has no end, and the caller waits as long as its
    /// permit takes. Default zero.
    pub fn max_wait_duration(mut self, wait: Duration) -> Self {
        self.config.max_wait_duration = wait;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(mut self) -> Result<RateLimiterConfig, ConfigError> {
        let Some(limit) = NonZeroU32::new(self.limit_for_period) else {
            return Err(ConfigError::new(
                COMPONENT,
                "limit_for_period",
                "must be at least 1, got 0",
            ));
        };
        self.config.limit_for_period = limit;
        let c = &self.config;
        if c.limit_refresh_period.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "limit_refresh_period",
                "must be more than zero",
            ));
        }
        if c.limit_refresh_period > MAX_LIMIT_REFRESH_PERIOD {
            return Err(ConfigError::new(
                COMPONENT,
                "limit_refresh_period",
                format!(
                    "must be at most {MAX_LIMIT_REFRESH_PERIOD:?} (100 years), got {:?}",
                    c.limit_refresh_period
                ),
            ));
        }
        if c.replenish_interval().is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "limit_refresh_period",
                format!(
                    "must be at least one nanosecond per permit: {:?} is too short for {} permits",
                    c.limit_refresh_period, limit
                ),
            ));
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}
