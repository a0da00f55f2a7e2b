//! The validated configuration of a chaos layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{BoxError, ConfigError};

const COMPONENT: &str = "chaos";

pub(crate) type ErrorFactory = Arc<dyn Fn() -> BoxError + Send + Sync>;
pub(crate) type ResponseFactory<Res> = Arc<dyn Fn() -> Res + Send + Sync>;

/// What a [`Chaos`](super::Chaos) injects, and how often; built and checked
/// by [`ChaosConfig::builder`]. See the [module docs](super) for every
/// option. `Res` is the response type of the services it wraps (the type
/// of an injected response).
pub struct ChaosConfig<Res> {
    pub(crate) enabled: bool,
    pub(crate) seed: Option<u64>,
    pub(crate) error_rate: f64,
    pub(crate) error: Option<ErrorFactory>,
    pub(crate) response_rate: f64,
    pub(crate) response: Option<ResponseFactory<Res>>,
    pub(crate) latency_rate: f64,
    pub(crate) latency: Duration,
    pub(crate) event_capacity: usize,
}

impl<Res> Clone for ChaosConfig<Res> {
    fn clone(&self) -> Self {
        Self {
            enabled: self.enabled,
            seed: self.seed,
            error_rate: self.error_rate,
            error: self.error.clone(),
            response_rate: self.response_rate,
            response: self.response.clone(),
            latency_rate: self.latency_rate,
            latency: self.latency,
            event_capacity: self.event_capacity,
        }
    }
}

impl<Res> Default for ChaosConfig<Res> {
    /// Enabled, injecting nothing (every rate zero).
    fn default() -> Self {
        Self {
            enabled: true,
            seed: None,
            error_rate: 0.0,
            error: None,
            response_rate: 0.0,
            response: None,
            latency_rate: 0.0,
            latency: Duration::ZERO,
            event_capacity: 256,
        }
    }
}

impl<Res> ChaosConfig<Res> {
    /// Starts from the defaults: enabled, nothing injected.
    pub fn builder() -> ChaosConfigBuilder<Res> {
        ChaosConfigBuilder {
            config: Self::default(),
        }
    }

    /// Whether faults are injected at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The seed of the random draws, if one was given.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The share of calls that fail with an injected error.
    pub fn error_rate(&self) -> f64 {
        self.error_rate
    }

    /// The share of calls answered with an injected response.
    pub fn response_rate(&self) -> f64 {
        self.response_rate
    }

    /// The share of calls delayed, and by how much.
    pub fn latency(&self) -> (f64, Duration) {
        (self.latency_rate, self.latency)
    }
}

impl<Res> fmt::Debug for ChaosConfig<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosConfig")
            .field("enabled", &self.enabled)
            .field("seed", &self.seed)
            .field("error_rate", &self.error_rate)
            .field("custom_error", &self.error.is_some())
            .field("response_rate", &self.response_rate)
            .field("latency_rate", &self.latency_rate)
            .field("latency", &self.latency)
            .finish()
    }
}

/// Builds a [`ChaosConfig`]; every setter is checked in [`build`](Self::build).
#[must_use = "call .build() to get a configuration"]
pub struct ChaosConfigBuilder<Res> {
    config: ChaosConfig<Res>,
}

impl<Res> fmt::Debug for ChaosConfigBuilder<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosConfigBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl<Res> ChaosConfigBuilder<Res> {
    /// Whether faults are injected at all; switch it later with
    /// [`Chaos::enable`](super::Chaos::enable) and
    /// [`Chaos::disable`](super::Chaos::disable). Default `true`.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// Seeds the random draws, so a run injects the same faults into the
    /// same calls (counted in the order they reach the layer). Default: a
    /// random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Fails this share of calls (0 to 1) with [`ChaosFault`](super::ChaosFault)
    /// (or the error of [`error_with`](Self::error_with)) without calling
    /// the service. Default 0.
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.config.error_rate = rate;
        self
    }

    /// The error an injected fault fails with, made afresh for each call.
    /// Default: [`ChaosFault`](super::ChaosFault).
    pub fn error_with<F>(mut self, make_error: F) -> Self
    where
        F: Fn() -> BoxError + Send + Sync + 'static,
    {
        self.config.error = Some(Arc::new(make_error));
        self
    }

    /// Answers this share of calls (0 to 1) with `make_response()` without
    /// calling the service. `error_rate + rate` must be at most 1: one draw
    /// picks an error, a response or the service. Default 0.
    pub fn response<F>(mut self, rate: f64, make_response: F) -> Self
    where
        F: Fn() -> Res + Send + Sync + 'static,
    {
        self.config.response_rate = rate;
        self.config.response = Some(Arc::new(make_response));
        self
    }

    /// Delays this share of calls (0 to 1) by `delay` before their outcome
    /// (the service's, or an injected one), drawn apart from the outcome.
    /// Default: none.
    pub fn latency(mut self, rate: f64, delay: Duration) -> Self {
        self.config.latency_rate = rate;
        self.config.latency = delay;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256. Read
    /// when the [`Chaos`](super::Chaos) is created, not on
    /// [`reconfigure`](super::Chaos::reconfigure).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<ChaosConfig<Res>, ConfigError> {
        let c = &self.config;
        check_rate("error_rate", c.error_rate)?;
        check_rate("response_rate", c.response_rate)?;
        check_rate("latency_rate", c.latency_rate)?;
        if c.error_rate + c.response_rate > 1.0 {
            return Err(ConfigError::new(
                COMPONENT,
                "response_rate",
                format!(
                    "plus error_rate must be at most 1, got {} + {}",
                    c.response_rate, c.error_rate
                ),
            ));
        }
        crate::events::check_event_capacity(COMPONENT, c.event_capacity)?;
        Ok(self.config)
    }
}

fn check_rate(field: &'static str, rate: f64) -> Result<(), ConfigError> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be 0 to 1, got {rate}"),
        ))
    }
}
