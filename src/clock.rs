//! Where layers read the time of a call from.
//!
//! Timing a call (is it slow?) and bucketing it into a time window needs a
//! clock read at the start and end of the call. Two choices trade precision
//! for cost:
//!
//! | clock | resolution | cost per read (measured here) | follows `tokio::time::pause()` |
//! |---|---|---|---|
//! | [`CallClock::Tokio`] (default) | exact | one `tokio::time::Instant::now()`: 30–40 ns on the benchmark VM, as much as `std::time::Instant::now()` | yes |
//! | [`CallClock::Coarse`] | ~1 ms | one atomic load, ~1 ns | no |
//!
//! The coarse clock is a process-wide millisecond tick kept by one background
//! thread, started the first time a coarse clock is created (or a circuit
//! breaker opens inside a tokio runtime: its rejections read the coarse
//! clock instead of tokio's while the wait surely runs); it then wakes
//! every millisecond for the life of the process. Use it in
//! production when slow-call thresholds are in the hundreds of milliseconds
//! or more and the per-call cost matters; keep the default in tests that
//! drive time with `tokio::time::pause()` and `advance()`. State-machine
//! timers (how long a breaker stays open, for example) always use tokio's
//! clock, whichever clock times the calls.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The clock used to time calls; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CallClock {
    /// `tokio::time::Instant::now()`: exact, and follows `tokio::time::pause()`.
    #[default]
    Tokio,
    /// A cached process-wide clock with about one millisecond of resolution;
    /// an atomic load per read. Real time only: it ignores `tokio::time::pause()`.
    Coarse,
}

/// A [`CallClock`] with its zero point: reads return nanoseconds since the
/// anchor, as a `u64` that fits in an atomic.
#[derive(Debug, Clone)]
pub(crate) struct AnchoredClock {
    kind: CallClock,
    tokio_anchor: tokio::time::Instant,
    coarse_anchor: u64,
}

impl AnchoredClock {
    pub(crate) fn new(kind: CallClock) -> Self {
        Self {
            kind,
            tokio_anchor: tokio::time::Instant::now(),
            coarse_anchor: match kind {
                CallClock::Tokio => 0,
                CallClock::Coarse => coarse_nanos(),
            },
        }
    }

    /// The tokio instant reads count from.
    #[inline]
    pub(crate) fn tokio_anchor(&self) -> tokio::time::Instant {
        self.tokio_anchor
    }

    /// The tokio instant `nanos` after the anchor (for timers), saturating
    /// as [`saturating_add`] does.
    pub(crate) fn instant_at(&self, nanos: u64) -> tokio::time::Instant {
        saturating_add(self.tokio_anchor, Duration::from_nanos(nanos))
    }

    /// Nanoseconds since the anchor.
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        match self.kind {
            CallClock::Tokio => duration_nanos(
                tokio::time::Instant::now().saturating_duration_since(self.tokio_anchor),
            ),
            CallClock::Coarse => coarse_nanos().saturating_sub(self.coarse_anchor),
        }
    }
}

/// How far [`saturating_add`] looks ahead when the clock cannot represent
/// the instant asked for: 30 years, tokio's own horizon for a timer that
/// never fires.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `instant + duration` without the panic of `Instant + Duration`: when the
/// clock cannot represent that instant (a `Duration::MAX` from a
/// configuration, say), an instant 30 years ahead instead, which a timer
/// treats as never. Should even that overflow (no platform tokio runs on
/// does), `instant` itself.
pub(crate) fn saturating_add(
    instant: tokio::time::Instant,
    duration: Duration,
) -> tokio::time::Instant {
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(FAR_FUTURE))
        .unwrap_or(instant)
}

/// Converts a duration to whole nanoseconds, saturating at `u64::MAX` (584 years).
#[inline]
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

struct CoarseTicker {
    origin: std::time::Instant,
    nanos: AtomicU64,
}

const COARSE_TICK: Duration = Duration::from_millis(1);

fn coarse_ticker() -> &'static CoarseTicker {
    static TICKER: OnceLock<&'static CoarseTicker> = OnceLock::new();
    TICKER.get_or_init(|| {
        let ticker: &'static CoarseTicker = Box::leak(Box::new(CoarseTicker {
            origin: std::time::Instant::now(),
            nanos: AtomicU64::new(0),
        }));
        let spawned = std::thread::Builder::new()
            .name("palisade-coarse-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(COARSE_TICK);
                    let now = duration_nanos(ticker.origin.elapsed());
                    ticker.nanos.store(now, Ordering::Relaxed);
                }
            });
        if let Err(error) = spawned {
            // Without the thread the coarse clock would stand still and every
            // call would look instant; say so loudly rather than silently.
            tracing::error!(%error, "palisade: cannot start the coarse clock thread; coarse call timing will not advance");
        }
        ticker
    })
}

/// Nanoseconds on the process-wide coarse clock.
#[inline]
pub(crate) fn coarse_nanos() -> u64 {
    coarse_ticker().nanos.load(Ordering::Relaxed)
}

/// governor's clock, read from tokio's so that `tokio::time::pause()` and
/// `advance()` drive a GCRA in tests: the rate limiter's and the Consul
/// watch's query limit.
#[derive(Debug, Clone)]
pub(crate) struct GovernorClock {
    anchor: tokio::time::Instant,
}

impl GovernorClock {
    /// A clock that reads zero now.
    pub(crate) fn new() -> Self {
        Self {
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl governor::clock::Clock for GovernorClock {
    type Instant = Duration;

    #[inline]
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.anchor)
    }
}

/// A direct (not keyed) GCRA on [`GovernorClock`].
pub(crate) type DirectGcra = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    GovernorClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn instants_past_what_the_clock_can_represent_saturate_far_ahead() {
        let now = tokio::time::Instant::now();
        assert_eq!(
            saturating_add(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(saturating_add(now, Duration::MAX), now + FAR_FUTURE);
        let clock = AnchoredClock::new(CallClock::Tokio);
        assert!(clock.instant_at(u64::MAX) > now + Duration::from_secs(86_400 * 365 * 29));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = AnchoredClock::new(CallClock::Tokio);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_nanos(), 1_500_000_000);
    }

    #[test]
    fn coarse_clock_advances_with_real_time() {
        let clock = AnchoredClock::new(CallClock::Coarse);
        let start = clock.now_nanos();
        let begun = std::time::Instant::now();
        // Real time is the point of this clock, so wait on it (bounded).
        while clock.now_nanos() == start && begun.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert!(
            clock.now_nanos() > start,
            "coarse clock did not tick within 5s"
        );
    }
}
