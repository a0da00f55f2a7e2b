//! [`EtcdRegistry`]: a [`Registry`] over etcd v3 (feature `etcd`): leases
//! with keep-alive for registrations, a prefix watch for discovery.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue, PutOptions,
    WatchOptions,
};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use crate::backoff::{Backoff, Delays};
use crate::error::ConfigError;
use crate::events::{EventHub, EventStream, check_event_capacity};

use super::error::DiscoveryError;
use super::health::HealthCheck;
use super::instance::{Instance, InstanceAddress};
use super::registry::{BoxFuture, Registration, RegistrationGuard, Registry, WatchStream};

const BACKEND: &str = "etcd";
const COMPONENT: &str = "etcd registry";

/// A [`Registry`] backed by etcd v3 (feature `etcd`, crate `etcd-client`).
///
/// * An instance is the key `<prefix>/<service>/<id>` holding the instance
///   as JSON (`service`, `id`, `host`, `port`, `tags`, `metadata`,
///   `weight`), attached to a lease. A background task keeps the lease
///   alive (a keep-alive every third of its TTL), so the instance vanishes
///   when its process dies: its lease expires after at most one TTL.
///   [`HealthCheck::Ttl`] sets the lease's TTL (etcd leases count whole
///   seconds: the TTL is rounded up, and etcd may raise it to its minimum);
///   [`HealthCheck::None`] uses `default_lease_ttl`. etcd cannot run HTTP
///   checks: [`HealthCheck::Http`] is [`DiscoveryError::Unsupported`].
/// * A lost lease (revoked, or expired while this process could not reach
///   etcd) is noticed by the keep-alive task, which grants a new lease and
///   writes the instance again; connection failures are retried with the
///   configured [`Backoff`].
/// * The [`RegistrationGuard`] stops the keep-alive and revokes the lease,
///   which deletes the key. [`pass_ttl`](Registry::pass_ttl) sends one
///   keep-alive for the instance's lease.
/// * [`watch`](Registry::watch) reads the prefix (the current set and its
///   revision), then watches the prefix from the next revision. After a
///   disconnect it resumes from the last revision it saw; when that
///   revision was compacted it reads the prefix again. Every change to the
///   set is yielded as a full set; failures are yielded as `Err` items and
///   retried with the backoff. The watch runs inside the stream: dropping
///   the stream cancels it.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `endpoints` | `http://127.0.0.1:2379` | etcd endpoints. |
/// | `prefix` | `/palisade/services` | Key prefix: instances live at `<prefix>/<service>/<id>`. |
/// | `default_lease_ttl` | 10 s | Lease TTL of registrations without a TTL check. |
/// | `backoff` | [`Backoff::default()`] | Delays between retries of keep-alives, re-grants and watches. |
/// | `connect_options` | etcd-client's defaults | Timeouts, credentials, TLS of the etcd client. |
/// | `event_capacity` | 256 | Events buffered per subscriber. |
///
/// ```no_run
/// use std::time::Duration;
/// use palisade::discovery::{EtcdRegistry, HealthCheck, Instance, Registration, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let etcd = EtcdRegistry::builder()
///     .endpoint("http://127.0.0.1:2379")
///     .connect()
///     .await?;
/// let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080").build()?;
/// // Kept alive in the background; gone within 5 s if this process dies.
/// let _guard = etcd
///     .register(Registration::new(me, HealthCheck::ttl(Duration::from_secs(5))?))
///     .await?;
/// let healthy = etcd.healthy("payments").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    default_lease_ttl: Duration,
    backoff: Backoff,
    shared: Arc<Shared>,
    /// Registrations made through this registry, by (service, id).
    local: Mutex<HashMap<(String, String), LocalRegistration>>,
    next_generation: AtomicU64,
}

/// What keep-alive tasks share with the registry.
struct Shared {
    counters: Counters,
    events: EventHub<EtcdEvent>,
}

struct LocalRegistration {
    generation: u64,
    lease: Arc<AtomicI64>,
    task: AbortHandle,
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    deregistrations: AtomicU64,
    lease_regrants: AtomicU64,
    keep_alive_failures: AtomicU64,
    watch_relists: AtomicU64,
    watch_failures: AtomicU64,
}

/// Counts of what an [`EtcdRegistry`] did, from [`EtcdRegistry::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EtcdMetrics {
    /// Registrations kept alive by this registry now.
    pub registered: usize,
    /// Successful registrations.
    pub registrations: u64,
    /// Successful deregistrations (by id or guard).
    pub deregistrations: u64,
    /// Leases granted again after one was lost (revoked or expired).
    pub lease_regrants: u64,
    /// Keep-alives that failed (connection lost, no answer).
    pub keep_alive_failures: u64,
    /// Times a watch read the prefix again because its revision was
    /// compacted.
    pub watch_relists: u64,
    /// Watch reads or watch streams that failed (then retried).
    pub watch_failures: u64,
}

/// Something an [`EtcdRegistry`] did; from [`EtcdRegistry::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EtcdEvent {
    /// An instance was written under a new lease.
    Registered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The lease it is attached to.
        lease: i64,
    },
    /// An instance was deregistered (its lease revoked or key deleted).
    Deregistered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// A registration's lease was found gone (revoked or expired).
    LeaseLost {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The lost lease.
        lease: i64,
    },
    /// A lost lease was replaced and the instance written again.
    LeaseRegranted {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The new lease.
        lease: i64,
    },
    /// A watch's revision was compacted; it read the prefix again.
    WatchCompacted {
        /// The watched service.
        service: String,
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// A watch failed; it is retried after a backoff.
    WatchFailed {
        /// The watched service.
        service: String,
        /// Why.
        error: String,
    },
}

/// The JSON stored under an instance's key.
#[derive(Serialize, Deserialize)]
struct StoredInstance {
    service: String,
    id: String,
    host: String,
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl StoredInstance {
    fn of(instance: &Instance) -> Self {
        Self {
            service: instance.service().to_string(),
            id: instance.id().to_string(),
            host: instance.address().host().to_owned(),
            port: instance.address().port(),
            tags: instance.tags().to_vec(),
            metadata: instance.metadata().clone(),
            weight: instance.weight(),
        }
    }

    fn into_instance(self) -> Result<Instance, ConfigError> {
        let address = InstanceAddress::new(&self.host, self.port)?;
        let mut builder = Instance::builder(&self.service, &self.id, address)
            .tags(self.tags)
            .weight(self.weight);
        for (key, value) in self.metadata {
            builder = builder.metadata(key, value);
        }
        builder.build()
    }
}

/// Builds an [`EtcdRegistry`]; see it for the defaults.
#[must_use = "call .connect() to get a registry"]
pub struct EtcdRegistryBuilder {
    endpoints: Vec<String>,
    prefix: String,
    default_lease_ttl: Duration,
    backoff: Backoff,
    connect_options: Option<ConnectOptions>,
    event_capacity: usize,
}

impl fmt::Debug for EtcdRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistryBuilder")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("default_lease_ttl", &self.default_lease_ttl)
            .field("backoff", &self.backoff)
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistryBuilder {
    /// Adds an etcd endpoint, e.g. `http://10.0.0.1:2379`. Default (when
    /// none is added) `http://127.0.0.1:2379`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// The key prefix: starts with `/`, does not end with `/`. Default
    /// `/palisade/services`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease TTL of registrations with [`HealthCheck::None`], at least
    /// 1 s. Default 10 s.
    pub fn default_lease_ttl(mut self, ttl: Duration) -> Self {
        self.default_lease_ttl = ttl;
        self
    }

    /// The delays between retries of failed keep-alives, lease re-grants
    /// and watches. Default [`Backoff::default()`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Options of the etcd client (timeouts, credentials, TLS).
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connect_options = Some(options);
        self
    }

    /// Events buffered per subscriber, 1 to
    /// [`MAX_EVENT_CAPACITY`](crate::events::MAX_EVENT_CAPACITY). Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Checks every field and creates the etcd client. The client connects
    /// lazily (unless credentials are given): an unreachable etcd shows up
    /// as [`DiscoveryError::Unavailable`] from the first operation.
    pub async fn connect(self) -> Result<EtcdRegistry, DiscoveryError> {
        if !self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
            || self
                .prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::new(
                COMPONENT,
                "prefix",
                format!(
                    "must start with '/', not end with '/' and hold no whitespace, got {:?}",
                    self.prefix
                ),
            )
            .into());
        }
        if self.default_lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "default_lease_ttl",
                format!(
                    "must be at least 1s (etcd leases count seconds), got {:?}",
                    self.default_lease_ttl
                ),
            )
            .into());
        }
        check_event_capacity(COMPONENT, self.event_capacity)?;
        let endpoints = if self.endpoints.is_empty() {
            vec!["http://127.0.0.1:2379".to_owned()]
        } else {
            self.endpoints
        };
        let client = Client::connect(&endpoints, self.connect_options)
            .await
            .map_err(|e| DiscoveryError::unavailable(BACKEND, e))?;
        tracing::debug!(backend = BACKEND, ?endpoints, prefix = %self.prefix, "etcd registry created");
        Ok(EtcdRegistry {
            inner: Arc::new(Inner {
                client,
                prefix: self.prefix,
                default_lease_ttl: self.default_lease_ttl,
                backoff: self.backoff,
                shared: Arc::new(Shared {
                    counters: Counters::default(),
                    events: EventHub::new(self.event_capacity),
                }),
                local: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
            }),
        })
    }
}

impl EtcdRegistry {
    /// Starts from the defaults (one endpoint, `http://127.0.0.1:2379`).
    pub fn builder() -> EtcdRegistryBuilder {
        EtcdRegistryBuilder {
            endpoints: Vec::new(),
            prefix: "/palisade/services".to_owned(),
            default_lease_ttl: Duration::from_secs(10),
            backoff: Backoff::default(),
            connect_options: None,
            event_capacity: 256,
        }
    }

    /// Subscribes to registrations, lease losses and re-grants, and watch
    /// compactions and failures.
    pub fn subscribe(&self) -> EventStream<EtcdEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Counts of registrations, lease re-grants and watch re-reads.
    pub fn metrics(&self) -> EtcdMetrics {
        let c = &self.inner.shared.counters;
        EtcdMetrics {
            registered: self.inner.local.lock().len(),
            registrations: c.registrations.load(Ordering::Relaxed),
            deregistrations: c.deregistrations.load(Ordering::Relaxed),
            lease_regrants: c.lease_regrants.load(Ordering::Relaxed),
            keep_alive_failures: c.keep_alive_failures.load(Ordering::Relaxed),
            watch_relists: c.watch_relists.load(Ordering::Relaxed),
            watch_failures: c.watch_failures.load(Ordering::Relaxed),
        }
    }

    /// The lease an instance registered through this registry is attached
    /// to now (it changes when a lost lease is re-granted).
    pub fn lease_of(&self, service: &str, id: &str) -> Option<i64> {
        let local = self.inner.local.lock();
        local
            .get(&(service.to_owned(), id.to_owned()))
            .map(|r| r.lease.load(Ordering::Acquire))
    }
}

fn unavailable(error: etcd_client::Error) -> DiscoveryError {
    DiscoveryError::unavailable(BACKEND, error)
}

/// Whether `error` says the lease does not exist (revoked or expired).
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        // etcd: code NotFound, "etcdserver: requested lease not found".
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        _ => false,
    }
}

/// Whole seconds, rounded up, at least 1.
fn lease_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

impl Inner {
    fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{}/{}", self.prefix, service, id)
    }

    fn service_prefix(&self, service: &str) -> String {
        format!("{}/{}/", self.prefix, service)
    }

    /// Parses one key-value of `service`; `None` (with a warning) when it
    /// is not a valid instance.
    fn parse(&self, service: &str, kv: &KeyValue) -> Option<(String, Instance)> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let id = key.strip_prefix(&self.service_prefix(service))?.to_owned();
        let parsed = serde_json::from_slice::<StoredInstance>(kv.value())
            .map_err(|e| e.to_string())
            .and_then(|stored| stored.into_instance().map_err(|e| e.to_string()));
        match parsed {
            Ok(instance) if instance.id().as_str() == id => Some((key, instance)),
            Ok(instance) => {
                tracing::warn!(backend = BACKEND, %key, stored_id = %instance.id(), "skipping an instance stored under another id's key");
                None
            }
            Err(error) => {
                tracing::warn!(backend = BACKEND, %key, %error, "skipping an invalid instance in etcd");
                None
            }
        }
    }

    /// Reads every instance of `service` and the store's revision.
    async fn list(
        &self,
        service: &str,
    ) -> Result<(BTreeMap<String, Instance>, i64), DiscoveryError> {
        let mut client = self.client.clone();
        let response = client
            .get(
                self.service_prefix(service),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(unavailable)?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let instances = response
            .kvs()
            .iter()
            .filter_map(|kv| self.parse(service, kv))
            .collect();
        Ok((instances, revision))
    }

    fn forget_local(&self, service: &str, id: &str, generation: Option<u64>) -> Option<i64> {
        let mut local = self.local.lock();
        let key = (service.to_owned(), id.to_owned());
        let matches = match (local.get(&key), generation) {
            (Some(r), Some(g)) => r.generation == g,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            return None;
        }
        let registration = local.remove(&key)?;
        registration.task.abort();
        Some(registration.lease.load(Ordering::Acquire))
    }
}

/// Grants a lease of `ttl` seconds and writes `value` under `key` with it.
async fn grant_and_put(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    if let Err(error) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        // Do not leave the fresh lease behind.
        let _ = client.lease_revoke(lease).await;
        return Err(error);
    }
    Ok(lease)
}

/// How a run of keep-alives ended.
enum KeepAliveEnd {
    /// etcd says the lease is gone.
    LeaseLost,
    /// The keep-alive stream failed; the lease may still be alive.
    Failed(String),
}

/// Keeps `lease` alive every `period` until it is lost or the stream fails.
/// Calls `alive` after each confirmed keep-alive.
async fn keep_alive(
    client: &mut Client,
    lease: i64,
    period: Duration,
    mut alive: impl FnMut(),
) -> KeepAliveEnd {
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(error) if is_lease_not_found(&error) => return KeepAliveEnd::LeaseLost,
        Err(error) => return KeepAliveEnd::Failed(error.to_string()),
    };
    alive();
    loop {
        tokio::time::sleep(period).await;
        if let Err(error) = keeper.keep_alive().await {
            return KeepAliveEnd::Failed(error.to_string());
        }
        match tokio::time::timeout(period, stream.message()).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => alive(),
            Ok(Ok(Some(_))) => return KeepAliveEnd::LeaseLost,
            Ok(Ok(None)) => return KeepAliveEnd::Failed("keep-alive stream ended".to_owned()),
            Ok(Err(error)) if is_lease_not_found(&error) => return KeepAliveEnd::LeaseLost,
            Ok(Err(error)) => return KeepAliveEnd::Failed(error.to_string()),
            Err(_) => {
                return KeepAliveEnd::Failed(format!("no keep-alive answer within {period:?}"));
            }
        }
    }
}

/// The background task of one registration: keeps its lease alive and,
/// when the lease is lost, grants a new one and writes the instance again.
struct KeepRegistered {
    client: Client,
    shared: Arc<Shared>,
    backoff: Backoff,
    key: String,
    value: String,
    ttl: i64,
    lease: Arc<AtomicI64>,
    service: String,
    id: String,
}

impl KeepRegistered {
    async fn run(mut self) {
        // A third of the TTL, as etcd's own client does.
        let period = Duration::from_millis((self.ttl as u64).saturating_mul(1000) / 3)
            .max(Duration::from_millis(100));
        let mut delays: Option<Delays<SmallRng>> = None;
        loop {
            let lease = self.lease.load(Ordering::Acquire);
            let end = keep_alive(&mut self.client, lease, period, || delays = None).await;
            match end {
                KeepAliveEnd::Failed(error) => {
                    self.shared
                        .counters
                        .keep_alive_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let delay = next_delay(&mut delays, &self.backoff);
                    tracing::warn!(backend = BACKEND, service = %self.service, id = %self.id, lease, %error, retry_in_ms = delay.as_millis() as u64, "lease keep-alive failed");
                    tokio::time::sleep(delay).await;
                }
                KeepAliveEnd::LeaseLost => {
                    tracing::warn!(backend = BACKEND, service = %self.service, id = %self.id, lease, "lease lost (revoked or expired): registering again");
                    self.shared.events.publish_with(|| EtcdEvent::LeaseLost {
                        service: self.service.clone(),
                        id: self.id.clone(),
                        lease,
                    });
                    self.regrant().await;
                }
            }
        }
    }

    async fn regrant(&mut self) {
        let mut delays: Option<Delays<SmallRng>> = None;
        loop {
            match grant_and_put(&mut self.client, &self.key, &self.value, self.ttl).await {
                Ok(lease) => {
                    self.lease.store(lease, Ordering::Release);
                    tracing::info!(backend = BACKEND, service = %self.service, id = %self.id, lease, "lease granted again and instance registered again");
                    self.shared
                        .events
                        .publish_with(|| EtcdEvent::LeaseRegranted {
                            service: self.service.clone(),
                            id: self.id.clone(),
                            lease,
                        });
                    // Counted last: a reader that sees the count sees the
                    // new lease and the event.
                    self.shared
                        .counters
                        .lease_regrants
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    let delay = next_delay(&mut delays, &self.backoff);
                    tracing::warn!(backend = BACKEND, service = %self.service, id = %self.id, %error, retry_in_ms = delay.as_millis() as u64, "granting a new lease failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

fn next_delay(delays: &mut Option<Delays<SmallRng>>, backoff: &Backoff) -> Duration {
    delays
        .get_or_insert_with(|| backoff.delays())
        .next()
        .unwrap_or(backoff.max_interval())
}

impl EtcdRegistry {
    async fn register_instance(
        &self,
        registration: Registration,
    ) -> Result<RegistrationGuard, DiscoveryError> {
        let Registration { instance, check } = registration;
        let ttl = match check {
            HealthCheck::None => lease_seconds(self.inner.default_lease_ttl),
            HealthCheck::Ttl { ttl } => lease_seconds(ttl),
            HealthCheck::Http(_) => {
                return Err(DiscoveryError::Unsupported {
                    backend: BACKEND,
                    operation: "HTTP health checks (etcd runs no checks: use a TTL)",
                });
            }
        };
        let service = instance.service().to_string();
        let id = instance.id().to_string();
        let key = self.inner.key(&service, &id);
        let value = serde_json::to_string(&StoredInstance::of(&instance)).map_err(|e| {
            DiscoveryError::InvalidData {
                backend: BACKEND,
                detail: e.to_string(),
            }
        })?;
        let mut client = self.inner.client.clone();
        let lease = grant_and_put(&mut client, &key, &value, ttl)
            .await
            .map_err(unavailable)?;
        let lease_cell = Arc::new(AtomicI64::new(lease));
        let task = tokio::spawn(
            KeepRegistered {
                client,
                shared: Arc::clone(&self.inner.shared),
                backoff: self.inner.backoff.clone(),
                key,
                value,
                ttl,
                lease: Arc::clone(&lease_cell),
                service: service.clone(),
                id: id.clone(),
            }
            .run(),
        )
        .abort_handle();
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let replaced = self.inner.local.lock().insert(
            (service.clone(), id.clone()),
            LocalRegistration {
                generation,
                lease: Arc::clone(&lease_cell),
                task,
            },
        );
        if let Some(old) = replaced {
            // The key now belongs to the new lease: revoking the old one
            // only ends the old registration.
            old.task.abort();
            let old_lease = old.lease.load(Ordering::Acquire);
            let mut client = self.inner.client.clone();
            tokio::spawn(async move {
                let _ = client.lease_revoke(old_lease).await;
            });
        }
        self.inner
            .shared
            .counters
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(backend = BACKEND, %service, %id, address = %instance.address(), lease, ttl_secs = ttl, "instance registered in etcd");
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::Registered {
                service: service.clone(),
                id: id.clone(),
                lease,
            });
        let inner = Arc::clone(&self.inner);
        Ok(RegistrationGuard::new(BACKEND, &instance, move || {
            let lease = inner.forget_local(&service, &id, Some(generation));
            Box::pin(async move {
                let Some(lease) = lease else {
                    // Deregistered by id or replaced meanwhile.
                    return Err(DiscoveryError::not_registered(service, id));
                };
                let mut client = inner.client.clone();
                match client.lease_revoke(lease).await {
                    Ok(_) => {
                        inner
                            .shared
                            .counters
                            .deregistrations
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(backend = BACKEND, %service, %id, lease, "lease revoked: instance deregistered");
                        inner
                            .shared
                            .events
                            .publish_with(|| EtcdEvent::Deregistered {
                                service: service.clone(),
                                id: id.clone(),
                            });
                        Ok(())
                    }
                    Err(error) if is_lease_not_found(&error) => {
                        Err(DiscoveryError::not_registered(service, id))
                    }
                    Err(error) => Err(unavailable(error)),
                }
            })
        }))
    }

    async fn deregister_instance(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let lease = self.inner.forget_local(service, id, None);
        let mut client = self.inner.client.clone();
        let deleted = client
            .delete(self.inner.key(service, id), Some(DeleteOptions::new()))
            .await
            .map_err(unavailable)?
            .deleted();
        if let Some(lease) = lease {
            let _ = client.lease_revoke(lease).await;
        }
        if deleted == 0 {
            return Err(DiscoveryError::not_registered(service, id));
        }
        self.inner
            .shared
            .counters
            .deregistrations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            backend = BACKEND,
            service,
            id,
            "instance deregistered from etcd"
        );
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::Deregistered {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        Ok(())
    }

    async fn pass_ttl_now(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let mut client = self.inner.client.clone();
        let response = client
            .get(self.inner.key(service, id), None)
            .await
            .map_err(unavailable)?;
        let Some(kv) = response.kvs().first() else {
            return Err(DiscoveryError::not_registered(service, id));
        };
        let lease = kv.lease();
        if lease == 0 {
            return Err(DiscoveryError::Unsupported {
                backend: BACKEND,
                operation: "pass_ttl for an instance without a lease",
            });
        }
        match client.lease_keep_alive(lease).await {
            Ok(_) => {
                tracing::trace!(backend = BACKEND, service, id, lease, "lease renewed");
                Ok(())
            }
            Err(error) if is_lease_not_found(&error) => {
                Err(DiscoveryError::not_registered(service, id))
            }
            Err(error) => Err(unavailable(error)),
        }
    }
}

/// Where a watch is.
enum Phase {
    /// Read the prefix (first, or after a compaction).
    List,
    /// Start watching from `revision + 1`.
    Watch,
    /// Receiving events.
    Watching(Box<etcd_client::WatchStream>),
}

struct WatchState {
    inner: Arc<Inner>,
    service: String,
    phase: Phase,
    /// The last revision seen: the list's, then each event's.
    revision: i64,
    instances: BTreeMap<String, Instance>,
    delays: Option<Delays<SmallRng>>,
    retry_delay: Option<Duration>,
}

impl WatchState {
    fn snapshot(&self) -> Vec<Instance> {
        let mut instances: Vec<Instance> = self.instances.values().cloned().collect();
        instances.sort_by(|a, b| a.id().cmp(b.id()));
        instances
    }

    fn fail(
        mut self,
        error: DiscoveryError,
    ) -> Option<(Result<Vec<Instance>, DiscoveryError>, Self)> {
        self.inner
            .shared
            .counters
            .watch_failures
            .fetch_add(1, Ordering::Relaxed);
        let delay = next_delay(&mut self.delays, &self.inner.backoff);
        self.retry_delay = Some(delay);
        tracing::warn!(backend = BACKEND, service = %self.service, %error, revision = self.revision, retry_in_ms = delay.as_millis() as u64, "etcd watch failed");
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::WatchFailed {
                service: self.service.clone(),
                error: error.to_string(),
            });
        Some((Err(error), self))
    }

    fn compacted(&mut self, compact_revision: i64) {
        self.inner
            .shared
            .counters
            .watch_relists
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(backend = BACKEND, service = %self.service, revision = self.revision, compact_revision, "watch revision compacted: reading the prefix again");
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::WatchCompacted {
                service: self.service.clone(),
                compact_revision,
            });
        self.phase = Phase::List;
    }

    async fn next(mut self) -> Option<(Result<Vec<Instance>, DiscoveryError>, Self)> {
        loop {
            if let Some(delay) = self.retry_delay.take() {
                tokio::time::sleep(delay).await;
            }
            match std::mem::replace(&mut self.phase, Phase::Watch) {
                Phase::List => match self.inner.list(&self.service).await {
                    Ok((instances, revision)) => {
                        self.instances = instances;
                        self.revision = revision;
                        self.phase = Phase::Watch;
                        tracing::debug!(backend = BACKEND, service = %self.service, revision, instances = self.instances.len(), "prefix read");
                        let snapshot = self.snapshot();
                        return Some((Ok(snapshot), self));
                    }
                    Err(error) => {
                        self.phase = Phase::List;
                        return self.fail(error);
                    }
                },
                Phase::Watch => {
                    let mut client = self.inner.client.clone();
                    let options = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(self.revision + 1);
                    match client
                        .watch(self.inner.service_prefix(&self.service), Some(options))
                        .await
                    {
                        Ok(stream) => self.phase = Phase::Watching(Box::new(stream)),
                        Err(error) => return self.fail(unavailable(error)),
                    }
                }
                Phase::Watching(mut stream) => match stream.message().await {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            if response.compact_revision() > 0 {
                                self.compacted(response.compact_revision());
                                continue;
                            }
                            let reason = response.cancel_reason().to_owned();
                            return self.fail(DiscoveryError::unavailable(
                                BACKEND,
                                format!("etcd cancelled the watch: {reason}"),
                            ));
                        }
                        if response.compact_revision() > 0 {
                            self.compacted(response.compact_revision());
                            continue;
                        }
                        self.delays = None;
                        let mut changed = false;
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            self.revision = self.revision.max(kv.mod_revision());
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            match event.event_type() {
                                EventType::Put => match self.inner.parse(&self.service, kv) {
                                    Some((key, instance)) => {
                                        if self.instances.get(&key) != Some(&instance) {
                                            self.instances.insert(key, instance);
                                            changed = true;
                                        }
                                    }
                                    None => changed |= self.instances.remove(&key).is_some(),
                                },
                                EventType::Delete => {
                                    changed |= self.instances.remove(&key).is_some();
                                }
                            }
                        }
                        self.phase = Phase::Watching(stream);
                        if changed {
                            let snapshot = self.snapshot();
                            return Some((Ok(snapshot), self));
                        }
                    }
                    Ok(None) => {
                        // Resume from the last revision seen.
                        return self.fail(DiscoveryError::unavailable(
                            BACKEND,
                            "the watch stream ended",
                        ));
                    }
                    Err(error) => return self.fail(unavailable(error)),
                },
            }
        }
    }
}

impl Registry for EtcdRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
        Box::pin(self.register_instance(registration))
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.deregister_instance(service, id))
    }

    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.pass_ttl_now(service, id))
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        Box::pin(async move {
            let (instances, _) = self.inner.list(service).await?;
            let mut instances: Vec<Instance> = instances.into_values().collect();
            instances.sort_by(|a, b| a.id().cmp(b.id()));
            Ok(instances)
        })
    }

    fn watch(&self, service: &str) -> WatchStream {
        let state = WatchState {
            inner: Arc::clone(&self.inner),
            service: service.to_owned(),
            phase: Phase::List,
            revision: 0,
            instances: BTreeMap::new(),
            delays: None,
            retry_delay: None,
        };
        Box::pin(futures_util::stream::unfold(state, WatchState::next))
    }
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("prefix", &self.inner.prefix)
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop keeping registrations alive (their
        // leases expire; guards still revoke them).
        for registration in self.local.get_mut().values() {
            registration.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_seconds(Duration::from_secs(5)), 5);
        assert_eq!(lease_seconds(Duration::from_millis(5001)), 6);
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
    }

    #[test]
    fn stored_instances_round_trip() {
        let instance = Instance::builder("api", "api-1", "[::1]:80")
            .tag("v2")
            .metadata("zone", "a")
            .weight(4)
            .build()
            .expect("valid");
        let json = serde_json::to_string(&StoredInstance::of(&instance)).expect("json");
        let back: StoredInstance = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.into_instance().expect("valid"), instance);
    }
}
