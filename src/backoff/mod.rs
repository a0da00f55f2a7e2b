//! Backoff strategies: how long to wait before each retry.
//!
//! A [`Backoff`] turns "retry number `n` is about to happen" into a delay.
//! It knows nothing about tower, tokio or clocks: the retry layer, the saga
//! executor, service discovery's watch loops and the balancer's outlier
//! ejection all ask it for delays and do the waiting themselves. Ask it one
//! delay at a time with [`Backoff::delay`], walk the delays as an iterator
//! with [`Backoff::delays`] (random jitter seeded from the thread's
//! generator) or [`Backoff::delays_with_rng`] (deterministic with a seeded
//! generator), or, for a loop that retries until it succeeds, take a
//! never-ending [`BackoffSchedule`] with [`Backoff::schedule`] and
//! [`reset`](BackoffSchedule::reset) it after each success.
//!
//! ```
//! use std::time::Duration;
//! use palisade::backoff::{Backoff, Jitter};
//!
//! # fn main() -> Result<(), palisade::ConfigError> {
//! // 100 ms, doubling, never more than one second apart.
//! let backoff = Backoff::exponential(Duration::from_millis(100), 2.0)
//!     .max_interval(Duration::from_secs(1))
//!     .build()?;
//! let delays: Vec<Duration> = backoff.delays().take(6).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis));
//!
//! // The same with full jitter: each delay is drawn from [0, b(n)], so
//! // clients that failed together do not retry together.
//! let jittered = Backoff::exponential(Duration::from_millis(100), 2.0)
//!     .max_interval(Duration::from_secs(1))
//!     .jitter(Jitter::Full)
//!     .build()?;
//! for (delay, ceiling) in jittered.delays().zip(delays) {
//!     assert!(delay <= ceiling);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Strategies
//!
//! The base delay `b(n)` before retry `n` (`n = 1` is the first retry) is,
//! for every strategy, capped at `max_interval`. It is computed without
//! overflow or NaN for any `n` up to `u32::MAX`: when the formula exceeds
//! the cap the delay is the cap.
//!
//! | constructor | `b(n)` | rules checked by `build()` |
//! |---|---|---|
//! | [`Backoff::constant`]`(d)` | `d` | `max_interval >= d`; `d` may be zero (retry at once) |
//! | [`Backoff::linear`]`(initial, increment)` | `initial + increment·(n−1)` | `max_interval >= initial`; both may be zero |
//! | [`Backoff::exponential`]`(initial, multiplier)` | `initial·multiplier^(n−1)` | `initial > 0`; `multiplier` finite and `>= 1`; `max_interval >= initial` |
//! | [`Backoff::custom`]`(f)` | `f(n, last_outcome)`, `None` stops retrying | jitter must be [`Jitter::None`] |
//!
//! For every strategy `max_interval` must be greater than zero.
//! [`Backoff::exponential`] computes `initial·multiplier^(n−1)` in `f64`
//! nanoseconds and rounds down, so delays past about 104 days (2^53 ns) are
//! exact only to the precision of an `f64`.
//!
//! ## Jitter
//!
//! Jitter spreads the retries of many clients that failed at the same time,
//! following the AWS Architecture Blog's "Exponential Backoff And Jitter".
//! Each jittered delay draws one uniform number of whole nanoseconds
//! (`rng.random_range(lo..=hi)` on `u128`), so a seeded generator gives the
//! same delays every time.
//!
//! | [`Jitter`] | delay before retry `n` |
//! |---|---|
//! | [`None`](Jitter::None) | `b(n)` |
//! | [`Full`](Jitter::Full) | uniform in `[0, b(n)]` |
//! | [`Equal`](Jitter::Equal) | `⌊b(n)/2⌋ + uniform in [0, b(n) − ⌊b(n)/2⌋]`, that is within `[⌊b(n)/2⌋, b(n)]` |
//! | [`Decorrelated`](Jitter::Decorrelated) | `min(max_interval, uniform in [b(1), max(b(1), 3·previous)])` |
//!
//! `previous` is the delay used before the previous retry, and `b(1)` before
//! the first. Decorrelated jitter grows from the previous delay rather than
//! from `n`, so of the strategy it only uses the first delay `b(1)`: a
//! linear or exponential strategy with decorrelated jitter behaves the same
//! as a constant `b(1)` with decorrelated jitter (and one whose `b(1)` is
//! zero always waits zero). Every delay, jittered or not, is within
//! `[0, max_interval]`.
//!
//! ## Options and defaults
//!
//! | builder method | default | meaning |
//! |---|---|---|
//! | [`max_interval`](BackoffBuilder::max_interval) | 10 s | the longest delay; every delay, including a custom one, is capped at it |
//! | [`jitter`](BackoffBuilder::jitter) | [`Jitter::None`] | how the base delay is randomized |
//!
//! [`Backoff::default()`](Backoff::default) is
//! `exponential(100 ms, 2.0)` with a 10 s `max_interval` and
//! [`Jitter::Full`]: the choice the AWS article recommends.
//!
//! ## Custom delays
//!
//! [`Backoff::custom`] computes each delay from the retry number and the
//! [`Outcome`] that failed, and may stop retrying by returning `None`. Jitter
//! does not apply to it (randomize inside the function if you need to), but
//! `max_interval` still caps what it returns.
//!
//! ```
//! use std::time::Duration;
//! use palisade::classify::Outcome;
//! use palisade::backoff::Backoff;
//!
//! # fn main() -> Result<(), palisade::ConfigError> {
//! // 1 s, 5 s, 30 s (capped at 20 s), then give up.
//! let backoff = Backoff::custom(|retry, _last: &Outcome| match retry {
//!     1 => Some(Duration::from_secs(1)),
//!     2 => Some(Duration::from_secs(5)),
//!     3 => Some(Duration::from_secs(30)),
//!     _ => None,
//! })
//! .max_interval(Duration::from_secs(20))
//! .build()?;
//! let delays: Vec<Duration> = backoff.delays().collect();
//! assert_eq!(delays, [1, 5, 20].map(Duration::from_secs));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::iter::FusedIterator;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::classify::Outcome;
use crate::error::ConfigError;

mod schedule;

pub use self::schedule::BackoffSchedule;

const COMPONENT: &str = "backoff";

/// The default cap on every delay.
const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(10);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The outcome [`Delays`] reports to a custom backoff: it has no real
/// outcome, and a backoff is only asked for a delay when a retry is wanted.
const RETRYABLE_FAILURE: Outcome = Outcome::Failure { retryable: true };

/// How a base delay is randomized; see the [module documentation](self)
/// for the formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness: the delay is the base delay `b(n)`. The builder's default.
    #[default]
    None,
    /// Uniform in `[0, b(n)]`.
    Full,
    /// Half the base delay plus uniform in `[0, b(n)/2]`: within `[b(n)/2, b(n)]`.
    Equal,
    /// Uniform in `[b(1), 3 × previous delay]`, capped at `max_interval`.
    Decorrelated,
}

/// The signature of a custom backoff function.
type DelayFn = dyn Fn(u32, &Outcome) -> Option<Duration> + Send + Sync;

/// Where the base delays come from.
#[derive(Clone)]
enum DelaySource {
    Formula(Formula),
    Custom(Arc<DelayFn>),
}

impl fmt::Debug for DelaySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelaySource::Formula(formula) => formula.fmt(f),
            DelaySource::Custom(_) => f.write_str("Custom(<fn>)"),
        }
    }
}

/// The built-in strategies.
#[derive(Debug, Clone, Copy)]
enum Formula {
    Constant {
        delay: Duration,
    },
    Linear {
        initial: Duration,
        increment: Duration,
    },
    Exponential {
        initial: Duration,
        multiplier: f64,
    },
}

impl Formula {
    /// `b(retry)` in nanoseconds, at most `cap`. `retry` is at least 1.
    fn base_nanos(self, retry: u32, cap: u128) -> u128 {
        let steps = retry.saturating_sub(1);
        match self {
            Formula::Constant { delay } => delay.as_nanos().min(cap),
            Formula::Linear { initial, increment } => increment
                .as_nanos()
                .saturating_mul(u128::from(steps))
                .saturating_add(initial.as_nanos())
                .min(cap),
            Formula::Exponential {
                initial,
                multiplier,
            } => {
                let initial = initial.as_nanos();
                // Validated: multiplier is finite and at least 1. Keep the
                // first delay (and a multiplier of exactly 1) free of float
                // rounding.
                if steps == 0 || multiplier <= 1.0 {
                    return initial.min(cap);
                }
                // `initial > 0` and `multiplier > 1`, so the product is
                // positive and either finite or +inf, never NaN.
                let grown = initial as f64 * multiplier.powf(f64::from(steps));
                if grown < cap as f64 {
                    // `as` rounds toward zero; `cap as f64` may round above
                    // `cap`, hence the `min`.
                    (grown as u128).min(cap)
                } else {
                    cap
                }
            }
        }
    }

    /// The first delay `b(1)`, uncapped.
    fn first(self) -> Duration {
        match self {
            Formula::Constant { delay } => delay,
            Formula::Linear { initial, .. } | Formula::Exponential { initial, .. } => initial,
        }
    }
}

/// A backoff strategy: the delay before each retry.
///
/// Built and validated by the builders returned from [`Backoff::constant`],
/// [`Backoff::linear`], [`Backoff::exponential`] and [`Backoff::custom`];
/// immutable afterwards and cheap to clone (a custom function is shared by
/// every clone). See the [module documentation](self) for the formulas.
#[derive(Debug, Clone)]
pub struct Backoff {
    source: DelaySource,
    max_interval: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// `exponential(100 ms, 2.0)`, `max_interval` 10 s, [`Jitter::Full`].
    fn default() -> Self {
        Self {
            source: DelaySource::Formula(Formula::Exponential {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
            }),
            max_interval: DEFAULT_MAX_INTERVAL,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The same delay `delay` before every retry; zero retries at once.
    pub fn constant(delay: Duration) -> BackoffBuilder {
        BackoffBuilder::new(DelaySource::Formula(Formula::Constant { delay }))
    }

    /// `initial`, then `increment` more before each further retry:
    /// `initial + increment·(n−1)`.
    pub fn linear(initial: Duration, increment: Duration) -> BackoffBuilder {
        BackoffBuilder::new(DelaySource::Formula(Formula::Linear { initial, increment }))
    }

    /// `initial`, multiplied by `multiplier` before each further retry:
    /// `initial·multiplier^(n−1)`. `initial` must be greater than zero and
    /// `multiplier` finite and at least 1.
    pub fn exponential(initial: Duration, multiplier: f64) -> BackoffBuilder {
        BackoffBuilder::new(DelaySource::Formula(Formula::Exponential {
            initial,
            multiplier,
        }))
    }

    /// An escape hatch: `f(retry, last_outcome)` returns the delay before
    /// retry number `retry` (1 = the first retry) after `last_outcome`
    /// failed, or `None` to stop retrying. Jitter does not apply;
    /// `max_interval` still caps the result.
    pub fn custom(
        f: impl Fn(u32, &Outcome) -> Option<Duration> + Send + Sync + 'static,
    ) -> BackoffBuilder {
        BackoffBuilder::new(DelaySource::Custom(Arc::new(f)))
    }

    /// The delay before retry number `retry` (1 = the first retry; 0 is
    /// treated as 1), given the outcome that failed and the delay used
    /// before the previous retry (`None` before the first). Only
    /// [`Jitter::Decorrelated`] reads `previous` and only a custom backoff
    /// reads `last`.
    ///
    /// Returns `None` to stop retrying, which only a custom backoff does.
    /// The delay is always within `[0, max_interval]`; jitter draws exactly
    /// one number from `rng`, no jitter none.
    pub fn delay<R: Rng + ?Sized>(
        &self,
        retry: u32,
        last: &Outcome,
        previous: Option<Duration>,
        rng: &mut R,
    ) -> Option<Duration> {
        let retry = retry.max(1);
        let formula = match &self.source {
            DelaySource::Formula(formula) => *formula,
            DelaySource::Custom(f) => return f(retry, last).map(|d| d.min(self.max_interval)),
        };
        let cap = self.max_interval.as_nanos();
        let nanos = match self.jitter {
            Jitter::None => formula.base_nanos(retry, cap),
            Jitter::Full => rng.random_range(0..=formula.base_nanos(retry, cap)),
            Jitter::Equal => {
                let base = formula.base_nanos(retry, cap);
                let half = base / 2;
                half + rng.random_range(0..=base - half)
            }
            Jitter::Decorrelated => {
                let first = formula.base_nanos(1, cap);
                let previous = previous.map_or(first, |d| d.as_nanos());
                let high = previous.saturating_mul(3).max(first);
                rng.random_range(first..=high).min(cap)
            }
        };
        Some(duration_from_nanos(nanos))
    }

    /// The longest delay this backoff returns.
    pub fn max_interval(&self) -> Duration {
        self.max_interval
    }

    /// How the base delays are randomized.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delays before retry 1, 2, 3, …, with jitter drawn from a small
    /// generator seeded from the thread's generator.
    pub fn delays(&self) -> Delays<SmallRng> {
        self.delays_with_rng(SmallRng::from_rng(&mut rand::rng()))
    }

    /// The delays before retry 1, 2, 3, …, with jitter drawn from `rng`: a
    /// seeded generator gives the same delays every time.
    pub fn delays_with_rng<R: Rng>(&self, rng: R) -> Delays<R> {
        Delays {
            backoff: self.clone(),
            rng,
            next_retry: 1,
            previous: None,
            finished: false,
        }
    }

    /// A never-ending, resettable schedule of this backoff's delays, for
    /// loops that retry until they succeed; jitter is drawn from a small
    /// generator seeded from the thread's generator.
    pub fn schedule(&self) -> BackoffSchedule<SmallRng> {
        self.schedule_with_rng(SmallRng::from_rng(&mut rand::rng()))
    }

    /// [`schedule`](Self::schedule) with jitter drawn from `rng`.
    pub fn schedule_with_rng<R: Rng>(&self, rng: R) -> BackoffSchedule<R> {
        BackoffSchedule::new(self, rng)
    }
}

/// Builds a [`Backoff`]; every setting is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a backoff"]
pub struct BackoffBuilder {
    backoff: Backoff,
}

impl BackoffBuilder {
    fn new(source: DelaySource) -> Self {
        Self {
            backoff: Backoff {
                source,
                max_interval: DEFAULT_MAX_INTERVAL,
                jitter: Jitter::None,
            },
        }
    }

    /// The cap on every delay, greater than zero and at least the first
    /// delay (for a constant backoff it may equal the constant). Default 10 s.
    pub fn max_interval(mut self, max: Duration) -> Self {
        self.backoff.max_interval = max;
        self
    }

    /// How the base delays are randomized. Default [`Jitter::None`]; a
    /// custom backoff accepts only [`Jitter::None`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff.jitter = jitter;
        self
    }

    /// Checks every setting and returns the backoff, or the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        let b = &self.backoff;
        let first = match &b.source {
            DelaySource::Formula(formula) => {
                if let Formula::Exponential {
                    initial,
                    multiplier,
                } = *formula
                {
                    if initial.is_zero() {
                        return Err(ConfigError::new(
                            COMPONENT,
                            "initial",
                            "must be greater than zero for an exponential backoff",
                        ));
                    }
                    if !multiplier.is_finite() || multiplier < 1.0 {
                        return Err(ConfigError::new(
                            COMPONENT,
                            "multiplier",
                            format!("must be finite and at least 1, got {multiplier}"),
                        ));
                    }
                }
                Some(formula.first())
            }
            DelaySource::Custom(_) => {
                if b.jitter != Jitter::None {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "jitter",
                        format!(
                            "must be Jitter::None for a custom backoff (randomize inside the \
                             function instead), got Jitter::{:?}",
                            b.jitter
                        ),
                    ));
                }
                None
            }
        };
        if b.max_interval.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "max_interval",
                "must be greater than zero",
            ));
        }
        if let Some(first) = first.filter(|first| *first > b.max_interval) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_interval",
                format!(
                    "must be at least the first delay ({first:?}), got {:?}",
                    b.max_interval
                ),
            ));
        }
        Ok(self.backoff)
    }
}

/// The delays of a [`Backoff`] before retry 1, 2, 3, …; made by
/// [`Backoff::delays`] and [`Backoff::delays_with_rng`].
///
/// Endless for the built-in strategies (past retry `u32::MAX` the retry
/// number stays at `u32::MAX`). A custom backoff is called with
/// [`Outcome::Failure`]` { retryable: true }` as the last outcome, and the
/// iterator ends at its first `None`. Each delay is fed back as the
/// `previous` delay of the next.
pub struct Delays<R> {
    backoff: Backoff,
    rng: R,
    next_retry: u32,
    previous: Option<Duration>,
    finished: bool,
}

impl<R> fmt::Debug for Delays<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delays")
            .field("backoff", &self.backoff)
            .field("next_retry", &self.next_retry)
            .field("previous", &self.previous)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<R> Delays<R> {
    /// The backoff these delays follow.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Starts over from the delay before retry 1.
    pub(crate) fn restart(&mut self) {
        self.next_retry = 1;
        self.previous = None;
        self.finished = false;
    }
}

impl<R: Rng> Iterator for Delays<R> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.finished {
            return None;
        }
        let delay = self.backoff.delay(
            self.next_retry,
            &RETRYABLE_FAILURE,
            self.previous,
            &mut self.rng,
        );
        match delay {
            Some(delay) => {
                self.previous = Some(delay);
                self.next_retry = self.next_retry.saturating_add(1);
            }
            None => self.finished = true,
        }
        delay
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match (&self.backoff.source, self.finished) {
            (_, true) => (0, Some(0)),
            (DelaySource::Formula(_), false) => (usize::MAX, None),
            (DelaySource::Custom(_), false) => (0, None),
        }
    }
}

impl<R: Rng> FusedIterator for Delays<R> {}

/// A duration of `nanos` nanoseconds; saturates at [`Duration::MAX`] (never
/// reached: delays are at most `max_interval`).
fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = nanos / NANOS_PER_SEC;
    // The remainder is below one billion, so it fits in a u32.
    let subsec = (nanos % NANOS_PER_SEC) as u32;
    u64::try_from(secs).map_or(Duration::MAX, |secs| Duration::new(secs, subsec))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;
    use rand::rngs::StdRng;

    use super::*;

    const MS: u128 = 1_000_000;
    const ALL_JITTERS: [Jitter; 4] = [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ];

    fn nanos(n: u128) -> Duration {
        Duration::new(
            u64::try_from(n / 1_000_000_000).expect("test durations fit"),
            u32::try_from(n % 1_000_000_000).expect("below one billion"),
        )
    }

    /// The expected delays, computed straight from the formulas in the module
    /// docs with a generator of its own seeded like the backoff's.
    fn expected_delays(
        base: impl Fn(u32) -> u128,
        cap: u128,
        jitter: Jitter,
        seed: u64,
        count: u32,
    ) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(seed);
        let b = |n: u32| base(n).min(cap);
        let mut previous = b(1);
        (1..=count)
            .map(|n| {
                let delay = match jitter {
                    Jitter::None => b(n),
                    Jitter::Full => rng.random_range(0..=b(n)),
                    Jitter::Equal => b(n) / 2 + rng.random_range(0..=b(n) - b(n) / 2),
                    Jitter::Decorrelated => {
                        let high = if previous * 3 < b(1) {
                            b(1)
                        } else {
                            previous * 3
                        };
                        cap.min(rng.random_range(b(1)..=high))
                    }
                };
                previous = delay;
                nanos(delay)
            })
            .collect()
    }

    fn actual_delays(backoff: &Backoff, seed: u64, count: usize) -> Vec<Duration> {
        backoff
            .delays_with_rng(StdRng::seed_from_u64(seed))
            .take(count)
            .collect()
    }

    fn failure() -> Outcome {
        Outcome::Failure { retryable: true }
    }

    #[test]
    fn constant_delays_follow_the_formula_for_every_jitter() {
        for jitter in ALL_JITTERS {
            for seed in [1, 7, 42] {
                let backoff = Backoff::constant(Duration::from_millis(250))
                    .max_interval(Duration::from_secs(2))
                    .jitter(jitter)
                    .build()
                    .expect("valid");
                let expected = expected_delays(|_| 250 * MS, 2_000 * MS, jitter, seed, 12);
                assert_eq!(
                    actual_delays(&backoff, seed, 12),
                    expected,
                    "{jitter:?}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn linear_delays_follow_the_formula_for_every_jitter() {
        for jitter in ALL_JITTERS {
            for seed in [2, 8, 43] {
                let backoff =
                    Backoff::linear(Duration::from_millis(100), Duration::from_millis(300))
                        .max_interval(Duration::from_millis(2_500))
                        .jitter(jitter)
                        .build()
                        .expect("valid");
                let base = |n: u32| 100 * MS + 300 * MS * u128::from(n - 1);
                let expected = expected_delays(base, 2_500 * MS, jitter, seed, 12);
                assert_eq!(
                    actual_delays(&backoff, seed, 12),
                    expected,
                    "{jitter:?}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn exponential_delays_follow_the_formula_for_every_jitter() {
        for jitter in ALL_JITTERS {
            for seed in [3, 9, 44] {
                let doubling = Backoff::exponential(Duration::from_millis(100), 2.0)
                    .max_interval(Duration::from_secs(3))
                    .jitter(jitter)
                    .build()
                    .expect("valid");
                let base = |n: u32| 100 * MS * 2u128.pow(n - 1);
                let expected = expected_delays(base, 3_000 * MS, jitter, seed, 12);
                assert_eq!(
                    actual_delays(&doubling, seed, 12),
                    expected,
                    "{jitter:?}, seed {seed}"
                );

                // 1.5^k × 100 ms is a whole number of nanoseconds up to k = 8,
                // past which the 2 s cap applies.
                let by_half = Backoff::exponential(Duration::from_millis(100), 1.5)
                    .max_interval(Duration::from_secs(2))
                    .jitter(jitter)
                    .build()
                    .expect("valid");
                let base = |n: u32| 100 * MS * 3u128.pow(n - 1) / 2u128.pow(n - 1);
                let expected = expected_delays(base, 2_000 * MS, jitter, seed, 12);
                assert_eq!(
                    actual_delays(&by_half, seed, 12),
                    expected,
                    "{jitter:?}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn delays_iterator_matches_delay_calls_fed_their_previous_delay() {
        for jitter in ALL_JITTERS {
            let backoff = Backoff::exponential(Duration::from_millis(10), 3.0)
                .max_interval(Duration::from_secs(1))
                .jitter(jitter)
                .build()
                .expect("valid");
            let mut rng = StdRng::seed_from_u64(5);
            let mut previous = None;
            let by_hand: Vec<Duration> = (1..=10)
                .map(|retry| {
                    let delay = backoff
                        .delay(retry, &failure(), previous, &mut rng)
                        .expect("built-in strategies never stop");
                    previous = Some(delay);
                    delay
                })
                .collect();
            assert_eq!(actual_delays(&backoff, 5, 10), by_hand, "{jitter:?}");
        }
    }

    #[test]
    fn delays_from_the_same_seed_repeat_exactly() {
        let backoff = Backoff::default();
        assert_eq!(
            actual_delays(&backoff, 99, 20),
            actual_delays(&backoff, 99, 20)
        );
    }

    #[test]
    fn unjittered_delays_draw_nothing_from_the_rng() {
        let backoff = Backoff::linear(Duration::ZERO, Duration::from_millis(1))
            .build()
            .expect("valid");
        let mut rng = StdRng::seed_from_u64(11);
        for retry in 1..=5 {
            backoff.delay(retry, &failure(), None, &mut rng);
        }
        let mut untouched = StdRng::seed_from_u64(11);
        assert_eq!(rng.random::<u64>(), untouched.random::<u64>());
    }

    #[test]
    fn decorrelated_jitter_grows_from_the_given_previous_delay() {
        let backoff = Backoff::constant(Duration::from_millis(100))
            .max_interval(Duration::from_secs(60))
            .jitter(Jitter::Decorrelated)
            .build()
            .expect("valid");
        let previous = Duration::from_secs(2);
        let mut rng = StdRng::seed_from_u64(12);
        let mut reference = StdRng::seed_from_u64(12);
        let expected = nanos(reference.random_range(100 * MS..=6_000 * MS));
        assert_eq!(
            backoff.delay(4, &failure(), Some(previous), &mut rng),
            Some(expected)
        );
        // A previous delay whose triple is below the first delay draws from [b(1), b(1)].
        assert_eq!(
            backoff.delay(4, &failure(), Some(Duration::from_millis(1)), &mut rng),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn retry_zero_is_treated_as_the_first_retry() {
        let backoff = Backoff::linear(Duration::from_millis(5), Duration::from_millis(7))
            .build()
            .expect("valid");
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            backoff.delay(0, &failure(), None, &mut rng),
            backoff.delay(1, &failure(), None, &mut rng)
        );
    }

    #[test]
    fn huge_retry_numbers_saturate_at_max_interval() {
        let cap = Duration::from_secs(10);
        let exponential = Backoff::exponential(Duration::from_millis(100), 2.0)
            .build()
            .expect("valid");
        let linear = Backoff::linear(Duration::from_millis(100), Duration::from_secs(1))
            .build()
            .expect("valid");
        let mut rng = StdRng::seed_from_u64(0);
        for backoff in [&exponential, &linear] {
            for retry in [10_000, u32::MAX] {
                assert_eq!(backoff.delay(retry, &failure(), None, &mut rng), Some(cap));
            }
        }
    }

    #[test]
    fn huge_multipliers_saturate_at_max_interval() {
        let cap = Duration::from_secs(5);
        let mut rng = StdRng::seed_from_u64(0);
        for multiplier in [1e300, f64::MAX] {
            let backoff = Backoff::exponential(Duration::from_nanos(1), multiplier)
                .max_interval(cap)
                .build()
                .expect("valid");
            assert_eq!(
                backoff.delay(1, &failure(), None, &mut rng),
                Some(Duration::from_nanos(1))
            );
            for retry in [2, 3, 10_000, u32::MAX] {
                assert_eq!(backoff.delay(retry, &failure(), None, &mut rng), Some(cap));
            }
        }
    }

    #[test]
    fn the_longest_durations_do_not_overflow() {
        let mut rng = StdRng::seed_from_u64(0);
        let linear = Backoff::linear(Duration::MAX, Duration::MAX)
            .max_interval(Duration::MAX)
            .build()
            .expect("valid");
        let exponential = Backoff::exponential(Duration::MAX, 2.0)
            .max_interval(Duration::MAX)
            .build()
            .expect("valid");
        for backoff in [&linear, &exponential] {
            for retry in [1, 2, 10_000, u32::MAX] {
                assert_eq!(
                    backoff.delay(retry, &failure(), None, &mut rng),
                    Some(Duration::MAX)
                );
            }
        }
        let decorrelated = Backoff::constant(Duration::MAX)
            .max_interval(Duration::MAX)
            .jitter(Jitter::Decorrelated)
            .build()
            .expect("valid");
        assert_eq!(
            decorrelated.delay(3, &failure(), Some(Duration::MAX), &mut rng),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn jittered_delays_for_huge_retry_numbers_stay_within_max_interval() {
        for jitter in ALL_JITTERS {
            let backoff = Backoff::exponential(Duration::from_millis(100), 2.0)
                .jitter(jitter)
                .build()
                .expect("valid");
            let mut rng = StdRng::seed_from_u64(1);
            let delay = backoff
                .delay(10_000, &failure(), Some(Duration::from_secs(9)), &mut rng)
                .expect("built-in strategies never stop");
            assert!(delay <= Duration::from_secs(10), "{jitter:?}: {delay:?}");
        }
    }

    #[test]
    fn default_is_exponential_100ms_doubling_capped_at_10s_with_full_jitter() {
        let default = Backoff::default();
        assert_eq!(default.max_interval(), Duration::from_secs(10));
        assert_eq!(default.jitter(), Jitter::Full);
        let spelled_out = Backoff::exponential(Duration::from_millis(100), 2.0)
            .max_interval(Duration::from_secs(10))
            .jitter(Jitter::Full)
            .build()
            .expect("valid");
        assert_eq!(
            actual_delays(&default, 21, 15),
            actual_delays(&spelled_out, 21, 15)
        );
    }

    #[test]
    fn builder_defaults_are_a_10s_cap_and_no_jitter() {
        let backoff = Backoff::constant(Duration::from_secs(1))
            .build()
            .expect("valid");
        assert_eq!(backoff.max_interval(), Duration::from_secs(10));
        assert_eq!(backoff.jitter(), Jitter::None);
        assert_eq!(Jitter::default(), Jitter::None);
    }

    #[test]
    fn thread_seeded_delays_stay_within_max_interval() {
        let backoff = Backoff::default();
        let delays: Vec<Duration> = backoff.delays().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
    }

    #[test]
    fn zero_delays_are_accepted_for_constant_and_linear() {
        let mut rng = StdRng::seed_from_u64(0);
        for jitter in ALL_JITTERS {
            let constant = Backoff::constant(Duration::ZERO)
                .jitter(jitter)
                .build()
                .expect("zero constant is an immediate retry");
            assert_eq!(
                constant.delay(3, &failure(), None, &mut rng),
                Some(Duration::ZERO)
            );
        }
        let linear = Backoff::linear(Duration::ZERO, Duration::ZERO)
            .build()
            .expect("valid");
        assert_eq!(
            linear.delay(3, &failure(), None, &mut rng),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn constant_equal_to_max_interval_is_accepted() {
        let backoff = Backoff::constant(Duration::from_secs(3))
            .max_interval(Duration::from_secs(3))
            .build()
            .expect("a constant may equal its cap");
        let delays: Vec<Duration> = backoff.delays().take(3).collect();
        assert_eq!(delays, [Duration::from_secs(3); 3]);
    }

    fn rejected_field(builder: BackoffBuilder) -> &'static str {
        let err = builder.build().expect_err("should be rejected");
        assert_eq!(err.component(), "backoff");
        err.field()
    }

    #[test]
    fn zero_exponential_initial_is_rejected_naming_initial() {
        assert_eq!(
            rejected_field(Backoff::exponential(Duration::ZERO, 2.0)),
            "initial"
        );
    }

    #[test]
    fn multiplier_below_one_or_not_finite_is_rejected_naming_multiplier() {
        for multiplier in [0.5, 0.0, -2.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let builder = Backoff::exponential(Duration::from_millis(1), multiplier);
            assert_eq!(rejected_field(builder), "multiplier", "{multiplier}");
        }
        Backoff::exponential(Duration::from_millis(1), 1.0)
            .build()
            .expect("a multiplier of 1 is a constant delay");
    }

    #[test]
    fn zero_max_interval_is_rejected_naming_max_interval() {
        let builders = [
            Backoff::constant(Duration::ZERO),
            Backoff::linear(Duration::ZERO, Duration::from_millis(1)),
            Backoff::exponential(Duration::from_millis(1), 2.0),
            Backoff::custom(|_, _| None),
        ];
        for builder in builders {
            assert_eq!(
                rejected_field(builder.max_interval(Duration::ZERO)),
                "max_interval"
            );
        }
    }

    #[test]
    fn max_interval_below_the_first_delay_is_rejected_naming_max_interval() {
        let second = Duration::from_secs(1);
        let builders = [
            Backoff::constant(Duration::from_secs(2)),
            Backoff::linear(Duration::from_secs(2), Duration::ZERO),
            Backoff::exponential(Duration::from_secs(2), 2.0),
        ];
        for builder in builders {
            let err = builder
                .max_interval(second)
                .build()
                .expect_err("cap below b(1)");
            assert_eq!(err.field(), "max_interval");
            assert_eq!(
                err.to_string(),
                "invalid backoff configuration: `max_interval` must be at least the first \
                 delay (2s), got 1s"
            );
        }
        // The default cap of 10 s is below a 20 s constant too.
        assert_eq!(
            rejected_field(Backoff::constant(Duration::from_secs(20))),
            "max_interval"
        );
    }

    #[test]
    fn jitter_on_a_custom_backoff_is_rejected_naming_jitter() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let builder = Backoff::custom(|_, _| Some(Duration::ZERO)).jitter(jitter);
            assert_eq!(rejected_field(builder), "jitter", "{jitter:?}");
        }
        Backoff::custom(|_, _| None)
            .jitter(Jitter::None)
            .build()
            .expect("no jitter is fine");
    }

    #[test]
    fn custom_stops_at_none() {
        let backoff = Backoff::custom(|retry, _| {
            (retry <= 3).then(|| Duration::from_millis(u64::from(retry)))
        })
        .build()
        .expect("valid");
        let mut delays = backoff.delays();
        assert_eq!(delays.next(), Some(Duration::from_millis(1)));
        assert_eq!(delays.next(), Some(Duration::from_millis(2)));
        assert_eq!(delays.next(), Some(Duration::from_millis(3)));
        assert_eq!(delays.next(), None);
        assert_eq!(delays.size_hint(), (0, Some(0)));
        assert_eq!(delays.next(), None, "stays finished");
        assert_eq!(backoff.delay(4, &failure(), None, &mut rand::rng()), None);
    }

    #[test]
    fn custom_receives_the_retry_number_and_last_outcome() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let backoff = Backoff::custom(move |retry, last: &Outcome| {
            record.lock().expect("not poisoned").push((retry, *last));
            Some(Duration::from_millis(1))
        })
        .build()
        .expect("valid");
        let refused = Outcome::Failure { retryable: false };
        backoff.delay(7, &refused, None, &mut rand::rng());
        assert_eq!(backoff.delays().take(2).count(), 2);
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            [(7, refused), (1, failure()), (2, failure())]
        );
    }

    #[test]
    fn custom_delays_are_capped_at_max_interval() {
        let backoff = Backoff::custom(|_, _| Some(Duration::from_secs(3600)))
            .max_interval(Duration::from_secs(30))
            .build()
            .expect("valid");
        assert_eq!(
            backoff.delay(1, &failure(), None, &mut rand::rng()),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn backoff_is_cloneable_shareable_and_debuggable() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Backoff>();
        shareable::<BackoffBuilder>();
        let custom = Backoff::custom(|_, _| None).build().expect("valid");
        assert!(format!("{custom:?}").contains("Custom"));
        let delays = Backoff::default().delays_with_rng(StdRng::seed_from_u64(0));
        assert!(format!("{delays:?}").contains("next_retry: 1"));
    }

    // ---- properties ----

    /// The parts of a valid built-in backoff, so a test can build the same
    /// strategy with different jitter.
    #[derive(Debug, Clone, Copy)]
    struct Config {
        formula: Formula,
        max_interval: Duration,
    }

    impl Config {
        fn build(self, jitter: Jitter) -> Backoff {
            let builder = match self.formula {
                Formula::Constant { delay } => Backoff::constant(delay),
                Formula::Linear { initial, increment } => Backoff::linear(initial, increment),
                Formula::Exponential {
                    initial,
                    multiplier,
                } => Backoff::exponential(initial, multiplier),
            };
            builder
                .max_interval(self.max_interval)
                .jitter(jitter)
                .build()
                .expect("generated configurations are valid")
        }
    }

    fn any_nanos() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..10_000_000_000).prop_map(Duration::from_nanos),
            any::<u64>().prop_map(Duration::from_nanos),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    fn any_config() -> impl Strategy<Value = Config> {
        let formula = prop_oneof![
            any_nanos().prop_map(|delay| Formula::Constant { delay }),
            (any_nanos(), any_nanos())
                .prop_map(|(initial, increment)| Formula::Linear { initial, increment }),
            (
                any_nanos().prop_map(|d| d.max(Duration::from_nanos(1))),
                prop_oneof![1.0f64..4.0, 1.0f64..1e300, Just(1.0)],
            )
                .prop_map(|(initial, multiplier)| Formula::Exponential {
                    initial,
                    multiplier,
                }),
        ];
        (formula, any_nanos()).prop_map(|(formula, extra)| Config {
            formula,
            max_interval: formula
                .first()
                .saturating_add(extra)
                .max(Duration::from_nanos(1)),
        })
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    fn any_retry() -> impl Strategy<Value = u32> {
        prop_oneof![1u32..64, 1u32..=u32::MAX]
    }

    /// `b(n)`: the delay of the same strategy without jitter.
    fn base(config: Config, retry: u32) -> Duration {
        config
            .build(Jitter::None)
            .delay(
                retry,
                &Outcome::Failure { retryable: true },
                None,
                &mut rand::rng(),
            )
            .expect("built-in strategies never stop")
    }

    proptest! {
        #[test]
        fn every_delay_is_within_zero_and_max_interval(
            config in any_config(),
            jitter in any_jitter(),
            retry in any_retry(),
            previous in proptest::option::of(any_nanos()),
            seed in any::<u64>(),
        ) {
            let backoff = config.build(jitter);
            let delay = backoff.delay(retry, &failure(), previous, &mut StdRng::seed_from_u64(seed));
            prop_assert!(matches!(delay, Some(d) if d <= config.max_interval), "{delay:?}");
        }

        #[test]
        fn base_delays_never_decrease_and_start_at_the_first_delay(
            config in any_config(),
            retry in any_retry(),
        ) {
            prop_assert_eq!(base(config, 1), config.formula.first());
            prop_assert!(base(config, retry) <= base(config, retry.saturating_add(1)));
        }

        #[test]
        fn full_jitter_never_exceeds_the_base_delay(
            config in any_config(),
            retry in any_retry(),
            seed in any::<u64>(),
        ) {
            let delay = config
                .build(Jitter::Full)
                .delay(retry, &failure(), None, &mut StdRng::seed_from_u64(seed));
            let ceiling = base(config, retry);
            prop_assert!(matches!(delay, Some(d) if d <= ceiling), "{delay:?} > {ceiling:?}");
        }

        #[test]
        fn equal_jitter_stays_between_half_and_whole_base_delay(
            config in any_config(),
            retry in any_retry(),
            seed in any::<u64>(),
        ) {
            let delay = config
                .build(Jitter::Equal)
                .delay(retry, &failure(), None, &mut StdRng::seed_from_u64(seed));
            let whole = base(config, retry);
            let half = whole / 2;
            prop_assert!(
                matches!(delay, Some(d) if half <= d && d <= whole),
                "{delay:?} outside [{half:?}, {whole:?}]"
            );
        }

        #[test]
        fn decorrelated_jitter_stays_between_first_delay_and_cap(
            config in any_config(),
            retry in any_retry(),
            previous in proptest::option::of(any_nanos()),
            seed in any::<u64>(),
        ) {
            let delay = config
                .build(Jitter::Decorrelated)
                .delay(retry, &failure(), previous, &mut StdRng::seed_from_u64(seed));
            let cap = config.max_interval;
            let floor = base(config, 1).min(cap);
            prop_assert!(
                matches!(delay, Some(d) if floor <= d && d <= cap),
                "{delay:?} outside [{floor:?}, {cap:?}]"
            );
        }

        #[test]
        fn custom_delays_are_the_function_result_capped_at_max_interval(
            returned in proptest::option::of(any_nanos()),
            max_interval in any_nanos().prop_map(|d| d.max(Duration::from_nanos(1))),
            retry in any_retry(),
        ) {
            let backoff = Backoff::custom(move |_, _| returned)
                .max_interval(max_interval)
                .build()
                .expect("valid");
            let delay = backoff.delay(retry, &failure(), None, &mut rand::rng());
            prop_assert_eq!(delay, returned.map(|d| d.min(max_interval)));
        }
    }
}
