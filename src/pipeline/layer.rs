//! [`Pipeline`] and its builder: the stages, in resilience4j's order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::{Identity, Layer};

use crate::adaptive_concurrency::AdaptiveConcurrencyLayer;
use crate::bulkhead::Bulkhead;
#[cfg(feature = "cache")]
use crate::cache::CacheLayer;
#[cfg(feature = "chaos")]
use crate::chaos::ChaosLayer;
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::coalesce::CoalesceLayer;
use crate::error::ConfigError;
use crate::fallback::FallbackLayer;
use crate::hedge::HedgeLayer;
use crate::rate_limit::RateLimiter;
use crate::retry::{Retry, RetryLayer};

use super::service::PipelineService;
use super::stage::{
    BoxErrors, BreakerStage, BulkheadStage, RateLimiterStage, RetryStage, Slot, TimeoutStage,
};

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
/// Each core stage has its own slot in the type, tower's [`Identity`] when
/// the stage is left out, so a stage left out costs nothing at all:
/// `Re` is the retry stage ([`RetryStage`], whose policy decides how
/// requests are copied for another attempt; without one the pipeline
/// accepts requests that are not `Clone`), `Br` the circuit breaker
/// ([`BreakerStage`]), `Rl` the rate limiter ([`RateLimiterStage`]), `To`
/// the timeout ([`TimeoutStage`]), `Bu` the bulkhead ([`BulkheadStage`]),
/// and `X` the [`ExtraStages`] around and inside them. `Pipeline` alone is
/// the pipeline with no stage.
pub struct Pipeline<
    Re = Identity,
    Br = Identity,
    Rl = Identity,
    To = Identity,
    Bu = Identity,
    X = ExtraStages,
> {
    pub(crate) shared: Arc<Shared>,
    extra: X,
    retry: Re,
    circuit_breaker: Br,
    rate_limiter: Rl,
    timeout: To,
    bulkhead: Bu,
}

impl Pipeline {
    /// Starts a pipeline named `name` (used in its tracing span) with no
    /// stage; add the ones you need.
    pub fn builder(name: impl Into<Arc<str>>) -> PipelineBuilder {
        PipelineBuilder {
            name: name.into(),
            extra: ExtraStages::default(),
            retry: Identity::new(),
            retry_rejections: false,
            circuit_breaker: Identity::new(),
            rate_limiter: Identity::new(),
            timeout: Identity::new(),
            bulkhead: Identity::new(),
        }
    }
}

impl<Re, Br, Rl, To, Bu, X> Pipeline<Re, Br, Rl, To, Bu, X> {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The retry stage, if any (for its metrics and events).
    pub fn retry(&self) -> Option<&Retry>
    where
        Re: Slot<Retry>,
    {
        self.retry.stage()
    }

    /// The circuit breaker stage, if any.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker>
    where
        Br: Slot<CircuitBreaker>,
    {
        self.circuit_breaker.stage()
    }

    /// The rate limiter stage, if any.
    pub fn rate_limiter(&self) -> Option<&RateLimiter>
    where
        Rl: Slot<RateLimiter>,
    {
        self.rate_limiter.stage()
    }

    /// The timeout stage's limit, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.shared.timeout
    }

    /// The bulkhead stage, if any.
    pub fn bulkhead(&self) -> Option<&Bulkhead>
    where
        Bu: Slot<Bulkhead>,
    {
        self.bulkhead.stage()
    }

    /// The same stages with the retry and the breaker stages replaced by
    /// `f` and `g` of them: how `palisade::reqwest::client` fits a
    /// pipeline to `reqwest`.
    #[cfg(feature = "reqwest")]
    pub(crate) fn map_classified<Re2, Br2>(
        self,
        f: impl FnOnce(Re) -> Re2,
        g: impl FnOnce(Br) -> Br2,
    ) -> Pipeline<Re2, Br2, Rl, To, Bu, X> {
        Pipeline {
            shared: self.shared,
            extra: self.extra,
            retry: f(self.retry),
            circuit_breaker: g(self.circuit_breaker),
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }
}

/// The core stages of a pipeline (retry, breaker, rate limiter, timeout,
/// bulkhead; each tower's [`Identity`] when left out) around `S`, whose
/// errors are boxed first: the service inside a [`PipelineService`].
pub type CoreStages<S, Re = Identity, Br = Identity, Rl = Identity, To = Identity, Bu = Identity> =
    <Re as Layer<
        <Br as Layer<
            <Rl as Layer<<To as Layer<<Bu as Layer<BoxErrors<S>>>::Service>>::Service>>::Service,
        >>::Service,
    >>::Service;

/// The service a [`Pipeline`] with these core stages and no extra stage
/// makes of `S`.
pub type Layered<S, Re = Identity, Br = Identity, Rl = Identity, To = Identity, Bu = Identity> =
    PipelineService<CoreStages<S, Re, Br, Rl, To, Bu>>;

/// The services under the bulkhead: the chaos stage around the service, the
/// adaptive concurrency limit around that.
pub(crate) type InnerStages<S, Ad, Ch> = <Ad as Layer<<Ch as Layer<S>>::Service>>::Service;

/// The outer stages around the core: hedging, fallback, coalescing, cache.
pub(crate) type OuterStages<T, Ca, Co, Fb, He> = <Ca as Layer<
    <Co as Layer<<Fb as Layer<<He as Layer<T>>::Service>>::Service>>::Service,
>>::Service;

impl<S, Re, Br, Rl, To, Bu, Ca, Co, Fb, He, Ad, Ch> Layer<S>
    for Pipeline<Re, Br, Rl, To, Bu, ExtraStages<Ca, Co, Fb, He, Ad, Ch>>
where
    Ch: Layer<S>,
    Ad: Layer<Ch::Service>,
    Bu: Layer<BoxErrors<Ad::Service>>,
    To: Layer<Bu::Service>,
    Rl: Layer<To::Service>,
    Br: Layer<Rl::Service>,
    Re: Layer<Br::Service>,
    He: Layer<PipelineService<Re::Service>>,
    Fb: Layer<He::Service>,
    Co: Layer<Fb::Service>,
    Ca: Layer<Co::Service>,
{
    type Service = OuterStages<Layered<InnerStages<S, Ad, Ch>, Re, Br, Rl, To, Bu>, Ca, Co, Fb, He>;

    fn layer(&self, service: S) -> Self::Service {
        let extra = &self.extra;
        let service = extra.adaptive.layer(extra.chaos.layer(service));
        // The core stages, retry (outermost) to bulkhead (innermost),
        // inside the pipeline's span.
        let service = self.bulkhead.layer(BoxErrors::new(service));
        let service = self.timeout.layer(service);
        let service = self.rate_limiter.layer(service);
        let service = self.circuit_breaker.layer(service);
        let service = self.retry.layer(service);
        let service = PipelineService::new(service, Arc::clone(&self.shared));
        let service = extra.hedge.layer(service);
        let service = extra.fallback.layer(service);
        let service = extra.coalesce.layer(service);
        extra.cache.layer(service)
    }
}

impl<Re: Clone, Br: Clone, Rl: Clone, To: Clone, Bu: Clone, X: Clone> Clone
    for Pipeline<Re, Br, Rl, To, Bu, X>
{
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            extra: self.extra.clone(),
            retry: self.retry.clone(),
            circuit_breaker: self.circuit_breaker.clone(),
            rate_limiter: self.rate_limiter.clone(),
            timeout: self.timeout.clone(),
            bulkhead: self.bulkhead.clone(),
        }
    }
}

impl<Re, Br, Rl, To, Bu, X> fmt::Debug for Pipeline<Re, Br, Rl, To, Bu, X>
where
    Re: Slot<Retry>,
    Br: Slot<CircuitBreaker>,
    Rl: Slot<RateLimiter>,
    Bu: Slot<Bulkhead>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.shared.name)
            .field("retry", &self.retry().map(Retry::name))
            .field("circuit_breaker", &self.circuit_breaker().map(|b| b.name()))
            .field("rate_limiter", &self.rate_limiter().map(RateLimiter::name))
            .field("timeout", &self.shared.timeout)
            .field("bulkhead", &self.bulkhead().map(Bulkhead::name))
            .finish()
    }
}

/// Builds a [`Pipeline`]; the order in which stages are added does not
/// matter, the pipeline always stacks them in resilience4j's order. Each
/// stage added changes the builder's type (its slot, tower's [`Identity`]
/// until then, holds the stage).
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
    Re = Identity,
    Br = Identity,
    Rl = Identity,
    To = Identity,
    Bu = Identity,
    X = ExtraStages,
> {
    name: Arc<str>,
    extra: X,
    retry: Re,
    retry_rejections: bool,
    circuit_breaker: Br,
    rate_limiter: Rl,
    timeout: To,
    bulkhead: Bu,
}

impl<Re, Br, Rl, To, Bu, X> PipelineBuilder<Re, Br, Rl, To, Bu, X> {
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
    /// any request type (see [`NoRetry`](super::NoRetry)).
    pub fn retry<RC: Clone, RP>(
        self,
        retry: impl Into<RetryLayer<RC, RP>>,
    ) -> PipelineBuilder<RetryStage<RC, RP>, Br, Rl, To, Bu, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: RetryStage::new(retry.into(), false),
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

    /// The circuit breaker stage: a [`CircuitBreaker`],
    /// or a [`CircuitBreakerLayer`] with its own classifier. The bulkhead's
    /// and the rate limiter's rejections are never counted as failures;
    /// the timeout stage's are.
    pub fn circuit_breaker<BC: Clone>(
        self,
        breaker: impl Into<CircuitBreakerLayer<BC>>,
    ) -> PipelineBuilder<Re, BreakerStage<BC>, Rl, To, Bu, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: self.retry,
            retry_rejections: self.retry_rejections,
            circuit_breaker: BreakerStage::new(breaker.into()),
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }

    /// The rate limiter stage, inside the breaker: a call the limiter
    /// rejects is not the dependency's failure.
    pub fn rate_limiter(
        self,
        limiter: RateLimiter,
    ) -> PipelineBuilder<Re, Br, RateLimiterStage, To, Bu, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: self.retry,
            retry_rejections: self.retry_rejections,
            circuit_breaker: self.circuit_breaker,
            rate_limiter: RateLimiterStage::new(limiter),
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }

    /// The timeout stage (tower's `Timeout`): each attempt that runs
    /// longer fails with [`PipelineError::TimedOut`](super::PipelineError::TimedOut),
    /// which the breaker counts as a failure and the retry may retry. It
    /// bounds the call, not the wait for a bulkhead permit (the bulkhead's
    /// `max_wait_duration` bounds that). Must be more than zero.
    pub fn timeout(self, timeout: Duration) -> PipelineBuilder<Re, Br, Rl, TimeoutStage, Bu, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: self.retry,
            retry_rejections: self.retry_rejections,
            circuit_breaker: self.circuit_breaker,
            rate_limiter: self.rate_limiter,
            timeout: TimeoutStage::new(timeout),
            bulkhead: self.bulkhead,
        }
    }

    /// The bulkhead stage (innermost): a permit is held only while the
    /// service runs, and each retry takes a new one.
    pub fn bulkhead(self, bulkhead: Bulkhead) -> PipelineBuilder<Re, Br, Rl, To, BulkheadStage, X> {
        PipelineBuilder {
            name: self.name,
            extra: self.extra,
            retry: self.retry,
            retry_rejections: self.retry_rejections,
            circuit_breaker: self.circuit_breaker,
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: BulkheadStage::new(bulkhead),
        }
    }

    /// Checks the stages and returns the pipeline.
    pub fn build(self) -> Result<Pipeline<Re, Br, Rl, To, Bu, X>, ConfigError>
    where
        Re: Slot<Retry>,
        To: Slot<Duration>,
    {
        if self.name.is_empty() {
            return Err(ConfigError::new(COMPONENT, "name", "must not be empty"));
        }
        let timeout = self.timeout.stage().copied();
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                COMPONENT,
                "timeout",
                "must be more than zero (leave the stage out for no timeout)",
            ));
        }
        Ok(Pipeline {
            extra: self.extra,
            shared: Arc::new(Shared {
                name: self.name,
                timeout,
            }),
            retry: self.retry.retrying_rejections(self.retry_rejections),
            circuit_breaker: self.circuit_breaker,
            rate_limiter: self.rate_limiter,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        })
    }
}

impl<Re, Br, Rl, To, Bu, X> fmt::Debug for PipelineBuilder<Re, Br, Rl, To, Bu, X>
where
    Re: Slot<Retry>,
    Br: Slot<CircuitBreaker>,
    Rl: Slot<RateLimiter>,
    To: Slot<Duration>,
    Bu: Slot<Bulkhead>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .field("retry", &self.retry.stage().map(Retry::name))
            .field("retry_rejections", &self.retry_rejections)
            .field(
                "circuit_breaker",
                &self.circuit_breaker.stage().map(|b| b.name()),
            )
            .field(
                "rate_limiter",
                &self.rate_limiter.stage().map(RateLimiter::name),
            )
            .field("timeout", &self.timeout.stage())
            .field("bulkhead", &self.bulkhead.stage().map(Bulkhead::name))
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

impl<Re, Br, Rl, To, Bu, X> PipelineBuilder<Re, Br, Rl, To, Bu, X> {
    /// Replaces the extra stages by `f` of them.
    fn map_extra<X2>(self, f: impl FnOnce(X) -> X2) -> PipelineBuilder<Re, Br, Rl, To, Bu, X2> {
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
type With<Re, Br, Rl, To, Bu, Ca, Co, Fb, He, Ad, Ch> =
    PipelineBuilder<Re, Br, Rl, To, Bu, ExtraStages<Ca, Co, Fb, He, Ad, Ch>>;

// Each method replaces one slot of eleven: the types say which, and naming
// them more briefly would hide it.
#[allow(clippy::type_complexity)]
impl<Re, Br, Rl, To, Bu, Ca, Co, Fb, He, Ad, Ch> With<Re, Br, Rl, To, Bu, Ca, Co, Fb, He, Ad, Ch> {
    /// The response cache stage (outermost): a fresh hit answers before any
    /// other stage runs, and a stale entry answers the failures and
    /// rejections of everything inside it (the chapter's "fallback to
    /// cached data"). Built by
    /// [`ResponseCache::layer`](crate::cache::ResponseCache::layer).
    #[cfg(feature = "cache")]
    pub fn cache<K, Res, F, C>(
        self,
        cache: CacheLayer<K, Res, F, C>,
    ) -> With<Re, Br, Rl, To, Bu, CacheLayer<K, Res, F, C>, Co, Fb, He, Ad, Ch> {
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
    ) -> With<Re, Br, Rl, To, Bu, Ca, CoalesceLayer<Req, K, F>, Fb, He, Ad, Ch> {
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
    ) -> With<Re, Br, Rl, To, Bu, Ca, Co, FallbackLayer<Res, K, F, C>, He, Ad, Ch> {
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
    ) -> With<Re, Br, Rl, To, Bu, Ca, Co, Fb, HedgeLayer<C, P>, Ad, Ch> {
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
    ) -> With<Re, Br, Rl, To, Bu, Ca, Co, Fb, He, AdaptiveConcurrencyLayer<C>, Ch> {
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
    ) -> With<Re, Br, Rl, To, Bu, Ca, Co, Fb, He, Ad, ChaosLayer<Res>> {
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
