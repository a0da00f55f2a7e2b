//! [`BackoffSchedule`]: the never-ending, resettable delays of a [`Backoff`].

use std::fmt;
use std::iter::FusedIterator;
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use super::{Backoff, Delays};

/// The delays of a [`Backoff`] for a loop that retries until it succeeds
/// (a watch, a keep-alive, a lease take-over): it never runs out, and
/// [`reset`](Self::reset) starts it over after a success.
///
/// Made by [`Backoff::schedule`] and [`Backoff::schedule_with_rng`].
/// [`next_delay`](Self::next_delay) returns the backoff's delays in order;
/// when a custom backoff says "stop" (`None`), the schedule keeps returning
/// the backoff's `max_interval` until it is reset.
///
/// ```
/// use std::time::Duration;
/// use palisade::backoff::Backoff;
///
/// # fn main() -> Result<(), palisade::ConfigError> {
/// let backoff = Backoff::exponential(Duration::from_millis(100), 2.0)
///     .max_interval(Duration::from_millis(300))
///     .build()?;
/// let mut schedule = backoff.schedule();
/// assert_eq!(schedule.next_delay(), Duration::from_millis(100));
/// assert_eq!(schedule.next_delay(), Duration::from_millis(200));
/// assert_eq!(schedule.next_delay(), Duration::from_millis(300));
/// assert_eq!(schedule.next_delay(), Duration::from_millis(300));
///
/// // The watch succeeded: the next failure starts from the first delay.
/// schedule.reset();
/// assert_eq!(schedule.next_delay(), Duration::from_millis(100));
/// # Ok(())
/// # }
/// ```
pub struct BackoffSchedule<R = SmallRng> {
    delays: Delays<R>,
    /// Failures since the last reset (saturating).
    failures: u32,
}

impl<R> fmt::Debug for BackoffSchedule<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackoffSchedule")
            .field("delays", &self.delays)
            .field("failures", &self.failures)
            .finish()
    }
}

impl<R: Rng> BackoffSchedule<R> {
    pub(super) fn new(backoff: &Backoff, rng: R) -> Self {
        Self {
            delays: backoff.delays_with_rng(rng),
            failures: 0,
        }
    }

    /// The delay to wait before the next try. Never runs out: past the end
    /// of a custom backoff it is the backoff's `max_interval`.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let max_interval = self.delays.backoff().max_interval();
        self.delays.next().unwrap_or(max_interval)
    }

    /// Starts over: the next delay is the first one again. Call it after a
    /// success.
    pub fn reset(&mut self) {
        self.delays.restart();
        self.failures = 0;
    }

    /// How many delays were handed out since the schedule was made or last
    /// reset: the number of consecutive failures of the loop using it.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The backoff this schedule follows.
    pub fn backoff(&self) -> &Backoff {
        self.delays.backoff()
    }
}

impl<R: Rng> Iterator for BackoffSchedule<R> {
    type Item = Duration;

    /// Always `Some`: the same as [`next_delay`](BackoffSchedule::next_delay).
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

impl<R: Rng> FusedIterator for BackoffSchedule<R> {}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::backoff::Jitter;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_custom_backoff_that_stops_continues_at_max_interval() {
        let backoff = Backoff::custom(|retry, _| (retry == 1).then(|| ms(5)))
            .max_interval(ms(40))
            .build()
            .unwrap();
        let mut schedule = backoff.schedule();
        let delays: Vec<_> = (0..4).map(|_| schedule.next_delay()).collect();
        assert_eq!(delays, [ms(5), ms(40), ms(40), ms(40)]);
        assert_eq!(schedule.failures(), 4);
        schedule.reset();
        assert_eq!(schedule.failures(), 0);
        assert_eq!(schedule.next_delay(), ms(5));
    }

    #[test]
    fn reset_restarts_a_decorrelated_schedule_from_the_first_delay_range() {
        let backoff = Backoff::exponential(ms(10), 2.0)
            .max_interval(ms(10_000))
            .jitter(Jitter::Decorrelated)
            .build()
            .unwrap();
        let mut schedule = backoff.schedule_with_rng(SmallRng::seed_from_u64(7));
        for _ in 0..20 {
            schedule.next_delay();
        }
        schedule.reset();
        // Decorrelated jitter's first delay is drawn from [b(1), 3·b(1)].
        let first = schedule.next_delay();
        assert!(first >= ms(10) && first <= ms(30), "{first:?}");
    }

    #[test]
    fn the_iterator_never_ends() {
        let backoff = Backoff::constant(ms(1)).build().unwrap();
        assert_eq!(backoff.schedule().take(1000).count(), 1000);
    }
}
