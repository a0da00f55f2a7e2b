//! [`RetryLayer`]: wraps services so failed calls are tried again.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::classify::DefaultClassifier;
use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::config::RetryConfig;
use super::event::{RetryEvent, RetryMetrics};
use super::policy::CloneRequests;
use super::service::RetryService;

/// State shared by a layer, every service it builds and their futures.
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
}

/// Wraps services in a [`RetryService`] that tries failed calls again, with
/// backoff, within a budget and deadlines; see the [module docs](super).
///
/// Every service the layer builds (and every clone of them) shares the
/// configuration, the retry budget, the metrics and the event stream.
///
/// ```
/// use std::time::Duration;
/// use palisade::backoff::Backoff;
/// use palisade::retry::{RetryConfig, RetryLayer};
/// use tower::ServiceBuilder;
///
/// let retry = RetryLayer::new(
///     "inventory",
///     RetryConfig::builder()
///         .max_attempts(4)
///         .backoff(Backoff::exponential(Duration::from_millis(50), 2.0).build()?)
///         .attempt_timeout(Duration::from_secs(1))
///         .build()?,
/// );
/// let service = ServiceBuilder::new()
///     .layer(retry.clone())
///     .service_fn(|sku: u64| async move { Ok::<_, std::io::Error>(sku) });
/// # drop(service);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub struct RetryLayer<C = DefaultClassifier, P = CloneRequests> {
    pub(crate) shared: Arc<Shared>,
    classifier: C,
    policy: P,
}

impl RetryLayer {
    /// A layer named `name` (used in events and traces) that classifies
    /// outcomes with [`DefaultClassifier`] (every `Err` is a retryable
    /// failure) and re-sends requests by cloning them ([`CloneRequests`]).
    pub fn new(name: impl Into<Arc<str>>, config: RetryConfig) -> Self {
        let shared = Shared {
            name: name.into(),
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
            classifier: DefaultClassifier,
            policy: CloneRequests,
        }
    }
}

impl<C, P> RetryLayer<C, P> {
    /// Replaces the classifier that decides which failures are retried.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2, P> {
        RetryLayer {
            shared: self.shared,
            classifier,
            policy: self.policy,
        }
    }

    /// Replaces the policy that copies requests, guards idempotency and
    /// reads server delays (e.g. [`HttpRetryPolicy`](super::HttpRetryPolicy)).
    pub fn with_policy<P2>(self, policy: P2) -> RetryLayer<C, P2> {
        RetryLayer {
            shared: self.shared,
            classifier: self.classifier,
            policy,
        }
    }

    /// The classifier that decides which failures are retried.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The layer's configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.config
    }

    /// Subscribes to the layer's events (retries, successes, give-ups).
    pub fn subscribe(&self) -> EventStream<RetryEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of what the layer's services have done.
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

impl<C: Clone, P: Clone> Clone for RetryLayer<C, P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for RetryLayer<C, P> {
    type Service = RetryService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(
            inner,
            Arc::clone(&self.shared),
            self.classifier.clone(),
            self.policy.clone(),
        )
    }
}

impl<C: fmt::Debug, P: fmt::Debug> fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .field("classifier", &self.classifier)
            .field("policy", &self.policy)
            .finish()
    }
}
