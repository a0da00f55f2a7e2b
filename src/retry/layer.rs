//! [`RetryLayer`]: wraps services so failed calls are tried again.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::classify::DefaultClassifier;

use super::policy::CloneRequests;
use super::service::RetryService;
use super::state::Retry;

/// Wraps services in a [`RetryService`] that tries failed calls again, with
/// backoff, within a budget and deadlines; see the [module docs](super).
/// Built by [`Retry::layer`] (or [`RetryLayer::new`] / `From<Retry>`).
///
/// Every service the layer builds (and every clone of them) shares the
/// [`Retry`]: its configuration, retry budget, metrics and event stream.
///
#[cfg_attr(feature = "http", doc = "```")]
#[cfg_attr(not(feature = "http"), doc = "```ignore")]
/// use std::time::Duration;
/// use palisade::backoff::Backoff;
/// use palisade::classify::HttpStatusClassifier;
/// use palisade::retry::{HttpRetryPolicy, Retry, RetryConfig};
/// use tower::ServiceBuilder;
///
/// let retry = Retry::new(
///     "inventory",
///     RetryConfig::builder()
///         .max_attempts(4)
///         .backoff(Backoff::exponential(Duration::from_millis(50), 2.0).build()?)
///         .attempt_timeout(Duration::from_secs(1))
///         .build()?,
/// );
/// let service = ServiceBuilder::new()
///     .layer(
///         retry
///             .layer()
///             .with_classifier(HttpStatusClassifier::new())
///             .with_policy(HttpRetryPolicy),
///     )
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::io::Error>(http::Response::new(()))
///     });
/// # drop(service);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub struct RetryLayer<C = DefaultClassifier, P = CloneRequests> {
    retry: Retry,
    classifier: C,
    policy: P,
}

impl RetryLayer {
    /// A layer for `retry` that classifies outcomes with
    /// [`DefaultClassifier`] (every `Err` is a retryable failure) and
    /// re-sends requests by cloning them ([`CloneRequests`]).
    pub fn new(retry: Retry) -> Self {
        Self {
            retry,
            classifier: DefaultClassifier,
            policy: CloneRequests,
        }
    }
}

impl<C, P> RetryLayer<C, P> {
    /// Replaces the classifier that decides which failures are retried.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2, P> {
        RetryLayer {
            retry: self.retry,
            classifier,
            policy: self.policy,
        }
    }

    /// Replaces the policy that copies requests, guards idempotency and
    /// reads server delays (e.g. [`HttpRetryPolicy`](super::HttpRetryPolicy)).
    pub fn with_policy<P2>(self, policy: P2) -> RetryLayer<C, P2> {
        RetryLayer {
            retry: self.retry,
            classifier: self.classifier,
            policy,
        }
    }

    /// The retry shared by the services this layer builds (for its name,
    /// configuration, metrics and events).
    pub fn retry(&self) -> &Retry {
        &self.retry
    }

    /// The classifier that decides which failures are retried.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// The policy that copies requests and reads server delays.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl From<Retry> for RetryLayer {
    fn from(retry: Retry) -> Self {
        Self::new(retry)
    }
}

impl<C: Clone, P: Clone> Clone for RetryLayer<C, P> {
    fn clone(&self) -> Self {
        Self {
            retry: self.retry.clone(),
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
            Arc::clone(&self.retry.shared),
            self.classifier.clone(),
            self.policy.clone(),
        )
    }
}

impl<C: fmt::Debug, P: fmt::Debug> fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("retry", &self.retry)
            .field("classifier", &self.classifier)
            .field("policy", &self.policy)
            .finish()
    }
}
