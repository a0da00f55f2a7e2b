//! Lock-free sliding windows that record call outcomes for the CLOSED state.
//!
//! Every window answers one question after each recorded call: has the
//! dependency crossed a threshold? Recording takes no lock. In the steady
//! state of a healthy service (a success replacing a success) a count window
//! costs one `fetch_add` and one load, a time window two `fetch_add`s and a
//! few loads.
//!
//! Under concurrency the aggregates are exact once every recording thread has
//! finished its update; a reader racing a writer may see a count that is off
//! by the calls in flight, and an evaluation that sees an inconsistent
//! aggregate is skipped (the next call re-evaluates).

use crate::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::*};

use crate::sync::{CachePadded, StripedCounter};

use super::config::{CircuitBreakerConfig, SlidingWindow};

/// Why the window wants the breaker to trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TripReason {
    /// The failure rate (percent) reached the threshold.
    FailureRate(f32),
    /// The slow-call rate (percent) reached the threshold.
    SlowCallRate(f32),
    /// This many failures in a row reached the threshold.
    ConsecutiveFailures(u32),
}

/// Calls recorded in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) total: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
}

/// The trip rule shared by the rate-based windows and the HALF_OPEN trial.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateThresholds {
    pub(crate) minimum_calls: u64,
    pub(crate) failure_rate: f32,
    /// `None` when slow calls are not detected.
    pub(crate) slow_call_rate: Option<f32>,
}

impl RateThresholds {
    pub(crate) fn evaluate(&self, counts: Counts) -> Option<TripReason> {
        if counts.total < self.minimum_calls || counts.total == 0 {
            return None;
        }
        if counts.failed > 0 {
            let rate = rate_percent(counts.failed, counts.total);
            if rate >= self.failure_rate {
                return Some(TripReason::FailureRate(rate));
            }
        }
        if let Some(threshold) = self.slow_call_rate {
            if counts.slow > 0 {
                let rate = rate_percent(counts.slow, counts.total);
                if rate >= threshold {
                    return Some(TripReason::SlowCallRate(rate));
                }
            }
        }
        None
    }
}

/// `part * 100 / total` in `f32`, the formula resilience4j uses.
pub(crate) fn rate_percent(part: u64, total: u64) -> f32 {
    part as f32 * 100.0 / total as f32
}

pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
    Consecutive(ConsecutiveFailures),
}

impl Window {
    pub(crate) fn new(config: &CircuitBreakerConfig, now_nanos: u64) -> Self {
        let rates = |minimum_calls: u64| RateThresholds {
            minimum_calls,
            failure_rate: config.failure_rate_threshold,
            slow_call_rate: config
                .slow_call_duration_threshold
                .map(|_| config.slow_call_rate_threshold),
        };
        match config.sliding_window {
            SlidingWindow::Count { size } => Window::Count(CountWindow::new(
                size,
                rates(u64::from(config.minimum_number_of_calls.min(size))),
            )),
            SlidingWindow::Time { seconds } => Window::Time(TimeWindow::new(
                seconds,
                rates(u64::from(config.minimum_number_of_calls)),
                now_nanos,
            )),
            SlidingWindow::ConsecutiveFailures { threshold } => {
                Window::Consecutive(ConsecutiveFailures::new(threshold))
            }
        }
    }

    /// Whether recording needs the time of the call's end.
    pub(crate) fn needs_time(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, now_nanos: u64) -> Option<TripReason> {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(failed, slow, now_nanos),
            Window::Consecutive(w) => w.record(failed),
        }
    }

    /// Forgets every recorded call.
    pub(crate) fn reset(&self, now_nanos: u64) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(now_nanos),
            Window::Consecutive(w) => w.reset(),
        }
    }

    /// What the window holds now, and the rate thresholds it judges by
    /// (`None` for the consecutive-failures window).
    pub(crate) fn counts(&self, now_nanos: u64) -> (Counts, Option<RateThresholds>) {
        match self {
            Window::Count(w) => (w.counts(), Some(w.thresholds)),
            Window::Time(w) => (w.counts(now_nanos), Some(w.thresholds)),
            Window::Consecutive(w) => (
                Counts {
                    total: u64::from(w.current()),
                    failed: u64::from(w.current()),
                    slow: 0,
                },
                None,
            ),
        }
    }

    /// Whether recording a success (not slow) would leave the window as it
    /// is, so that it can be skipped: a count window full of successes, or
    /// no failure in a row. (A time window counts every call.)
    #[inline]
    pub(crate) fn success_changes_nothing(&self) -> bool {
        match self {
            Window::Count(w) => w.sum.load(Relaxed) == w.full_of_successes,
            Window::Time(_) => false,
            Window::Consecutive(w) => w.failures.load(Relaxed) == 0,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> Option<u32> {
        match self {
            Window::Consecutive(w) => Some(w.current()),
            _ => None,
        }
    }
}

// ---- count-based window -------------------------------------------------

const SLOT_RECORDED: u8 = 0b001;
const SLOT_FAILED: u8 = 0b010;
const SLOT_SLOW: u8 = 0b100;
const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// One slot's contribution to the packed aggregate: three 21-bit fields,
/// `total << 42 | failed << 21 | slow`.
#[inline]
fn packed(slot: u8) -> u64 {
    (u64::from(slot & SLOT_RECORDED) << (2 * FIELD_BITS))
        | (u64::from((slot & SLOT_FAILED) >> 1) << FIELD_BITS)
        | u64::from((slot & SLOT_SLOW) >> 2)
}

/// The last `size` calls in a ring of one-byte slots, with a packed sum of
/// the slots kept beside it. Every slot change is a `swap` followed by adding
/// `packed(new) - packed(old)` to the sum (wrapping), so the sum equals the
/// slots once every writer is done, whatever the interleaving.
pub(crate) struct CountWindow {
    cursor: CachePadded<AtomicU32>,
    sum: CachePadded<AtomicU64>,
    slots: Box<[AtomicU8]>,
    size: u32,
    /// Lemire's fast-modulo constant for `size`.
    modulo_magic: u64,
    /// The sum of a window whose every slot is a success.
    full_of_successes: u64,
    pub(crate) thresholds: RateThresholds,
}

impl CountWindow {
    pub(crate) fn new(size: u32, thresholds: RateThresholds) -> Self {
        Self {
            cursor: CachePadded(AtomicU32::new(0)),
            sum: CachePadded(AtomicU64::new(0)),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            size,
            modulo_magic: (u64::MAX / u64::from(size)).wrapping_add(1),
            full_of_successes: u64::from(size) << (2 * FIELD_BITS),
            thresholds,
        }
    }

    #[inline]
    fn slot_index(&self, position: u32) -> usize {
        let low = self.modulo_magic.wrapping_mul(u64::from(position));
        ((u128::from(low) * u128::from(self.size)) >> 64) as usize
    }

    #[inline]
    fn record(&self, failed: bool, slow: bool) -> Option<TripReason> {
        if !failed && !slow && self.sum.load(Relaxed) == self.full_of_successes {
            // Every slot holds a success: writing one more success into the
            // oldest slot and moving the cursor would leave the same
            // sequence of outcomes, so skip the writes altogether. This is
            // the steady state of a healthy dependency: one load, no
            // read-modify-write (see `Window::success_changes_nothing`).
            return None;
        }
        let value = SLOT_RECORDED | (u8::from(failed) << 1) | (u8::from(slow) << 2);
        let position = self.cursor.fetch_add(1, Relaxed);
        let slot = &self.slots[self.slot_index(position)];
        // A success replacing a success changes nothing: no write at all.
        let sum = if slot.load(Relaxed) == value {
            self.sum.load(Relaxed)
        } else {
            let old = slot.swap(value, Relaxed);
            let delta = packed(value).wrapping_sub(packed(old));
            if delta == 0 {
                self.sum.load(Relaxed)
            } else {
                self.sum.fetch_add(delta, Relaxed).wrapping_add(delta)
            }
        };
        // Only a window holding failures or slow calls can trip.
        if sum & (FIELD_MASK << FIELD_BITS | FIELD_MASK) == 0 {
            return None;
        }
        self.thresholds.evaluate(self.unpack(sum)?)
    }

    /// Decodes the packed sum, or `None` when a racing writer left it
    /// momentarily inconsistent.
    fn unpack(&self, sum: u64) -> Option<Counts> {
        let counts = Counts {
            total: (sum >> (2 * FIELD_BITS)) & FIELD_MASK,
            failed: (sum >> FIELD_BITS) & FIELD_MASK,
            slow: sum & FIELD_MASK,
        };
        let size = u64::from(self.size);
        (counts.total <= size && counts.failed <= counts.total && counts.slow <= counts.total)
            .then_some(counts)
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Relaxed);
            if old != 0 {
                self.sum.fetch_sub(packed(old), Relaxed);
            }
        }
    }

    fn counts(&self) -> Counts {
        self.unpack(self.sum.load(Relaxed)).unwrap_or_default()
    }
}

// ---- time-based window --------------------------------------------------

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// A mark's `second` while it is being rewritten.
const MARK_WRITING: u64 = u64::MAX;

/// Running totals at the start of one second.
struct Mark {
    second: AtomicU64,
    total: AtomicU64,
    /// `failed << 32 | slow`, wrapping.
    bad: AtomicU64,
}

/// The calls of the last `seconds` seconds.
///
/// Instead of per-second buckets that must be cleared as they expire (a
/// read-modify-write race), the window keeps ever-growing totals and, in a
/// ring of `seconds` marks, the totals at the start of each recent second.
/// The window's content is `totals now − mark at the start of the oldest
/// second in the window`. The first call of a new second writes the marks
/// for the seconds that began since the last call; recording itself is one
/// or two `fetch_add`s.
pub(crate) struct TimeWindow {
    /// Every call recorded, striped: each call adds to it.
    total: StripedCounter,
    bad: CachePadded<AtomicU64>,
    current_second: CachePadded<AtomicU64>,
    marks: Box<[Mark]>,
    seconds: u64,
    pub(crate) thresholds: RateThresholds,
}

const FAILED_ONE: u64 = 1 << 32;

impl TimeWindow {
    pub(crate) fn new(seconds: u32, thresholds: RateThresholds, now_nanos: u64) -> Self {
        let window = Self {
            total: StripedCounter::new(),
            bad: CachePadded(AtomicU64::new(0)),
            current_second: CachePadded(AtomicU64::new(0)),
            marks: (0..seconds)
                .map(|_| Mark {
                    second: AtomicU64::new(MARK_WRITING),
                    total: AtomicU64::new(0),
                    bad: AtomicU64::new(0),
                })
                .collect(),
            seconds: u64::from(seconds),
            thresholds,
        };
        window.reset(now_nanos);
        window
    }

    /// Seconds are offset by the window length so that the oldest second of
    /// any window is at least 1 and never underflows.
    #[inline]
    fn second_of(&self, now_nanos: u64) -> u64 {
        now_nanos / NANOS_PER_SECOND + self.seconds
    }

    #[inline]
    fn mark(&self, second: u64) -> &Mark {
        &self.marks[(second % self.seconds) as usize]
    }

    fn write_marks(&self, from: u64, to: u64, total: u64, bad: u64) {
        for second in from..=to {
            let mark = self.mark(second);
            mark.second.store(MARK_WRITING, Release);
            mark.total.store(total, Relaxed);
            mark.bad.store(bad, Relaxed);
            mark.second.store(second, Release);
        }
    }

    fn rotate_to(&self, second: u64) {
        let mut current = self.current_second.load(Acquire);
        while second > current {
            match self
                .current_second
                .compare_exchange_weak(current, second, AcqRel, Acquire)
            {
                Ok(_) => {
                    let first = (current + 1).max(second + 1 - self.seconds);
                    self.write_marks(first, second, self.total.sum(), self.bad.load(Acquire));
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    fn record(&self, failed: bool, slow: bool, now_nanos: u64) -> Option<TripReason> {
        let second = self.second_of(now_nanos);
        if second > self.current_second.load(Relaxed) {
            self.rotate_to(second);
        }
        self.total.add(1);
        let bad_delta = if failed { FAILED_ONE } else { 0 } + u64::from(slow);
        let bad = if bad_delta == 0 {
            self.bad.load(Acquire)
        } else {
            self.bad
                .fetch_add(bad_delta, AcqRel)
                .wrapping_add(bad_delta)
        };
        let current = self.current_second.load(Acquire).max(second);
        let oldest = current + 1 - self.seconds;
        // Only a window holding failures or slow calls can trip. Find out
        // from the mark alone before summing the striped total: in the
        // steady state of a healthy dependency that is all a record costs.
        let mark = self.mark(oldest);
        if mark.second.load(Acquire) == oldest && mark.bad.load(Relaxed) == bad {
            return None;
        }
        let counts = self.counts_since(oldest, self.total.sum(), bad)?;
        if counts.failed == 0 && counts.slow == 0 {
            return None;
        }
        self.thresholds.evaluate(counts)
    }

    /// Calls recorded since the start of `oldest_second`, or `None` if that
    /// second's mark is being rewritten or belongs to another second.
    fn counts_since(&self, oldest_second: u64, total: u64, bad: u64) -> Option<Counts> {
        let mark = self.mark(oldest_second);
        if mark.second.load(Acquire) != oldest_second {
            return None;
        }
        let base_total = mark.total.load(Relaxed);
        let base_bad = mark.bad.load(Relaxed);
        if mark.second.load(Acquire) != oldest_second {
            return None;
        }
        let bad = bad.wrapping_sub(base_bad);
        Some(Counts {
            total: total.wrapping_sub(base_total),
            failed: bad >> 32,
            slow: bad & 0xFFFF_FFFF,
        })
    }

    fn reset(&self, now_nanos: u64) {
        let second = self
            .second_of(now_nanos)
            .max(self.current_second.load(Acquire));
        self.current_second.store(second, Release);
        self.write_marks(
            second + 1 - self.seconds,
            second,
            self.total.sum(),
            self.bad.load(Acquire),
        );
    }

    fn counts(&self, now_nanos: u64) -> Counts {
        let now = self.second_of(now_nanos);
        let current = self.current_second.load(Acquire);
        let oldest = now.max(current) + 1 - self.seconds;
        if oldest > current {
            // No call was recorded in any second still in the window.
            return Counts::default();
        }
        self.counts_since(oldest, self.total.sum(), self.bad.load(Acquire))
            .unwrap_or_default()
    }
}

// ---- consecutive failures -----------------------------------------------

pub(crate) struct ConsecutiveFailures {
    failures: CachePadded<AtomicU32>,
    threshold: u32,
}

impl ConsecutiveFailures {
    fn new(threshold: u32) -> Self {
        Self {
            failures: CachePadded(AtomicU32::new(0)),
            threshold,
        }
    }

    #[inline]
    fn record(&self, failed: bool) -> Option<TripReason> {
        if failed {
            let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
            (failures >= self.threshold).then_some(TripReason::ConsecutiveFailures(failures))
        } else {
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Relaxed);
            }
            None
        }
    }

    fn reset(&self) {
        self.failures.store(0, Relaxed);
    }

    fn current(&self) -> u32 {
        self.failures.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(minimum_calls: u64) -> RateThresholds {
        RateThresholds {
            minimum_calls,
            failure_rate: 50.0,
            slow_call_rate: Some(100.0),
        }
    }

    #[test]
    fn count_window_keeps_only_the_last_n_calls() {
        let w = CountWindow::new(3, thresholds(3));
        assert_eq!(w.record(true, false), None); // 1 call
        assert_eq!(w.record(false, false), None);
        assert_eq!(w.record(false, false), None); // 1/3 failed
        assert_eq!(
            w.counts(),
            Counts {
                total: 3,
                failed: 1,
                slow: 0
            }
        );
        w.record(false, false); // the failure falls out
        assert_eq!(
            w.counts(),
            Counts {
                total: 3,
                failed: 0,
                slow: 0
            }
        );
        assert_eq!(w.record(true, false), None); // 1/3
        assert_eq!(
            w.record(true, false),
            Some(TripReason::FailureRate(200.0 / 3.0))
        );
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn slot_index_matches_modulo_for_every_size() {
        for size in [1u32, 2, 3, 7, 100, 1000, MAX_COUNT_WINDOW_FOR_TEST] {
            let w = CountWindow::new(size, thresholds(1));
            for position in [0u32, 1, size - 1, size, size + 1, u32::MAX - 1, u32::MAX] {
                assert_eq!(
                    w.slot_index(position),
                    (position % size) as usize,
                    "{position} % {size}"
                );
            }
        }
    }
    const MAX_COUNT_WINDOW_FOR_TEST: u32 = super::super::config::MAX_COUNT_WINDOW;

    #[test]
    fn time_window_drops_calls_older_than_its_length() {
        let s = NANOS_PER_SECOND;
        let w = TimeWindow::new(2, thresholds(100), 0);
        w.record(true, false, 0);
        w.record(false, true, s / 2);
        assert_eq!(
            w.counts(s / 2),
            Counts {
                total: 2,
                failed: 1,
                slow: 1
            }
        );
        w.record(false, false, s + 1);
        assert_eq!(
            w.counts(s + 1),
            Counts {
                total: 3,
                failed: 1,
                slow: 1
            }
        );
        // Second 0 leaves the two-second window when second 2 starts.
        assert_eq!(
            w.counts(2 * s),
            Counts {
                total: 1,
                failed: 0,
                slow: 0
            }
        );
        assert_eq!(w.counts(10 * s), Counts::default());
        w.record(true, false, 10 * s);
        assert_eq!(
            w.counts(10 * s),
            Counts {
                total: 1,
                failed: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn consecutive_failures_reset_on_success() {
        let w = ConsecutiveFailures::new(2);
        assert_eq!(w.record(true), None);
        assert_eq!(w.record(false), None);
        assert_eq!(w.record(true), None);
        assert_eq!(w.record(true), Some(TripReason::ConsecutiveFailures(2)));
    }
}

/// Model checks of the lock-free windows: `scripts/loom.sh`.
#[cfg(all(test, palisade_loom))]
mod loom_tests {
    use super::*;

    fn thresholds() -> RateThresholds {
        RateThresholds {
            minimum_calls: 1,
            failure_rate: 100.0,
            slow_call_rate: None,
        }
    }

    /// The packed sum equals the slots once writers are done, whatever the
    /// interleaving of swaps and sum updates, including with a reset racing
    /// the records and two writers landing on one slot.
    #[test]
    fn count_window_sum_matches_slots_after_racing_records_and_reset() {
        loom::model(|| {
            let window = loom::sync::Arc::new(CountWindow::new(2, thresholds()));
            let writers: Vec<_> = [(true, false), (false, true)]
                .into_iter()
                .map(|(failed, slow)| {
                    let window = window.clone();
                    loom::thread::spawn(move || {
                        window.record(failed, slow);
                        window.record(!failed, false);
                    })
                })
                .collect();
            window.reset();
            for writer in writers {
                writer.join().expect("writer");
            }
            let mut expected = Counts::default();
            for slot in window.slots.iter() {
                let value = slot.load(Relaxed);
                expected.total += u64::from(value & SLOT_RECORDED);
                expected.failed += u64::from((value & SLOT_FAILED) >> 1);
                expected.slow += u64::from((value & SLOT_SLOW) >> 2);
            }
            assert_eq!(window.unpack(window.sum.load(Relaxed)), Some(expected));
        });
    }

    /// Concurrent records in one second are all counted, and a rotation into
    /// a new second racing a record never loses the mark of the window start.
    #[test]
    fn time_window_counts_every_record_across_a_rotation() {
        loom::model(|| {
            let window = loom::sync::Arc::new(TimeWindow::new(2, thresholds(), 0));
            let second = NANOS_PER_SECOND;
            let other = {
                let window = window.clone();
                loom::thread::spawn(move || {
                    window.record(true, false, second);
                })
            };
            window.record(false, false, 0);
            window.record(false, false, second + 1);
            other.join().expect("writer");
            assert_eq!(
                window.counts(second + 1),
                Counts {
                    total: 3,
                    failed: 1,
                    slow: 0
                }
            );
        });
    }
}
