//! One balanced instance: its client, its load and latency, its outlier
//! state, its circuit breaker; and the set of instances a pick reads.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::circuit_breaker::CircuitBreaker;
use crate::classify::Outcome;
use crate::clock::duration_nanos;
use crate::discovery::instance::Instance;
use crate::sync::CachePadded;

use super::config::OutlierDetection;

/// Where an endpoint reports that its calls keep failing (the balancer's
/// shared state, without its client type).
pub(crate) trait OutlierSink: Send + Sync {
    fn consecutive_failures(&self, stats: &EndpointStats);
}

/// An instance's outlier-detection state: kept across updates of the
/// instance (weight, address, tags, metadata), as Envoy keeps a host's
/// outlier state across such changes, and shared by the instance's old
/// and new clients so that calls still in flight on the old one count.
pub(crate) struct OutlierState {
    /// The failures in a row that eject the instance; 0: outlier detection
    /// off.
    failure_threshold: u32,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) ejected: AtomicBool,
    /// The ejection count, with outlier detection. Taken only by an
    /// ejection, a return and a metrics snapshot.
    ejections: Option<(OutlierDetection, Mutex<EjectionCount>)>,
}

/// How many times an instance was ejected, less one for every full
/// `base_ejection_time` it has since spent back in the picks (Envoy
/// decrements its ejection multiplier likewise while a host stays
/// healthy): the `n` of the next ejection's `base_ejection_time × n`.
#[derive(Debug, Default)]
struct EjectionCount {
    /// The count when the last ejection started.
    count: u32,
    /// When the last ejection ended; `None` while ejected or never ejected.
    returned_at: Option<Instant>,
}

impl EjectionCount {
    /// The count at `now`, decayed for the time since the last return.
    fn at(&self, now: Instant, decay_every: Duration) -> u32 {
        let Some(returned_at) = self.returned_at else {
            return self.count;
        };
        let healthy = now.saturating_duration_since(returned_at).as_nanos();
        let decayed = healthy / decay_every.as_nanos().max(1);
        self.count
            .saturating_sub(u32::try_from(decayed).unwrap_or(u32::MAX))
    }
}

impl OutlierState {
    pub(crate) fn new(outliers: Option<OutlierDetection>) -> Self {
        Self {
            failure_threshold: outliers.map_or(0, |o| o.consecutive_failures),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejections: outliers.map(|o| (o, Mutex::new(EjectionCount::default()))),
        }
    }

    #[inline]
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The ejection count at `now` (0 without outlier detection).
    pub(crate) fn ejections(&self, now: Instant) -> u32 {
        self.ejections.as_ref().map_or(0, |(outliers, count)| {
            count.lock().at(now, outliers.base_ejection_time)
        })
    }

    /// Counts one more ejection at `now` and returns how long it lasts and
    /// the count; `None` without outlier detection.
    pub(crate) fn eject(&self, now: Instant) -> Option<(Duration, u32)> {
        let (outliers, count) = self.ejections.as_ref()?;
        let mut count = count.lock();
        let ejections = count.at(now, outliers.base_ejection_time).saturating_add(1);
        *count = EjectionCount {
            count: ejections,
            returned_at: None,
        };
        Some((outliers.ejection_time(ejections), ejections))
    }

    /// Ends an ejection at `at` (when it was due): the count starts to
    /// decay from then.
    pub(crate) fn return_at(&self, at: Instant) {
        if let Some((_, count)) = &self.ejections {
            count.lock().returned_at = Some(at);
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Relaxed);
    }
}

/// The per-instance numbers every call updates, without the client.
pub(crate) struct EndpointStats {
    pub(crate) instance: Instance,
    /// Calls in flight: picked, not yet completed or dropped. Its own cache
    /// line: every call writes it twice.
    pub(crate) in_flight: CachePadded<AtomicUsize>,
    pub(crate) picks: AtomicU64,
    /// Peak-EWMA latency in nanoseconds (`f64` bits) and when it was last
    /// updated (nanoseconds since `epoch`).
    ewma_ns: AtomicU64,
    ewma_at_ns: AtomicU64,
    epoch: Instant,
    decay_ns: f64,
    /// Shared with the instance's earlier and later clients.
    pub(crate) outlier: Arc<OutlierState>,
    outliers: Weak<dyn OutlierSink>,
    /// The instance's own breaker, with the balancer's `circuit_breaker`
    /// option; dropped with the instance.
    pub(crate) breaker: Option<CircuitBreaker>,
}

impl EndpointStats {
    /// `outlier`: the instance's outlier state, new or kept from its
    /// previous client.
    pub(crate) fn new(
        instance: Instance,
        epoch: Instant,
        default_rtt: Duration,
        decay: Duration,
        outlier: Arc<OutlierState>,
        outliers: Weak<dyn OutlierSink>,
        breaker: Option<CircuitBreaker>,
    ) -> Self {
        Self {
            instance,
            in_flight: CachePadded(AtomicUsize::new(0)),
            picks: AtomicU64::new(0),
            ewma_ns: AtomicU64::new((default_rtt.as_nanos() as f64).to_bits()),
            ewma_at_ns: AtomicU64::new(nanos_since(epoch, Instant::now())),
            epoch,
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            outlier,
            outliers,
            breaker,
        }
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The peak-EWMA latency now, decayed towards zero for the time since
    /// the last observation (so an instance that was slow a while ago gets
    /// tried again), in nanoseconds.
    #[inline]
    pub(crate) fn ewma_ns(&self, now: Instant) -> f64 {
        let estimate = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let at = self.ewma_at_ns.load(Ordering::Relaxed);
        let elapsed = nanos_since(self.epoch, now).saturating_sub(at) as f64;
        estimate * (-elapsed / self.decay_ns).exp()
    }

    /// The peak-EWMA cost: latency × (calls in flight + 1).
    #[inline]
    pub(crate) fn ewma_cost(&self, now: Instant) -> f64 {
        self.ewma_ns(now) * (self.in_flight() as f64 + 1.0)
    }

    /// Folds one observed latency, of a call that ended at `now`, into the
    /// peak EWMA, as Finagle's and linkerd's `PeakEwma` do: the estimate is
    /// first decayed in place to when the call started (their pick reads
    /// decay it; ours read without writing, so the decay is applied here),
    /// then a latency above it replaces it at once (the "peak") and a lower
    /// one is averaged in with weight `1 - e^(-rtt/decay)`, the call's own
    /// duration. So an idle instance's estimate only falls, and a fast
    /// answer never raises it. Concurrent updates may lose one of two
    /// observations; the estimate stays a valid one.
    pub(crate) fn observe_latency(&self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        let now_ns = nanos_since(self.epoch, now);
        let started_ns = now_ns.saturating_sub(duration_nanos(rtt));
        let estimate = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let at = self.ewma_at_ns.load(Ordering::Relaxed);
        let idle = started_ns.saturating_sub(at) as f64;
        let at_start = estimate * (-idle / self.decay_ns).exp();
        let next = if rtt_ns > at_start {
            rtt_ns
        } else {
            let keep = (-rtt_ns / self.decay_ns).exp();
            at_start * keep + rtt_ns * (1.0 - keep)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Records a finished call's outcome for outlier detection.
    #[inline]
    pub(crate) fn record(&self, outcome: Outcome) {
        let outlier = &*self.outlier;
        if outlier.failure_threshold == 0 {
            return;
        }
        match outcome {
            Outcome::Success => {
                if outlier.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    outlier.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure { .. } => {
                let failures = outlier.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= outlier.failure_threshold && !outlier.is_ejected() {
                    if let Some(outliers) = self.outliers.upgrade() {
                        outliers.consecutive_failures(self);
                    }
                }
            }
            Outcome::Ignored => {}
        }
    }
}

impl fmt::Debug for EndpointStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointStats")
            .field("id", self.instance.id())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    duration_nanos(now.saturating_duration_since(epoch))
}

/// An instance's client and numbers.
pub(crate) struct Endpoint<S> {
    pub(crate) stats: std::sync::Arc<EndpointStats>,
    pub(crate) service: S,
}

impl<S: Clone> Clone for Endpoint<S> {
    fn clone(&self) -> Self {
        Self {
            stats: std::sync::Arc::clone(&self.stats),
            service: self.service.clone(),
        }
    }
}

/// The instances a pick chooses from (healthy and not ejected), in id
/// order, with the prefix sums of their weights for the weighted picker.
/// Immutable: the balancer swaps in a new set when membership or
/// ejections change. `available` is a persistent vector: the new set is
/// derived from the old one in O(log n) per change (sharing the rest), and
/// a pick indexes it in O(log n) with a tiny base (a tree of 64-wide
/// nodes: one level up to 64 instances, two up to 4,096, three to 262,144).
pub(crate) struct EndpointSet<S> {
    pub(crate) available: imbl::Vector<Endpoint<S>>,
    /// With the weighted picker only (empty otherwise):
    /// `cumulative_weights[i]` is the weight of `available[..=i]`. Rebuilt
    /// with every change, O(n).
    pub(crate) cumulative_weights: Vec<u64>,
}

impl<S: Clone> EndpointSet<S> {
    pub(crate) fn empty() -> Self {
        Self {
            available: imbl::Vector::new(),
            cumulative_weights: Vec::new(),
        }
    }

    /// The set of `available` (in id order); with `weighted`, with the
    /// prefix sums the weighted picker reads.
    pub(crate) fn new(available: imbl::Vector<Endpoint<S>>, weighted: bool) -> Self {
        let cumulative_weights = if weighted {
            let mut total = 0u64;
            available
                .iter()
                .map(|e| {
                    total += u64::from(e.stats.instance.weight());
                    total
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            available,
            cumulative_weights,
        }
    }

    pub(crate) fn total_weight(&self) -> u64 {
        self.cumulative_weights.last().copied().unwrap_or(0)
    }
}

/// Puts `endpoint` in `available` (kept in id order), replacing the one
/// with its id: O(log² n).
pub(crate) fn upsert_endpoint<S: Clone>(
    available: &mut imbl::Vector<Endpoint<S>>,
    endpoint: Endpoint<S>,
) {
    let id = endpoint.stats.instance.id();
    match available.binary_search_by(|e| e.stats.instance.id().cmp(id)) {
        Ok(at) => {
            available.set(at, endpoint);
        }
        Err(at) => available.insert(at, endpoint),
    }
}

/// Takes the endpoint with id `id` out of `available`, if there: O(log² n).
pub(crate) fn remove_endpoint<S: Clone>(available: &mut imbl::Vector<Endpoint<S>>, id: &str) {
    if let Ok(at) = available.binary_search_by(|e| e.stats.instance.id().as_str().cmp(id)) {
        available.remove(at);
    }
}
