//! The bulkhead itself, independent of tower: a FIFO semaphore with a wait
//! limit, a bounded waiting queue and a resizable limit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::config::{BulkheadConfig, MAX_CONCURRENT_CALLS};
use super::error::BulkheadFull;
use super::event::{BulkheadEvent, BulkheadEventKind};
use super::layer::BulkheadLayer;
use super::metrics::BulkheadMetrics;

/// A bulkhead: at most `max_concurrent_calls` calls run at once; others wait
/// in FIFO order for at most `max_wait_duration`, at most `max_waiting` of
/// them, or are rejected with [`BulkheadFull`].
///
/// Clones share the bulkhead. Build tower services from it with
/// [`layer`](Self::layer), or use [`try_acquire`](Self::try_acquire) /
/// [`acquire`](Self::acquire) directly; a [`BulkheadPermit`] gives its slot
/// back when dropped, whether the call finished or was cancelled.
///
/// ```
/// use palisade::bulkhead::{Bulkhead, BulkheadConfig};
///
/// let payments = Bulkhead::new("payments", BulkheadConfig::builder().max_concurrent_calls(2).build()?);
/// let first = payments.try_acquire()?;
/// let second = payments.try_acquire()?;
/// assert!(payments.try_acquire().is_err(), "a third call is rejected at once");
/// drop(first);
/// assert!(payments.try_acquire().is_ok(), "the slot came back");
/// # drop(second);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    config: BulkheadConfig,
    semaphore: Semaphore,
    limit: AtomicUsize,
    /// Permits still to take out of circulation after a shrink: released
    /// permits pay this off before they go back to the semaphore.
    debt: AtomicUsize,
    waiting: AtomicUsize,
    max_in_flight: AtomicUsize,
    rejected: StripedCounter,
    resize: Mutex<()>,
    events: EventHub<BulkheadEvent>,
    exported: super::metrics::Exported,
}

impl Bulkhead {
    /// Creates it after checking `name`, which appears in errors, events,
    /// traces and metrics labels: it must be non-empty, without surrounding
    /// whitespace or control characters, and at most
    /// [`MAX_NAME_LEN`](crate::circuit_breaker::MAX_NAME_LEN) bytes; a
    /// [`ConfigError`](crate::ConfigError) on field `name` says which rule
    /// it broke. Use it for names that come from configuration or requests;
    /// [`new`](Self::new) takes a name written in the code as it is.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: BulkheadConfig,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("bulkhead", name)?;
        Ok(Self::new(name, config))
    }

    /// Creates a bulkhead named `name` (used in errors, events and traces).
    pub fn new(name: impl Into<Arc<str>>, config: BulkheadConfig) -> Self {
        let name = name.into();
        let shared = Shared {
            exported: super::metrics::Exported::new(&name, config.max_concurrent_calls),
            name,
            semaphore: Semaphore::new(config.max_concurrent_calls),
            limit: AtomicUsize::new(config.max_concurrent_calls),
            debt: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            rejected: StripedCounter::new(),
            resize: Mutex::new(()),
            events: EventHub::new(config.event_capacity),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &BulkheadConfig {
        &self.shared.config
    }

    /// Whether `self` and `other` are the same bulkhead.
    pub fn ptr_eq(&self, other: &Bulkhead) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// A layer that wraps services with this bulkhead.
    pub fn layer(&self) -> BulkheadLayer {
        BulkheadLayer::new(self.clone())
    }

    /// Subscribes to the bulkhead's events.
    pub fn subscribe(&self) -> EventStream<BulkheadEvent> {
        self.shared.events.subscribe()
    }

    /// A permit if one is free now; never waits.
    #[inline]
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        match self.shared.semaphore.try_acquire() {
            Ok(permit) => {
                permit.forget();
                Ok(self.permitted(Duration::ZERO))
            }
            Err(_) => Err(self.reject(false, Duration::ZERO)),
        }
    }

    /// A permit, waiting for one in FIFO order for at most
    /// `max_wait_duration`, unless `max_waiting` callers already wait.
    /// Dropping the future stops waiting and takes nothing.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        let s = &*self.shared;
        if let Ok(permit) = s.semaphore.try_acquire() {
            permit.forget();
            return Ok(self.permitted(Duration::ZERO));
        }
        let max_wait = s.config.max_wait_duration;
        if max_wait.is_zero() {
            return Err(self.reject(false, Duration::ZERO));
        }
        let queued = Waiting::join(&s.waiting);
        if queued.position > s.config.max_waiting {
            return Err(self.reject(true, Duration::ZERO));
        }
        let started = Instant::now();
        match tokio::time::timeout(max_wait, s.semaphore.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                drop(queued);
                Ok(self.permitted(started.elapsed()))
            }
            // The semaphore is never closed; treat it like a timeout.
            Ok(Err(_)) | Err(_) => {
                drop(queued);
                Err(self.reject(false, started.elapsed()))
            }
        }
    }

    /// A permit if one is free now, without counting or reporting a
    /// rejection (the service then waits with [`acquire`](Self::acquire)).
    pub(crate) fn try_acquire_quietly(&self) -> Option<BulkheadPermit> {
        let permit = self.shared.semaphore.try_acquire().ok()?;
        permit.forget();
        Some(self.permitted(Duration::ZERO))
    }

    /// [`acquire`](Self::acquire) as a `'static` future (for services).
    pub(crate) async fn acquire_owned(self) -> Result<BulkheadPermit, BulkheadFull> {
        self.acquire().await
    }

    #[inline]
    fn permitted(&self, waited: Duration) -> BulkheadPermit {
        let s = &*self.shared;
        // Derived from the permits rather than counted, so a call costs no
        // extra read-modify-write; exact when no call races this one.
        let in_flight = s.in_flight();
        if in_flight > s.max_in_flight.load(Relaxed) {
            s.max_in_flight.fetch_max(in_flight, Relaxed);
        }
        s.exported.on_permitted(waited, &s.semaphore);
        s.events.publish_with(|| BulkheadEvent {
            bulkhead: Arc::clone(&s.name),
            kind: BulkheadEventKind::Permitted { waited },
        });
        BulkheadPermit {
            bulkhead: self.clone(),
        }
    }

    fn reject(&self, queue_full: bool, waited: Duration) -> BulkheadFull {
        let s = &*self.shared;
        s.rejected.add(1);
        s.exported.on_rejected();
        tracing::debug!(bulkhead = %s.name, queue_full, waited_ms = waited.as_millis() as u64, "bulkhead rejected a call");
        s.events.publish_with(|| BulkheadEvent {
            bulkhead: Arc::clone(&s.name),
            kind: BulkheadEventKind::Rejected { queue_full, waited },
        });
        BulkheadFull::new(
            Arc::clone(&s.name),
            s.limit.load(Relaxed),
            waited,
            queue_full,
        )
    }

    #[inline]
    fn release(&self) {
        let s = &*self.shared;
        let paid_debt = s
            .debt
            .fetch_update(AcqRel, Acquire, |debt| debt.checked_sub(1))
            .is_ok();
        if !paid_debt {
            s.semaphore.add_permits(1);
        }
        s.exported.on_released(&s.semaphore);
    }

    /// Changes the limit at run time. Growing frees permits at once (and
    /// wakes waiters); shrinking never interrupts calls in flight: permits
    /// that are free are taken out at once, the rest as the calls holding
    /// them finish.
    pub fn resize(&self, max_concurrent_calls: usize) -> Result<(), ConfigError> {
        if !(1..=MAX_CONCURRENT_CALLS).contains(&max_concurrent_calls) {
            return Err(ConfigError::new(
                "bulkhead",
                "max_concurrent_calls",
                format!("must be 1 to {MAX_CONCURRENT_CALLS}, got {max_concurrent_calls}"),
            ));
        }
        let s = &*self.shared;
        let _resizing = s.resize.lock();
        let from = s.limit.load(Acquire);
        let to = max_concurrent_calls;
        if to > from {
            let grow = to - from;
            // Cancel debt first: those permits are still in circulation.
            let debt_before = s
                .debt
                .fetch_update(AcqRel, Acquire, |debt| Some(debt - debt.min(grow)))
                .unwrap_or_else(|debt| debt);
            let grow = grow - debt_before.min(grow);
            s.semaphore.add_permits(grow);
        } else if to < from {
            let shrink = from - to;
            let removed = s.semaphore.forget_permits(shrink);
            s.debt.fetch_add(shrink - removed, AcqRel);
        }
        s.limit.store(to, Release);
        s.exported.on_resized(to, &s.semaphore);
        tracing::info!(bulkhead = %s.name, from, to, "bulkhead resized");
        s.events.publish_with(|| BulkheadEvent {
            bulkhead: Arc::clone(&s.name),
            kind: BulkheadEventKind::Resized { from, to },
        });
        Ok(())
    }

    /// A snapshot of the bulkhead.
    pub fn metrics(&self) -> BulkheadMetrics {
        let s = &*self.shared;
        BulkheadMetrics {
            max_concurrent_calls: s.limit.load(Acquire),
            available_permits: s.semaphore.available_permits(),
            in_flight: s.in_flight(),
            waiting: s.waiting.load(Acquire),
            max_in_flight_observed: s.max_in_flight.load(Acquire),
            rejected: s.rejected.sum(),
        }
    }
}

impl Shared {
    /// Permits held: those in circulation (the limit, plus those a shrink
    /// still waits to take back) less those free.
    fn in_flight(&self) -> usize {
        (self.limit.load(Acquire) + self.debt.load(Acquire))
            .saturating_sub(self.semaphore.available_permits())
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.shared.name)
            .field("metrics", &self.metrics())
            .finish()
    }
}

/// A caller's place in the waiting count; leaving it (also by cancellation)
/// decrements the count.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// 1 for the first caller waiting.
    position: usize,
}

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicUsize) -> Self {
        let position = count.fetch_add(1, AcqRel) + 1;
        Self { count, position }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, AcqRel);
    }
}

/// One call's slot in a [`Bulkhead`]; the slot is given back when the
/// permit is dropped.
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct BulkheadPermit {
    bulkhead: Bulkhead,
}

impl Drop for BulkheadPermit {
    #[inline]
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit")
            .field("bulkhead", &self.bulkhead.name())
            .finish()
    }
}
