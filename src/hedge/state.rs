//! [`Hedge`]: the shared state of a hedging layer (configuration, budget,
//! latency percentile, metrics, events), independent of tower.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{EventHub, EventStream};
use crate::sync::StripedCounter;

use super::config::{HedgeConfig, HedgeDelay};
use super::event::{HedgeEvent, HedgeEventKind};
use super::latency::LatencyPercentile;
use super::layer::HedgeLayer;
use super::metrics::HedgeMetrics;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) config: HedgeConfig,
    pub(crate) latency: Option<LatencyPercentile>,
    pub(crate) events: EventHub<HedgeEvent>,
    pub(crate) calls: StripedCounter,
    pub(crate) hedges_started: StripedCounter,
    pub(crate) hedge_wins: StripedCounter,
    pub(crate) budget_exhaustions: StripedCounter,
    pub(crate) not_hedgeable: StripedCounter,
    pub(crate) exported: super::metrics::Exported,
}

impl Shared {
    /// The delay before the next hedged attempt, if one is known.
    #[inline]
    pub(crate) fn delay(&self) -> Option<Duration> {
        match (&self.config.delay, &self.latency) {
            (HedgeDelay::Fixed(delay), _) => Some(*delay),
            (HedgeDelay::LatencyPercentile { .. }, Some(latency)) => latency.delay(),
            (HedgeDelay::LatencyPercentile { .. }, None) => None,
        }
    }

    /// Records the latency of a call answered acceptably.
    #[inline]
    pub(crate) fn record_latency(&self, latency: Duration) {
        if let Some(tracker) = &self.latency {
            tracker.record(latency);
        }
    }

    /// Takes a token for a hedged attempt, if a budget asks for one.
    pub(crate) fn withdraw(&self) -> bool {
        match &self.config.budget {
            None => true,
            Some(budget) if budget.withdraw() => true,
            Some(_) => {
                self.budget_exhaustions.add(1);
                self.exported.on_budget_exhausted();
                tracing::debug!(hedge = %self.name, "hedge budget exhausted");
                self.publish(HedgeEventKind::BudgetExhausted);
                false
            }
        }
    }

    #[inline]
    pub(crate) fn publish(&self, kind: HedgeEventKind) {
        self.events.publish_with(|| HedgeEvent {
            hedge: Arc::clone(&self.name),
            kind,
        });
    }
}

/// A named hedging policy: its configuration, its budget, the latency it
/// measures, its metrics and events, shared by every clone and every
/// service built from it. Build tower services with
/// [`layer`](Self::layer); see the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
///
/// let hedge = Hedge::new(
///     "quotes",
///     HedgeConfig::builder()
///         .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
///         .build()?,
/// );
/// assert_eq!(hedge.metrics().delay, Some(Duration::from_millis(50)));
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Hedge {
    pub(crate) shared: Arc<Shared>,
}

impl Hedge {
    /// Creates it after checking `name` as
    /// [`Bulkhead::try_new`](crate::bulkhead::Bulkhead::try_new) does.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: HedgeConfig,
    ) -> Result<Self, crate::ConfigError> {
        let name = crate::circuit_breaker::check_name("hedge", name)?;
        Ok(Self::new(name, config))
    }

    /// A hedge named `name` (used in events and traces).
    pub fn new(name: impl Into<Arc<str>>, config: HedgeConfig) -> Self {
        let latency = match config.delay {
            HedgeDelay::Fixed(_) => None,
            HedgeDelay::LatencyPercentile {
                percentile,
                min_samples,
                window,
            } => Some(LatencyPercentile::new(percentile, min_samples, window)),
        };
        let name = name.into();
        let shared = Shared {
            exported: super::metrics::Exported::new(&name),
            name,
            latency,
            events: EventHub::new(config.event_capacity),
            config,
            calls: StripedCounter::new(),
            hedges_started: StripedCounter::new(),
            hedge_wins: StripedCounter::new(),
            budget_exhaustions: StripedCounter::new(),
            not_hedgeable: StripedCounter::new(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its configuration.
    pub fn config(&self) -> &HedgeConfig {
        &self.shared.config
    }

    /// Whether `self` and `other` are the same hedge.
    pub fn ptr_eq(&self, other: &Hedge) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// A layer whose services hedge with this configuration; every `Err`
    /// is a failure worth another attempt and requests are copied by
    /// cloning them until you say otherwise with
    /// [`HedgeLayer::with_classifier`] / [`HedgeLayer::with_policy`].
    pub fn layer(&self) -> HedgeLayer {
        HedgeLayer::new(self.clone())
    }

    /// Subscribes to its events.
    pub fn subscribe(&self) -> EventStream<HedgeEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of what its services did.
    pub fn metrics(&self) -> HedgeMetrics {
        let s = &self.shared;
        HedgeMetrics {
            calls: s.calls.sum(),
            hedges_started: s.hedges_started.sum(),
            hedge_wins: s.hedge_wins.sum(),
            budget_exhaustions: s.budget_exhaustions.sum(),
            not_hedgeable: s.not_hedgeable.sum(),
            delay: s.delay(),
        }
    }
}

impl fmt::Debug for Hedge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
