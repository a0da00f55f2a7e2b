//! The limit algorithms, independent of tower: each turns latency samples
//! into a new concurrency limit.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How the limit adapts; give one to
/// [`AdaptiveConcurrencyConfigBuilder::algorithm`](super::AdaptiveConcurrencyConfigBuilder::algorithm).
#[derive(Debug, Clone, PartialEq)]
pub enum LimitAlgorithm {
    /// Additive increase, multiplicative decrease on a latency threshold.
    Aimd(Aimd),
    /// TCP Vegas: estimates the queue from the no-load latency.
    Vegas(Vegas),
}

impl Default for LimitAlgorithm {
    /// [`Vegas::default`].
    fn default() -> Self {
        LimitAlgorithm::Vegas(Vegas::default())
    }
}

impl From<Aimd> for LimitAlgorithm {
    fn from(aimd: Aimd) -> Self {
        LimitAlgorithm::Aimd(aimd)
    }
}

impl From<Vegas> for LimitAlgorithm {
    fn from(vegas: Vegas) -> Self {
        LimitAlgorithm::Vegas(vegas)
    }
}

/// Additive increase, multiplicative decrease (Netflix concurrency-limits'
/// `AIMDLimit`): a call slower than `latency_threshold`, or a failure,
/// multiplies the limit by `backoff_ratio`; a call within it adds one when
/// at least half the limit was in use (a limit nobody uses does not grow).
///
/// The threshold is the latency you accept: the limit settles where the
/// queue in front of the dependency keeps calls just under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Aimd {
    pub(crate) latency_threshold: Duration,
    pub(crate) backoff_ratio: f64,
}

impl Aimd {
    /// Backs off on calls slower than `latency_threshold` (more than zero),
    /// by a ratio of 0.9.
    pub fn new(latency_threshold: Duration) -> Self {
        Self {
            latency_threshold,
            backoff_ratio: 0.9,
        }
    }

    /// What a slow call or a failure multiplies the limit by: 0.5 or more,
    /// less than 1. Default 0.9.
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }
}

/// TCP Vegas (Netflix concurrency-limits' `VegasLimit`): the queue in
/// front of the dependency is estimated as
/// `limit × (1 − no_load_latency / latency)`, with the no-load latency the
/// lowest seen. With `l = max(1, log10(limit))`, a queue of at most `l`
/// adds `beta × l` to the limit, one under `alpha × l` adds `l`, one over
/// `beta × l` takes `l` away, and a failure takes `l` away; in between the
/// limit holds. So the limit settles `alpha × l` to `beta × l` calls above
/// what the dependency serves at once (Little's law: throughput × no-load
/// latency).
///
/// The no-load latency starts as the lowest latency seen, and is measured
/// again now and then (after `probe_multiplier × limit` samples, jittered
/// by a factor of 0.5 to 1), as Envoy's adaptive concurrency filter does:
/// the limit drops to `min_limit` until [`PROBE_SAMPLES`] calls that
/// started with at most `min_limit` calls in flight (so behind no queue of
/// ours) have finished, and the lowest of their latencies is the new
/// no-load latency; then the limit is restored. So a dependency that
/// became slower for good is measured again rather than read as a queue
/// forever, and a queue that never drains is not mistaken for the
/// dependency's own latency (Netflix's `VegasLimit` takes the next call's
/// latency, queue included, which ratchets the limit up under sustained
/// load).
#[derive(Debug, Clone, PartialEq)]
pub struct Vegas {
    pub(crate) alpha: f64,
    pub(crate) beta: f64,
    pub(crate) probe_multiplier: u32,
}

impl Default for Vegas {
    /// `alpha` 3, `beta` 6, `probe_multiplier` 30 (Netflix's defaults).
    fn default() -> Self {
        Self {
            alpha: 3.0,
            beta: 6.0,
            probe_multiplier: 30,
        }
    }
}

impl Vegas {
    /// Netflix's defaults; see [`Vegas::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue size, in `log10(limit)` units, under which the limit grows.
    /// More than zero, less than `beta`. Default 3.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Queue size, in `log10(limit)` units, over which the limit shrinks.
    /// Default 6.
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Samples, per unit of limit, between probes of the no-load latency;
    /// at least 1. Default 30.
    pub fn probe_multiplier(mut self, multiplier: u32) -> Self {
        self.probe_multiplier = multiplier;
        self
    }
}

/// Calls a Vegas probe of the no-load latency waits for.
pub const PROBE_SAMPLES: u32 = 5;

/// One finished call, as the algorithms see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When the call started.
    pub(crate) started: Instant,
    pub(crate) latency: Duration,
    /// Calls in flight when this one started (itself included).
    pub(crate) in_flight: usize,
    /// The call failed (the classifier's `Failure`).
    pub(crate) dropped: bool,
}

/// The algorithm with its running state.
#[derive(Debug)]
pub(crate) struct Limiter {
    algorithm: LimitAlgorithm,
    min_limit: f64,
    max_limit: f64,
    smoothing: f64,
    estimated: f64,
    no_load_latency: Option<Duration>,
    probe_count: u64,
    probe_jitter: f64,
    /// While Vegas measures the no-load latency: the samples still awaited
    /// and the lowest latency so far.
    probe: Option<(u32, Option<Duration>)>,
    window: Window,
    window_samples: u32,
    rng: SmallRng,
}

/// The samples of calls started since the last update: the algorithm
/// moves once per window, on what the current limit produced (samples of
/// calls started before it are stale, and moving on each of them makes the
/// limit overshoot by a round trip's worth of samples).
#[derive(Debug)]
struct Window {
    started: Instant,
    samples: u32,
    latency_sum: Duration,
    max_in_flight: usize,
    dropped: bool,
}

impl Window {
    fn new(started: Instant) -> Self {
        Self {
            started,
            samples: 0,
            latency_sum: Duration::ZERO,
            max_in_flight: 0,
            dropped: false,
        }
    }
}

impl Limiter {
    pub(crate) fn new(
        algorithm: LimitAlgorithm,
        initial: usize,
        min_limit: usize,
        max_limit: usize,
        smoothing: f64,
        window_samples: u32,
    ) -> Self {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let probe_jitter = rng.random_range(0.5..1.0);
        Self {
            algorithm,
            min_limit: min_limit as f64,
            max_limit: max_limit as f64,
            smoothing,
            estimated: initial as f64,
            no_load_latency: None,
            probe_count: 0,
            probe_jitter,
            probe: None,
            window: Window::new(Instant::now()),
            window_samples,
            rng,
        }
    }

    /// The limit calls are admitted by: the estimate, rounded down, or
    /// `min_limit` while Vegas probes the no-load latency.
    pub(crate) fn limit(&self) -> usize {
        if self.probe.is_some() {
            self.min_limit as usize
        } else {
            self.estimated as usize
        }
    }

    pub(crate) fn no_load_latency(&self) -> Option<Duration> {
        self.no_load_latency
    }

    /// Takes one sample into account; returns the new limit.
    pub(crate) fn update(&mut self, sample: Sample) -> usize {
        if self.probe.is_some() {
            self.probe(sample);
            return self.limit();
        }
        if self
            .no_load_latency
            .is_none_or(|no_load| sample.latency < no_load)
        {
            self.no_load_latency = Some(sample.latency);
        }
        if sample.started < self.window.started {
            return self.limit();
        }
        let window = &mut self.window;
        window.samples += 1;
        window.latency_sum += sample.latency;
        window.max_in_flight = window.max_in_flight.max(sample.in_flight);
        window.dropped |= sample.dropped;
        if window.samples < self.window_samples {
            return self.limit();
        }
        let aggregate = Sample {
            started: window.started,
            latency: window.latency_sum / window.samples,
            in_flight: window.max_in_flight,
            dropped: window.dropped,
        };
        self.window = Window::new(Instant::now());
        self.apply(aggregate)
    }

    /// Moves the limit on one window's aggregate.
    fn apply(&mut self, sample: Sample) -> usize {
        let limit = self.estimated;
        let target = match &self.algorithm {
            LimitAlgorithm::Aimd(aimd) => {
                if sample.dropped || sample.latency > aimd.latency_threshold {
                    Some(limit * aimd.backoff_ratio)
                } else if sample.in_flight * 2 >= limit as usize {
                    Some(limit + 1.0)
                } else {
                    None
                }
            }
            LimitAlgorithm::Vegas(vegas) => {
                let vegas = vegas.clone();
                self.vegas(&vegas, sample)
            }
        };
        if let Some(target) = target {
            let target = target.clamp(self.min_limit, self.max_limit);
            self.estimated =
                (limit + self.smoothing * (target - limit)).clamp(self.min_limit, self.max_limit);
        }
        self.limit()
    }

    /// A sample during a Vegas probe of the no-load latency.
    fn probe(&mut self, sample: Sample) {
        let Some((awaited, lowest)) = &mut self.probe else {
            return;
        };
        // Only calls that queued behind none of ours measure the
        // dependency alone.
        if sample.in_flight <= self.min_limit as usize {
            *lowest = Some(lowest.map_or(sample.latency, |l| l.min(sample.latency)));
            *awaited -= 1;
            if *awaited == 0 {
                self.no_load_latency = *lowest;
                self.probe = None;
                self.window = Window::new(Instant::now());
            }
        }
    }

    fn vegas(&mut self, vegas: &Vegas, sample: Sample) -> Option<f64> {
        let limit = self.estimated;
        self.probe_count += 1;
        let probe_after = self.probe_jitter * f64::from(vegas.probe_multiplier) * limit
            / f64::from(self.window_samples);
        if self.probe_count as f64 >= probe_after {
            self.probe_count = 0;
            self.probe_jitter = self.rng.random_range(0.5..1.0);
            self.probe = Some((PROBE_SAMPLES, None));
            return None;
        }
        let no_load = self.no_load_latency?;
        let step = limit.log10().max(1.0);
        if sample.dropped {
            return Some(limit - step);
        }
        if (sample.in_flight * 2) < limit as usize {
            return None;
        }
        let latency = sample.latency.as_secs_f64();
        let queue = if latency > 0.0 {
            (limit * (1.0 - no_load.as_secs_f64() / latency)).ceil()
        } else {
            0.0
        };
        if queue <= step {
            Some(limit + vegas.beta * step)
        } else if queue < vegas.alpha * step {
            Some(limit + step)
        } else if queue > vegas.beta * step {
            Some(limit - step)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sample(latency_ms: u64, in_flight: usize) -> Sample {
        Sample {
            started: Instant::now(),
            latency: MS * latency_ms as u32,
            in_flight,
            dropped: false,
        }
    }

    #[test]
    fn aimd_adds_one_when_fast_and_busy_and_backs_off_when_slow() {
        let mut limiter = Limiter::new(Aimd::new(MS * 100).into(), 10, 1, 100, 1.0, 1);
        assert_eq!(limiter.update(sample(50, 10)), 11);
        assert_eq!(
            limiter.update(sample(50, 2)),
            11,
            "a limit barely used does not grow"
        );
        assert_eq!(limiter.update(sample(150, 11)), 9, "11 × 0.9 rounds down");
        let failure = Sample {
            dropped: true,
            ..sample(10, 9)
        };
        assert_eq!(limiter.update(failure), 8);
    }

    #[test]
    fn the_limit_stays_within_min_and_max() {
        let mut limiter = Limiter::new(Aimd::new(MS * 100).into(), 3, 3, 4, 1.0, 1);
        assert_eq!(limiter.update(sample(500, 3)), 3);
        limiter.update(sample(1, 3));
        assert_eq!(limiter.update(sample(1, 4)), 4);
    }

    #[test]
    fn smoothing_moves_part_of_the_way() {
        let mut limiter = Limiter::new(Aimd::new(MS * 100).into(), 10, 1, 100, 0.5, 1);
        limiter.update(sample(1, 10));
        assert_eq!(limiter.estimated, 10.5);
    }

    #[test]
    fn vegas_grows_without_a_queue_and_shrinks_with_a_long_one() {
        let mut limiter = Limiter::new(Vegas::default().into(), 10, 1, 1000, 1.0, 1);
        // The first sample is the no-load latency: no queue, + beta × 1.
        assert_eq!(limiter.update(sample(100, 10)), 16);
        assert_eq!(limiter.no_load_latency(), Some(MS * 100));
        // 16 × (1 − 100/400) = 12 queued, over 6 × log10(16).
        assert_eq!(limiter.update(sample(400, 16)), 14);
    }

    #[test]
    fn a_vegas_probe_drops_to_min_limit_and_measures_unqueued_calls() {
        let vegas = Vegas::default().probe_multiplier(1);
        let mut limiter = Limiter::new(vegas.into(), 10, 2, 1000, 1.0, 1);
        limiter.update(sample(100, 10));
        let mut updates = 1;
        while limiter.probe.is_none() {
            limiter.update(sample(300, 10));
            updates += 1;
            assert!(updates < 100, "a probe starts within limit samples");
        }
        assert_eq!(limiter.limit(), 2);
        for _ in 0..10 {
            limiter.update(sample(900, 9)); // queued calls from before: not measured
        }
        assert_eq!(limiter.limit(), 2);
        for latency in [250, 200, 220, 260, 240] {
            limiter.update(sample(latency, 2));
        }
        assert!(limiter.probe.is_none());
        assert_eq!(limiter.no_load_latency(), Some(MS * 200));
        assert!(limiter.limit() > 2, "the limit is restored");
    }
}
