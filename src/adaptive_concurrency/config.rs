//! The validated, immutable configuration of an adaptive concurrency limit.

use std::time::Duration;

use crate::error::ConfigError;

use super::algorithm::LimitAlgorithm;

const COMPONENT: &str = "adaptive concurrency";

/// The largest `max_limit`.
pub const MAX_LIMIT: usize = 1 << 28;

/// An adaptive concurrency limit's configuration, built and validated by
/// [`AdaptiveConcurrencyConfig::builder`]. See the [module docs](super) for
/// every option.
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrencyConfig {
    pub(crate) algorithm: LimitAlgorithm,
    pub(crate) initial_limit: usize,
    pub(crate) min_limit: usize,
    pub(crate) max_limit: usize,
    pub(crate) smoothing: f64,
    pub(crate) window_samples: u32,
    pub(crate) event_capacity: usize,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        Self {
            algorithm: LimitAlgorithm::default(),
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            smoothing: 1.0,
            window_samples: 10,
            event_capacity: 256,
        }
    }
}

impl AdaptiveConcurrencyConfig {
    /// Starts from the defaults.
    pub fn builder() -> AdaptiveConcurrencyConfigBuilder {
        AdaptiveConcurrencyConfigBuilder {
            config: Self::default(),
        }
    }

    /// The algorithm that adapts the limit.
    pub fn algorithm(&self) -> &LimitAlgorithm {
        &self.algorithm
    }

    /// The limit before any sample.
    pub fn initial_limit(&self) -> usize {
        self.initial_limit
    }

    /// The lowest the limit goes.
    pub fn min_limit(&self) -> usize {
        self.min_limit
    }

    /// The highest the limit goes.
    pub fn max_limit(&self) -> usize {
        self.max_limit
    }

    /// The share of each computed change the limit takes.
    pub fn smoothing(&self) -> f64 {
        self.smoothing
    }

    /// Samples per update of the limit.
    pub fn window_samples(&self) -> u32 {
        self.window_samples
    }
}

/// Builds an [`AdaptiveConcurrencyConfig`]; every setter is checked in
/// [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct AdaptiveConcurrencyConfigBuilder {
    config: AdaptiveConcurrencyConfig,
}

impl AdaptiveConcurrencyConfigBuilder {
    /// How the limit adapts: [`Vegas`](super::Vegas) (the default) or
    /// [`Aimd`](super::Aimd).
    pub fn algorithm(mut self, algorithm: impl Into<LimitAlgorithm>) -> Self {
        self.config.algorithm = algorithm.into();
        self
    }

    /// The limit before any sample, `min_limit` to `max_limit`. Default 20.
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.config.initial_limit = limit;
        self
    }

    /// The lowest the limit goes, at least 1. Default 1.
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.config.min_limit = limit;
        self
    }

    /// The highest the limit goes, `min_limit` to [`MAX_LIMIT`]. Default 1000.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.config.max_limit = limit;
        self
    }

    /// The share (more than 0, at most 1) of each change the algorithm
    /// computes that the limit takes: 1 follows the algorithm, 0.2 moves a
    /// fifth of the way per sample. Default 1.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.config.smoothing = smoothing;
        self
    }

    /// Samples the algorithm takes together, 1 to 10,000: the limit moves
    /// once per window, on the average latency, the most calls in flight
    /// and whether any failed, of calls that started after its last move.
    /// Default 10.
    pub fn window_samples(mut self, samples: u32) -> Self {
        self.config.window_samples = samples;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<AdaptiveConcurrencyConfig, ConfigError> {
        let c = &self.config;
        if c.min_limit < 1 {
            return Err(error(
                "min_limit",
                format!("must be at least 1, got {}", c.min_limit),
            ));
        }
        if !(c.min_limit..=MAX_LIMIT).contains(&c.max_limit) {
            return Err(error(
                "max_limit",
                format!(
                    "must be min_limit ({}) to {MAX_LIMIT}, got {}",
                    c.min_limit, c.max_limit
                ),
            ));
        }
        if !(c.min_limit..=c.max_limit).contains(&c.initial_limit) {
            return Err(error(
                "initial_limit",
                format!(
                    "must be min_limit ({}) to max_limit ({}), got {}",
                    c.min_limit, c.max_limit, c.initial_limit
                ),
            ));
        }
        if !(c.smoothing > 0.0 && c.smoothing <= 1.0) {
            return Err(error(
                "smoothing",
                format!("must be more than 0 and at most 1, got {}", c.smoothing),
            ));
        }
        if !(1..=10_000).contains(&c.window_samples) {
            return Err(error(
                "window_samples",
                format!("must be 1 to 10000, got {}", c.window_samples),
            ));
        }
        match &c.algorithm {
            LimitAlgorithm::Aimd(aimd) => {
                if aimd.latency_threshold == Duration::ZERO {
                    return Err(error(
                        "algorithm",
                        "AIMD's latency_threshold must be more than zero",
                    ));
                }
                if !(aimd.backoff_ratio >= 0.5 && aimd.backoff_ratio < 1.0) {
                    return Err(error(
                        "algorithm",
                        format!(
                            "AIMD's backoff_ratio must be 0.5 or more and less than 1, got {}",
                            aimd.backoff_ratio
                        ),
                    ));
                }
            }
            LimitAlgorithm::Vegas(vegas) => {
                if !(vegas.alpha > 0.0 && vegas.alpha < vegas.beta && vegas.beta.is_finite()) {
                    return Err(error(
                        "algorithm",
                        format!(
                            "Vegas needs 0 < alpha < beta (finite), got alpha {} and beta {}",
                            vegas.alpha, vegas.beta
                        ),
                    ));
                }
                if vegas.probe_multiplier < 1 {
                    return Err(error(
                        "algorithm",
                        "Vegas's probe_multiplier must be at least 1, got 0",
                    ));
                }
            }
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}

fn error(field: &'static str, problem: impl Into<std::borrow::Cow<'static, str>>) -> ConfigError {
    ConfigError::new(COMPONENT, field, problem)
}
