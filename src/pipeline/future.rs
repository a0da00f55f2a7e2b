//! [`ResponseFuture`]: runs the stages inside the call's span.

use std::fmt;
use std::future::Future;
use std::mem::{self, ManuallyDrop};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::error::BoxError;

use super::error::PipelineError;
use super::stage::StageFuture;

pin_project! {
    /// The response future of a [`PipelineService`](super::PipelineService):
    /// polls the core stages' future `F` (inside the call's span, if a
    /// subscriber wanted one) and records on the span the attempts made,
    /// the outcome and the stage it came from.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Empty when no subscriber wanted the span: nothing to enter,
        // record or drop.
        span: CallSpan,
        timeout: Option<Duration>,
    }
}

impl<F> ResponseFuture<F> {
    #[inline(always)]
    pub(crate) fn new(inner: F, span: Option<tracing::Span>, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            span: CallSpan(ManuallyDrop::new(span)),
            timeout,
        }
    }
}

/// The call's span, if a subscriber wanted one. Its drop checks for one
/// in line and drops it out of line: `Option<Span>`'s own drop is too
/// large to be inlined, and called on every call, span or not.
struct CallSpan(ManuallyDrop<Option<tracing::Span>>);

impl Drop for CallSpan {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            drop_span(&mut self.0);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_span(slot: &mut ManuallyDrop<Option<tracing::Span>>) {
    drop(ManuallyDrop::into_inner(mem::replace(
        slot,
        ManuallyDrop::new(None),
    )));
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, BoxError>> + StageFuture,
{
    type Output = Result<T, PipelineError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.span.0.is_some() {
            return self.poll_in_span(cx);
        }
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(result.map_err(|error| PipelineError::from_stages(error, *this.timeout)))
    }
}

impl<F, T> ResponseFuture<F>
where
    F: Future<Output = Result<T, BoxError>> + StageFuture,
{
    /// [`poll`](Future::poll) with a subscriber listening: inside the
    /// call's span, recording the call's outcome on it. Kept apart so that
    /// the stages' own polls are inlined in the path without a span.
    #[inline(never)]
    fn poll_in_span(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, PipelineError>> {
        let mut this = self.project();
        let Some(span) = this.span.0.as_ref() else {
            unreachable!("polled in a span without one");
        };
        let _entered = span.enter();
        let result = ready!(this.inner.as_mut().poll(cx));
        let result = result.map_err(|error| PipelineError::from_stages(error, *this.timeout));
        if !span.is_disabled() {
            let attempts = this.inner.as_ref().get_ref().attempts();
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

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("span", &*self.span.0)
            .finish_non_exhaustive()
    }
}
