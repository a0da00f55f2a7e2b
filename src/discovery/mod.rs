//! Client-side service discovery: find the healthy instances of a service
//! and spread calls over them.
//!
//! A [`Registry`] holds registrations ([`Registration`]: an [`Instance`]
//! and its [`HealthCheck`]) and answers which instances of a service are
//! healthy, now ([`Registry::healthy`]) or as a stream of snapshots
//! ([`Registry::watch`]). Registering returns a [`RegistrationGuard`] that
//! deregisters the instance when dropped.

#[cfg(feature = "consul")]
mod consul;
mod diff;
#[cfg(feature = "dns")]
mod dns;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod health;
#[cfg(feature = "http")]
mod http_check;
mod instance;
mod memory;
mod registry;
mod static_list;
mod watch;

#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub use self::consul::{
    ConsulEvent, ConsulMetrics, ConsulRegistry, ConsulRegistryBuilder, ConsulStatusError,
    MAX_CONSUL_WAIT,
};
pub use self::diff::{InstanceChange, SnapshotDiff};
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use self::dns::{
    DnsEvent, DnsMetrics, DnsQuery, DnsRegistry, DnsRegistryBuilder, SRV_PRIORITY_METADATA_KEY,
    SRV_TARGET_METADATA_KEY,
};
pub use self::error::{DiscoveryError, NoHealthyInstance};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use self::etcd::{EtcdEvent, EtcdMetrics, EtcdRegistry, EtcdRegistryBuilder};
pub use self::health::{HealthCheck, HttpCheck, HttpCheckBuilder, MIN_CHECK_PERIOD};
pub use self::instance::{
    Instance, InstanceAddress, InstanceBuilder, InstanceId, IntoAddress, MAX_NAME_LEN, MAX_WEIGHT,
    ServiceName, WEIGHT_METADATA_KEY,
};
pub use self::memory::{
    InMemoryRegistry, InstanceStatus, RegistryEvent, RegistryEventKind, RegistryMetrics,
};
pub use self::registry::{BoxFuture, Registration, RegistrationGuard, Registry, WatchStream};
pub use self::static_list::StaticRegistry;
