//! A rate limiter layer: at most N calls per period to a dependency.
//!
//! Where a [bulkhead](crate::bulkhead) bounds how many calls run at once, a
//! [`RateLimiter`] bounds how many start per period: `limit_for_period`
//! calls every `limit_refresh_period`, as resilience4j's `RateLimiter`
//! does. The limiter is [`governor`]'s GCRA (generic cell rate algorithm,
//! one compare-and-swap per permit), driven by tokio's clock so tests can
//! use `tokio::time::pause()`. It is not written again here.
//!
//! GCRA spreads permits evenly: an idle limiter lets a burst of
//! `limit_for_period` calls through at once, then one more every
//! `limit_refresh_period / limit_for_period`. (resilience4j's default
//! limiter instead refills all permits at the start of each period.)
//!
//! ```
//! use std::time::Duration;
//! use palisade::rate_limit::{RateLimited, RateLimiter, RateLimiterConfig};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let limiter = RateLimiter::new(
//!     "sms",
//!     RateLimiterConfig::builder()
//!         .limit_for_period(1)
//!         .limit_refresh_period(Duration::from_secs(1))
//!         .build()?,
//! );
//! let mut sms = ServiceBuilder::new()
//!     .layer(limiter.layer())
//!     .service_fn(|to: &'static str| async move { Ok::<_, std::io::Error>(to) });
//! assert_eq!(sms.ready().await?.call("+33600000000").await?, "+33600000000");
//! let error = sms.ready().await?.call("+33600000001").await.unwrap_err();
//! assert!(error.downcast_ref::<RateLimited>().is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # One limit per key
//!
//! A [`KeyedRateLimiter`] gives each key (a user id, a client address) a
//! limit of its own, with governor's keyed GCRA; its
//! [`layer`](KeyedRateLimiter::layer) takes the key from each request. It
//! removes idle keys on a cadence and holds at most `max_keys` keys,
//! rejecting a new key beyond that with [`TooManyKeys`] (see
//! [its docs](KeyedRateLimiter#a-bounded-number-of-keys)).
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `limit_for_period` | 50 | Calls permitted per period; also the largest burst. |
//! | `limit_refresh_period` | 1 s | The period, at most [`MAX_LIMIT_REFRESH_PERIOD`] (100 years). |
//! | `max_wait_duration` | 0 | How long a caller may wait for a permit; zero fails fast, and a wait whose end the clock cannot represent (`Duration::MAX`) has no end. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//!
//! # Guarantees
//!
//! * The limiter decides before the inner service is asked to be ready
//!   (tower's `ConcurrencyLimit` order): a permit is taken first and spent
//!   on that call, however long the inner service then takes to be ready.
//!   A rejected call never polls the inner service, so it reserves nothing
//!   in the layers inside (a bulkhead's permit), never reaches it, and
//!   fails with [`RateLimited`], which says when the next permit is due.
//! * A caller whose permit would come after its `max_wait_duration` is
//!   rejected at once, not after waiting in vain.
//! * Every clone of a limiter, and every service built from it, shares its
//!   permits.
//!
//! # Observability
//!
//! Rejections are `debug` traces; [`RateLimiter::subscribe`] delivers
//! [`RateLimiterEvent`]s and [`RateLimiter::metrics`] returns
//! [`RateLimiterMetrics`] (for a keyed limiter,
//! [`KeyedRateLimiterMetrics`]). With the `metrics` feature both limiters
//! also report through the `metrics` facade (`palisade::metrics`).

mod config;
mod error;
mod event;
mod future;
mod keyed;
mod layer;
mod metrics;
mod registry;
mod service;
mod state;

pub use self::config::{MAX_LIMIT_REFRESH_PERIOD, RateLimiterConfig, RateLimiterConfigBuilder};
pub use self::error::{KeyedRejection, RateLimited, TooManyKeys};
pub use self::event::{RateLimiterEvent, RateLimiterEventKind};
pub use self::future::ResponseFuture;
pub use self::keyed::{
    DEFAULT_IDLE_CLEANUP_INTERVAL, DEFAULT_MAX_KEYS, KeyedRateLimiter, KeyedRateLimiterLayer,
    KeyedRateLimiterService,
};
pub use self::layer::RateLimiterLayer;
pub use self::metrics::{KeyedRateLimiterMetrics, RateLimiterMetrics};
pub use self::registry::RateLimiterRegistry;
pub use self::service::RateLimiterService;
pub use self::state::RateLimiter;
