//! How the services find each other: each instance registers in the
//! embedded registry with an HTTP health check; callers reach a service
//! through a balancer over its healthy instances.

use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{
    Balance, BalanceConfig, HealthCheck, HttpCheck, InMemoryRegistry, Instance, OutlierDetection,
    Picker, Registrar, Registration, RegistrationGuard, make_fn,
};

use super::http_json::{InstanceClient, JsonClient};

/// How often the registry checks each instance's `/health`.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(300);

/// Registers `id` of `service` at `address`, checked over HTTP.
pub async fn register(
    registry: &InMemoryRegistry,
    service: &str,
    id: &str,
    address: std::net::SocketAddr,
) -> Result<RegistrationGuard, BoxError> {
    let instance = Instance::builder(service, id, address.to_string()).build()?;
    let check = HttpCheck::builder()
        .path("/health")
        .interval(HEALTH_INTERVAL)
        .timeout(HEALTH_INTERVAL)
        .build()?;
    Ok(registry
        .register(Registration::new(instance, HealthCheck::Http(check)))
        .await?)
}

/// Waits until `service` has `count` healthy instances (at most 5 s).
pub async fn wait_healthy(
    registry: &InMemoryRegistry,
    service: &str,
    count: usize,
) -> Result<(), BoxError> {
    use palisade::discovery::Registry;
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
    registry: &InMemoryRegistry,
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
/// instance over HTTP.
pub async fn register_instance(
    registry: &InMemoryRegistry,
    service: &str,
    id: &str,
    address: std::net::SocketAddr,
) -> Result<RegistrationGuard, BoxError> {
    if service == "users" {
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
