//! [`PipelineService`]: the stacked stages, with one span per call.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::error::BoxError;

use super::error::PipelineError;
use super::future::ResponseFuture;
use super::layer::Shared;
use super::stage::StageFuture;

/// A service wrapped in a [`Pipeline`](super::Pipeline)'s core stages
/// (`C`, see [`CoreStages`](super::CoreStages)); its errors are
/// [`PipelineError`]s.
pub struct PipelineService<C> {
    inner: C,
    shared: Arc<Shared>,
}

impl<C> PipelineService<C> {
    pub(crate) fn new(inner: C, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<C, Req> Service<Req> for PipelineService<C>
where
    C: Service<Req, Error = BoxError>,
    C::Future: StageFuture,
{
    type Response = C::Response;
    type Error = PipelineError;
    type Future = ResponseFuture<C::Future>;

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
        // The inline check is the global level filter alone (one relaxed
        // load), so that `call` stays small enough to inline into the
        // caller; whether a subscriber wants this span is asked out of line.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            return self.call_if_traced(request);
        }
        ResponseFuture::new(self.inner.call(request), None, self.shared.timeout)
    }
}

impl<C> PipelineService<C> {
    /// [`call`](Service::call) when some subscriber takes `DEBUG` events:
    /// in the call's span if one wants it, without otherwise.
    #[inline(never)]
    fn call_if_traced<Req>(&mut self, request: Req) -> ResponseFuture<C::Future>
    where
        C: Service<Req, Error = BoxError>,
    {
        if tracing::span_enabled!(tracing::Level::DEBUG) {
            self.call_in_span(request)
        } else {
            ResponseFuture::new(self.inner.call(request), None, self.shared.timeout)
        }
    }

    /// [`call`](Service::call) with a subscriber listening: in the call's
    /// `pipeline` span.
    #[inline(never)]
    fn call_in_span<Req>(&mut self, request: Req) -> ResponseFuture<C::Future>
    where
        C: Service<Req, Error = BoxError>,
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

impl<C: Clone> Clone for PipelineService<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for PipelineService<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineService")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}
