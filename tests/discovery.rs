//! Service discovery: registries, health checks, the balancer, the
//! `Discover` adapter and outlier ejection.

mod discovery_registry_contract;

use std::sync::Arc;
#[cfg(feature = "http")]
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use palisade::discovery::{
    DiscoveryError, HealthCheck, HttpCheck, InMemoryRegistry, Instance, InstanceStatus, Registrar,
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

#[cfg(feature = "http")]
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

#[cfg(feature = "http")]
mod health_server {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU16, AtomicUsize};
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

#[cfg(feature = "http")]
use health_server::HealthServer;

#[cfg(feature = "http")]
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

#[cfg(feature = "http")]
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

#[cfg(feature = "http")]
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

#[cfg(feature = "http")]
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

#[cfg(not(feature = "http"))]
#[tokio::test]
async fn without_the_http_feature_http_checks_are_refused() {
    let registry = InMemoryRegistry::new();
    let err = registry
        .register(Registration::new(
            instance("users", "a", "127.0.0.1:1"),
            HealthCheck::http(),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::Unsupported { .. }));
}

#[cfg(feature = "http")]
#[tokio::test]
async fn http_checks_stop_when_the_registry_is_dropped() {
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
    let _ = guard.keep();
    eventually("checked three times", Duration::from_secs(10), || {
        server.hits.load(Ordering::SeqCst) >= 3
    })
    .await;
    drop(registry);
    tokio::task::yield_now().await;
    let hits = server.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.hits.load(Ordering::SeqCst) <= hits + 1);
}

#[tokio::test]
async fn static_registry_lists_by_service_and_replaces_the_list() {
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
    assert_eq!(ids(&registry.healthy("users").await.unwrap()), ["c"]);
    assert!(registry.healthy("orders").await.unwrap().is_empty());
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

// ------------------------------------------------------------------ balancer

mod balancer {
    use super::*;
    use palisade::BoxError;
    use palisade::discovery::{
        Balance, BalanceConfig, BalanceEventKind, NoHealthyInstance, OutlierDetection, Picker,
        make_fn,
    };
    use palisade::events::EventStream;
    use std::collections::HashMap;
    use tower::{Service, ServiceExt, service_fn};

    /// Each instance's client answers its instance id.
    fn echo_make() -> impl Service<
        Instance,
        Response = impl Service<(), Response = String, Error = BoxError, Future = impl Send>
                   + Clone
                   + Send
                   + Sync
                   + 'static,
        Error = BoxError,
        Future = impl Send,
    > + Send
    + 'static {
        make_fn(|instance: &Instance| {
            let id = instance.id().to_string();
            Ok::<_, BoxError>(service_fn(move |()| {
                let id = id.clone();
                async move { Ok::<_, BoxError>(id) }
            }))
        })
    }

    fn config(picker: Picker) -> BalanceConfig {
        BalanceConfig::builder().picker(picker).build().unwrap()
    }

    async fn call<S>(balance: &mut S) -> Result<String, BoxError>
    where
        S: Service<(), Response = String, Error = BoxError>,
    {
        balance.ready().await?.call(()).await
    }

    async fn next_kind(
        events: &mut EventStream<palisade::discovery::BalanceEvent>,
    ) -> (String, BalanceEventKind) {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("an event within the deadline")
            .expect("open event stream");
        (event.id.to_string(), event.kind)
    }

    /// The next event that is not an instance being added at start-up.
    async fn next_non_added(
        events: &mut EventStream<palisade::discovery::BalanceEvent>,
    ) -> (String, BalanceEventKind) {
        loop {
            let event = next_kind(events).await;
            if !matches!(event.1, BalanceEventKind::Added { .. }) {
                return event;
            }
        }
    }

    fn three(service: &str) -> StaticRegistry {
        StaticRegistry::new([
            instance(service, "a", "10.0.0.1:80"),
            instance(service, "b", "10.0.0.2:80"),
            instance(service, "c", "10.0.0.3:80"),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn no_healthy_instance_is_a_typed_error_naming_the_service() {
        let registry = StaticRegistry::new([]);
        let mut balance =
            Balance::new("users", &registry, echo_make(), BalanceConfig::default()).unwrap();
        let err = call(&mut balance).await.unwrap_err();
        let no_instance = err
            .downcast_ref::<NoHealthyInstance>()
            .expect("NoHealthyInstance");
        assert_eq!(no_instance.service().as_str(), "users");
    }

    #[tokio::test(start_paused = true)]
    async fn instances_join_and_leave_the_balancer_as_they_register_deregister_and_miss_ttl() {
        let registry = InMemoryRegistry::new();
        let mut balance =
            Balance::new("users", &registry, echo_make(), config(Picker::RoundRobin)).unwrap();
        let mut events = balance.subscribe();
        assert!(call(&mut balance).await.is_err(), "nothing registered yet");

        let a = registry
            .register(Registration::new(
                instance("users", "a", "10.0.0.1:80"),
                HealthCheck::None,
            ))
            .await
            .unwrap();
        assert!(
            matches!(next_kind(&mut events).await, (id, BalanceEventKind::Added { .. }) if id == "a")
        );
        assert_eq!(call(&mut balance).await.unwrap(), "a");

        let _b = registry
            .register(Registration::new(
                instance("users", "b", "10.0.0.2:80"),
                ttl(10),
            ))
            .await
            .unwrap();
        assert!(
            matches!(next_kind(&mut events).await, (id, BalanceEventKind::Added { .. }) if id == "b")
        );
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..4 {
            seen.push(call(&mut balance).await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b"]);

        drop(a); // the guard deregisters
        assert_eq!(
            next_kind(&mut events).await,
            ("a".into(), BalanceEventKind::Removed)
        );
        assert_eq!(call(&mut balance).await.unwrap(), "b");

        tokio::time::advance(Duration::from_secs(11)).await; // b misses its TTL
        assert_eq!(
            next_kind(&mut events).await,
            ("b".into(), BalanceEventKind::Removed)
        );
        assert!(
            call(&mut balance)
                .await
                .unwrap_err()
                .is::<NoHealthyInstance>()
        );
        assert_eq!(balance.metrics().instances, 0);
    }

    #[cfg(feature = "http")]
    #[tokio::test]
    async fn instances_leave_the_balancer_when_their_http_check_fails_and_return_when_it_passes() {
        let server = HealthServer::start().await;
        let registry = InMemoryRegistry::new();
        let mut balance =
            Balance::new("users", &registry, echo_make(), BalanceConfig::default()).unwrap();
        let mut events = balance.subscribe();
        let _guard = registry
            .register(Registration::new(
                Instance::builder("users", "a", server.addr)
                    .build()
                    .unwrap(),
                HealthCheck::Http(http_check(20)),
            ))
            .await
            .unwrap();
        assert!(matches!(
            next_kind(&mut events).await,
            (_, BalanceEventKind::Added { .. })
        ));
        assert_eq!(call(&mut balance).await.unwrap(), "a");

        server.status.store(500, Ordering::SeqCst);
        assert_eq!(next_kind(&mut events).await.1, BalanceEventKind::Removed);
        assert!(
            call(&mut balance)
                .await
                .unwrap_err()
                .is::<NoHealthyInstance>()
        );

        server.status.store(200, Ordering::SeqCst);
        assert!(matches!(
            next_kind(&mut events).await,
            (_, BalanceEventKind::Added { .. })
        ));
        assert_eq!(call(&mut balance).await.unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_spreads_calls_exactly_evenly() {
        let registry = three("users");
        let mut balance =
            Balance::new("users", &registry, echo_make(), config(Picker::RoundRobin)).unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..3_000 {
            *counts.entry(call(&mut balance).await.unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n == 1_000), "{counts:?}");
        let metrics = balance.metrics();
        assert!(
            metrics
                .endpoints
                .iter()
                .all(|e| e.picks == 1_000 && e.in_flight == 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_picks_follow_the_instance_weights() {
        let registry = StaticRegistry::new([
            Instance::builder("users", "light", "10.0.0.1:80")
                .build()
                .unwrap(),
            Instance::builder("users", "heavy", "10.0.0.2:80")
                .metadata("weight", "3")
                .build()
                .unwrap(),
        ]);
        let mut balance =
            Balance::new("users", &registry, echo_make(), config(Picker::Weighted)).unwrap();
        let mut heavy = 0;
        for _ in 0..10_000 {
            if call(&mut balance).await.unwrap() == "heavy" {
                heavy += 1;
            }
        }
        // Expected 7,500; the binomial standard deviation is about 43.
        assert!((7_200..=7_800).contains(&heavy), "heavy got {heavy}");
    }

    #[tokio::test(start_paused = true)]
    async fn random_picks_every_instance() {
        let registry = three("users");
        let mut balance =
            Balance::new("users", &registry, echo_make(), config(Picker::Random)).unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..3_000 {
            *counts.entry(call(&mut balance).await.unwrap()).or_default() += 1;
        }
        // Expected 1,000 each; the standard deviation is about 26.
        assert!(
            counts.values().all(|&n| (850..=1_150).contains(&n)),
            "{counts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_prefers_the_fast_instance_over_10_000_calls() {
        let registry = StaticRegistry::new([
            instance("users", "slow", "10.0.0.1:80"),
            instance("users", "fast", "10.0.0.2:80"),
        ]);
        let make = make_fn(|instance: &Instance| {
            let id = instance.id().to_string();
            let delay = if id == "slow" { 50 } else { 1 };
            Ok::<_, BoxError>(service_fn(move |()| {
                let id = id.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Ok::<_, BoxError>(id)
                }
            }))
        });
        // Latencies in paused (virtual) time: tokio's clock times the
        // calls (the default TSC clock measures real time only).
        let config = BalanceConfig::builder()
            .picker(Picker::peak_ewma())
            .call_clock(palisade::clock::CallClock::Tokio)
            .build()
            .unwrap();
        let mut balance = Balance::new("users", &registry, make, config).unwrap();
        let mut fast = 0;
        for _ in 0..10_000 {
            if call(&mut balance).await.unwrap() == "fast" {
                fast += 1;
            }
        }
        assert!(fast >= 9_900, "fast got {fast} of 10,000");
        let metrics = balance.metrics();
        let slow = metrics
            .endpoints
            .iter()
            .find(|e| e.id.as_str() == "slow")
            .unwrap();
        assert_eq!(slow.picks, 10_000 - fast);
    }

    #[tokio::test(start_paused = true)]
    async fn least_loaded_never_picks_the_busy_instance_while_another_is_idle() {
        let registry = three("users");
        let gate = Arc::new(tokio::sync::Semaphore::new(0)); // never opens
        let make = make_fn(move |instance: &Instance| {
            let id = instance.id().to_string();
            let gate = Arc::clone(&gate);
            Ok::<_, BoxError>(service_fn(move |()| {
                let (id, gate) = (id.clone(), Arc::clone(&gate));
                async move {
                    if id == "b" {
                        let _ = gate.acquire().await; // "b" never answers
                    }
                    Ok::<_, BoxError>(id)
                }
            }))
        });
        let mut balance =
            Balance::new("users", &registry, make, config(Picker::LeastLoaded)).unwrap();
        let picks_of_b = |balance: &Balance<_>| {
            balance
                .metrics()
                .endpoints
                .iter()
                .find(|e| e.id.as_str() == "b")
                .map_or(0, |e| e.picks)
        };
        // Call until "b" holds a call in flight.
        let mut stuck = Vec::new();
        while picks_of_b(&balance) == 0 {
            let mut future = Box::pin(balance.ready().await.unwrap().call(()));
            if futures::poll!(&mut future).is_pending() {
                stuck.push(future);
            }
        }
        assert_eq!(stuck.len(), 1);
        for _ in 0..1_000 {
            assert_ne!(call(&mut balance).await.unwrap(), "b");
        }
        assert_eq!(picks_of_b(&balance), 1);
        // Dropping the stuck call releases its in-flight count.
        drop(stuck);
        assert!(balance.metrics().endpoints.iter().all(|e| e.in_flight == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_follows_consecutive_failures_ends_after_the_base_time_and_grows() {
        let registry = three("users");
        let make = make_fn(|instance: &Instance| {
            let id = instance.id().to_string();
            Ok::<_, BoxError>(service_fn(move |()| {
                let id = id.clone();
                async move {
                    if id == "b" {
                        Err::<String, BoxError>("b is broken".into())
                    } else {
                        Ok(id)
                    }
                }
            }))
        });
        let outliers = OutlierDetection::builder()
            .consecutive_failures(3)
            .base_ejection_time(Duration::from_secs(10))
            .max_ejection_percent(50)
            .build()
            .unwrap();
        let config = BalanceConfig::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(outliers)
            .build()
            .unwrap();
        let mut balance = Balance::new("users", &registry, make, config).unwrap();
        let mut events = balance.subscribe();

        // Round robin: b fails every third call; the third failure ejects it.
        let mut failures = 0;
        for _ in 0..9 {
            if call(&mut balance).await.is_err() {
                failures += 1;
            }
        }
        assert_eq!(failures, 3);
        assert_eq!(
            next_non_added(&mut events).await,
            (
                "b".into(),
                BalanceEventKind::Ejected {
                    duration: Duration::from_secs(10),
                    ejections: 1
                }
            )
        );
        for _ in 0..100 {
            assert!(call(&mut balance).await.is_ok(), "b is ejected");
        }
        let metrics = balance.metrics();
        assert_eq!(
            (metrics.instances, metrics.available, metrics.ejected),
            (3, 2, 1)
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            next_kind(&mut events).await,
            ("b".into(), BalanceEventKind::Returned)
        );
        let mut failures = 0;
        for _ in 0..9 {
            if call(&mut balance).await.is_err() {
                failures += 1;
            }
        }
        assert_eq!(failures, 3, "b is picked again");
        assert_eq!(
            next_kind(&mut events).await,
            (
                "b".into(),
                BalanceEventKind::Ejected {
                    duration: Duration::from_secs(20),
                    ejections: 2
                }
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_holds_when_every_instance_fails() {
        let registry = three("users");
        let make = make_fn(|_: &Instance| {
            Ok::<_, BoxError>(service_fn(|()| async {
                Err::<String, BoxError>("down".into())
            }))
        });
        let outliers = OutlierDetection::builder()
            .consecutive_failures(2)
            .max_ejection_percent(34) // 3 instances: at most 1 ejected
            .build()
            .unwrap();
        let config = BalanceConfig::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(outliers)
            .build()
            .unwrap();
        let mut balance = Balance::new("users", &registry, make, config).unwrap();
        let mut events = balance.subscribe();
        for _ in 0..300 {
            assert!(call(&mut balance).await.is_err());
        }
        let metrics = balance.metrics();
        assert_eq!((metrics.ejected, metrics.available), (1, 2));
        let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| matches!(k, BalanceEventKind::Ejected { .. }))
                .count(),
            1
        );
        assert!(kinds.iter().any(|k| matches!(
            k,
            BalanceEventKind::EjectionSkipped {
                ejected: 1,
                instances: 3
            }
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_instance_gets_a_new_client_and_clones_share_the_instances() {
        let registry = StaticRegistry::new([instance("users", "a", "10.0.0.1:80")]);
        let make = make_fn(|instance: &Instance| {
            let address = instance.address().to_string();
            Ok::<_, BoxError>(service_fn(move |()| {
                let address = address.clone();
                async move { Ok::<_, BoxError>(address) }
            }))
        });
        let mut balance =
            Balance::new("users", &registry, make, config(Picker::RoundRobin)).unwrap();
        let mut events = balance.subscribe();
        let mut clone = balance.clone();
        assert_eq!(call(&mut clone).await.unwrap(), "10.0.0.1:80");
        registry.replace([instance("users", "a", "10.0.0.9:80")]);
        assert!(matches!(
            next_non_added(&mut events).await.1,
            BalanceEventKind::Updated { .. }
        ));
        assert_eq!(call(&mut balance).await.unwrap(), "10.0.0.9:80");
        assert_eq!(call(&mut clone).await.unwrap(), "10.0.0.9:80");
    }

    /// A static registry whose watch streams report when they are dropped.
    #[derive(Debug)]
    struct WatchDropRegistry {
        inner: StaticRegistry,
        watch_dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Registry for WatchDropRegistry {
        fn backend(&self) -> &'static str {
            "watch-drop"
        }
        fn healthy<'a>(
            &'a self,
            service: &'a str,
        ) -> palisade::discovery::BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
            self.inner.healthy(service)
        }
        fn watch(&self, service: &str) -> palisade::discovery::WatchStream {
            let flag = SetOnDrop(Arc::clone(&self.watch_dropped));
            Box::pin(self.inner.watch(service).map(move |snapshot| {
                let _ = &flag;
                snapshot
            }))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn balance_layer_wraps_a_make_service_and_a_dropped_balancer_stops_watching() {
        use palisade::discovery::BalanceLayer;
        let watch_dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let registry = Arc::new(WatchDropRegistry {
            inner: three("users"),
            watch_dropped: Arc::clone(&watch_dropped),
        });
        // The balancer keeps no registry handle (the layer is dropped): keep one here,
        // or the registry closes and the watch ends on its own.
        let layer =
            BalanceLayer::new(Arc::clone(&registry), "users", config(Picker::RoundRobin)).unwrap();
        let mut balance = tower::ServiceBuilder::new()
            .layer(layer)
            .service(echo_make());
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..3 {
            seen.push(call(&mut balance).await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        let clone = balance.clone();
        drop(balance);
        tokio::task::yield_now().await;
        assert!(
            !watch_dropped.load(std::sync::atomic::Ordering::SeqCst),
            "a clone still watches"
        );
        drop(clone);
        tokio::task::yield_now().await;
        assert!(
            watch_dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the last clone stopped the watch"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_during_membership_churn_all_finish_and_release_their_counts() {
        let registry = InMemoryRegistry::new();
        let mut guards = Vec::new();
        for id in ["a", "b", "c"] {
            guards.push(
                registry
                    .register(Registration::new(
                        instance("users", id, "10.0.0.1:80"),
                        HealthCheck::None,
                    ))
                    .await
                    .unwrap(),
            );
        }
        let make = make_fn(|instance: &Instance| {
            let id = instance.id().to_string();
            Ok::<_, BoxError>(service_fn(move |()| {
                let id = id.clone();
                async move {
                    tokio::task::yield_now().await;
                    Ok::<_, BoxError>(id)
                }
            }))
        });
        let balance = Balance::new("users", &registry, make, config(Picker::LeastLoaded)).unwrap();
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let mut balance = balance.clone();
                tokio::spawn(async move {
                    let (mut ok, mut none) = (0, 0);
                    for _ in 0..2_000 {
                        let result: Result<String, BoxError> = match balance.ready().await {
                            Ok(ready) => ready.call(()).await,
                            Err(e) => Err(e),
                        };
                        match result {
                            Ok(_) => ok += 1,
                            Err(e) if e.is::<NoHealthyInstance>() => none += 1,
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                    (ok, none)
                })
            })
            .collect();
        // Churn: instances churn-0..churn-7 come and go while the calls run.
        for round in 0..50 {
            let id = format!("churn-{}", round % 8);
            let guard = registry
                .register(Registration::new(
                    instance("users", &id, "10.0.0.2:80"),
                    HealthCheck::None,
                ))
                .await
                .unwrap();
            tokio::task::yield_now().await;
            drop(guard);
        }
        let mut total = 0;
        for caller in callers {
            let (ok, none) = caller.await.unwrap();
            assert_eq!(none, 0, "a, b and c stayed registered");
            total += ok;
        }
        assert_eq!(total, 16_000);
        let metrics = balance.metrics();
        assert!(
            metrics.endpoints.iter().all(|e| e.in_flight == 0),
            "{metrics:?}"
        );
        drop(guards);
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_instance_circuit_breaker_opens_for_its_instance_only() {
        use palisade::circuit_breaker::{
            BreakerOpen, CircuitBreaker, CircuitBreakerConfig, SlidingWindow,
        };
        use palisade::classify::{ClassifyExt, DefaultClassifier};
        use tower::Layer;

        let registry = StaticRegistry::new([
            instance("users", "a", "10.0.0.1:80"),
            instance("users", "b", "10.0.0.2:80"),
        ]);
        let breaker_config = CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::consecutive_failures(2))
            .build()
            .unwrap();
        let make = make_fn(move |instance: &Instance| {
            let id = instance.id().to_string();
            let breaker = CircuitBreaker::new(format!("users/{id}"), breaker_config.clone());
            let client = service_fn(move |()| {
                let id = id.clone();
                async move {
                    if id == "b" {
                        Err::<String, BoxError>("b is broken".into())
                    } else {
                        Ok(id)
                    }
                }
            });
            Ok::<_, BoxError>(breaker.layer().layer(client))
        });
        let outliers = OutlierDetection::builder()
            .consecutive_failures(3)
            .build()
            .unwrap();
        let config = BalanceConfig::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(outliers)
            .build()
            .unwrap();
        // A breaker's rejection says nothing new about the instance: it does
        // not count towards ejection.
        let mut balance = Balance::new("users", &registry, make, config)
            .unwrap()
            .with_classifier(DefaultClassifier.pass_rejections());
        let mut rejected = 0;
        let mut failed = 0;
        for _ in 0..20 {
            match call(&mut balance).await {
                Ok(id) => assert_eq!(id, "a"),
                Err(e) if palisade::is_caused_by::<BreakerOpen>(&*e) => rejected += 1,
                Err(_) => failed += 1,
            }
        }
        assert_eq!(failed, 2, "b's breaker opens after 2 failures");
        assert_eq!(rejected, 8, "then rejects b's calls at once");
        let metrics = balance.metrics();
        assert_eq!(
            metrics.ejected, 0,
            "rejections are not failures for ejection"
        );
    }

    /// Clients of `a` and `b`; an instance fails while its flag is set.
    /// Counts the calls that reached each instance.
    #[allow(clippy::type_complexity)]
    fn switchable_make(
        broken: Arc<std::sync::Mutex<HashMap<String, bool>>>,
        reached: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    ) -> impl Service<
        Instance,
        Response = impl Service<(), Response = String, Error = BoxError, Future = impl Send>
                   + Clone
                   + Send
                   + Sync
                   + 'static,
        Error = BoxError,
        Future = impl Send,
    > + Send
    + 'static {
        make_fn(move |instance: &Instance| {
            let id = instance.id().to_string();
            let broken = broken.clone();
            let reached = reached.clone();
            Ok::<_, BoxError>(service_fn(move |()| {
                let id = id.clone();
                *reached.lock().unwrap().entry(id.clone()).or_default() += 1;
                let fails = broken.lock().unwrap().get(&id).copied().unwrap_or(false);
                async move {
                    if fails {
                        Err::<String, BoxError>(format!("{id} is broken").into())
                    } else {
                        Ok(id)
                    }
                }
            }))
        })
    }

    fn breaker_config() -> palisade::circuit_breaker::CircuitBreakerConfig {
        palisade::circuit_breaker::CircuitBreakerConfig::builder()
            .sliding_window(palisade::circuit_breaker::SlidingWindow::consecutive_failures(2))
            .wait_duration_in_open_state(Duration::from_secs(10))
            .permitted_number_of_calls_in_half_open_state(1)
            .build()
            .unwrap()
    }

    fn breaker_of(
        metrics: &palisade::discovery::BalanceMetrics,
        id: &str,
    ) -> Option<palisade::circuit_breaker::CircuitState> {
        metrics
            .endpoints
            .iter()
            .find(|e| e.id.as_str() == id)
            .expect("instance in the metrics")
            .breaker
    }

    #[tokio::test(start_paused = true)]
    async fn built_in_breaker_keeps_calls_off_its_failing_instance_then_lets_a_trial_call_through()
    {
        use palisade::circuit_breaker::CircuitState;

        assert!(BalanceConfig::default().circuit_breaker().is_none());
        let registry = StaticRegistry::new([
            instance("users", "a", "10.0.0.1:80"),
            instance("users", "b", "10.0.0.2:80"),
        ]);
        let broken = Arc::new(std::sync::Mutex::new(HashMap::from([(
            "b".to_string(),
            true,
        )])));
        let reached = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let config = BalanceConfig::builder()
            .picker(Picker::RoundRobin)
            .circuit_breaker(breaker_config())
            .build()
            .unwrap();
        let make = switchable_make(broken.clone(), reached.clone());
        let mut balance = Balance::new("users", &registry, make, config).unwrap();

        let mut answers = Vec::new();
        let mut failed = 0;
        for _ in 0..20 {
            match call(&mut balance).await {
                Ok(id) => answers.push(id),
                Err(e) => {
                    assert_eq!(
                        e.to_string(),
                        "b is broken",
                        "no rejection reaches the caller"
                    );
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 2, "b's breaker opens after 2 failures in a row");
        assert_eq!(answers.len(), 18, "every other call is answered");
        assert!(answers.iter().all(|id| id == "a"));
        assert_eq!(
            reached.lock().unwrap()["b"],
            2,
            "no call reaches b once open"
        );
        let metrics = balance.metrics();
        assert_eq!(breaker_of(&metrics, "b"), Some(CircuitState::Open));
        assert_eq!(breaker_of(&metrics, "a"), Some(CircuitState::Closed));
        assert_eq!(
            (
                metrics.instances,
                metrics.available,
                metrics.breakers_open,
                metrics.ejected
            ),
            (2, 1, 1, 0)
        );
        let b_breaker = balance.circuit_breaker("b").expect("b has a breaker");
        assert_eq!(b_breaker.name(), "users/b");
        assert_eq!(
            b_breaker.metrics().not_permitted_calls,
            0,
            "skipped quietly"
        );

        // b recovers; after the open wait it gets a trial call, which closes
        // its breaker, and round robin includes it again.
        broken.lock().unwrap().insert("b".into(), false);
        tokio::time::advance(Duration::from_secs(9)).await;
        for _ in 0..4 {
            assert_eq!(call(&mut balance).await.unwrap(), "a", "still open");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.push(call(&mut balance).await.unwrap());
        }
        assert_eq!(b_breaker.state(), CircuitState::Closed);
        assert_eq!(
            answers.iter().filter(|id| *id == "b").count(),
            5,
            "{answers:?}"
        );
        let metrics = balance.metrics();
        assert_eq!((metrics.available, metrics.breakers_open), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_instances_breaker_is_open_calls_fail_fast_with_breaker_open() {
        use palisade::circuit_breaker::BreakerOpen;

        let registry = StaticRegistry::new([
            instance("users", "a", "10.0.0.1:80"),
            instance("users", "b", "10.0.0.2:80"),
        ]);
        let broken = Arc::new(std::sync::Mutex::new(HashMap::from([
            ("a".to_string(), true),
            ("b".to_string(), true),
        ])));
        let reached = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let config = BalanceConfig::builder()
            .picker(Picker::PeakEwma {
                default_rtt: Duration::from_millis(30),
                decay: Duration::from_secs(10),
            })
            .circuit_breaker(breaker_config())
            .build()
            .unwrap();
        let make = switchable_make(broken.clone(), reached.clone());
        let mut balance = Balance::new("users", &registry, make, config).unwrap();
        for _ in 0..4 {
            let err = call(&mut balance).await.unwrap_err();
            assert!(err.to_string().ends_with("is broken"), "{err}");
        }
        let metrics = balance.metrics();
        assert_eq!((metrics.available, metrics.breakers_open), (0, 2));

        tokio::time::advance(Duration::from_secs(3)).await;
        let err = call(&mut balance).await.unwrap_err();
        let open = err.downcast_ref::<BreakerOpen>().expect("BreakerOpen");
        assert!(["users/a", "users/b"].contains(&open.breaker()), "{open}");
        assert_eq!(open.retry_in(), Some(Duration::from_secs(7)));
        assert!(err.downcast_ref::<NoHealthyInstance>().is_none());
        let reached_total: usize = reached.lock().unwrap().values().sum();
        assert_eq!(reached_total, 4, "the rejected call reached no instance");
    }

    #[tokio::test(start_paused = true)]
    async fn an_instances_breaker_is_dropped_when_it_leaves_and_a_new_one_comes_with_it_back() {
        use palisade::circuit_breaker::CircuitState;
        use palisade::events::TryRecvError;

        let registry = InMemoryRegistry::new();
        let broken = Arc::new(std::sync::Mutex::new(HashMap::from([(
            "a".to_string(),
            true,
        )])));
        let reached = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let config = BalanceConfig::builder()
            .circuit_breaker(breaker_config())
            .build()
            .unwrap();
        let make = switchable_make(broken.clone(), reached);
        let mut balance = Balance::new("users", &registry, make, config).unwrap();
        let mut events = balance.subscribe();
        let register = || {
            registry.register(Registration::new(
                instance("users", "a", "10.0.0.1:80"),
                HealthCheck::None,
            ))
        };
        let guard = register().await.unwrap();
        assert!(matches!(
            next_kind(&mut events).await.1,
            BalanceEventKind::Added { .. }
        ));
        for _ in 0..2 {
            assert!(call(&mut balance).await.is_err());
        }
        let breaker = balance.circuit_breaker("a").expect("a has a breaker");
        assert_eq!(breaker.state(), CircuitState::Open);
        let mut breaker_events = breaker.subscribe();
        drop(breaker);

        guard.deregister().await.unwrap();
        assert_eq!(
            next_kind(&mut events).await,
            ("a".into(), BalanceEventKind::Removed)
        );
        assert!(balance.circuit_breaker("a").is_none());
        assert!(balance.metrics().endpoints.is_empty());
        loop {
            match breaker_events.try_recv() {
                Ok(_) => continue,
                Err(error) => {
                    assert_eq!(error, TryRecvError::Closed, "the breaker was dropped");
                    break;
                }
            }
        }

        broken.lock().unwrap().insert("a".into(), false);
        let _guard = register().await.unwrap();
        assert!(matches!(
            next_kind(&mut events).await.1,
            BalanceEventKind::Added { .. }
        ));
        let breaker = balance.circuit_breaker("a").expect("a new breaker");
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(call(&mut balance).await.unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_trial_call_records_nothing_and_gives_its_half_open_slot_back() {
        use palisade::circuit_breaker::{BreakerOpen, CircuitState};

        let registry = StaticRegistry::new([instance("users", "a", "10.0.0.1:80")]);
        let broken = Arc::new(std::sync::Mutex::new(HashMap::from([(
            "a".to_string(),
            true,
        )])));
        let reached = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let config = BalanceConfig::builder()
            .circuit_breaker(breaker_config())
            .build()
            .unwrap();
        let make = switchable_make(broken.clone(), reached);
        let mut balance = Balance::new("users", &registry, make, config).unwrap();
        for _ in 0..2 {
            assert!(call(&mut balance).await.is_err());
        }
        broken.lock().unwrap().insert("a".into(), false);
        tokio::time::advance(Duration::from_secs(10)).await;

        // The trial call takes HALF_OPEN's only slot: another call is
        // rejected while it is in flight.
        let trial = balance.ready().await.unwrap().call(());
        let breaker = balance.circuit_breaker("a").unwrap();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        let err = call(&mut balance).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<BreakerOpen>().map(BreakerOpen::state),
            Some(CircuitState::HalfOpen)
        );
        // Dropped before it completes: nothing recorded, the slot is free.
        drop(trial);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!(call(&mut balance).await.unwrap(), "a");
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_fails_to_build_is_built_again_after_a_backoff() {
        let registry = StaticRegistry::new([instance("users", "a", "10.0.0.1:80")]);
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let make = make_fn(move |instance: &Instance| {
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                return Err::<_, BoxError>("connection refused".into());
            }
            let id = instance.id().to_string();
            Ok(service_fn(move |()| {
                let id = id.clone();
                async move { Ok::<_, BoxError>(id) }
            }))
        });
        let mut balance = Balance::new("users", &registry, make, BalanceConfig::default()).unwrap();
        let mut events = balance.subscribe();
        assert!(
            call(&mut balance)
                .await
                .unwrap_err()
                .is::<NoHealthyInstance>()
        );
        // The registry reports nothing new; the balancer retries by itself.
        loop {
            match next_kind(&mut events).await.1 {
                BalanceEventKind::MakeFailed { error } => assert_eq!(error, "connection refused"),
                BalanceEventKind::Added { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(call(&mut balance).await.unwrap(), "a");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn invalid_balancer_configuration_is_rejected_naming_the_field() {
        let err = BalanceConfig::builder()
            .picker(Picker::PeakEwma {
                default_rtt: Duration::ZERO,
                decay: Duration::from_secs(1),
            })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "picker");
        let err = BalanceConfig::builder()
            .event_capacity(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "event_capacity");
        let err = OutlierDetection::builder()
            .max_ejection_percent(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_ejection_percent");
        let err = OutlierDetection::builder()
            .base_ejection_time(Duration::from_secs(60))
            .max_ejection_time(Duration::from_secs(30))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_ejection_time");
    }
}

// ------------------------------------------------------- tower Discover adapter

mod tower_discover {
    use super::*;
    use palisade::BoxError;
    use palisade::discovery::{RegistryDiscover, make_fn};
    use std::collections::HashMap;
    use tower::balance::p2c::Balance;
    use tower::discover::Change;
    use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    use tower::{Service, ServiceExt, service_fn};

    fn make() -> impl Service<
        Instance,
        Response = impl Service<
            (),
            Response = String,
            Error = BoxError,
            Future = impl std::future::Future<Output = Result<String, BoxError>> + Send,
        > + Send,
        Error = BoxError,
        Future = impl Send,
    > + Send {
        make_fn(|instance: &Instance| {
            let id = instance.id().to_string();
            Ok::<_, BoxError>(service_fn(move |()| {
                let id = id.clone();
                async move { Ok::<_, BoxError>(id) }
            }))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_adapter_inserts_and_removes_as_the_registry_changes() {
        let registry = InMemoryRegistry::new();
        let a = registry
            .register(Registration::new(
                instance("users", "a", "10.0.0.1:80"),
                HealthCheck::None,
            ))
            .await
            .unwrap();
        let mut discover = RegistryDiscover::new(&registry, "users", make()).unwrap();
        assert!(
            matches!(discover.next().await, Some(Ok(Change::Insert(id, _))) if id.as_str() == "a")
        );
        let _b = registry
            .register(Registration::new(
                instance("users", "b", "10.0.0.2:80"),
                HealthCheck::None,
            ))
            .await
            .unwrap();
        assert!(
            matches!(discover.next().await, Some(Ok(Change::Insert(id, _))) if id.as_str() == "b")
        );
        drop(a);
        assert!(
            matches!(discover.next().await, Some(Ok(Change::Remove(id))) if id.as_str() == "a")
        );
        drop(registry);
        assert!(discover.next().await.is_none(), "ends with the registry");
    }

    #[tokio::test(start_paused = true)]
    async fn tower_p2c_balances_over_the_adapter() {
        let registry = StaticRegistry::new([
            instance("users", "a", "10.0.0.1:80"),
            instance("users", "b", "10.0.0.2:80"),
        ]);
        let discover = RegistryDiscover::new(&registry, "users", make()).unwrap();
        let mut balance = Balance::new(PendingRequestsDiscover::new(
            discover,
            CompleteOnResponse::default(),
        ));
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..1_000 {
            let id = balance.ready().await.unwrap().call(()).await.unwrap();
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(counts.values().all(|&n| n >= 300), "{counts:?}");

        registry.replace([instance("users", "b", "10.0.0.2:80")]);
        tokio::task::yield_now().await;
        for _ in 0..100 {
            let id = balance.ready().await.unwrap().call(()).await.unwrap();
            assert_eq!(id, "b");
        }
    }
}

mod registry_contract {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn in_memory_registry_keeps_the_registry_contract() {
        let registry = InMemoryRegistry::new();
        discovery_registry_contract::write_side(&registry, "contract", 9000).await;
        let expected = [
            instance("users", "b", "10.0.0.2:80"),
            instance("users", "a", "10.0.0.1:80"),
        ];
        let mut guards = Vec::new();
        for instance in &expected {
            guards.push(
                registry
                    .register(Registration::new(instance.clone(), HealthCheck::None))
                    .await
                    .unwrap(),
            );
        }
        discovery_registry_contract::read_side(&registry, "users", &expected, "orders").await;
    }

    #[tokio::test]
    async fn static_registry_keeps_the_read_side_of_the_registry_contract() {
        let expected = [
            instance("users", "b", "10.0.0.2:80"),
            instance("users", "a", "10.0.0.1:80"),
        ];
        let registry = StaticRegistry::new(expected.iter().cloned().chain([instance(
            "orders",
            "o",
            "10.0.0.3:80",
        )]));
        discovery_registry_contract::read_side(&registry, "users", &expected, "payments").await;
    }
}
