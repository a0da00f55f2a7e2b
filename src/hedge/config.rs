//! The validated, immutable configuration of a hedging layer.

use std::time::Duration;

use crate::error::ConfigError;
use crate::retry::RetryBudget;

const COMPONENT: &str = "hedge";

/// The most extra attempts a call may make.
pub const MAX_HEDGED_ATTEMPTS: u32 = 10;

/// When a hedged attempt starts if no acceptable answer came yet.
#[derive(Debug, Clone, PartialEq)]
pub enum HedgeDelay {
    /// After this long (Polly's `Delay`); zero starts every attempt at once.
    Fixed(Duration),
    /// After the `percentile` (more than 0, at most 1) of the latencies
    /// measured over the previous `window` (as tower's `hedge` does), once
    /// that window holds at least `min_samples` calls; before that, only a
    /// failure starts a hedged attempt.
    LatencyPercentile {
        /// The share of calls expected to answer before a hedge starts,
        /// e.g. 0.95.
        percentile: f64,
        /// Calls a window needs before its percentile is used (at least 1).
        min_samples: u64,
        /// How long latencies are collected before they replace the
        /// previous window's (1 ms to 1 hour).
        window: Duration,
    },
}

impl HedgeDelay {
    /// The `percentile` of the last 10 s of latencies, once 20 calls made
    /// it up.
    pub fn percentile(percentile: f64) -> Self {
        HedgeDelay::LatencyPercentile {
            percentile,
            min_samples: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// A hedging layer's configuration, built and validated by
/// [`HedgeConfig::builder`]. See the [module docs](super) for every option.
#[derive(Debug, Clone)]
pub struct HedgeConfig {
    pub(crate) max_hedged_attempts: u32,
    pub(crate) delay: HedgeDelay,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) event_capacity: usize,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            max_hedged_attempts: 1,
            delay: HedgeDelay::Fixed(Duration::from_secs(2)),
            budget: Some(RetryBudget::default()),
            event_capacity: 256,
        }
    }
}

impl HedgeConfig {
    /// Starts from the defaults.
    pub fn builder() -> HedgeConfigBuilder {
        HedgeConfigBuilder {
            config: Self::default(),
        }
    }

    /// Extra attempts a call may make.
    pub fn max_hedged_attempts(&self) -> u32 {
        self.max_hedged_attempts
    }

    /// When hedged attempts start.
    pub fn delay(&self) -> &HedgeDelay {
        &self.delay
    }

    /// The budget hedged attempts draw from, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }
}

/// Builds a [`HedgeConfig`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct HedgeConfigBuilder {
    config: HedgeConfig,
}

impl HedgeConfigBuilder {
    /// Extra attempts a call may make, 1 to [`MAX_HEDGED_ATTEMPTS`].
    /// Default 1 (Polly's).
    pub fn max_hedged_attempts(mut self, attempts: u32) -> Self {
        self.config.max_hedged_attempts = attempts;
        self
    }

    /// When a hedged attempt starts. Default [`HedgeDelay::Fixed`] 2 s
    /// (Polly's).
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.config.delay = delay;
        self
    }

    /// The budget every hedged attempt must draw from; every call deposits
    /// into it. Default: a [`RetryBudget::default`] of its own.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Hedges without a budget: every call may make all its attempts.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<HedgeConfig, ConfigError> {
        let c = &self.config;
        if !(1..=MAX_HEDGED_ATTEMPTS).contains(&c.max_hedged_attempts) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_hedged_attempts",
                format!(
                    "must be 1 to {MAX_HEDGED_ATTEMPTS}, got {}",
                    c.max_hedged_attempts
                ),
            ));
        }
        if let HedgeDelay::LatencyPercentile {
            percentile,
            min_samples,
            window,
        } = c.delay
        {
            if !(percentile > 0.0 && percentile <= 1.0) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "delay",
                    format!("percentile must be more than 0 and at most 1, got {percentile}"),
                ));
            }
            if min_samples < 1 {
                return Err(ConfigError::new(
                    COMPONENT,
                    "delay",
                    "min_samples must be at least 1, got 0",
                ));
            }
            if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&window) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "delay",
                    format!("window must be 1 ms to 1 hour, got {window:?}"),
                ));
            }
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}
