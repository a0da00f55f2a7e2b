//! The etcd backend against a real etcd: run `scripts/integration-etcd.sh`,
//! which starts a plain etcd on 127.0.0.1 and sets `PALISADE_ETCD` (default
//! `http://127.0.0.1:2379`), and a secured one (TLS with client
//! certificates, authentication on) for the TLS tests: `PALISADE_ETCD_TLS`,
//! `PALISADE_ETCD_TLS_DIR`, `PALISADE_ETCD_USER`, `PALISADE_ETCD_PASSWORD`.
//! The tests that need no server (configuration checks, `Debug`) run with
//! `cargo test --features etcd --test discovery_etcd`. Real sockets and real
//! time, bounded deadlines.

#![cfg(feature = "etcd")]

mod discovery_registry_contract;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use palisade::backoff::Backoff;
use palisade::discovery::{
    DiscoveryError, EtcdEvent, EtcdRegistry, HealthCheck, Instance, Registrar, Registration,
    Registry, WatchStream,
};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const DEADLINE: Duration = Duration::from_secs(15);

fn endpoint() -> String {
    std::env::var("PALISADE_ETCD").unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("/palisade-test/{test}-{}-{nanos}", std::process::id())
}

async fn registry(prefix: &str) -> EtcdRegistry {
    registry_at(prefix, &endpoint()).await
}

async fn registry_at(prefix: &str, endpoint: &str) -> EtcdRegistry {
    EtcdRegistry::builder()
        .endpoint(endpoint)
        .prefix(prefix)
        .backoff(
            Backoff::constant(Duration::from_millis(50))
                .build()
                .expect("valid backoff"),
        )
        .connect()
        .await
        .expect("etcd client")
}

async fn raw_client() -> etcd_client::Client {
    etcd_client::Client::connect([endpoint()], None)
        .await
        .expect("etcd client")
}

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::builder(service, id, format!("127.0.0.1:{port}"))
        .build()
        .expect("valid instance")
}

fn ttl(secs: u64) -> HealthCheck {
    HealthCheck::ttl(Duration::from_secs(secs)).expect("valid ttl")
}

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

/// Reads the watch until a set satisfies `condition`; returns it.
async fn watch_until(
    watch: &mut WatchStream,
    what: &str,
    mut condition: impl FnMut(&[Instance]) -> bool,
) -> Vec<Instance> {
    let give_up = Instant::now() + DEADLINE;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watch.next()).await {
            Ok(Some(Ok(set))) if condition(&set) => return set,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watch ended waiting until {what}"),
            Err(_) => panic!("timed out waiting until {what}"),
        }
    }
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn register_lists_the_instance_and_dropping_the_guard_deregisters_it() {
    let prefix = unique_prefix("register");
    let etcd = registry(&prefix).await;
    let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080")
        .tag("v2")
        .metadata("zone", "eu-west-1a")
        .weight(3)
        .build()
        .expect("valid instance");
    let guard = etcd
        .register(Registration::new(me.clone(), ttl(5)))
        .await
        .expect("registered");
    assert_eq!(etcd.healthy("payments").await.expect("list"), vec![me]);
    assert!(etcd.healthy("orders").await.expect("list").is_empty());

    // The key holds the instance under a lease.
    let mut raw = raw_client().await;
    let key = format!("{prefix}/payments/payments-1");
    let stored = raw.get(key.clone(), None).await.expect("get");
    let kv = &stored.kvs()[0];
    assert_eq!(Some(kv.lease()), etcd.lease_of("payments", "payments-1"));
    let granted = raw
        .lease_time_to_live(kv.lease(), None)
        .await
        .expect("ttl")
        .granted_ttl();
    assert!(granted >= 5, "the TTL check sets the lease TTL: {granted}");

    drop(guard);
    let give_up = Instant::now() + DEADLINE;
    while !etcd.healthy("payments").await.expect("list").is_empty() {
        assert!(
            Instant::now() < give_up,
            "the dropped guard did not deregister"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked = raw
        .lease_time_to_live(kv.lease(), None)
        .await
        .expect("ttl")
        .ttl();
    assert_eq!(revoked, -1, "the guard revoked the lease");
    assert_eq!(etcd.metrics().registrations, 1);
    assert_eq!(etcd.metrics().deregistrations, 1);
    assert_eq!(etcd.metrics().registered, 0);
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn deregister_by_id_pass_ttl_and_unsupported_checks() {
    let etcd = registry(&unique_prefix("deregister")).await;
    let _guard = etcd
        .register(Registration::new(instance("api", "api-1", 1), ttl(5)))
        .await
        .expect("registered");
    etcd.pass_ttl("api", "api-1").await.expect("renewed");
    let err = etcd.pass_ttl("api", "nobody").await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");

    etcd.deregister("api", "api-1").await.expect("deregistered");
    assert!(etcd.healthy("api").await.expect("list").is_empty());
    let err = etcd.deregister("api", "api-1").await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");
    assert_eq!(etcd.metrics().registered, 0, "the keep-alive stopped");

    let err = etcd
        .register(Registration::new(
            instance("api", "api-2", 2),
            HealthCheck::http(),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::Unsupported { .. }), "{err}");
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn registering_again_replaces_and_the_old_guard_leaves_the_new_registration() {
    let etcd = registry(&unique_prefix("replace")).await;
    let old = etcd
        .register(Registration::new(instance("api", "api-1", 1), ttl(5)))
        .await
        .expect("registered");
    let old_lease = etcd.lease_of("api", "api-1").expect("lease");
    let _new = etcd
        .register(Registration::new(instance("api", "api-1", 2), ttl(5)))
        .await
        .expect("registered again");
    let new_lease = etcd.lease_of("api", "api-1").expect("lease");
    assert_ne!(new_lease, old_lease);
    let listed = etcd.healthy("api").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address().port(), 2, "the new registration");

    let err = old.deregister().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");
    // The old lease is revoked in the background; the key stays with the new one.
    let mut raw = raw_client().await;
    let give_up = Instant::now() + DEADLINE;
    while raw
        .lease_time_to_live(old_lease, None)
        .await
        .expect("ttl")
        .ttl()
        != -1
    {
        assert!(Instant::now() < give_up, "the old lease was not revoked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = etcd.healthy("api").await.expect("list");
    assert_eq!(listed.len(), 1, "still registered");
    assert_eq!(etcd.lease_of("api", "api-1"), Some(new_lease));
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn watch_sees_instances_added_and_removed() {
    let etcd = registry(&unique_prefix("watch")).await;
    let mut watch = etcd.watch("api");
    assert!(
        next_set(&mut watch).await.is_empty(),
        "first item: the current set"
    );
    let a = etcd
        .register(Registration::new(instance("api", "api-a", 1), ttl(5)))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-a"]);
    let _b = etcd
        .register(Registration::new(instance("api", "api-b", 2), ttl(5)))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-a", "api-b"]);
    // Another service's instances are not in this watch.
    let _other = etcd
        .register(Registration::new(instance("apix", "x", 3), ttl(5)))
        .await
        .expect("registered");
    a.deregister().await.expect("deregistered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-b"]);
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn watch_starts_from_the_listed_revision_and_relists_after_compaction() {
    let etcd = registry(&unique_prefix("compaction")).await;
    let mut events = etcd.subscribe();
    let mut raw = raw_client().await;

    // Listed, but not yet watching (the watch starts on the next poll):
    // a change made now is still seen, because the watch starts at the
    // listed revision + 1, not at "now".
    let mut watch = etcd.watch("api");
    assert!(next_set(&mut watch).await.is_empty());
    let _a = etcd
        .register(Registration::new(instance("api", "api-a", 1), ttl(5)))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-a"]);

    // A second watch lists, then falls behind a compaction.
    let mut behind = etcd.watch("api");
    assert_eq!(ids(&next_set(&mut behind).await), ["api-a"]);
    let c = etcd
        .register(Registration::new(instance("api", "api-c", 3), ttl(5)))
        .await
        .expect("registered");
    c.deregister().await.expect("deregistered");
    let _d = etcd
        .register(Registration::new(instance("api", "api-d", 4), ttl(5)))
        .await
        .expect("registered");
    let revision = raw
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    raw.compact(revision, None).await.expect("compacted");

    assert_eq!(
        ids(&next_set(&mut behind).await),
        ["api-a", "api-d"],
        "the watch read the prefix again"
    );
    assert_eq!(etcd.metrics().watch_relists, 1);
    assert!(
        events
            .drain()
            .iter()
            .any(|e| matches!(e, EtcdEvent::WatchCompacted { compact_revision, .. } if *compact_revision == revision))
    );
    // And it goes on watching.
    let _e = etcd
        .register(Registration::new(instance("api", "api-e", 5), ttl(5)))
        .await
        .expect("registered");
    assert_eq!(
        ids(&next_set(&mut behind).await),
        ["api-a", "api-d", "api-e"]
    );
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn a_lease_revoked_behind_its_back_is_granted_again_and_the_instance_returns() {
    let etcd = registry(&unique_prefix("regrant")).await;
    let mut events = etcd.subscribe();
    let _guard = etcd
        .register(Registration::new(instance("api", "api-1", 1), ttl(3)))
        .await
        .expect("registered");
    let mut watch = etcd.watch("api");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-1"]);
    let old_lease = etcd.lease_of("api", "api-1").expect("local registration");

    let mut raw = raw_client().await;
    raw.lease_revoke(old_lease).await.expect("revoked");
    watch_until(&mut watch, "the revoked instance vanished", |set| {
        set.is_empty()
    })
    .await;
    watch_until(&mut watch, "the instance came back", |set| {
        ids(set) == ["api-1"]
    })
    .await;
    // The task records the new lease just after writing the key.
    let give_up = Instant::now() + DEADLINE;
    while etcd.metrics().lease_regrants == 0 {
        assert!(Instant::now() < give_up, "the re-grant was not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let new_lease = etcd.lease_of("api", "api-1").expect("local registration");
    assert_ne!(new_lease, old_lease, "a new lease was granted");
    assert_eq!(etcd.metrics().lease_regrants, 1);
    let events = events.drain();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EtcdEvent::LeaseLost { lease, .. } if *lease == old_lease))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EtcdEvent::LeaseRegranted { lease, .. } if *lease == new_lease))
    );
}

const CHILD_ENV: &str = "PALISADE_ETCD_CHILD_PREFIX";
const CHILD_TTL_SECS: u64 = 2;

/// Run as a child process by
/// `a_killed_instance_vanishes_once_its_lease_expires_and_leaves_the_balancer` (and does nothing
/// otherwise): registers an instance and waits to be killed.
#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh (child process of another test)"]
async fn child_process_registers_and_waits_to_be_killed() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return;
    };
    let etcd = registry(&prefix).await;
    let guard = etcd
        .register(Registration::new(
            instance("api", "doomed", 7),
            ttl(CHILD_TTL_SECS),
        ))
        .await
        .expect("registered");
    println!("REGISTERED");
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(guard);
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn a_killed_instance_vanishes_once_its_lease_expires_and_leaves_the_balancer() {
    let prefix = unique_prefix("killed");
    let etcd = registry(&prefix).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_process_registers_and_waits_to_be_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &prefix)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let registered = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("REGISTERED") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(registered, Ok(true), "the child registered");

    let mut watch = etcd.watch("api");
    assert_eq!(ids(&next_set(&mut watch).await), ["doomed"]);
    // A balancer over the same registry: each instance's "client" answers
    // with the instance's id.
    let make = palisade::discovery::make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, palisade::BoxError>(tower::service_fn(move |_: ()| {
            let id = id.clone();
            async move { Ok::<_, palisade::BoxError>(id) }
        }))
    });
    let mut balance = palisade::discovery::Balance::new(
        "api",
        &etcd,
        make,
        palisade::discovery::BalanceConfig::default(),
    )
    .expect("a valid balancer");
    use tower::{Service, ServiceExt};
    let answer = balance.ready().await.expect("ready").call(()).await;
    assert_eq!(answer.expect("the doomed instance answers"), "doomed");
    // Outlive a few keep-alives: the child keeps its lease alive.
    tokio::time::sleep(Duration::from_secs(CHILD_TTL_SECS + 1)).await;
    assert_eq!(ids(&etcd.healthy("api").await.expect("list")), ["doomed"]);

    child.start_kill().expect("kill the child");
    child.wait().await.expect("child reaped");
    let killed = Instant::now();
    watch_until(&mut watch, "the killed instance vanished", |set| {
        set.is_empty()
    })
    .await;
    let gone_after = killed.elapsed();
    eventually("the balancer dropped the killed instance", async || {
        balance.metrics().instances == 0
    })
    .await;
    let error = balance
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("no instance is left");
    let none = error
        .downcast_ref::<palisade::discovery::NoHealthyInstance>()
        .unwrap_or_else(|| panic!("expected NoHealthyInstance, got {error}"));
    assert_eq!(none.service().as_ref(), "api");
    // Nobody revoked the lease: it expired. etcd checks expiry every
    // 500 ms and may extend a lease by its minimum TTL after a leader change.
    assert!(
        gone_after >= Duration::from_millis(500),
        "vanished after {gone_after:?}: too soon for a lease expiry"
    );
    assert!(
        gone_after <= Duration::from_secs(CHILD_TTL_SECS + 5),
        "vanished only after {gone_after:?}"
    );
}

#[tokio::test]
async fn invalid_configuration_is_rejected_before_connecting() {
    let field = |result: Result<EtcdRegistry, DiscoveryError>| match result {
        Err(DiscoveryError::Config(e)) => e.field(),
        other => panic!("expected a configuration error, got {other:?}"),
    };
    assert_eq!(
        field(EtcdRegistry::builder().prefix("services").connect().await),
        "prefix"
    );
    assert_eq!(
        field(EtcdRegistry::builder().prefix("/services/").connect().await),
        "prefix"
    );
    assert_eq!(
        field(
            EtcdRegistry::builder()
                .default_lease_ttl(Duration::from_millis(500))
                .connect()
                .await
        ),
        "default_lease_ttl"
    );
    assert_eq!(
        field(EtcdRegistry::builder().event_capacity(0).connect().await),
        "event_capacity"
    );
}

/// A TCP proxy in front of etcd that a test can cut: every connection is
/// dropped and new ones are refused until it is resumed.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Self {
        let target: SocketAddr = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("PALISADE_ETCD is http://<ip>:<port>");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (open_, connections_) = (Arc::clone(&open), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open_.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections_.lock().push(task.abort_handle());
            }
        });
        Self {
            addr,
            open,
            connections,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().drain(..) {
            connection.abort();
        }
    }

    fn resume(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let give_up = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn a_watch_cut_off_from_etcd_resumes_from_its_last_revision() {
    let prefix = unique_prefix("resume");
    let proxy = Proxy::start().await;
    let behind_proxy = registry_at(&prefix, &proxy.endpoint()).await;
    let direct = registry(&prefix).await;
    let mut watch = behind_proxy.watch("api");
    assert!(next_set(&mut watch).await.is_empty());
    let _a = direct
        .register(Registration::new(instance("api", "api-a", 1), ttl(5)))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-a"]);

    proxy.cut();
    let item = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("an item")
        .expect("not ended");
    let err = item.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Changed while the watch cannot see etcd.
    let _b = direct
        .register(Registration::new(instance("api", "api-b", 2), ttl(5)))
        .await
        .expect("registered");
    proxy.resume();

    let set = watch_until(&mut watch, "the watch caught up", |set| set.len() == 2).await;
    assert_eq!(ids(&set), ["api-a", "api-b"]);
    let metrics = behind_proxy.metrics();
    assert!(metrics.watch_failures >= 1);
    assert_eq!(
        metrics.watch_relists, 0,
        "resumed from its revision, no re-read"
    );
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn keep_alive_rides_out_a_short_outage_and_re_registers_after_a_long_one() {
    let prefix = unique_prefix("outage");
    let proxy = Proxy::start().await;
    let behind_proxy = registry_at(&prefix, &proxy.endpoint()).await;
    let direct = registry(&prefix).await;
    let _guard = behind_proxy
        .register(Registration::new(instance("api", "api-1", 1), ttl(3)))
        .await
        .expect("registered");
    let lease = behind_proxy.lease_of("api", "api-1").expect("lease");

    // Short: a keep-alive fails, the lease outlives the outage.
    proxy.cut();
    eventually("a keep-alive failed", async || {
        behind_proxy.metrics().keep_alive_failures >= 1
    })
    .await;
    proxy.resume();
    assert_eq!(ids(&direct.healthy("api").await.expect("list")), ["api-1"]);
    assert_eq!(
        behind_proxy.lease_of("api", "api-1"),
        Some(lease),
        "same lease"
    );

    // Long: the lease expires while etcd is unreachable.
    proxy.cut();
    eventually("the lease expired", async || {
        direct.healthy("api").await.expect("list").is_empty()
    })
    .await;
    proxy.resume();
    eventually("the instance was registered again", async || {
        behind_proxy.metrics().lease_regrants == 1
    })
    .await;
    assert_eq!(ids(&direct.healthy("api").await.expect("list")), ["api-1"]);
    assert_ne!(
        behind_proxy.lease_of("api", "api-1"),
        Some(lease),
        "a new lease"
    );
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn etcd_registry_keeps_the_registry_contract() {
    let etcd = registry(&unique_prefix("contract")).await;
    discovery_registry_contract::write_side(&etcd, "contract", 9000).await;
    let expected = [
        instance("users", "users-b", 2),
        instance("users", "users-a", 1),
    ];
    let mut guards = Vec::new();
    for instance in &expected {
        guards.push(
            etcd.register(Registration::new(instance.clone(), ttl(10)))
                .await
                .expect("registered"),
        );
    }
    discovery_registry_contract::read_side(&etcd, "users", &expected, "orders").await;
}

// ---------------------------------------------------------------------------
// The secured etcd: TLS, client certificates, user and password.

/// Where the script put the secured etcd and its credentials.
struct SecuredEtcd {
    endpoint: String,
    tls_dir: std::path::PathBuf,
    user: String,
    password: String,
}

impl SecuredEtcd {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} is not set: run scripts/integration-etcd.sh"))
        };
        Self {
            endpoint: var("PALISADE_ETCD_TLS"),
            tls_dir: var("PALISADE_ETCD_TLS_DIR").into(),
            user: var("PALISADE_ETCD_USER"),
            password: var("PALISADE_ETCD_PASSWORD"),
        }
    }

    fn pem(&self, file: &str) -> Vec<u8> {
        let path = self.tls_dir.join(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// A builder with the CA, the client certificate and the credentials.
    fn builder(&self, prefix: &str) -> palisade::discovery::EtcdRegistryBuilder {
        EtcdRegistry::builder()
            .endpoint(&self.endpoint)
            .prefix(prefix)
            .backoff(
                Backoff::constant(Duration::from_millis(50))
                    .build()
                    .expect("valid backoff"),
            )
            .ca_certificate_pem(self.pem("ca.pem"))
            .client_identity_pem(self.pem("client.pem"), self.pem("client-key.pem"))
            .credentials(&self.user, &self.password)
    }
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn etcd_over_mutual_tls_with_a_password_keeps_the_registry_contract() {
    let secured = SecuredEtcd::from_env();
    let etcd = secured
        .builder(&unique_prefix("tls-contract"))
        .connect()
        .await
        .expect("TLS, client certificate and password accepted");
    discovery_registry_contract::write_side(&etcd, "contract", 9000).await;
    let expected = [
        instance("users", "users-b", 2),
        instance("users", "users-a", 1),
    ];
    let mut guards = Vec::new();
    for instance in &expected {
        guards.push(
            etcd.register(Registration::new(instance.clone(), ttl(10)))
                .await
                .expect("registered"),
        );
    }
    discovery_registry_contract::read_side(&etcd, "users", &expected, "orders").await;
    let shown = format!("{etcd:?}");
    assert!(!shown.contains(&secured.password), "{shown}");
}

/// The error's text with all its sources.
fn error_text(error: &DiscoveryError) -> String {
    let mut text = format!("{error} / {error:?}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(" / {cause} / {cause:?}"));
        source = cause.source();
    }
    text
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn a_wrong_password_is_refused_at_connect_without_showing_it() {
    let secured = SecuredEtcd::from_env();
    let wrong = format!("not-{}", secured.password);
    let error = secured
        .builder("/palisade-test/wrong-password")
        .credentials(&secured.user, &wrong)
        .connect()
        .await
        .expect_err("a wrong password is refused");
    assert!(error.is_transient(), "{error}");
    let text = error_text(&error);
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains(&wrong), "the password shows: {text}");
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn without_credentials_or_a_client_certificate_the_secured_etcd_refuses() {
    let secured = SecuredEtcd::from_env();
    let prefix = unique_prefix("refused");
    // No password: the client certificate's name is no etcd user.
    let anonymous = EtcdRegistry::builder()
        .endpoint(&secured.endpoint)
        .prefix(&prefix)
        .ca_certificate_pem(secured.pem("ca.pem"))
        .client_identity_pem(secured.pem("client.pem"), secured.pem("client-key.pem"))
        .connect()
        .await
        .expect("the client connects lazily");
    let error = anonymous
        .healthy("users")
        .await
        .expect_err("no user, no access");
    assert!(error.is_transient(), "{error}");
    // No client certificate: the TLS handshake fails.
    let error = EtcdRegistry::builder()
        .endpoint(&secured.endpoint)
        .prefix(&prefix)
        .ca_certificate_pem(secured.pem("ca.pem"))
        .credentials(&secured.user, &secured.password)
        .connect()
        .await
        .expect_err("etcd asks for a client certificate");
    assert!(!error_text(&error).contains(&secured.password), "{error}");
}

#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn an_etcd_whose_certificate_another_ca_signed_is_refused() {
    let secured = SecuredEtcd::from_env();
    let error = secured
        .builder("/palisade-test/other-ca")
        .ca_certificate_pem(secured.pem("other-ca.pem"))
        .connect()
        .await
        .expect_err("the server's certificate is not trusted");
    assert!(error.is_transient(), "{error}");
    assert!(!error_text(&error).contains(&secured.password), "{error}");
}

/// A CA and a client certificate it signed, PEM, made by rcgen.
fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .signed_by(&client_key, &ca)
        .expect("client certificate");
    (ca.pem(), client.pem(), client_key.serialize_pem())
}

#[tokio::test]
async fn invalid_tls_options_and_credentials_are_rejected_naming_the_field() {
    let field = |result: Result<EtcdRegistry, DiscoveryError>| match result {
        Err(DiscoveryError::Config(e)) => e.field(),
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let (ca, client, client_key) = test_pki();
    let https = || EtcdRegistry::builder().endpoint("https://127.0.0.1:2379");
    assert_eq!(
        field(
            EtcdRegistry::builder()
                .endpoint("http://127.0.0.1:2379")
                .ca_certificate_pem(ca.clone())
                .connect()
                .await
        ),
        "endpoints",
        "TLS options need https:// endpoints"
    );
    assert_eq!(
        field(https().endpoint("http://127.0.0.1:2380").connect().await),
        "endpoints",
        "https:// and http:// endpoints do not mix"
    );
    assert_eq!(
        field(https().ca_certificate_pem("no PEM here").connect().await),
        "ca_certificate"
    );
    assert_eq!(
        field(
            https()
                .client_identity_pem(client.clone(), "no key")
                .connect()
                .await
        ),
        "client_identity"
    );
    assert_eq!(
        field(
            https()
                .client_identity_pem(ca.clone(), client_key.clone())
                .connect()
                .await
        ),
        "client_identity",
        "a key that is not the certificate's"
    );
    assert_eq!(
        field(https().tls_domain_name("not a name!").connect().await),
        "tls_domain_name"
    );
    assert_eq!(
        field(https().credentials("", "password").connect().await),
        "credentials"
    );
    assert_eq!(
        field(https().credentials("root", "").connect().await),
        "credentials"
    );
}

#[tokio::test]
async fn the_password_and_client_key_never_show_in_debug_or_errors() {
    const PASSWORD: &str = "etcd-pw-7c41e0-secret";
    let (ca, client, client_key) = test_pki();
    let key_body = client_key
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .to_owned();
    let leaks = |text: &str| text.contains(PASSWORD) || text.contains(&key_body);
    // Nothing listens on this port.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("local addr");
    let builder = EtcdRegistry::builder()
        .endpoint(format!("https://{closed}"))
        .ca_certificate_pem(ca)
        .client_identity_pem(client, client_key.clone())
        .credentials("root", PASSWORD);
    let shown = format!("{builder:?}");
    assert!(!leaks(&shown), "builder Debug: {shown}");
    assert!(shown.contains("root"), "the user is shown: {shown}");
    // With credentials the client authenticates at connect, which fails.
    let error = builder.connect().await.expect_err("nothing listens");
    assert!(error.is_transient(), "{error}");
    let text = error_text(&error);
    assert!(!leaks(&text), "error: {text}");
    // A configuration error on the same builder shows neither.
    let error = EtcdRegistry::builder()
        .endpoint("http://127.0.0.1:2379")
        .client_identity_pem("not a certificate", client_key)
        .credentials("root", PASSWORD)
        .connect()
        .await
        .expect_err("TLS options with an http:// endpoint");
    let text = error_text(&error);
    assert!(!leaks(&text), "error: {text}");
}

/// With the `metrics` feature: registrations, deregistrations and what a
/// watch sees, rendered by a Prometheus recorder (the only one in this test
/// binary).
#[cfg(feature = "metrics")]
#[tokio::test]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn registrations_and_watched_instances_are_exported() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    let value = |series: &str| {
        prometheus.render().lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.parse::<f64>().ok()
        })
    };
    let series = |name: &str, more: &str| {
        format!(r#"palisade_registry_{name}{{backend="etcd",service="metrics-api"{more}}}"#)
    };

    let etcd = registry(&unique_prefix("metrics")).await;
    let mut watch = etcd.watch("metrics-api");
    assert!(next_set(&mut watch).await.is_empty());
    let guard = etcd
        .register(Registration::new(
            instance("metrics-api", "api-1", 1),
            ttl(5),
        ))
        .await
        .expect("registered");
    watch_until(&mut watch, "api-1 is listed", |set| set.len() == 1).await;
    assert_eq!(value(&series("registrations_total", "")), Some(1.0));
    assert_eq!(
        value(&series("instances", r#",status="passing""#)),
        Some(1.0)
    );
    guard.deregister().await.expect("deregistered");
    watch_until(&mut watch, "api-1 is gone", <[Instance]>::is_empty).await;
    assert_eq!(
        value(&series(
            "deregistrations_total",
            r#",reason="deregistered""#
        )),
        Some(1.0)
    );
    assert_eq!(
        value(&series("instances", r#",status="passing""#)),
        Some(0.0)
    );
    assert_eq!(value(&series("watch_changes_total", "")), Some(2.0));
}
