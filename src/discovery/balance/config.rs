//! The validated configuration of a balancer: the picker, outlier
//! detection and per-instance circuit breakers.

use std::sync::Arc;
use std::time::Duration;

use crate::circuit_breaker::CircuitBreakerConfig;
use crate::clock::CallClock;
use crate::error::ConfigError;
use crate::events::check_event_capacity;

const COMPONENT: &str = "balancer";
const OUTLIER: &str = "outlier detection";

/// How a balancer picks the instance for each call.
///
/// | picker | picks | cost per pick |
/// |---|---|---|
/// | [`RoundRobin`](Picker::RoundRobin) | each instance in turn (shared by every clone of the balancer) | one shared atomic increment |
/// | [`Random`](Picker::Random) | uniformly at random | one random number |
/// | [`Weighted`](Picker::Weighted) | at random, in proportion to [`Instance::weight`](crate::discovery::Instance::weight) | one random number, a walk down a binary tree of weight sums (O(log n)) |
/// | [`LeastLoaded`](Picker::LeastLoaded) | the one with fewer calls in flight of two picked at random (P2C) | one random number, two tree walks, two atomic loads |
/// | [`PeakEwma`](Picker::PeakEwma) | the cheaper of two picked at random, cost = peak-EWMA latency × (calls in flight + 1) (P2C, as linkerd and Finagle) | as above, two more atomic loads and one `exp` when the two loads differ; the call reads the [`call_clock`](BalanceConfigBuilder::call_clock) (by default the CPU's time-stamp counter) when it starts and again when it completes, to time it |
///
/// Peak-EWMA's picks compare estimates without reading the clock. The
/// call's completion updates its instance's estimate without `exp` or
/// `ln` when the call and the idle time before it are short next to
/// `decay` (below a thousandth of it), with one or two of them otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Picker {
    /// Each instance in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// At random, in proportion to the instances' weights.
    Weighted,
    /// Power of two choices by calls in flight.
    LeastLoaded,
    /// Power of two choices by peak-EWMA latency times calls in flight.
    PeakEwma {
        /// The latency assumed for an instance not yet measured. Default 30 ms.
        default_rtt: Duration,
        /// How fast old latencies are forgotten: an observation's weight
        /// falls by `e` every `decay`. Default 10 s.
        decay: Duration,
    },
}

impl Picker {
    /// [`Picker::PeakEwma`] with the defaults (30 ms, 10 s).
    pub const fn peak_ewma() -> Self {
        Picker::PeakEwma {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

impl Default for Picker {
    /// [`Picker::peak_ewma`].
    fn default() -> Self {
        Picker::peak_ewma()
    }
}

/// Passive health checking, as Envoy's outlier detection: an instance
/// whose calls fail `consecutive_failures` times in a row (as the
/// balancer's [`Classify`](crate::classify::Classify) decides) is ejected,
/// taken out of the picks, for `base_ejection_time × n` (`n`: its
/// ejection count, below; the time capped at `max_ejection_time`), then
/// returns. An ejection that would leave more than `max_ejection_percent`
/// of the instances ejected does not happen.
///
/// The ejection count goes up by one with each ejection and down by one
/// for every full `base_ejection_time` the instance then spends back in the
/// picks, so an instance that fails once a day does not creep to
/// `max_ejection_time` for good. Envoy likewise lowers its ejection
/// multiplier while a host stays healthy, once per detection `interval`
/// (10 s by default); palisade has no interval and uses
/// `base_ejection_time`. An update of the instance (weight, address, tags,
/// metadata) keeps its ejection, count and failures in a row.
///
/// Two more differences from Envoy: `max_ejection_percent` is strict
/// (with 3 instances and 50 %, one may be ejected; Envoy always allows at
/// least one), and its default is 50 % where Envoy's is 10 %.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `consecutive_failures` | 5 | Failures in a row that eject an instance (Envoy's `consecutive_5xx`). |
/// | `base_ejection_time` | 30 s | Ejection time of a first ejection; the `n`th lasts `n` times as long. |
/// | `max_ejection_time` | 300 s | The longest an ejection lasts. |
/// | `max_ejection_percent` | 50 | The most instances ejected at once, in percent of the instances (rounded down); strict, unlike Envoy's "at least one". |
///
/// Both ejection times are at most
/// [`MAX_EJECTION_TIME`](OutlierDetection::MAX_EJECTION_TIME) (365 days):
/// `build` rejects a longer one (such as `Duration::MAX`) naming the field,
/// rather than letting the first ejection overflow the clock.
///
/// ```
/// use std::time::Duration;
/// use palisade::discovery::OutlierDetection;
///
/// let outliers = OutlierDetection::builder()
///     .consecutive_failures(3)
///     .base_ejection_time(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(outliers.max_ejection_percent(), 50);
/// assert_eq!(
///     OutlierDetection::builder().consecutive_failures(0).build().unwrap_err().field(),
///     "consecutive_failures"
/// );
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_ejection_time: Duration,
    pub(crate) max_ejection_time: Duration,
    pub(crate) max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// The longest `base_ejection_time` or `max_ejection_time` accepted:
    /// 365 days.
    pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// Starts from the defaults.
    pub fn builder() -> OutlierDetectionBuilder {
        OutlierDetectionBuilder {
            config: Self::default(),
        }
    }

    /// Failures in a row that eject an instance.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Ejection time of a first ejection.
    pub fn base_ejection_time(&self) -> Duration {
        self.base_ejection_time
    }

    /// The longest an ejection lasts.
    pub fn max_ejection_time(&self) -> Duration {
        self.max_ejection_time
    }

    /// The most instances ejected at once, in percent.
    pub fn max_ejection_percent(&self) -> u8 {
        self.max_ejection_percent
    }

    /// How long an ejection lasts when the instance's ejection count,
    /// this ejection included, is `ejections`: `base_ejection_time ×
    /// ejections` (at least once), capped at `max_ejection_time`.
    pub fn ejection_time(&self, ejections: u32) -> Duration {
        self.base_ejection_time
            .checked_mul(ejections.max(1))
            .map_or(self.max_ejection_time, |t| t.min(self.max_ejection_time))
    }
}

/// Builds an [`OutlierDetection`]; every setter is checked in
/// [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct OutlierDetectionBuilder {
    config: OutlierDetection,
}

impl OutlierDetectionBuilder {
    /// Failures in a row that eject an instance, at least 1. Default 5.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.consecutive_failures = failures;
        self
    }

    /// Ejection time of a first ejection, at least 1 ms and at most
    /// [`OutlierDetection::MAX_EJECTION_TIME`]. Default 30 s.
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.config.base_ejection_time = time;
        self
    }

    /// The longest an ejection lasts, at least `base_ejection_time` and at
    /// most [`OutlierDetection::MAX_EJECTION_TIME`]. Default 300 s.
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.config.max_ejection_time = time;
        self
    }

    /// The most instances ejected at once, 1 to 100 percent. Default 50.
    pub fn max_ejection_percent(mut self, percent: u8) -> Self {
        self.config.max_ejection_percent = percent;
        self
    }

    /// Checks every field and returns the configuration, or the first
    /// field that breaks its rule.
    pub fn build(self) -> Result<OutlierDetection, ConfigError> {
        let c = &self.config;
        if c.consecutive_failures == 0 {
            return Err(ConfigError::new(
                OUTLIER,
                "consecutive_failures",
                "must be at least 1, got 0",
            ));
        }
        if c.base_ejection_time < Duration::from_millis(1) {
            return Err(ConfigError::new(
                OUTLIER,
                "base_ejection_time",
                format!("must be at least 1ms, got {:?}", c.base_ejection_time),
            ));
        }
        for (field, time) in [
            ("base_ejection_time", c.base_ejection_time),
            ("max_ejection_time", c.max_ejection_time),
        ] {
            if time > OutlierDetection::MAX_EJECTION_TIME {
                return Err(ConfigError::new(
                    OUTLIER,
                    field,
                    format!(
                        "must be at most {:?} (365 days), got {time:?}",
                        OutlierDetection::MAX_EJECTION_TIME
                    ),
                ));
            }
        }
        if c.max_ejection_time < c.base_ejection_time {
            return Err(ConfigError::new(
                OUTLIER,
                "max_ejection_time",
                format!(
                    "must be at least base_ejection_time ({:?}), got {:?}",
                    c.base_ejection_time, c.max_ejection_time
                ),
            ));
        }
        if !(1..=100).contains(&c.max_ejection_percent) {
            return Err(ConfigError::new(
                OUTLIER,
                "max_ejection_percent",
                format!("must be 1 to 100, got {}", c.max_ejection_percent),
            ));
        }
        Ok(self.config)
    }
}

/// A balancer's configuration, built by [`BalanceConfig::builder`]; see
/// the [module docs](crate::discovery) for every option.
///
/// Two configurations are equal when every option is; a configuration
/// with a [`circuit_breaker`](BalanceConfigBuilder::circuit_breaker) is
/// equal only to its clones (a breaker configuration may hold a function,
/// which cannot be compared).
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    pub(crate) picker: Picker,
    pub(crate) outlier_detection: Option<OutlierDetection>,
    pub(crate) circuit_breaker: Option<Arc<CircuitBreakerConfig>>,
    pub(crate) event_capacity: usize,
    pub(crate) rng_seed: Option<u64>,
    pub(crate) call_clock: CallClock,
}

impl PartialEq for BalanceConfig {
    fn eq(&self, other: &Self) -> bool {
        let breakers = match (&self.circuit_breaker, &other.circuit_breaker) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        breakers
            && self.picker == other.picker
            && self.outlier_detection == other.outlier_detection
            && self.event_capacity == other.event_capacity
            && self.rng_seed == other.rng_seed
            && self.call_clock == other.call_clock
    }
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            picker: Picker::default(),
            outlier_detection: None,
            circuit_breaker: None,
            event_capacity: 256,
            rng_seed: None,
            call_clock: CallClock::Tsc,
        }
    }
}

impl BalanceConfig {
    /// Starts from the defaults: [`Picker::peak_ewma`], no outlier
    /// detection, no circuit breakers, 256 events per subscriber, calls
    /// timed by [`CallClock::Tsc`].
    pub fn builder() -> BalanceConfigBuilder {
        BalanceConfigBuilder {
            config: Self::default(),
        }
    }

    /// The picker.
    pub fn picker(&self) -> Picker {
        self.picker
    }

    /// The outlier detection, if any.
    pub fn outlier_detection(&self) -> Option<&OutlierDetection> {
        self.outlier_detection.as_ref()
    }

    /// The configuration of each instance's circuit breaker, if any.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerConfig> {
        self.circuit_breaker.as_deref()
    }

    /// The seed of the pickers' random numbers, if set.
    pub fn rng_seed(&self) -> Option<u64> {
        self.rng_seed
    }

    /// The clock that times calls for [`Picker::PeakEwma`] (default
    /// [`CallClock::Tsc`]).
    pub fn call_clock(&self) -> CallClock {
        self.call_clock
    }
}

/// Builds a [`BalanceConfig`]; every setter is checked in
/// [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a configuration"]
pub struct BalanceConfigBuilder {
    config: BalanceConfig,
}

impl BalanceConfigBuilder {
    /// How each call's instance is picked. Default [`Picker::peak_ewma`].
    pub fn picker(mut self, picker: Picker) -> Self {
        self.config.picker = picker;
        self
    }

    /// Ejects instances whose calls keep failing. Default: off.
    pub fn outlier_detection(mut self, outliers: OutlierDetection) -> Self {
        self.config.outlier_detection = Some(outliers);
        self
    }

    /// Gives each instance its own [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker)
    /// with this configuration, named `"<service>/<instance id>"`: created
    /// when the instance is added (or updated: a new client gets a new
    /// breaker) and dropped when it leaves. An instance whose breaker
    /// rejects calls is not picked; each call's outcome, as the balancer's
    /// classifier decides, is recorded on its instance's breaker. When every
    /// instance's breaker rejects, calls fail at once with
    /// [`BreakerOpen`](crate::circuit_breaker::BreakerOpen). Default: none.
    ///
    /// The configuration was validated by its own builder.
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.config.circuit_breaker = Some(Arc::new(config));
        self
    }

    /// Seeds the random numbers the pickers draw ([`Picker::Random`],
    /// [`Picker::Weighted`], the two choices of [`Picker::LeastLoaded`] and
    /// [`Picker::PeakEwma`], and where a call goes when breakers reject),
    /// so that a test replays the same picks. The balancer made from this
    /// configuration and each of its clones, in the order they are made,
    /// get their own generator seeded from it. Default: seeded from the
    /// operating system, different every run.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.config.rng_seed = Some(seed);
        self
    }

    /// The clock that times calls for [`Picker::PeakEwma`] (the other
    /// pickers read no clock); it is read twice per call, when the call
    /// starts and when it completes. Default [`CallClock::Tsc`]: exact,
    /// each read one read of the CPU's time-stamp counter (about half a
    /// `std::time::Instant::now()`), but real time only: it ignores
    /// `tokio::time::pause()`. [`CallClock::Tokio`] follows
    /// `tokio::time::pause()` and `advance()` (select it in tests that
    /// expect the measured latencies, and so the picks, to follow virtual
    /// time, or replay the same picks from a seed) at the cost of a
    /// `tokio::time::Instant::now()` per read (as much as
    /// `std::time::Instant::now()`: about twice the TSC's).
    /// [`CallClock::Coarse`] makes each read one atomic load but measures
    /// latencies in whole ticks of about a millisecond. See
    /// [`crate::clock`].
    pub fn call_clock(mut self, clock: CallClock) -> Self {
        self.config.call_clock = clock;
        self
    }

    /// Events buffered per subscriber, 1 to 1,048,576. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the configuration, or the first
    /// field that breaks its rule.
    pub fn build(self) -> Result<BalanceConfig, ConfigError> {
        if let Picker::PeakEwma { default_rtt, decay } = self.config.picker {
            if default_rtt.is_zero() {
                return Err(ConfigError::new(
                    COMPONENT,
                    "picker",
                    "PeakEwma default_rtt must be greater than zero",
                ));
            }
            if decay < Duration::from_millis(1) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "picker",
                    format!("PeakEwma decay must be at least 1ms, got {decay:?}"),
                ));
            }
        }
        check_event_capacity(COMPONENT, self.config.event_capacity)?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_ejection_lasts_n_base_times_capped_at_the_max() {
        let outliers = OutlierDetection::builder()
            .base_ejection_time(Duration::from_millis(30))
            .max_ejection_time(Duration::from_millis(100))
            .build()
            .unwrap();
        let times: Vec<u64> = (0..=6)
            .map(|n| outliers.ejection_time(n).as_millis() as u64)
            .collect();
        assert_eq!(times, [30, 30, 60, 90, 100, 100, 100]);
        assert_eq!(outliers.ejection_time(u32::MAX), Duration::from_millis(100));
    }
}
