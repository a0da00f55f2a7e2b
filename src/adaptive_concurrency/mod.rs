//! An adaptive concurrency limit: bound the calls in flight to a
//! dependency by a limit that follows its measured latency.
//!
//! A [`Bulkhead`](crate::bulkhead::Bulkhead)'s limit is a guess made once.
//! An [`AdaptiveConcurrency`] limit measures every call and moves the limit
//! to where the dependency serves calls without queueing them (Little's
//! law: the calls it serves at once are its throughput times its no-load
//! latency), as Netflix's concurrency-limits and Envoy's adaptive
//! concurrency filter do. Calls over the limit fail at once with
//! [`ConcurrencyLimitExceeded`], a palisade rejection; when the dependency
//! slows down the limit comes down with it, so callers are turned away
//! instead of queueing behind each other.
//!
//! ```
//! use std::time::Duration;
//! use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig, Vegas};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let limit = AdaptiveConcurrency::new(
//!     "search",
//!     AdaptiveConcurrencyConfig::builder()
//!         .algorithm(Vegas::default())
//!         .initial_limit(10)
//!         .max_limit(200)
//!         .build()?,
//! );
//! let mut search = ServiceBuilder::new()
//!     .layer(limit.layer())
//!     .service_fn(|query: &'static str| async move {
//!         tokio::time::sleep(Duration::from_millis(20)).await;
//!         Ok::<_, std::io::Error>(query.len())
//!     });
//! assert_eq!(search.ready().await?.call("tower").await?, 5);
//! assert_eq!(limit.metrics().samples, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `algorithm` | [`Vegas`] | How the limit moves: [`Vegas`] (queue estimated from the no-load latency) or [`Aimd`] (additive increase, multiplicative decrease on a latency threshold). |
//! | `initial_limit` | 20 | The limit before any sample. |
//! | `min_limit` | 1 | The lowest the limit goes. |
//! | `max_limit` | 1000 | The highest the limit goes. |
//! | `smoothing` | 1 | The share of each computed change the limit takes (0.2: a fifth of the way per update). |
//! | `window_samples` | 10 | Samples per update: the limit moves once per window, on the calls that started after its last move. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//!
//! [`Aimd`] and [`Vegas`] have their own options, documented on each.
//! Vegas probes the dependency's no-load latency now and then by lowering
//! the limit to `min_limit` for [`PROBE_SAMPLES`] calls: keep `min_limit`
//! below what the dependency serves at once, and above 1 if a probe at one
//! call at a time costs too much throughput.
//!
//! # Which algorithm
//!
//! [`Vegas`] needs no threshold: it compares each latency with the lowest
//! it has seen and settles a few calls (`alpha` to `beta` times
//! `log10(limit)`) above what the dependency serves at once. [`Aimd`] needs
//! the latency you accept and keeps calls under it; it also reacts to
//! failures alone, which suits dependencies whose latency says little.
//! Gradient2, Netflix's third, compares a short with a long average of the
//! latency; under a steady queue the long average catches up with the
//! short one and the limit drifts up, so palisade offers Vegas instead.
//!
//! # Guarantees
//!
//! * A slot is held from `poll_ready` until the response future completes
//!   or is dropped; a rejected call never polls the inner service.
//! * The classifier decides what a finished call tells the algorithm: a
//!   success is a latency sample, a failure a drop (the limit shrinks), an
//!   ignored outcome nothing.
//! * A call dropped (cancelled) before it finishes gives its slot back and
//!   is not a sample: its latency is unknown, and a caller's timeout says
//!   nothing the next sample will not. It is counted in
//!   [`AdaptiveConcurrencyMetrics::cancelled`].
//!
//! # Cost
//!
//! Admission is a compare-and-swap on the in-flight count against the
//! limit (no lock); a call reads the clock when it starts and when it
//! ends, and updates the algorithm under a short `parking_lot` lock.
//! Measured with `cargo bench --bench adaptive_concurrency` on the
//! project's shared 2-core VM, a call that finds a slot free: 420 to
//! 440 ns (AIMD, Vegas), against 620 ns for tower-resilience's adaptive
//! limiter (Vegas) and 56 ns for tower's fixed `ConcurrencyLimit`.
//!
//! # Observability
//!
//! Rejections and limit changes are `debug` traces (the limit moves with
//! every few calls); [`AdaptiveConcurrency::subscribe`] delivers
//! [`AdaptiveConcurrencyEvent`]s (limit changes, rejections) and
//! [`AdaptiveConcurrency::metrics`] returns [`AdaptiveConcurrencyMetrics`]
//! with the current limit.

mod algorithm;
mod config;
mod error;
mod event;
mod future;
mod layer;
mod metrics;
mod service;
mod state;

pub use self::algorithm::{Aimd, LimitAlgorithm, PROBE_SAMPLES, Vegas};
pub use self::config::{AdaptiveConcurrencyConfig, AdaptiveConcurrencyConfigBuilder, MAX_LIMIT};
pub use self::error::ConcurrencyLimitExceeded;
pub use self::event::{AdaptiveConcurrencyEvent, AdaptiveConcurrencyEventKind};
pub use self::future::ResponseFuture;
pub use self::layer::AdaptiveConcurrencyLayer;
pub use self::metrics::AdaptiveConcurrencyMetrics;
pub use self::service::AdaptiveConcurrencyService;
pub use self::state::{AdaptiveConcurrency, AdaptivePermit};
