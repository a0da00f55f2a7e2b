//! [`Chaos`]: the shared, switchable fault injector, independent of tower.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::BoxError;
use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::config::ChaosConfig;
use super::error::ChaosFault;
use super::event::{ChaosEvent, ChaosEventKind};
use super::layer::ChaosLayer;
use super::metrics::{ChaosMetrics, Fault};

/// A named fault injector: fails, answers or delays a configured share of
/// the calls through its services, from a seeded random sequence. Switch it
/// on and off ([`enable`](Self::enable), [`disable`](Self::disable)) and
/// replace its configuration ([`reconfigure`](Self::reconfigure)) while
/// services run; every clone and every service built from it sees the
/// change at its next call. See the [module docs](super).
///
/// ```
/// use palisade::chaos::{Chaos, ChaosConfig};
///
/// let chaos = Chaos::<String>::new("inventory", ChaosConfig::builder().error_rate(0.5).build()?);
/// chaos.disable();
/// assert!(!chaos.metrics().enabled);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub struct Chaos<Res> {
    shared: Arc<Shared<Res>>,
}

struct Shared<Res> {
    name: Arc<str>,
    /// Read first by every call: when `false` a call costs this one load.
    enabled: AtomicBool,
    active: ArcSwap<Active<Res>>,
    events: EventHub<ChaosEvent>,
    calls_while_enabled: StripedCounter,
    errors_injected: StripedCounter,
    responses_injected: StripedCounter,
    latencies_injected: StripedCounter,
    exported: super::metrics::Exported,
}

/// The configuration in force and its random sequence.
struct Active<Res> {
    config: ChaosConfig<Res>,
    seed: u64,
    /// Draws made from this configuration's sequence.
    draws: AtomicU64,
}

impl<Res> Active<Res> {
    fn new(config: ChaosConfig<Res>) -> Self {
        let seed = config.seed.unwrap_or_else(rand::random);
        Self {
            config,
            seed,
            draws: AtomicU64::new(0),
        }
    }
}

/// What a call meets: a delay, then an injected outcome or the service.
pub(crate) struct Decision<Res> {
    pub(crate) delay: Option<Duration>,
    pub(crate) injected: Option<Result<Res, BoxError>>,
}

impl<Res> Clone for Chaos<Res> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Res> Chaos<Res> {
    /// Creates it after checking `name` as
    /// [`Bulkhead::try_new`](crate::bulkhead::Bulkhead::try_new) does.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: ChaosConfig<Res>,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("chaos", name)?;
        Ok(Self::new(name, config))
    }

    /// Creates a chaos layer named `name` (used in errors, events and traces).
    pub fn new(name: impl Into<Arc<str>>, config: ChaosConfig<Res>) -> Self {
        let name = name.into();
        let shared = Shared {
            exported: super::metrics::Exported::new(&name, config.enabled),
            name,
            enabled: AtomicBool::new(config.enabled),
            events: EventHub::new(config.event_capacity),
            active: ArcSwap::from_pointee(Active::new(config)),
            calls_while_enabled: StripedCounter::new(),
            errors_injected: StripedCounter::new(),
            responses_injected: StripedCounter::new(),
            latencies_injected: StripedCounter::new(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A layer that wraps services with this chaos.
    pub fn layer(&self) -> ChaosLayer<Res> {
        ChaosLayer::new(self.clone())
    }

    /// Whether `self` and `other` are the same chaos layer.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Subscribes to its events.
    pub fn subscribe(&self) -> EventStream<ChaosEvent> {
        self.shared.events.subscribe()
    }

    /// Whether faults are injected now.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Relaxed)
    }

    /// Starts injecting faults (from the next call).
    pub fn enable(&self) {
        self.switch(true);
    }

    /// Stops injecting faults (from the next call); calls then cost one
    /// atomic load more than the bare service.
    pub fn disable(&self) {
        self.switch(false);
    }

    fn switch(&self, enabled: bool) {
        let s = &*self.shared;
        if s.enabled.swap(enabled, AcqRel) != enabled {
            s.exported.on_switched(enabled);
            tracing::info!(chaos = %s.name, enabled, "chaos switched");
            s.events.publish_with(|| ChaosEvent {
                chaos: Arc::clone(&s.name),
                kind: ChaosEventKind::Switched { enabled },
            });
        }
    }

    /// The configuration in force (as last given, with `enabled` as it was
    /// then; [`is_enabled`](Self::is_enabled) says whether it is on now).
    pub fn config(&self) -> ChaosConfig<Res> {
        self.shared.active.load().config.clone()
    }

    /// Replaces the configuration, from the next call: rates, faults,
    /// `enabled`, and the seed (the random sequence restarts from it).
    /// `event_capacity` is kept from creation.
    pub fn reconfigure(&self, config: ChaosConfig<Res>) {
        let s = &*self.shared;
        let enabled = config.enabled;
        s.active.store(Arc::new(Active::new(config)));
        tracing::info!(chaos = %s.name, enabled, "chaos reconfigured");
        s.events.publish_with(|| ChaosEvent {
            chaos: Arc::clone(&s.name),
            kind: ChaosEventKind::Reconfigured,
        });
        self.switch(enabled);
    }

    /// A snapshot of what it injected.
    pub fn metrics(&self) -> ChaosMetrics {
        let s = &*self.shared;
        ChaosMetrics {
            enabled: s.enabled.load(Relaxed),
            calls_while_enabled: s.calls_while_enabled.sum(),
            errors_injected: s.errors_injected.sum(),
            responses_injected: s.responses_injected.sum(),
            latencies_injected: s.latencies_injected.sum(),
        }
    }

    /// What the next call meets, or `None` when injection is off (the hot
    /// path: one atomic load).
    #[inline]
    pub(crate) fn decide(&self) -> Option<Decision<Res>> {
        if !self.shared.enabled.load(Relaxed) {
            return None;
        }
        Some(self.draw())
    }

    #[cold]
    fn draw(&self) -> Decision<Res> {
        let s = &*self.shared;
        s.calls_while_enabled.add(1);
        s.exported.on_call();
        let active = s.active.load();
        let config = &active.config;
        let draw = active.draws.fetch_add(1, Relaxed);
        // One small generator per call, seeded from the configuration's
        // seed and the call's place in the sequence: deterministic for a
        // given order of calls, with no lock.
        let mut rng =
            SmallRng::seed_from_u64(active.seed ^ draw.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let outcome: f64 = rng.random();
        let slow: f64 = rng.random();

        let delay = (slow < config.latency_rate && !config.latency.is_zero()).then(|| {
            s.latencies_injected.add(1);
            s.exported.on_fault(Fault::Latency);
            tracing::debug!(chaos = %s.name, delay_ms = config.latency.as_millis() as u64, "chaos delays a call");
            s.events.publish_with(|| ChaosEvent {
                chaos: Arc::clone(&s.name),
                kind: ChaosEventKind::LatencyInjected {
                    delay: config.latency,
                },
            });
            config.latency
        });
        let injected = if outcome < config.error_rate {
            s.errors_injected.add(1);
            s.exported.on_fault(Fault::Error);
            tracing::debug!(chaos = %s.name, "chaos injects an error");
            s.events.publish_with(|| ChaosEvent {
                chaos: Arc::clone(&s.name),
                kind: ChaosEventKind::ErrorInjected,
            });
            Some(Err(match &config.error {
                Some(make_error) => make_error(),
                None => Box::new(ChaosFault::new(Arc::clone(&s.name))) as BoxError,
            }))
        } else if outcome < config.error_rate + config.response_rate {
            config.response.as_ref().map(|make_response| {
                s.responses_injected.add(1);
                s.exported.on_fault(Fault::Response);
                tracing::debug!(chaos = %s.name, "chaos injects a response");
                s.events.publish_with(|| ChaosEvent {
                    chaos: Arc::clone(&s.name),
                    kind: ChaosEventKind::ResponseInjected,
                });
                Ok(make_response())
            })
        } else {
            None
        };
        Decision { delay, injected }
    }
}

impl<Res> fmt::Debug for Chaos<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.shared.name)
            .field("metrics", &self.metrics())
            .finish()
    }
}
