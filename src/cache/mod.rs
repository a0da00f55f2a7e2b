//! A response cache: answer repeated requests from memory, and answer
//! from stale data when the service fails ("fallback to cached data").
//!
//! A [`ResponseCache`] keeps successful responses by a key taken from the
//! request, on [moka](https://docs.rs/moka)'s concurrent cache (TinyLFU
//! admission, a size bound). A fresh entry (younger than `ttl`) answers the
//! request without calling the service. An entry past its `ttl` is kept for
//! `max_staleness` more: the next request calls the service, and if that
//! call fails (per the [classifier](crate::classify)) or is rejected by an
//! inner layer, the stale entry answers instead.
//!
//! ```
//! use std::time::Duration;
//! use palisade::cache::{CacheConfig, ResponseCache};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let prices = ResponseCache::new(
//!     "prices",
//!     CacheConfig::builder()
//!         .ttl(Duration::from_secs(30))
//!         .max_staleness(Duration::from_secs(600))
//!         .build()?,
//! );
//! let mut service = ServiceBuilder::new()
//!     .layer(prices.layer(|sku: &u64| *sku))
//!     .service_fn(|sku: u64| async move { Ok::<_, std::io::Error>(sku * 100) });
//! assert_eq!(service.ready().await?.call(7).await?, 700); // a miss: the service answers
//! assert_eq!(service.ready().await?.call(7).await?, 700); // a hit
//! assert_eq!((prices.metrics().hits, prices.metrics().misses), (1, 1));
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | key (argument of [`ResponseCache::layer`]) | — | `Fn(&Req) -> K`: requests with equal keys share an entry. |
//! | `ttl` | 60 s | How long a stored response answers requests without calling the service. |
//! | `max_entries` | 10,000 | The most entries kept; moka evicts the least likely to be used again. |
//! | `max_staleness` | 0 (off) | How long past its `ttl` an entry is kept to answer a failed or rejected call. |
//! | `stale_on_rejection` | `true` | Whether a stale entry also answers a call an inner layer rejected. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//! | classifier ([`CacheLayer::with_classifier`]) | [`DefaultClassifier`](crate::classify::DefaultClassifier) | Which responses are stored (successes) and which outcomes stale data answers (failures). |
//!
//! # Guarantees
//!
//! * Only responses the classifier calls a success are stored; failures,
//!   ignored outcomes and errors are never cached.
//! * A stale entry answers only a call that failed or was rejected (an
//!   error carrying the [`Rejected`](crate::error::Rejected) marker), and
//!   only within `max_staleness`; otherwise the outcome reaches the caller
//!   unchanged.
//! * Freshness is measured on tokio's clock (paused-time tests see entries
//!   age); moka's own expiry (`ttl + max_staleness`, on the real clock)
//!   only reclaims memory.
//! * `poll_ready` is always ready and reserves nothing in the inner
//!   service; a miss takes a clone of the inner service (so it must be
//!   `Clone`) and waits for its readiness in the response future. A hit
//!   never touches the inner service. A dropped response future cancels
//!   its inner call and stores nothing.
//! * The cache does not coalesce: concurrent misses for one key each call
//!   the service. Put a [coalescing layer](crate::coalesce) inside it to
//!   share those calls.
//! * Responses are cloned out of the cache on every hit: for large bodies
//!   use a cheap-to-clone response (`Arc`, `Bytes`).
//!
//! moka's synchronous cache is used (feature `sync`): its lookups and
//! inserts never wait on I/O, so the response future stays a plain
//! state machine instead of boxing moka's async lookups.
//!
//! # Observability
//!
//! Hits and misses are `trace` traces, stale answers `debug`;
//! [`ResponseCache::subscribe`] delivers [`CacheEvent`]s and
//! [`ResponseCache::metrics`] returns [`CacheMetrics`] (hits, misses,
//! stale answers, stores, entries).

mod config;
mod event;
mod future;
mod layer;
mod metrics;
mod service;
mod state;

pub use self::config::{CacheConfig, CacheConfigBuilder, MAX_RETENTION};
pub use self::event::{CacheEvent, CacheEventKind};
pub use self::future::ResponseFuture;
pub use self::layer::CacheLayer;
pub use self::metrics::CacheMetrics;
pub use self::service::CacheService;
pub use self::state::ResponseCache;
