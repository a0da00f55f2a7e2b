//! [`HedgeLayer`]: wraps services so slow calls are raced by copies.

use std::fmt;

use tower_layer::Layer;

use crate::classify::DefaultClassifier;
use crate::retry::CloneRequests;

use super::service::HedgeService;
use super::state::Hedge;

/// Wraps services in a [`HedgeService`] that races slow or failed calls
/// with copies; see the [module docs](super). Built by [`Hedge::layer`]
/// (or [`HedgeLayer::new`] / `From<Hedge>`).
///
/// Every service the layer builds (and every clone of them) shares the
/// [`Hedge`]: its configuration, budget, latency percentile, metrics and
/// events. The classifier decides which answers are acceptable; the
/// policy — the retry's [`RetryPolicy`](crate::retry::RetryPolicy), so one
/// idempotency guard serves both — decides which requests may be sent
/// twice and how to copy them.
///
#[cfg_attr(feature = "http", doc = "```")]
#[cfg_attr(not(feature = "http"), doc = "```ignore")]
/// use palisade::classify::HttpStatusClassifier;
/// use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
/// use palisade::retry::HttpRetryPolicy;
/// use tower::ServiceBuilder;
///
/// let hedge = Hedge::new(
///     "catalog",
///     HedgeConfig::builder().delay(HedgeDelay::percentile(0.95)).build()?,
/// );
/// let service = ServiceBuilder::new()
///     .layer(
///         hedge
///             .layer()
///             .with_classifier(HttpStatusClassifier::new())
///             .with_policy(HttpRetryPolicy), // GET, HEAD, PUT, DELETE... or `Idempotent`
///     )
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::io::Error>(http::Response::new(()))
///     });
/// # drop(service);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub struct HedgeLayer<C = DefaultClassifier, P = CloneRequests> {
    hedge: Hedge,
    classifier: C,
    policy: P,
}

impl HedgeLayer {
    /// A layer for `hedge` that classifies outcomes with
    /// [`DefaultClassifier`] (every `Err` is a failure worth another
    /// attempt) and copies requests by cloning them ([`CloneRequests`]).
    pub fn new(hedge: Hedge) -> Self {
        Self {
            hedge,
            classifier: DefaultClassifier,
            policy: CloneRequests,
        }
    }
}

impl<C, P> HedgeLayer<C, P> {
    /// Replaces the classifier that decides which answers are acceptable.
    pub fn with_classifier<C2>(self, classifier: C2) -> HedgeLayer<C2, P> {
        HedgeLayer {
            hedge: self.hedge,
            classifier,
            policy: self.policy,
        }
    }

    /// Replaces the policy that guards idempotency and copies requests
    /// (e.g. [`HttpRetryPolicy`](crate::retry::HttpRetryPolicy)).
    pub fn with_policy<P2>(self, policy: P2) -> HedgeLayer<C, P2> {
        HedgeLayer {
            hedge: self.hedge,
            classifier: self.classifier,
            policy,
        }
    }

    /// The hedge shared by the services this layer builds.
    pub fn hedge(&self) -> &Hedge {
        &self.hedge
    }
}

impl From<Hedge> for HedgeLayer {
    fn from(hedge: Hedge) -> Self {
        Self::new(hedge)
    }
}

impl<C: Clone, P: Clone> Clone for HedgeLayer<C, P> {
    fn clone(&self) -> Self {
        Self {
            hedge: self.hedge.clone(),
            classifier: self.classifier.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for HedgeLayer<C, P> {
    type Service = HedgeService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService::new(
            inner,
            self.hedge.clone(),
            self.classifier.clone(),
            self.policy.clone(),
        )
    }
}

impl<C: fmt::Debug, P: fmt::Debug> fmt::Debug for HedgeLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("hedge", &self.hedge)
            .field("classifier", &self.classifier)
            .field("policy", &self.policy)
            .finish()
    }
}
