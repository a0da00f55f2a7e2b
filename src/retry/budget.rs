//! Retry budgets: how many retries the clones of a service may make
//! between them.
//!
//! Retrying helps when a call failed by bad luck and hurts when the
//! dependency is down: then every caller multiplies its load by the number
//! of attempts, just when it can least take it (a retry storm). A
//! [`RetryBudget`] keeps retries to a fraction of the traffic, as Finagle's
//! `RetryBudget` and tower's `TpsBudget` do. It is a bank of tokens: every
//! first attempt deposits `retry_ratio` of a token, every retry must
//! withdraw a whole one, and a reserve of `min_retries_per_second` lets a
//! quiet service retry at all. Deposits and withdrawals count for `ttl`
//! only, so the budget follows recent traffic and refills as time passes.
//! Clones of a budget share one bank: give one budget to every service
//! calling the same dependency.
//!
//! ## The rule
//!
//! A withdrawal succeeds, and is recorded, when over the current window
//! (the last `ttl`, see [Granularity](#granularity))
//!
//! ```text
//! min_retries_per_second · ttl + retry_ratio · first_attempts − retries ≥ 1
//! ```
//!
//! so the retries counted in the window never exceed
//! `min_retries_per_second · ttl + retry_ratio · first_attempts`. With the
//! defaults a service may make 100 retries in any 10 s plus one for every
//! five first attempts: once the reserve is spent, retries add at most 20 %
//! to the load.
//!
//! ## Options
//!
//! | builder method | default | meaning | rule checked by `build()` |
//! |---|---|---|---|
//! | [`ttl`](RetryBudgetBuilder::ttl) | 10 s | how long deposits and withdrawals count | 1 s to 60 s |
//! | [`min_retries_per_second`](RetryBudgetBuilder::min_retries_per_second) | 10 | retries always allowed, per second of `ttl` | any `u32`, 0 for none |
//! | [`retry_ratio`](RetryBudgetBuilder::retry_ratio) | 0.2 | tokens deposited by each first attempt | finite, 0 to 1000 |
//!
//! ## Granularity
//!
//! Time is counted in ten buckets of `ttl / 10` (rounded down to the
//! nanosecond), from the moment the budget is built. The window is the
//! current bucket and the nine before it, so a withdrawal counts from the
//! moment it is made until the bucket one `ttl` after its own begins:
//! between `0.9 · ttl` and `ttl`, never longer. A deposit counts in the
//! newest bucket any caller has seen: withdrawals, [`available`](RetryBudget::available)
//! and one deposit in 64 on each thread's stripe read the clock and move
//! the window, the other deposits do not read it. So a deposit counts for
//! `ttl` at most, never longer, and may count for less (down to the time
//! left since the window last moved): on a thread making a few calls per
//! bucket, its deposits may expire up to 63 of its calls early. That errs
//! towards fewer retries, and only at traffic where the reserve, not the
//! deposits, holds most of the tokens. Tokens are
//! counted in millionths: `retry_ratio` is rounded to the nearest
//! millionth of a token, the reserve `min_retries_per_second · ttl` is
//! exact to a millionth of a token, and [`available`](RetryBudget::available)
//! rounds down to whole retries.
//!
//! ## Cost
//!
//! [`deposit`](RetryBudget::deposit), called for every request, takes no
//! lock, allocates nothing and does not read the clock: one load and one
//! relaxed `fetch_add` on this thread's stripe of a counter striped over
//! cache lines (so threads depositing at once do not contend). One deposit in 64
//! on a stripe also reads the clock and, the first in a new bucket, records
//! the running total where that bucket starts (a few more atomic
//! operations). [`withdraw`](RetryBudget::withdraw) and
//! [`available`](RetryBudget::available) hold a `parking_lot` mutex for a
//! few dozen loads, so concurrent retries never overdraw the bank; nothing
//! under it waits for I/O.
//!
//! A deposit racing the start of a new bucket may be counted in the new
//! one: it counts from the moment it is added, which a stalled thread can
//! make later than the moment it read the clock. After a whole window
//! without any call, a withdrawal racing the first new deposits may not see
//! them yet. Both are off by the calls in flight at that instant.
//!
//! Time comes from [`tokio::time::Instant`], so tests can pause and advance
//! it; outside a runtime it is the system's monotonic clock.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use palisade::retry::budget::RetryBudget;
//!
//! # fn main() -> Result<(), palisade::ConfigError> {
//! // One retry for every ten first attempts, and no reserve.
//! let budget = RetryBudget::builder()
//!     .ttl(Duration::from_secs(10))
//!     .min_retries_per_second(0)
//!     .retry_ratio(0.1)
//!     .build()?;
//! let shared = budget.clone(); // e.g. held by another clone of the service
//!
//! for _ in 0..50 {
//!     budget.deposit(); // 50 first attempts
//! }
//! assert_eq!(shared.available(), 5);
//!
//! let mut retries = 0;
//! while shared.withdraw() {
//!     retries += 1;
//! }
//! assert_eq!(retries, 5);
//! assert_eq!(budget.exhaustions(), 1); // the refused sixth retry
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use crate::sync::{CachePadded, StripedCounter};

const COMPONENT: &str = "retry budget";

const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
const DEFAULT_RETRY_RATIO: f32 = 0.2;

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(60);
const MAX_RETRY_RATIO: f32 = 1000.0;

/// Buckets per `ttl`; the window is the current bucket and the nine before.
const BUCKETS: u64 = 10;
/// Tokens are counted in millionths.
const MICROS_PER_TOKEN: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// A deposit reads the clock once in this many on its thread's stripe.
const DEPOSITS_PER_CLOCK_READ: u64 = 64;
/// The tag of a mark whose total is being rewritten.
const MARK_WRITING: u64 = u64::MAX;

/// A bank of retry tokens shared by every clone; see the
/// [module documentation](self).
///
/// Cloning is cheap and every clone draws on the same tokens.
#[derive(Clone)]
pub struct RetryBudget {
    bank: Arc<Bank>,
}

impl RetryBudget {
    /// Starts from the defaults: `ttl` 10 s, `min_retries_per_second` 10,
    /// `retry_ratio` 0.2.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ttl: DEFAULT_TTL,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            retry_ratio: DEFAULT_RETRY_RATIO,
        }
    }

    /// Records a first attempt: adds `retry_ratio` of a token. Call it once
    /// per request, never for a retry.
    ///
    /// Takes no lock and allocates nothing.
    #[inline]
    pub fn deposit(&self) {
        let bank = &*self.bank;
        let stripe = bank.deposits.stripe();
        // One deposit in DEPOSITS_PER_CLOCK_READ on each stripe reads the
        // clock and moves the window; the others count in the newest
        // bucket any caller has seen (see "Granularity"), and order
        // nothing: a relaxed add.
        if stripe.load(Relaxed) % DEPOSITS_PER_CLOCK_READ != 0 {
            stripe.fetch_add(1, Relaxed);
        } else {
            bank.deposit_reading_clock(stripe);
        }
    }

    /// Asks to make one retry: returns `true` and takes a whole token when
    /// the budget holds one, `false` (and counts an
    /// [exhaustion](Self::exhaustions)) when it does not.
    ///
    /// Holds a short lock so that concurrent retries never overdraw.
    pub fn withdraw(&self) -> bool {
        let bank = &*self.bank;
        bank.withdraw_at(bank.bucket_at(Instant::now()))
    }

    /// Whole retries the budget would allow right now (for metrics); a
    /// retry racing this call may already have taken one.
    pub fn available(&self) -> u64 {
        let bank = &*self.bank;
        bank.available_at(bank.bucket_at(Instant::now()))
    }

    /// Calls to [`withdraw`](Self::withdraw) that returned `false`, by every
    /// clone, since the budget was built.
    pub fn exhaustions(&self) -> u64 {
        self.bank.exhaustions.load(Relaxed)
    }

    /// How long deposits and withdrawals count.
    pub fn ttl(&self) -> Duration {
        self.bank.ttl
    }

    /// Retries always allowed, per second of [`ttl`](Self::ttl).
    pub fn min_retries_per_second(&self) -> u32 {
        self.bank.min_retries_per_second
    }

    /// Tokens deposited by each first attempt, as configured.
    pub fn retry_ratio(&self) -> f32 {
        self.bank.retry_ratio
    }
}

impl Default for RetryBudget {
    /// `ttl` 10 s, `min_retries_per_second` 10, `retry_ratio` 0.2.
    fn default() -> Self {
        Self {
            bank: Arc::new(Bank::new(
                DEFAULT_TTL,
                DEFAULT_MIN_RETRIES_PER_SECOND,
                DEFAULT_RETRY_RATIO,
            )),
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl())
            .field("min_retries_per_second", &self.min_retries_per_second())
            .field("retry_ratio", &self.retry_ratio())
            .field("exhaustions", &self.exhaustions())
            .finish()
    }
}

/// Builds a [`RetryBudget`]; every setter is checked in
/// [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a retry budget"]
pub struct RetryBudgetBuilder {
    ttl: Duration,
    min_retries_per_second: u32,
    retry_ratio: f32,
}

impl RetryBudgetBuilder {
    /// How long a deposit or a withdrawal counts, 1 s to 60 s. Default 10 s.
    /// The window moves in steps of `ttl / 10`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Retries always allowed per second of `ttl`, whatever the traffic: the
    /// reserve is `min_retries_per_second · ttl` retries per window. Any
    /// value; 0 leaves only what first attempts deposit. Default 10.
    pub fn min_retries_per_second(mut self, retries: u32) -> Self {
        self.min_retries_per_second = retries;
        self
    }

    /// Tokens each first attempt deposits, finite and 0 to 1000, rounded to
    /// the nearest millionth: 0.2 allows one retry for every five first
    /// attempts. Default 0.2.
    pub fn retry_ratio(mut self, ratio: f32) -> Self {
        self.retry_ratio = ratio;
        self
    }

    /// Checks every field and returns the budget, or the first field that
    /// breaks its rule.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return Err(ConfigError::new(
                COMPONENT,
                "ttl",
                format!("must be 1 s to 60 s, got {:?}", self.ttl),
            ));
        }
        let ratio = self.retry_ratio;
        if !(ratio.is_finite() && (0.0..=MAX_RETRY_RATIO).contains(&ratio)) {
            return Err(ConfigError::new(
                COMPONENT,
                "retry_ratio",
                format!("must be finite and 0 to 1000, got {ratio}"),
            ));
        }
        Ok(RetryBudget {
            bank: Arc::new(Bank::new(self.ttl, self.min_retries_per_second, ratio)),
        })
    }
}

/// The shared state behind every clone of a [`RetryBudget`].
///
/// Deposits are one running total; what the window holds is the total now
/// minus the total where the window's oldest bucket began. Those starting
/// totals are the marks, written by whichever caller first sees a bucket
/// begin. Withdrawals, rarer, are counted per bucket under a mutex.
struct Bank {
    /// The newest bucket whose mark has been (or is being) written. Read by
    /// every deposit, so it has a cache line of its own.
    current: CachePadded<AtomicU64>,
    /// First attempts ever made.
    deposits: StripedCounter,
    /// The mark of bucket `b` is in slot `b % BUCKETS`.
    marks: [Mark; BUCKETS as usize],
    withdrawals: Mutex<Withdrawals>,
    exhaustions: AtomicU64,
    origin: Instant,
    bucket_nanos: u64,
    /// `min_retries_per_second · ttl`, in millionths of a token.
    reserve: u64,
    /// `retry_ratio`, in millionths of a token.
    per_deposit: u64,
    ttl: Duration,
    min_retries_per_second: u32,
    retry_ratio: f32,
}

/// The deposit total where a bucket began, as a seqlock: `bucket` is the
/// bucket the total belongs to, or [`MARK_WRITING`] while it is rewritten.
/// Tags only grow, so a reader that sees the same tag before and after
/// reading the total has read that bucket's total.
struct Mark {
    bucket: AtomicU64,
    total: AtomicU64,
}

/// Withdrawals per bucket of the window ending at `bucket`.
struct Withdrawals {
    bucket: u64,
    counts: [u64; BUCKETS as usize],
}

impl Bank {
    fn new(ttl: Duration, min_retries_per_second: u32, retry_ratio: f32) -> Self {
        let ttl_nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        // tokens/s · ns · 10⁶ µtokens/token / 10⁹ ns/s = µtokens.
        let reserve = u128::from(min_retries_per_second) * u128::from(ttl_nanos) / 1_000;
        Self {
            // Buckets are numbered from BUCKETS so that the window of the
            // first bucket, 1..=BUCKETS, needs no special case.
            current: CachePadded(AtomicU64::new(BUCKETS)),
            deposits: StripedCounter::new(),
            marks: std::array::from_fn(|slot| {
                let bucket = if slot == 0 { BUCKETS } else { slot as u64 };
                Mark {
                    bucket: AtomicU64::new(bucket),
                    total: AtomicU64::new(0),
                }
            }),
            withdrawals: Mutex::new(Withdrawals {
                bucket: BUCKETS,
                counts: [0; BUCKETS as usize],
            }),
            exhaustions: AtomicU64::new(0),
            origin: Instant::now(),
            bucket_nanos: (ttl_nanos / BUCKETS).max(1),
            reserve: u64::try_from(reserve).unwrap_or(u64::MAX),
            // `build` checked 0 <= ratio <= 1000: at most 10⁹ µtokens.
            per_deposit: (f64::from(retry_ratio) * MICROS_PER_TOKEN as f64).round() as u64,
            ttl,
            min_retries_per_second,
            retry_ratio,
        }
    }

    #[inline]
    fn bucket_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin);
        let nanos = elapsed
            .as_secs()
            .saturating_mul(NANOS_PER_SECOND)
            .saturating_add(u64::from(elapsed.subsec_nanos()));
        nanos / self.bucket_nanos + BUCKETS
    }

    #[inline]
    fn mark(&self, bucket: u64) -> &Mark {
        &self.marks[(bucket % BUCKETS) as usize]
    }

    /// The one deposit in [`DEPOSITS_PER_CLOCK_READ`] on a stripe that
    /// reads the clock and moves the window first. Its add is a release:
    /// a caller that sees it in the total also sees that this deposit read
    /// `current` before any later move (see [`rotate_to`](Self::rotate_to)).
    #[cold]
    #[inline(never)]
    fn deposit_reading_clock(&self, stripe: &AtomicU64) {
        let bucket = self.bucket_at(Instant::now());
        if bucket > self.current.load(Relaxed) {
            self.rotate_to(bucket);
        }
        stripe.fetch_add(1, AcqRel);
    }

    /// A deposit that read the clock and found `bucket` (the loom models
    /// race these).
    #[cfg(all(test, palisade_loom))]
    fn deposit_at(&self, bucket: u64) {
        if bucket > self.current.load(Relaxed) {
            self.rotate_to(bucket);
        }
        self.deposits.add(1);
    }

    /// Makes `bucket` current, if no caller has gone past it: the caller
    /// that moves `current` writes the marks of the buckets it starts that
    /// are still in the window.
    fn rotate_to(&self, bucket: u64) {
        let mut current = self.current.load(Acquire);
        while bucket > current {
            // Read before the move. A deposit in this total saw a bucket
            // newer than `current` only by seeing `current` move past it,
            // and then the exchange below fails and the total is read
            // again: every deposit counted here belongs to `current` or
            // before, and one racing the move counts from the new bucket.
            let total = self.deposits.sum();
            match self
                .current
                .compare_exchange(current, bucket, AcqRel, Acquire)
            {
                Ok(_) => {
                    let first = (current + 1).max(bucket + 1 - BUCKETS);
                    for started in first..=bucket {
                        self.write_mark(started, total);
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn write_mark(&self, bucket: u64, total: u64) {
        let mark = self.mark(bucket);
        let mut tag = mark.bucket.load(Acquire);
        loop {
            // A newer bucket owns the slot, or another caller is writing
            // it: it has nothing to learn from this older or equal mark.
            if tag >= bucket {
                return;
            }
            match mark
                .bucket
                .compare_exchange_weak(tag, MARK_WRITING, Acquire, Acquire)
            {
                Ok(_) => break,
                Err(actual) => tag = actual,
            }
        }
        // Release: a reader that sees this total also sees MARK_WRITING.
        mark.total.store(total, Release);
        mark.bucket.store(bucket, Release);
    }

    /// The deposit total where `bucket` began, unless its mark is being
    /// written or belongs to another bucket.
    fn read_mark(&self, bucket: u64) -> Option<u64> {
        let mark = self.mark(bucket);
        if mark.bucket.load(Acquire) != bucket {
            return None;
        }
        let total = mark.total.load(Acquire);
        (mark.bucket.load(Relaxed) == bucket).then_some(total)
    }

    /// First attempts counted in the window that ends with `current`.
    fn deposits_in_window(&self, current: u64) -> u64 {
        // Marks grow with their bucket, so the smallest readable one is the
        // oldest; one being written (or lost to a writer that stalled) is
        // skipped for the next, which counts fewer deposits. No readable
        // mark: a caller has just started the window after a whole window
        // without calls, and only the calls racing it were deposited.
        let base = (current + 1 - BUCKETS..=current)
            .filter_map(|bucket| self.read_mark(bucket))
            .min();
        match base {
            Some(base) => self.deposits.sum().saturating_sub(base),
            None => 0,
        }
    }

    /// The tokens in the window ending at `current`, in millionths.
    fn balance(&self, current: u64, withdrawals: &Withdrawals) -> i128 {
        let deposited = i128::from(self.deposits_in_window(current)) * i128::from(self.per_deposit);
        let withdrawn = i128::from(withdrawals.in_window()) * i128::from(MICROS_PER_TOKEN);
        i128::from(self.reserve) + deposited - withdrawn
    }

    /// Locks the withdrawals and moves them to the newest bucket any caller
    /// has seen, at least `bucket`.
    fn window_at(&self, bucket: u64) -> (u64, parking_lot::MutexGuard<'_, Withdrawals>) {
        self.rotate_to(bucket);
        let mut withdrawals = self.withdrawals.lock();
        let current = bucket.max(self.current.load(Acquire));
        withdrawals.advance_to(current);
        (current, withdrawals)
    }

    fn withdraw_at(&self, bucket: u64) -> bool {
        let (current, mut withdrawals) = self.window_at(bucket);
        if self.balance(current, &withdrawals) >= i128::from(MICROS_PER_TOKEN) {
            withdrawals.record();
            true
        } else {
            drop(withdrawals);
            self.exhaustions.fetch_add(1, Relaxed);
            false
        }
    }

    fn available_at(&self, bucket: u64) -> u64 {
        let (current, withdrawals) = self.window_at(bucket);
        let tokens = self.balance(current, &withdrawals).max(0) / i128::from(MICROS_PER_TOKEN);
        u64::try_from(tokens).unwrap_or(u64::MAX)
    }
}

impl Withdrawals {
    /// Forgets the buckets that left the window ending at `bucket`.
    fn advance_to(&mut self, bucket: u64) {
        if bucket <= self.bucket {
            return;
        }
        let first = (self.bucket + 1).max(bucket + 1 - BUCKETS);
        for started in first..=bucket {
            self.counts[(started % BUCKETS) as usize] = 0;
        }
        self.bucket = bucket;
    }

    fn record(&mut self) {
        let count = &mut self.counts[(self.bucket % BUCKETS) as usize];
        *count = count.saturating_add(1);
    }

    fn in_window(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MILLISECOND: Duration = Duration::from_millis(1);

    fn budget(min_retries_per_second: u32, retry_ratio: f32) -> RetryBudget {
        RetryBudget::builder()
            .ttl(10 * SECOND)
            .min_retries_per_second(min_retries_per_second)
            .retry_ratio(retry_ratio)
            .build()
            .expect("valid budget")
    }

    fn deposit(budget: &RetryBudget, first_attempts: u32) {
        for _ in 0..first_attempts {
            budget.deposit();
        }
    }

    /// Withdraws until refused; only for budgets holding few tokens.
    fn withdraw_all(budget: &RetryBudget) -> u64 {
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
        }
        retries
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_first_attempts_at_ratio_one_fifth_allow_exactly_two_hundred_retries() {
        let budget = budget(0, 0.2);
        assert!(!budget.withdraw(), "nothing deposited, no reserve");
        deposit(&budget, 1000);
        assert_eq!(budget.available(), 200);
        for retry in 0..200 {
            assert!(budget.withdraw(), "retry {retry}");
        }
        assert!(!budget.withdraw());
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn min_retries_per_second_alone_allows_min_times_ttl_per_window_and_refills() {
        let budget = budget(10, 0.0);
        assert_eq!(budget.available(), 100);
        assert_eq!(withdraw_all(&budget), 100);
        tokio::time::advance(5 * SECOND).await;
        assert!(!budget.withdraw(), "the retries made at 0 s still count");
        tokio::time::advance(5 * SECOND - MILLISECOND).await;
        assert!(!budget.withdraw());
        tokio::time::advance(MILLISECOND).await;
        assert_eq!(budget.available(), 100, "a ttl later they have expired");
        assert_eq!(withdraw_all(&budget), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_min_retries_per_second_is_always_allowed() {
        let budget = budget(1, 0.0);
        for second in 0..100 {
            assert!(budget.withdraw(), "at {second} s");
            tokio::time::advance(SECOND).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_ttl() {
        let budget = budget(0, 1.0);
        deposit(&budget, 10);
        tokio::time::advance(10 * SECOND - MILLISECOND).await;
        assert_eq!(budget.available(), 10);
        tokio::time::advance(MILLISECOND).await;
        assert_eq!(budget.available(), 0);
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deposit_counts_until_the_bucket_one_ttl_after_its_own_begins() {
        let budget = budget(0, 1.0);
        // Buckets are 1 s: this deposit is in the one from 0.5 s to 1 s.
        tokio::time::advance(SECOND / 2).await;
        budget.deposit();
        tokio::time::advance(9 * SECOND).await; // 9.5 s
        assert_eq!(budget.available(), 1);
        tokio::time::advance(SECOND / 2 - MILLISECOND).await; // 9.999 s
        assert_eq!(budget.available(), 1);
        tokio::time::advance(MILLISECOND).await; // 10 s: 0.95 ttl after it
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_between_clock_reads_count_in_the_newest_bucket_seen_never_longer() {
        let budget = budget(0, 1.0);
        budget.deposit(); // reads the clock: bucket 0 s to 1 s
        tokio::time::advance(5 * SECOND).await;
        // Deposits 2 to 64 of this thread's stripe do not read the clock:
        // they count in the 0 s bucket, the newest any caller has seen.
        deposit(&budget, 9);
        assert_eq!(
            budget.available(),
            10,
            "available() moves the window to 5 s"
        );
        deposit(&budget, 3); // counted from 5 s, the window's bucket now
        tokio::time::advance(5 * SECOND).await; // 10 s
        assert_eq!(budget.available(), 3, "the first ten expired at 10 s");
        tokio::time::advance(5 * SECOND).await; // 15 s
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_deposit_in_sixty_four_moves_the_window() {
        let budget = budget(0, 1.0);
        deposit(&budget, 64); // the first read the clock, at 0 s
        tokio::time::advance(5 * SECOND).await;
        deposit(&budget, 1); // the 65th reads the clock: bucket 5 s
        tokio::time::advance(5 * SECOND).await; // 10 s
        assert_eq!(budget.available(), 1, "the 65th counts from 5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_storm_makes_at_most_min_ttl_plus_a_fifth_of_first_attempts() {
        let budget = RetryBudget::default();
        let mut retries = 0u64;
        let mut refused_requests = 0u64;
        // 1000 requests over one second against a dependency that is down:
        // each first attempt fails and tries up to 3 retries, all failing.
        for _ in 0..1000 {
            budget.deposit();
            for _ in 0..3 {
                if !budget.withdraw() {
                    refused_requests += 1;
                    break;
                }
                retries += 1;
            }
            tokio::time::advance(MILLISECOND).await;
        }
        // min·ttl + 0.2·1000 = 100 + 200; without a budget, 3000.
        assert!(retries <= 300, "{retries} retries");
        assert_eq!(retries, 300, "the whole budget is used, exactly");
        assert_eq!(budget.exhaustions(), refused_requests);
        assert!(refused_requests > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_withdrawals_are_counted_as_exhaustions() {
        let budget = budget(0, 0.5);
        deposit(&budget, 2);
        assert_eq!(budget.exhaustions(), 0);
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        assert!(!budget.withdraw());
        assert_eq!(budget.exhaustions(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let budget = budget(0, 0.5);
        let clone = budget.clone();
        deposit(&clone, 4);
        assert_eq!(budget.available(), 2);
        assert!(budget.withdraw());
        assert_eq!(clone.available(), 1);
        assert!(clone.withdraw());
        assert!(!budget.withdraw());
        assert_eq!(clone.exhaustions(), 1);
    }

    #[test]
    fn each_invalid_option_names_its_field() {
        let cases = [
            (RetryBudget::builder().ttl(Duration::ZERO), "ttl"),
            (RetryBudget::builder().ttl(SECOND - MILLISECOND), "ttl"),
            (RetryBudget::builder().ttl(60 * SECOND + MILLISECOND), "ttl"),
            (RetryBudget::builder().retry_ratio(-0.1), "retry_ratio"),
            (RetryBudget::builder().retry_ratio(1000.1), "retry_ratio"),
            (RetryBudget::builder().retry_ratio(f32::NAN), "retry_ratio"),
            (
                RetryBudget::builder().retry_ratio(f32::INFINITY),
                "retry_ratio",
            ),
        ];
        for (builder, field) in cases {
            let err = builder.clone().build().expect_err("invalid");
            assert_eq!(err.component(), "retry budget", "{builder:?}");
            assert_eq!(err.field(), field, "{builder:?}");
        }
        let err = RetryBudget::builder()
            .ttl(SECOND / 2)
            .build()
            .expect_err("too short");
        assert_eq!(
            err.to_string(),
            "invalid retry budget configuration: `ttl` must be 1 s to 60 s, got 500ms"
        );
        let err = RetryBudget::builder()
            .retry_ratio(f32::NAN)
            .build()
            .expect_err("not a number");
        assert_eq!(
            err.to_string(),
            "invalid retry budget configuration: `retry_ratio` must be finite and 0 to 1000, got NaN"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_limits_of_each_option_are_accepted_without_overflow() {
        let largest = RetryBudget::builder()
            .ttl(60 * SECOND)
            .min_retries_per_second(u32::MAX)
            .retry_ratio(1000.0)
            .build()
            .expect("largest values");
        assert_eq!(largest.available(), u64::from(u32::MAX) * 60);
        largest.deposit();
        assert_eq!(largest.available(), u64::from(u32::MAX) * 60 + 1000);

        let smallest = RetryBudget::builder()
            .ttl(SECOND)
            .min_retries_per_second(0)
            .retry_ratio(0.0)
            .build()
            .expect("smallest values");
        deposit(&smallest, 1000);
        assert!(!smallest.withdraw(), "a zero budget allows no retry");
    }

    #[test]
    fn the_default_is_ten_seconds_ten_per_second_and_one_fifth() {
        let budget = RetryBudget::default();
        assert_eq!(budget.ttl(), 10 * SECOND);
        assert_eq!(budget.min_retries_per_second(), 10);
        assert_eq!(budget.retry_ratio(), 0.2);
        assert_eq!(budget.available(), 100);
        assert_eq!(
            format!("{budget:?}"),
            "RetryBudget { ttl: 10s, min_retries_per_second: 10, retry_ratio: 0.2, exhaustions: 0 }"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_ratio_is_rounded_to_the_nearest_millionth_of_a_token() {
        // 0.7f32 is 0.69999998...; a thousand deposits still make 700.
        let budget = budget(0, 0.7);
        deposit(&budget, 1000);
        assert_eq!(budget.available(), 700);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fractional_reserve_adds_up_with_deposits() {
        let budget = RetryBudget::builder()
            .ttl(SECOND + SECOND / 2)
            .min_retries_per_second(1)
            .retry_ratio(0.5)
            .build()
            .expect("valid budget");
        assert_eq!(budget.available(), 1, "1.5 tokens of reserve");
        budget.deposit();
        assert_eq!(budget.available(), 2);
        assert_eq!(withdraw_all(&budget), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_idle_for_many_windows_starts_again_from_its_reserve() {
        let budget = budget(1, 0.5);
        deposit(&budget, 100);
        assert_eq!(withdraw_all(&budget), 60);
        tokio::time::advance(1000 * 10 * SECOND + SECOND / 3).await;
        assert_eq!(budget.available(), 10);
        deposit(&budget, 4);
        assert_eq!(budget.available(), 12);
        tokio::time::advance(5 * SECOND).await;
        deposit(&budget, 4);
        assert_eq!(withdraw_all(&budget), 14);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_deposits_from_four_threads_are_all_counted() {
        let budget = budget(0, 0.2);
        let runtime = tokio::runtime::Handle::current();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let budget = budget.clone();
                let runtime = runtime.clone();
                // Entering the runtime shares its paused clock.
                scope.spawn(move || {
                    let _clock = runtime.enter();
                    deposit(&budget, 10_000);
                });
            }
        });
        assert_eq!(budget.available(), 8_000);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_withdrawals_never_overdraw() {
        let budget = budget(0, 1.0);
        deposit(&budget, 200);
        let runtime = tokio::runtime::Handle::current();
        let granted: u64 = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let budget = budget.clone();
                    let runtime = runtime.clone();
                    scope.spawn(move || {
                        let _clock = runtime.enter();
                        (0..100).filter(|_| budget.withdraw()).count() as u64
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| thread.join().expect("no panic"))
                .sum()
        });
        assert_eq!(granted, 200);
        assert_eq!(budget.exhaustions(), 200);
    }
}

/// Model checks of the lock-free deposits: `scripts/loom.sh`.
#[cfg(all(test, palisade_loom))]
mod loom_tests {
    use super::*;

    fn bank() -> loom::sync::Arc<Bank> {
        loom::sync::Arc::new(Bank::new(Duration::from_secs(10), 0, 1.0))
    }

    /// Two callers start new buckets at once, one skipping a whole window:
    /// whatever the interleaving, both of their deposits are counted.
    #[test]
    fn racing_rotations_count_every_deposit() {
        loom::model(|| {
            let bank = bank();
            let other = {
                let bank = bank.clone();
                loom::thread::spawn(move || bank.deposit_at(21))
            };
            bank.deposit_at(22);
            other.join().expect("depositor");
            assert_eq!(bank.available_at(22), 2);
        });
    }

    /// A reader racing a rotation past a whole window never counts the
    /// deposits that left it (a torn mark would bring them back), and the
    /// deposit that started the new window is counted.
    #[test]
    fn a_reader_racing_a_rotation_never_counts_expired_deposits() {
        loom::model(|| {
            let bank = bank();
            bank.deposit_at(10);
            bank.deposit_at(10);
            let other = {
                let bank = bank.clone();
                loom::thread::spawn(move || bank.deposit_at(21))
            };
            assert!(bank.available_at(21) <= 1);
            other.join().expect("depositor");
            assert_eq!(bank.available_at(21), 1);
        });
    }
}
