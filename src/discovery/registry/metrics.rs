//! The registries' series in the `metrics` facade (see [`crate::metrics`]):
//! labelled with the `backend` and the `service`, so every registry of a
//! backend in the process adds to the same series.
//!
//! The in-memory registry keeps its handles per service
//! ([`ServiceExported`]), taken once when it first sees the service. The
//! other backends report around network calls, which cost far more than
//! the recorder's lookup of a series by name and labels: they call the free
//! functions below. Without the `metrics` feature everything here is empty
//! and inline, and takes no argument it would have to compute.

// Each backend calls the functions it has figures for: with only some
// backends built, the others' are unused.
#![cfg_attr(
    not(all(feature = "consul", feature = "etcd", feature = "dns")),
    allow(dead_code)
)]

#[cfg(feature = "metrics")]
mod on {
    use metrics::{SharedString, counter, gauge};

    use crate::discovery::instance::Instance;

    fn service_label(service: &str) -> SharedString {
        SharedString::from(service.to_owned())
    }

    /// The handles of one service of the in-memory registry.
    pub(crate) struct ServiceExported {
        registrations: metrics::Counter,
        deregistered: metrics::Counter,
        ttl_expired: metrics::Counter,
        critical: metrics::Counter,
        ttl_passes: metrics::Counter,
        checks_passed: metrics::Counter,
        checks_failed: metrics::Counter,
        passing: metrics::Gauge,
        critical_instances: metrics::Gauge,
    }

    impl ServiceExported {
        pub(crate) fn new(backend: &'static str, service: &str) -> Self {
            let service = service_label(service);
            let removals = |reason: &'static str| counter!("palisade_registry_deregistrations_total", "backend" => backend, "service" => service.clone(), "reason" => reason);
            let checks = |result: &'static str| counter!("palisade_registry_health_checks_total", "backend" => backend, "service" => service.clone(), "result" => result);
            let instances = |status: &'static str| gauge!("palisade_registry_instances", "backend" => backend, "service" => service.clone(), "status" => status);
            Self {
                registrations: counter!("palisade_registry_registrations_total", "backend" => backend, "service" => service.clone()),
                deregistered: removals("deregistered"),
                ttl_expired: removals("ttl_expired"),
                critical: removals("critical"),
                ttl_passes: counter!("palisade_registry_ttl_passes_total", "backend" => backend, "service" => service.clone()),
                checks_passed: checks("passed"),
                checks_failed: checks("failed"),
                passing: instances("passing"),
                critical_instances: instances("critical"),
            }
        }

        pub(crate) fn on_registered(&self) {
            self.registrations.increment(1);
        }

        /// An instance was removed: by id or guard (`Deregistered`), TTL
        /// lapse or lasting critical health.
        pub(crate) fn on_removed(&self, kind: &crate::discovery::RegistryEventKind) {
            use crate::discovery::RegistryEventKind as Kind;
            match kind {
                Kind::Deregistered => &self.deregistered,
                Kind::TtlExpired => &self.ttl_expired,
                Kind::RemovedCritical => &self.critical,
                _ => return,
            }
            .increment(1);
        }

        pub(crate) fn on_ttl_passed(&self) {
            self.ttl_passes.increment(1);
        }

        pub(crate) fn on_check(&self, passed: bool) {
            if passed {
                &self.checks_passed
            } else {
                &self.checks_failed
            }
            .increment(1);
        }

        /// The service's registered and passing instances now (computed
        /// only with the feature on).
        pub(crate) fn on_instances(&self, counts: impl FnOnce() -> (usize, usize)) {
            let (registered, passing) = counts();
            self.passing.set(passing as f64);
            self.critical_instances
                .set(registered.saturating_sub(passing) as f64);
        }
    }

    /// An instance of `service` was registered.
    pub(crate) fn registered(backend: &'static str, service: &str) {
        counter!("palisade_registry_registrations_total", "backend" => backend, "service" => service_label(service)).increment(1);
    }

    /// An instance of `service` was deregistered (by id or guard).
    pub(crate) fn deregistered(backend: &'static str, service: &str) {
        counter!("palisade_registry_deregistrations_total", "backend" => backend, "service" => service_label(service), "reason" => "deregistered").increment(1);
    }

    /// An instance's TTL check was renewed.
    pub(crate) fn ttl_passed(backend: &'static str, service: &str) {
        counter!("palisade_registry_ttl_passes_total", "backend" => backend, "service" => service_label(service)).increment(1);
    }

    /// A query for `service`'s instances was sent (a DNS resolution, a
    /// Consul health query).
    pub(crate) fn queried(backend: &'static str, service: &str) {
        counter!("palisade_registry_queries_total", "backend" => backend, "service" => service_label(service)).increment(1);
    }

    /// Something failed for `service`: `kind` is `query`, `watch` or
    /// `keep_alive`.
    pub(crate) fn failed(backend: &'static str, service: &str, kind: &'static str) {
        counter!("palisade_registry_errors_total", "backend" => backend, "service" => service_label(service), "kind" => kind).increment(1);
    }

    /// A watch of `service` saw `instances` healthy instances, a change
    /// unless `first`.
    pub(crate) fn watch_changed(
        backend: &'static str,
        service: &str,
        instances: usize,
        first: bool,
    ) {
        let service = service_label(service);
        gauge!("palisade_registry_instances", "backend" => backend, "service" => service.clone(), "status" => "passing").set(instances as f64);
        if !first {
            counter!("palisade_registry_watch_changes_total", "backend" => backend, "service" => service).increment(1);
        }
    }

    /// A watch of `service` started over: `reason` is `index_reset`
    /// (Consul) or `compacted` (etcd).
    pub(crate) fn watch_restarted(backend: &'static str, service: &str, reason: &'static str) {
        counter!("palisade_registry_watch_restarts_total", "backend" => backend, "service" => service_label(service), "reason" => reason).increment(1);
    }

    /// A watch query of `service` waited for the rate limiter (Consul).
    pub(crate) fn rate_limited(backend: &'static str, service: &str) {
        counter!("palisade_registry_rate_limited_total", "backend" => backend, "service" => service_label(service)).increment(1);
    }

    /// A lost lease was replaced (etcd).
    pub(crate) fn lease_regranted(backend: &'static str, service: &str) {
        counter!("palisade_registry_lease_regrants_total", "backend" => backend, "service" => service_label(service)).increment(1);
    }

    /// Instances per service of a list sorted by service.
    fn counts(list: &[Instance]) -> Vec<(&str, usize)> {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for instance in list {
            match counts.last_mut() {
                Some((service, n)) if *service == instance.service().as_str() => *n += 1,
                _ => counts.push((instance.service().as_str(), 1)),
            }
        }
        counts
    }

    /// A static list replaced `old` (both sorted by service): each
    /// service's instance count, 0 for the services that left.
    pub(crate) fn listed(backend: &'static str, old: &[Instance], new: &[Instance]) {
        let new = counts(new);
        let gone = counts(old)
            .into_iter()
            .filter(|(service, _)| !new.iter().any(|(s, _)| s == service))
            .map(|(service, _)| (service, 0));
        for (service, n) in new.iter().copied().chain(gone) {
            gauge!("palisade_registry_instances", "backend" => backend, "service" => service_label(service), "status" => "passing").set(n as f64);
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
mod off {
    use crate::discovery::instance::Instance;

    /// Without the `metrics` feature: nothing, at no cost.
    pub(crate) struct ServiceExported;

    impl ServiceExported {
        #[inline(always)]
        pub(crate) fn new(_backend: &'static str, _service: &str) -> Self {
            Self
        }
        #[inline(always)]
        pub(crate) fn on_registered(&self) {}
        #[inline(always)]
        pub(crate) fn on_removed(&self, _kind: &crate::discovery::RegistryEventKind) {}
        #[inline(always)]
        pub(crate) fn on_ttl_passed(&self) {}
        #[inline(always)]
        pub(crate) fn on_check(&self, _passed: bool) {}
        #[inline(always)]
        pub(crate) fn on_instances(&self, _counts: impl FnOnce() -> (usize, usize)) {}
    }

    #[inline(always)]
    pub(crate) fn registered(_backend: &'static str, _service: &str) {}
    #[inline(always)]
    pub(crate) fn deregistered(_backend: &'static str, _service: &str) {}
    #[inline(always)]
    pub(crate) fn ttl_passed(_backend: &'static str, _service: &str) {}
    #[inline(always)]
    pub(crate) fn queried(_backend: &'static str, _service: &str) {}
    #[inline(always)]
    pub(crate) fn failed(_backend: &'static str, _service: &str, _kind: &'static str) {}
    #[inline(always)]
    pub(crate) fn watch_changed(
        _backend: &'static str,
        _service: &str,
        _instances: usize,
        _first: bool,
    ) {
    }
    #[inline(always)]
    pub(crate) fn watch_restarted(_backend: &'static str, _service: &str, _reason: &'static str) {}
    #[inline(always)]
    pub(crate) fn rate_limited(_backend: &'static str, _service: &str) {}
    #[inline(always)]
    pub(crate) fn lease_regranted(_backend: &'static str, _service: &str) {}
    #[inline(always)]
    pub(crate) fn listed(_backend: &'static str, _old: &[Instance], _new: &[Instance]) {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;
