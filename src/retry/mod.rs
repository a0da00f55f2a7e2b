//! Retrying failed calls: backoff with jitter, a retry budget, deadlines.
//!
//! A [`Retry`] tries a failed call again when the shared
//! [`Classify`](crate::classify::Classify) classifier says the failure is
//! retryable ([`Outcome::Failure`](crate::classify::Outcome::Failure) with
//! `retryable: true`), waiting between attempts as its [`Backoff`](crate::backoff::Backoff) says (or
//! as the server asked with `Retry-After` or a gRPC pushback, which may also
//! say not to retry), as long as attempts, deadlines and the shared
//! [`RetryBudget`] allow. tower's own `Retry` asks every user
//! to write a `Policy`; this one is ready in three lines and still takes
//! your own classifier, [`RetryPolicy`] and custom backoff.
//!
//! ```
//! use palisade::retry::{Retry, RetryConfig};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let retry = Retry::new("prices", RetryConfig::default());
//! let mut prices = ServiceBuilder::new()
//!     .layer(retry.layer())
//!     .service_fn(|sku: u64| async move { Ok::<_, std::io::Error>(sku * 100) });
//! assert_eq!(prices.ready().await?.call(7).await?, 700);
//! assert_eq!(retry.metrics().succeeded_without_retry, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `max_attempts` | 3 | Attempts in all, the first included (1 to 100). |
//! | `backoff` | exponential from 100 ms, ×2, at most 10 s, full jitter | Delay before each retry; see [`crate::backoff`]. |
//! | `budget` | 20 % of first attempts + 10/s over 10 s | Every retry must draw from it; when it is empty the last failure is returned. `no_budget()` turns it off. |
//! | `attempt_timeout` | none | An attempt that takes longer is cancelled and is a retryable failure ([`AttemptTimedOut`]). |
//! | `max_elapsed` | none | No wait ends (backoff, or the inner service getting ready for a retry), and (with `attempt_timeout`) no attempt could end, after this long from the first attempt; the call then fails with the last failure ([`GiveUpReason::DeadlineReached`]). |
//! | `overall_timeout` | none | The whole call fails with [`RetryTimedOut`] after this long. |
//! | `honor_server_delay` | `true` | The [`RetryPolicy`] reads what the server asked of a retry ([`ServerDelay`]). A delay (`Retry-After`, `grpc-retry-pushback-ms`) replaces the backoff's, cut to the backoff's `max_interval`; after a gRPC pushback the backoff restarts from its first delay (gRFC A6), after `Retry-After` it continues its sequence. "Do not retry" (a negative or unreadable `grpc-retry-pushback-ms`) ends the call with that response ([`GiveUpReason::ServerDeclinedRetry`]). `max_elapsed` does not shorten a server's delay: if the retry after it could not start (or, with `attempt_timeout`, finish) by the deadline, the call gives up at once with the server's answer ([`GiveUpReason::DeadlineReached`]). `false` ignores all of it. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//!
//! Requests are re-sent by cloning them ([`CloneRequests`]). With the
//! `http` feature, [`HttpRetryPolicy`] retries `http::Request`s with a
//! `Clone` body, only for idempotent methods unless the request carries
//! [`Idempotent`] or an `Idempotency-Key` header, and reads `Retry-After`
//! and `grpc-retry-pushback-ms` (strictly: digits only, anything else
//! means "do not retry"); put a [`BufferBodyLayer`] in front to
//! retry requests whose bodies stream (hyper's, tonic's), up to a size
//! limit. A request that cannot be copied is sent once.
//!
//! # Cost
//!
//! A call whose first attempt succeeds takes no lock, makes no allocation
//! (`tests/retry_alloc.rs`), reads no clock (unless `max_elapsed` is set:
//! it counts from the first attempt), creates no timer, emits no trace and
//! builds no event unless someone subscribed. It clones the request and
//! the inner service for later attempts (as tower's `Retry` does), bumps
//! the reference count of the layer's shared state and one striped metrics
//! counter, and deposits into the budget (one relaxed add on a striped
//! counter; one deposit in 64 on a thread also reads the tokio clock). The
//! attempt is polled before any timer is started, so timers start only
//! when the call has to wait (the overall timeout counts from the first
//! wait, in practice from the first poll).
//!
//! Its [`ResponseFuture`] holds the attempt in flight, the copies kept for
//! a retry, the classifier, the policy, the one timer slot of the current
//! step (the attempt timeout's, the backoff's or the readiness deadline's,
//! inline so that an attempt timeout allocates nothing) and a few words:
//! 184 bytes for a `u64` request to a zero-sized service. What only a
//! retried call or an overall timeout needs (the overall timer, the
//! backoff's progress, the failure kept under `max_elapsed`) is boxed the
//! first time it is needed: a call that waits allocates that one box if
//! `overall_timeout` is set (nothing otherwise), a retried call one box in
//! all.
//!
//! Measured with `benches/instructions.rs` under callgrind: 123
//! instructions per call with the default budget or an attempt timeout, 107
//! without a budget (tower's `Retry` with a minimal hand-written policy,
//! which has no budget, metrics or timeouts, compiles down to the bare
//! service: 6). Most of the time left is the four atomic read-modify-writes
//! above (about 6 ns each on the project's 2-core VM): the reference
//! count's increment and decrement, the metrics counter and the deposit.
//!
//! # Observability
//!
//! Each retry is a `debug` trace with the attempt, the delay and the
//! outcome; [`Retry::subscribe`] delivers [`RetryEvent`]s and
//! [`Retry::metrics`] returns [`RetryMetrics`].
//!
//! # Layout
//!
//! As in every palisade layer: [`Retry`] (`state.rs`) is the shared state,
//! [`RetryLayer`] (`layer.rs`) wraps services in a [`RetryService`]
//! (`service.rs`) whose calls are a [`ResponseFuture`] (`future.rs`);
//! `config.rs`, `event.rs`, `metrics.rs` and `error.rs` hold what their
//! names say.

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
pub mod budget;
mod config;
mod error;
mod event;
mod future;
mod layer;
mod metrics;
mod policy;
mod registry;
mod service;
mod state;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::body::{BufferBody, BufferBodyLayer, RetryBody, buffer_body};
pub use self::budget::{RetryBudget, RetryBudgetBuilder};
pub use self::config::{MAX_ATTEMPTS, RetryConfig, RetryConfigBuilder};
pub use self::error::{AttemptTimedOut, RetryTimedOut};
pub use self::event::{GiveUpReason, RetryEvent, RetryEventKind};
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::metrics::RetryMetrics;
#[cfg(feature = "tonic")]
pub(crate) use self::policy::grpc_pushback;
pub use self::policy::{CloneRequests, RetryPolicy, ServerDelay};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::policy::{HttpRetryPolicy, Idempotent, parse_retry_after};
#[cfg(feature = "reqwest")]
pub(crate) use self::policy::{header_server_delay, may_resend};
pub use self::registry::RetryRegistry;
pub use self::service::RetryService;
pub use self::state::Retry;
