//! The state every clone of a balancer shares: the instances, the set a
//! pick reads, the watch task that keeps them current, and ejections.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use futures_util::future::Either;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower_service::Service;

use crate::backoff::{Backoff, Jitter};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
use crate::clock::AnchoredClock;
use crate::discovery::diff::InstanceChange;
use crate::discovery::instance::{Instance, InstanceId, ServiceName};
use crate::discovery::registry::{InstanceSet, Registry};
use crate::error::BoxError;
use crate::events::EventHub;
use crate::sync::CachePadded;

use super::config::{BalanceConfig, Picker};
use super::endpoint::{Endpoint, EndpointSet, EndpointStats, OutlierSink, OutlierState};
use super::metrics::{BalanceEvent, BalanceEventKind, BalanceMetrics, EndpointMetrics};

pub(crate) struct Shared<S> {
    pub(crate) service: ServiceName,
    pub(crate) config: BalanceConfig,
    /// What picks read: swapped when membership or ejections change, for
    /// a set derived from the last one in O(log n) per change.
    pub(crate) set: ArcSwap<EndpointSet<S>>,
    /// The round-robin position.
    pub(crate) next: CachePadded<AtomicUsize>,
    /// Generators handed out so far, with the `rng_seed` option: the
    /// `n`th is seeded with `rng_seed + n`.
    rngs: AtomicU64,
    /// Every healthy instance, ejected or not; written by the watch task
    /// and by ejections, under this lock. Persistent, so that a metrics
    /// snapshot copies it in O(1) and walks it outside the lock. The
    /// instances in it and not in `set` are the ejected ones.
    membership: Mutex<imbl::OrdMap<InstanceId, Endpoint<S>>>,
    pub(crate) events: EventHub<BalanceEvent>,
    /// Set once the registry's first answer arrived.
    initialized: AtomicBool,
    startup_wakers: Mutex<Vec<Waker>>,
    task: Mutex<Option<AbortHandle>>,
    /// The timers that end ejections, aborted with the balancer.
    ejection_timers: Mutex<Vec<AbortHandle>>,
    /// Times calls for peak-EWMA: reads are nanoseconds since the
    /// balancer was made.
    pub(crate) clock: AnchoredClock,
    this: Weak<Shared<S>>,
    exported: super::metrics::Exported,
}

enum Membership<S> {
    Upsert(Instance, S, bool),
    Remove(Instance),
}

impl<S> Shared<S>
where
    S: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(service: ServiceName, config: BalanceConfig) -> Arc<Self> {
        // Every picker but round robin picks through the slot index.
        let indexed = !matches!(config.picker, Picker::RoundRobin);
        let clock = AnchoredClock::new(config.call_clock);
        Arc::new_cyclic(|this| Self {
            events: EventHub::new(config.event_capacity),
            exported: super::metrics::Exported::new(&service),
            service,
            config,
            set: ArcSwap::from_pointee(EndpointSet::empty(indexed)),
            next: CachePadded(AtomicUsize::new(0)),
            rngs: AtomicU64::new(0),
            membership: Mutex::new(imbl::OrdMap::new()),
            initialized: AtomicBool::new(false),
            startup_wakers: Mutex::new(Vec::new()),
            task: Mutex::new(None),
            ejection_timers: Mutex::new(Vec::new()),
            clock,
            this: this.clone(),
        })
    }

    /// Starts watching `registry`, building clients with `make`. Needs a
    /// tokio runtime.
    pub(crate) fn start<R, M>(self: &Arc<Self>, registry: &R, make: M)
    where
        R: Registry + ?Sized,
        M: Service<Instance, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send,
    {
        let stream = registry.watch_sets(self.service.as_str());
        let task = tokio::spawn(watch(Arc::downgrade(self), stream, make));
        *self.task.lock() = Some(task.abort_handle());
    }

    /// Whether the registry answered; registers `cx` to be woken when it
    /// does.
    #[inline]
    pub(crate) fn poll_initialized(&self, cx: &mut Context<'_>) -> bool {
        if self.initialized.load(Ordering::Acquire) {
            return true;
        }
        let mut wakers = self.startup_wakers.lock();
        if self.initialized.load(Ordering::Acquire) {
            return true;
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        false
    }

    fn mark_initialized(&self) {
        if self.initialized.load(Ordering::Acquire) {
            return;
        }
        let wakers = {
            let mut wakers = self.startup_wakers.lock();
            self.initialized.store(true, Ordering::Release);
            std::mem::take(&mut *wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The numbers of a new client of `instance`, keeping `outlier`, the
    /// outlier state of its previous client, if any.
    fn new_stats(
        &self,
        instance: Instance,
        outlier: Option<Arc<OutlierState>>,
    ) -> Arc<EndpointStats> {
        let (default_rtt, decay) = match self.config.picker {
            Picker::PeakEwma { default_rtt, decay } => (default_rtt, decay),
            _ => (Duration::from_millis(30), Duration::from_secs(10)),
        };
        let outlier =
            outlier.unwrap_or_else(|| Arc::new(OutlierState::new(self.config.outlier_detection)));
        let outliers: Weak<dyn OutlierSink> = self.this.clone();
        let breaker = self.config.circuit_breaker.as_ref().map(|config| {
            let name = format!("{}/{}", self.service, instance.id());
            CircuitBreaker::new(name, CircuitBreakerConfig::clone(config))
        });
        Arc::new(EndpointStats::new(
            instance,
            self.clock,
            default_rtt,
            decay,
            outlier,
            outliers,
            breaker,
        ))
    }

    /// Applies membership changes, swaps in the set picks read, then
    /// announces the changes: a subscriber reacting to `Removed(a)` no
    /// longer reaches `a`, one reacting to `Added(b)` already reaches `b`.
    fn apply(&self, changes: Vec<Membership<S>>) {
        if changes.is_empty() {
            return;
        }
        let mut announcements = Vec::with_capacity(changes.len());
        let mut membership = self.membership.lock();
        // O(1): shares the current set's structure.
        let mut available = EndpointSet::clone(&self.set.load());
        for change in changes {
            match change {
                Membership::Upsert(instance, service, updated) => {
                    let id = instance.id().clone();
                    let address = instance.address().clone();
                    // An update keeps the instance's outlier state (an
                    // ejection, its count, the failures in a row).
                    let outlier = membership.get(&id).map(|e| Arc::clone(&e.stats.outlier));
                    let stats = self.new_stats(instance, outlier);
                    let endpoint = Endpoint { stats, service };
                    if endpoint.stats.outlier.is_ejected() {
                        // An update of an ejected instance stays out of
                        // the picks until its ejection ends.
                        available.remove(id.as_str());
                    } else {
                        available.upsert(endpoint.clone());
                    }
                    membership.insert(id.clone(), endpoint);
                    let kind = if updated {
                        BalanceEventKind::Updated { address }
                    } else {
                        BalanceEventKind::Added { address }
                    };
                    announcements.push((id, kind));
                }
                Membership::Remove(instance) => {
                    if membership.remove(instance.id()).is_some() {
                        available.remove(instance.id().as_str());
                        announcements.push((instance.id().clone(), BalanceEventKind::Removed));
                    }
                }
            }
        }
        self.store_set(available, membership.len());
        drop(membership);
        for (id, kind) in announcements {
            match &kind {
                BalanceEventKind::Added { address } => {
                    tracing::info!(service = %self.service, %id, %address, "balancer: instance added");
                }
                BalanceEventKind::Updated { address } => {
                    tracing::info!(service = %self.service, %id, %address, "balancer: instance updated");
                }
                _ => tracing::info!(service = %self.service, %id, "balancer: instance removed"),
            }
            self.publish(&id, kind);
        }
    }

    /// Swaps in the set of `available` for picks. Called with the
    /// membership lock held, so that sets are derived one from the other.
    fn store_set(&self, set: EndpointSet<S>, members: usize) {
        let available = set.available.len();
        self.exported
            .on_instances(available, members.saturating_sub(available));
        self.set.store(Arc::new(set));
    }

    /// The circuit breaker of instance `id`, with the `circuit_breaker`
    /// option.
    pub(crate) fn circuit_breaker(&self, id: &str) -> Option<CircuitBreaker> {
        let membership = self.membership.lock();
        membership.get(id).and_then(|e| e.stats.breaker.clone())
    }

    fn publish(&self, id: &InstanceId, kind: BalanceEventKind) {
        self.events.publish_with(|| BalanceEvent {
            service: self.service.clone(),
            id: id.clone(),
            kind,
        });
    }

    /// Ends an ejection, if the instance is still the one ejected (or an
    /// update of it, which keeps its outlier state).
    fn return_ejected(&self, id: &InstanceId, outlier: &Arc<OutlierState>, due: Instant) {
        let membership = self.membership.lock();
        outlier.return_at(due);
        if let Some(endpoint) = membership
            .get(id)
            .filter(|e| Arc::ptr_eq(&e.stats.outlier, outlier))
        {
            let mut available = EndpointSet::clone(&self.set.load());
            available.upsert(endpoint.clone());
            self.store_set(available, membership.len());
            drop(membership);
            tracing::info!(service = %self.service, %id, "balancer: ejection over, instance returned");
            self.publish(id, BalanceEventKind::Returned);
        }
    }

    pub(crate) fn metrics(&self) -> BalanceMetrics {
        let membership = self.membership.lock().clone();
        let now = Instant::now();
        let now_ns = self.clock.now_nanos();
        let endpoints: Vec<EndpointMetrics> = membership
            .values()
            .map(|e| {
                let s = &e.stats;
                EndpointMetrics {
                    id: s.instance.id().clone(),
                    address: s.instance.address().clone(),
                    in_flight: s.in_flight(),
                    picks: s.hot.picks.load(Ordering::Relaxed),
                    ewma_latency: Duration::from_nanos(s.ewma_ns(now_ns) as u64),
                    consecutive_failures: s.outlier.consecutive_failures.load(Ordering::Relaxed),
                    ejected: s.outlier.is_ejected(),
                    ejections: s.outlier.ejections(now),
                    breaker: s.breaker.as_ref().map(CircuitBreaker::state),
                }
            })
            .collect();
        let ejected = endpoints.iter().filter(|e| e.ejected).count();
        let breaker_open = |e: &EndpointMetrics| e.breaker.is_some_and(|s| !s.admits_calls());
        let breakers_open = endpoints.iter().filter(|e| breaker_open(e)).count();
        let available = endpoints
            .iter()
            .filter(|e| !e.ejected && !breaker_open(e))
            .count();
        BalanceMetrics {
            service: self.service.clone(),
            instances: endpoints.len(),
            available,
            ejected,
            breakers_open,
            endpoints,
        }
    }
}

impl<S> OutlierSink for Shared<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn consecutive_failures(&self, stats: &EndpointStats) {
        let Some(outliers) = self.config.outlier_detection else {
            return;
        };
        let membership = self.membership.lock();
        let id = stats.instance.id();
        let Some(endpoint) = membership.get(id) else {
            return;
        };
        if !Arc::ptr_eq(&endpoint.stats.outlier, &stats.outlier) || stats.outlier.is_ejected() {
            return;
        }
        let outlier = Arc::clone(&stats.outlier);
        let instances = membership.len();
        // The ejected instances are the members left out of the picks.
        let ejected = instances.saturating_sub(self.set.load().available.len());
        if (ejected + 1) * 100 > usize::from(outliers.max_ejection_percent) * instances {
            // Count a fresh run of failures before trying again.
            outlier.consecutive_failures.store(0, Ordering::Relaxed);
            drop(membership);
            tracing::debug!(
                service = %self.service,
                %id,
                ejected,
                instances,
                "balancer: ejection skipped, max_ejection_percent reached"
            );
            self.publish(id, BalanceEventKind::EjectionSkipped { ejected, instances });
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(service = %self.service, %id, "balancer: cannot eject outside a tokio runtime");
            return;
        };
        let now = Instant::now();
        let Some((duration, ejections)) = outlier.eject(now) else {
            return;
        };
        // The ejection lasts from now, not from when its timer task first
        // runs (which may be later: after the current task yields). `build`
        // caps ejection times at a year, so this cannot overflow; were it to,
        // the ejection would last until the instance leaves.
        let until = now.checked_add(duration);
        outlier.ejected.store(true, Ordering::Relaxed);
        self.exported.on_ejected();
        let mut available = EndpointSet::clone(&self.set.load());
        available.remove(id.as_str());
        self.store_set(available, membership.len());
        drop(membership);
        tracing::warn!(
            service = %self.service,
            %id,
            ejections,
            ejection_ms = duration.as_millis() as u64,
            "balancer: instance ejected after consecutive failures"
        );
        self.publish(
            id,
            BalanceEventKind::Ejected {
                duration,
                ejections,
            },
        );
        let this = self.this.clone();
        let id = id.clone();
        let Some(until) = until else {
            tracing::warn!(service = %self.service, %id, "balancer: ejection time past the clock's end; the instance stays ejected");
            return;
        };
        let timer = runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(shared) = this.upgrade() {
                shared.return_ejected(&id, &outlier, until);
            }
        });
        let mut timers = self.ejection_timers.lock();
        timers.retain(|t| !t.is_finished());
        timers.push(timer.abort_handle());
    }
}

impl<S> Shared<S> {
    /// The random generator of a new balancer handle (the first one or a
    /// clone): seeded from `rng_seed` if set, else from the OS.
    pub(crate) fn new_rng(&self) -> SmallRng {
        match self.config.rng_seed {
            Some(seed) => {
                let n = self.rngs.fetch_add(1, Ordering::Relaxed);
                SmallRng::seed_from_u64(seed.wrapping_add(n))
            }
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }
}

impl<S> Drop for Shared<S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
        for timer in self.ejection_timers.get_mut().drain(..) {
            timer.abort();
        }
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("service", &self.service)
            .field("available", &self.set.load().available.len())
            .finish_non_exhaustive()
    }
}

/// Keeps the balancer's instances in step with the registry until the
/// balancer is dropped (which aborts this task) or the registry closes.
async fn watch<S, M>(
    shared: Weak<Shared<S>>,
    mut stream: crate::discovery::InstanceSetStream,
    mut make: M,
) where
    S: Clone + Send + Sync + 'static,
    M: Service<Instance, Response = S>,
    M::Error: Into<BoxError>,
{
    // What the balancer holds: the last snapshot, less the instances whose
    // client could not be built. Derived from the registry's sets, so that
    // diffing the next one skips what they share.
    let mut current = InstanceSet::new();
    // The last snapshot, replayed after a backoff when a client could not
    // be built, so that an instance the registry keeps reporting unchanged
    // is tried again.
    let mut last = InstanceSet::new();
    let mut retry_delays = make_retry_backoff().schedule();
    let mut retry_at: Option<Instant> = None;
    loop {
        let item = match retry_at {
            None => stream.next().await,
            Some(at) => {
                let sleep = std::pin::pin!(tokio::time::sleep_until(at));
                match futures_util::future::select(stream.next(), sleep).await {
                    Either::Left((item, _)) => item,
                    Either::Right(((), _)) => Some(Ok(last.clone())),
                }
            }
        };
        let Some(item) = item else { break };
        let snapshot = match item {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                tracing::warn!(service = %shared.service, %error, "balancer: registry watch error; keeping the last instances");
                shared.mark_initialized();
                continue;
            }
        };
        last = snapshot.clone();
        let diff = current.changes_to(&snapshot);
        current = snapshot;
        let mut changes = Vec::new();
        let mut make_failed = false;
        for change in diff {
            let updated = matches!(change, InstanceChange::Updated(_));
            match change {
                InstanceChange::Added(instance) | InstanceChange::Updated(instance) => {
                    match make_client(&mut make, instance.clone()).await {
                        Ok(client) => changes.push(Membership::Upsert(instance, client, updated)),
                        Err(error) => {
                            make_failed = true;
                            if let Some(shared) = shared.upgrade() {
                                tracing::warn!(service = %shared.service, id = %instance.id(), %error, "balancer: building the instance's client failed; will retry");
                                shared.publish(
                                    instance.id(),
                                    BalanceEventKind::MakeFailed {
                                        error: error.to_string(),
                                    },
                                );
                            }
                            // Forget it, so that a replayed or new snapshot adds it again.
                            current.remove(instance.id().as_str());
                            changes.push(Membership::Remove(instance));
                        }
                    }
                }
                InstanceChange::Removed(instance) => changes.push(Membership::Remove(instance)),
            }
        }
        retry_at = if make_failed {
            // At most 30 s: never `None` in practice; if it were, no replay.
            Instant::now().checked_add(retry_delays.next_delay())
        } else {
            retry_delays.reset();
            None
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.apply(changes);
        shared.mark_initialized();
    }
    if let Some(shared) = shared.upgrade() {
        tracing::warn!(service = %shared.service, "balancer: registry closed; keeping the last instances");
        shared.mark_initialized();
    }
}

/// How long to wait before building a failed instance's client again:
/// 100 ms doubling to 30 s, full jitter.
fn make_retry_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), 2.0)
        .max_interval(Duration::from_secs(30))
        .jitter(Jitter::Full)
        .build()
        // Valid constants; the default is the same curve capped at 10 s.
        .unwrap_or_default()
}

async fn make_client<M>(make: &mut M, instance: Instance) -> Result<M::Response, BoxError>
where
    M: Service<Instance>,
    M::Error: Into<BoxError>,
{
    futures_util::future::poll_fn(|cx| make.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    make.call(instance).await.map_err(Into::into)
}
