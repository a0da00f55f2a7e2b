//! What a balancer reports: events and a metrics snapshot.

use std::time::Duration;

use crate::circuit_breaker::CircuitState;
use crate::discovery::instance::{InstanceAddress, InstanceId, ServiceName};

/// One thing that happened to a balancer's instances; delivered by
/// [`Balance::subscribe`](super::Balance::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceEvent {
    /// The balanced service.
    pub service: ServiceName,
    /// The instance concerned.
    pub id: InstanceId,
    /// What happened.
    pub kind: BalanceEventKind,
}

/// The kinds of [`BalanceEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BalanceEventKind {
    /// A healthy instance appeared and got a client.
    Added {
        /// Its address.
        address: InstanceAddress,
    },
    /// An instance changed (address, tags, metadata or weight) and got a
    /// new client (and a new circuit breaker, with that option). It keeps
    /// its outlier state: an ejection in progress, the ejection count and
    /// the failures in a row, as Envoy keeps a host's across such changes.
    Updated {
        /// Its address now.
        address: InstanceAddress,
    },
    /// An instance left (deregistered or unhealthy); its client was dropped.
    Removed,
    /// Building the client of a new instance failed; it is left out and
    /// built again after a backoff (100 ms doubling to 30 s, full jitter)
    /// or when the registry next reports it.
    MakeFailed {
        /// Why.
        error: String,
    },
    /// Its calls failed `consecutive_failures` times in a row: it is out of
    /// the picks for `duration`.
    Ejected {
        /// How long the ejection lasts.
        duration: Duration,
        /// The instance's ejection count, this ejection included: one per
        /// ejection, less one per full `base_ejection_time` spent back in
        /// the picks (see [`OutlierDetection`](super::OutlierDetection)).
        ejections: u32,
    },
    /// It failed `consecutive_failures` times in a row but was not ejected:
    /// that would have ejected more than `max_ejection_percent`.
    EjectionSkipped {
        /// Instances ejected at the time.
        ejected: usize,
        /// Instances known at the time.
        instances: usize,
    },
    /// Its ejection ended: it is picked again.
    Returned,
}

/// A snapshot of a balancer, from [`Balance::metrics`](super::Balance::metrics).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BalanceMetrics {
    /// The balanced service.
    pub service: ServiceName,
    /// Healthy instances known to the balancer.
    pub instances: usize,
    /// Instances that calls may be sent to: healthy, not ejected, and
    /// their circuit breaker (if any) not OPEN or FORCED_OPEN.
    pub available: usize,
    /// Instances ejected now.
    pub ejected: usize,
    /// Instances whose circuit breaker is OPEN or FORCED_OPEN now (an OPEN
    /// breaker whose wait is over counts until a call moves it to
    /// HALF_OPEN). Always 0 without the `circuit_breaker` option.
    pub breakers_open: usize,
    /// Per instance, in id order.
    pub endpoints: Vec<EndpointMetrics>,
}

/// One instance in [`BalanceMetrics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointMetrics {
    /// The instance's id.
    pub id: InstanceId,
    /// Its address.
    pub address: InstanceAddress,
    /// Calls picked for it and not yet completed or dropped.
    pub in_flight: usize,
    /// Calls picked for it since it was added.
    pub picks: u64,
    /// Its peak-EWMA latency now (decayed; the picker's default RTT until
    /// measured). Only kept up to date by [`Picker::PeakEwma`](super::Picker::PeakEwma).
    pub ewma_latency: Duration,
    /// Failures in a row (with outlier detection).
    pub consecutive_failures: u32,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Its ejection count now: one per ejection, less one per full
    /// `base_ejection_time` spent back in the picks since (see
    /// [`OutlierDetection`](super::OutlierDetection)).
    pub ejections: u32,
    /// The state of its circuit breaker, with the balancer's
    /// `circuit_breaker` option (the breaker's own metrics and events:
    /// [`Balance::circuit_breaker`](super::Balance::circuit_breaker)).
    pub breaker: Option<CircuitState>,
}

/// The balancer's handles into the `metrics` facade (see
/// [`crate::metrics`]), taken once when the balancer is created. Without
/// the `metrics` feature it is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    ready: ::metrics::Gauge,
    ejected: ::metrics::Gauge,
    ejections: ::metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the balancer of `service`, which has no instance yet.
    pub(crate) fn new(service: &ServiceName) -> Self {
        let name = ::metrics::SharedString::from(service.as_str().to_owned());
        let instances = |status: &'static str| ::metrics::gauge!("palisade_balancer_instances", "name" => name.clone(), "status" => status);
        let exported = Self {
            ready: instances("ready"),
            ejected: instances("ejected"),
            ejections: ::metrics::counter!("palisade_balancer_ejections_total", "name" => name),
        };
        exported.ready.set(0.0);
        exported.ejected.set(0.0);
        exported
    }

    /// The instances changed: one `bool` per instance, whether it is ejected.
    pub(crate) fn on_instances(&self, ready: usize, ejected: usize) {
        self.ready.set(ready as f64);
        self.ejected.set(ejected as f64);
    }

    /// An instance was ejected.
    pub(crate) fn on_ejected(&self) {
        self.ejections.increment(1);
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(crate) fn new(_service: &ServiceName) -> Self {
        Self
    }
    #[inline(always)]
    pub(crate) fn on_instances(&self, _ready: usize, _ejected: usize) {}
    #[inline(always)]
    pub(crate) fn on_ejected(&self) {}
}
