//! Buffering request bodies so that `http::Request`s with streaming bodies
//! (hyper's `Incoming`, tonic's `Body`) can be retried.
//!
//! A streaming body can be sent only once. [`BufferBodyLayer`] reads each
//! request body into memory, up to a limit, before the request goes on, and
//! hands the rest of the stack a [`RetryBody`]: a body that
//! [`HttpRetryPolicy`](super::HttpRetryPolicy) can copy for another attempt.
//! A body longer than the limit is not refused: what was read is sent
//! first, then the rest of the stream, and the request is sent once.
//!
//! Place it outside the retry layer:
//!
//! ```
//! use palisade::classify::HttpStatusClassifier;
//! use palisade::retry::{BufferBodyLayer, HttpRetryPolicy, Retry, RetryBody, RetryConfig};
//! use tower::ServiceBuilder;
//!
//! // Stands in for a client whose requests carry a `RetryBody`.
//! let client = tower::service_fn(|_request: http::Request<RetryBody<String>>| async {
//!     Ok::<_, std::io::Error>(http::Response::new(()))
//! });
//! let retry = Retry::new("orders", RetryConfig::default())
//!     .layer()
//!     .with_classifier(HttpStatusClassifier::new())
//!     .with_policy(HttpRetryPolicy);
//! let orders = ServiceBuilder::new()
//!     .layer(BufferBodyLayer::new(64 * 1024)) // bodies of up to 64 KiB can be re-sent
//!     .layer(retry)
//!     .service(client);
//! # drop(orders);
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;
use crate::future::BoxFuture;

pin_project! {
    /// A request body that is either held in memory, and so can be copied
    /// for another attempt ([`try_clone`](Self::try_clone)), or the rest
    /// of a stream that was too long to hold, sent once.
    pub struct RetryBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Streaming { prefix: Option<Bytes>, #[pin] rest: B },
    }
}

impl<B> RetryBody<B> {
    /// A body held in memory.
    pub fn buffered(data: Bytes) -> Self {
        Self {
            kind: Kind::Buffered {
                data: Some(data),
                trailers: None,
            },
        }
    }

    /// A body that streams `rest` after `prefix` (the part already read).
    pub fn streaming(prefix: Bytes, rest: B) -> Self {
        Self {
            kind: Kind::Streaming {
                prefix: Some(prefix),
                rest,
            },
        }
    }

    /// Whether the whole body is in memory (and so can be copied).
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy of a body held in memory; `None` for a streaming one.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data, trailers } => Some(Self {
                kind: Kind::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Kind::Streaming { .. } => None,
        }
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Streaming { prefix, rest } => {
                if let Some(prefix) = prefix.take().filter(|p| !p.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                rest.poll_frame(cx)
                    .map(|frame| frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Kind::Streaming { prefix, rest } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && rest.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { prefix, rest } => {
                let prefix = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(prefix));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(prefix));
                }
                hint
            }
        }
    }
}

impl<B> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Buffered { data, .. } => f
                .debug_struct("RetryBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Streaming { .. } => f.write_str("RetryBody::Streaming"),
        }
    }
}

/// Reads `body` into memory up to `limit` bytes. A body that ends within
/// the limit comes back buffered; a longer one comes back streaming, with
/// what was read as its prefix.
pub async fn buffer_body<B>(body: B, limit: usize) -> Result<RetryBody<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = body;
    if body.size_hint().lower() > limit as u64 {
        return Ok(RetryBody::streaming(Bytes::new(), body));
    }
    let mut buffer = BytesMut::new();
    loop {
        if buffer.len() > limit {
            return Ok(RetryBody::streaming(buffer.freeze(), body));
        }
        match body.frame().await {
            None => return Ok(RetryBody::buffered(buffer.freeze())),
            Some(frame) => {
                let frame = frame.map_err(Into::into)?;
                match frame.into_data() {
                    Ok(data) => buffer.extend_from_slice(&data),
                    Err(frame) => {
                        // Trailers end the body.
                        let trailers = frame.into_trailers().ok();
                        return Ok(RetryBody {
                            kind: Kind::Buffered {
                                data: Some(buffer.freeze()),
                                trailers,
                            },
                        });
                    }
                }
            }
        }
    }
}

/// Buffers request bodies, up to a limit, so the layers inside can retry
/// them; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Buffers bodies of up to `limit` bytes; longer ones stream, sent once.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<RetryBody<B>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service takes the call; a clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = buffer_body(body, limit).await?;
            inner
                .call(Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}
