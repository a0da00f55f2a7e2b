//! [`Retry`]: the shared state of a retry layer (configuration, budget,
//! metrics, events), independent of tower.

use std::fmt;
use std::sync::Arc;

use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::config::RetryConfig;
use super::event::RetryEvent;
use super::layer::RetryLayer;
use super::metrics::RetryMetrics;

/// State shared by a [`Retry`], every layer and service built from it and
/// their futures.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) config: RetryConfig,
    pub(crate) events: EventHub<RetryEvent>,
    pub(crate) succeeded_without_retry: StripedCounter,
    pub(crate) succeeded_after_retry: StripedCounter,
    pub(crate) failed_without_retry: StripedCounter,
    pub(crate) failed_after_retries: StripedCounter,
    pub(crate) retries: StripedCounter,
    pub(crate) budget_exhaustions: StripedCounter,
    pub(crate) attempt_timeouts: StripedCounter,
    pub(crate) exported: super::metrics::Exported,
}

/// A named retry: its configuration, its [retry budget](super::RetryBudget),
/// its metrics and its events, shared by every clone and every service
/// built from it, as a [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker)
/// or a [`Bulkhead`](crate::bulkhead::Bulkhead) is. Build tower services
/// with [`layer`](Self::layer); see the [module docs](super).
///
/// ```
/// use palisade::retry::{Retry, RetryConfig};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let retry = Retry::new("prices", RetryConfig::builder().max_attempts(2).build()?);
/// let mut events = retry.subscribe();
/// let mut prices = ServiceBuilder::new()
///     .layer(retry.layer())
///     .service_fn(|sku: u64| async move { Ok::<_, std::io::Error>(sku * 100) });
/// assert_eq!(prices.ready().await?.call(7).await?, 700);
/// assert_eq!(retry.metrics().succeeded_without_retry, 1);
/// assert_eq!(events.drain().len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Retry {
    pub(crate) shared: Arc<Shared>,
}

impl Retry {
    /// Creates it after checking `name`, which appears in errors, events,
    /// traces and metrics labels: it must be non-empty, without surrounding
    /// whitespace or control characters, and at most
    /// [`MAX_NAME_LEN`](crate::circuit_breaker::MAX_NAME_LEN) bytes; a
    /// [`ConfigError`](crate::ConfigError) on field `name` says which rule
    /// it broke. Use it for names that come from configuration or requests;
    /// [`new`](Self::new) takes a name written in the code as it is.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: RetryConfig,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("retry", name)?;
        Ok(Self::new(name, config))
    }

    /// A retry named `name` (used in events and traces).
    pub fn new(name: impl Into<Arc<str>>, config: RetryConfig) -> Self {
        let name = name.into();
        let shared = Shared {
            exported: super::metrics::Exported::new(&name),
            name,
            events: EventHub::new(config.event_capacity),
            config,
            succeeded_without_retry: StripedCounter::new(),
            succeeded_after_retry: StripedCounter::new(),
            failed_without_retry: StripedCounter::new(),
            failed_after_retries: StripedCounter::new(),
            retries: StripedCounter::new(),
            budget_exhaustions: StripedCounter::new(),
            attempt_timeouts: StripedCounter::new(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The retry's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The retry's configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.config
    }

    /// Whether `self` and `other` are the same retry (clones of one another).
    pub fn ptr_eq(&self, other: &Retry) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// A layer whose services retry with this retry's configuration, budget
    /// and metrics; every `Err` is a retryable failure and requests are
    /// copied by cloning them until you say otherwise with
    /// [`RetryLayer::with_classifier`] / [`RetryLayer::with_policy`].
    pub fn layer(&self) -> RetryLayer {
        RetryLayer::new(self.clone())
    }

    /// Subscribes to the retry's events (retries, successes, give-ups).
    pub fn subscribe(&self) -> EventStream<RetryEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of what the retry's services have done.
    pub fn metrics(&self) -> RetryMetrics {
        let s = &self.shared;
        RetryMetrics {
            succeeded_without_retry: s.succeeded_without_retry.sum(),
            succeeded_after_retry: s.succeeded_after_retry.sum(),
            failed_without_retry: s.failed_without_retry.sum(),
            failed_after_retries: s.failed_after_retries.sum(),
            retries: s.retries.sum(),
            budget_exhaustions: s.budget_exhaustions.sum(),
            attempt_timeouts: s.attempt_timeouts.sum(),
        }
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
