//! # palisade
//!
//! Resilience and microservice patterns for [tower] services: what
//! resilience4j gives the JVM and Polly gives .NET, as `tower::Layer`s that
//! wrap a tonic channel, a hyper or reqwest client, or any `Service`.
//!
//! | module | pattern |
//! |---|---|
//! | [`adaptive_concurrency`] | Bound the calls in flight by a limit that follows measured latency. |
//! | [`backoff`] | How long to wait before each retry: exponential, jitter, schedules. |
//! | [`bulkhead`] | Bound the calls in flight to each dependency. |
//! | [`cache`] | Answer repeated requests from a cache; serve stale data when the service fails (feature `cache`). |
//! | `chaos` | Inject errors, latency and responses at a seeded rate (feature `chaos`). |
//! | [`circuit_breaker`] | Stop calling a failing dependency; try again after a wait. |
//! | [`classify`] | Decide which outcomes are failures (shared by every layer). |
//! | [`clock`] | Choose how calls are timed: exact or coarse and cheap. |
//! | [`coalesce`] | Share one call among concurrent requests for the same key (singleflight). |
//! | [`discovery`] | Find the healthy instances of a service and balance calls over them. |
//! | [`events`] | Subscribe to what a layer does. |
//! | [`fallback`] | Answer a failed call with a value, a function of the failure or the last good response. |
//! | [`future`] | The crate's one boxed-future type. |
//! | `metrics` | Export every layer's counters, gauges and histograms through the `metrics` facade (feature `metrics`). |
//! | [`hedge`] | Race slow calls with copies, within a retry budget. |
//! | [`pipeline`] | Stack retry, breaker, rate limiter, timeout and bulkhead in the right order. |
//! | [`rate_limit`] | Bound how many calls start per period (governor's GCRA). |
//! | [`registry`] | Named breakers, bulkheads, limiters and retries, created on first use. |
//! | `reqwest` | Wrap a `reqwest::Client` in a pipeline in one line (feature `reqwest`). |
//! | [`retry`] | Retry failed calls with backoff, jitter and a retry budget. |
//! | [`saga`] | Run multi-service transactions as sagas that survive crashes. |
//! | `tonic` | Wrap a tonic client in one line: gRPC retry (gRFC A6), trailer-aware breaker, rejections as `Status` (feature `tonic`). |
//!
//!
//! ## Conventions
//!
//! * Every layer is configured by a builder whose `build()` validates all
//!   fields and returns a [`ConfigError`] naming the field and the rule it
//!   broke: nothing panics and nothing is silently clamped.
//! * Services return [`BoxError`]. Each rejection a layer adds has its own
//!   error type (such as [`circuit_breaker::BreakerOpen`]), found with
//!   `downcast_ref` or [`find_cause`] / [`is_caused_by`].
//! * Outcomes are classified by [`classify::Classify`]: one classifier
//!   decides success, failure (retryable or not) and ignored outcomes for
//!   every layer.
//! * Layers share their state between clones through an `Arc`: every clone
//!   of a service uses one breaker.
//! * State changes are `tracing` events, a subscription
//!   ([`events::EventStream`]) and a metrics snapshot.
//! * All waiting uses `tokio::time`, so tests run with
//!   `tokio::time::pause()`.
//!
//! ## Example
//!
//! ```
//! use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let breaker = CircuitBreaker::new(
//!     "users",
//!     CircuitBreakerConfig::builder()
//!         .sliding_window(SlidingWindow::count(20))
//!         .minimum_number_of_calls(10)
//!         .build()?,
//! );
//! let mut users = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service_fn(|id: u64| async move { Ok::<_, std::io::Error>(format!("user {id}")) });
//!
//! assert_eq!(users.ready().await?.call(7).await?, "user 7");
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! The core layers ([`circuit_breaker`], [`retry`], [`bulkhead`],
//! [`rate_limit`], [`pipeline`]) need no feature: with
//! `default-features = false` they build on tokio, tower and their small
//! helpers alone.
//!
//! * `saga` (default): the saga executor and its in-memory log.
//! * `discovery` (default): service registries, the balancer and outlier
//!   ejection.
//! * `http` (default): classifiers for `http::Response` status codes and
//!   gRPC `grpc-status`, built on tower-http's `classify` module; the HTTP
//!   retry policy (`Retry-After`, idempotency guard) and request-body
//!   buffering for retries.
//!   With `discovery`, the in-memory registry runs HTTP health checks
//!   (a hyper client); without `http`, registering an HTTP check is refused.
//! * `sqlite` (default, implies `saga`): the SQLite saga log
//!   (`saga::SqliteLog`), with a bundled SQLite.
//! * `postgres` (implies `saga`): the PostgreSQL saga log
//!   (`saga::log::PostgresLog`) that several executor processes share, with
//!   leases and fencing (tokio-postgres and a deadpool connection pool).
//! * `chaos`: fault injection (`chaos`): errors, latency and responses at
//!   seeded rates, switched and reconfigured at run time (arc-swap).
//! * `tonic` (implies `http`): `palisade::tonic`, tonic clients behind a
//!   pipeline in one line (gRFC A6 retries, statuses in trailers recorded
//!   by the breaker, rejections as `tonic::Status`); with `discovery`,
//!   gRPC health checks (`HealthCheck::Grpc`, tonic-health's client).
//! * `consul`, `etcd`, `dns` (each implies `discovery`): discovery backends
//!   for Consul's HTTP API, etcd v3 (building needs `protoc`) and DNS
//!   A/AAAA and SRV records. Consul and etcd speak TLS with rustls and the
//!   `ring` provider (no cmake or aws-lc build).
//! * `reqwest` (implies `http`): `palisade::reqwest`, a classifier and a
//!   retry policy for `reqwest::Client`, and a pipeline around one in one
//!   line. palisade turns on none of reqwest's own features.
//! * `metrics`: every layer reports counters, gauges and histograms
//!   through the `metrics` facade, for any exporter (`palisade::metrics`
//!   lists them).
//! * `cache`: the response cache (`cache`), on moka's synchronous cache.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adaptive_concurrency;
pub mod backoff;
pub mod bulkhead;
#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;
#[cfg(feature = "chaos")]
#[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
pub mod chaos;
pub mod circuit_breaker;
pub mod classify;
pub mod clock;
pub mod coalesce;
#[cfg(feature = "discovery")]
#[cfg_attr(docsrs, doc(cfg(feature = "discovery")))]
pub mod discovery;
pub mod error;
pub mod events;
pub mod fallback;
pub mod future;
pub mod hedge;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod pipeline;
pub mod rate_limit;
pub mod registry;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
pub mod retry;
#[cfg(feature = "saga")]
#[cfg_attr(docsrs, doc(cfg(feature = "saga")))]
pub mod saga;
mod sync;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

pub use crate::error::{BoxError, ConfigError, find_cause, is_caused_by};
