//! tonic clients behind palisade's layers, in one line.
//!
//! [`channel`] (or [`Pipeline::tonic`](crate::pipeline::Pipeline::tonic))
//! wraps a tonic `Channel`, or any gRPC service such as a balancer of
//! channels, in a [`Pipeline`](crate::pipeline::Pipeline); tonic's
//! generated clients take the result as they take a channel:
//!
//! ```
//! use palisade::circuit_breaker::CircuitBreaker;
//! use palisade::classify::GrpcStatusClassifier;
//! use palisade::pipeline::Pipeline;
//! use palisade::retry::{Retry, RetryConfig};
//! use palisade::tonic::GrpcRetryPolicy;
//! use tonic_health::pb::health_client::HealthClient;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! # let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let pipeline = Pipeline::builder("health")
//!     .retry(GrpcRetryPolicy::new().layer(Retry::new("health", RetryConfig::default())))
//!     .circuit_breaker(CircuitBreaker::with_defaults("health").layer().with_classifier(GrpcStatusClassifier::new()))
//!     .build()?;
//! let health = HealthClient::new(palisade::tonic::channel(channel, pipeline));
//! # drop(health);
//! # Ok(())
//! # }
//! ```
//!
//! What each part does for gRPC:
//!
//! * **Retry** ([`GrpcRetryPolicy`]): as the gRPC retry design (gRFC A6)
//!   says. Retryable status codes (default `UNAVAILABLE`) read from the
//!   response headers (A6 commits a call once headers arrive), an optional
//!   allow-list of methods (`/package.Service/Method`), no HTTP-method
//!   guard (every gRPC call is a `POST`), request bodies buffered so they
//!   can be sent again, and `grpc-retry-pushback-ms` honoured: a delay
//!   after which the backoff restarts, or, negative or unreadable, "do not
//!   retry".
//! * **Circuit breaker** with a
//!   [`GrpcStatusClassifier`](crate::classify::GrpcStatusClassifier): a
//!   status in the response headers (a "trailers-only" response) is
//!   recorded at once; a status in the trailers (HTTP 200, the messages,
//!   then `grpc-status`: how most servers send errors) is recorded when the
//!   response body ends, and the breaker's permit is held until then
//!   ([`RecordAtEnd`](crate::circuit_breaker::RecordAtEnd)).
//! * **Errors** are [`tonic::Status`]es with the code a gRPC caller
//!   expects ([`to_status`]): an open breaker and no healthy instance are
//!   `UNAVAILABLE`, a full bulkhead and the rate limiter
//!   `RESOURCE_EXHAUSTED`, timeouts `DEADLINE_EXCEEDED`. The palisade
//!   error is the status's source, found with [`crate::find_cause`].
//!
//! With the `discovery` feature, registries check instances with the gRPC
//! health protocol: [`HealthCheck::Grpc`](crate::discovery::HealthCheck::Grpc).
//!
//! # Layout
//!
//! `channel.rs` holds [`GrpcChannel`] and its futures, `retry.rs`
//! [`GrpcRetryPolicy`], `status.rs` the mapping of errors to statuses.
//! The trailer-aware recording is the circuit breaker's
//! ([`crate::circuit_breaker::body`]), and the classifier is
//! [`crate::classify::GrpcStatusClassifier`].

mod channel;
mod retry;
mod status;

pub use self::channel::{
    DEFAULT_BUFFER_LIMIT, GrpcChannel, RecordResponses, RecordResponsesFuture, ResponseBody,
    ResponseFuture, channel,
};
pub use self::retry::{GrpcRetryPolicy, GrpcRetryPolicyBuilder};
pub use self::status::{rejection_code, to_status};
