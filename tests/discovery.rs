//! Service discovery: registries, health checks, the balancer, the
//! `Discover` adapter and outlier ejection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use palisade::discovery::{
    DiscoveryError, HealthCheck, HttpCheck, InMemoryRegistry, Instance, InstanceStatus,
    Registration, Registry, RegistryEventKind, StaticRegistry,
};

fn instance(service: &str, id: &str, addr: &str) -> Instance {
    Instance::builder(service, id, addr)
        .build()
        .expect("valid instance")
}

fn ttl(secs: u64) -> HealthCheck {
    HealthCheck::ttl(Duration::from_secs(secs)).expect("valid ttl")
}

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id().to_string()).collect()
}

/// Polls `condition` every few milliseconds until it holds, failing after
/// `deadline` (for tests against real servers, in real time).
async fn eventually(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + deadline;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

mod health_server {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpSocket;
    use tokio::task::{JoinHandle, JoinSet};

    /// A real HTTP server on 127.0.0.1 answering `GET /health` with a
    /// status the test sets; it can be stopped and started on the same port.
    pub(crate) struct HealthServer {
        pub(crate) addr: SocketAddr,
        pub(crate) status: Arc<AtomicU16>,
        pub(crate) hits: Arc<AtomicUsize>,
        task: Option<JoinHandle<()>>,
    }

    impl HealthServer {
        pub(crate) async fn start() -> Self {
            let mut server = Self {
                addr: "127.0.0.1:0".parse().unwrap(),
                status: Arc::new(AtomicU16::new(200)),
                hits: Arc::new(AtomicUsize::new(0)),
                task: None,
            };
            server.listen().await;
            server
        }

        async fn listen(&mut self) {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(self.addr).expect("bind");
            let listener = socket.listen(64).expect("listen");
            self.addr = listener.local_addr().expect("local addr");
            let (status, hits) = (Arc::clone(&self.status), Arc::clone(&self.hits));
            self.task = Some(tokio::spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (status, hits) = (Arc::clone(&status), Arc::clone(&hits));
                    connections.spawn(async move {
                        let service =
                            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                let status = status.load(Ordering::SeqCst);
                                if request.uri().path() == "/health" {
                                    hits.fetch_add(1, Ordering::SeqCst);
                                }
                                async move {
                                    let mut response =
                                        hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                                    *response.status_mut() =
                                        hyper::StatusCode::from_u16(status).unwrap();
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }));
        }

        /// Closes the listener and every open connection.
        pub(crate) async fn stop(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
                let _ = task.await;
            }
        }

        /// Listens again on the same port.
        pub(crate) async fn restart(&mut self) {
            self.stop().await;
            self.listen().await;
        }
    }

    impl Drop for HealthServer {
        fn drop(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
            }
        }
    }
}

use health_server::HealthServer;

fn http_check(interval_ms: u64) -> HttpCheck {
    HttpCheck::builder()
        .interval(Duration::from_millis(interval_ms))
        .timeout(Duration::from_millis(interval_ms))
        .build()
        .expect("valid check")
}

// ---------------------------------------------------------------- registries

#[tokio::test(start_paused = true)]
async fn ttl_instance_is_healthy_at_once_and_removed_when_its_ttl_lapses() {
    let registry = InMemoryRegistry::new();
    let mut events = registry.subscribe();
    let guard = registry
        .register(Registration::new(
            instance("users", "u1", "10.0.0.1:80"),
            ttl(10),
        ))
        .await
        .unwrap();
    assert_eq!(ids(&registry.healthy("users").await.unwrap()), ["u1"]);

    tokio::time::advance(Duration::from_secs(6)).await;
    registry.pass_ttl("users", "u1").await.unwrap(); // deadline now t=16s
    tokio::time::advance(Duration::from_secs(9)).await; // t=15s
    assert_eq!(
        registry.status("users", "u1"),
        Some(InstanceStatus::Passing)
    );

    tokio::time::advance(Duration::from_secs(2)).await; // t=17s
    tokio::task::yield_now().await;
    assert!(registry.healthy("users").await.unwrap().is_empty());
    assert_eq!(registry.status("users", "u1"), None);
    assert!(matches!(
        registry.pass_ttl("users", "u1").await,
        Err(DiscoveryError::NotRegistered { .. })
    ));
    assert_eq!(registry.metrics().ttl_expirations, 1);
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [RegistryEventKind::Registered, RegistryEventKind::TtlExpired]
    );
    // The guard of an expired instance has nothing left to remove.
    assert!(matches!(
        guard.deregister().await,
        Err(DiscoveryError::NotRegistered { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn watch_yields_the_current_set_then_registrations_and_guard_drops() {
    let registry = InMemoryRegistry::new();
    let mut watch = registry.watch("users");
    assert!(watch.next().await.unwrap().unwrap().is_empty());

    let a = registry
        .register(Registration::new(
            instance("users", "a", "10.0.0.1:80"),
            HealthCheck::None,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&watch.next().await.unwrap().unwrap()), ["a"]);
    let b = registry
        .register(Registration::new(
            instance("users", "b", "10.0.0.2:80"),
            ttl(5),
        ))
        .await
        .unwrap();
    assert_eq!(ids(&watch.next().await.unwrap().unwrap()), ["a", "b"]);

    drop(a);
    assert_eq!(ids(&watch.next().await.unwrap().unwrap()), ["b"]);
    b.deregister().await.unwrap();
    assert!(watch.next().await.unwrap().unwrap().is_empty());
    assert_eq!(registry.metrics().deregistrations, 2);
}

#[tokio::test]
async fn deregistering_twice_is_not_registered_and_other_services_are_separate() {
    let registry = InMemoryRegistry::new();
    let guard = registry
        .register(Registration::new(
            instance("users", "a", "10.0.0.1:80"),
            HealthCheck::None,
        ))
        .await
        .unwrap();
    let _orders = registry
        .register(Registration::new(
            instance("orders", "a", "10.0.0.9:80"),
            HealthCheck::None,
        ))
        .await
        .unwrap();
    registry.deregister("users", "a").await.unwrap();
    let err = registry.deregister("users", "a").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance 'a' of service 'users' is not registered"
    );
    assert_eq!(ids(&registry.healthy("orders").await.unwrap()), ["a"]);
    let _ = guard.keep();
    assert!(matches!(
        registry.pass_ttl("orders", "a").await,
        Err(DiscoveryError::Unsupported { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn reregistering_replaces_and_the_old_guard_leaves_the_new_registration() {
    let registry = InMemoryRegistry::new();
    let old = registry
        .register(Registration::new(
            instance("users", "a", "10.0.0.1:80"),
            ttl(5),
        ))
        .await
        .unwrap();
    let _new = registry
        .register(Registration::new(
            instance("users", "a", "10.0.0.2:80"),
            HealthCheck::None,
        ))
        .await
        .unwrap();
    drop(old);
    tokio::task::yield_now().await;
    // Neither the old guard nor the old TTL removes the new registration.
    tokio::time::advance(Duration::from_secs(60)).await;
    let healthy = registry.healthy("users").await.unwrap();
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0].address().to_string(), "10.0.0.2:80");
}

#[tokio::test(start_paused = true)]
async fn watch_ends_when_the_registry_is_dropped_and_guards_report_closed() {
    let registry = InMemoryRegistry::new();
    let guard = registry
        .register(Registration::new(
            instance("users", "a", "10.0.0.1:80"),
            ttl(5),
        ))
        .await
        .unwrap();
    let mut watch = registry.watch("users");
    assert_eq!(watch.next().await.unwrap().unwrap().len(), 1);
    drop(registry);
    assert!(
        watch.next().await.is_none(),
        "the watch ends with the registry"
    );
    assert!(matches!(
        guard.deregister().await,
        Err(DiscoveryError::Closed { .. })
    ));
}

#[tokio::test]
async fn http_checked_instance_is_critical_until_its_check_passes_and_follows_the_server() {
    let mut server = HealthServer::start().await;
    let registry = InMemoryRegistry::new();
    let mut events = registry.subscribe();
    let _guard = registry
        .register(Registration::new(
            Instance::builder("users", "a", server.addr)
                .build()
                .unwrap(),
            HealthCheck::Http(http_check(20)),
        ))
        .await
        .unwrap();
    let deadline = Duration::from_secs(10);
    eventually("the first check passes", deadline, || {
        registry.status("users", "a") == Some(InstanceStatus::Passing)
    })
    .await;
    assert_eq!(ids(&registry.healthy("users").await.unwrap()), ["a"]);

    server.status.store(503, Ordering::SeqCst);
    eventually("a 503 makes it critical", deadline, || {
        registry.status("users", "a") == Some(InstanceStatus::Critical)
    })
    .await;
    assert!(registry.healthy("users").await.unwrap().is_empty());

    server.status.store(204, Ordering::SeqCst);
    eventually("a 204 passes again", deadline, || {
        registry.status("users", "a") == Some(InstanceStatus::Passing)
    })
    .await;

    server.stop().await;
    eventually("a stopped server is critical", deadline, || {
        registry.status("users", "a") == Some(InstanceStatus::Critical)
    })
    .await;
    server.restart().await;
    eventually("a restarted server passes", deadline, || {
        registry.status("users", "a") == Some(InstanceStatus::Passing)
    })
    .await;

    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                RegistryEventKind::Registered,
                RegistryEventKind::Passing,
                RegistryEventKind::Critical { reason: r1 },
                RegistryEventKind::Passing,
                RegistryEventKind::Critical { .. },
                RegistryEventKind::Passing,
            ] if r1.contains("503")
        ),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn http_checked_instance_critical_past_deregister_critical_after_is_removed() {
    let mut server = HealthServer::start().await;
    let registry = InMemoryRegistry::new();
    let check = HttpCheck::builder()
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(20))
        .deregister_critical_after(Duration::from_millis(100))
        .build()
        .unwrap();
    let _guard = registry
        .register(Registration::new(
            Instance::builder("users", "a", server.addr)
                .build()
                .unwrap(),
            HealthCheck::Http(check),
        ))
        .await
        .unwrap();
    eventually("passing", Duration::from_secs(10), || {
        registry.status("users", "a") == Some(InstanceStatus::Passing)
    })
    .await;
    server.stop().await;
    eventually(
        "removed after 100 ms critical",
        Duration::from_secs(10),
        || registry.status("users", "a").is_none(),
    )
    .await;
    assert_eq!(registry.metrics().critical_removals, 1);
}

#[tokio::test]
async fn http_checks_stop_when_the_instance_is_deregistered() {
    let server = HealthServer::start().await;
    let registry = InMemoryRegistry::new();
    let guard = registry
        .register(Registration::new(
            Instance::builder("users", "a", server.addr)
                .build()
                .unwrap(),
            HealthCheck::Http(http_check(10)),
        ))
        .await
        .unwrap();
    eventually("checked three times", Duration::from_secs(10), || {
        server.hits.load(Ordering::SeqCst) >= 3
    })
    .await;
    guard.deregister().await.unwrap();
    // A check already sent may still land; after that, none for 20 intervals.
    tokio::task::yield_now().await;
    let hits = server.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.hits.load(Ordering::SeqCst) <= hits + 1);
}

#[tokio::test]
async fn static_registry_lists_by_service_replaces_and_refuses_registration() {
    let registry = StaticRegistry::new([
        instance("users", "b", "10.0.0.2:80"),
        instance("users", "a", "10.0.0.1:80"),
        instance("orders", "o", "10.0.0.3:80"),
    ]);
    assert_eq!(ids(&registry.healthy("users").await.unwrap()), ["a", "b"]);
    let mut watch = registry.watch("users");
    assert_eq!(ids(&watch.next().await.unwrap().unwrap()), ["a", "b"]);
    registry.replace([instance("users", "c", "10.0.0.4:80")]);
    assert_eq!(ids(&watch.next().await.unwrap().unwrap()), ["c"]);
    let err = registry
        .register(Registration::new(
            instance("users", "d", "10.0.0.5:80"),
            HealthCheck::None,
        ))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DiscoveryError::Unsupported {
            backend: "static",
            operation: "register"
        }
    ));
}

#[test]
fn invalid_instances_and_checks_are_rejected_naming_the_field() {
    let err = Instance::builder("users", "a b", "10.0.0.1:80")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "id");
    let err = Instance::builder("users", "a", "10.0.0.1")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "address");
    let err = Instance::builder("users", "a", "10.0.0.1:80")
        .weight(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "weight");
    let err = Instance::builder("users", "a", "10.0.0.1:80")
        .metadata("weight", "20000")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "weight");
    let err = HttpCheck::builder()
        .interval(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "timeout");
    assert_eq!(
        HttpCheck::builder()
            .interval(Duration::ZERO)
            .build()
            .unwrap_err()
            .field(),
        "interval"
    );
    assert_eq!(HealthCheck::ttl(Duration::ZERO).unwrap_err().field(), "ttl");
    assert!(InMemoryRegistry::with_event_capacity(0).is_err());
}
