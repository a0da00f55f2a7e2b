//! The DNS backend against a real DNS server: hickory-server, in process,
//! answering on a loopback UDP port from records the tests change. Real
//! sockets and real time, bounded deadlines. Run them with
//! `cargo test --features dns --test discovery_dns` (`cargo test
//! --all-features` runs them too).

#![cfg(feature = "dns")]

mod discovery_registry_contract;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use palisade::backoff::Backoff;
use palisade::discovery::{
    DiscoveryError, DnsEvent, DnsQuery, DnsRegistry, DnsRegistryBuilder, Instance, Registry,
    SRV_PRIORITY_METADATA_KEY, SRV_TARGET_METADATA_KEY, WatchStream,
};
use parking_lot::Mutex;
use tokio::net::UdpSocket;

const DEADLINE: Duration = Duration::from_secs(10);
/// The TTL of records the tests set, unless a test sets `Zone::ttl`.
const TTL: u32 = 1;

/// Records by (lower-case fully qualified name, type).
type RecordSets = HashMap<(String, RecordType), Vec<Record>>;

/// The zone the fake server answers from.
#[derive(Clone, Default)]
struct Zone {
    records: Arc<Mutex<RecordSets>>,
    /// The TTL of records set from now on; `None`: [`TTL`].
    ttl: Arc<Mutex<Option<u32>>>,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).expect("valid name")
}

impl Zone {
    fn set(&self, name: &str, rtype: RecordType, data: Vec<RData>) {
        let owner = fqdn(name);
        let ttl = self.ttl.lock().unwrap_or(TTL);
        let records = data
            .into_iter()
            .map(|d| Record::from_rdata(owner.clone(), ttl, d))
            .collect();
        self.records
            .lock()
            .insert((owner.to_ascii().to_lowercase(), rtype), records);
    }

    fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        self.set(
            name,
            RecordType::A,
            ips.iter().map(|ip| RData::A(A(*ip))).collect(),
        );
    }

    fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr]) {
        self.set(
            name,
            RecordType::AAAA,
            ips.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        );
    }

    fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        self.set(
            name,
            RecordType::SRV,
            records
                .iter()
                .map(|(priority, weight, port, target)| {
                    RData::SRV(SRV::new(*priority, *weight, *port, fqdn(target)))
                })
                .collect(),
        );
    }

    fn clear(&self, name: &str) {
        let owner = fqdn(name).to_ascii().to_lowercase();
        self.records.lock().retain(|(n, _), _| *n != owner);
    }

    fn query_count(&self) -> usize {
        self.queries.lock().len()
    }
}

#[async_trait::async_trait]
impl RequestHandler for Zone {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let Ok(info) = request.request_info() else {
            header.set_response_code(ResponseCode::FormErr);
            let response = builder.build_no_records(header);
            return match response_handle.send_response(response).await {
                Ok(info) => info,
                Err(_) => header.into(),
            };
        };
        let name = info.query.name().to_string().to_lowercase();
        let rtype = info.query.query_type();
        self.queries.lock().push((name.clone(), rtype));
        let (exists, answers) = {
            let records = self.records.lock();
            let exists = records.keys().any(|(n, _)| *n == name);
            (
                exists,
                records.get(&(name, rtype)).cloned().unwrap_or_default(),
            )
        };
        if !exists {
            header.set_response_code(ResponseCode::NXDomain);
        }
        let response = builder.build(header, answers.iter(), [], [], []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => header.into(),
        }
    }
}

/// Starts a DNS server for `zone` on `socket`; it stops with the test.
fn serve(zone: Zone, socket: UdpSocket) {
    let mut server = ServerFuture::new(zone);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
}

async fn start() -> (Zone, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let zone = Zone::default();
    serve(zone.clone(), socket);
    (zone, addr)
}

fn builder(server: SocketAddr) -> DnsRegistryBuilder {
    DnsRegistry::builder()
        .nameserver(server)
        .min_ttl(Duration::from_millis(50))
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
        .backoff(
            Backoff::constant(Duration::from_millis(50))
                .build()
                .expect("valid backoff"),
        )
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

#[tokio::test]
async fn host_query_lists_every_a_and_aaaa_address_on_the_port() {
    let (zone, server) = start().await;
    zone.set_a(
        "api.test",
        &[Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 2)],
    );
    zone.set_aaaa("api.test", &[Ipv6Addr::LOCALHOST]);
    let dns = builder(server)
        .service("api", DnsQuery::host("api.test", 8080))
        .build()
        .expect("valid config");
    let instances = dns.healthy("api").await.expect("resolved");
    assert_eq!(
        ids(&instances),
        ["127.0.0.2:8080", "127.0.0.3:8080", "[::1]:8080"]
    );
    assert!(instances.iter().all(|i| i.service().as_str() == "api"));
    assert_eq!(
        instances[2].address().socket_addr(),
        Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080))
    );
    assert!(instances.iter().all(|i| i.weight() == 1));
    assert_eq!(dns.metrics().resolutions, 1);
}

#[tokio::test]
async fn srv_query_resolves_targets_with_weights_and_uses_the_lowest_priority() {
    let (zone, server) = start().await;
    zone.set_srv(
        "_http._tcp.web.test",
        &[
            (10, 5, 9001, "a.web.test"),
            (10, 0, 9002, "b.web.test"),
            (20, 1, 9003, "c.web.test"),
        ],
    );
    zone.set_a("a.web.test", &[Ipv4Addr::new(127, 0, 0, 10)]);
    zone.set_a("b.web.test", &[Ipv4Addr::new(127, 0, 0, 11)]);
    zone.set_a("c.web.test", &[Ipv4Addr::new(127, 0, 0, 12)]);
    let dns = builder(server)
        .service("web", DnsQuery::srv("_http._tcp.web.test"))
        .build()
        .expect("valid config");
    let instances = dns.healthy("web").await.expect("resolved");
    assert_eq!(ids(&instances), ["127.0.0.10:9001", "127.0.0.11:9002"]);
    assert_eq!(instances[0].weight(), 5, "the SRV weight");
    assert_eq!(instances[1].weight(), 1, "SRV weight 0 counts as 1");
    assert_eq!(
        instances[0]
            .metadata()
            .get(SRV_TARGET_METADATA_KEY)
            .map(String::as_str),
        Some("a.web.test")
    );
    assert_eq!(
        instances[0]
            .metadata()
            .get(SRV_PRIORITY_METADATA_KEY)
            .map(String::as_str),
        Some("10")
    );

    // No target of priority 10 resolves: priority 20 is the fallback.
    zone.clear("a.web.test");
    zone.clear("b.web.test");
    // The resolver may answer from its cache for up to min_ttl (50 ms).
    let give_up = Instant::now() + DEADLINE;
    let instances = loop {
        let instances = dns.healthy("web").await.expect("resolved");
        if ids(&instances) != ["127.0.0.10:9001", "127.0.0.11:9002"] || Instant::now() > give_up {
            break instances;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(ids(&instances), ["127.0.0.12:9003"]);
}

#[tokio::test]
async fn watch_follows_record_changes_and_a_vanished_name_is_an_empty_set() {
    let (zone, server) = start().await;
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    let dns = builder(server)
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let mut events = dns.subscribe();
    let mut watch = dns.watch("api");
    assert_eq!(ids(&next_set(&mut watch).await), ["127.0.0.2:80"]);

    zone.set_a(
        "api.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)],
    );
    assert_eq!(
        ids(&next_set(&mut watch).await),
        ["127.0.0.2:80", "127.0.0.4:80"]
    );

    zone.clear("api.test");
    assert!(
        next_set(&mut watch).await.is_empty(),
        "NXDOMAIN: no instances"
    );
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 5)]);
    assert_eq!(ids(&next_set(&mut watch).await), ["127.0.0.5:80"]);
    assert_eq!(dns.metrics().changes, 3);
    let changed = events
        .drain()
        .into_iter()
        .filter(|e| matches!(e, DnsEvent::Changed { .. }))
        .count();
    assert_eq!(changed, 4, "the first set and three changes");
}

#[tokio::test]
async fn watch_re_resolves_on_the_interval_without_yielding_unchanged_sets() {
    let (zone, server) = start().await;
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    let dns = builder(server)
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let mut watch = dns.watch("api");
    assert_eq!(ids(&next_set(&mut watch).await), ["127.0.0.2:80"]);
    let started = Instant::now();
    let before = zone.query_count();
    // Unchanged records: no item, but the name is asked again and again.
    let item = tokio::time::timeout(Duration::from_millis(700), watch.next()).await;
    assert!(item.is_err(), "an unchanged set is not yielded again");
    let asked = zone.query_count() - before;
    let elapsed = started.elapsed();
    // Interval 200 ms (the records' TTL of 1 s is longer): 3 or so
    // re-resolutions in 700 ms, each one A and one AAAA query.
    assert!(asked >= 4, "re-resolved {asked} queries in {elapsed:?}");
    assert!(
        asked <= 2 * 5,
        "re-resolved too often: {asked} queries in {elapsed:?}"
    );
}

#[tokio::test]
async fn records_are_re_resolved_after_their_ttl_when_it_is_shorter_than_the_interval() {
    let (zone, server) = start().await;
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    let dns = builder(server)
        .interval(Duration::from_secs(30))
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let mut watch = dns.watch("api");
    assert_eq!(ids(&next_set(&mut watch).await), ["127.0.0.2:80"]);
    let resolved = Instant::now();
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
    assert_eq!(ids(&next_set(&mut watch).await), ["127.0.0.3:80"]);
    let after = resolved.elapsed();
    // TTL 1 s, interval 30 s: resolved again after about 1 s.
    assert!(
        after >= Duration::from_millis(900),
        "re-resolved after {after:?}, before the TTL"
    );
    assert!(
        after < Duration::from_secs(5),
        "re-resolved only after {after:?}"
    );
}

#[tokio::test]
async fn records_with_ttl_zero_are_re_resolved_no_more_often_than_min_ttl() {
    let (zone, server) = start().await;
    *zone.ttl.lock() = Some(0);
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    let min_ttl = Duration::from_millis(100);
    let dns = builder(server)
        .min_ttl(min_ttl)
        .interval(Duration::from_secs(30))
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let mut watch = dns.watch("api");
    assert_eq!(ids(&next_set(&mut watch).await), ["127.0.0.2:80"]);
    let before = zone.query_count();
    let started = Instant::now();
    let item = tokio::time::timeout(Duration::from_millis(550), watch.next()).await;
    assert!(item.is_err(), "an unchanged set is not yielded again");
    let resolutions = (zone.query_count() - before) / 2; // A and AAAA each time
    let elapsed = started.elapsed();
    assert!(
        (3..=6).contains(&resolutions),
        "{resolutions} resolutions in {elapsed:?} with min_ttl {min_ttl:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_and_the_watch_recovers() {
    let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let dns = builder(addr)
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let mut watch = dns.watch("api");
    let first = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("an item")
        .expect("not ended");
    let err = first.unwrap_err();
    assert!(err.is_transient(), "{err}");

    let socket = UdpSocket::bind(addr).await.expect("rebind the port");
    let zone = Zone::default();
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 9)]);
    serve(zone, socket);
    let recovered = loop {
        match tokio::time::timeout(DEADLINE, watch.next()).await {
            Ok(Some(Ok(set))) => break set,
            Ok(Some(Err(e))) => assert!(e.is_transient(), "{e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no recovery within {DEADLINE:?}"),
        }
    };
    assert_eq!(ids(&recovered), ["127.0.0.9:80"]);
    assert!(dns.metrics().failures >= 1);
}

#[tokio::test]
async fn unknown_services_are_unsupported_and_their_watch_ends() {
    let (_zone, server) = start().await;
    let dns = builder(server)
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let unsupported = |e: DiscoveryError| matches!(e, DiscoveryError::Unsupported { .. });
    assert!(unsupported(dns.healthy("orders").await.unwrap_err()));
    let mut watch = dns.watch("orders");
    assert!(unsupported(
        watch.next().await.expect("one item").unwrap_err()
    ));
    assert!(
        watch.next().await.is_none(),
        "the watch of an unknown service ends"
    );
    assert!(dns.healthy("api").await.expect("resolved").is_empty());
}

#[test]
fn invalid_configuration_is_rejected_naming_the_field() {
    let addr: SocketAddr = "127.0.0.1:53".parse().expect("addr");
    let field = |b: DnsRegistryBuilder| b.build().unwrap_err().field();
    assert_eq!(field(DnsRegistry::builder().nameserver(addr)), "service");
    let with_service = || {
        DnsRegistry::builder()
            .nameserver(addr)
            .service("api", DnsQuery::host("api.test", 80))
    };
    assert_eq!(
        field(
            DnsRegistry::builder()
                .nameserver(addr)
                .service("api", DnsQuery::host("", 80))
        ),
        "service"
    );
    assert_eq!(
        field(
            DnsRegistry::builder()
                .nameserver(addr)
                .service("bad name", DnsQuery::host("a.test", 80))
        ),
        "service"
    );
    assert_eq!(field(with_service().min_ttl(Duration::ZERO)), "min_ttl");
    assert_eq!(
        field(
            with_service()
                .min_ttl(Duration::from_secs(5))
                .interval(Duration::from_secs(1))
        ),
        "interval"
    );
    assert_eq!(field(with_service().timeout(Duration::ZERO)), "timeout");
    assert_eq!(field(with_service().event_capacity(0)), "event_capacity");
    assert!(with_service().build().is_ok());
}

#[tokio::test]
async fn dns_registry_keeps_the_read_side_of_the_registry_contract() {
    let (zone, server) = start().await;
    zone.set_a(
        "api.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 1)],
    );
    let dns = builder(server)
        .service("api", DnsQuery::host("api.test", 80))
        .service("none", DnsQuery::host("none.test", 80))
        .build()
        .expect("valid config");
    let expected = ["127.0.0.1:80", "127.0.0.2:80"].map(|address| {
        Instance::builder("api", address, address)
            .build()
            .expect("valid instance")
    });
    discovery_registry_contract::read_side(&dns, "api", &expected, "none").await;
}

/// With the `metrics` feature: the registry's resolutions, failures,
/// changes and instance counts, rendered by a Prometheus recorder (the only
/// one in this test binary).
#[cfg(feature = "metrics")]
#[tokio::test]
async fn resolutions_failures_changes_and_instances_are_exported() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    let value = |series: &str| {
        prometheus.render().lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.parse::<f64>().ok()
        })
    };
    let series = |name: &str, service: &str, more: &str| {
        format!(r#"palisade_registry_{name}{{backend="dns",service="{service}"{more}}}"#)
    };

    let (zone, server) = start().await;
    zone.set_a(
        "api.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let dns = builder(server)
        .service("api", DnsQuery::host("api.test", 80))
        .build()
        .expect("valid config");
    let mut watch = dns.watch("api");
    assert_eq!(next_set(&mut watch).await.len(), 2);
    assert_eq!(
        value(&series("instances", "api", r#",status="passing""#)),
        Some(2.0)
    );
    zone.set_a("api.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    assert_eq!(next_set(&mut watch).await.len(), 1);
    assert_eq!(
        value(&series("instances", "api", r#",status="passing""#)),
        Some(1.0)
    );
    assert_eq!(value(&series("watch_changes_total", "api", "")), Some(1.0));
    let queries = value(&series("queries_total", "api", "")).expect("queries counted");
    assert!(queries >= 2.0, "{queries}");

    // A server that is not there: the resolution fails.
    let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let nobody = probe.local_addr().expect("addr");
    drop(probe);
    let down = builder(nobody)
        .service("down", DnsQuery::host("down.test", 80))
        .build()
        .expect("valid config");
    assert!(down.healthy("down").await.is_err());
    assert_eq!(value(&series("queries_total", "down", "")), Some(1.0));
    assert_eq!(
        value(&series("errors_total", "down", r#",kind="query""#)),
        Some(1.0)
    );
    assert_eq!(down.metrics().failures, 1, "the snapshot agrees");
}
