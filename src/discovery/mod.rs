//! Client-side service discovery: find the healthy instances of a service
//! and spread calls over them.
//!
//! Three parts, each usable alone:
//!
//! * A [`Registry`] answers which instances of a service are healthy, now
//!   ([`Registry::healthy`]) or as a stream of snapshots
//!   ([`Registry::watch`]). A [`Registrar`] is a registry instances
//!   register with ([`Registration`]: an [`Instance`] and its
//!   [`HealthCheck`]); registering returns a [`RegistrationGuard`] that
//!   deregisters the instance when dropped. The backends live in
//!   [`registry`] (and are re-exported here): [`InMemoryRegistry`] (the
//!   embedded default, which runs TTL and HTTP health checks itself, as
//!   Consul's agent does) and [`StaticRegistry`] (a fixed list, read-only)
//!   are always available; the DNS (read-only), etcd and Consul backends
//!   are behind their features. [`registry`] states the contract a backend
//!   keeps.
//! * [`Balance`] (or [`BalanceLayer`]) watches a service, builds one client
//!   per instance with a `MakeService` (any `tower::Service<Instance>`, such
//!   as [`make_fn`]), drops it when the instance goes away, and sends each
//!   call to the instance its [`Picker`] chooses: round robin, random,
//!   weighted, power-of-two-choices least-loaded or peak-EWMA latency.
//!   Optional [`OutlierDetection`] ejects instances whose calls keep
//!   failing, as Envoy does. No instance to call is a [`NoHealthyInstance`]
//!   error naming the service.
//! * [`RegistryDiscover`] turns any registry into a
//!   `tower::discover::Discover`, for `tower::balance::p2c::Balance`.
//!
//! ```
//! use std::time::Duration;
//! use palisade::discovery::{
//!     make_fn, Balance, BalanceConfig, HealthCheck, InMemoryRegistry, Instance,
//!     NoHealthyInstance, Picker, Registrar, Registration,
//! };
//! use tower::{service_fn, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let registry = InMemoryRegistry::new();
//!
//! // Each instance of "users" registers itself and renews a 10 s TTL.
//! let _a = registry
//!     .register(Registration::new(
//!         Instance::builder("users", "users-a", "10.0.0.1:8080").build()?,
//!         HealthCheck::ttl(Duration::from_secs(10))?,
//!     ))
//!     .await?;
//!
//! // A client per instance: here a closure; in practice a tonic Channel or
//! // a hyper client with the instance's base URL.
//! let make = make_fn(|instance: &Instance| {
//!     let base = format!("http://{}", instance.address());
//!     Ok::<_, palisade::BoxError>(service_fn(move |path: &'static str| {
//!         let url = format!("{base}{path}");
//!         async move { Ok::<_, palisade::BoxError>(url) }
//!     }))
//! });
//! let config = BalanceConfig::builder().picker(Picker::RoundRobin).build()?;
//! let mut users = Balance::new("users", &registry, make, config)?;
//!
//! let url = users.ready().await?.call("/users/7").await?;
//! assert_eq!(url, "http://10.0.0.1:8080/users/7");
//!
//! // An unknown service has no instance to call: a typed error.
//! let mut orders = Balance::new("orders", &registry, make_fn(|_: &Instance| {
//!     Ok::<_, palisade::BoxError>(service_fn(|_: ()| async { Ok::<_, palisade::BoxError>(()) }))
//! }), BalanceConfig::default())?;
//! let err = orders.ready().await?.call(()).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<NoHealthyInstance>().unwrap().service().as_str(), "orders");
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! Health checks ([`HealthCheck`], [`HttpCheck`]):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `HealthCheck::Ttl { ttl }` | — | Healthy at registration; removed unless renewed ([`Registrar::pass_ttl`]) within each `ttl`. |
//! | `HttpCheck::path` | `/health` | `GET http://<address><path>`; 2xx passes. |
//! | `HttpCheck::interval` | 10 s | Time between checks; the first runs at registration. |
//! | `HttpCheck::timeout` | 5 s | At most `interval`. |
//! | `HttpCheck::deregister_critical_after` | never | Remove an instance critical this long. |
//! | `GrpcCheck` (feature `tonic`) | service `""`, 10 s, 5 s, never | `grpc.health.v1.Health/Check` over HTTP/2; `SERVING` passes. Same `interval`, `timeout` and `deregister_critical_after`. |
//!
//! The balancer ([`BalanceConfig`], [`OutlierDetection`]):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `picker` | [`Picker::peak_ewma`] (30 ms default RTT, 10 s decay) | How each call's instance is chosen; see [`Picker`]. |
//! | `outlier_detection` | off | Eject instances after consecutive failures. |
//! | `consecutive_failures` | 5 | Failures in a row that eject. |
//! | `base_ejection_time` | 30 s | First ejection; with ejection count `n` one lasts `n` times as long (the count drops by one per `base_ejection_time` back in the picks). |
//! | `max_ejection_time` | 300 s | Cap on an ejection. |
//! | `max_ejection_percent` | 50 | The most instances ejected at once (strict). |
//! | `circuit_breaker` | none | A [`CircuitBreakerConfig`](crate::circuit_breaker::CircuitBreakerConfig): each instance gets its own breaker, named `<service>/<instance id>`; instances whose breaker rejects are not picked. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//! | `rng_seed` | from the OS | Seeds the pickers' random numbers, for tests that replay picks. |
//! | `call_clock` | `CallClock::Tsc` | The clock that times calls for peak-EWMA: the CPU's time-stamp counter, real time only; `CallClock::Tokio` follows `tokio::time::pause()` (for tests that expect latencies in virtual time), at about twice the cost per read; `CallClock::Coarse`: an atomic load per read, ~1 ms resolution. |
//!
//! # Guarantees
//!
//! * A pick reads one immutable snapshot of the available instances
//!   (an `ArcSwap` load): no lock on the call path. Membership changes and
//!   ejections build a new snapshot off the call path.
//! * A call counts as in flight on its instance from `call` until its
//!   response future completes or is dropped.
//! * `poll_ready` waits for the registry's first answer (its first
//!   snapshot, or its first error, after which calls fail with
//!   [`NoHealthyInstance`] until instances appear), never longer.
//! * Registry errors never reach callers: the balancer keeps the last
//!   instances it saw and logs the error.
//! * An instance whose client cannot be built (the `MakeService` failed)
//!   is left out and built again after a backoff (100 ms doubling to 30 s,
//!   full jitter, from [`Backoff`](crate::backoff::Backoff)).
//! * Dropping the last clone of a balancer stops its watch and its
//!   ejection timers.
//!
//! # Observability
//!
//! Instances added, updated, removed, ejected and returned are `info`/`warn`
//! traces, [`BalanceEvent`]s ([`Balance::subscribe`]) and counts in
//! [`Balance::metrics`] (per instance: in flight, picks, peak-EWMA latency,
//! failures in a row, ejections). The in-memory registry reports
//! registrations, health changes and removals the same way
//! ([`InMemoryRegistry::subscribe`], [`InMemoryRegistry::metrics`]).
//!
//! # Per-instance circuit breakers
//!
//! [`BalanceConfigBuilder::circuit_breaker`] gives each instance its own
//! [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker), named
//! `<service>/<instance id>`, created when the instance is added (or
//! updated) and dropped when it leaves:
//!
//! * An instance whose breaker rejects calls (OPEN before its wait is
//!   over, HALF_OPEN with its trial calls taken, FORCED_OPEN) is not picked,
//!   like an ejected one; the call goes to another instance. An OPEN
//!   breaker whose wait is over admits the next call picked for it as its
//!   HALF_OPEN trial, so an instance that recovered gets calls again.
//! * Each call's outcome, as the balancer's classifier decides (the one
//!   outlier detection uses), is recorded on its instance's breaker; a
//!   response future dropped before it completes records nothing.
//! * When every instance's breaker rejects, the call fails at once with
//!   [`BreakerOpen`](crate::circuit_breaker::BreakerOpen) (of the picked
//!   instance: its `retry_in` says when it takes a trial call), not
//!   [`NoHealthyInstance`]: instances are there, their breakers refuse.
//! * [`EndpointMetrics::breaker`] and [`BalanceMetrics::breakers_open`]
//!   show the breakers' states; [`Balance::circuit_breaker`] gives one
//!   instance's breaker for its own metrics and events. Transitions are
//!   traced by the breaker under its name.
//! * Without the option the call path has no breaker: no extra atomic
//!   operation or allocation per call.
//!
//! Wrapping each client in a breaker inside the `MakeService` still works,
//! but the balancer then cannot avoid an instance whose breaker is open.

mod balance;
mod diff;
mod discover;
mod error;
mod health;
mod instance;
pub mod registry;

pub use self::balance::{
    Balance, BalanceConfig, BalanceConfigBuilder, BalanceEvent, BalanceEventKind, BalanceLayer,
    BalanceMetrics, EndpointMetrics, MakeFn, OutlierDetection, OutlierDetectionBuilder, Picker,
    ResponseFuture, make_fn,
};
pub use self::diff::{InstanceChange, SnapshotDiff};
pub use self::discover::RegistryDiscover;
pub use self::error::{DiscoveryError, NoHealthyInstance};
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use self::health::{GrpcCheck, GrpcCheckBuilder};
pub use self::health::{
    HealthCheck, HttpCheck, HttpCheckBuilder, MAX_CHECK_PERIOD, MIN_CHECK_PERIOD,
};
pub use self::instance::{
    Instance, InstanceAddress, InstanceBuilder, InstanceId, IntoAddress, MAX_NAME_LEN, MAX_WEIGHT,
    ServiceName, WEIGHT_METADATA_KEY,
};
// Every registry type, also at its home in `registry`.
pub use self::registry::*;
