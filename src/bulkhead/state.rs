//! The bulkhead itself, independent of tower: a FIFO semaphore with a wait
//! limit, a bounded waiting queue and a resizable limit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
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

/// The permit count that calls take and give back (`FREE` each) and the
/// callers waiting (`WAITER` each), in one word: [`State`].
const FREE: u64 = 1 << 32;
const WAITER: u64 = 1;
/// At most this many callers wait (the low half of the word).
const MAX_WAITERS: u64 = (1 << 32) - 1;

/// The bulkhead's permits: free ones are counted in one atomic word, so a
/// call with a permit free takes and gives it back with one compare-and-swap
/// each and no lock. Callers that wait queue on a tokio [`Semaphore`]
/// (FIFO): a permit given back while someone waits is handed to the
/// semaphore instead of the free count, and nobody takes a free permit
/// while someone waits, so waiting callers are served first, in order.
///
/// Invariant: free permits and waiting callers are never both above zero
/// (a permit is freed only when nobody waits; a caller queues only when no
/// permit is free). Permits handed to the semaphore for a waiter that gave
/// up meanwhile stay in the semaphore and are taken by the next caller
/// once nobody waits.
struct State {
    word: AtomicU64,
    /// The waiting callers' queue; holds no permit unless one was handed
    /// over for a waiter.
    semaphore: Semaphore,
}

#[inline]
fn free_in(word: u64) -> u64 {
    word >> 32
}

#[inline]
fn waiters_in(word: u64) -> u64 {
    word & MAX_WAITERS
}

/// What a caller that found no permit free got from [`State::join_queue`].
enum Joined {
    /// A permit freed meanwhile.
    Permit,
    /// A place in the queue.
    Queued,
    /// `max_waiting` callers already wait.
    Full,
}

impl State {
    fn new(permits: usize) -> Self {
        Self {
            word: AtomicU64::new(permits as u64 * FREE),
            semaphore: Semaphore::new(0),
        }
    }

    /// Takes a free permit if there is one and nobody waits.
    #[inline]
    fn take_free(&self) -> bool {
        let mut word = self.word.load(Relaxed);
        loop {
            if free_in(word) == 0 || waiters_in(word) != 0 {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(word, word - FREE, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Takes a free permit, or one left in the semaphore for a waiter that
    /// gave up, if nobody waits.
    #[inline]
    fn try_take(&self) -> bool {
        self.take_free() || self.take_left_over()
    }

    #[cold]
    fn take_left_over(&self) -> bool {
        waiters_in(self.word.load(Acquire)) == 0
            && self.semaphore.try_acquire().map(|p| p.forget()).is_ok()
    }

    /// Takes a permit freed since [`take_free`](Self::take_free) failed, or
    /// joins the waiting callers if fewer than `max_waiting` wait.
    fn join_queue(&self, max_waiting: usize) -> Joined {
        let max_waiting = (max_waiting as u64).min(MAX_WAITERS);
        let mut word = self.word.load(Relaxed);
        loop {
            let (next, joined) = if free_in(word) != 0 && waiters_in(word) == 0 {
                (word - FREE, Joined::Permit)
            } else if waiters_in(word) >= max_waiting {
                return Joined::Full;
            } else {
                (word + WAITER, Joined::Queued)
            };
            match self.word.compare_exchange_weak(word, next, AcqRel, Relaxed) {
                Ok(_) => return joined,
                Err(actual) => word = actual,
            }
        }
    }

    /// A waiting caller leaves the queue (with a permit or without).
    fn leave_queue(&self) {
        self.word.fetch_sub(WAITER, AcqRel);
    }

    /// Gives `permits` back: to the waiting callers if any wait, else to
    /// the free count.
    #[inline]
    fn give(&self, permits: usize) {
        let mut word = self.word.load(Relaxed);
        loop {
            if waiters_in(word) != 0 {
                self.semaphore.add_permits(permits);
                return;
            }
            match self.word.compare_exchange_weak(
                word,
                word + permits as u64 * FREE,
                Release,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Takes up to `permits` free permits out of circulation; returns how
    /// many it took.
    fn take_out(&self, permits: usize) -> usize {
        let mut word = self.word.load(Relaxed);
        let from_free = loop {
            let take = free_in(word).min(permits as u64);
            match self
                .word
                .compare_exchange_weak(word, word - take * FREE, AcqRel, Relaxed)
            {
                Ok(_) => break take as usize,
                Err(actual) => word = actual,
            }
        };
        from_free + self.semaphore.forget_permits(permits - from_free)
    }

    fn available(&self) -> usize {
        free_in(self.word.load(Acquire)) as usize + self.semaphore.available_permits()
    }

    fn waiting(&self) -> usize {
        waiters_in(self.word.load(Acquire)) as usize
    }
}

struct Shared {
    name: Arc<str>,
    config: BulkheadConfig,
    permits: State,
    limit: AtomicUsize,
    /// Permits still to take out of circulation after a shrink: released
    /// permits pay this off before they go back to the semaphore.
    debt: AtomicUsize,
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
            permits: State::new(config.max_concurrent_calls),
            limit: AtomicUsize::new(config.max_concurrent_calls),
            debt: AtomicUsize::new(0),
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
        if self.shared.permits.try_take() {
            Ok(self.permitted(Duration::ZERO))
        } else {
            Err(self.reject(false, Duration::ZERO))
        }
    }

    /// A permit, waiting for one in FIFO order for at most
    /// `max_wait_duration`, unless `max_waiting` callers already wait.
    /// Dropping the future stops waiting and takes nothing.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        let s = &*self.shared;
        if s.permits.try_take() {
            return Ok(self.permitted(Duration::ZERO));
        }
        let max_wait = s.config.max_wait_duration;
        if max_wait.is_zero() {
            return Err(self.reject(false, Duration::ZERO));
        }
        match s.permits.join_queue(s.config.max_waiting) {
            Joined::Permit => return Ok(self.permitted(Duration::ZERO)),
            Joined::Full => return Err(self.reject(true, Duration::ZERO)),
            Joined::Queued => {}
        }
        // Leaves the queue when dropped, also by cancellation: after the
        // semaphore's future below, which is declared later and so dropped
        // first (giving back a permit handed to it meanwhile).
        let queued = Waiting(&s.permits);
        let started = Instant::now();
        let acquired = tokio::time::timeout(max_wait, s.permits.semaphore.acquire()).await;
        match acquired {
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
        if self.shared.permits.try_take() {
            Some(self.permitted(Duration::ZERO))
        } else {
            None
        }
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
        s.exported.on_permitted(waited, || s.permits.available());
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
        let paid_debt = s.debt.load(Relaxed) != 0 && s.pay_debt();
        if !paid_debt {
            s.permits.give(1);
        }
        s.exported.on_released(|| s.permits.available());
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
            if grow > 0 {
                s.permits.give(grow);
            }
        } else if to < from {
            let shrink = from - to;
            let removed = s.permits.take_out(shrink);
            s.debt.fetch_add(shrink - removed, AcqRel);
        }
        s.limit.store(to, Release);
        s.exported.on_resized(to, || s.permits.available());
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
            available_permits: s.permits.available(),
            in_flight: s.in_flight(),
            waiting: s.permits.waiting(),
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
            .saturating_sub(self.permits.available())
    }

    /// Takes a released permit out of circulation if a shrink still owes
    /// one.
    #[cold]
    fn pay_debt(&self) -> bool {
        self.debt
            .fetch_update(AcqRel, Acquire, |debt| debt.checked_sub(1))
            .is_ok()
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

/// A caller's place among the waiting callers; leaving it (also by
/// cancellation) takes it out of the count.
struct Waiting<'a>(&'a State);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.leave_queue();
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_permit_handed_to_a_waiter_that_gave_up_is_taken_by_the_next_caller() {
        let config = BulkheadConfig::builder()
            .max_concurrent_calls(1)
            .max_wait_duration(Duration::from_secs(60))
            .build()
            .unwrap();
        let bulkhead = Bulkhead::new("test", config);
        let held = bulkhead.try_acquire().unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        {
            let mut waiting = pin!(bulkhead.acquire());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert_eq!(bulkhead.metrics().waiting, 1);
            // Released while someone waits: handed to the queue, not freed.
            drop(held);
            assert!(bulkhead.try_acquire().is_err(), "the waiter comes first");
            // The waiter gives up before it runs again.
        }
        let m = bulkhead.metrics();
        assert_eq!((m.waiting, m.in_flight, m.available_permits), (0, 0, 1));
        let permit = bulkhead
            .try_acquire()
            .expect("the permit the waiter left is free again");
        assert_eq!(bulkhead.metrics().in_flight, 1);
        drop(permit);
        // And it went back to the free count: the fast path takes it.
        assert!(bulkhead.shared.permits.take_free());
        bulkhead.shared.permits.give(1);
        assert!(matches!(
            pin!(bulkhead.acquire()).poll(&mut cx),
            Poll::Ready(Ok(_))
        ));
    }
}
