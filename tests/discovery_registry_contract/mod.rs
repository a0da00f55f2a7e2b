//! The behaviour every registry backend must have (the contract written in
//! `palisade::discovery::registry`), as functions over any backend.
//!
//! * [`read_side`] takes any `Registry` and a service the caller has set up
//!   with known instances, plus one with none.
//! * [`write_side`] takes any `Registrar` and a service nobody else uses.
//!
//! `tests/discovery.rs` runs them against the in-memory and static
//! registries, `tests/discovery_consul.rs` against Consul (an in-process
//! agent), `tests/discovery_dns.rs` against DNS (an in-process name server)
//! and `tests/discovery_etcd.rs` against a real etcd. Real servers answer
//! in real time: every wait is bounded by [`DEADLINE`].

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use palisade::discovery::{
    DiscoveryError, HealthCheck, Instance, Registrar, Registration, Registry, WatchStream,
};

/// The longest any step waits for a backend.
pub const DEADLINE: Duration = Duration::from_secs(10);

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id().to_string()).collect()
}

async fn next_set(watch: &mut WatchStream) -> Vec<Instance> {
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Ok(set))) => set,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch item within {DEADLINE:?}"),
    }
}

/// Waits for the first set for which `done` holds; every set seen must be
/// in id order (an unchanged set may repeat: the contract allows it).
async fn watch_until(watch: &mut WatchStream, what: &str, done: impl Fn(&[Instance]) -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "no set with {what} within {DEADLINE:?}"
        );
        let set = next_set(watch).await;
        assert_in_id_order(&set);
        if done(&set) {
            return;
        }
    }
}

fn assert_in_id_order(set: &[Instance]) {
    let ids = ids(set);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "instances in id order");
}

/// The read side: `service` holds exactly `expected` (as the caller set
/// it up), `empty_service` holds nothing.
pub async fn read_side(
    registry: &dyn Registry,
    service: &str,
    expected: &[Instance],
    empty_service: &str,
) {
    assert!(!registry.backend().is_empty(), "a backend name");
    healthy_answers_the_set_in_id_order(registry, service, expected).await;
    a_watch_starts_with_the_current_set(registry, service, expected).await;
    a_service_without_instances_is_an_empty_set(registry, empty_service).await;
}

pub async fn healthy_answers_the_set_in_id_order(
    registry: &dyn Registry,
    service: &str,
    expected: &[Instance],
) {
    let healthy = registry.healthy(service).await.expect("healthy");
    assert_in_id_order(&healthy);
    let mut want = expected.to_vec();
    want.sort_by(|a, b| a.id().cmp(b.id()));
    assert_eq!(healthy, want);
}

pub async fn a_watch_starts_with_the_current_set(
    registry: &dyn Registry,
    service: &str,
    expected: &[Instance],
) {
    let mut watch = registry.watch(service);
    let first = next_set(&mut watch).await;
    assert_in_id_order(&first);
    assert_eq!(
        ids(&first),
        ids(&registry.healthy(service).await.expect("healthy"))
    );
    assert_eq!(first.len(), expected.len());
}

pub async fn a_service_without_instances_is_an_empty_set(registry: &dyn Registry, service: &str) {
    assert!(registry.healthy(service).await.expect("healthy").is_empty());
    let mut watch = registry.watch(service);
    assert!(
        next_set(&mut watch).await.is_empty(),
        "the first set is empty"
    );
}

/// The write side, on `service`, which nobody else uses. Instances get
/// ports from `port` on.
pub async fn write_side(registrar: &dyn Registrar, service: &str, port: u16) {
    registered_instances_are_seen_and_the_guard_removes_them(registrar, service, port).await;
    registering_again_replaces_and_the_old_guard_leaves_the_new_registration(
        registrar, service, port,
    )
    .await;
    deregistering_what_is_not_registered_is_not_registered(registrar, service).await;
}

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::builder(service, id, format!("127.0.0.1:{port}"))
        .tag("contract")
        .build()
        .expect("valid instance")
}

fn ttl() -> HealthCheck {
    HealthCheck::ttl(Duration::from_secs(30)).expect("valid TTL")
}

pub async fn registered_instances_are_seen_and_the_guard_removes_them(
    registrar: &dyn Registrar,
    service: &str,
    port: u16,
) {
    let mut watch = registrar.watch(service);
    assert!(next_set(&mut watch).await.is_empty());

    let b = instance(service, "b", port + 1);
    let a = instance(service, "a", port);
    let guard_b = registrar
        .register(Registration::new(b.clone(), ttl()))
        .await
        .expect("registered b");
    let guard_a = registrar
        .register(Registration::new(a.clone(), HealthCheck::None))
        .await
        .expect("registered a");
    assert_eq!(guard_a.service().as_str(), service);
    assert_eq!(guard_a.id().as_str(), "a");
    // Healthy at once (a TTL check counts registering as its first pass).
    assert_eq!(
        registrar.healthy(service).await.expect("healthy"),
        vec![a.clone(), b.clone()]
    );
    watch_until(&mut watch, "both registered", |set| set.len() == 2).await;
    registrar.pass_ttl(service, "b").await.expect("TTL renewed");

    guard_b.deregister().await.expect("deregistered b");
    assert_eq!(
        ids(&registrar.healthy(service).await.expect("healthy")),
        ["a"]
    );
    watch_until(&mut watch, "b gone", |set| ids(set) == ["a"]).await;
    registrar
        .deregister(service, "a")
        .await
        .expect("deregistered a by id");
    watch_until(&mut watch, "a gone", <[Instance]>::is_empty).await;
    assert!(matches!(
        guard_a.deregister().await,
        Err(DiscoveryError::NotRegistered { .. })
    ));
}

pub async fn registering_again_replaces_and_the_old_guard_leaves_the_new_registration(
    registrar: &dyn Registrar,
    service: &str,
    port: u16,
) {
    let old = registrar
        .register(Registration::new(instance(service, "r", port), ttl()))
        .await
        .expect("registered");
    let moved = instance(service, "r", port + 10);
    let new = registrar
        .register(Registration::new(moved.clone(), ttl()))
        .await
        .expect("registered again");
    assert_eq!(
        registrar.healthy(service).await.expect("healthy"),
        vec![moved.clone()]
    );
    let _ = old.deregister().await;
    assert_eq!(
        registrar.healthy(service).await.expect("healthy"),
        vec![moved],
        "the old guard left the new registration alone"
    );
    new.deregister().await.expect("deregistered");
    assert!(
        registrar
            .healthy(service)
            .await
            .expect("healthy")
            .is_empty()
    );
}

pub async fn deregistering_what_is_not_registered_is_not_registered(
    registrar: &dyn Registrar,
    service: &str,
) {
    assert!(matches!(
        registrar.deregister(service, "never").await,
        Err(DiscoveryError::NotRegistered { .. })
    ));
    assert!(matches!(
        registrar.pass_ttl(service, "never").await,
        Err(DiscoveryError::NotRegistered { .. })
    ));
}
