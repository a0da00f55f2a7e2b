//! The validated, immutable configuration of a fallback.

use std::fmt;
use std::sync::Arc;

use crate::error::{BoxError, ConfigError};

const COMPONENT: &str = "fallback";

/// The largest `last_good_capacity`.
pub const MAX_LAST_GOOD_CAPACITY: usize = 1 << 24;

/// A function that answers a failed call: it gets the inner service's
/// response (when the classifier failed an `Ok`) or its error.
pub type FallbackFn<Res> = Arc<dyn Fn(Result<&Res, &BoxError>) -> Res + Send + Sync>;

/// What a fallback answers with.
pub(crate) enum Strategy<Res> {
    Value(Res),
    Function(FallbackFn<Res>),
    LastGood,
}

impl<Res> Strategy<Res> {
    fn name(&self) -> &'static str {
        match self {
            Strategy::Value(_) => "value",
            Strategy::Function(_) => "from_failure",
            Strategy::LastGood => "last_good",
        }
    }
}

/// A fallback's configuration, built and validated by
/// [`FallbackConfig::builder`]. See the [module docs](super) for every option.
pub struct FallbackConfig<Res> {
    pub(crate) strategy: Strategy<Res>,
    pub(crate) on_rejection: bool,
    pub(crate) last_good_capacity: usize,
    pub(crate) event_capacity: usize,
}

impl<Res> FallbackConfig<Res> {
    /// Starts with no answer chosen and the other options at their
    /// defaults; choose one of [`value`](FallbackConfigBuilder::value),
    /// [`from_failure`](FallbackConfigBuilder::from_failure) and
    /// [`last_good`](FallbackConfigBuilder::last_good).
    pub fn builder() -> FallbackConfigBuilder<Res> {
        FallbackConfigBuilder {
            strategy: None,
            strategies_set: Vec::new(),
            on_rejection: false,
            last_good_capacity: 1000,
            event_capacity: 256,
        }
    }

    /// Whether a rejection by an inner layer is answered too.
    pub fn on_rejection(&self) -> bool {
        self.on_rejection
    }

    /// Keys whose last good response is kept (for `last_good`).
    pub fn last_good_capacity(&self) -> usize {
        self.last_good_capacity
    }

    /// The kind of answer: `"value"`, `"from_failure"` or `"last_good"`.
    pub fn strategy(&self) -> &'static str {
        self.strategy.name()
    }
}

impl<Res> fmt::Debug for FallbackConfig<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackConfig")
            .field("strategy", &self.strategy.name())
            .field("on_rejection", &self.on_rejection)
            .field("last_good_capacity", &self.last_good_capacity)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

/// Builds a [`FallbackConfig`]; every setter is checked in [`build`](Self::build).
#[must_use = "call .build() to get a configuration"]
pub struct FallbackConfigBuilder<Res> {
    strategy: Option<Strategy<Res>>,
    strategies_set: Vec<&'static str>,
    on_rejection: bool,
    last_good_capacity: usize,
    event_capacity: usize,
}

impl<Res> FallbackConfigBuilder<Res> {
    fn strategy(mut self, strategy: Strategy<Res>) -> Self {
        self.strategies_set.push(strategy.name());
        self.strategy = Some(strategy);
        self
    }

    /// Answers every handled failure with a clone of `response`.
    pub fn value(self, response: Res) -> Self {
        self.strategy(Strategy::Value(response))
    }

    /// Answers every handled failure with `answer(failure)`, where
    /// `failure` is the inner service's error, or its response when the
    /// classifier called an `Ok` a failure.
    pub fn from_failure<F>(self, answer: F) -> Self
    where
        F: Fn(Result<&Res, &BoxError>) -> Res + Send + Sync + 'static,
    {
        self.strategy(Strategy::Function(Arc::new(answer)))
    }

    /// Answers a handled failure with the last successful response for the
    /// request's key (the key function is given to
    /// [`Fallback::layer_keyed`](super::Fallback::layer_keyed); with
    /// [`Fallback::layer`](super::Fallback::layer) every request has the
    /// same key). When the key has no good response yet, the failure passes
    /// through unchanged.
    pub fn last_good(self) -> Self {
        self.strategy(Strategy::LastGood)
    }

    /// Keys whose last good response is kept, 1 to
    /// [`MAX_LAST_GOOD_CAPACITY`]; beyond it the key updated longest ago
    /// is forgotten. Default 1,000. Only used by `last_good`.
    pub fn last_good_capacity(mut self, keys: usize) -> Self {
        self.last_good_capacity = keys;
        self
    }

    /// Whether a call rejected by an inner layer (its error carries the
    /// [`Rejected`](crate::error::Rejected) marker: an open breaker, a full
    /// bulkhead, a rate limit) is answered too. When `false`, rejections
    /// pass through unchanged whatever the classifier says. Default
    /// `false`.
    pub fn on_rejection(mut self, answer_rejections: bool) -> Self {
        self.on_rejection = answer_rejections;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<FallbackConfig<Res>, ConfigError> {
        if self.strategies_set.len() > 1 {
            return Err(ConfigError::new(
                COMPONENT,
                "strategy",
                format!(
                    "must be chosen once (value, from_failure or last_good), got {}",
                    self.strategies_set.join(" then ")
                ),
            ));
        }
        let Some(strategy) = self.strategy else {
            return Err(ConfigError::new(
                COMPONENT,
                "strategy",
                "must be chosen: call value, from_failure or last_good",
            ));
        };
        if !(1..=MAX_LAST_GOOD_CAPACITY).contains(&self.last_good_capacity) {
            return Err(ConfigError::new(
                COMPONENT,
                "last_good_capacity",
                format!(
                    "must be 1 to {MAX_LAST_GOOD_CAPACITY}, got {}",
                    self.last_good_capacity
                ),
            ));
        }
        crate::events::check_event_capacity(COMPONENT, self.event_capacity)?;
        Ok(FallbackConfig {
            strategy,
            on_rejection: self.on_rejection,
            last_good_capacity: self.last_good_capacity,
            event_capacity: self.event_capacity,
        })
    }
}

impl<Res> fmt::Debug for FallbackConfigBuilder<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackConfigBuilder")
            .field("strategies_set", &self.strategies_set)
            .field("on_rejection", &self.on_rejection)
            .field("last_good_capacity", &self.last_good_capacity)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}
