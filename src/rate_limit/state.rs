//! [`RateLimiter`]: the shared limiter, built on `governor`'s GCRA.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::clock::{DirectGcra, GovernorClock};
use governor::Quota;
use governor::clock::Clock;

use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::config::RateLimiterConfig;
use super::error::RateLimited;
use super::event::{RateLimiterEvent, RateLimiterEventKind};
use super::layer::RateLimiterLayer;
use super::metrics::RateLimiterMetrics;

type Gcra = DirectGcra;

struct Inner {
    name: Arc<str>,
    config: RateLimiterConfig,
    gcra: Gcra,
    clock: GovernorClock,
    events: EventHub<RateLimiterEvent>,
    permitted: StripedCounter,
    permitted_after_waiting: StripedCounter,
    rejected: StripedCounter,
    waiting: AtomicUsize,
    exported: super::metrics::Exported,
}

/// A rate limiter: at most `limit_for_period` calls per
/// `limit_refresh_period`, shared by every clone and every service built
/// from it. See the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let limiter = RateLimiter::new(
///     "emails",
///     RateLimiterConfig::builder()
///         .limit_for_period(2)
///         .limit_refresh_period(Duration::from_secs(1))
///         .build()?,
/// );
/// assert!(limiter.try_acquire().is_ok());
/// assert!(limiter.try_acquire().is_ok());
/// let rejected = limiter.try_acquire().unwrap_err();
/// assert_eq!(rejected.limiter(), "emails");
/// assert!(rejected.retry_after() <= Duration::from_millis(500));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl RateLimiter {
    /// Creates it after checking `name`, which appears in errors, events,
    /// traces and metrics labels: it must be non-empty, without surrounding
    /// whitespace or control characters, and at most
    /// [`MAX_NAME_LEN`](crate::circuit_breaker::MAX_NAME_LEN) bytes; a
    /// [`ConfigError`](crate::ConfigError) on field `name` says which rule
    /// it broke. Use it for names that come from configuration or requests;
    /// [`new`](Self::new) takes a name written in the code as it is.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: RateLimiterConfig,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("rate_limiter", name)?;
        Ok(Self::new(name, config))
    }

    /// A limiter named `name` (used in errors, events and traces).
    ///
    /// Its clock is tokio's, anchored when it is created.
    pub fn new(name: impl Into<Arc<str>>, config: RateLimiterConfig) -> Self {
        let quota = Quota::with_period(config.replenish_interval())
            .expect("the config builder rejects a zero replenish interval")
            .allow_burst(config.limit_for_period);
        let clock = GovernorClock::new();
        let name = name.into();
        let inner = Inner {
            exported: super::metrics::Exported::new(&name, false),
            name,
            gcra: governor::RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            events: EventHub::new(config.event_capacity),
            config,
            permitted: StripedCounter::new(),
            permitted_after_waiting: StripedCounter::new(),
            rejected: StripedCounter::new(),
            waiting: AtomicUsize::new(0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The limiter's configuration.
    pub fn config(&self) -> &RateLimiterConfig {
        &self.inner.config
    }

    /// Whether `self` and `other` are the same limiter (clones of one another).
    pub fn ptr_eq(&self, other: &RateLimiter) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A layer whose services take a permit of this limiter for every call.
    pub fn layer(&self) -> RateLimiterLayer {
        RateLimiterLayer::new(self.clone())
    }

    /// Subscribes to the limiter's events.
    pub fn subscribe(&self) -> EventStream<RateLimiterEvent> {
        self.inner.events.subscribe()
    }

    /// Takes a permit if one is available now; never waits.
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        match self.check() {
            Ok(()) => {
                self.on_permitted(Duration::ZERO);
                Ok(())
            }
            Err(retry_after) => Err(self.on_rejected(retry_after)),
        }
    }

    /// Takes a permit, waiting for it at most `max_wait_duration`.
    ///
    /// A caller whose permit would come after its deadline is rejected as
    /// soon as that is known. Waiters are not served in FIFO order: each
    /// tries again when its permit should be due. Dropping the future
    /// stops the wait and takes nothing.
    pub async fn acquire(&self) -> Result<(), RateLimited> {
        let retry_after = match self.check() {
            Ok(()) => {
                self.on_permitted(Duration::ZERO);
                return Ok(());
            }
            Err(wait) => wait,
        };
        let mut wait = match self.start_waiting(retry_after) {
            Ok(wait) => wait,
            Err(rejected) => return Err(rejected),
        };
        loop {
            tokio::time::sleep_until(wait.due()).await;
            if let Some(result) = wait.poll_permit() {
                return result;
            }
        }
    }

    /// A snapshot of the limiter's counters.
    pub fn metrics(&self) -> RateLimiterMetrics {
        let i = &self.inner;
        RateLimiterMetrics {
            permitted: i.permitted.sum(),
            permitted_after_waiting: i.permitted_after_waiting.sum(),
            rejected: i.rejected.sum(),
            waiting: i.waiting.load(Ordering::Relaxed),
        }
    }

    /// Takes a permit if one is free, or says how long until the next one.
    #[inline]
    pub(crate) fn check(&self) -> Result<(), Duration> {
        self.inner
            .gcra
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.inner.clock.now()))
    }

    #[inline]
    pub(crate) fn on_permitted(&self, waited: Duration) {
        let i = &self.inner;
        i.permitted.add(1);
        i.exported.on_permitted(waited);
        if !waited.is_zero() {
            i.permitted_after_waiting.add(1);
        }
        i.events.publish_with(|| RateLimiterEvent {
            limiter: Arc::clone(&i.name),
            kind: RateLimiterEventKind::Acquired { waited },
        });
    }

    pub(crate) fn on_rejected(&self, retry_after: Duration) -> RateLimited {
        let i = &self.inner;
        i.rejected.add(1);
        i.exported.on_rejected();
        tracing::debug!(
            rate_limiter = %i.name,
            retry_after_ms = retry_after.as_millis() as u64,
            "rate limiter rejected a call"
        );
        i.events.publish_with(|| RateLimiterEvent {
            limiter: Arc::clone(&i.name),
            kind: RateLimiterEventKind::Rejected { retry_after },
        });
        RateLimited::new(Arc::clone(&i.name), retry_after)
    }

    /// Starts waiting for a permit due in `retry_after`, or rejects the call
    /// if that is later than `max_wait_duration` (or than the clock can
    /// represent).
    pub(crate) fn start_waiting(&self, retry_after: Duration) -> Result<Waiting, RateLimited> {
        let max_wait = self.inner.config.max_wait_duration;
        let now = tokio::time::Instant::now();
        let due = match now.checked_add(retry_after) {
            Some(due) if retry_after <= max_wait => due,
            _ => return Err(self.on_rejected(retry_after)),
        };
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        self.inner.exported.on_waiting(1);
        Ok(Waiting {
            limiter: self.clone(),
            started: now,
            // A wait too long for the clock to represent its end has none.
            deadline: now.checked_add(max_wait),
            due,
        })
    }
}

/// A caller waiting for a permit; counted in `metrics().waiting` until it
/// gets one, gives up, or is dropped.
pub(crate) struct Waiting {
    limiter: RateLimiter,
    started: tokio::time::Instant,
    /// `None`: `max_wait_duration` is too long for the clock, so no end.
    deadline: Option<tokio::time::Instant>,
    due: tokio::time::Instant,
}

impl Waiting {
    /// When to try again.
    pub(crate) fn due(&self) -> tokio::time::Instant {
        self.due
    }

    /// Tries for the permit once its time has come: `None` means wait
    /// until [`due`](Self::due) again.
    pub(crate) fn poll_permit(&mut self) -> Option<Result<(), RateLimited>> {
        let now = tokio::time::Instant::now();
        match self.limiter.check() {
            Ok(()) => {
                self.limiter
                    .on_permitted(now.saturating_duration_since(self.started));
                Some(Ok(()))
            }
            Err(retry_after) => match now.checked_add(retry_after) {
                Some(due) if self.deadline.is_none_or(|deadline| due <= deadline) => {
                    self.due = due;
                    None
                }
                _ => Some(Err(self.limiter.on_rejected(retry_after))),
            },
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.limiter.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        self.limiter.inner.exported.on_waiting(-1);
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
