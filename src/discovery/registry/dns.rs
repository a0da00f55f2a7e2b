//! [`DnsRegistry`]: a read-only [`Registry`] that finds instances in DNS
//! (feature `dns`): A/AAAA records of a name with a known port, or SRV
//! records, re-resolved on an interval.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, TokioResolver};

use crate::backoff::Backoff;
use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::{Instance, MAX_WEIGHT, ServiceName};
use crate::error::ConfigError;
use crate::events::{EventHub, EventStream, check_event_capacity};

use super::polling::{Fetched, SnapshotSource, polling_watch};
use super::{BoxFuture, Registry, WatchStream};

const BACKEND: &str = "dns";
const COMPONENT: &str = "dns registry";

/// The metadata key holding an SRV instance's target name.
pub const SRV_TARGET_METADATA_KEY: &str = "srv.target";

/// The metadata key holding an SRV instance's priority.
pub const SRV_PRIORITY_METADATA_KEY: &str = "srv.priority";

/// Where the instances of one service are found in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// The A and AAAA records of `name`; every address is an instance
    /// listening on `port` (a Kubernetes headless service, a round-robin
    /// name).
    Host {
        /// The name to resolve, e.g. `users.default.svc.cluster.local`.
        name: String,
        /// The port every instance listens on.
        port: u16,
    },
    /// The SRV records of `name` (e.g. `_http._tcp.users.default.svc.cluster.local`):
    /// each record's target is resolved (A/AAAA) and every address is an
    /// instance on the record's port, weighted by the record's weight.
    Srv {
        /// The SRV name to resolve.
        name: String,
    },
}

impl DnsQuery {
    /// A/AAAA records of `name`, instances on `port`.
    pub fn host(name: impl Into<String>, port: u16) -> Self {
        DnsQuery::Host {
            name: name.into(),
            port,
        }
    }

    /// SRV records of `name`.
    pub fn srv(name: impl Into<String>) -> Self {
        DnsQuery::Srv { name: name.into() }
    }

    fn name(&self) -> &str {
        match self {
            DnsQuery::Host { name, .. } | DnsQuery::Srv { name } => name,
        }
    }
}

/// A read-only [`Registry`] over DNS (feature `dns`, crate
/// `hickory-resolver`): how Kubernetes headless services and SRV-based
/// service catalogs are discovered.
///
/// Each service is mapped to a [`DnsQuery`]:
///
/// * [`DnsQuery::Host`]: every A and AAAA address of the name is an
///   instance on the given port, with id `<ip>:<port>` and weight 1.
/// * [`DnsQuery::Srv`]: only the records of the lowest priority value are
///   used (higher values are fallbacks, per RFC 2782, used when no target
///   of a lower value resolves); each target is resolved and each address
///   is an instance with id `<ip>:<port>`, the record's weight (0 counts as
///   1, more than [`MAX_WEIGHT`] as `MAX_WEIGHT`), and metadata
///   [`SRV_TARGET_METADATA_KEY`] and [`SRV_PRIORITY_METADATA_KEY`].
///
/// A name that does not exist or has no records is an empty set, not an
/// error. [`watch`](Registry::watch) resolves again after the records'
/// TTL, but at least every `interval` and at most every `min_ttl`; it
/// yields a set only when it differs from the last one, and failures as
/// `Err` items (retried with the [`Backoff`]). It is read-only: instances
/// do not register with it (it is no [`Registrar`](super::Registrar)). A
/// service without a query is [`DiscoveryError::Unsupported`] (its watch
/// yields that error and ends).
///
/// | option | default | meaning |
/// |---|---|---|
/// | `service` | none (at least one) | The query of a service. |
/// | `nameserver` | the system's (`/etc/resolv.conf`) | Name servers to ask (UDP, then TCP). |
/// | `interval` | 30 s | Longest time between two resolutions of a watched service. |
/// | `min_ttl` | 1 s | Shortest time between two resolutions (records with shorter TTLs are re-resolved this often). |
/// | `timeout` | 5 s | How long one DNS query may take. |
/// | `backoff` | [`Backoff::default()`] | Delay before resolving again after a failure. |
/// | `event_capacity` | 256 | Events buffered per subscriber. |
///
/// ```no_run
/// use std::time::Duration;
/// use palisade::discovery::{DnsQuery, DnsRegistry, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let dns = DnsRegistry::builder()
///     .service("users", DnsQuery::srv("_http._tcp.users.default.svc.cluster.local"))
///     .service("orders", DnsQuery::host("orders.default.svc.cluster.local", 8080))
///     .interval(Duration::from_secs(10))
///     .build()?;
/// let users = dns.healthy("users").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DnsRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    services: HashMap<ServiceName, DnsQuery>,
    interval: Duration,
    min_ttl: Duration,
    backoff: Backoff,
    counters: Counters,
    events: EventHub<DnsEvent>,
}

#[derive(Default)]
struct Counters {
    resolutions: AtomicU64,
    failures: AtomicU64,
    changes: AtomicU64,
}

/// Counts of what a [`DnsRegistry`] did, from [`DnsRegistry::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DnsMetrics {
    /// Resolutions of a service (by `healthy` and by watches).
    pub resolutions: u64,
    /// Resolutions that failed.
    pub failures: u64,
    /// Times a watch saw a different set of instances.
    pub changes: u64,
}

/// Something a [`DnsRegistry`] watch saw; from [`DnsRegistry::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsEvent {
    /// The resolved set of a watched service changed.
    Changed {
        /// The service.
        service: String,
        /// How many instances it has now.
        instances: usize,
    },
    /// Resolving a watched service failed; it is retried after a backoff.
    Failed {
        /// The service.
        service: String,
        /// Why.
        error: String,
    },
}

/// Builds a [`DnsRegistry`]; see it for the defaults.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a registry"]
pub struct DnsRegistryBuilder {
    services: Vec<(String, DnsQuery)>,
    nameservers: Vec<SocketAddr>,
    interval: Duration,
    min_ttl: Duration,
    timeout: Duration,
    backoff: Backoff,
    event_capacity: usize,
}

impl DnsRegistryBuilder {
    /// Finds the instances of `service` with `query` (a later call for the
    /// same service replaces the query).
    pub fn service(mut self, service: impl Into<String>, query: DnsQuery) -> Self {
        self.services.push((service.into(), query));
        self
    }

    /// Asks this name server (UDP, then TCP); may be called several times.
    /// Default: the system's name servers.
    pub fn nameserver(mut self, address: SocketAddr) -> Self {
        self.nameservers.push(address);
        self
    }

    /// The longest time between two resolutions of a watched service, at
    /// least `min_ttl`. Default 30 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The shortest time between two resolutions of a watched service, at
    /// least 1 ms. Default 1 s.
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = min_ttl;
        self
    }

    /// How long one DNS query may take, at least 1 ms. Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Delays before resolving again after a failure. Default
    /// [`Backoff::default()`].
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
    /// breaks its rule. Without a `nameserver` it reads the system's
    /// resolver configuration.
    pub fn build(self) -> Result<DnsRegistry, ConfigError> {
        if self.services.is_empty() {
            return Err(ConfigError::new(
                COMPONENT,
                "service",
                "must be called at least once: a DNS registry needs a query per service",
            ));
        }
        let mut services = HashMap::new();
        for (service, query) in self.services {
            let service = ServiceName::new(&service)?;
            if let Err(e) = Name::from_utf8(query.name()) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "service",
                    format!(
                        "the query of '{service}' is not a DNS name: {:?} ({e})",
                        query.name()
                    ),
                ));
            }
            if query.name().is_empty() {
                return Err(ConfigError::new(
                    COMPONENT,
                    "service",
                    format!("the query of '{service}' has an empty name"),
                ));
            }
            services.insert(service, query);
        }
        if self.min_ttl < Duration::from_millis(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "min_ttl",
                format!("must be at least 1ms, got {:?}", self.min_ttl),
            ));
        }
        if self.interval < self.min_ttl {
            return Err(ConfigError::new(
                COMPONENT,
                "interval",
                format!(
                    "must be at least min_ttl ({:?}), got {:?}",
                    self.min_ttl, self.interval
                ),
            ));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "timeout",
                format!("must be at least 1ms, got {:?}", self.timeout),
            ));
        }
        check_event_capacity(COMPONENT, self.event_capacity)?;
        let provider = TokioConnectionProvider::default();
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| {
                ConfigError::new(
                    COMPONENT,
                    "nameserver",
                    format!("none given and the system resolver configuration is unreadable: {e}"),
                )
            })?
        } else {
            let mut group = NameServerConfigGroup::new();
            for address in &self.nameservers {
                group.push(NameServerConfig::new(*address, Protocol::Udp));
                group.push(NameServerConfig::new(*address, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                provider,
            )
        };
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = self.timeout;
        // Cache answers no longer than a watch waits between resolutions,
        // so each resolution sees the records as they are.
        options.positive_max_ttl = Some(self.min_ttl);
        options.negative_max_ttl = Some(self.min_ttl);
        let resolver = builder.build();
        Ok(DnsRegistry {
            inner: Arc::new(Inner {
                resolver,
                services,
                interval: self.interval,
                min_ttl: self.min_ttl,
                backoff: self.backoff,
                counters: Counters::default(),
                events: EventHub::new(self.event_capacity),
            }),
        })
    }
}

impl DnsRegistry {
    /// Starts from the defaults; add a query per service.
    pub fn builder() -> DnsRegistryBuilder {
        DnsRegistryBuilder {
            services: Vec::new(),
            nameservers: Vec::new(),
            interval: Duration::from_secs(30),
            min_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            event_capacity: 256,
        }
    }

    /// Subscribes to changes and failures seen by watches.
    pub fn subscribe(&self) -> EventStream<DnsEvent> {
        self.inner.events.subscribe()
    }

    /// Counts of resolutions, failures and changes.
    pub fn metrics(&self) -> DnsMetrics {
        let c = &self.inner.counters;
        DnsMetrics {
            resolutions: c.resolutions.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            changes: c.changes.load(Ordering::Relaxed),
        }
    }
}

const UNKNOWN_SERVICE: DiscoveryError = DiscoveryError::Unsupported {
    backend: BACKEND,
    operation: "resolving a service that has no DNS query",
};

/// A resolution: the instances in id order and the shortest record TTL.
type Resolved = (Vec<Instance>, Option<Duration>);

/// Whether `error` means "no such records" (an empty set, not a failure).
fn is_empty_answer(error: &ResolveError) -> bool {
    error.is_no_records_found() || error.is_nx_domain()
}

fn min_ttl(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Inner {
    async fn resolve(&self, service: &str) -> Result<Resolved, DiscoveryError> {
        let query = self.services.get(service).ok_or(UNKNOWN_SERVICE)?;
        self.counters.resolutions.fetch_add(1, Ordering::Relaxed);
        super::metrics::queried(BACKEND, service);
        let result = match query {
            DnsQuery::Host { name, port } => self.resolve_host(service, name, *port).await,
            DnsQuery::Srv { name } => self.resolve_srv(service, name).await,
        };
        if result.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            super::metrics::failed(BACKEND, service, "query");
        }
        result
    }

    /// The addresses of `name`, and the shortest TTL among them.
    async fn addresses(
        &self,
        name: &str,
    ) -> Result<(Vec<std::net::IpAddr>, Option<Duration>), ResolveError> {
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => {
                let ttl = lookup
                    .as_lookup()
                    .records()
                    .iter()
                    .map(|r| Duration::from_secs(u64::from(r.ttl())))
                    .min();
                Ok((lookup.iter().collect(), ttl))
            }
            Err(error) if is_empty_answer(&error) => Ok((Vec::new(), None)),
            Err(error) => Err(error),
        }
    }

    async fn resolve_host(
        &self,
        service: &str,
        name: &str,
        port: u16,
    ) -> Result<Resolved, DiscoveryError> {
        let (ips, ttl) = self
            .addresses(name)
            .await
            .map_err(|e| DiscoveryError::unavailable(BACKEND, e))?;
        let mut instances = BTreeMap::new();
        for ip in ips {
            let address = SocketAddr::new(ip, port);
            match Instance::builder(service, address.to_string(), address).build() {
                Ok(instance) => {
                    instances.insert(address.to_string(), instance);
                }
                Err(error) => {
                    tracing::warn!(backend = BACKEND, service, %address, %error, "skipping an address")
                }
            }
        }
        Ok((instances.into_values().collect(), ttl))
    }

    async fn resolve_srv(&self, service: &str, name: &str) -> Result<Resolved, DiscoveryError> {
        let lookup = match self.resolver.srv_lookup(name).await {
            Ok(lookup) => lookup,
            Err(error) if is_empty_answer(&error) => return Ok((Vec::new(), None)),
            Err(error) => return Err(DiscoveryError::unavailable(BACKEND, error)),
        };
        let mut ttl = None;
        // (priority, weight, port, target) of every SRV record.
        let mut records = Vec::new();
        for record in lookup.as_lookup().records() {
            if let RData::SRV(srv) = record.data() {
                ttl = min_ttl(ttl, Duration::from_secs(u64::from(record.ttl())));
                records.push((
                    srv.priority(),
                    srv.weight(),
                    srv.port(),
                    srv.target().to_ascii(),
                ));
            }
        }
        records.sort();
        // Lowest priority value first; a higher one only when no target
        // of the lower one has an address.
        let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
        let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
        priorities.dedup();
        for priority in priorities {
            for (_, weight, port, target) in records.iter().filter(|r| r.0 == priority) {
                let (ips, target_ttl) = match self.addresses(target).await {
                    Ok(found) => found,
                    Err(error) => {
                        tracing::warn!(backend = BACKEND, service, target, %error, "an SRV target did not resolve");
                        continue;
                    }
                };
                if let Some(target_ttl) = target_ttl {
                    ttl = min_ttl(ttl, target_ttl);
                }
                let weight = u32::from(*weight).clamp(1, MAX_WEIGHT);
                let target_name = target.trim_end_matches('.');
                for ip in ips {
                    let address = SocketAddr::new(ip, *port);
                    let id = address.to_string();
                    if instances.contains_key(&id) {
                        continue;
                    }
                    let built = Instance::builder(service, &id, address)
                        .weight(weight)
                        .metadata(SRV_TARGET_METADATA_KEY, target_name)
                        .metadata(SRV_PRIORITY_METADATA_KEY, priority.to_string())
                        .build();
                    match built {
                        Ok(instance) => {
                            instances.insert(id, instance);
                        }
                        Err(error) => {
                            tracing::warn!(backend = BACKEND, service, %address, %error, "skipping an SRV address")
                        }
                    }
                }
            }
            if !instances.is_empty() {
                break;
            }
        }
        Ok((instances.into_values().collect(), ttl))
    }

    /// How long a watch waits before resolving again.
    fn refresh_after(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.interval)
            .clamp(self.min_ttl, self.interval)
    }
}

/// A watch's step: resolve the service, then wait for its records' TTL.
struct DnsWatch {
    inner: Arc<Inner>,
    service: String,
}

impl SnapshotSource for DnsWatch {
    async fn fetch(&mut self) -> Result<Fetched, DiscoveryError> {
        let (instances, ttl) = self.inner.resolve(&self.service).await?;
        Ok(Fetched {
            instances,
            refresh_after: Some(self.inner.refresh_after(ttl)),
        })
    }

    fn changed(&mut self, instances: &[Instance], first: bool) {
        if !first {
            self.inner.counters.changes.fetch_add(1, Ordering::Relaxed);
        }
        super::metrics::watch_changed(BACKEND, &self.service, instances.len(), first);
        tracing::info!(backend = BACKEND, service = %self.service, instances = instances.len(), "resolved instances changed");
        self.inner.events.publish_with(|| DnsEvent::Changed {
            service: self.service.clone(),
            instances: instances.len(),
        });
    }

    fn failed(&mut self, error: &DiscoveryError, retry_in: Duration) {
        tracing::warn!(backend = BACKEND, service = %self.service, %error, retry_in_ms = retry_in.as_millis() as u64, "DNS resolution failed");
        self.inner.events.publish_with(|| DnsEvent::Failed {
            service: self.service.clone(),
            error: error.to_string(),
        });
    }

    /// A service without a query never resolves.
    fn is_final(&self, error: &DiscoveryError) -> bool {
        matches!(error, DiscoveryError::Unsupported { .. })
    }
}

impl Registry for DnsRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        Box::pin(async move { Ok(self.inner.resolve(service).await?.0) })
    }

    fn watch(&self, service: &str) -> WatchStream {
        let source = DnsWatch {
            inner: Arc::clone(&self.inner),
            service: service.to_owned(),
        };
        polling_watch(source, &self.inner.backoff)
    }
}

impl fmt::Debug for DnsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsRegistry")
            .field("services", &self.inner.services)
            .field("interval", &self.inner.interval)
            .field("min_ttl", &self.inner.min_ttl)
            .field("metrics", &self.metrics())
            .finish()
    }
}
