//! [`GrpcChannel`]: a tonic channel behind a [`Pipeline`], usable by tonic's
//! generated clients.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::circuit_breaker::RecordAtEnd;
use crate::error::BoxError;
use crate::future::BoxFuture;
use crate::pipeline::Pipeline;
use crate::retry::{BufferBody, BufferBodyLayer, RetryBody};

use super::status::to_status;

/// The request bodies [`channel`] buffers so that a call can be retried:
/// 64 KiB. A larger request is sent once; see
/// [`GrpcChannel::with_buffer_limit`].
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// The body of a [`GrpcChannel`]'s responses: the channel's own body, which
/// records the call's outcome on the circuit breaker when it ends (a status
/// in trailers).
pub type ResponseBody<B = tonic::body::Body> = RecordAtEnd<B>;

/// Wraps a tonic channel (or any gRPC service, such as a balancer of
/// channels) in `pipeline`'s stages; the result is what tonic's generated
/// clients take. See the [module docs](super) and [`GrpcChannel`].
///
/// ```
/// use palisade::circuit_breaker::CircuitBreaker;
/// use palisade::classify::GrpcStatusClassifier;
/// use palisade::pipeline::Pipeline;
/// use palisade::retry::{Retry, RetryConfig};
/// use palisade::tonic::GrpcRetryPolicy;
/// use tonic_health::pb::health_client::HealthClient;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let pipeline = Pipeline::builder("health")
///     .retry(GrpcRetryPolicy::new().layer(Retry::new("health", RetryConfig::default())))
///     .circuit_breaker(CircuitBreaker::with_defaults("health").layer().with_classifier(GrpcStatusClassifier::new()))
///     .build()?;
/// let health = HealthClient::new(palisade::tonic::channel(channel, pipeline));
/// # drop(health);
/// # Ok(())
/// # }
/// ```
pub fn channel<S, Re, Br, Rl, To, Bu>(
    inner: S,
    pipeline: Pipeline<Re, Br, Rl, To, Bu>,
) -> GrpcChannel<S, Pipeline<Re, Br, Rl, To, Bu>>
where
    Pipeline<Re, Br, Rl, To, Bu>: Layer<RecordResponses<S>>,
{
    GrpcChannel::new(inner, &pipeline)
}

impl<Re, Br, Rl, To, Bu> Pipeline<Re, Br, Rl, To, Bu> {
    /// Wraps a tonic channel in this pipeline: [`palisade::tonic::channel`](channel)
    /// (feature `tonic`).
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn tonic<S>(&self, inner: S) -> GrpcChannel<S, Self>
    where
        Self: Layer<RecordResponses<S>>,
    {
        GrpcChannel::new(inner, self)
    }
}

/// A gRPC service behind a [`Pipeline`]'s stages, built by [`channel`].
///
/// It takes `http::Request<tonic::body::Body>` and returns
/// `http::Response<`[`ResponseBody`]`>`, so it is a
/// `tonic::client::GrpcService` that any generated client accepts. Inside,
/// outermost first:
///
/// 1. Request bodies are read into memory, up to
///    [`DEFAULT_BUFFER_LIMIT`] (or [`with_buffer_limit`](Self::with_buffer_limit)),
///    so the retry stage can send them again ([`BufferBodyLayer`]).
/// 2. The pipeline: retry, circuit breaker, rate limiter, timeout,
///    bulkhead. Give the retry stage [`GrpcRetryPolicy::layer`](super::GrpcRetryPolicy::layer)
///    and the breaker a [`GrpcStatusClassifier`](crate::classify::GrpcStatusClassifier).
/// 3. Each response's body is wrapped in a [`RecordAtEnd`], so the breaker
///    records a status sent in trailers when the body ends.
///
/// Errors are [`Status`]es ([`to_status`](super::to_status)): an open
/// breaker or no healthy instance is `UNAVAILABLE`, a full bulkhead or the
/// rate limiter `RESOURCE_EXHAUSTED`, a timeout `DEADLINE_EXCEEDED`, each
/// with the [`PipelineError`](crate::pipeline::PipelineError) as its
/// source.
///
/// `P` is the [`Pipeline`]'s type.
pub struct GrpcChannel<S, P = Pipeline>
where
    P: Layer<RecordResponses<S>>,
{
    inner: BufferBody<P::Service>,
}

impl<S, P: Layer<RecordResponses<S>>> GrpcChannel<S, P> {
    /// Wraps `inner` in `pipeline`, buffering request bodies up to
    /// [`DEFAULT_BUFFER_LIMIT`].
    pub fn new(inner: S, pipeline: &P) -> Self {
        Self::with_buffer_limit(inner, pipeline, DEFAULT_BUFFER_LIMIT)
    }

    /// Wraps `inner` in `pipeline`, buffering request bodies up to `limit`
    /// bytes; a longer request is sent once, never retried.
    pub fn with_buffer_limit(inner: S, pipeline: &P, limit: usize) -> Self {
        let service = pipeline.layer(RecordResponses { inner });
        Self {
            inner: BufferBodyLayer::new(limit).layer(service),
        }
    }
}

impl<S, RB, P> Service<Request<tonic::body::Body>> for GrpcChannel<S, P>
where
    S: Service<Request<tonic::body::Body>, Response = Response<RB>>,
    P: Layer<RecordResponses<S>>,
    RB: Send + 'static,
    P::Service: Service<
            Request<RetryBody<tonic::body::Body>>,
            Response = Response<RecordAtEnd<RB>>,
            Error = crate::pipeline::PipelineError,
        > + Clone
        + Send
        + 'static,
    <P::Service as Service<Request<RetryBody<tonic::body::Body>>>>::Future: Send,
{
    type Response = Response<RecordAtEnd<RB>>;
    type Error = Status;
    type Future = ResponseFuture<BoxFuture<'static, Result<Response<RecordAtEnd<RB>>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx).map_err(to_status)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

impl<S, P> Clone for GrpcChannel<S, P>
where
    P: Layer<RecordResponses<S>>,
    P::Service: Clone,
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S, P: Layer<RecordResponses<S>>> fmt::Debug for GrpcChannel<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcChannel").finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of a [`GrpcChannel`]: errors become [`Status`]es.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().inner.poll(cx)).map_err(to_status))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The innermost part of a [`GrpcChannel`]: sends a buffered request on
/// the channel as a tonic body and wraps each response's body in a
/// [`RecordAtEnd`].
#[derive(Debug, Clone)]
pub struct RecordResponses<S> {
    inner: S,
}

impl<S, RB> Service<Request<RetryBody<tonic::body::Body>>> for RecordResponses<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<RB>>,
{
    type Response = Response<RecordAtEnd<RB>>;
    type Error = S::Error;
    type Future = RecordResponsesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RetryBody<tonic::body::Body>>) -> Self::Future {
        RecordResponsesFuture {
            inner: self.inner.call(request.map(tonic::body::Body::new)),
        }
    }
}

pin_project! {
    /// The response future of [`RecordResponses`].
    pub struct RecordResponsesFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> Future for RecordResponsesFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RecordAtEnd<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().inner.poll(cx)).map(RecordAtEnd::wrap))
    }
}

impl<F> fmt::Debug for RecordResponsesFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordResponsesFuture")
            .finish_non_exhaustive()
    }
}
