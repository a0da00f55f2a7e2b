//! Client-side service discovery: find the healthy instances of a service
//! and spread calls over them.
//!
//! A [`Registry`] holds registrations ([`Registration`]: an [`Instance`]
//! and its [`HealthCheck`]) and answers which instances of a service are
//! healthy, now ([`Registry::healthy`]) or as a stream of snapshots
//! ([`Registry::watch`]). Registering returns a [`RegistrationGuard`] that
//! deregisters the instance when dropped.

mod balance;
mod diff;
mod discover;
mod error;
mod health;
#[cfg(feature = "http")]
mod http_check;
mod instance;
mod memory;
mod registry;
mod static_list;
mod watch;

pub use self::balance::{
    Balance, BalanceConfig, BalanceConfigBuilder, BalanceEvent, BalanceEventKind, BalanceLayer,
    BalanceMetrics, EndpointMetrics, MakeFn, OutlierDetection, OutlierDetectionBuilder, Picker,
    ResponseFuture, make_fn,
};
pub use self::diff::{InstanceChange, SnapshotDiff};
pub use self::discover::RegistryDiscover;
pub use self::error::{DiscoveryError, NoHealthyInstance};
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
