//! How the services find each other: each instance registers in the
//! embedded registry with an HTTP health check (or, with `--registry
//! etcd://...`, in etcd with a lease the instance keeps alive); callers
//! reach a service through a balancer over its healthy instances.

use std::sync::Arc;
use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{
    Balance, BalanceConfig, HealthCheck, HttpCheck, InMemoryRegistry, Instance, OutlierDetection,
    Picker, Registrar, Registration, RegistrationGuard, Registry, make_fn,
};

/// The registry the system's services share.
pub type SharedRegistry = Arc<dyn Registrar>;

/// The embedded registry, or the etcd at `url` (`etcd://host:port`, with
/// the `etcd` feature) under a key prefix of this system's own, so that
/// systems started at once do not see each other's instances.
pub async fn open(url: Option<&str>) -> Result<SharedRegistry, BoxError> {
    let Some(url) = url else {
        return Ok(Arc::new(InMemoryRegistry::new()));
    };
    let Some(address) = url.strip_prefix("etcd://") else {
        return Err(format!("--registry needs an etcd:// URL, got {url:?}").into());
    };
    open_etcd(address).await
}

#[cfg(feature = "etcd")]
async fn open_etcd(address: &str) -> Result<SharedRegistry, BoxError> {
    let prefix = format!("/palisade-shop/{:016x}", rand::random::<u64>());
    let registry = palisade::discovery::EtcdRegistry::builder()
        .endpoint(format!("http://{address}"))
        .prefix(prefix)
        .default_lease_ttl(ETCD_LEASE_TTL)
        .connect()
        .await?;
    Ok(Arc::new(registry))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_address: &str) -> Result<SharedRegistry, BoxError> {
    Err("--registry etcd://... needs the etcd feature: cargo run --example ecommerce --features etcd".into())
}

/// How long an instance stays in etcd after its process stops renewing
/// its lease.
#[cfg(feature = "etcd")]
pub const ETCD_LEASE_TTL: Duration = Duration::from_secs(2);

use super::http_json::{InstanceClient, JsonClient};

/// How often the registry checks each instance's `/health`.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(300);

/// Registers `id` of `service` at `address`: checked over HTTP by the
/// embedded registry; in etcd, which runs no checks, alive as long as its
/// lease is kept alive.
pub async fn register(
    registry: &dyn Registrar,
    service: &str,
    id: &str,
    address: std::net::SocketAddr,
) -> Result<RegistrationGuard, BoxError> {
    let instance = Instance::builder(service, id, address.to_string()).build()?;
    let check = if registry.backend() == "etcd" {
        HealthCheck::None
    } else {
        HealthCheck::Http(
            HttpCheck::builder()
                .path("/health")
                .interval(HEALTH_INTERVAL)
                .timeout(HEALTH_INTERVAL)
                .build()?,
        )
    };
    Ok(registry
        .register(Registration::new(instance, check))
        .await?)
}

/// Waits until `service` has `count` healthy instances (at most 5 s).
pub async fn wait_healthy(
    registry: &dyn Registry,
    service: &str,
    count: usize,
) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if registry.healthy(service).await?.len() >= count {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(
                format!("{service}: fewer than {count} healthy instances after 5 s").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The balanced JSON client of `service`: round robin over its healthy
/// instances; an instance that fails `eject_after` calls in a row is
/// ejected for `ejection` (outlier detection).
pub fn balanced_json(
    registry: &dyn Registry,
    service: &str,
    client: JsonClient,
    eject_after: u32,
    ejection: Duration,
    seed: u64,
) -> Result<Balance<InstanceClient>, BoxError> {
    let make = make_fn(move |instance: &Instance| {
        Ok::<_, BoxError>(InstanceClient::new(client.clone(), instance))
    });
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .rng_seed(seed)
        .outlier_detection(
            OutlierDetection::builder()
                .consecutive_failures(eject_after)
                .base_ejection_time(ejection)
                .build()?,
        )
        .build()?;
    Ok(Balance::new(service, registry, make, config)?)
}

/// Registers `id` of `service` at `address`: the users service (gRPC)
/// with a grpc.health.v1 check (palisade's `tonic` feature, on for the
/// examples through the crate's dev-dependency on itself), every other
/// instance over HTTP; in etcd, every instance by its lease.
pub async fn register_instance(
    registry: &dyn Registrar,
    service: &str,
    id: &str,
    address: std::net::SocketAddr,
) -> Result<RegistrationGuard, BoxError> {
    // etcd runs no checks: there, every instance lives by its lease.
    if service == "users" && registry.backend() != "etcd" {
        let instance = Instance::builder(service, id, address.to_string()).build()?;
        let check = palisade::discovery::GrpcCheck::builder()
            .interval(HEALTH_INTERVAL)
            .timeout(HEALTH_INTERVAL)
            .build()?;
        return Ok(registry
            .register(Registration::new(instance, HealthCheck::Grpc(check)))
            .await?);
    }
    register(registry, service, id, address).await
}

/// How the users service's health is checked, for the narration.
pub const USERS_CHECK: &str = "a gRPC health check (grpc.health.v1)";
