//! The latency percentile a hedge waits for, from a rotating pair of
//! histograms (tower's `hedge` does the same).

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::time::Instant;

/// The longest latency recorded, in microseconds (longer ones count as
/// this): one hour.
const MAX_MICROS: u64 = 3_600_000_000;
/// No percentile known yet.
const UNKNOWN: u64 = u64::MAX;

/// Latencies of the current window are recorded while the percentile of
/// the previous one is read; at the end of a window the current one
/// replaces the previous and its percentile is computed once, so a call
/// reads the delay with one atomic load.
#[derive(Debug)]
pub(crate) struct LatencyPercentile {
    percentile: f64,
    min_samples: u64,
    window: Duration,
    current: Mutex<Window>,
    /// The previous window's percentile, in microseconds, or [`UNKNOWN`].
    delay_micros: AtomicU64,
}

#[derive(Debug)]
struct Window {
    histogram: Option<Histogram<u64>>,
    started: Instant,
}

impl LatencyPercentile {
    pub(crate) fn new(percentile: f64, min_samples: u64, window: Duration) -> Self {
        Self {
            percentile,
            min_samples,
            window,
            current: Mutex::new(Window {
                // The bounds are constants that hdrhistogram accepts; if it
                // ever refused them the hedge would only lose its delay.
                histogram: Histogram::new_with_bounds(1, MAX_MICROS, 2).ok(),
                started: Instant::now(),
            }),
            delay_micros: AtomicU64::new(UNKNOWN),
        }
    }

    /// The delay before a hedged attempt, if the previous window had enough
    /// calls.
    #[inline]
    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.delay_micros.load(Relaxed) {
            UNKNOWN => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Records one call's latency, closing the window if it is over.
    pub(crate) fn record(&self, latency: Duration) {
        let now = Instant::now();
        let mut current = self.current.lock();
        if now.duration_since(current.started) >= self.window {
            let delay = current
                .histogram
                .as_ref()
                .filter(|histogram| histogram.len() >= self.min_samples)
                .map_or(UNKNOWN, |histogram| {
                    histogram.value_at_quantile(self.percentile)
                });
            self.delay_micros.store(delay, Relaxed);
            if let Some(histogram) = &mut current.histogram {
                histogram.reset();
            }
            current.started = now;
        }
        if let Some(histogram) = &mut current.histogram {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
            histogram.saturating_record(micros.clamp(1, MAX_MICROS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_percentile_of_a_window_is_used_once_it_is_over() {
        let tracker = LatencyPercentile::new(0.9, 10, Duration::from_secs(1));
        for ms in 1..=100 {
            tracker.record(Duration::from_millis(ms));
        }
        assert_eq!(tracker.delay(), None, "the first window is still open");
        tokio::time::advance(Duration::from_secs(1)).await;
        tracker.record(Duration::from_millis(5));
        let delay = tracker.delay().expect("a percentile");
        assert!(
            (Duration::from_millis(89)..=Duration::from_millis(91)).contains(&delay),
            "{delay:?}"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        tracker.record(Duration::from_millis(5));
        assert_eq!(tracker.delay(), None, "one call is fewer than min_samples");
    }
}
