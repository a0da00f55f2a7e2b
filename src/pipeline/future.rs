//! [`ResponseFuture`]: runs the stages inside the call's span.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;
use crate::retry::RetryPolicy;

use super::error::PipelineError;
use super::layer::BreakerStage;
use super::stage::{OptionalFuture, StageClassifier};

type RetryFuture<S, Req, RC, RP, BC> =
    crate::retry::ResponseFuture<BreakerStage<S, BC>, Req, StageClassifier<RC>, RP>;

/// The retry stage's future, or the breaker stage's when there is no retry.
type StagesFuture<S, Req, RC, RP, BC> =
    OptionalFuture<RetryFuture<S, Req, RC, RP, BC>, <BreakerStage<S, BC> as Service<Req>>::Future>;

pin_project! {
    /// The response future of a [`PipelineService`](super::PipelineService):
    /// polls the stages inside the call's `pipeline` span and records on it
    /// the attempts made, the outcome and the stage it came from.
    pub struct ResponseFuture<S, Req, RC, RP, BC>
    where
        BreakerStage<S, BC>: Service<Req>,
    {
        #[pin]
        inner: StagesFuture<S, Req, RC, RP, BC>,
        // `None` when no subscriber wanted the span: nothing to enter,
        // record or drop.
        span: Option<tracing::Span>,
        timeout: Option<Duration>,
    }
}

impl<S, Req, RC, RP, BC> ResponseFuture<S, Req, RC, RP, BC>
where
    BreakerStage<S, BC>: Service<Req>,
{
    #[inline(always)]
    pub(crate) fn new(
        inner: StagesFuture<S, Req, RC, RP, BC>,
        span: Option<tracing::Span>,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            inner,
            span,
            timeout,
        }
    }
}

impl<S, Req, RC, RP, BC> Future for ResponseFuture<S, Req, RC, RP, BC>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    RC: Classify<S::Response, BoxError> + Clone,
    RP: RetryPolicy<Req, S::Response, BoxError> + Clone,
    BC: Classify<S::Response, BoxError> + Clone,
{
    type Output = Result<S::Response, PipelineError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(span) = this.span.as_ref() else {
            let result = ready!(this.inner.as_mut().poll(cx));
            return Poll::Ready(
                result.map_err(|error| PipelineError::from_stages(error, *this.timeout)),
            );
        };
        let _entered = span.enter();
        let result = ready!(this.inner.as_mut().poll(cx));
        let result = result.map_err(|error| PipelineError::from_stages(error, *this.timeout));
        if !span.is_disabled() {
            let attempts = this
                .inner
                .as_ref()
                .get_ref()
                .stage()
                .map_or(1, |retry| retry.attempts());
            span.record("attempts", attempts);
            let (outcome, stage) = match &result {
                Ok(_) => ("ok", "service"),
                Err(error) if error.is_rejection() => ("rejected", error.stage().as_str()),
                Err(PipelineError::TimedOut(timed_out)) => {
                    ("timed_out", timed_out.stage().as_str())
                }
                Err(error) => ("failed", error.stage().as_str()),
            };
            span.record("outcome", outcome);
            span.record("stage", stage);
            tracing::debug!(attempts, outcome, stage, "pipeline call finished");
        }
        Poll::Ready(result)
    }
}

impl<S, Req, RC, RP, BC> fmt::Debug for ResponseFuture<S, Req, RC, RP, BC>
where
    BreakerStage<S, BC>: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}
