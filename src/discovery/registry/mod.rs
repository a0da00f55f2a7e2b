//! Where instances are found and where they register: the [`Registry`] and
//! [`Registrar`] traits and their backends.
//!
//! The traits split a registry's two audiences:
//!
//! * [`Registry`], the read side: which instances of a service are
//!   healthy, now ([`healthy`](Registry::healthy)) or as a stream of
//!   snapshots ([`watch`](Registry::watch)). It is all a
//!   [`Balance`](crate::discovery::Balance) or a
//!   [`RegistryDiscover`](crate::discovery::RegistryDiscover) needs.
//! * [`Registrar`], the write side, which extends it: instances
//!   [`register`](Registrar::register) (getting a [`RegistrationGuard`]),
//!   [`deregister`](Registrar::deregister) and renew their TTL
//!   ([`pass_ttl`](Registrar::pass_ttl)).
//!
//! A read-only backend implements only [`Registry`]: asking a static list
//! or DNS to register an instance does not compile.
//!
//! | backend | feature | reads | registers |
//! |---|---|---|---|
//! | [`InMemoryRegistry`] | always | its own table; runs TTL and HTTP checks | yes |
//! | [`StaticRegistry`] | always | a list given by configuration | no |
#![cfg_attr(
    feature = "dns",
    doc = "| [`DnsRegistry`] | `dns` | A/AAAA or SRV records, re-resolved | no |"
)]
#![cfg_attr(
    not(feature = "dns"),
    doc = "| `DnsRegistry` | `dns` | A/AAAA or SRV records, re-resolved | no |"
)]
#![cfg_attr(
    feature = "consul",
    doc = "| [`ConsulRegistry`] | `consul` | `/v1/health/service`, blocking queries | yes |"
)]
#![cfg_attr(
    not(feature = "consul"),
    doc = "| `ConsulRegistry` | `consul` | `/v1/health/service`, blocking queries | yes |"
)]
#![cfg_attr(
    feature = "etcd",
    doc = "| [`EtcdRegistry`] | `etcd` | a prefix read, then a watch | yes (leases) |"
)]
#![cfg_attr(
    not(feature = "etcd"),
    doc = "| `EtcdRegistry` | `etcd` | a prefix read, then a watch | yes (leases) |"
)]
//!
//! Both traits are object-safe: `Arc<dyn Registry>` and
//! `Arc<dyn Registrar>` work wherever `R: Registry` is asked for.
//!
//! ```
//! use std::sync::Arc;
//! use palisade::discovery::registry::{InMemoryRegistry, Registrar, Registry, StaticRegistry};
//! use palisade::discovery::{Balance, BalanceConfig, Instance, make_fn};
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let read_only: Arc<dyn Registry> = Arc::new(StaticRegistry::new([
//!     Instance::builder("users", "users-a", "10.0.0.1:80").build()?,
//! ]));
//! let writable: Arc<dyn Registrar> = Arc::new(InMemoryRegistry::new());
//! let make = make_fn(|_: &Instance| {
//!     Ok::<_, palisade::BoxError>(service_fn(|_: ()| async { Ok::<_, palisade::BoxError>(()) }))
//! });
//! let _from_static = Balance::new("users", &read_only, make.clone(), BalanceConfig::default())?;
//! let _from_memory = Balance::new("users", &writable, make, BalanceConfig::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! A static list has no write side:
//!
//! ```compile_fail
//! use palisade::discovery::registry::{Registrar, Registration, StaticRegistry};
//! use palisade::discovery::{HealthCheck, Instance};
//! # async fn f() -> Result<(), palisade::BoxError> {
//! let registry = StaticRegistry::new(Vec::<Instance>::new());
//! let instance = Instance::builder("users", "a", "10.0.0.1:80").build()?;
//! registry.register(Registration::new(instance, HealthCheck::None)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Contract for implementors
//!
//! Read side ([`Registry`]):
//!
//! * [`healthy`](Registry::healthy) answers the healthy instances of a
//!   service, in id order; a service nobody registered is an empty set.
//! * [`watch`](Registry::watch) yields the current healthy set first
//!   (possibly empty), then a new full set each time it may have changed,
//!   in id order. Repeating an unchanged set is allowed (the backends here
//!   do not); consumers diff with
//!   [`SnapshotDiff`](crate::discovery::SnapshotDiff). An `Err` item
//!   reports a transient problem: the stream goes on, the backend retries
//!   (with a [`BackoffSchedule`](crate::backoff::BackoffSchedule), reset
//!   after each success), and consumers keep the last set they saw. The
//!   stream ends only when the registry is closed (or, for a backend that
//!   says so, after an error that no retry can fix). Dropping the stream
//!   stops the watch's background work.
//!
//! Write side ([`Registrar`]):
//!
//! * [`register`](Registrar::register) replaces an earlier registration of
//!   the same service and id (as Consul's agent does) and returns a
//!   [`RegistrationGuard`] that deregisters when dropped; the old
//!   registration's guard then leaves the new one alone. Instances with a
//!   [`HealthCheck::Ttl`] are healthy at once (registering is the first
//!   renewal); with a [`HealthCheck::Http`] they are critical until the
//!   first check, run at once, passes. A check the backend cannot run is
//!   [`DiscoveryError::Unsupported`].
//! * [`deregister`](Registrar::deregister) and
//!   [`pass_ttl`](Registrar::pass_ttl) of an instance that is not
//!   registered fail with [`DiscoveryError::NotRegistered`].
//!
//! Both: every method is cancel-safe (dropping a returned future leaves
//! the registry consistent), and server failures are
//! [`DiscoveryError::Unavailable`] (transient) or
//! [`DiscoveryError::InvalidData`].
//!
//! `tests/discovery_registry_contract/` is the suite every backend here
//! passes; run it against a new one.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;

use super::error::DiscoveryError;
use super::health::HealthCheck;
use super::instance::Instance;

#[cfg(feature = "consul")]
mod consul;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
mod guard;
mod instance_set;
mod memory;
mod metrics;
mod polling;
mod static_list;
#[cfg(any(feature = "consul", feature = "etcd"))]
mod tls;
mod watch_channel;

#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub use self::consul::{
    ConsulEvent, ConsulMetrics, ConsulRegistry, ConsulRegistryBuilder, ConsulStatusError,
    MAX_CONSUL_WAIT,
};
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use self::dns::{
    DnsEvent, DnsMetrics, DnsQuery, DnsRegistry, DnsRegistryBuilder, SRV_PRIORITY_METADATA_KEY,
    SRV_TARGET_METADATA_KEY,
};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use self::etcd::{EtcdEvent, EtcdMetrics, EtcdRegistry, EtcdRegistryBuilder};
pub use self::guard::RegistrationGuard;
pub use self::instance_set::InstanceSet;
pub use self::memory::{
    InMemoryRegistry, InstanceStatus, RegistryEvent, RegistryEventKind, RegistryMetrics,
};
pub use self::static_list::StaticRegistry;

pub use crate::future::BoxFuture;

/// The stream returned by [`Registry::watch`]: full snapshots of a
/// service's healthy instances.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<Instance>, DiscoveryError>> + Send>>;

/// The stream returned by [`Registry::watch_sets`]: the same snapshots as
/// [`WatchStream`], as persistent [`InstanceSet`]s.
pub type InstanceSetStream =
    Pin<Box<dyn Stream<Item = Result<InstanceSet, DiscoveryError>> + Send>>;

/// What to register: an instance and how its health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The instance: service, id, address, tags, metadata, weight.
    pub instance: Instance,
    /// How the registry decides the instance is healthy.
    pub check: HealthCheck,
}

impl Registration {
    /// Registers `instance` with `check`.
    pub fn new(instance: Instance, check: HealthCheck) -> Self {
        Self { instance, check }
    }
}

/// The read side of a service registry: the healthy instances of a
/// service, now and as a watch.
///
/// What a balancer and [`RegistryDiscover`](crate::discovery::RegistryDiscover)
/// need. Implemented by every backend; the ones instances can register
/// with also implement [`Registrar`]. Object-safe: balancers take any
/// `R: Registry`, including `Arc<dyn Registry>`. See the
/// [module docs](self) for the contract.
pub trait Registry: fmt::Debug + Send + Sync + 'static {
    /// The backend's name for errors and traces, e.g. `"in-memory"`.
    fn backend(&self) -> &'static str;

    /// The healthy instances of `service` now, in id order.
    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>>;

    /// Watches the healthy instances of `service`: the current set first,
    /// then every new set (see the [module docs](self)).
    fn watch(&self, service: &str) -> WatchStream;

    /// [`watch`](Self::watch) as [`InstanceSet`]s: the same snapshots,
    /// with the same contract, which a backend that keeps its healthy set
    /// as an [`InstanceSet`] hands out without copying. A watcher then
    /// diffs successive sets with [`InstanceSet::changes_to`] in
    /// O(changes × log n), where diffing vectors costs O(n) per snapshot.
    /// The balancer watches with this.
    ///
    /// The default collects each snapshot of [`watch`](Self::watch) into a
    /// set (O(n log n) per snapshot); [`InMemoryRegistry`] overrides it.
    fn watch_sets(&self, service: &str) -> InstanceSetStream {
        use futures_util::StreamExt;
        Box::pin(
            self.watch(service)
                .map(|snapshot| snapshot.map(InstanceSet::from_iter)),
        )
    }
}

/// The write side of a service registry: where instances register,
/// deregister and renew their TTL.
///
/// Implemented by [`InMemoryRegistry`], and by the etcd and Consul
/// backends behind their features; not by the read-only static list and
/// DNS. Object-safe (`Arc<dyn Registrar>`); an `Arc<dyn Registrar>` is
/// also a [`Registry`]. See the [module docs](self) for the contract.
pub trait Registrar: Registry {
    /// Registers an instance; the returned guard deregisters it when
    /// dropped or on [`RegistrationGuard::deregister`].
    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>>;

    /// Removes an instance. Fails with
    /// [`DiscoveryError::NotRegistered`] when it is not registered.
    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>>;

    /// Renews the TTL of an instance registered with
    /// [`HealthCheck::Ttl`] (Consul's `/v1/agent/check/pass`, an etcd lease
    /// keep-alive). Fails with [`DiscoveryError::NotRegistered`] when the
    /// instance is gone (its TTL lapsed: register again) and
    /// [`DiscoveryError::Unsupported`] when it has no TTL check.
    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>>;
}

macro_rules! forward_to_pointee {
    ($($ptr:ty),*) => {$(
        impl<R: Registry + ?Sized> Registry for $ptr {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }

            fn healthy<'a>(
                &'a self,
                service: &'a str,
            ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
                (**self).healthy(service)
            }

            fn watch(&self, service: &str) -> WatchStream {
                (**self).watch(service)
            }

            fn watch_sets(&self, service: &str) -> InstanceSetStream {
                (**self).watch_sets(service)
            }
        }

        impl<R: Registrar + ?Sized> Registrar for $ptr {
            fn register(
                &self,
                registration: Registration,
            ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
                (**self).register(registration)
            }

            fn deregister<'a>(
                &'a self,
                service: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
                (**self).deregister(service, id)
            }

            fn pass_ttl<'a>(
                &'a self,
                service: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
                (**self).pass_ttl(service, id)
            }
        }
    )*};
}

forward_to_pointee!(Arc<R>, Box<R>);
