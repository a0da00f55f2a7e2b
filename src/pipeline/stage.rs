//! The building blocks the pipeline stacks: a stage that may be left out,
//! the classifier each stage sees, and the retry policy of a pipeline
//! without a retry stage.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::classify::{Classify, Outcome};
use crate::error::BoxError;
use crate::retry::RetryPolicy;

/// A stage that is either in the pipeline (`On`) or left out (`Off`, the
/// inner service as it is). Unlike `tower::util::Either`, the two sides may
/// have different error types: both become [`BoxError`].
#[derive(Debug, Clone)]
pub enum Optional<On, Off> {
    /// The stage wraps the inner service.
    On(On),
    /// The stage is left out.
    Off(Off),
}

impl<On, Off, Req> Service<Req> for Optional<On, Off>
where
    On: Service<Req>,
    On::Error: Into<BoxError>,
    Off: Service<Req, Response = On::Response>,
    Off::Error: Into<BoxError>,
{
    type Response = On::Response;
    type Error = BoxError;
    type Future = OptionalFuture<On::Future, Off::Future>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Optional::On(service) => service.poll_ready(cx).map_err(Into::into),
            Optional::Off(service) => service.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        match self {
            Optional::On(service) => OptionalFuture::on(service.call(request)),
            Optional::Off(service) => OptionalFuture::off(service.call(request)),
        }
    }
}

pin_project! {
    /// The response future of an [`Optional`] stage.
    #[derive(Debug)]
    pub struct OptionalFuture<On, Off> {
        #[pin]
        kind: Kind<On, Off>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<On, Off> {
        On { #[pin] future: On },
        Off { #[pin] future: Off },
    }
}

impl<On, Off> OptionalFuture<On, Off> {
    #[inline(always)]
    fn on(future: On) -> Self {
        Self {
            kind: Kind::On { future },
        }
    }

    #[inline(always)]
    fn off(future: Off) -> Self {
        Self {
            kind: Kind::Off { future },
        }
    }

    /// The stage's future, if the stage is in the pipeline.
    pub(crate) fn stage(&self) -> Option<&On> {
        match &self.kind {
            Kind::On { future } => Some(future),
            Kind::Off { .. } => None,
        }
    }
}

impl<On, Off, T, E1, E2> Future for OptionalFuture<On, Off>
where
    On: Future<Output = Result<T, E1>>,
    E1: Into<BoxError>,
    Off: Future<Output = Result<T, E2>>,
    E2: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project().kind.project() {
            KindProj::On { future } => ready!(future.poll(cx)).map_err(Into::into),
            KindProj::Off { future } => ready!(future.poll(cx)).map_err(Into::into),
        })
    }
}

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
