//! Hedging: when a call is slow, race it with a copy (Polly v8's hedging
//! strategy, with tower's latency-percentile delay).
//!
//! Most calls are fast and a few are very slow, often for reasons that
//! have nothing to do with the request (a GC pause, a cold cache, a busy
//! host). A [`Hedge`] sends the request once; if no acceptable answer came
//! after the delay — a fixed one, or the latency percentile measured over
//! the last window — it sends a copy to another clone of the service, up
//! to `max_hedged_attempts` copies, each a delay apart. An attempt that
//! fails (a retryable failure, by the classifier) starts the next copy at
//! once. The first acceptable answer wins and every other attempt is
//! dropped (cancelled).
//!
//! Only requests that may be sent twice are hedged: the policy is the retry
//! layer's [`RetryPolicy`](crate::retry::RetryPolicy), so
//! [`HttpRetryPolicy`](crate::retry::HttpRetryPolicy) hedges `GET`, `HEAD`,
//! `PUT`, `DELETE`, `OPTIONS`, `TRACE` and requests marked
//! [`Idempotent`](crate::retry::Idempotent) or carrying an
//! `Idempotency-Key`, exactly as it retries them. And every copy draws a
//! token from a [`RetryBudget`](crate::retry::RetryBudget), so hedging
//! cannot double the load of a struggling service: when the budget is
//! empty, calls wait for their first attempt.
//!
//! ```
//! use std::time::Duration;
//! use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let hedge = Hedge::new(
//!     "quotes",
//!     HedgeConfig::builder()
//!         .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
//!         .build()?,
//! );
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let mut quotes = ServiceBuilder::new()
//!     .layer(hedge.layer())
//!     .service_fn(move |sku: u64| {
//!         // The first attempt is stuck; the copy answers at once.
//!         let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
//!         async move {
//!             if first {
//!                 tokio::time::sleep(Duration::from_secs(10)).await;
//!             }
//!             Ok::<_, std::io::Error>(sku * 100)
//!         }
//!     });
//! let started = tokio::time::Instant::now();
//! assert_eq!(quotes.ready().await?.call(7).await?, 700);
//! assert_eq!(started.elapsed(), Duration::from_millis(50));
//! assert_eq!(hedge.metrics().hedge_wins, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `max_hedged_attempts` | 1 | Copies a call may send besides the first attempt (1 to 10). |
//! | `delay` | fixed 2 s | [`HedgeDelay::Fixed`], or [`HedgeDelay::LatencyPercentile`]: the given percentile of the latencies of the previous window, once it holds `min_samples` calls (before that only failures start copies). Zero sends every copy at once. |
//! | `budget` | 20 % of calls + 10/s over 10 s | Every copy takes a token ([`RetryBudget`](crate::retry::RetryBudget)); every call deposits. `no_budget()` turns it off. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//!
//! # Semantics
//!
//! * Acceptable answers (by the classifier): [`Outcome::Success`](crate::classify::Outcome::Success)
//!   and [`Outcome::Ignored`](crate::classify::Outcome::Ignored) win at
//!   once, and so does a failure that is not retryable (another attempt
//!   would not do better). A retryable failure waits for the other
//!   attempts, and starts the next copy at once if one is left.
//! * When every attempt failed, the call fails with the last failure.
//! * The first attempt goes to the service `poll_ready` made ready; each
//!   copy to a fresh clone of it, made ready by the response future.
//! * The latency recorded for the percentile is each successful call's,
//!   from `call` to its winning answer (as tower's `hedge` records it). A
//!   call a copy won is recorded with that shorter time, so under hedging
//!   the percentile reads a little low; it still never drops below the
//!   share of calls that answer without a copy.
//! * A budget shared with a [`Retry`](crate::retry::Retry) takes deposits
//!   from both layers; share one only between layers that see different
//!   calls, or give the hedge its own.
//!
//! # Cost
//!
//! A hedgeable call clones the request and the inner service up front and
//! deposits into the budget; the percentile delay is read with one atomic
//! load (it is computed once per window). A call that answers before the
//! delay allocates nothing; each copy allocates its boxed future. Measured
//! with `cargo bench --bench hedge` on the project's shared 2-core VM, a
//! call answered at once: 617 ns with a fixed delay and the default budget,
//! 311 ns with a percentile delay and no budget, against 578 ns for
//! tower's `hedge` (percentile, no budget).
//!
//! # Observability
//!
//! Copies, wins and budget refusals are `debug` traces;
//! [`Hedge::subscribe`] delivers [`HedgeEvent`]s and [`Hedge::metrics`]
//! returns [`HedgeMetrics`].

mod config;
mod event;
mod future;
mod latency;
mod layer;
mod metrics;
mod service;
mod state;

pub use self::config::{HedgeConfig, HedgeConfigBuilder, HedgeDelay, MAX_HEDGED_ATTEMPTS};
pub use self::event::{HedgeEvent, HedgeEventKind};
pub use self::future::ResponseFuture;
pub use self::layer::HedgeLayer;
pub use self::metrics::HedgeMetrics;
pub use self::service::HedgeService;
pub use self::state::Hedge;
