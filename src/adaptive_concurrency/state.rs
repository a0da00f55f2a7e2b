//! [`AdaptiveConcurrency`]: the shared limit and its slots, independent of
//! tower.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::classify::Outcome;
use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::algorithm::{LimitAlgorithm, Limiter, Sample};
use super::config::AdaptiveConcurrencyConfig;
use super::error::ConcurrencyLimitExceeded;
use super::event::{AdaptiveConcurrencyEvent, AdaptiveConcurrencyEventKind};
use super::layer::AdaptiveConcurrencyLayer;
use super::metrics::AdaptiveConcurrencyMetrics;

/// A concurrency limit that adapts to the latency it measures: at most
/// `limit` calls run at once, others are rejected at once with
/// [`ConcurrencyLimitExceeded`], and every finished call moves the limit as
/// its [`LimitAlgorithm`] says. See the [module docs](super).
///
/// Clones share the limit. Build tower services with
/// [`layer`](Self::layer), or take slots with
/// [`try_acquire`](Self::try_acquire) and report each call's outcome on its
/// [`AdaptivePermit`].
///
/// ```
/// use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig};
/// use palisade::classify::Outcome;
///
/// let limit = AdaptiveConcurrency::new(
///     "search",
///     AdaptiveConcurrencyConfig::builder().initial_limit(1).build()?,
/// );
/// let permit = limit.try_acquire()?;
/// assert!(limit.try_acquire().is_err(), "one call at a time, for now");
/// permit.finish(Outcome::Success);
/// assert_eq!(limit.metrics().in_flight, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct AdaptiveConcurrency {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    config: AdaptiveConcurrencyConfig,
    /// The limit calls are admitted by; written under `limiter`.
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    limiter: Mutex<Limiter>,
    rejected: StripedCounter,
    samples: StripedCounter,
    failures: StripedCounter,
    cancelled: StripedCounter,
    events: EventHub<AdaptiveConcurrencyEvent>,
    exported: super::metrics::Exported,
}

impl AdaptiveConcurrency {
    /// Creates it after checking `name` as
    /// [`Bulkhead::try_new`](crate::bulkhead::Bulkhead::try_new) does.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: AdaptiveConcurrencyConfig,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("adaptive concurrency", name)?;
        Ok(Self::new(name, config))
    }

    /// Creates a limit named `name` (used in errors, events and traces).
    pub fn new(name: impl Into<Arc<str>>, config: AdaptiveConcurrencyConfig) -> Self {
        let limiter = Limiter::new(
            config.algorithm.clone(),
            config.initial_limit,
            config.min_limit,
            config.max_limit,
            config.smoothing,
            config.window_samples,
        );
        let name = name.into();
        let shared = Shared {
            exported: super::metrics::Exported::new(&name, limiter.limit()),
            name,
            limit: AtomicUsize::new(limiter.limit()),
            in_flight: AtomicUsize::new(0),
            limiter: Mutex::new(limiter),
            rejected: StripedCounter::new(),
            samples: StripedCounter::new(),
            failures: StripedCounter::new(),
            cancelled: StripedCounter::new(),
            events: EventHub::new(config.event_capacity),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &AdaptiveConcurrencyConfig {
        &self.shared.config
    }

    /// Whether `self` and `other` are the same limit.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// A layer that wraps services with this limit.
    pub fn layer(&self) -> AdaptiveConcurrencyLayer {
        AdaptiveConcurrencyLayer::new(self.clone())
    }

    /// Subscribes to its events.
    pub fn subscribe(&self) -> EventStream<AdaptiveConcurrencyEvent> {
        self.shared.events.subscribe()
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Acquire)
    }

    /// A slot if fewer calls than the limit are in flight; never waits.
    /// The call's latency counts from this moment.
    pub fn try_acquire(&self) -> Result<AdaptivePermit, ConcurrencyLimitExceeded> {
        self.acquire(true)
    }

    /// A slot for a call a service will make later (its clock starts at
    /// [`AdaptivePermit::start`]).
    pub(crate) fn reserve(&self) -> Result<AdaptivePermit, ConcurrencyLimitExceeded> {
        self.acquire(false)
    }

    fn acquire(&self, called: bool) -> Result<AdaptivePermit, ConcurrencyLimitExceeded> {
        let s = &*self.shared;
        let mut in_flight = s.in_flight.load(Relaxed);
        loop {
            let limit = s.limit.load(Acquire);
            if in_flight >= limit {
                s.rejected.add(1);
                s.exported.on_rejected();
                tracing::debug!(limiter = %s.name, limit, "adaptive concurrency limit rejected a call");
                s.events.publish_with(|| AdaptiveConcurrencyEvent {
                    name: Arc::clone(&s.name),
                    kind: AdaptiveConcurrencyEventKind::Rejected { limit },
                });
                return Err(ConcurrencyLimitExceeded::new(Arc::clone(&s.name), limit));
            }
            match s
                .in_flight
                .compare_exchange_weak(in_flight, in_flight + 1, AcqRel, Relaxed)
            {
                Ok(_) => {
                    s.exported.on_acquired();
                    return Ok(AdaptivePermit {
                        limit: Some(self.clone()),
                        // A reserved slot's call has not started: its clock
                        // is read when it does.
                        started: called.then(Instant::now),
                        in_flight: in_flight + 1,
                    });
                }
                Err(actual) => in_flight = actual,
            }
        }
    }

    /// A snapshot of the limit.
    pub fn metrics(&self) -> AdaptiveConcurrencyMetrics {
        let s = &*self.shared;
        let no_load_latency = match s.config.algorithm {
            LimitAlgorithm::Vegas(_) => s.limiter.lock().no_load_latency(),
            LimitAlgorithm::Aimd(_) => None,
        };
        AdaptiveConcurrencyMetrics {
            limit: s.limit.load(Acquire),
            in_flight: s.in_flight.load(Acquire),
            rejected: s.rejected.sum(),
            samples: s.samples.sum(),
            failures: s.failures.sum(),
            cancelled: s.cancelled.sum(),
            no_load_latency,
        }
    }

    fn sample(&self, sample: Sample) {
        let s = &*self.shared;
        s.samples.add(1);
        if sample.dropped {
            s.failures.add(1);
        }
        s.exported.on_sample(sample.dropped);
        let mut limiter = s.limiter.lock();
        let from = limiter.limit();
        let to = limiter.update(sample);
        if from != to {
            s.limit.store(to, Release);
            s.exported.on_limit(to);
            drop(limiter);
            tracing::debug!(limiter = %s.name, from, to, "adaptive concurrency limit changed");
            s.events.publish_with(|| AdaptiveConcurrencyEvent {
                name: Arc::clone(&s.name),
                kind: AdaptiveConcurrencyEventKind::LimitChanged { from, to },
            });
        }
    }
}

impl fmt::Debug for AdaptiveConcurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrency")
            .field("name", &self.shared.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.shared.in_flight.load(Relaxed))
            .finish()
    }
}

/// One call's slot in an [`AdaptiveConcurrency`] limit. Report how the call
/// ended with [`finish`](Self::finish); dropping the permit without it gives
/// the slot back and takes no sample (the call was cancelled, which says
/// nothing about the dependency's latency).
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct AdaptivePermit {
    limit: Option<AdaptiveConcurrency>,
    /// When the call started; `None` while a service holds the slot for a
    /// call not made yet (dropped then, it is not a cancelled call).
    started: Option<Instant>,
    in_flight: usize,
}

impl AdaptivePermit {
    /// Restarts the latency clock: the call starts now.
    pub(crate) fn start(&mut self) {
        self.started = Some(Instant::now());
    }

    /// Ends the call with `outcome`: a success or a failure is a latency
    /// sample (a failure counts as a drop), an ignored outcome is none; the
    /// slot is given back.
    pub fn finish(mut self, outcome: Outcome) {
        let Some(limit) = self.limit.take() else {
            return;
        };
        limit.shared.in_flight.fetch_sub(1, AcqRel);
        limit.shared.exported.on_released();
        let dropped = match outcome {
            Outcome::Success => false,
            Outcome::Failure { .. } => true,
            Outcome::Ignored => return,
        };
        let Some(started) = self.started else {
            return;
        };
        limit.sample(Sample {
            started,
            latency: started.elapsed(),
            in_flight: self.in_flight,
            dropped,
        });
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        if let Some(limit) = self.limit.take() {
            limit.shared.in_flight.fetch_sub(1, AcqRel);
            limit.shared.exported.on_released();
            if self.started.is_some() {
                limit.shared.cancelled.add(1);
                limit.shared.exported.on_cancelled();
            }
        }
    }
}

impl fmt::Debug for AdaptivePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePermit")
            .field("limit", &self.limit.as_ref().map(|limit| limit.name()))
            .field("in_flight", &self.in_flight)
            .finish()
    }
}
