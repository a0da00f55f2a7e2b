//! An ordered resilience pipeline: every stage, in the right order.
//!
//! The order of resilience layers changes what they do, and it is easy to
//! get wrong: a retry inside a circuit breaker hides failures from it, a
//! bulkhead outside a retry holds its permit through every backoff wait. A
//! [`Pipeline`] stacks the stages in one documented order, whatever order
//! they were added in. The core is the order resilience4j documents for its
//! decorators; the strategies Polly and tower-resilience add go around it
//! (cache, coalescing, fallback, hedging) or inside it (adaptive
//! concurrency, chaos):
//!
//! ```text
//! cache → coalesce → fallback → hedge → retry → circuit breaker → rate limiter
//! (outermost)                                                            ↓
//!            service ← chaos ← adaptive concurrency ← bulkhead ← timeout
//!                                                          (innermost)
//! ```
//!
//! * The **cache** is outermost: a fresh hit costs no other stage anything
//!   (no permit, no token, no breaker call), and a stale entry can answer
//!   whatever went wrong inside, a rejection included.
//! * **Coalescing** comes next, so that concurrent misses for one key make
//!   one trip through everything below: one retry sequence, one permit.
//! * **Fallback** answers only what every attempt inside failed to get: it
//!   sits outside hedging and retry, so it never pre-empts a retry that
//!   would have succeeded.
//! * **Hedging** is outside the retry: each hedged attempt is a whole retry
//!   sequence through the breaker, and its copies draw from the hedge's
//!   retry budget, so hedging cannot double the load on a struggling
//!   dependency.
//! * Each **retry** goes through the breaker, the rate limiter, the timeout
//!   and the bulkhead again: the breaker records every attempt and each
//!   attempt takes its own bulkhead permit.
//! * The **breaker** sees timeouts as failures, but not the rate limiter's
//!   or the bulkhead's rejections: those say nothing about the dependency.
//! * The **adaptive concurrency** limit is inside the bulkhead, next to the
//!   service, so the latency it adapts to is the service's own, not the
//!   time calls waited for a bulkhead permit.
//! * **Chaos** is innermost: it stands in for the dependency, so every
//!   other stage sees its injected faults as the dependency's own.
//! * A stage's **rejection** (breaker open, rate limited, bulkhead full,
//!   concurrency limit reached) is
//!   returned at once rather than retried, unless
//!   [`retry_rejections`](PipelineBuilder::retry_rejections) says otherwise.
//! * Every error of the core stages is a [`PipelineError`] that names the stage it comes from.
//!   Rejections are recognised by the [`Rejected`](crate::error::Rejected)
//!   marker their errors carry, so a rejecting layer of your own inside the
//!   service is reported as a [`Rejection`] too.
//! * Each call runs in one `pipeline` tracing span (at `debug` level) that
//!   records the attempts made, the outcome (`ok`, `failed`, `rejected`,
//!   `timed_out`) and the stage it came from; the stages' own traces
//!   (retries, rejections, breaker transitions) are emitted inside it.
//!
//! Every stage is optional, and a stage left out costs nothing: each core
//! stage has its own slot in the pipeline's type,
//! `Pipeline<Re, Br, Rl, To, Bu, X>` (retry, breaker, rate limiter,
//! timeout, bulkhead, and the [`ExtraStages`]), which holds tower's
//! [`Identity`] until the builder adds the stage. The builder's type thus
//! changes with each stage added, in whatever order, and the service it
//! makes is the stages chosen, stacked as by hand: no branch on a stage's
//! presence, and a response future no larger than theirs (plus the call's
//! span). A function that takes or returns a pipeline names its slots,
//! e.g. `Pipeline<Identity, BreakerStage, Identity, TimeoutStage>` for a
//! breaker and a timeout. The rate limiter is [`governor`]'s and the
//! timeout is tower's own [`Timeout`](tower::timeout::Timeout).
//!
//! ```
//! use std::time::Duration;
//! use palisade::bulkhead::{Bulkhead, BulkheadConfig};
//! use palisade::circuit_breaker::CircuitBreaker;
//! use palisade::pipeline::Pipeline;
//! use palisade::backoff::Backoff;
//! use palisade::retry::{Retry, RetryConfig};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let pipeline = Pipeline::builder("inventory")
//!     .retry(Retry::new(
//!         "inventory",
//!         RetryConfig::builder()
//!             .max_attempts(3)
//!             .backoff(Backoff::exponential(Duration::from_millis(20), 2.0).build()?)
//!             .build()?,
//!     ))
//!     .circuit_breaker(CircuitBreaker::with_defaults("inventory"))
//!     .timeout(Duration::from_millis(500))
//!     .bulkhead(Bulkhead::new("inventory", BulkheadConfig::builder().max_concurrent_calls(10).build()?))
//!     .build()?;
//!
//! let mut inventory = ServiceBuilder::new()
//!     .layer(pipeline)
//!     .service_fn(|sku: u32| async move { Ok::<_, std::io::Error>(sku * 2) });
//! assert_eq!(inventory.ready().await?.call(21).await?, 42);
//! # Ok(())
//! # }
//! ```
//!
//! # Requests that cannot be cloned
//!
//! A pipeline without a retry stage sends each request once, so it accepts
//! any request type, `Clone` or not: a `reqwest::Request` or a
//! `tonic::Request` goes through the breaker, the rate limiter, the timeout
//! and the bulkhead as it is (the builder's retry policy is then
//! [`NoRetry`]). With a retry stage, the retry's
//! [`RetryPolicy`](crate::retry::RetryPolicy) decides how a request is
//! copied for another attempt: [`CloneRequests`](crate::retry::CloneRequests),
//! the default, needs `Req: Clone`; `HttpRetryPolicy` (feature `http`)
//! copies an `http::Request` whose body it can copy; a request the policy
//! cannot copy is sent once.
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use palisade::circuit_breaker::CircuitBreaker;
//! use palisade::pipeline::Pipeline;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! /// Not `Clone`: it owns the receiving end of a channel.
//! struct Upload {
//!     chunks: mpsc::Receiver<Vec<u8>>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let pipeline = Pipeline::builder("uploads")
//!     .circuit_breaker(CircuitBreaker::with_defaults("uploads"))
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! let mut uploads = ServiceBuilder::new()
//!     .layer(pipeline)
//!     .service_fn(|upload: Upload| async move {
//!         Ok::<_, std::io::Error>(upload.chunks.try_iter().map(|chunk| chunk.len()).sum::<usize>())
//!     });
//!
//! let (chunks, receiver) = mpsc::channel();
//! chunks.send(vec![0; 3])?;
//! chunks.send(vec![0; 4])?;
//! assert_eq!(uploads.ready().await?.call(Upload { chunks: receiver }).await?, 7);
//! # Ok(())
//! # }
//! ```
//!
//! # Classifiers see `BoxError`
//!
//! The retry's and the breaker's classifiers are called with the stages'
//! results, not the service's: an error reaching them may be the
//! timeout's, the rate limiter's or the service's own, so each stage turns
//! its error into a [`BoxError`](crate::BoxError) and the classifiers are
//! `Classify<Response, BoxError>`. A classifier typed on the service's
//! error (a `classify_fn` over `Result<&Res, &reqwest::Error>`) does not
//! implement that, so the pipeline's service is not a `Service` (E0599:
//! "the method `ready` exists for struct `PipelineService<...>`, but its
//! trait bounds were not satisfied"). Take `&BoxError` and find your error
//! in it with [`find_cause`](crate::find_cause), which walks the source
//! chain; anything else is a stage's error (a timeout here). The
//! classifiers of [`crate::classify`] and `palisade::reqwest`'s
//! `ReqwestClassifier` already accept `BoxError`.
//!
//! ```
//! use std::io;
//! use palisade::circuit_breaker::CircuitBreaker;
//! use palisade::classify::{classify_fn, Outcome};
//! use palisade::pipeline::Pipeline;
//! use palisade::{find_cause, BoxError};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! // Not `Result<&String, &io::Error>`: the pipeline's stages pass `BoxError`.
//! let classifier = classify_fn(|result: Result<&String, &BoxError>| match result {
//!     Ok(_) => Outcome::Success,
//!     Err(error) => match find_cause::<io::Error>(&**error) {
//!         Some(io) if io.kind() == io::ErrorKind::NotFound => Outcome::Ignored,
//!         Some(_) => Outcome::Failure { retryable: true },
//!         None => Outcome::Failure { retryable: true }, // the timeout stage's error
//!     },
//! });
//! let breaker = CircuitBreaker::with_defaults("files");
//! let pipeline = Pipeline::builder("files")
//!     .circuit_breaker(breaker.layer().with_classifier(classifier))
//!     .build()?;
//! let mut files = ServiceBuilder::new().layer(pipeline).service_fn(|name: &'static str| async move {
//!     Err::<String, _>(io::Error::new(io::ErrorKind::NotFound, name))
//! });
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! assert!(files.ready().await?.call("missing.txt").await.is_err());
//! assert_eq!(breaker.metrics().failed_calls, 0); // NotFound is ignored
//! # Ok::<(), BoxError>(())
//! # })?;
//! # Ok::<(), BoxError>(())
//! ```
//!
//! # Options
//!
//! | stage | builder method | default |
//! |---|---|---|
//! | response cache (feature `cache`) | `cache` | none |
//! | coalescing | [`coalesce`](PipelineBuilder::coalesce) | none |
//! | fallback | [`fallback`](PipelineBuilder::fallback) | none |
//! | hedging | [`hedge`](PipelineBuilder::hedge) | none |
//! | retry | [`retry`](PipelineBuilder::retry) | none ([`NoRetry`]: any request type) |
//! | retry of rejections | [`retry_rejections`](PipelineBuilder::retry_rejections) | `false` |
//! | circuit breaker | [`circuit_breaker`](PipelineBuilder::circuit_breaker) | none |
//! | rate limiter | [`rate_limiter`](PipelineBuilder::rate_limiter) | none |
//! | timeout | [`timeout`](PipelineBuilder::timeout) | none (must be > 0 when set) |
//! | bulkhead | [`bulkhead`](PipelineBuilder::bulkhead) | none |
//! | adaptive concurrency | [`adaptive_concurrency`](PipelineBuilder::adaptive_concurrency) | none |
//! | chaos (feature `chaos`) | `chaos` | none |
//!
//! The core stages (retry to bulkhead) answer with a [`PipelineError`]. The
//! outer ones (cache, coalescing, fallback, hedging) answer with a
//! [`BoxError`](crate::BoxError), since they may hold on to the core's
//! errors (a coalesced error is shared by every waiter): a core error
//! inside is found with [`find_cause`](crate::find_cause)`::<PipelineError>`.
//!
//! Each stage keeps its own options, documented in its module.

mod error;
mod future;
mod layer;
mod service;
mod stage;

pub use self::error::{PipelineError, Rejection, Stage, TimedOut};
pub use self::future::ResponseFuture;
pub use self::layer::{CoreStages, ExtraStages, Layered, Pipeline, PipelineBuilder};
pub use self::service::PipelineService;
/// tower's `Identity` layer: the slot of a core stage left out, in
/// [`Pipeline`]'s and [`PipelineBuilder`]'s types.
pub use tower_layer::Identity;

pub use self::stage::{
    BoxErrors, BoxErrorsFuture, BreakerStage, BulkheadStage, NoRetry, RateLimiterStage, RetryStage,
    Slot, StageClassifier, StageFuture, TimeoutStage,
};
