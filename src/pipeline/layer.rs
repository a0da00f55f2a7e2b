//! [`Pipeline`] and its builder: the stages, in resilience4j's order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::timeout::Timeout;
use tower_layer::{Identity, Layer};

use crate::adaptive_concurrency::AdaptiveConcurrencyLayer;
use crate::bulkhead::{Bulkhead, BulkheadService};
#[cfg(feature = "cache")]
use crate::cache::CacheLayer;
#[cfg(feature = "chaos")]
use crate::chaos::ChaosLayer;
use crate::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerService};
use crate::classify::DefaultClassifier;
use crate::coalesce::CoalesceLayer;
use crate::error::ConfigError;
use crate::fallback::FallbackLayer;
use crate::hedge::HedgeLayer;
use crate::rate_limit::{RateLimiter, RateLimiterService};
use crate::retry::{Retry, RetryLayer, RetryService};

use super::service::PipelineService;
use super::stage::{NoRetry, Optional, StageClassifier};

const COMPONENT: &str = "pipeline";

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) timeout: Option<Duration>,
}

/// The resilience stages around a service, in the order resilience4j
/// documents for its decorators: retry (outermost), circuit breaker, rate
/// limiter, timeout, bulkhead (innermost). Every stage is optional. Built by
/// [`Pipeline::builder`]; see the [module docs](super).
///
/// A `Pipeline` is a `tower::Layer`: every service it wraps shares its
/// stages' state (one breaker, one bulkhead, one budget).
///
/// `RP` is the retry stage's [`RetryPolicy`](crate::retry::RetryPolicy),
/// which decides how requests are copied for another attempt; it is
/// [`NoRetry`] when there is no retry stage, and such a pipeline accepts
/// requests that are not `Clone`. `RC` and `BC` are the retry's and the
/// breaker's classifiers.
pub struct Pipeline<RC = DefaultClassifier, RP = NoRetry, BC = DefaultClassifier, X = ExtraStages> {
    pub(crate) shared: Arc<Shared>,
    extra: X,
    retry: Option<RetryLayer<StageClassifier<RC>, RP>>,
    circuit_breaker: Option<CircuitBreakerLayer<StageClassifier<BC>>>,
    rate_limiter: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
}

impl Pipeline {
    /// Starts a pipeline named `name` (used in its tracing span) with no
    /// stage; add the ones you need.
    pub fn builder(name: impl Into<Arc<str>>) -> PipelineBuilder {
        PipelineBuilder {
            name: name.into(),
            extra: ExtraStages::default(),
            retry: None,
            retry_rejections: false,
            circuit_breaker: None,
            rate_limiter: None,
            timeout: None,
            bulkhead: None,
        }
    }
}

impl<RC, RP, BC, X> Pipeline<RC, RP, BC, X> {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The retry stage, if any (for its metrics and events).
    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_ref().map(RetryLayer::retry)
    }

    /// The circuit breaker stage, if any.
    pub fn circuit_breaker(&self) -> Option<&crate::circuit_breaker::CircuitBreaker> {
        self.circuit_breaker
            .as_ref()
            .map(CircuitBreakerLayer::breaker)
    }

    /// The rate limiter stage, if any.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limiter.as_ref()
    }

    /// The timeout stage's limit, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.shared.timeout
    }

    /// The bulkhead stage, if any.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.bulkhead.as_ref()
    }
}

#[cfg(feature = "reqwest")]
impl<RC, RP, BC, X> Pipeline<RC, RP, BC, X> {
    /// The same stages with `classifier` as the retry's and the breaker's
    /// classifier (rejections handled as configured) and `policy` as the
    /// retry's policy: how `palisade::reqwest::client` fits a pipeline to
    /// `reqwest`.
    pub(crate) fn with_classifier_and_policy<C: Clone, P>(
        self,
        classifier: C,
        policy: P,
    ) -> Pipeline<C, P, C, X> {
        Pipeline {
            shared: self.shared,
            extra: self.extra,
            retry: self.retry.map(|layer| {
                let stage = layer.classifier().around(classifier.clone());
                layer.with_classifier(stage).with_policy(policy)
            }),
            circuit_breaker: self.circuit_breaker.map(|layer| {
                let stage = layer.classifier().around(classifier);
                layer.with_classifier(stage)
            }),
            rate_limiter: self.rate_limiter,
            bulkhead: self.bulkhead,
        }
    }
}

pub(crate) type BulkheadStage<S> = Optional<BulkheadService<S>, S>;
pub(crate) type TimeoutStage<S> = Optional<Timeout<BulkheadStage<S>>, BulkheadStage<S>>;
pub(crate) type RateLimitStage<S> = Optional<RateLimiterService<TimeoutStage<S>>, TimeoutStage<S>>;
pub(crate) type BreakerStage<S, BC> =
    Optional<CircuitBreakerService<RateLimitStage<S>, StageClassifier<BC>>, RateLimitStage<S>>;
pub(crate) type RetryStage<S, RC, RP, BC> =
    Optional<RetryService<BreakerStage<S, BC>, StageClassifier<RC>, RP>, BreakerStage<S, BC>>;

/// The services under the bulkhead: the chaos stage around the service, the
/// adaptive concurrency limit around that.
pub(crate) type InnerStages<S, Ad, Ch> = <Ad as Layer<<Ch as Layer<S>>::Service>>::Service;

/// The core stages (retry to bulkhead) with the inner ones, in their span.
pub(crate) type CoreStages<S, RC, RP, BC, Ad, Ch> =
    PipelineService<InnerStages<S, Ad, Ch>, RC, RP, BC>;

/// The outer stages around the core: hedging, fallback, coalescing, cache.
pub(crate) type OuterStages<T, Ca, Co, Fb, He> = <Ca as Layer<
    <Co as Layer<<Fb as Layer<<He as Layer<T>>::Service>>::Service>>::Service,
>>::Service;

impl<S, RC, RP, BC, Ca, Co, Fb, He, Ad, Ch> Layer<S>
    for Pipeline<RC, RP, BC, ExtraStages<Ca, Co, Fb, He, Ad, Ch>>
where
    RC: Clone,
    RP: Clone,
    BC: Clone,
    Ch: Layer<S>,
    Ad: Layer<Ch::Service>,
    He: Layer<CoreStages<S, RC, RP, BC, Ad, Ch>>,
    Fb: Layer<He::Service>,
    Co: Layer<Fb::Service>,
    Ca: Layer<Co::Service>,
{
    type Service = OuterStages<CoreStages<S, RC, RP, BC, Ad, Ch>, Ca, Co, Fb, He>;

    fn layer(&self, service: S) -> Self::Service {
        let extra = &self.extra;
        let service = extra.adaptive.layer(extra.chaos.layer(service));
        let service = self.layer_core(service);
        let service = extra.hedge.layer(service);
        let service = extra.fallback.layer(service);
        let service = extra.coalesce.layer(service);
        extra.cache.layer(service)
    }
}

impl<RC: Clone, RP: Clone, BC: Clone, X> Pipeline<RC, RP, BC, X> {
    /// Stacks the core stages, retry (outermost) to bulkhead (innermost),
    /// around `service`, inside the pipeline's span.
    fn layer_core<S>(&self, service: S) -> PipelineService<S, RC, RP, BC> {
        let service = match &self.bulkhead {
            Some(bulkhead) => Optional::On(BulkheadService::new(service, bulkhead.clone())),
            None => Optional::Off(service),
        };
        let service = match self.shared.timeout {
            Some(timeout) => Optional::On(Timeout::new(service, timeout)),
            None => Optional::Off(service),
        };
        let service = match &self.rate_limiter {
            Some(limiter) => Optional::On(RateLimiterService::new(service, limiter.clone())),
            None => Optional::Off(service),
        };
        let service = match &self.circuit_breaker {
            Some(layer) => Optional::On(layer.layer(service)),
            None => Optional::Off(service),
        };
        let service = match &self.retry {
            Some(layer) => Optional::On(layer.layer(service)),
            None => Optional::Off(service),
        };
        PipelineService::new(service, Arc::clone(&self.shared))
    }
}

impl<RC: Clone, RP: Clone, BC: Clone, X: Clone> Clone for Pipeline<RC, RP, BC, X> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            extra: self.extra.clone(),
            retry: self.retry.clone(),
            circuit_breaker: self.circuit_breaker.clone(),
            rate_limiter: self.rate_limiter.clone(),
            bulkhead: self.bulkhead.clone(),
        }
    }
}

impl<RC, RP, BC, X> fmt::Debug for Pipeline<RC, RP, BC, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.shared.name)
            .field("retry", &self.retry().map(Retry::name))
            .field("circuit_breaker", &self.circuit_breaker().map(|b| b.name()))
            .field(
                "rate_limiter",
                &self.rate_limiter.as_ref().map(RateLimiter::name),
            )
            .field("timeout", &self.shared.timeout)
            .field("bulkhead", &self.bulkhead.as_ref().map(Bulkhead::name))
            .finish()
    }
}

/// Builds a [`Pipeline`]; the order in which stages are added does not
/// matter, the pipeline always stacks them in resilience4j's order.
///
/// ```
/// use std::time::Duration;
/// use palisade::bulkhead::{Bulkhead, BulkheadConfig};
/// use palisade::circuit_breaker::CircuitBreaker;
/// use palisade::pipeline::Pipeline;
/// use palisade::retry::{Retry, RetryConfig};
///
/// let pipeline = Pipeline::builder("payments")
///     .bulkhead(Bulkhead::new("payments", BulkheadConfig::builder().max_concurrent_calls(5).build()?))
///     .timeout(Duration::from_secs(2))
///     .circuit_breaker(CircuitBreaker::with_defaults("payments"))
///     .retry(Retry::new("payments", RetryConfig::builder().max_attempts(3).build()?))
///     .build()?;
/// assert_eq!(pipeline.timeout(), Some(Duration::from_secs(2)));
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[must_use = "call .build() to get a pipeline"]
pub struct PipelineBuilder<
    RC = DefaultClassifier,
    RP = NoRetry,
    BC = DefaultClassifier,
    X = ExtraStages,
> {
    name: Arc<str>,
    extra: X,
    retry: Option<RetryLayer<RC, RP>>,
    retry_rejections: bool,
    circuit_breaker: Option<CircuitBreakerLayer<BC>>,
    rate_limiter: Option<RateLimiter>,
    timeout: Option<Duration>,
    bulkhead: Option<Bulkhead>,
}

impl<RC, RP, BC, X> PipelineBuilder<RC, RP, BC, X> {
    /// The retry stage (outermost): a [`Retry`], or a [`RetryLayer`] with
    /// its own classifier or policy. Every retry goes through the breaker,
    /// the rate limiter, the timeout and the bulkhead again.
    ///
    /// Another stage's rejection is returned at once, not retried, unless
    /// [`retry_rejections`](Self::retry_rejections) is set.
    ///
    /// The retry's [`RetryPolicy`](crate::retry::RetryPolicy) copies each
    /// request for the later attempts: a [`Retry`] clones them
    /// ([`CloneRequests`](crate::retry::CloneRequests), so the pipeline then
    /// needs `Req: Clone`); give the layer another policy with
    /// [`RetryLayer::with_policy`]. Without this stage the pipeline accepts
    /// any request type (see [`NoRetry`]).
    pub fn retry<RC2, RP2>(
        self,
        retry: impl Into<RetryLayer<RC2, RP2>>,
    ) -> PipelineBuilder<RC2, RP2, BC, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: Some(retry.into()),
            retry_rejections: self.retry_rejections,
            circuit_breaker: self.circuit_breaker,
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }

    /// Whether the retry stage retries the rejections of the stages inside
    /// it (an open breaker, a full bulkhead, an exhausted rate limiter) as
    /// it retries the service's failures. Default `false`: a rejection is
    /// returned at once, since retrying into an open breaker only delays
    /// the caller.
    pub fn retry_rejections(mut self, retry: bool) -> Self {
        self.retry_rejections = retry;
        self
    }

    /// The circuit breaker stage: a [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker),
    /// or a [`CircuitBreakerLayer`] with its own classifier. The bulkhead's
    /// and the rate limiter's rejections are never counted as failures;
    /// the timeout stage's are.
    pub fn circuit_breaker<BC2>(
        self,
        breaker: impl Into<CircuitBreakerLayer<BC2>>,
    ) -> PipelineBuilder<RC, RP, BC2, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: self.retry,
            retry_rejections: self.retry_rejections,
            circuit_breaker: Some(breaker.into()),
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }

    /// The rate limiter stage, inside the breaker: a call the limiter
    /// rejects is not the dependency's failure.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// The timeout stage (tower's `Timeout`): each attempt that runs
    /// longer fails with [`PipelineError::TimedOut`](super::PipelineError::TimedOut),
    /// which the breaker counts as a failure and the retry may retry. It
    /// bounds the call, not the wait for a bulkhead permit (the bulkhead's
    /// `max_wait_duration` bounds that). Must be more than zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The bulkhead stage (innermost): a permit is held only while the
    /// service runs, and each retry takes a new one.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Checks the stages and returns the pipeline.
    pub fn build(self) -> Result<Pipeline<RC, RP, BC, X>, ConfigError>
    where
        RC: Clone,
        BC: Clone,
    {
        if self.name.is_empty() {
            return Err(ConfigError::new(COMPONENT, "name", "must not be empty"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                COMPONENT,
                "timeout",
                "must be more than zero (leave the stage out for no timeout)",
            ));
        }
        let retry_rejections = self.retry_rejections;
        Ok(Pipeline {
            extra: self.extra,
            shared: Arc::new(Shared {
                name: self.name,
                timeout: self.timeout,
            }),
            retry: self.retry.map(|layer| {
                let classifier = StageClassifier::new(layer.classifier().clone(), retry_rejections);
                layer.with_classifier(classifier)
            }),
            circuit_breaker: self.circuit_breaker.map(|layer| {
                let classifier = StageClassifier::new(layer.classifier().clone(), false);
                layer.with_classifier(classifier)
            }),
            rate_limiter: self.rate_limiter,
            bulkhead: self.bulkhead,
        })
    }
}

impl<RC, RP, BC, X> fmt::Debug for PipelineBuilder<RC, RP, BC, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .field("retry", &self.retry.as_ref().map(|l| l.retry().name()))
            .field("retry_rejections", &self.retry_rejections)
            .field(
                "circuit_breaker",
                &self.circuit_breaker.as_ref().map(|l| l.breaker().name()),
            )
            .field(
                "rate_limiter",
                &self.rate_limiter.as_ref().map(RateLimiter::name),
            )
            .field("timeout", &self.timeout)
            .field("bulkhead", &self.bulkhead.as_ref().map(Bulkhead::name))
            .finish()
    }
}

/// The stages a [`Pipeline`] places around its core (retry to bulkhead):
/// cache, coalescing, fallback and hedging outside it, the adaptive
/// concurrency limit and chaos inside it. A stage left out is tower's
/// [`Identity`] layer, which adds nothing.
#[derive(Debug, Clone, Default)]
pub struct ExtraStages<
    Ca = Identity,
    Co = Identity,
    Fb = Identity,
    He = Identity,
    Ad = Identity,
    Ch = Identity,
> {
    pub(crate) cache: Ca,
    pub(crate) coalesce: Co,
    pub(crate) fallback: Fb,
    pub(crate) hedge: He,
    pub(crate) adaptive: Ad,
    pub(crate) chaos: Ch,
}

impl<RC, RP, BC, X> PipelineBuilder<RC, RP, BC, X> {
    /// Replaces the extra stages by `f` of them.
    fn map_extra<X2>(self, f: impl FnOnce(X) -> X2) -> PipelineBuilder<RC, RP, BC, X2> {
        PipelineBuilder {
            name: self.name,
            extra: f(self.extra),
            retry: self.retry,
            retry_rejections: self.retry_rejections,
            circuit_breaker: self.circuit_breaker,
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }
}

/// The builder's type once one slot of its extra stages is replaced.
type With<RC, RP, BC, Ca, Co, Fb, He, Ad, Ch> =
    PipelineBuilder<RC, RP, BC, ExtraStages<Ca, Co, Fb, He, Ad, Ch>>;

// Each method replaces one slot of nine: the types say which, and naming
// them more briefly would hide it.
#[allow(clippy::type_complexity)]
impl<RC, RP, BC, Ca, Co, Fb, He, Ad, Ch> With<RC, RP, BC, Ca, Co, Fb, He, Ad, Ch> {
    /// The response cache stage (outermost): a fresh hit answers before any
    /// other stage runs, and a stale entry answers the failures and
    /// rejections of everything inside it (the chapter's "fallback to
    /// cached data"). Built by
    /// [`ResponseCache::layer`](crate::cache::ResponseCache::layer).
    #[cfg(feature = "cache")]
    pub fn cache<K, Res, F, C>(
        self,
        cache: CacheLayer<K, Res, F, C>,
    ) -> With<RC, RP, BC, CacheLayer<K, Res, F, C>, Co, Fb, He, Ad, Ch> {
        self.map_extra(|e| ExtraStages {
            cache,
            coalesce: e.coalesce,
            fallback: e.fallback,
            hedge: e.hedge,
            adaptive: e.adaptive,
            chaos: e.chaos,
        })
    }

    /// The coalescing stage, inside the cache: concurrent misses for one
    /// key share a single trip through the stages below (one fallback, one
    /// retry sequence, one breaker permit). Built by
    /// [`Coalesce::layer`](crate::coalesce::Coalesce::layer).
    pub fn coalesce<Req, K, F>(
        self,
        coalesce: CoalesceLayer<Req, K, F>,
    ) -> With<RC, RP, BC, Ca, CoalesceLayer<Req, K, F>, Fb, He, Ad, Ch> {
        self.map_extra(|e| ExtraStages {
            cache: e.cache,
            coalesce,
            fallback: e.fallback,
            hedge: e.hedge,
            adaptive: e.adaptive,
            chaos: e.chaos,
        })
    }

    /// The fallback stage, outside hedging and retry: it answers only once
    /// every attempt has failed (or, if its config says so, when a stage
    /// inside rejected the call). Built by
    /// [`Fallback::layer`](crate::fallback::Fallback::layer) or
    /// [`Fallback::layer_keyed`](crate::fallback::Fallback::layer_keyed).
    pub fn fallback<Res, K, F, C>(
        self,
        fallback: FallbackLayer<Res, K, F, C>,
    ) -> With<RC, RP, BC, Ca, Co, FallbackLayer<Res, K, F, C>, He, Ad, Ch> {
        self.map_extra(|e| ExtraStages {
            cache: e.cache,
            coalesce: e.coalesce,
            fallback,
            hedge: e.hedge,
            adaptive: e.adaptive,
            chaos: e.chaos,
        })
    }

    /// The hedging stage, outside the retry: each hedged attempt is a whole
    /// trip through the retry, the breaker and the stages below, the first
    /// acceptable answer wins and the others are cancelled. Built by
    /// [`Hedge::layer`](crate::hedge::Hedge::layer).
    pub fn hedge<C, P>(
        self,
        hedge: HedgeLayer<C, P>,
    ) -> With<RC, RP, BC, Ca, Co, Fb, HedgeLayer<C, P>, Ad, Ch> {
        self.map_extra(|e| ExtraStages {
            cache: e.cache,
            coalesce: e.coalesce,
            fallback: e.fallback,
            hedge,
            adaptive: e.adaptive,
            chaos: e.chaos,
        })
    }

    /// The adaptive concurrency limit, inside the bulkhead: it adapts to
    /// the latency of the service itself, and its rejections (limit
    /// reached) are returned at once like the bulkhead's, never counted by
    /// the breaker. Built by
    /// [`AdaptiveConcurrency::layer`](crate::adaptive_concurrency::AdaptiveConcurrency::layer).
    pub fn adaptive_concurrency<C>(
        self,
        limit: AdaptiveConcurrencyLayer<C>,
    ) -> With<RC, RP, BC, Ca, Co, Fb, He, AdaptiveConcurrencyLayer<C>, Ch> {
        self.map_extra(|e| ExtraStages {
            cache: e.cache,
            coalesce: e.coalesce,
            fallback: e.fallback,
            hedge: e.hedge,
            adaptive: limit,
            chaos: e.chaos,
        })
    }

    /// The chaos stage (innermost): it stands in for the dependency, so the
    /// breaker counts its injected failures, the retry retries them and the
    /// timeout bounds its injected latency. Built by
    /// [`Chaos::layer`](crate::chaos::Chaos::layer).
    #[cfg(feature = "chaos")]
    pub fn chaos<Res>(
        self,
        chaos: ChaosLayer<Res>,
    ) -> With<RC, RP, BC, Ca, Co, Fb, He, Ad, ChaosLayer<Res>> {
        self.map_extra(|e| ExtraStages {
            cache: e.cache,
            coalesce: e.coalesce,
            fallback: e.fallback,
            hedge: e.hedge,
            adaptive: e.adaptive,
            chaos,
        })
    }
}
