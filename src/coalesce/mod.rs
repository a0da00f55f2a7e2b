//! Request coalescing (singleflight): concurrent requests for the same key
//! share one inner call.
//!
//! When a popular entry expires, a thousand requests for it arrive at once
//! and each one asks the database. A [`Coalesce`] layer lets the first
//! request for a key make the call and the others wait for it; the response
//! is cloned to every waiter, like Go's `singleflight`. Only requests that
//! overlap in time are coalesced: the next request after the call finished
//! makes a new one (put a cache outside for reuse over time).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use palisade::coalesce::Coalesce;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = Arc::clone(&calls);
//! let profiles = Coalesce::with_defaults("profiles");
//! let service = ServiceBuilder::new()
//!     .layer(profiles.layer(|user_id: &u64| *user_id))
//!     .service_fn(move |user_id: u64| {
//!         counted.fetch_add(1, Ordering::Relaxed);
//!         async move {
//!             tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!             Ok::<_, std::io::Error>(format!("profile {user_id}"))
//!         }
//!     });
//! let (a, b) = tokio::join!(service.clone().oneshot(7), service.clone().oneshot(7));
//! assert_eq!((a?, b?), ("profile 7".to_string(), "profile 7".to_string()));
//! assert_eq!(calls.load(Ordering::Relaxed), 1, "one call answered both");
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | key (argument of [`Coalesce::layer`]) | — | `Fn(&Req) -> K`: requests with equal keys share a call. |
//! | `max_in_flight_keys` | 10,000 | Keys that may have a shared call in flight at once; beyond it a request runs its own call, uncoalesced. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//!
//! # Guarantees
//!
//! * Requests with equal keys that overlap in time reach the inner service
//!   once. The response must be `Clone`; each waiter gets a clone.
//! * Errors reach every waiter too. An error is not `Clone` in general,
//!   so the inner error is kept once behind an `Arc` and each waiter gets
//!   a [`CoalescedError`] whose `source()` is that error
//!   ([`crate::find_cause`] and [`crate::error::is_rejection`] see through
//!   it).
//! * The shared call is driven by whichever waiters are still polling it
//!   (not a spawned task): dropping the request that started it does not
//!   cancel it for the others. When every waiter has gone, the call is
//!   dropped, which cancels it, and its key is forgotten: nothing is left
//!   in the map after a cancellation.
//! * If the inner future panics, the panic unwinds through the waiter that
//!   was polling it (as it would without the layer); every other waiter of
//!   that call gets a [`CoalescedError`] saying the shared call panicked,
//!   the key is forgotten (the next request makes a new call) and the call
//!   counts as completed (a [`CoalesceEventKind::Completed`] event).
//! * The map of keys in flight is bounded by `max_in_flight_keys`. A
//!   request for a new key beyond the bound is not rejected: it runs its
//!   own call, uncoalesced (coalescing saves load; it is not admission
//!   control, which is the bulkhead's and the rate limiter's job). Its
//!   error comes back unwrapped.
//! * `poll_ready` is always ready and reserves nothing in the inner
//!   service; the request that starts a call takes a clone of the inner
//!   service (so the inner service must be `Clone`) and waits for its
//!   readiness inside the call. A request that joins reserves nothing
//!   downstream.
//!
//! # Cost, and why not `futures::future::Shared`
//!
//! A request for a key no one else is asking for (the common case) takes
//! the map's lock twice (to insert the key, and to remove it when the call
//! ends; one hash each) and allocates twice: the call's slot (an `Arc`
//! holding the key, a lock, the waiter count and, once there is one, the
//! answer) and the boxed inner call, which must stay at one address while
//! any waiter may poll it (this crate forbids `unsafe`, so it cannot be
//! pinned inside the `Arc`). The one waiter polls the call with its own
//! waker and takes the answer without cloning it (`tests/coalesce_alloc.rs`
//! counts the two allocations; a request run uncoalesced makes none).
//!
//! `futures`' `Shared` does the same job generally, and this layer used it
//! before: it costs three allocations (its state, its notifier, the
//! notifier's waker slab on the first poll), takes the notifier's lock on
//! every poll, and clones the answer for every waiter including the last,
//! because the map keeps a handle on it. The slot here is what `Shared`
//! would be if it knew two things it cannot: who the waiters are (a count
//! and a place each, under the slot's lock), and that most calls have one.
//! So a waker list (one allocation, and a waker per waiter) is only made
//! when a second waiter polls; from then on the call is polled with a waker
//! that wakes them all, so any of them can drive it on if another stops
//! polling or leaves. No lock is held while the inner future runs: the
//! poller takes the boxed call out of the slot, polls it and puts it back,
//! and a waiter that finds it taken registers its waker and waits. See
//! `BENCHMARKS.md`, "Coalescing", for the measured difference.
//!
//! # Observability
//!
//! Requests that run uncoalesced and calls cancelled by their waiters are
//! `debug` traces; calls started, joined and finished are `trace`; [`Coalesce::subscribe`] delivers
//! [`CoalesceEvent`]s and [`Coalesce::metrics`] returns
//! [`CoalesceMetrics`] (keys in flight, waiters, shared calls, coalesced
//! and uncoalesced requests, abandoned calls).

mod config;
mod error;
mod event;
mod future;
mod layer;
mod metrics;
pub(crate) mod oneshot;
mod service;
mod slot;
mod state;

pub use self::config::{CoalesceConfig, CoalesceConfigBuilder, MAX_IN_FLIGHT_KEYS};
pub use self::error::CoalescedError;
pub use self::event::{CoalesceEvent, CoalesceEventKind};
pub use self::future::ResponseFuture;
pub use self::layer::CoalesceLayer;
pub use self::metrics::CoalesceMetrics;
pub use self::service::CoalesceService;
pub use self::state::Coalesce;
