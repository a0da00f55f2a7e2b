//! The building blocks the pipeline stacks: the core stages, each in its
//! own slot of the pipeline's type (tower's `Identity` when left out), the
//! classifier each stage sees, and the retry policy of a pipeline without a
//! retry stage.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::timeout::Timeout;
use tower_layer::{Identity, Layer};
use tower_service::Service;

use crate::bulkhead::{Bulkhead, BulkheadService};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitBreakerService};
use crate::classify::{Classify, DefaultClassifier, Outcome};
use crate::error::BoxError;
use crate::rate_limit::{RateLimiter, RateLimiterService};
use crate::retry::{CloneRequests, Retry, RetryLayer, RetryPolicy, RetryService};

/// The service at the bottom of a pipeline's core stages: the wrapped
/// service with its errors as [`BoxError`]s, the error every stage (and
/// every stage's classifier) sees.
#[derive(Debug, Clone)]
pub struct BoxErrors<S> {
    inner: S,
}

impl<S> BoxErrors<S> {
    #[inline]
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for BoxErrors<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxErrorsFuture<S::Future>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        BoxErrorsFuture {
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`BoxErrors`].
    #[derive(Debug)]
    pub struct BoxErrorsFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F, T, E> Future for BoxErrorsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().future.poll(cx)).map_err(Into::into))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A slot of a [`Pipeline`](super::Pipeline)'s core: the stage `T` it
/// holds, if any. Each core stage has its own slot in the pipeline's type:
/// tower's [`Identity`] when the stage is left out (it adds nothing, not
/// even a branch), or the stage ([`RetryStage`], [`BreakerStage`],
/// [`RateLimiterStage`], [`TimeoutStage`], [`BulkheadStage`]). Sealed.
pub trait Slot<T>: sealed::Sealed {
    /// The stage in this slot, if any.
    fn stage(&self) -> Option<&T>;

    /// The same slot with another stage's rejections retried or not: only
    /// the retry stage changes (see
    /// [`retry_rejections`](super::PipelineBuilder::retry_rejections)).
    fn retrying_rejections(self, retried: bool) -> Self
    where
        Self: Sized,
    {
        let _ = retried;
        self
    }
}

impl sealed::Sealed for Identity {}

impl<T> Slot<T> for Identity {
    #[inline]
    fn stage(&self) -> Option<&T> {
        None
    }
}

/// The retry stage of a [`Pipeline`](super::Pipeline): a
/// [`RetryLayer`] whose classifier is a [`StageClassifier`] around `RC`,
/// and `RP` its [`RetryPolicy`](crate::retry::RetryPolicy). Added by
/// [`PipelineBuilder::retry`](super::PipelineBuilder::retry).
pub struct RetryStage<RC = DefaultClassifier, RP = CloneRequests> {
    layer: RetryLayer<StageClassifier<RC>, RP>,
}

impl<RC: Clone, RP> RetryStage<RC, RP> {
    pub(crate) fn new(layer: RetryLayer<RC, RP>, retry_rejections: bool) -> Self {
        let classifier = StageClassifier::new(layer.classifier().clone(), retry_rejections);
        Self {
            layer: layer.with_classifier(classifier),
        }
    }
}

impl<RC, RP> RetryStage<RC, RP> {
    /// The same stage with `classifier` (rejections treated as before)
    /// and `policy`.
    #[cfg(feature = "reqwest")]
    pub(crate) fn with_classifier_and_policy<C, P>(
        self,
        classifier: C,
        policy: P,
    ) -> RetryStage<C, P> {
        let stage = self.layer.classifier().around(classifier);
        RetryStage {
            layer: self.layer.with_classifier(stage).with_policy(policy),
        }
    }
}

impl<RC, RP> sealed::Sealed for RetryStage<RC, RP> {}

impl<RC: Clone, RP> Slot<Retry> for RetryStage<RC, RP> {
    #[inline]
    fn stage(&self) -> Option<&Retry> {
        Some(self.layer.retry())
    }

    fn retrying_rejections(self, retried: bool) -> Self {
        let classifier = StageClassifier::new(self.layer.classifier().inner.clone(), retried);
        Self {
            layer: self.layer.with_classifier(classifier),
        }
    }
}

impl<S, RC: Clone, RP: Clone> Layer<S> for RetryStage<RC, RP> {
    type Service = RetryService<S, StageClassifier<RC>, RP>;

    #[inline]
    fn layer(&self, service: S) -> Self::Service {
        self.layer.layer(service)
    }
}

impl<RC: Clone, RP: Clone> Clone for RetryStage<RC, RP> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
        }
    }
}

impl<RC, RP> fmt::Debug for RetryStage<RC, RP> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RetryStage")
            .field(&self.layer.retry().name())
            .finish()
    }
}

/// The circuit breaker stage of a [`Pipeline`](super::Pipeline): a
/// [`CircuitBreakerLayer`] whose classifier is a [`StageClassifier`] around
/// `BC`. Added by
/// [`PipelineBuilder::circuit_breaker`](super::PipelineBuilder::circuit_breaker).
pub struct BreakerStage<BC = DefaultClassifier> {
    layer: CircuitBreakerLayer<StageClassifier<BC>>,
}

impl<BC: Clone> BreakerStage<BC> {
    pub(crate) fn new(layer: CircuitBreakerLayer<BC>) -> Self {
        let classifier = StageClassifier::new(layer.classifier().clone(), false);
        Self {
            layer: layer.with_classifier(classifier),
        }
    }
}

impl<BC> BreakerStage<BC> {
    /// The same stage with `classifier` (rejections treated as before).
    #[cfg(feature = "reqwest")]
    pub(crate) fn with_classifier<C>(self, classifier: C) -> BreakerStage<C> {
        let stage = self.layer.classifier().around(classifier);
        BreakerStage {
            layer: self.layer.with_classifier(stage),
        }
    }
}

impl<BC> sealed::Sealed for BreakerStage<BC> {}

impl<BC> Slot<CircuitBreaker> for BreakerStage<BC> {
    #[inline]
    fn stage(&self) -> Option<&CircuitBreaker> {
        Some(self.layer.breaker())
    }
}

impl<S, BC: Clone> Layer<S> for BreakerStage<BC> {
    type Service = CircuitBreakerService<S, StageClassifier<BC>>;

    #[inline]
    fn layer(&self, service: S) -> Self::Service {
        self.layer.layer(service)
    }
}

impl<BC: Clone> Clone for BreakerStage<BC> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
        }
    }
}

impl<BC> fmt::Debug for BreakerStage<BC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BreakerStage")
            .field(&self.layer.breaker().name())
            .finish()
    }
}

/// The rate limiter stage of a [`Pipeline`](super::Pipeline). Added by
/// [`PipelineBuilder::rate_limiter`](super::PipelineBuilder::rate_limiter).
#[derive(Clone)]
pub struct RateLimiterStage {
    limiter: RateLimiter,
}

impl RateLimiterStage {
    pub(crate) fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

impl sealed::Sealed for RateLimiterStage {}

impl Slot<RateLimiter> for RateLimiterStage {
    #[inline]
    fn stage(&self) -> Option<&RateLimiter> {
        Some(&self.limiter)
    }
}

impl<S> Layer<S> for RateLimiterStage {
    type Service = RateLimiterService<S>;

    #[inline]
    fn layer(&self, service: S) -> Self::Service {
        RateLimiterService::new(service, self.limiter.clone())
    }
}

impl fmt::Debug for RateLimiterStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateLimiterStage")
            .field(&self.limiter.name())
            .finish()
    }
}

/// The timeout stage of a [`Pipeline`](super::Pipeline): tower's
/// [`Timeout`] with this limit. Added by
/// [`PipelineBuilder::timeout`](super::PipelineBuilder::timeout).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutStage {
    timeout: Duration,
}

impl TimeoutStage {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl sealed::Sealed for TimeoutStage {}

impl Slot<Duration> for TimeoutStage {
    #[inline]
    fn stage(&self) -> Option<&Duration> {
        Some(&self.timeout)
    }
}

impl<S> Layer<S> for TimeoutStage {
    type Service = Timeout<S>;

    #[inline]
    fn layer(&self, service: S) -> Self::Service {
        Timeout::new(service, self.timeout)
    }
}

/// The bulkhead stage of a [`Pipeline`](super::Pipeline). Added by
/// [`PipelineBuilder::bulkhead`](super::PipelineBuilder::bulkhead).
#[derive(Clone)]
pub struct BulkheadStage {
    bulkhead: Bulkhead,
}

impl BulkheadStage {
    pub(crate) fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }
}

impl sealed::Sealed for BulkheadStage {}

impl Slot<Bulkhead> for BulkheadStage {
    #[inline]
    fn stage(&self) -> Option<&Bulkhead> {
        Some(&self.bulkhead)
    }
}

impl<S> Layer<S> for BulkheadStage {
    type Service = BulkheadService<S>;

    #[inline]
    fn layer(&self, service: S) -> Self::Service {
        BulkheadService::new(service, self.bulkhead.clone())
    }
}

impl fmt::Debug for BulkheadStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BulkheadStage")
            .field(&self.bulkhead.name())
            .finish()
    }
}

/// The response future of a pipeline's outermost core stage, which tells
/// how many attempts the call made (more than one only for the retry
/// stage's). Sealed: implemented for the futures of the core stages and of
/// [`BoxErrors`].
pub trait StageFuture: sealed::Sealed {
    /// The attempt in flight, or once the future has resolved, the number
    /// of attempts made.
    fn attempts(&self) -> u32 {
        1
    }
}

impl<S, Req, C, P> sealed::Sealed for crate::retry::ResponseFuture<S, Req, C, P> where
    S: Service<Req>
{
}
impl<S, Req, C, P> StageFuture for crate::retry::ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    #[inline]
    fn attempts(&self) -> u32 {
        crate::retry::ResponseFuture::attempts(self)
    }
}
impl<F, C> sealed::Sealed for crate::circuit_breaker::ResponseFuture<F, C> {}
impl<F, C> StageFuture for crate::circuit_breaker::ResponseFuture<F, C> {}
impl<F, P, E> sealed::Sealed for crate::future::AdmittedFuture<F, P, E> {}
impl<F, P, E> StageFuture for crate::future::AdmittedFuture<F, P, E> {}
impl<F> sealed::Sealed for tower::timeout::future::ResponseFuture<F> {}
impl<F> StageFuture for tower::timeout::future::ResponseFuture<F> {}
impl<F> sealed::Sealed for BoxErrorsFuture<F> {}
impl<F> StageFuture for BoxErrorsFuture<F> {}

/// The classifier a pipeline gives its retry and circuit breaker stages:
/// the user's classifier, except that another stage's rejection (any error
/// carrying a [`Rejected`](crate::error::Rejected) marker:
/// [`BreakerOpen`](crate::circuit_breaker::BreakerOpen),
/// [`RateLimited`](crate::rate_limit::RateLimited),
/// [`BulkheadFull`](crate::bulkhead::BulkheadFull) or a layer of your own)
/// is [`Outcome::Ignored`] unless the stage was told to treat it as a failure.
///
/// The breaker thus never counts the bulkhead's or the rate limiter's
/// rejections as the dependency's failures, and the retry does not retry
/// into an open breaker unless
/// [`retry_rejections`](super::PipelineBuilder::retry_rejections) is set.
#[derive(Debug, Clone, Copy)]
pub struct StageClassifier<C> {
    inner: C,
    rejections_are_failures: bool,
}

impl<C> StageClassifier<C> {
    pub(crate) fn new(inner: C, rejections_are_failures: bool) -> Self {
        Self {
            inner,
            rejections_are_failures,
        }
    }

    /// The same treatment of rejections around another classifier.
    #[cfg(feature = "reqwest")]
    pub(crate) fn around<C2>(&self, inner: C2) -> StageClassifier<C2> {
        StageClassifier::new(inner, self.rejections_are_failures)
    }
}

impl<Res, C> Classify<Res, BoxError> for StageClassifier<C>
where
    C: Classify<Res, BoxError>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Err(error) if !self.rejections_are_failures && crate::error::is_rejection(&**error) => {
                Outcome::Ignored
            }
            other => self.inner.classify(other),
        }
    }

    #[inline]
    fn forces_open(&self, result: Result<&Res, &BoxError>) -> bool {
        self.inner.forces_open(result)
    }

    #[inline]
    fn hold_until_end(
        &self,
        response: &Res,
        permit: crate::circuit_breaker::CallPermit,
    ) -> Option<crate::circuit_breaker::CallPermit> {
        self.inner.hold_until_end(response, permit)
    }
}

/// The retry policy of a [`Pipeline`](super::Pipeline) built without a
/// retry stage: it copies no request, so the pipeline accepts any request
/// type, `Clone` or not (a `reqwest::Request`, a `tonic::Request`).
///
/// It is the builder's policy until
/// [`retry`](super::PipelineBuilder::retry) adds a stage, whose own policy
/// then decides how requests are copied ([`CloneRequests`](crate::retry::CloneRequests)
/// needs `Req: Clone`; `HttpRetryPolicy`, with the `http` feature, copies
/// `http::Request`s whose body it can copy). Given to a retry layer of its
/// own, it sends every request once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoRetry;

impl<Req, Res, Err> RetryPolicy<Req, Res, Err> for NoRetry {
    #[inline]
    fn clone_request(&self, _request: &Req) -> Option<Req> {
        None
    }

    #[inline]
    fn may_retry(&self, _request: &Req) -> bool {
        false
    }
}
