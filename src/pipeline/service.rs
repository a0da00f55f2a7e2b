//! [`PipelineService`]: the stacked stages, with one span per call.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::error::BoxError;
use crate::retry::RetryPolicy;

use super::error::PipelineError;
use super::future::ResponseFuture;
use super::layer::{BreakerStage, RetryStage, Shared};

/// A service wrapped in a [`Pipeline`](super::Pipeline)'s stages; its
/// errors are [`PipelineError`]s.
pub struct PipelineService<S, RC, RP, BC> {
    inner: RetryStage<S, RC, RP, BC>,
    shared: Arc<Shared>,
}

impl<S, RC, RP, BC> PipelineService<S, RC, RP, BC> {
    pub(crate) fn new(inner: RetryStage<S, RC, RP, BC>, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<S, RC, RP, BC, Req> Service<Req> for PipelineService<S, RC, RP, BC>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    RC: Classify<S::Response, BoxError> + Clone,
    RP: RetryPolicy<Req, S::Response, BoxError> + Clone,
    BC: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = PipelineError;
    type Future = ResponseFuture<S, Req, RC, RP, BC>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| PipelineError::from_stages(error, self.shared.timeout))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        // Without a subscriber that wants it, no span at all: a disabled
        // span still costs its bookkeeping on every call (and, with
        // tracing's `log` feature, a `log` check at each step of its life).
        if !tracing::span_enabled!(tracing::Level::DEBUG) {
            return ResponseFuture::new(self.inner.call(request), None, self.shared.timeout);
        }
        self.call_in_span(request)
    }
}

impl<S, RC, RP, BC> PipelineService<S, RC, RP, BC> {
    /// [`call`](Service::call) with a subscriber listening: in the call's
    /// `pipeline` span.
    #[inline(never)]
    fn call_in_span<Req>(&mut self, request: Req) -> ResponseFuture<S, Req, RC, RP, BC>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        RC: Classify<S::Response, BoxError> + Clone,
        RP: RetryPolicy<Req, S::Response, BoxError> + Clone,
        BC: Classify<S::Response, BoxError> + Clone,
    {
        let span = tracing::debug_span!(
            "pipeline",
            name = %self.shared.name,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            stage = tracing::field::Empty,
        );
        // The first attempt's stages run their `call` inside the span too.
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture::new(future, Some(span), self.shared.timeout)
    }
}

impl<S: Clone, RC: Clone, RP: Clone, BC: Clone> Clone for PipelineService<S, RC, RP, BC>
where
    BreakerStage<S, BC>: Clone,
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, RC, RP, BC> fmt::Debug for PipelineService<S, RC, RP, BC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineService")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}
