//! A bulkhead layer: isolate a dependency by bounding its concurrent calls.
//!
//! A slow dependency holds on to every caller that reaches it. A
//! [`Bulkhead`] lets at most `max_concurrent_calls` calls run at once; the
//! others wait in FIFO order for at most `max_wait_duration` (zero: fail
//! fast), at most `max_waiting` of them, or fail at once with
//! [`BulkheadFull`], so one slow dependency cannot use up every task,
//! connection and thread of the caller. Give each dependency its own pool
//! ([`BulkheadRegistry`]) and resize it at run time ([`Bulkhead::resize`]).
//!
//! ```
//! use std::time::Duration;
//! use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let payments = Bulkhead::new(
//!     "payments",
//!     BulkheadConfig::builder()
//!         .max_concurrent_calls(5)
//!         .max_wait_duration(Duration::from_millis(50))
//!         .build()?,
//! );
//! let mut service = ServiceBuilder::new()
//!     .layer(payments.layer())
//!     .service_fn(|amount: u64| async move { Ok::<_, std::io::Error>(amount) });
//! assert_eq!(service.ready().await?.call(1999).await?, 1999);
//! assert_eq!(payments.metrics().in_flight, 0, "the permit came back");
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `max_concurrent_calls` | 25 | Calls that may run at once (resilience4j's default). |
//! | `max_wait_duration` | 0 | How long a caller waits for a permit, in FIFO order; zero fails fast. |
//! | `max_waiting` | 100 | Callers that may wait at once; more are rejected at once. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//!
//! # Guarantees
//!
//! * A permit is held from `poll_ready` until the response future completes
//!   or is dropped; a service dropped after `poll_ready` without `call`
//!   gives its permit back; a caller that stops waiting takes nothing.
//! * The bulkhead decides before the inner service is asked to be ready
//!   (tower's `ConcurrencyLimit` order): an admitted call holds its permit
//!   while the inner service gets ready; a rejected one never polls the
//!   inner service, so it reserves nothing in the layers inside.
//! * Rejections never reach the inner service and are [`BulkheadFull`], not
//!   the circuit breaker's error.
//! * Resizing never interrupts a call: a smaller limit takes effect as
//!   calls finish.
//!
//! # Observability
//!
//! Rejections are `debug` traces and resizes `info`; [`Bulkhead::subscribe`]
//! delivers [`BulkheadEvent`]s and [`Bulkhead::metrics`] returns
//! [`BulkheadMetrics`] (permits free, in flight, waiting, the most in flight
//! ever, rejections).

mod config;
mod error;
mod event;
mod future;
mod layer;
mod metrics;
mod registry;
mod service;
mod state;

pub use self::config::{BulkheadConfig, BulkheadConfigBuilder, MAX_CONCURRENT_CALLS};
pub use self::error::BulkheadFull;
pub use self::event::{BulkheadEvent, BulkheadEventKind};
pub use self::future::ResponseFuture;
pub use self::layer::BulkheadLayer;
pub use self::metrics::BulkheadMetrics;
pub use self::registry::BulkheadRegistry;
pub use self::service::BulkheadService;
pub use self::state::{Bulkhead, BulkheadPermit};
