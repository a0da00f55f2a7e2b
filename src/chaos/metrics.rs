//! A point-in-time view of a chaos layer.

/// A snapshot of a [`Chaos`](super::Chaos), from
/// [`Chaos::metrics`](super::Chaos::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChaosMetrics {
    /// Whether injection is on now.
    pub enabled: bool,
    /// Calls that went through while injection was on (each drew its fate).
    pub calls_while_enabled: u64,
    /// Calls failed with an injected error.
    pub errors_injected: u64,
    /// Calls answered with an injected response.
    pub responses_injected: u64,
    /// Calls delayed.
    pub latencies_injected: u64,
}

/// The chaos layer's handles into the `metrics` facade (see
/// [`crate::metrics`]), taken once when it is created. Without the
/// `metrics` feature it is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    enabled: ::metrics::Gauge,
    calls: ::metrics::Counter,
    errors: ::metrics::Counter,
    responses: ::metrics::Counter,
    latencies: ::metrics::Counter,
}

/// What a chaos layer injected into a call.
#[cfg(feature = "metrics")]
#[derive(Clone, Copy)]
pub(crate) enum Fault {
    Error,
    Response,
    Latency,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the chaos layer `name`, on or off as `enabled` says.
    pub(crate) fn new(name: &std::sync::Arc<str>, enabled: bool) -> Self {
        let name = crate::metrics::name_label(name);
        let faults = |kind: &'static str| ::metrics::counter!("palisade_chaos_faults_total", "name" => name.clone(), "kind" => kind);
        let exported = Self {
            errors: faults("error"),
            responses: faults("response"),
            latencies: faults("latency"),
            calls: ::metrics::counter!("palisade_chaos_calls_total", "name" => name.clone()),
            enabled: ::metrics::gauge!("palisade_chaos_enabled", "name" => name),
        };
        exported.on_switched(enabled);
        exported
    }

    /// Injection was switched on or off.
    pub(crate) fn on_switched(&self, enabled: bool) {
        self.enabled.set(if enabled { 1.0 } else { 0.0 });
    }

    /// A call went through while injection was on.
    #[inline]
    pub(crate) fn on_call(&self) {
        self.calls.increment(1);
    }

    /// A fault was injected into a call.
    #[inline]
    pub(crate) fn on_fault(&self, fault: Fault) {
        match fault {
            Fault::Error => &self.errors,
            Fault::Response => &self.responses,
            Fault::Latency => &self.latencies,
        }
        .increment(1);
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Exported;

/// What a chaos layer injected into a call.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy)]
pub(crate) enum Fault {
    Error,
    Response,
    Latency,
}

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(crate) fn new(_name: &std::sync::Arc<str>, _enabled: bool) -> Self {
        Self
    }
    #[inline(always)]
    pub(crate) fn on_switched(&self, _enabled: bool) {}
    #[inline(always)]
    pub(crate) fn on_call(&self) {}
    #[inline(always)]
    pub(crate) fn on_fault(&self, _fault: Fault) {}
}
