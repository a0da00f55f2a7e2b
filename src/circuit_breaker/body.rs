//! Recording a call's outcome when its response body ends, for responses
//! whose outcome comes last: a gRPC status sent in trailers (HTTP 200, then
//! the messages, then `grpc-status`), which is how most servers send their
//! errors. tower-http's `ClassifyEos` does the same for its trace layer.
//!
//! [`RecordAtEnd::wrap`] wraps a response's body and puts a
//! [`HeldUntilEnd`] in its extensions. A circuit breaker whose classifier
//! holds permits for such responses
//! ([`Classify::hold_until_end`](crate::classify::Classify::hold_until_end),
//! as [`GrpcStatusClassifier`](crate::classify::GrpcStatusClassifier) does)
//! hands its [`CallPermit`] to the `HeldUntilEnd` instead of recording at
//! once; the body records the outcome its trailers tell when it ends:
//!
//! | the body | recorded |
//! |---|---|
//! | ends with trailers | the outcome the classifier reads in them |
//! | ends without trailers | the classifier's outcome for no trailers |
//! | fails | a retryable failure (the classifier's [`ClassifyEnd::classify_body_error`]) |
//! | is dropped before it ends | nothing: the permit is released, as a dropped call's is |
//!
//! The permit, and so a HALF_OPEN trial slot, is held until then.
//!
//! ```
//! use http_body_util::{BodyExt, Full};
//! use palisade::circuit_breaker::{CircuitBreaker, RecordAtEnd};
//! use palisade::classify::{Classify, GrpcStatusClassifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let breaker = CircuitBreaker::with_defaults("greeter");
//! let classifier = GrpcStatusClassifier::new();
//! let mut trailers = http::HeaderMap::new();
//! trailers.insert("grpc-status", "14".parse()?); // UNAVAILABLE, at the end
//! let body = Full::new(bytes::Bytes::from_static(b"message"))
//!     .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
//! let response = RecordAtEnd::wrap(http::Response::new(body));
//!
//! // The headers say nothing: the classifier holds the permit.
//! let permit = breaker.try_acquire()?;
//! let held = Classify::<_, palisade::BoxError>::hold_until_end(&classifier, &response, permit);
//! assert!(held.is_none());
//! assert_eq!(breaker.metrics().failed_calls, 0);
//!
//! // Reading the body to its end records the failure.
//! response.into_body().collect().await?;
//! assert_eq!(breaker.metrics().failed_calls, 1);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use pin_project_lite::pin_project;

use crate::classify::Outcome;
use crate::error::BoxError;

use super::admission::CallPermit;

/// Decides the outcome of a call at the end of its response body.
pub trait ClassifyEnd {
    /// The outcome told by the body's trailers (`None`: the body ended
    /// without any).
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Outcome;

    /// The outcome of a body that failed before its end. Default: a
    /// retryable failure.
    fn classify_body_error(&self, error: &BoxError) -> Outcome {
        let _ = error;
        Outcome::Failure { retryable: true }
    }
}

type Held = (CallPermit, Box<dyn ClassifyEnd + Send + Sync>);

/// The permits a response's body holds until it ends; found in the
/// extensions of a response wrapped by [`RecordAtEnd::wrap`]. Clones share
/// the same permits.
#[derive(Clone, Default)]
pub struct HeldUntilEnd {
    held: Arc<Mutex<Vec<Held>>>,
}

impl HeldUntilEnd {
    /// Holds `permit` until the body ends, then records the outcome
    /// `classifier` reads at the end.
    pub fn hold(&self, permit: CallPermit, classifier: impl ClassifyEnd + Send + Sync + 'static) {
        self.held.lock().push((permit, Box::new(classifier)));
    }

    /// How many permits are held.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether no permit is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn record(&self, outcome: impl Fn(&dyn ClassifyEnd) -> Outcome) {
        let held = std::mem::take(&mut *self.held.lock());
        for (permit, classifier) in held {
            permit.record(outcome(&*classifier));
        }
    }
}

impl fmt::Debug for HeldUntilEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldUntilEnd")
            .field("permits", &self.len())
            .finish()
    }
}

pin_project! {
    /// A response body that records the outcome of the calls whose permits
    /// its [`HeldUntilEnd`] holds when it ends; see the [module docs](self).
    pub struct RecordAtEnd<B> {
        #[pin]
        inner: B,
        held: HeldUntilEnd,
        ended: bool,
    }
}

impl<B> RecordAtEnd<B> {
    /// Wraps `body`; permits handed to `held` are recorded when it ends.
    pub fn new(inner: B, held: HeldUntilEnd) -> Self {
        Self {
            inner,
            held,
            ended: false,
        }
    }

    /// Wraps `response`'s body and puts its [`HeldUntilEnd`] in the
    /// response's extensions, where a classifier finds it.
    pub fn wrap(response: Response<B>) -> Response<Self> {
        let held = HeldUntilEnd::default();
        let mut response = response.map(|body| Self::new(body, held.clone()));
        response.extensions_mut().insert(held);
        response
    }

    /// The permits this body holds.
    pub fn held(&self) -> &HeldUntilEnd {
        &self.held
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> Body for RecordAtEnd<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if *this.ended {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match frame {
            None => {
                *this.ended = true;
                this.held.record(|c| c.classify_end(None));
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    *this.ended = true;
                    this.held.record(|c| c.classify_end(Some(trailers)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                *this.ended = true;
                let error = error.into();
                this.held.record(|c| c.classify_body_error(&error));
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for RecordAtEnd<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordAtEnd")
            .field("held", &self.held)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;
    use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
    use crate::classify::{Classify, GrpcStatusClassifier};

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "trailers",
            CircuitBreakerConfig::builder()
                .minimum_number_of_calls(1)
                .permitted_number_of_calls_in_half_open_state(1)
                .build()
                .expect("valid config"),
        )
    }

    /// Whether the gRPC classifier holds `permit` until `response` ends.
    fn held<B>(response: &Response<B>, permit: CallPermit) -> bool {
        Classify::<Response<B>, BoxError>::hold_until_end(
            &GrpcStatusClassifier::new(),
            response,
            permit,
        )
        .is_none()
    }

    fn with_status(code: &'static str) -> impl Body<Data = Bytes, Error = Infallible> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(code));
        Full::new(Bytes::from_static(b"m")).with_trailers(async move { Some(Ok(trailers)) })
    }

    #[tokio::test]
    async fn unavailable_in_trailers_is_recorded_when_the_body_ends() {
        let breaker = breaker();
        let response = RecordAtEnd::wrap(Response::new(with_status("14")));
        let permit = breaker.try_acquire().expect("closed");
        assert!(held(&response, permit));
        assert_eq!(breaker.state(), CircuitState::Closed);
        response.into_body().collect().await.expect("body");
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test]
    async fn ok_in_trailers_is_a_success() {
        let breaker = breaker();
        let response = RecordAtEnd::wrap(Response::new(with_status("0")));
        let permit = breaker.try_acquire().expect("closed");
        assert!(held(&response, permit));
        response.into_body().collect().await.expect("body");
        assert_eq!(breaker.metrics().successful_calls, 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_releases_the_half_open_slot_unrecorded() {
        let breaker = breaker();
        breaker.transition_to_open().expect("from closed");
        breaker.transition_to_half_open().expect("from open");
        let frames = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        let response = RecordAtEnd::wrap(Response::new(StreamBody::new(frames)));
        let permit = breaker.try_acquire().expect("the one trial");
        assert!(held(&response, permit));
        assert!(breaker.try_acquire().is_err(), "the trial slot is held");
        drop(response);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(breaker.try_acquire().is_ok(), "the slot came back");
    }

    #[tokio::test]
    async fn a_failing_body_records_a_failure() {
        let breaker = breaker();
        let frames =
            futures::stream::iter([Err::<Frame<Bytes>, _>(std::io::Error::other("reset"))]);
        let response = RecordAtEnd::wrap(Response::new(StreamBody::new(frames)));
        let permit = breaker.try_acquire().expect("closed");
        assert!(held(&response, permit));
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(breaker.metrics().failed_calls, 1);
    }
}
