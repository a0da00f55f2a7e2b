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
use crate::clock::{AnchoredClock, duration_nanos};
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
///
/// In this order (`repr(C)`): first what every call writes (and a
/// peak-EWMA pick reads), on cache lines of their own; then, on the next
/// line, what every call reads (the outlier state, the breaker, the call
/// clock); the instance last. A call so touches two lines of the
/// instance, whatever the picker.
#[repr(C)]
pub(crate) struct EndpointStats {
    /// A pick reads one line per candidate, a call writes one, and the
    /// read-mostly fields below stay shared.
    pub(crate) hot: CachePadded<HotStats>,
    /// Shared with the instance's earlier and later clients.
    pub(crate) outlier: Arc<OutlierState>,
    /// The instance's own breaker, with the balancer's `circuit_breaker`
    /// option; dropped with the instance.
    pub(crate) breaker: Option<CircuitBreaker>,
    /// The balancer's call clock (its `call_clock` option), shared by
    /// every instance so that their readings compare.
    pub(crate) clock: AnchoredClock,
    outliers: Weak<dyn OutlierSink>,
    pub(crate) instance: Instance,
}

/// [`EndpointStats::hot`].
pub(crate) struct HotStats {
    /// Calls in flight: picked, not yet completed or dropped.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) picks: AtomicU64,
    /// Peak-EWMA latency in nanoseconds (`f64` bits) and when it was last
    /// updated (a reading of the balancer's call clock: nanoseconds since
    /// its anchor, the `epoch` below).
    ewma_ns: AtomicU64,
    ewma_at_ns: AtomicU64,
    /// `ln(ewma_ns) + ewma_at_ns / decay_ns` (`f64` bits): the estimate's
    /// logarithm, decayed back to `epoch`, the clock's zero. Two instances' decayed
    /// estimates at any moment compare as these do (the decay since then
    /// is a factor common to both), so a pick compares costs without the
    /// clock and with one `exp`; see [`cheaper_than`](EndpointStats::cheaper_than).
    ewma_key: AtomicU64,
    /// `1 / decay` in nanoseconds: times in decays by a multiplication
    /// rather than a division (whose latency the update would wait on).
    /// Never written; here because every update reads it.
    per_decay_ns: f64,
}

impl EndpointStats {
    /// `outlier`: the instance's outlier state, new or kept from its
    /// previous client.
    pub(crate) fn new(
        instance: Instance,
        clock: AnchoredClock,
        default_rtt: Duration,
        decay: Duration,
        outlier: Arc<OutlierState>,
        outliers: Weak<dyn OutlierSink>,
        breaker: Option<CircuitBreaker>,
    ) -> Self {
        let default_ns = duration_nanos(default_rtt) as f64;
        let at_ns = clock.now_nanos();
        let per_decay_ns = 1.0 / (duration_nanos(decay) as f64).max(1.0);
        Self {
            instance,
            hot: CachePadded(HotStats {
                in_flight: AtomicUsize::new(0),
                picks: AtomicU64::new(0),
                ewma_ns: AtomicU64::new(default_ns.to_bits()),
                ewma_at_ns: AtomicU64::new(at_ns),
                ewma_key: AtomicU64::new(ewma_key(default_ns, at_ns, per_decay_ns).to_bits()),
                per_decay_ns,
            }),
            clock,
            outlier,
            outliers,
            breaker,
        }
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.hot.in_flight.load(Ordering::Relaxed)
    }

    /// The peak-EWMA latency now, decayed towards zero for the time since
    /// the last observation (so an instance that was slow a while ago gets
    /// tried again), in nanoseconds; `now_ns` is a reading of `clock`.
    #[inline]
    pub(crate) fn ewma_ns(&self, now_ns: u64) -> f64 {
        let estimate = f64::from_bits(self.hot.ewma_ns.load(Ordering::Relaxed));
        let at = self.hot.ewma_at_ns.load(Ordering::Relaxed);
        let elapsed = nanos_f64(now_ns.saturating_sub(at));
        estimate * (-elapsed * self.hot.per_decay_ns).exp()
    }

    /// Whether this instance's peak-EWMA cost (latency times one more
    /// than its calls in flight) is below `other`'s now. It compares
    /// `e^(key - other's key) × (load + 1)` with `other's load + 1`: the
    /// decay since the last observations is a factor common to both
    /// sides. No clock read; with equal loads (an idle or evenly loaded
    /// balancer) the keys alone decide, else one `exp`.
    #[inline]
    pub(crate) fn cheaper_than(&self, other: &EndpointStats) -> bool {
        let key = f64::from_bits(self.hot.ewma_key.load(Ordering::Relaxed));
        let other_key = f64::from_bits(other.hot.ewma_key.load(Ordering::Relaxed));
        let (load, other_load) = (self.in_flight(), other.in_flight());
        if load == other_load {
            return key < other_key;
        }
        (key - other_key).exp() * (load as f64 + 1.0) < other_load as f64 + 1.0
    }

    /// Folds one observed call, from `started_ns` to `now_ns` (readings of
    /// `clock`), into the peak EWMA, as Finagle's and linkerd's `PeakEwma`
    /// do: the estimate is first decayed in place to when the call started (their pick reads
    /// decay it; ours read without writing, so the decay is applied here),
    /// then a latency above it replaces it at once (the "peak") and a lower
    /// one is averaged in with weight `1 - e^(-rtt/decay)`, the call's own
    /// duration. So an idle instance's estimate only falls, and a fast
    /// answer never raises it. Concurrent updates may lose one of two
    /// observations; the estimate stays a valid one.
    ///
    /// The common case, a call and the idle time before it short next to
    /// `decay` (below 1/1,000 of it: 10 ms with the default 10 s), costs
    /// no `exp` or `ln`: both factors and the key's change are then short
    /// series, as exact as the library functions (see [`decay_factor`]).
    /// A call that took no time on the clock and started no later than
    /// the last update (common with the coarse clock) changes nothing and
    /// writes nothing.
    #[inline]
    pub(crate) fn observe_latency(&self, started_ns: u64, now_ns: u64) {
        let rtt_ns = now_ns.saturating_sub(started_ns);
        let started_ns = now_ns - rtt_ns;
        let at = self.hot.ewma_at_ns.load(Ordering::Relaxed);
        if rtt_ns == 0 && started_ns <= at {
            return;
        }
        let estimate = f64::from_bits(self.hot.ewma_ns.load(Ordering::Relaxed));
        // The idle time before the call and the call's own, in decays.
        let idle = nanos_f64(started_ns.saturating_sub(at)) * self.hot.per_decay_ns;
        let rtt = nanos_f64(rtt_ns);
        let rtt_decays = rtt * self.hot.per_decay_ns;
        let at_start = estimate * decay_factor(idle);
        let (next, key) = if rtt > at_start {
            (rtt, ewma_key(rtt, now_ns, self.hot.per_decay_ns))
        } else {
            // next = at_start × k + rtt × (1 - k), k = e^(-rtt/decay):
            // at_start - weight × (at_start - rtt), or at_start × (1 -
            // shrink), whose logarithm is the start's (the old key less
            // the decay to `started_ns`) plus ln(1 - shrink).
            let weight = decay_weight(rtt_decays);
            let next = at_start - weight * (at_start - rtt);
            let old_key = f64::from_bits(self.hot.ewma_key.load(Ordering::Relaxed));
            let key = if idle < SERIES_BELOW {
                // The key is the estimate decayed back to `epoch`: decaying
                // to `started_ns` leaves it as it was; only the blend and
                // the call's time since then (to `now_ns`) change it. After
                // a longer idle time the key is computed afresh (one `ln`),
                // which also drops the rounding these sums gather.
                let shrink = if at_start > 0.0 {
                    weight * (1.0 - rtt / at_start)
                } else {
                    0.0
                };
                old_key + ln_1m(shrink) + rtt_decays
            } else {
                ewma_key(next, now_ns, self.hot.per_decay_ns)
            };
            (next, key)
        };
        self.hot.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
        self.hot.ewma_at_ns.store(now_ns, Ordering::Relaxed);
        self.hot.ewma_key.store(key.to_bits(), Ordering::Relaxed);
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

/// The key [`EndpointStats::cheaper_than`] compares: an estimate of
/// `ewma_ns` at `at_ns`, decayed back to the epoch, as a logarithm (an
/// estimate of zero is minus infinity, cheaper than any other).
fn ewma_key(ewma_ns: f64, at_ns: u64, per_decay_ns: f64) -> f64 {
    ewma_ns.ln() + nanos_f64(at_ns) * per_decay_ns
}

/// `nanos` as an `f64`, through `i64` (one instruction on x86-64, where
/// `u64` takes a branch or several): readings and durations of the call
/// clock stay far below `i64::MAX` nanoseconds (292 years), and saturate
/// there should one not.
#[inline]
fn nanos_f64(nanos: u64) -> f64 {
    nanos.min(i64::MAX as u64) as i64 as f64
}

/// Below this, [`decay_factor`], [`decay_weight`] and [`ln_1m`] sum
/// series instead of calling `exp`, `exp_m1` or `ln_1p`: the first term
/// left out is below 1e-12 of the result (`x^4 / 24`, `x^4 / 120` and
/// `u^4 / 5` of it), as good as the library functions for picking.
const SERIES_BELOW: f64 = 1e-3;

/// `e^(-x)` for `x >= 0`: how much an estimate keeps after `x` decay
/// times.
#[inline]
fn decay_factor(x: f64) -> f64 {
    if x < SERIES_BELOW {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

/// `1 - e^(-x)` for `x >= 0`, computed without the cancellation of
/// `1.0 - (-x).exp()` for small `x`: the weight of a call lasting `x`
/// decay times.
#[inline]
fn decay_weight(x: f64) -> f64 {
    if x < SERIES_BELOW {
        x * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x / 24.0)))
    } else {
        -(-x).exp_m1()
    }
}

/// `ln(1 - u)` for `0 <= u <= 1`.
#[inline]
fn ln_1m(u: f64) -> f64 {
    if u < SERIES_BELOW {
        -u * (1.0 + u * (0.5 + u * (1.0 / 3.0 + u / 4.0)))
    } else {
        (-u).ln_1p()
    }
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
/// order, and (for every picker but round robin) an index of their slots
/// that a pick reads faster than the vector.
/// Immutable: the balancer swaps in a new set when membership or
/// ejections change, derived from the old one ([`Clone`] is O(1): every
/// part is persistent) in O(log n) per change. `available` is a
/// persistent vector: a pick indexes it in O(log n) with a tiny base (a
/// tree of 64-wide nodes: one level up to 64 instances, two up to 4,096,
/// three to 262,144).
pub(crate) struct EndpointSet<S> {
    pub(crate) available: imbl::Vector<Endpoint<S>>,
    /// The same endpoints in the slots of a [`WeightIndex`], for the
    /// pickers that pick by weight or uniformly (a walk down a binary tree
    /// of counts or weights is cheaper than indexing the persistent
    /// vector); `None` with round robin, which goes in id order.
    pub(crate) weights: Option<WeightIndex<S>>,
}

impl<S: Clone> Clone for EndpointSet<S> {
    fn clone(&self) -> Self {
        Self {
            available: self.available.clone(),
            weights: self.weights.clone(),
        }
    }
}

impl<S: Clone> EndpointSet<S> {
    /// An empty set; with `indexed`, with the slot index the weighted and
    /// the uniform pickers read.
    pub(crate) fn empty(indexed: bool) -> Self {
        Self {
            available: imbl::Vector::new(),
            weights: indexed.then(WeightIndex::new),
        }
    }

    /// Puts `endpoint` in the set (kept in id order), replacing the one
    /// with its id: O(log² n).
    pub(crate) fn upsert(&mut self, endpoint: Endpoint<S>) {
        let id = endpoint.stats.instance.id();
        if let Some(weights) = &mut self.weights {
            weights.upsert(endpoint.clone());
        }
        match self
            .available
            .binary_search_by(|e| e.stats.instance.id().cmp(id))
        {
            Ok(at) => {
                self.available.set(at, endpoint);
            }
            Err(at) => self.available.insert(at, endpoint),
        }
    }

    /// Takes the endpoint with id `id` out of the set, if there: O(log² n).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(weights) = &mut self.weights {
            weights.remove(id);
        }
        if let Ok(at) = self
            .available
            .binary_search_by(|e| e.stats.instance.id().as_str().cmp(id))
        {
            self.available.remove(at);
        }
    }
}

/// The weighted picker's index: each endpoint in a slot of its own (a
/// freed slot is reused), the slots the leaves of a persistent binary tree
/// whose nodes hold the sum of the weights below them. A change copies one
/// path, O(log n); a pick walks one path down, O(log n), reading one sum
/// per level; a set derived from another shares all but the changed paths.
/// Where prefix sums in a plain vector cost O(n) per change.
pub(crate) struct WeightIndex<S> {
    root: Arc<WeightNode<S>>,
    /// The tree's height: it has `2^height` slots.
    height: u32,
    /// Slots in use or freed; the next new slot.
    used: usize,
    slot_of: imbl::OrdMap<crate::discovery::instance::InstanceId, usize>,
    free: imbl::Vector<usize>,
}

enum WeightNode<S> {
    Slot(Option<Endpoint<S>>),
    Sum {
        weight: u64,
        count: usize,
        /// The left child's weight and count, kept here so that a walk
        /// down reads one node per level.
        left_weight: u64,
        left_count: usize,
        /// The left child, then the right: a walk down indexes this
        /// pair with the comparison's outcome rather than branching on it
        /// (a random pick's path is a random one, which a branch
        /// predictor would miss at half the levels).
        children: [Arc<WeightNode<S>>; 2],
    },
}

impl<S> WeightNode<S> {
    #[inline]
    fn weight(&self) -> u64 {
        match self {
            WeightNode::Slot(endpoint) => endpoint
                .as_ref()
                .map_or(0, |e| u64::from(e.stats.instance.weight())),
            WeightNode::Sum { weight, .. } => *weight,
        }
    }

    /// How many slots below hold an endpoint.
    #[inline]
    fn count(&self) -> usize {
        match self {
            WeightNode::Slot(endpoint) => usize::from(endpoint.is_some()),
            WeightNode::Sum { count, .. } => *count,
        }
    }

    /// An empty tree of `height`: one node per level, shared.
    fn empty(height: u32) -> Arc<Self> {
        let mut node = Arc::new(WeightNode::Slot(None));
        for _ in 0..height {
            node = Arc::new(WeightNode::Sum {
                weight: 0,
                count: 0,
                left_weight: 0,
                left_count: 0,
                children: [Arc::clone(&node), node],
            });
        }
        node
    }

    /// This tree of `height` with slot `slot` holding `endpoint`: the
    /// path to it copied, the rest shared.
    fn with(&self, height: u32, slot: usize, endpoint: Option<Endpoint<S>>) -> Arc<Self> {
        match self {
            WeightNode::Slot(_) => Arc::new(WeightNode::Slot(endpoint)),
            WeightNode::Sum {
                children: [left, right],
                ..
            } => {
                let half = 1usize << (height - 1);
                let (left, right) = if slot < half {
                    (left.with(height - 1, slot, endpoint), Arc::clone(right))
                } else {
                    (
                        Arc::clone(left),
                        right.with(height - 1, slot - half, endpoint),
                    )
                };
                Arc::new(WeightNode::Sum {
                    weight: left.weight() + right.weight(),
                    count: left.count() + right.count(),
                    left_weight: left.weight(),
                    left_count: left.count(),
                    children: [left, right],
                })
            }
        }
    }

    /// The endpoint of slot `slot` in this tree of `height`.
    fn slot(&self, height: u32, slot: usize) -> Option<&Endpoint<S>> {
        match self {
            WeightNode::Slot(endpoint) => endpoint.as_ref(),
            WeightNode::Sum {
                children: [left, right],
                ..
            } => {
                let half = 1usize << (height - 1);
                if slot < half {
                    left.slot(height - 1, slot)
                } else {
                    right.slot(height - 1, slot - half)
                }
            }
        }
    }
}

impl<S> Clone for WeightIndex<S> {
    fn clone(&self) -> Self {
        Self {
            root: Arc::clone(&self.root),
            height: self.height,
            used: self.used,
            slot_of: self.slot_of.clone(),
            free: self.free.clone(),
        }
    }
}

impl<S: Clone> WeightIndex<S> {
    fn new() -> Self {
        Self {
            root: WeightNode::empty(0),
            height: 0,
            used: 0,
            slot_of: imbl::OrdMap::new(),
            free: imbl::Vector::new(),
        }
    }

    /// The sum of the weights.
    #[inline]
    pub(crate) fn total(&self) -> u64 {
        self.root.weight()
    }

    /// The endpoint in the `n`th slot in use (in slot order), `n` below
    /// the number of endpoints: a uniform pick with a uniform `n`.
    #[inline]
    pub(crate) fn nth(&self, n: usize) -> Option<&Endpoint<S>> {
        self.descend(n as u64, |left_count, _| left_count as u64)
    }

    /// The endpoint covering `point` (below [`total`](Self::total)) when
    /// the endpoints' weights are laid end to end in slot order: each is
    /// found for as many points as its weight.
    #[inline]
    pub(crate) fn find(&self, point: u64) -> Option<&Endpoint<S>> {
        self.descend(point, |_, left_weight| left_weight)
    }

    /// Walks from the root to the slot holding `rest`, measuring each left
    /// subtree with `left_size(left_count, left_weight)`.
    #[inline]
    fn descend(
        &self,
        mut rest: u64,
        left_size: impl Fn(usize, u64) -> u64,
    ) -> Option<&Endpoint<S>> {
        let mut node = &*self.root;
        loop {
            match node {
                WeightNode::Slot(endpoint) => return endpoint.as_ref(),
                WeightNode::Sum {
                    children,
                    left_count,
                    left_weight,
                    ..
                } => {
                    let on_left = left_size(*left_count, *left_weight);
                    let right = rest >= on_left;
                    rest -= on_left * u64::from(right);
                    node = &children[usize::from(right)];
                }
            }
        }
    }

    fn upsert(&mut self, endpoint: Endpoint<S>) {
        let id = endpoint.stats.instance.id();
        let slot = match self.slot_of.get(id) {
            Some(&slot) => slot,
            None => {
                let slot = match self.free.pop_back() {
                    Some(slot) => slot,
                    None => {
                        if self.used == 1 << self.height {
                            self.grow();
                        }
                        self.used += 1;
                        self.used - 1
                    }
                };
                self.slot_of.insert(id.clone(), slot);
                slot
            }
        };
        self.root = self.root.with(self.height, slot, Some(endpoint));
    }

    fn remove(&mut self, id: &str) {
        let Some(slot) = self.slot_of.remove(id) else {
            return;
        };
        debug_assert!(self.root.slot(self.height, slot).is_some());
        self.root = self.root.with(self.height, slot, None);
        self.free.push_back(slot);
    }

    /// Doubles the slots: the tree becomes the left half of one twice its
    /// height, whose right half is empty.
    #[cold]
    fn grow(&mut self) {
        let right = WeightNode::empty(self.height);
        self.root = Arc::new(WeightNode::Sum {
            weight: self.root.weight(),
            count: self.root.count(),
            left_weight: self.root.weight(),
            left_count: self.root.count(),
            children: [Arc::clone(&self.root), right],
        });
        self.height += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;
    impl OutlierSink for NoSink {
        fn consecutive_failures(&self, _: &EndpointStats) {}
    }

    fn endpoint(id: &str, weight: u32) -> Endpoint<()> {
        let instance = Instance::builder("api", id, "10.0.0.1:80")
            .weight(weight)
            .build()
            .unwrap();
        let outliers: Weak<dyn OutlierSink> = Weak::<NoSink>::new();
        let stats = EndpointStats::new(
            instance,
            AnchoredClock::new(crate::clock::CallClock::Tokio),
            Duration::from_millis(30),
            Duration::from_secs(10),
            Arc::new(OutlierState::new(None)),
            outliers,
            None,
        );
        Endpoint {
            stats: Arc::new(stats),
            service: (),
        }
    }

    /// How many points of `0..total` pick each id: its weight, if the
    /// index is right.
    fn points_per_id(set: &EndpointSet<()>) -> std::collections::BTreeMap<String, u64> {
        let weights = set.weights.as_ref().unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for point in 0..weights.total() {
            let picked = weights
                .find(point)
                .expect("a point below the total finds one");
            *counts
                .entry(picked.stats.instance.id().to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    fn expected(weights: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
        weights.iter().map(|(id, w)| (id.to_string(), *w)).collect()
    }

    #[test]
    fn the_weight_index_finds_each_endpoint_for_as_many_points_as_its_weight() {
        let mut set = EndpointSet::empty(true);
        for (id, weight) in [("a", 1), ("b", 3), ("c", 6), ("d", 2), ("e", 5)] {
            set.upsert(endpoint(id, weight));
        }
        let before = set.clone();
        assert_eq!(
            points_per_id(&set),
            expected(&[("a", 1), ("b", 3), ("c", 6), ("d", 2), ("e", 5)])
        );
        // An update changes the weight in place; a removal frees a slot
        // that the next addition reuses; growing keeps every weight.
        set.upsert(endpoint("b", 7));
        set.remove("c");
        set.remove("missing");
        set.upsert(endpoint("f", 4));
        for i in 0..20 {
            set.upsert(endpoint(&format!("g{i:02}"), 1));
        }
        for i in 0..20 {
            set.remove(&format!("g{i:02}"));
        }
        assert_eq!(
            points_per_id(&set),
            expected(&[("a", 1), ("b", 7), ("d", 2), ("e", 5), ("f", 4)])
        );
        assert_eq!(set.weights.as_ref().unwrap().total(), 19);
        assert_eq!(set.available.len(), 5);
        // The uniform pickers' lookup: each endpoint at exactly one `n`.
        let slots = set.weights.as_ref().unwrap();
        let mut found: Vec<String> = (0..5)
            .map(|n| slots.nth(n).unwrap().stats.instance.id().to_string())
            .collect();
        found.sort();
        assert_eq!(found, ["a", "b", "d", "e", "f"]);
        // The set it was derived from is as it was.
        assert_eq!(
            points_per_id(&before),
            expected(&[("a", 1), ("b", 3), ("c", 6), ("d", 2), ("e", 5)])
        );
        for id in ["a", "b", "d", "e", "f"] {
            set.remove(id);
        }
        assert_eq!(set.weights.as_ref().unwrap().total(), 0);
        assert!(set.available.is_empty());
    }

    #[test]
    fn peak_ewma_compares_costs_as_the_decayed_estimates_do() {
        let a = endpoint("a", 1);
        let b = endpoint("b", 1);
        // a saw a 100 ms call at 1 s, b a 10 ms call at 20 s: at 20 s a's
        // estimate has decayed for 19 s (10 s decay) to about 15 ms.
        a.stats.observe_latency(900_000_000, 1_000_000_000);
        b.stats.observe_latency(19_990_000_000, 20_000_000_000);
        let now = 20_000_000_000;
        let cost = |e: &Endpoint<()>| e.stats.ewma_ns(now) * (e.stats.in_flight() as f64 + 1.0);
        assert!(cost(&b) < cost(&a));
        assert!(b.stats.cheaper_than(&a.stats));
        assert!(!a.stats.cheaper_than(&b.stats));
        // Two calls in flight on b make it dearer: 3 × 10 ms > 15 ms.
        b.stats.hot.in_flight.fetch_add(2, Ordering::Relaxed);
        assert!(cost(&a) < cost(&b));
        assert!(a.stats.cheaper_than(&b.stats));
    }

    #[test]
    fn a_call_touches_the_hot_block_and_one_line_after_it() {
        use std::mem::{offset_of, size_of};
        // The hot block: one 64-byte line of what calls write.
        assert_eq!(offset_of!(EndpointStats, hot), 0);
        assert!(size_of::<HotStats>() <= 64);
        // What every call reads: on the line right after the block.
        let line = size_of::<CachePadded<HotStats>>();
        for (offset, size) in [
            (
                offset_of!(EndpointStats, outlier),
                size_of::<Arc<OutlierState>>(),
            ),
            (
                offset_of!(EndpointStats, breaker),
                size_of::<Option<CircuitBreaker>>(),
            ),
            (offset_of!(EndpointStats, clock), size_of::<AnchoredClock>()),
        ] {
            assert!(
                offset >= line && offset + size <= line + 64,
                "{offset} + {size}"
            );
        }
    }

    #[test]
    fn the_short_series_agree_with_the_library_functions() {
        for x in [0.0, 1e-12, 1e-9, 1e-6, 3e-4, 9.99e-4, 1e-3, 0.5, 3.0] {
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
            assert!(close(decay_factor(x), (-x).exp()), "e^-{x}");
            assert!(close(decay_weight(x), -(-x).exp_m1()), "1 - e^-{x}");
            if x <= 1.0 {
                assert!(close(ln_1m(x), (-x).ln_1p()), "ln(1 - {x})");
            }
        }
        assert_eq!(ln_1m(1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn the_key_updated_in_steps_stays_the_logarithm_of_the_estimate() {
        let e = endpoint("a", 1);
        let stats = &e.stats;
        let key = || f64::from_bits(stats.hot.ewma_key.load(Ordering::Relaxed));
        let fresh = || {
            let estimate = f64::from_bits(stats.hot.ewma_ns.load(Ordering::Relaxed));
            let at = stats.hot.ewma_at_ns.load(Ordering::Relaxed);
            ewma_key(estimate, at, stats.hot.per_decay_ns)
        };
        // 100,000 calls of 50 µs, 1 µs apart (the summed path), then one
        // after 5 s idle (the key computed afresh), then a peak.
        let mut now_ns = 1_000_000;
        for _ in 0..100_000 {
            now_ns += 51_000;
            stats.observe_latency(now_ns - 50_000, now_ns);
        }
        assert!((key() - fresh()).abs() < 1e-9, "{} vs {}", key(), fresh());
        let estimate = f64::from_bits(stats.hot.ewma_ns.load(Ordering::Relaxed));
        assert!(estimate < 30e6 && estimate > 50_000.0);
        now_ns += 5_000_000_000;
        stats.observe_latency(now_ns - 40_000, now_ns);
        assert_eq!(key(), fresh());
        now_ns += 1_000;
        stats.observe_latency(now_ns - 900_000_000, now_ns);
        assert_eq!(
            f64::from_bits(stats.hot.ewma_ns.load(Ordering::Relaxed)),
            9e8
        );
        assert_eq!(key(), fresh());
    }

    #[test]
    fn a_call_of_no_time_within_the_last_update_changes_nothing() {
        let e = endpoint("a", 1);
        let stats = &e.stats;
        let state = || {
            (
                stats.hot.ewma_ns.load(Ordering::Relaxed),
                stats.hot.ewma_at_ns.load(Ordering::Relaxed),
                stats.hot.ewma_key.load(Ordering::Relaxed),
            )
        };
        stats.observe_latency(5_000_000_000, 5_002_000_000);
        let updated = state();
        // Zero time on the clock, at the update's tick or before it (a
        // call that started earlier, completing late).
        stats.observe_latency(5_002_000_000, 5_002_000_000);
        stats.observe_latency(5_001_000_000, 5_001_000_000);
        assert_eq!(state(), updated);
        // The next tick decays the estimate.
        stats.observe_latency(5_003_000_000, 5_003_000_000);
        assert!(f64::from_bits(state().0) < f64::from_bits(updated.0));
        assert_eq!(state().1, 5_003_000_000);
    }
}
