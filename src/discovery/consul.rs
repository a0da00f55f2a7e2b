//! [`ConsulRegistry`]: a [`Registry`] over Consul's HTTP API.
//!
//! | operation | Consul endpoint |
//! |---|---|
//! | [`register`](Registry::register) | `PUT /v1/agent/service/register?replace-existing-checks=true` with one check |
//! | [`deregister`](Registry::deregister), guard drop | `PUT /v1/agent/service/deregister/<id>` |
//! | [`pass_ttl`](Registry::pass_ttl) | `PUT /v1/agent/check/pass/service:<id>` |
//! | [`healthy`](Registry::healthy) | `GET /v1/health/service/<name>?passing=true` |
//! | [`watch`](Registry::watch) | the same, as a blocking query (`index`, `wait`, `X-Consul-Index`) |
//!
//! Tested against an in-process HTTP server that implements these
//! endpoints as Consul documents them (no Consul server can be installed
//! where this crate is built); the requests follow Consul's API docs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::backoff::{Backoff, Delays};
use crate::error::ConfigError;
use crate::events::{EventHub, EventStream, check_event_capacity};

use super::error::DiscoveryError;
use super::health::HealthCheck;
use super::instance::{Instance, InstanceAddress, MAX_WEIGHT};
use super::registry::{BoxFuture, Registration, RegistrationGuard, Registry, WatchStream};

const BACKEND: &str = "consul";
const COMPONENT: &str = "consul registry";

/// The longest `wait` Consul accepts for a blocking query.
pub const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// The shortest `DeregisterCriticalServiceAfter` Consul honours (its reaper
/// runs every 30 s and ignores shorter values).
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// The most body bytes read from one Consul answer.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The header carrying the ACL token.
const TOKEN_HEADER: &str = "x-consul-token";

/// The header carrying a blocking query's index.
const INDEX_HEADER: &str = "x-consul-index";

/// A [`Registry`] backed by a Consul agent's HTTP API (feature `consul`).
///
/// * Registering sends the instance (`ID`, `Name`, `Tags`, `Address`,
///   `Port`, `Meta`, `Weights.Passing` = its weight) with one check:
///   [`HealthCheck::Ttl`] becomes `Check.TTL` with initial
///   `Status: "passing"` (healthy at once, as the [`Registry`] contract
///   says) and `DeregisterCriticalServiceAfter` of the TTL, but at least
///   one minute (Consul's minimum): a lapsed TTL hides the instance at once
///   and Consul removes it a little later. [`HealthCheck::Http`] becomes
///   `Check.HTTP` (`http://<address><path>`) with `Interval`, `Timeout` and
///   `DeregisterCriticalServiceAfter`; Consul's agent runs it, and the
///   instance is critical until it first passes. The check's id is
///   `service:<id>`, which [`pass_ttl`](Registry::pass_ttl) renews.
///   Consul answers a pass of an unknown check and of a check that is not
///   a TTL check alike (`CheckID ... does not have associated TTL`): both
///   are [`DiscoveryError::NotRegistered`], except for instances this
///   registry registered without a TTL check, which are
///   [`DiscoveryError::Unsupported`] without asking Consul.
/// * Consul's service ids are unique per agent, not per service: use
///   instance ids that are unique across the services of one agent.
/// * [`watch`](Registry::watch) runs blocking queries on
///   `/v1/health/service/<name>?passing=true` as Consul's
///   [blocking query docs] ask: it sends the last `X-Consul-Index` as
///   `index` with `wait`; when the returned index goes backwards it resets
///   its index, and it never blocks on an index below 1 (an index of 0 from
///   the server would otherwise turn the loop into a busy loop); queries
///   are rate limited by a token bucket (burst `query_burst`, one more
///   token every `query_interval`) so a server that answers at once cannot
///   make the loop spin; errors are yielded as `Err` items and retried with
///   the configured [`Backoff`]. Only sets that differ from the last one
///   yielded are yielded. The watch runs inside the stream: dropping the
///   stream cancels its query.
///
/// Only plain `http://` agent addresses are supported (a local agent is
/// the usual setup); there is no TLS connector.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `address` | `http://127.0.0.1:8500` | The agent's base URL. |
/// | `token` | none | ACL token, sent as `X-Consul-Token`. |
/// | `datacenter` | none (the agent's) | `dc` of health queries. |
/// | `wait` | 5 min | A blocking query's `wait`, 1 ms to 10 min. |
/// | `request_timeout` | 10 s | Limit on a non-blocking request; a blocking one may take `wait + wait/16 + request_timeout`. |
/// | `query_burst` | 2 | Queries a watch may send back to back. |
/// | `query_interval` | 1 s | Time to earn one more query once the burst is spent, at least 1 ms. |
/// | `backoff` | [`Backoff::default()`] | Delay before retrying a failed watch query. |
/// | `event_capacity` | 256 | Events buffered per subscriber. |
///
/// [blocking query docs]: https://developer.hashicorp.com/consul/api-docs/features/blocking
///
/// ```no_run
/// use std::time::Duration;
/// use palisade::discovery::{ConsulRegistry, HealthCheck, Instance, Registration, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let consul = ConsulRegistry::builder()
///     .address("http://127.0.0.1:8500")
///     .token("secret-acl-token")
///     .build()?;
/// let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080").tag("v2").build()?;
/// let _guard = consul
///     .register(Registration::new(me, HealthCheck::ttl(Duration::from_secs(15))?))
///     .await?;
/// consul.pass_ttl("payments", "payments-1").await?; // renew within 15 s
/// let healthy = consul.healthy("payments").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConsulRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    wait: Duration,
    request_timeout: Duration,
    query_burst: u32,
    query_interval: Duration,
    backoff: Backoff,
    client: Client<HttpConnector, Full<Bytes>>,
    counters: Counters,
    events: EventHub<ConsulEvent>,
    /// The instances registered through this registry, by id.
    local: Mutex<HashMap<String, LocalRegistration>>,
    next_generation: AtomicU64,
}

/// What this registry remembers of an instance it registered.
struct LocalRegistration {
    /// Tells the registration's guard from an earlier one's.
    generation: u64,
    /// Whether it has a TTL check: Consul answers a pass of a check that is
    /// not a TTL check exactly as one of an unknown check.
    ttl: bool,
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    deregistrations: AtomicU64,
    ttl_passes: AtomicU64,
    queries: AtomicU64,
    query_errors: AtomicU64,
    index_resets: AtomicU64,
    rate_limited: AtomicU64,
}

/// Counts of what a [`ConsulRegistry`] did, from
/// [`ConsulRegistry::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConsulMetrics {
    /// Successful registrations.
    pub registrations: u64,
    /// Successful deregistrations (by id or guard).
    pub deregistrations: u64,
    /// Successful TTL renewals.
    pub ttl_passes: u64,
    /// Health queries sent (by `healthy` and by watches).
    pub queries: u64,
    /// Health queries that failed.
    pub query_errors: u64,
    /// Times a watch reset its index because `X-Consul-Index` went
    /// backwards or was 0.
    pub index_resets: u64,
    /// Times a watch waited for the rate limiter before a query.
    pub rate_limited: u64,
}

/// Something a [`ConsulRegistry`] did; from [`ConsulRegistry::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsulEvent {
    /// An instance was registered with the agent.
    Registered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// An instance was deregistered.
    Deregistered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// A watch saw a new set of healthy instances.
    WatchChanged {
        /// The watched service.
        service: String,
        /// How many instances are healthy.
        instances: usize,
        /// The `X-Consul-Index` of the answer.
        index: u64,
    },
    /// A watch reset its index: `X-Consul-Index` went backwards (or was 0).
    IndexReset {
        /// The watched service.
        service: String,
        /// The index the query was sent with.
        previous: u64,
        /// The index the server returned.
        returned: u64,
    },
    /// A watch query failed; it is retried after a backoff.
    WatchFailed {
        /// The watched service.
        service: String,
        /// Why.
        error: String,
    },
}

/// Consul answered with an unexpected HTTP status; the source of a
/// [`DiscoveryError::Unavailable`] from a [`ConsulRegistry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consul answered {method} {path} with {status}: {body}")]
pub struct ConsulStatusError {
    method: Method,
    path: String,
    status: StatusCode,
    body: String,
}

impl ConsulStatusError {
    /// The HTTP status Consul answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The (start of the) body of Consul's answer: its error message.
    pub fn body(&self) -> &str {
        &self.body
    }
}

impl ConsulRegistry {
    /// Starts from the defaults (a local agent on `http://127.0.0.1:8500`).
    pub fn builder() -> ConsulRegistryBuilder {
        ConsulRegistryBuilder {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            datacenter: None,
            wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            query_burst: 2,
            query_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            event_capacity: 256,
        }
    }

    /// Subscribes to registrations and watch changes, resets and failures.
    pub fn subscribe(&self) -> EventStream<ConsulEvent> {
        self.inner.events.subscribe()
    }

    /// Counts of registrations, queries, index resets and rate limiting.
    pub fn metrics(&self) -> ConsulMetrics {
        let c = &self.inner.counters;
        ConsulMetrics {
            registrations: c.registrations.load(Ordering::Relaxed),
            deregistrations: c.deregistrations.load(Ordering::Relaxed),
            ttl_passes: c.ttl_passes.load(Ordering::Relaxed),
            queries: c.queries.load(Ordering::Relaxed),
            query_errors: c.query_errors.load(Ordering::Relaxed),
            index_resets: c.index_resets.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
        }
    }
}

/// Builds a [`ConsulRegistry`]; every setter is checked in
/// [`build`](Self::build). See [`ConsulRegistry`] for the defaults.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a registry"]
pub struct ConsulRegistryBuilder {
    address: String,
    token: Option<String>,
    datacenter: Option<String>,
    wait: Duration,
    request_timeout: Duration,
    query_burst: u32,
    query_interval: Duration,
    backoff: Backoff,
    event_capacity: usize,
}

impl ConsulRegistryBuilder {
    /// The agent's base URL, `http://host:port` (optionally with a path
    /// prefix). Default `http://127.0.0.1:8500`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// An ACL token, sent as `X-Consul-Token` on every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The datacenter to query (`dc`); default the agent's own.
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// How long one blocking query may wait for a change (`wait`), 1 ms to
    /// 10 minutes. Default 5 minutes (Consul's own default).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long a request may take beyond its blocking wait, at least
    /// 1 ms. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many watch queries may go back to back before the rate limit
    /// applies, at least 1. Default 2 (as Consul's docs suggest).
    pub fn query_burst(mut self, burst: u32) -> Self {
        self.query_burst = burst;
        self
    }

    /// The time to earn one more watch query once the burst is spent: the
    /// fastest a watch polls a server that answers at once. At least 1 ms.
    /// Default 1 s.
    pub fn query_interval(mut self, interval: Duration) -> Self {
        self.query_interval = interval;
        self
    }

    /// The delays between retries of a failed watch query. Default
    /// [`Backoff::default()`] (exponential from 100 ms, full jitter, at
    /// most 10 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Events buffered per subscriber, 1 to
    /// [`MAX_EVENT_CAPACITY`](crate::events::MAX_EVENT_CAPACITY). Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the registry, or the first field that
    /// breaks its rule. Needs no runtime; requests need a tokio runtime.
    pub fn build(self) -> Result<ConsulRegistry, ConfigError> {
        let base = self.address.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|e| {
            ConfigError::new(
                COMPONENT,
                "address",
                format!("must be a URL like http://127.0.0.1:8500, got {base:?} ({e})"),
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "address",
                    format!("must use http:// (https is not supported), got {base:?}"),
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "address",
                    format!("must be an http:// URL with a host, got {base:?}"),
                ));
            }
        }
        if uri.authority().is_none() || uri.query().is_some() {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                format!("must be an http:// URL with a host and no query, got {base:?}"),
            ));
        }
        let token = match self.token {
            None => None,
            Some(token) => {
                let value = HeaderValue::from_str(&token)
                    .ok()
                    .filter(|_| !token.is_empty());
                let mut value = value.ok_or_else(|| {
                    ConfigError::new(
                        COMPONENT,
                        "token",
                        "must be non-empty visible ASCII (an HTTP header value)",
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        if let Some(dc) = &self.datacenter {
            if dc.is_empty() || !dc.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "datacenter",
                    format!("must be non-empty visible ASCII, got {dc:?}"),
                ));
            }
        }
        if self.wait < Duration::from_millis(1) || self.wait > MAX_CONSUL_WAIT {
            return Err(ConfigError::new(
                COMPONENT,
                "wait",
                format!("must be 1ms to 10min (Consul's limit), got {:?}", self.wait),
            ));
        }
        if self.request_timeout < Duration::from_millis(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "request_timeout",
                format!("must be at least 1ms, got {:?}", self.request_timeout),
            ));
        }
        if self.query_burst == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "query_burst",
                "must be at least 1, got 0",
            ));
        }
        if self.query_interval < Duration::from_millis(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "query_interval",
                format!(
                    "must be at least 1ms (the rate limit that stops a busy loop), got {:?}",
                    self.query_interval
                ),
            ));
        }
        check_event_capacity(COMPONENT, self.event_capacity)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ConsulRegistry {
            inner: Arc::new(Inner {
                base,
                token,
                datacenter: self.datacenter,
                wait: self.wait,
                request_timeout: self.request_timeout,
                query_burst: self.query_burst,
                query_interval: self.query_interval,
                backoff: self.backoff,
                client,
                counters: Counters::default(),
                events: EventHub::new(self.event_capacity),
                local: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
            }),
        })
    }
}

/// A successful answer: status 2xx, its headers and body.
struct Answer {
    headers: http::HeaderMap,
    body: Bytes,
}

impl Inner {
    /// Sends one request; a non-2xx status is an `Err` carrying it.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        let uri: Uri = format!("{}{}", self.base, path)
            .parse()
            .map_err(|e| RequestError::Transport(DiscoveryError::unavailable(BACKEND, e)))?;
        let mut request = http::Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RequestError::Transport(DiscoveryError::unavailable(BACKEND, e)))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| {
                    RequestError::Transport(DiscoveryError::unavailable(BACKEND, e))
                })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| RequestError::Transport(DiscoveryError::unavailable(BACKEND, e)))?
                .to_bytes();
            if parts.status.is_success() {
                Ok(Answer {
                    headers: parts.headers,
                    body,
                })
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(1024)])
                    .trim()
                    .to_owned();
                Err(RequestError::Status(ConsulStatusError {
                    method: method.clone(),
                    path: path.split('?').next().unwrap_or_default().to_owned(),
                    status: parts.status,
                    body: text,
                }))
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RequestError::Transport(DiscoveryError::unavailable(
                BACKEND,
                format!("request timed out after {timeout:?}"),
            ))),
        }
    }

    /// Registers and returns the registration's generation.
    async fn register(&self, registration: Registration) -> Result<u64, DiscoveryError> {
        let body = registration_body(&registration);
        let body = serde_json::to_vec(&body).map_err(|e| DiscoveryError::InvalidData {
            backend: BACKEND,
            detail: e.to_string(),
        })?;
        self.send(
            Method::PUT,
            "/v1/agent/service/register?replace-existing-checks=true".to_owned(),
            Some(body),
            self.request_timeout,
        )
        .await
        .map_err(RequestError::into_discovery)?;
        let instance = &registration.instance;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.local.lock().insert(
            instance.id().to_string(),
            LocalRegistration {
                generation,
                ttl: matches!(registration.check, HealthCheck::Ttl { .. }),
            },
        );
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            backend = BACKEND,
            service = %instance.service(),
            id = %instance.id(),
            address = %instance.address(),
            "instance registered with consul"
        );
        self.events.publish_with(|| ConsulEvent::Registered {
            service: instance.service().to_string(),
            id: instance.id().to_string(),
        });
        Ok(generation)
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        match self
            .send(Method::PUT, path, None, self.request_timeout)
            .await
        {
            Ok(_) => {
                self.counters
                    .deregistrations
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    backend = BACKEND,
                    service,
                    id,
                    "instance deregistered from consul"
                );
                self.events.publish_with(|| ConsulEvent::Deregistered {
                    service: service.to_owned(),
                    id: id.to_owned(),
                });
                Ok(())
            }
            // Consul answers 404 "Unknown service ID" (older versions: 500).
            Err(RequestError::Status(e))
                if e.status == StatusCode::NOT_FOUND || e.body.contains("Unknown service") =>
            {
                self.local.lock().remove(id);
                Err(DiscoveryError::not_registered(service, id))
            }
            Err(e) => Err(e.into_discovery()),
        }
    }

    async fn pass_ttl(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        if self.local.lock().get(id).is_some_and(|r| !r.ttl) {
            return Err(DiscoveryError::Unsupported {
                backend: BACKEND,
                operation: "pass_ttl for an instance without a TTL check",
            });
        }
        let path = format!("/v1/agent/check/pass/service:{}", encode(id));
        match self
            .send(Method::PUT, path, None, self.request_timeout)
            .await
        {
            Ok(_) => {
                self.counters.ttl_passes.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(backend = BACKEND, service, id, "TTL check passed");
                Ok(())
            }
            // Consul: `CheckID "service:<id>" does not have associated TTL`
            // for an unknown check (500; 404 in newer versions).
            Err(RequestError::Status(e))
                if e.status == StatusCode::NOT_FOUND
                    || e.body.contains("does not have associated TTL") =>
            {
                Err(DiscoveryError::not_registered(service, id))
            }
            Err(e) => Err(e.into_discovery()),
        }
    }

    /// One health query; `block` is the index and wait of a blocking one.
    /// Returns the healthy instances in id order and `X-Consul-Index`.
    async fn query(
        &self,
        service: &str,
        block: Option<u64>,
    ) -> Result<(Vec<Instance>, Option<u64>), DiscoveryError> {
        let mut path = format!("/v1/health/service/{}?passing=true", encode(service));
        if let Some(dc) = &self.datacenter {
            path.push_str("&dc=");
            path.push_str(&encode(dc));
        }
        let mut timeout = self.request_timeout;
        if let Some(index) = block {
            path.push_str(&format!("&index={index}&wait={}", go_duration(self.wait)));
            // Consul adds up to wait/16 of jitter to the wait.
            timeout += self.wait + self.wait / 16;
        }
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let answer = self
                .send(Method::GET, path, None, timeout)
                .await
                .map_err(RequestError::into_discovery)?;
            let index = match answer.headers.get(INDEX_HEADER) {
                None => None,
                Some(value) => Some(
                    value
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or_else(|| DiscoveryError::InvalidData {
                            backend: BACKEND,
                            detail: format!("X-Consul-Index is not an integer: {value:?}"),
                        })?,
                ),
            };
            let instances = parse_health(service, &answer.body)?;
            Ok((instances, index))
        }
        .await;
        if result.is_err() {
            self.counters.query_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Why a request failed: no usable answer, or an answer with a bad status
/// (which some callers map to `NotRegistered`).
enum RequestError {
    Transport(DiscoveryError),
    Status(ConsulStatusError),
}

impl RequestError {
    fn into_discovery(self) -> DiscoveryError {
        match self {
            RequestError::Transport(e) => e,
            RequestError::Status(e) => DiscoveryError::unavailable(BACKEND, e),
        }
    }
}

/// The JSON body of `/v1/agent/service/register`.
fn registration_body(registration: &Registration) -> serde_json::Value {
    let instance = &registration.instance;
    let address = instance.address();
    let mut body = json!({
        "ID": instance.id().as_str(),
        "Name": instance.service().as_str(),
        "Tags": instance.tags(),
        "Address": address.host(),
        "Port": address.port(),
        "Meta": instance.metadata(),
        "Weights": { "Passing": instance.weight(), "Warning": 1 },
    });
    let check_id = format!("service:{}", instance.id());
    let check = match &registration.check {
        HealthCheck::None => None,
        HealthCheck::Ttl { ttl } => Some(json!({
            "CheckID": check_id,
            "Name": format!("TTL check of {}", instance.id()),
            "TTL": go_duration(*ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": go_duration((*ttl).max(MIN_DEREGISTER_AFTER)),
        })),
        HealthCheck::Http(http) => {
            let mut check = json!({
                "CheckID": check_id,
                "Name": format!("HTTP check of {}", instance.id()),
                "HTTP": format!("http://{address}{}", http.path()),
                "Method": "GET",
                "Interval": go_duration(http.interval()),
                "Timeout": go_duration(http.timeout()),
            });
            if let Some(after) = http.deregister_critical_after() {
                check["DeregisterCriticalServiceAfter"] = go_duration(after).into();
            }
            Some(check)
        }
    };
    if let Some(check) = check {
        body["Check"] = check;
    }
    body
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node", default)]
    node: Option<NodeEntry>,
    #[serde(rename = "Service")]
    service: ServiceEntry,
}

#[derive(Deserialize)]
struct NodeEntry {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct ServiceEntry {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Service", default)]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: Option<i64>,
}

/// Parses a health answer into instances, in id order. Entries that are
/// not valid instances are skipped with a warning; the first of two
/// entries with one id wins.
fn parse_health(service: &str, body: &[u8]) -> Result<Vec<Instance>, DiscoveryError> {
    let entries: Vec<HealthEntry> =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::InvalidData {
            backend: BACKEND,
            detail: format!("health of service '{service}' is not the documented JSON: {e}"),
        })?;
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    for entry in entries {
        let ServiceEntry {
            id,
            service: name,
            tags,
            address,
            port,
            meta,
            weights,
        } = entry.service;
        // Consul: an empty service address means the node's address.
        let host = if address.is_empty() {
            entry.node.map(|n| n.address).unwrap_or_default()
        } else {
            address
        };
        let name = if name.is_empty() {
            service.to_owned()
        } else {
            name
        };
        let built = InstanceAddress::new(&host, port).and_then(|address| {
            let mut builder = Instance::builder(&name, &id, address).tags(tags.unwrap_or_default());
            for (key, value) in meta.unwrap_or_default() {
                builder = builder.metadata(key, value);
            }
            if let Some(weight) = weights.and_then(|w| w.passing) {
                let weight = u32::try_from(weight)
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        ConfigError::new(
                            COMPONENT,
                            "weight",
                            format!("Weights.Passing must be 1 to {MAX_WEIGHT}, got {weight}"),
                        )
                    })?;
                builder = builder.weight(weight);
            }
            builder.build()
        });
        match built {
            Ok(instance) => match instances.entry(id) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(instance);
                }
                std::collections::btree_map::Entry::Occupied(slot) => {
                    tracing::warn!(
                        backend = BACKEND,
                        service,
                        id = slot.key(),
                        "two healthy entries share one service id; keeping the first"
                    );
                }
            },
            Err(error) => {
                tracing::warn!(backend = BACKEND, service, id, %error, "skipping an invalid instance from consul");
            }
        }
    }
    Ok(instances.into_values().collect())
}

/// The index to send on the next blocking query, after an answer with
/// `returned` to a query sent with `previous`, as Consul's blocking query
/// docs ask: reset to 0 when the index went backwards, then never less
/// than 1 (an index of 0 does not block).
pub(crate) fn next_index(previous: u64, returned: u64) -> u64 {
    let index = if returned < previous { 0 } else { returned };
    index.max(1)
}

/// A duration in Go's `time.ParseDuration` syntax, as Consul reads them.
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a
/// path segment or a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A token bucket: `burst` queries at once, then one per `interval`.
struct RateLimit {
    burst: u32,
    interval: Duration,
    tokens: u32,
    /// When the bucket last earned a token (or was full).
    refilled: Instant,
}

impl RateLimit {
    fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.burst {
            self.refilled = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_nanos() / self.interval.as_nanos().max(1);
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.refilled = if self.tokens >= self.burst {
                now
            } else {
                self.refilled + self.interval * earned
            };
        }
    }

    /// Takes a token, first waiting for one if none is left. Returns
    /// whether it had to wait.
    async fn acquire(&mut self) -> bool {
        self.refill(Instant::now());
        let waited = self.tokens == 0;
        if waited {
            tokio::time::sleep_until(self.refilled + self.interval).await;
            self.refill(Instant::now());
        }
        self.tokens = self.tokens.saturating_sub(1);
        waited
    }
}

/// The state a watch carries between the items it yields.
struct WatchState {
    inner: Arc<Inner>,
    service: String,
    /// The index of the next query; 0 only before the first answer.
    index: u64,
    rate: RateLimit,
    retry: Option<Delays<SmallRng>>,
    retry_delay: Option<Duration>,
    last: Option<Vec<Instance>>,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<Vec<Instance>, DiscoveryError>, Self)> {
        loop {
            if let Some(delay) = self.retry_delay.take() {
                tokio::time::sleep(delay).await;
            }
            if self.rate.acquire().await {
                self.inner
                    .counters
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = BACKEND, service = %self.service, "watch query delayed by the rate limit");
            }
            let block = (self.index > 0).then_some(self.index);
            let result = self.inner.query(&self.service, block).await;
            let result = result.and_then(|(instances, index)| match index {
                Some(index) => Ok((instances, index)),
                None => Err(DiscoveryError::InvalidData {
                    backend: BACKEND,
                    detail: "health answer without X-Consul-Index".to_owned(),
                }),
            });
            match result {
                Ok((instances, returned)) => {
                    self.retry = None;
                    let previous = self.index;
                    self.index = next_index(previous, returned);
                    if returned < previous || returned == 0 {
                        self.inner
                            .counters
                            .index_resets
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            backend = BACKEND,
                            service = %self.service,
                            previous,
                            returned,
                            next = self.index,
                            "X-Consul-Index went backwards or was 0: index reset"
                        );
                        self.inner.events.publish_with(|| ConsulEvent::IndexReset {
                            service: self.service.clone(),
                            previous,
                            returned,
                        });
                    }
                    if self.last.as_ref() != Some(&instances) {
                        tracing::debug!(
                            backend = BACKEND,
                            service = %self.service,
                            instances = instances.len(),
                            index = returned,
                            "healthy instances changed"
                        );
                        self.inner
                            .events
                            .publish_with(|| ConsulEvent::WatchChanged {
                                service: self.service.clone(),
                                instances: instances.len(),
                                index: returned,
                            });
                        self.last = Some(instances.clone());
                        return Some((Ok(instances), self));
                    }
                }
                Err(error) => {
                    let backoff = &self.inner.backoff;
                    let delay = self
                        .retry
                        .get_or_insert_with(|| backoff.delays())
                        .next()
                        .unwrap_or(backoff.max_interval());
                    self.retry_delay = Some(delay);
                    tracing::warn!(
                        backend = BACKEND,
                        service = %self.service,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "consul watch query failed"
                    );
                    self.inner.events.publish_with(|| ConsulEvent::WatchFailed {
                        service: self.service.clone(),
                        error: error.to_string(),
                    });
                    return Some((Err(error), self));
                }
            }
        }
    }
}

impl Registry for ConsulRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
        Box::pin(async move {
            let instance = registration.instance.clone();
            let generation = self.inner.register(registration).await?;
            let inner = Arc::clone(&self.inner);
            let (service, id) = (instance.service().clone(), instance.id().clone());
            Ok(RegistrationGuard::new(BACKEND, &instance, move || {
                // A later registration of the same id replaced this one:
                // leave it alone.
                let current = inner
                    .local
                    .lock()
                    .get(id.as_str())
                    .is_some_and(|r| r.generation == generation);
                Box::pin(async move {
                    if !current {
                        return Err(DiscoveryError::not_registered(
                            service.as_str(),
                            id.as_str(),
                        ));
                    }
                    inner.deregister(service.as_str(), id.as_str()).await
                })
            }))
        })
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.inner.deregister(service, id))
    }

    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.inner.pass_ttl(service, id))
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        Box::pin(async move {
            let (instances, _) = self.inner.query(service, None).await?;
            Ok(instances)
        })
    }

    fn watch(&self, service: &str) -> WatchStream {
        let state = WatchState {
            inner: Arc::clone(&self.inner),
            service: service.to_owned(),
            index: 0,
            rate: RateLimit::new(self.inner.query_burst, self.inner.query_interval),
            retry: None,
            retry_delay: None,
            last: None,
        };
        Box::pin(futures_util::stream::unfold(state, WatchState::next))
    }
}

impl fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("address", &self.inner.base)
            .field("datacenter", &self.inner.datacenter)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.inner.wait)
            .field("metrics", &self.metrics())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_index_resets_when_the_index_goes_backwards_and_never_drops_below_one() {
        assert_eq!(next_index(0, 10), 10, "first answer");
        assert_eq!(next_index(10, 12), 12, "forwards");
        assert_eq!(next_index(12, 12), 12, "unchanged (a wait timeout)");
        assert_eq!(next_index(12, 5), 1, "backwards: reset, then at least 1");
        assert_eq!(
            next_index(0, 0),
            1,
            "a 0 from the server is never sent back"
        );
        assert_eq!(next_index(7, 0), 1);
    }

    #[test]
    fn http_checks_of_ipv6_instances_bracket_the_address() {
        let instance = Instance::builder("api", "api-6", "[::1]:8080")
            .build()
            .expect("valid");
        let body = registration_body(&Registration::new(instance, HealthCheck::http()));
        assert_eq!(body["Address"], "::1");
        assert_eq!(body["Check"]["HTTP"], "http://[::1]:8080/health");
        assert_eq!(body["Check"]["Interval"], "10s");
        assert!(
            body["Check"]
                .get("DeregisterCriticalServiceAfter")
                .is_none()
        );
    }

    #[test]
    fn durations_use_go_syntax() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500000ns");
    }

    #[test]
    fn encode_escapes_reserved_characters() {
        assert_eq!(encode("api-1.v2_x~"), "api-1.v2_x~");
        assert_eq!(encode("a?b#c%d:e"), "a%3Fb%23c%25d%3Ae");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_allows_a_burst_then_one_query_per_interval() {
        let interval = Duration::from_millis(100);
        let mut rate = RateLimit::new(2, interval);
        let start = Instant::now();
        assert!(!rate.acquire().await);
        assert!(!rate.acquire().await);
        assert_eq!(Instant::now(), start, "the burst goes at once");
        for n in 1..=5u32 {
            assert!(rate.acquire().await, "query {} waits", n + 2);
            assert_eq!(Instant::now() - start, interval * n);
        }
        // Idle long enough to refill the bucket: a burst again.
        tokio::time::advance(interval * 10).await;
        let now = Instant::now();
        assert!(!rate.acquire().await);
        assert!(!rate.acquire().await);
        assert_eq!(Instant::now(), now);
        assert!(rate.acquire().await);
    }

    #[test]
    fn health_entries_use_the_node_address_when_the_service_has_none() {
        let body = br#"[
            {"Node": {"Node": "n1", "Address": "10.0.0.1"},
             "Service": {"ID": "b", "Service": "api", "Tags": null, "Address": "", "Port": 80,
                         "Meta": null, "Weights": {"Passing": 3, "Warning": 1}},
             "Checks": []},
            {"Node": {"Node": "n2", "Address": "10.0.0.2"},
             "Service": {"ID": "a", "Service": "api", "Tags": ["v2"], "Address": "10.0.0.9",
                         "Port": 81, "Meta": {"zone": "z1"}},
             "Checks": []},
            {"Node": {"Node": "n3", "Address": "10.0.0.3"},
             "Service": {"ID": "bad", "Service": "api", "Address": "", "Port": 82,
                         "Weights": {"Passing": 0, "Warning": 1}},
             "Checks": []}
        ]"#;
        let instances = parse_health("api", body).expect("valid JSON");
        assert_eq!(instances.len(), 2, "the entry with weight 0 is skipped");
        assert_eq!(instances[0].id().as_str(), "a");
        assert_eq!(instances[0].address().to_string(), "10.0.0.9:81");
        assert!(instances[0].has_tag("v2"));
        assert_eq!(instances[1].address().to_string(), "10.0.0.1:80");
        assert_eq!(instances[1].weight(), 3);
        assert!(matches!(
            parse_health("api", b"{}"),
            Err(DiscoveryError::InvalidData { .. })
        ));
    }
}
