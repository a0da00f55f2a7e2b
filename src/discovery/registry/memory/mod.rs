//! [`InMemoryRegistry`]: the embedded registry, which runs TTL and HTTP
//! health checks itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::clock::saturating_add;
use crate::error::ConfigError;
use crate::events::{EventHub, EventStream, check_event_capacity};

#[cfg(feature = "http")]
use self::http_check::HttpChecker;
use super::watch_channel::snapshot_stream;
use super::{
    BoxFuture, InstanceSet, InstanceSetStream, Registrar, Registration, RegistrationGuard,
    Registry, WatchStream,
};
use crate::discovery::error::DiscoveryError;
use crate::discovery::health::HealthCheck;
use crate::discovery::instance::{Instance, InstanceId, ServiceName};

#[cfg(feature = "http")]
mod http_check;

const BACKEND: &str = "in-memory";

/// A registry held in this process: the embedded default, for tests, single
/// binaries and examples that run several services in one process.
///
/// It runs the health checks itself, as Consul's agent does:
///
/// * [`HealthCheck::Ttl`]: the instance is healthy at registration and must
///   call [`pass_ttl`](Registrar::pass_ttl) within each `ttl`; when a TTL
///   lapses the instance is removed (its process is presumed dead).
/// * [`HealthCheck::Http`] (feature `http`, on by default): a background
///   task sends `GET http://<address><path>` every `interval`, at once
///   after registering; the instance is healthy while the last answer was a
///   2xx within `timeout`, and is removed once it has been critical for
///   `deregister_critical_after` (checked after each check).
/// * `HealthCheck::Grpc` (feature `tonic`): the same, calling
///   `grpc.health.v1.Health/Check` over HTTP/2; `SERVING` passes.
///
/// Clones share one registry. Checks stop when their instance is
/// deregistered or replaced and when the last clone is dropped; watches
/// then end. Registering an instance with a TTL or HTTP check needs a
/// tokio runtime (checks run on it); everything else works anywhere.
///
/// ```
/// use std::time::Duration;
/// use palisade::discovery::{
///     HealthCheck, InMemoryRegistry, Instance, Registrar, Registration, Registry,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let registry = InMemoryRegistry::new();
/// let instance = Instance::builder("payments", "payments-1", "127.0.0.1:8080").build()?;
/// let guard = registry
///     .register(Registration::new(instance, HealthCheck::ttl(Duration::from_secs(10))?))
///     .await?;
/// assert_eq!(registry.healthy("payments").await?.len(), 1);
///
/// registry.pass_ttl("payments", "payments-1").await?; // renew within 10 s
/// drop(guard); // deregisters
/// assert!(registry.healthy("payments").await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    events: EventHub<RegistryEvent>,
    #[cfg(feature = "http")]
    checker: HttpChecker,
}

#[derive(Default)]
struct State {
    services: HashMap<ServiceName, ServiceState>,
    next_generation: u64,
    counters: Counters,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    registrations: u64,
    deregistrations: u64,
    ttl_expirations: u64,
    critical_removals: u64,
}

struct ServiceState {
    instances: BTreeMap<InstanceId, Entry>,
    /// The passing instances, kept in step with `instances` one change at
    /// a time (O(log n)); watchers clone it in O(1).
    healthy: watch::Sender<InstanceSet>,
    exported: super::metrics::ServiceExported,
}

struct Entry {
    instance: Instance,
    check: HealthCheck,
    generation: u64,
    health: Health,
    ttl_deadline: Option<Instant>,
    task: Option<AbortHandle>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Passing,
    Critical { since: Instant },
}

/// The health of one registered instance, from
/// [`InMemoryRegistry::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Healthy: listed by `healthy` and `watch`.
    Passing,
    /// Registered but failing (or not yet passing) its HTTP check.
    Critical,
}

/// One thing that happened in an [`InMemoryRegistry`]; delivered by
/// [`InMemoryRegistry::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEvent {
    /// The instance's service.
    pub service: ServiceName,
    /// The instance's id.
    pub id: InstanceId,
    /// What happened.
    pub kind: RegistryEventKind,
}

/// The kinds of [`RegistryEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEventKind {
    /// The instance was registered (or re-registered, replacing the old
    /// registration).
    Registered,
    /// The instance was deregistered (by id or by its guard).
    Deregistered,
    /// Its HTTP check passed after being critical.
    Passing,
    /// Its HTTP check failed after passing.
    Critical {
        /// Why the check failed.
        reason: String,
    },
    /// Its TTL lapsed: it was removed.
    TtlExpired,
    /// It stayed critical for `deregister_critical_after`: it was removed.
    RemovedCritical,
}

/// A snapshot of an [`InMemoryRegistry`]'s counts, from
/// [`InMemoryRegistry::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RegistryMetrics {
    /// Services with at least one registered instance.
    pub services: usize,
    /// Registered instances.
    pub instances: usize,
    /// Registered instances that are healthy.
    pub passing: usize,
    /// Registered instances that are critical.
    pub critical: usize,
    /// Registrations since creation (re-registrations included).
    pub registrations: u64,
    /// Deregistrations since creation (by id or guard).
    pub deregistrations: u64,
    /// Instances removed because their TTL lapsed.
    pub ttl_expirations: u64,
    /// Instances removed after `deregister_critical_after`.
    pub critical_removals: u64,
}

impl Default for InMemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRegistry {
    /// An empty registry buffering 256 events per subscriber.
    pub fn new() -> Self {
        Self::build(256)
    }

    /// An empty registry buffering `event_capacity` events per subscriber
    /// (1 to [`MAX_EVENT_CAPACITY`](crate::events::MAX_EVENT_CAPACITY)).
    pub fn with_event_capacity(event_capacity: usize) -> Result<Self, ConfigError> {
        check_event_capacity("in-memory registry", event_capacity)?;
        Ok(Self::build(event_capacity))
    }

    fn build(event_capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                events: EventHub::new(event_capacity),
                #[cfg(feature = "http")]
                checker: HttpChecker::new(),
            }),
        }
    }

    /// Subscribes to registrations, removals and health changes.
    pub fn subscribe(&self) -> EventStream<RegistryEvent> {
        self.inner.events.subscribe()
    }

    /// Counts of services, instances and removals.
    pub fn metrics(&self) -> RegistryMetrics {
        let state = self.inner.state.lock();
        let mut metrics = RegistryMetrics {
            registrations: state.counters.registrations,
            deregistrations: state.counters.deregistrations,
            ttl_expirations: state.counters.ttl_expirations,
            critical_removals: state.counters.critical_removals,
            ..RegistryMetrics::default()
        };
        // O(services), not O(instances): the healthy set holds exactly the
        // passing instances.
        for service in state.services.values() {
            let instances = service.instances.len();
            let passing = service.healthy.borrow().len();
            metrics.services += usize::from(instances != 0);
            metrics.instances += instances;
            metrics.passing += passing;
            metrics.critical += instances - passing;
        }
        metrics
    }

    /// The health of one registered instance, or `None` when it is not
    /// registered.
    pub fn status(&self, service: &str, id: &str) -> Option<InstanceStatus> {
        let state = self.inner.state.lock();
        let entry = state.services.get(service)?.instances.get(id)?;
        Some(match entry.health {
            Health::Passing => InstanceStatus::Passing,
            Health::Critical { .. } => InstanceStatus::Critical,
        })
    }

    fn register_now(
        &self,
        registration: Registration,
    ) -> Result<RegistrationGuard, DiscoveryError> {
        let Registration { instance, check } = registration;
        let now = Instant::now();
        let runtime = match check {
            HealthCheck::None => None,
            _ => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                DiscoveryError::unavailable(
                    BACKEND,
                    "registering with a TTL or HTTP check needs a tokio runtime to run the check",
                )
            })?),
        };
        #[cfg(not(feature = "http"))]
        if matches!(check, HealthCheck::Http(_)) {
            return Err(DiscoveryError::Unsupported {
                backend: BACKEND,
                operation: "HTTP health checks without the `http` feature",
            });
        }
        let service = instance.service().clone();
        let id = instance.id().clone();
        let mut state = self.inner.state.lock();
        state.next_generation += 1;
        let generation = state.next_generation;
        state.counters.registrations += 1;
        let (health, ttl_deadline) = match &check {
            HealthCheck::None => (Health::Passing, None),
            HealthCheck::Ttl { ttl } => (Health::Passing, Some(saturating_add(now, *ttl))),
            HealthCheck::Http(_) => (Health::Critical { since: now }, None),
            #[cfg(feature = "tonic")]
            HealthCheck::Grpc(_) => (Health::Critical { since: now }, None),
        };
        let weak = Arc::downgrade(&self.inner);
        let task = runtime.map(|runtime| {
            let (service, id) = (service.clone(), id.clone());
            match &check {
                #[cfg(feature = "http")]
                HealthCheck::Http(_) => {
                    let task = run_http_check(
                        weak.clone(),
                        self.inner.checker.clone(),
                        instance.clone(),
                        check.clone(),
                        generation,
                    );
                    runtime.spawn(task).abort_handle()
                }
                #[cfg(feature = "tonic")]
                HealthCheck::Grpc(_) => {
                    let task = run_http_check(
                        weak.clone(),
                        self.inner.checker.clone(),
                        instance.clone(),
                        check.clone(),
                        generation,
                    );
                    runtime.spawn(task).abort_handle()
                }
                _ => runtime
                    .spawn(expire_ttl(weak.clone(), service, id, generation))
                    .abort_handle(),
            }
        });
        let service_state = state
            .services
            .entry(service.clone())
            .or_insert_with(|| ServiceState::new(&service));
        service_state.exported.on_registered();
        let replaced = service_state
            .instances
            .insert(
                id.clone(),
                Entry {
                    instance: instance.clone(),
                    check,
                    generation,
                    health,
                    ttl_deadline,
                    task,
                },
            )
            .is_some();
        service_state.publish(id.as_str());
        drop(state);
        tracing::info!(
            backend = BACKEND,
            %service,
            %id,
            address = %instance.address(),
            replaced,
            "instance registered"
        );
        self.inner.events.publish_with(|| RegistryEvent {
            service: service.clone(),
            id: id.clone(),
            kind: RegistryEventKind::Registered,
        });
        Ok(RegistrationGuard::new(BACKEND, &instance, move || {
            let result = match weak.upgrade() {
                Some(inner) => {
                    if inner.remove(
                        service.as_str(),
                        id.as_str(),
                        Some(generation),
                        RegistryEventKind::Deregistered,
                    ) {
                        Ok(())
                    } else {
                        Err(DiscoveryError::not_registered(
                            service.as_str(),
                            id.as_str(),
                        ))
                    }
                }
                None => Err(DiscoveryError::Closed { backend: BACKEND }),
            };
            Box::pin(std::future::ready(result))
        }))
    }

    fn pass_ttl_now(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let mut state = self.inner.state.lock();
        let not_registered = || DiscoveryError::not_registered(service, id);
        let service_state = state.services.get_mut(service).ok_or_else(not_registered)?;
        let entry = service_state
            .instances
            .get_mut(id)
            .ok_or_else(not_registered)?;
        match entry.check {
            HealthCheck::Ttl { ttl } => {
                entry.ttl_deadline = Some(saturating_add(Instant::now(), ttl));
                service_state.exported.on_ttl_passed();
                tracing::trace!(backend = BACKEND, service, id, "TTL renewed");
                Ok(())
            }
            _ => Err(DiscoveryError::Unsupported {
                backend: BACKEND,
                operation: "pass_ttl for an instance without a TTL check",
            }),
        }
    }

    fn healthy_now(&self, service: &str) -> Vec<Instance> {
        let healthy = {
            let state = self.inner.state.lock();
            state
                .services
                .get(service)
                .map(|s| s.healthy.borrow().clone())
        };
        // Copied outside the lock: cloning the set under it is O(1).
        healthy.map(|h| h.to_vec()).unwrap_or_default()
    }

    /// A receiver of `service`'s healthy set; `None` for a name no
    /// instance can be registered under.
    fn subscribe_healthy(&self, service: &str) -> Option<watch::Receiver<InstanceSet>> {
        let name = ServiceName::new(service).ok()?;
        Some(
            self.inner
                .state
                .lock()
                .services
                .entry(name)
                .or_insert_with_key(ServiceState::new)
                .healthy
                .subscribe(),
        )
    }
}

impl Registry for InMemoryRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        Box::pin(std::future::ready(Ok(self.healthy_now(service))))
    }

    fn watch(&self, service: &str) -> WatchStream {
        match self.subscribe_healthy(service) {
            Some(receiver) => snapshot_stream(receiver, |healthy: InstanceSet| healthy.to_vec()),
            // No instance can ever be registered under an invalid name:
            // an empty set, then nothing.
            None => Box::pin(
                futures_util::stream::once(std::future::ready(Ok(Vec::new())))
                    .chain(futures_util::stream::pending()),
            ),
        }
    }

    fn watch_sets(&self, service: &str) -> InstanceSetStream {
        match self.subscribe_healthy(service) {
            Some(receiver) => snapshot_stream(receiver, |healthy: InstanceSet| healthy),
            None => Box::pin(
                futures_util::stream::once(std::future::ready(Ok(InstanceSet::new())))
                    .chain(futures_util::stream::pending()),
            ),
        }
    }
}

impl Registrar for InMemoryRegistry {
    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
        Box::pin(async move { self.register_now(registration) })
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        let result = if self
            .inner
            .remove(service, id, None, RegistryEventKind::Deregistered)
        {
            Ok(())
        } else {
            Err(DiscoveryError::not_registered(service, id))
        };
        Box::pin(std::future::ready(result))
    }

    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(std::future::ready(self.pass_ttl_now(service, id)))
    }
}

impl fmt::Debug for InMemoryRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryRegistry")
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl ServiceState {
    fn new(service: &ServiceName) -> Self {
        let state = Self {
            instances: BTreeMap::new(),
            healthy: watch::Sender::new(InstanceSet::new()),
            exported: super::metrics::ServiceExported::new(BACKEND, service.as_str()),
        };
        state.exported.on_instances(|| (0, 0));
        state
    }

    /// Brings instance `id` of the healthy set in line with its entry
    /// (there and passing, or not), in O(log n); wakes the watchers only
    /// when the set changed.
    fn publish(&self, id: &str) {
        let passing = self
            .instances
            .get(id)
            .filter(|e| e.health == Health::Passing)
            .map(|e| &e.instance);
        self.healthy.send_if_modified(|healthy| match passing {
            Some(instance) if healthy.get(id) == Some(instance) => false,
            Some(instance) => {
                healthy.insert(instance.clone());
                true
            }
            None => healthy.remove(id).is_some(),
        });
        self.exported
            .on_instances(|| (self.instances.len(), self.healthy.borrow().len()));
    }
}

impl Inner {
    /// Removes an instance (only the registration `generation`, when
    /// given); returns whether it was there.
    fn remove(
        &self,
        service: &str,
        id: &str,
        generation: Option<u64>,
        kind: RegistryEventKind,
    ) -> bool {
        let mut state = self.state.lock();
        let removed = self.remove_locked(&mut state, service, id, generation, kind);
        drop(state);
        // The entry (and the abort of its check task) is dropped here,
        // outside the lock.
        removed.is_some()
    }

    fn remove_locked(
        &self,
        state: &mut State,
        service: &str,
        id: &str,
        generation: Option<u64>,
        kind: RegistryEventKind,
    ) -> Option<Entry> {
        let service_state = state.services.get_mut(service)?;
        let entry = service_state.instances.get(id)?;
        if generation.is_some_and(|g| g != entry.generation) {
            return None;
        }
        let entry = service_state.instances.remove(id)?;
        service_state.publish(id);
        service_state.exported.on_removed(&kind);
        match kind {
            RegistryEventKind::Deregistered => state.counters.deregistrations += 1,
            RegistryEventKind::TtlExpired => state.counters.ttl_expirations += 1,
            RegistryEventKind::RemovedCritical => state.counters.critical_removals += 1,
            _ => {}
        }
        match kind {
            RegistryEventKind::Deregistered => {
                tracing::info!(backend = BACKEND, service, id, "instance deregistered")
            }
            RegistryEventKind::TtlExpired => {
                tracing::warn!(
                    backend = BACKEND,
                    service,
                    id,
                    "instance TTL lapsed: removed"
                )
            }
            _ => tracing::warn!(
                backend = BACKEND,
                service,
                id,
                "instance critical for longer than deregister_critical_after: removed"
            ),
        }
        self.events.publish_with(|| RegistryEvent {
            service: entry.instance.service().clone(),
            id: entry.instance.id().clone(),
            kind,
        });
        Some(entry)
    }
}

/// Removes a TTL instance once its deadline passes without renewal.
async fn expire_ttl(weak: Weak<Inner>, service: ServiceName, id: InstanceId, generation: u64) {
    loop {
        let deadline = {
            let Some(inner) = weak.upgrade() else { return };
            let mut state = inner.state.lock();
            let Some(entry) = state
                .services
                .get(service.as_str())
                .and_then(|s| s.instances.get(id.as_str()))
                .filter(|e| e.generation == generation)
            else {
                return;
            };
            let Some(deadline) = entry.ttl_deadline else {
                return;
            };
            if deadline <= Instant::now() {
                let removed = inner.remove_locked(
                    &mut state,
                    service.as_str(),
                    id.as_str(),
                    Some(generation),
                    RegistryEventKind::TtlExpired,
                );
                drop(state);
                // Dropping the entry aborts this task; it ends here anyway.
                drop(removed);
                return;
            }
            deadline
        };
        tokio::time::sleep_until(deadline).await;
    }
}

/// Runs an instance's HTTP (or gRPC) check every interval until it is
/// removed.
#[cfg(feature = "http")]
async fn run_http_check(
    weak: Weak<Inner>,
    checker: HttpChecker,
    instance: Instance,
    check: HealthCheck,
    generation: u64,
) {
    let (service, id) = (instance.service(), instance.id());
    let Some(interval) = check.poll_interval() else {
        return;
    };
    // Named in the traces, so that a gRPC check is not reported as HTTP.
    let kind = match &check {
        #[cfg(feature = "tonic")]
        HealthCheck::Grpc(_) => "grpc",
        _ => "http",
    };
    let mut next = Instant::now();
    loop {
        let result = match &check {
            HealthCheck::Http(http) => checker.check(instance.address(), http).await,
            #[cfg(feature = "tonic")]
            HealthCheck::Grpc(grpc) => grpc.probe(instance.address()).await,
            HealthCheck::None | HealthCheck::Ttl { .. } => return,
        };
        {
            let Some(inner) = weak.upgrade() else { return };
            let mut state = inner.state.lock();
            let now = Instant::now();
            let Some(service_state) = state.services.get_mut(service.as_str()) else {
                return;
            };
            let Some(entry) = service_state
                .instances
                .get_mut(id.as_str())
                .filter(|e| e.generation == generation)
            else {
                return;
            };
            service_state.exported.on_check(result.is_ok());
            match (result, entry.health) {
                (Ok(()), Health::Passing) => {}
                (Ok(()), Health::Critical { .. }) => {
                    entry.health = Health::Passing;
                    service_state.publish(id.as_str());
                    tracing::info!(backend = BACKEND, %service, %id, check = kind, "health check passing");
                    inner.events.publish_with(|| RegistryEvent {
                        service: service.clone(),
                        id: id.clone(),
                        kind: RegistryEventKind::Passing,
                    });
                }
                (Err(reason), Health::Passing) => {
                    entry.health = Health::Critical { since: now };
                    service_state.publish(id.as_str());
                    tracing::warn!(backend = BACKEND, %service, %id, check = kind, %reason, "health check critical");
                    inner.events.publish_with(|| RegistryEvent {
                        service: service.clone(),
                        id: id.clone(),
                        kind: RegistryEventKind::Critical { reason },
                    });
                }
                (Err(reason), Health::Critical { since }) => {
                    tracing::debug!(backend = BACKEND, %service, %id, check = kind, %reason, "health check still critical");
                    if check
                        .deregister_critical_after()
                        .is_some_and(|after| now.duration_since(since) >= after)
                    {
                        let removed = inner.remove_locked(
                            &mut state,
                            service.as_str(),
                            id.as_str(),
                            Some(generation),
                            RegistryEventKind::RemovedCritical,
                        );
                        drop(state);
                        drop(removed);
                        return;
                    }
                }
            }
        }
        next = saturating_add(next, interval);
        let now = Instant::now();
        if next < now {
            // A check (or the machine) was slow: do not run a burst of
            // catch-up checks.
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::discovery::{Registrar, Registration, Registry};

    /// `HealthCheck::Ttl` is a public variant, so a TTL the builder would
    /// refuse can still reach the registry: it must not overflow the clock.
    #[tokio::test(start_paused = true)]
    async fn a_ttl_too_long_for_the_clock_never_lapses_instead_of_panicking() {
        let registry = InMemoryRegistry::new();
        let instance = Instance::builder("users", "users-1", "127.0.0.1:1")
            .build()
            .unwrap();
        let _guard = registry
            .register(Registration::new(
                instance,
                HealthCheck::Ttl { ttl: Duration::MAX },
            ))
            .await
            .unwrap();
        registry.pass_ttl("users", "users-1").await.unwrap();
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert_eq!(registry.healthy("users").await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn watch_sets_yields_the_snapshots_watch_yields() {
        let registry = InMemoryRegistry::new();
        let mut vectors = registry.watch("users");
        let mut sets = registry.watch_sets("users");
        let user = |id: &str, port: u16| {
            Instance::builder("users", id, format!("127.0.0.1:{port}"))
                .build()
                .unwrap()
        };
        let mut next = async || {
            let vector = vectors.next().await.unwrap().unwrap();
            let set = sets.next().await.unwrap().unwrap();
            assert_eq!(set.to_vec(), vector);
            vector
        };
        assert!(next().await.is_empty());
        let a = registry
            .register(Registration::new(user("a", 1), HealthCheck::None))
            .await
            .unwrap();
        assert_eq!(next().await, vec![user("a", 1)]);
        let _b = registry
            .register(Registration::new(user("b", 1), HealthCheck::None))
            .await
            .unwrap();
        assert_eq!(next().await, vec![user("a", 1), user("b", 1)]);
        let _a = registry
            .register(Registration::new(user("a", 2), HealthCheck::None))
            .await
            .unwrap();
        assert_eq!(next().await, vec![user("a", 2), user("b", 1)]);
        a.keep();
        registry.deregister("users", "b").await.unwrap();
        assert_eq!(next().await, vec![user("a", 2)]);
    }
}
