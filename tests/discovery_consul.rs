//! The Consul backend against an in-process HTTP server that implements
//! the Consul endpoints it uses, as Consul documents them: agent service
//! registration with one check, deregistration, TTL check passes, and
//! `/v1/health/service/<name>?passing=true` with blocking queries (blocks
//! while the result's index is not above `index`, for at most `wait`, and
//! answers with `X-Consul-Index`). No Consul server can be installed where
//! this crate is built, so this is the closest to a real server we have.
//!
//! The same server also runs over TLS (rustls, with a CA and certificates
//! made by rcgen for each test) for the `https://` tests.
//!
//! These tests use real sockets and real time, with bounded deadlines.
//! Run them with `cargo test --features consul --test discovery_consul`
//! (`cargo test --all-features` runs them too).

#![cfg(feature = "consul")]

mod discovery_registry_contract;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palisade::backoff::Backoff;
use palisade::discovery::{
    ConsulEvent, ConsulRegistry, DiscoveryError, HealthCheck, HttpCheck, Instance, Registrar,
    Registration, Registry, WatchStream,
};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

// ---------------------------------------------------------------------------
// The fake Consul agent.

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    token: Option<String>,
    at: Instant,
}

#[derive(Debug)]
struct FakeService {
    definition: Value,
    check: Option<Value>,
    status: String,
}

#[derive(Debug, Default)]
struct FakeState {
    /// The raft index: bumped by every write.
    index: u64,
    services: BTreeMap<String, FakeService>,
    requests: Vec<Recorded>,
    /// Report this `X-Consul-Index` instead of the real one (a buggy server).
    reported_index: Option<u64>,
    /// Answer every query at once, bumping the index (a misbehaving server).
    ignore_blocking: bool,
}

struct FakeConsul {
    state: Mutex<FakeState>,
    changed: watch::Sender<()>,
}

impl FakeConsul {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FakeState {
                index: 10,
                ..FakeState::default()
            }),
            changed: watch::Sender::new(()),
        })
    }

    /// Serves on `listener` until the test ends.
    fn serve(self: &Arc<Self>, listener: TcpListener) {
        self.serve_with(listener, None);
    }

    /// Serves on `listener` until the test ends, over TLS when `tls` is
    /// given (a failed handshake closes that connection).
    fn serve_with(self: &Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        let fake = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let fake = Arc::clone(&fake);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let fake = Arc::clone(&fake);
                        async move { Ok::<_, Infallible>(fake.handle(request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
    }

    async fn start() -> (Arc<Self>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let fake = Self::new();
        fake.serve(listener);
        (fake, addr)
    }

    fn write(&self, f: impl FnOnce(&mut FakeState)) {
        let mut state = self.state.lock();
        f(&mut state);
        state.index += 1;
        drop(state);
        self.changed.send_replace(());
    }

    fn set_status(&self, id: &str, status: &str) {
        self.write(|s| {
            s.services.get_mut(id).expect("registered").status = status.to_owned();
        });
    }

    /// A raft snapshot with older data is restored: the index goes back.
    fn restore_snapshot(&self, index: u64, f: impl FnOnce(&mut FakeState)) {
        let mut state = self.state.lock();
        f(&mut state);
        state.index = index;
        drop(state);
        self.changed.send_replace(());
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().requests.clone()
    }

    fn health_requests(&self, service: &str) -> Vec<Recorded> {
        let path = format!("/v1/health/service/{service}");
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    fn service(&self, id: &str) -> Option<(Value, Option<Value>, String)> {
        let state = self.state.lock();
        state
            .services
            .get(id)
            .map(|s| (s.definition.clone(), s.check.clone(), s.status.clone()))
    }

    fn reported_index(state: &FakeState) -> u64 {
        state.reported_index.unwrap_or(state.index)
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let query = parse_query(request.uri().query().unwrap_or(""));
        let token = request
            .headers()
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.state.lock().requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            token,
            at: Instant::now(),
        });
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("PUT", ["v1", "agent", "service", "register"]) => self.register(&body),
            ("PUT", ["v1", "agent", "service", "deregister", id]) => {
                let id = decode(id);
                let mut removed = false;
                self.write(|s| removed = s.services.remove(&id).is_some());
                if removed {
                    reply(StatusCode::OK, "")
                } else {
                    reply(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                        ),
                    )
                }
            }
            ("PUT", ["v1", "agent", "check", "pass", check_id]) => {
                let check_id = decode(check_id);
                let id = check_id.strip_prefix("service:").unwrap_or("").to_owned();
                let ttl = {
                    let state = self.state.lock();
                    state
                        .services
                        .get(&id)
                        .and_then(|s| s.check.as_ref().map(|c| c.get("TTL").is_some()))
                };
                match ttl {
                    // Consul's agent answers both alike.
                    None | Some(false) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("CheckID {check_id:?} does not have associated TTL"),
                    ),
                    Some(true) => {
                        self.set_status(&id, "passing");
                        reply(StatusCode::OK, "")
                    }
                }
            }
            ("GET", ["v1", "health", "service", name]) => self.health(&decode(name), &query).await,
            _ => reply(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    fn register(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let Ok(mut definition) = serde_json::from_slice::<Value>(body) else {
            return reply(StatusCode::BAD_REQUEST, "Request decode failed");
        };
        let Some(id) = definition["ID"].as_str().map(str::to_owned) else {
            return reply(StatusCode::BAD_REQUEST, "missing ID");
        };
        let check = definition.as_object_mut().and_then(|o| o.remove("Check"));
        // Consul: a check starts critical unless `Status` says otherwise.
        let status = match &check {
            None => "passing".to_owned(),
            Some(check) => check["Status"].as_str().unwrap_or("critical").to_owned(),
        };
        self.write(|s| {
            s.services.insert(
                id,
                FakeService {
                    definition,
                    check,
                    status,
                },
            );
        });
        reply(StatusCode::OK, "")
    }

    async fn health(&self, name: &str, query: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
        let min_index: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
        let wait = query
            .get("wait")
            .map(|w| parse_go_duration(w))
            .unwrap_or(Duration::from_secs(300));
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.changed.subscribe();
        loop {
            {
                let mut state = self.state.lock();
                if state.ignore_blocking {
                    state.index += 1;
                    break;
                }
                // Consul blocks while the result's index is not above `index`.
                if min_index == 0 || Self::reported_index(&state) > min_index {
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let state = self.state.lock();
        let passing_only = query.contains_key("passing");
        let entries: Vec<Value> = state
            .services
            .values()
            .filter(|s| s.definition["Name"] == name)
            .filter(|s| !passing_only || s.status == "passing")
            .map(|s| {
                let d = &s.definition;
                json!({
                    "Node": {"ID": "5a1c", "Node": "fake-node", "Address": "127.0.0.1", "Datacenter": "dc1"},
                    "Service": {
                        "ID": d["ID"], "Service": d["Name"], "Tags": d["Tags"],
                        "Address": d["Address"], "Port": d["Port"], "Meta": d["Meta"],
                        "Weights": d["Weights"],
                    },
                    "Checks": [
                        {"CheckID": "serfHealth", "Status": "passing"},
                        {"CheckID": format!("service:{}", d["ID"].as_str().unwrap_or("")), "Status": s.status},
                    ],
                })
            })
            .collect();
        let mut response = reply(StatusCode::OK, &Value::Array(entries).to_string());
        response.headers_mut().insert(
            "x-consul-index",
            Self::reported_index(&state)
                .to_string()
                .parse()
                .expect("header"),
        );
        response
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

fn parse_go_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().expect("duration number");
    match unit {
        "ns" => Duration::from_nanos(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        other => panic!("unexpected duration unit {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Helpers.

const DEADLINE: Duration = Duration::from_secs(10);

fn registry(addr: SocketAddr) -> palisade::discovery::ConsulRegistryBuilder {
    ConsulRegistry::builder()
        .address(format!("http://{addr}"))
        .wait(Duration::from_secs(5))
        .query_interval(Duration::from_millis(20))
        .backoff(
            Backoff::constant(Duration::from_millis(20))
                .build()
                .expect("valid backoff"),
        )
}

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::builder(service, id, format!("127.0.0.1:{port}"))
        .build()
        .expect("valid instance")
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

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn registered_instance_round_trips_through_the_health_endpoint() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080")
        .tag("v2")
        .tag("eu")
        .metadata("zone", "eu-west-1a")
        .weight(7)
        .build()
        .expect("valid instance");
    let guard = consul
        .register(Registration::new(me.clone(), HealthCheck::None))
        .await
        .expect("registered");

    let (definition, check, status) = fake.service("payments-1").expect("stored");
    assert_eq!(definition["Name"], "payments");
    assert_eq!(definition["Address"], "10.0.0.7");
    assert_eq!(definition["Port"], 8080);
    assert_eq!(definition["Tags"], json!(["v2", "eu"]));
    assert_eq!(definition["Meta"], json!({"zone": "eu-west-1a"}));
    assert_eq!(definition["Weights"]["Passing"], 7);
    assert!(check.is_none(), "no check was asked for");
    assert_eq!(status, "passing");

    let healthy = consul.healthy("payments").await.expect("query");
    assert_eq!(healthy, vec![me], "every field survives the round trip");
    assert!(consul.healthy("orders").await.expect("query").is_empty());
    let register = &fake.requests()[0];
    assert_eq!(
        (register.method.as_str(), register.path.as_str()),
        ("PUT", "/v1/agent/service/register")
    );
    assert_eq!(
        register
            .query
            .get("replace-existing-checks")
            .map(String::as_str),
        Some("true")
    );
    drop(guard);
}

#[tokio::test]
async fn ttl_registration_sends_a_passing_ttl_check_and_pass_ttl_renews_it() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let _guard = consul
        .register(Registration::new(
            instance("api", "api-1", 9001),
            HealthCheck::ttl(Duration::from_secs(15)).expect("valid ttl"),
        ))
        .await
        .expect("registered");
    let (_, check, status) = fake.service("api-1").expect("stored");
    let check = check.expect("a check");
    assert_eq!(check["TTL"], "15s");
    assert_eq!(
        check["Status"], "passing",
        "healthy at once, as the Registry contract says"
    );
    assert_eq!(check["CheckID"], "service:api-1");
    assert_eq!(
        check["DeregisterCriticalServiceAfter"], "60s",
        "Consul's minimum"
    );
    assert_eq!(status, "passing");
    assert_eq!(ids(&consul.healthy("api").await.expect("query")), ["api-1"]);

    // The TTL lapses: the agent marks the check critical.
    fake.set_status("api-1", "critical");
    assert!(consul.healthy("api").await.expect("query").is_empty());
    consul.pass_ttl("api", "api-1").await.expect("renewed");
    assert_eq!(ids(&consul.healthy("api").await.expect("query")), ["api-1"]);
    let pass = fake
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/v1/agent/check/pass/"))
        .expect("a pass request");
    assert_eq!(pass.method, "PUT");
    assert_eq!(pass.path, "/v1/agent/check/pass/service:api-1");
    assert_eq!(consul.metrics().ttl_passes, 1);

    let err = consul.pass_ttl("api", "nobody").await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");
}

#[tokio::test]
async fn http_registration_sends_the_documented_check_fields_and_starts_critical() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let check = HttpCheck::builder()
        .path("/ready?deep=1")
        .interval(Duration::from_secs(3))
        .timeout(Duration::from_millis(1500))
        .deregister_critical_after(Duration::from_secs(90))
        .build()
        .expect("valid check");
    let _guard = consul
        .register(Registration::new(
            instance("web", "web-1", 9002),
            HealthCheck::Http(check),
        ))
        .await
        .expect("registered");
    let (_, check, status) = fake.service("web-1").expect("stored");
    let check = check.expect("a check");
    assert_eq!(check["HTTP"], "http://127.0.0.1:9002/ready?deep=1");
    assert_eq!(check["Interval"], "3s");
    assert_eq!(check["Timeout"], "1500ms");
    assert_eq!(check["DeregisterCriticalServiceAfter"], "90s");
    assert!(check.get("TTL").is_none());
    assert_eq!(
        status, "critical",
        "critical until the agent's first check passes"
    );
    assert!(consul.healthy("web").await.expect("query").is_empty());
    fake.set_status("web-1", "passing");
    assert_eq!(ids(&consul.healthy("web").await.expect("query")), ["web-1"]);

    let err = consul.pass_ttl("web", "web-1").await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Unsupported { .. }), "{err}");
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("/check/pass/")),
        "known locally: Consul was not asked"
    );
    // Another client cannot tell: Consul answers as for an unknown check.
    let other = registry(addr).build().expect("valid config");
    let err = other.pass_ttl("web", "web-1").await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");
}

#[tokio::test]
async fn dropping_the_guard_deregisters_and_deregistering_twice_is_not_registered() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let mut events = consul.subscribe();
    let guard = consul
        .register(Registration::new(
            instance("api", "api-1", 1),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    let kept = consul
        .register(Registration::new(
            instance("api", "api-2", 2),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    drop(guard);
    eventually("the dropped guard deregistered api-1", || {
        fake.service("api-1").is_none()
    })
    .await;
    assert!(fake.service("api-2").is_some());
    let deregister = fake
        .requests()
        .into_iter()
        .find(|r| r.path.contains("deregister"))
        .expect("a deregister request");
    assert_eq!(deregister.method, "PUT");
    assert_eq!(deregister.path, "/v1/agent/service/deregister/api-1");

    kept.deregister().await.expect("deregistered");
    let err = consul.deregister("api", "api-2").await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");
    assert_eq!(consul.metrics().registrations, 2);
    assert_eq!(consul.metrics().deregistrations, 2);
    let events = events.drain();
    assert!(events.contains(&ConsulEvent::Deregistered {
        service: "api".into(),
        id: "api-1".into()
    }));
}

#[tokio::test]
async fn registering_again_replaces_and_the_old_guard_leaves_the_new_registration() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let old = consul
        .register(Registration::new(
            instance("api", "api-1", 1),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    let _new = consul
        .register(Registration::new(
            instance("api", "api-1", 2),
            HealthCheck::None,
        ))
        .await
        .expect("registered again");
    let (definition, _, _) = fake.service("api-1").expect("stored");
    assert_eq!(
        definition["Port"], 2,
        "the agent holds the new registration"
    );

    let err = old.deregister().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NotRegistered { .. }), "{err}");
    assert!(
        fake.service("api-1").is_some(),
        "the new registration stays"
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("deregister")),
        "no deregistration was sent"
    );
}

#[tokio::test]
async fn token_and_datacenter_are_sent_and_ids_are_escaped() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr)
        .token("s3cr3t-token")
        .datacenter("dc2")
        .build()
        .expect("valid config");
    assert!(
        !format!("{consul:?}").contains("s3cr3t"),
        "the token is not logged"
    );
    let _guard = consul
        .register(Registration::new(
            instance("api", "api:1%", 1),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    consul.healthy("api").await.expect("query");
    consul
        .deregister("api", "api:1%")
        .await
        .expect("deregistered");
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.token.as_deref() == Some("s3cr3t-token"))
    );
    let health = &fake.health_requests("api")[0];
    assert_eq!(health.query.get("dc").map(String::as_str), Some("dc2"));
    assert_eq!(
        health.query.get("passing").map(String::as_str),
        Some("true")
    );
    assert!(
        fake.service("api:1%").is_none(),
        "the escaped id reached the server intact"
    );
}

#[tokio::test]
async fn watch_blocks_on_the_last_index_and_sees_instances_come_and_go() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let mut watch = consul.watch("api");
    assert!(
        next_set(&mut watch).await.is_empty(),
        "first item: the current (empty) set"
    );

    let guard = consul
        .register(Registration::new(
            instance("api", "api-1", 1),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-1"]);
    let _b = consul
        .register(Registration::new(
            instance("api", "api-2", 2),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-1", "api-2"]);
    // api-2's check goes critical: it leaves the passing set.
    fake.set_status("api-2", "critical");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-1"]);
    guard.deregister().await.expect("deregistered");
    assert!(next_set(&mut watch).await.is_empty());

    let requests = fake.health_requests("api");
    assert!(
        !requests[0].query.contains_key("index"),
        "the first query does not block"
    );
    for (previous, request) in requests.iter().zip(&requests[1..]) {
        let index: u64 = request.query["index"].parse().expect("index");
        assert!(index >= 1, "never index 0 after the first query");
        assert_eq!(request.query.get("wait").map(String::as_str), Some("5s"));
        assert!(request.at >= previous.at);
    }
}

#[tokio::test]
async fn watch_resets_its_index_when_the_index_goes_backwards() {
    let (fake, addr) = FakeConsul::start().await;
    let consul = registry(addr)
        .wait(Duration::from_millis(300))
        .build()
        .expect("valid config");
    let mut events = consul.subscribe();
    let mut watch = consul.watch("api");
    assert!(next_set(&mut watch).await.is_empty());
    let _a = consul
        .register(Registration::new(
            instance("api", "api-1", 1),
            HealthCheck::None,
        ))
        .await
        .expect("registered");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-1"]);
    let high = fake.state.lock().index;

    // An older snapshot is restored: index 3, and it holds api-old only.
    fake.restore_snapshot(3, |s| {
        s.services.clear();
        s.services.insert(
            "api-old".into(),
            FakeService {
                definition: json!({"ID": "api-old", "Name": "api", "Address": "127.0.0.1", "Port": 3}),
                check: None,
                status: "passing".into(),
            },
        );
    });
    // The query blocked on `high` returns at its wait with index 3; the
    // watch resets and sees the restored set at once.
    assert_eq!(ids(&next_set(&mut watch).await), ["api-old"]);
    let consumer = tokio::spawn(async move { while watch.next().await.is_some() {} });
    eventually("the watch blocks on the restored index", || {
        fake.health_requests("api")
            .last()
            .is_some_and(|r| r.query.get("index").map(String::as_str) == Some("3"))
    })
    .await;
    consumer.abort();
    let sent: Vec<String> = fake
        .health_requests("api")
        .iter()
        .map(|r| r.query.get("index").cloned().unwrap_or_default())
        .collect();
    let high = high.to_string();
    let after_high: Vec<&str> = sent
        .iter()
        .map(String::as_str)
        .skip_while(|i| *i != high)
        .skip_while(|i| *i == high)
        .collect();
    assert_eq!(
        after_high.get(..2),
        Some(&["1", "3"][..]),
        "after the backwards index the watch resets (to 0, sent as 1), then blocks on 3: {sent:?}"
    );
    assert!(
        !sent[1..].iter().any(|i| i == "0"),
        "index 0 is never sent: {sent:?}"
    );
    assert_eq!(consul.metrics().index_resets, 1);
    assert!(events.drain().contains(&ConsulEvent::IndexReset {
        service: "api".into(),
        previous: high.parse().expect("index"),
        returned: 3
    }));
}

#[tokio::test]
async fn an_index_of_zero_from_the_server_is_sent_back_as_one_and_blocks() {
    let (fake, addr) = FakeConsul::start().await;
    fake.state.lock().reported_index = Some(0);
    let wait = Duration::from_millis(200);
    let consul = registry(addr).wait(wait).build().expect("valid config");
    let mut watch = consul.watch("missing");
    assert!(next_set(&mut watch).await.is_empty());
    let consumer = tokio::spawn(async move { while watch.next().await.is_some() {} });
    eventually("three blocking queries were sent", || {
        fake.health_requests("missing").len() >= 4
    })
    .await;
    consumer.abort();
    let requests = fake.health_requests("missing");
    for (previous, request) in requests[1..].iter().zip(&requests[2..]) {
        assert_eq!(request.query.get("index").map(String::as_str), Some("1"));
        assert!(
            request.at - previous.at >= wait - Duration::from_millis(5),
            "each query blocked for its wait instead of spinning: {:?}",
            request.at - previous.at
        );
    }
    assert_eq!(
        requests[1].query.get("index").map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn a_server_that_answers_at_once_is_polled_no_faster_than_the_rate_limit() {
    let (fake, addr) = FakeConsul::start().await;
    fake.state.lock().ignore_blocking = true;
    let interval = Duration::from_millis(100);
    let consul = registry(addr)
        .query_burst(2)
        .query_interval(interval)
        .build()
        .expect("valid config");
    let mut watch = consul.watch("api");
    let consumer = tokio::spawn(async move { while watch.next().await.is_some() {} });
    eventually("six queries were sent", || {
        fake.health_requests("api").len() >= 6
    })
    .await;
    consumer.abort();
    let requests = fake.health_requests("api");
    let start = requests[0].at;
    // Token bucket, burst 2: queries 1 and 2 at once, then one per interval.
    assert!(
        requests[1].at - start < interval,
        "the burst is not delayed"
    );
    // Times are taken where the server receives: the first request also
    // waits for its connection, which under a loaded machine moves the
    // start late by a few milliseconds. A fifth of the interval of slack
    // still tells the rate limit from a busy loop (which would send all six
    // within a few milliseconds).
    let slack = interval / 5;
    for (n, request) in requests.iter().enumerate().take(6).skip(2) {
        let earliest = interval * (n as u32 - 1);
        assert!(
            request.at - start >= earliest - slack,
            "query {} came {:?} after the first, earlier than {earliest:?}",
            n + 1,
            request.at - start
        );
    }
    assert!(consul.metrics().rate_limited >= 4);
}

#[tokio::test]
async fn watch_reports_an_unreachable_agent_and_recovers_when_it_starts() {
    // A port with nothing listening (yet).
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let consul = registry(addr).build().expect("valid config");
    let mut watch = consul.watch("api");
    let first = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("an item")
        .expect("not ended");
    let err = first.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(consul.healthy("api").await.unwrap_err().is_transient());

    let listener = TcpListener::bind(addr).await.expect("rebind the port");
    let fake = FakeConsul::new();
    fake.write(|s| {
        s.services.insert(
            "api-1".into(),
            FakeService {
                definition: json!({"ID": "api-1", "Name": "api", "Address": "127.0.0.1", "Port": 1}),
                check: None,
                status: "passing".into(),
            },
        );
    });
    fake.serve(listener);
    let recovered = loop {
        match tokio::time::timeout(DEADLINE, watch.next()).await {
            Ok(Some(Ok(set))) => break set,
            Ok(Some(Err(e))) => assert!(e.is_transient(), "{e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no recovery within {DEADLINE:?}"),
        }
    };
    assert_eq!(ids(&recovered), ["api-1"]);
    assert!(consul.metrics().query_errors >= 1);
}

#[test]
fn invalid_configuration_is_rejected_naming_the_field() {
    let field = |b: palisade::discovery::ConsulRegistryBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(ConsulRegistry::builder().address("ftp://consul:8501")),
        "address"
    );
    assert_eq!(
        field(ConsulRegistry::builder().address("https://user:pw@consul:8501")),
        "address"
    );
    assert_eq!(
        field(
            ConsulRegistry::builder()
                .address("http://consul:8500")
                .ca_certificate_pem(Pki::new().ca_pem)
        ),
        "address",
        "TLS options need an https:// address"
    );
    let https = || ConsulRegistry::builder().address("https://consul:8501");
    assert_eq!(
        field(https().ca_certificate_pem("not a certificate")),
        "ca_certificate"
    );
    let pki = Pki::new();
    assert_eq!(
        field(https().client_identity_pem(pki.client_cert_pem.clone(), "no key here")),
        "client_identity"
    );
    assert_eq!(
        field(https().client_identity_pem(pki.client_cert_pem.clone(), pki.server_key_pem())),
        "client_identity",
        "a key that is not the certificate's"
    );
    assert_eq!(
        field(https().tls_domain_name("not a name!")),
        "tls_domain_name"
    );
    assert!(
        https()
            .ca_certificate_pem(pki.ca_pem.clone())
            .build()
            .is_ok(),
        "an https:// address with a CA is valid"
    );
    assert_eq!(
        field(ConsulRegistry::builder().address("consul:8500")),
        "address"
    );
    assert_eq!(field(ConsulRegistry::builder().token("")), "token");
    assert_eq!(field(ConsulRegistry::builder().token("a\nb")), "token");
    assert_eq!(
        field(ConsulRegistry::builder().datacenter("")),
        "datacenter"
    );
    assert_eq!(
        field(ConsulRegistry::builder().wait(Duration::from_secs(601))),
        "wait"
    );
    assert_eq!(
        field(ConsulRegistry::builder().wait(Duration::ZERO)),
        "wait"
    );
    assert_eq!(
        field(ConsulRegistry::builder().query_burst(0)),
        "query_burst"
    );
    assert_eq!(
        field(ConsulRegistry::builder().query_interval(Duration::ZERO)),
        "query_interval"
    );
    assert_eq!(
        field(ConsulRegistry::builder().request_timeout(Duration::ZERO)),
        "request_timeout"
    );
    assert_eq!(
        field(ConsulRegistry::builder().event_capacity(0)),
        "event_capacity"
    );
    assert!(
        ConsulRegistry::builder().build().is_ok(),
        "the defaults are valid"
    );
}

#[tokio::test]
async fn consul_registry_keeps_the_registry_contract() {
    let (_fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    discovery_registry_contract::write_side(&consul, "contract", 9000).await;
    let expected = [
        instance("users", "users-b", 2),
        instance("users", "users-a", 1),
    ];
    let mut guards = Vec::new();
    for instance in &expected {
        guards.push(
            consul
                .register(Registration::new(instance.clone(), HealthCheck::None))
                .await
                .expect("registered"),
        );
    }
    discovery_registry_contract::read_side(&consul, "users", &expected, "orders").await;
}

// ---------------------------------------------------------------------------
// Over TLS: https:// agents, custom CAs, mutual TLS, and secrets.

/// A CA, a server certificate it signed for some names, and a client
/// certificate it signed; made by rcgen for one test.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: KeyPair,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    /// A server certificate for `127.0.0.1` and `localhost`.
    fn new() -> Self {
        Self::for_server_names(&["127.0.0.1", "localhost"])
    }

    fn for_server_names(names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "palisade test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let server_cert = CertificateParams::new(names)
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "palisade test client");
        let client_cert = client_params
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_cert: server_cert.der().clone(),
            server_key,
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    fn server_key_pem(&self) -> String {
        self.server_key.serialize_pem()
    }

    /// A TLS server config presenting the server certificate; with
    /// `require_client_certificate`, only clients the CA signed get in.
    fn acceptor(&self, require_client_certificate: bool) -> TlsAcceptor {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_certificate {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).expect("CA root");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivatePkcs8KeyDer::from(self.server_key.serialize_der());
        let config = builder
            .with_single_cert(vec![self.server_cert.clone()], key.into())
            .expect("server certificate and key");
        TlsAcceptor::from(Arc::new(config))
    }
}

/// A fake agent answering over TLS with `acceptor`.
async fn start_tls(acceptor: TlsAcceptor) -> (Arc<FakeConsul>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let fake = FakeConsul::new();
    fake.serve_with(listener, Some(acceptor));
    (fake, addr)
}

fn https_registry(addr: SocketAddr, pki: &Pki) -> palisade::discovery::ConsulRegistryBuilder {
    registry(addr)
        .address(format!("https://{addr}"))
        .ca_certificate_pem(pki.ca_pem.clone())
}

#[tokio::test]
async fn an_https_agent_signed_by_the_given_ca_keeps_the_registry_contract() {
    let pki = Pki::new();
    let (fake, addr) = start_tls(pki.acceptor(false)).await;
    let consul = https_registry(addr, &pki)
        .token("tls-token")
        .build()
        .expect("valid config");
    discovery_registry_contract::write_side(&consul, "contract", 9000).await;
    let expected = [instance("users", "users-a", 1)];
    let _guard = consul
        .register(Registration::new(expected[0].clone(), HealthCheck::None))
        .await
        .expect("registered over TLS");
    discovery_registry_contract::read_side(&consul, "users", &expected, "orders").await;
    let requests = fake.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.token.as_deref() == Some("tls-token")),
        "the token travels inside TLS"
    );
}

#[tokio::test]
async fn an_https_agent_whose_certificate_another_ca_signed_is_unavailable() {
    let pki = Pki::new();
    let (fake, addr) = start_tls(pki.acceptor(false)).await;
    let stranger = Pki::new();
    let consul = https_registry(addr, &stranger)
        .build()
        .expect("valid config");
    let error = consul.healthy("users").await.expect_err("untrusted agent");
    assert!(
        matches!(error, DiscoveryError::Unavailable { .. }),
        "{error}"
    );
    assert!(fake.requests().is_empty(), "no request left the client");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_and_is_refused_without_it() {
    let pki = Pki::new();
    let (fake, addr) = start_tls(pki.acceptor(true)).await;
    let without = https_registry(addr, &pki).build().expect("valid config");
    let error = without.healthy("users").await.expect_err("no client cert");
    assert!(
        matches!(error, DiscoveryError::Unavailable { .. }),
        "{error}"
    );
    assert!(fake.requests().is_empty());
    let with = https_registry(addr, &pki)
        .client_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
        .build()
        .expect("valid config");
    assert!(with.healthy("users").await.expect("mutual TLS").is_empty());
    assert_eq!(fake.health_requests("users").len(), 1);
}

#[tokio::test]
async fn tls_domain_name_is_the_name_checked_against_the_certificate() {
    let pki = Pki::for_server_names(&["consul.internal"]);
    let (_fake, addr) = start_tls(pki.acceptor(false)).await;
    let by_address = https_registry(addr, &pki).build().expect("valid config");
    by_address
        .healthy("users")
        .await
        .expect_err("the certificate does not name 127.0.0.1");
    let by_name = https_registry(addr, &pki)
        .tls_domain_name("consul.internal")
        .build()
        .expect("valid config");
    by_name.healthy("users").await.expect("the name matches");
}

/// Everything the `fmt` subscriber writes, for checking traces.
#[derive(Clone, Default)]
struct CapturedTraces(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedTraces {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedTraces {
    type Writer = CapturedTraces;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_token_and_client_key_never_show_in_debug_errors_events_or_traces() {
    const TOKEN: &str = "acl-6f1d2b9e-secret";
    let pki = Pki::new();
    // The base64 body of the key: any part of it showing is a leak.
    let key_body = pki
        .client_key_pem
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .to_owned();
    let leaks = |text: &str| text.contains(TOKEN) || text.contains(&key_body);
    let traces = CapturedTraces::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(traces.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    // Nothing listens on this port: every request fails.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("local addr");
    let builder = https_registry(closed, &pki)
        .token(TOKEN)
        .client_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone());
    let shown = format!("{builder:?}");
    assert!(!leaks(&shown), "builder Debug: {shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let consul = builder.build().expect("valid config");
    let shown = format!("{consul:?}");
    assert!(!leaks(&shown), "registry Debug: {shown}");

    let mut events = consul.subscribe();
    let error = consul.healthy("users").await.expect_err("agent down");
    let mut text = format!("{error} / {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(" / {cause} / {cause:?}"));
        source = cause.source();
    }
    assert!(!leaks(&text), "error: {text}");
    let mut watch = consul.watch("users");
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Err(error))) => assert!(!leaks(&format!("{error:?}")), "{error:?}"),
        other => panic!("expected a failed watch query, got {other:?}"),
    }
    drop(watch);
    let event = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("an event in time")
        .expect("events go on");
    assert!(
        matches!(event, ConsulEvent::WatchFailed { .. }),
        "{event:?}"
    );
    assert!(!leaks(&format!("{event:?}")), "event: {event:?}");

    // A token that is not a header value is refused without quoting it.
    let rejected = ConsulRegistry::builder()
        .token(format!("{TOKEN}\n"))
        .build()
        .expect_err("not a header value");
    assert_eq!(rejected.field(), "token");
    assert!(!leaks(&rejected.to_string()), "{rejected}");

    let traces = String::from_utf8_lossy(&traces.0.lock()).into_owned();
    assert!(!traces.is_empty(), "the registry traced something");
    assert!(!leaks(&traces), "traces: {traces}");
}

/// With the `metrics` feature: registrations, TTL passes, queries, query
/// errors and what a watch sees, rendered by a Prometheus recorder (the
/// only one in this test binary).
#[cfg(feature = "metrics")]
#[tokio::test]
async fn registrations_queries_errors_and_watched_instances_are_exported() {
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
        format!(r#"palisade_registry_{name}{{backend="consul",service="{service}"{more}}}"#)
    };

    let (_fake, addr) = FakeConsul::start().await;
    let consul = registry(addr).build().expect("valid config");
    let mut watch = consul.watch("metrics-api");
    assert!(next_set(&mut watch).await.is_empty());
    let guard = consul
        .register(Registration::new(
            instance("metrics-api", "api-1", 1),
            HealthCheck::ttl(Duration::from_secs(15)).expect("valid ttl"),
        ))
        .await
        .expect("registered");
    consul
        .pass_ttl("metrics-api", "api-1")
        .await
        .expect("renewed");
    assert_eq!(ids(&next_set(&mut watch).await), ["api-1"]);
    assert_eq!(
        value(&series("registrations_total", "metrics-api", "")),
        Some(1.0)
    );
    assert_eq!(
        value(&series("ttl_passes_total", "metrics-api", "")),
        Some(1.0)
    );
    assert_eq!(
        value(&series("instances", "metrics-api", r#",status="passing""#)),
        Some(1.0)
    );
    assert_eq!(
        value(&series("watch_changes_total", "metrics-api", "")),
        Some(1.0)
    );
    guard.deregister().await.expect("deregistered");
    assert!(next_set(&mut watch).await.is_empty());
    assert_eq!(
        value(&series(
            "deregistrations_total",
            "metrics-api",
            r#",reason="deregistered""#
        )),
        Some(1.0)
    );
    assert_eq!(
        value(&series("instances", "metrics-api", r#",status="passing""#)),
        Some(0.0)
    );
    let queries = value(&series("queries_total", "metrics-api", "")).expect("queries counted");
    assert!(queries >= 3.0, "{queries}");

    // An agent that is not there: the query fails.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nobody = probe.local_addr().expect("addr");
    drop(probe);
    let down = registry(nobody).build().expect("valid config");
    assert!(down.healthy("metrics-down").await.is_err());
    assert_eq!(
        value(&series("errors_total", "metrics-down", r#",kind="query""#)),
        Some(1.0)
    );
    assert_eq!(down.metrics().query_errors, 1, "the snapshot agrees");
}
