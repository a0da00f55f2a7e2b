//! Export what every layer does through the `metrics` facade ([docs](https://docs.rs/metrics))
//! (feature `metrics`), so that any exporter shows it: Prometheus with
//! `metrics-exporter-prometheus`, OpenTelemetry with `metrics-exporter-otel`
//! or `opentelemetry-metrics`, StatsD, and so on.
//!
//! With the feature on, each breaker, retry, bulkhead, rate limiter and
//! balancer, and the saga executor, reports the counters, gauges and
//! histograms below. With the feature off, none of this code is compiled: the hooks in
//! the layers are empty inline functions on a zero-sized field.
//!
//! ```
//! use palisade::circuit_breaker::CircuitBreaker;
//!
//! // Install a recorder (an exporter) first, then create the layers: each
//! // layer takes its metric handles from the recorder when it is created.
//! let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
//! let prometheus = recorder.handle();
//! metrics::with_local_recorder(&recorder, || {
//!     palisade::metrics::describe();
//!     let breaker = CircuitBreaker::with_defaults("users");
//!     breaker.try_acquire().unwrap().record(palisade::classify::Outcome::Success);
//! });
//! let text = prometheus.render();
//! assert!(text.contains(r#"palisade_circuit_breaker_calls_total{name="users",kind="successful"} 1"#));
//! assert!(text.contains(r#"palisade_circuit_breaker_state{name="users",state="closed"} 1"#));
//! ```
//!
//! # The metrics
//!
//! Every layer's series carry `name`, the layer's name (the saga
//! executor's have none: they count every executor of the process). A
//! [`KeyedCircuitBreakerLayer`](crate::circuit_breaker::KeyedCircuitBreakerLayer)
//! names each breaker after its key, so it exports one set of series per key
//! (at most `with_max_keys` at once); a
//! [`KeyedRateLimiterLayer`](crate::rate_limit::KeyedRateLimiterLayer) exports
//! one set for all its keys.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_circuit_breaker_calls_total` | counter | `name`, `kind` | Calls that finished, by outcome: `kind` is `successful`, `failed` or `ignored` (as the classifier said), or `not_permitted` for calls the breaker rejected. |
//! | `palisade_circuit_breaker_slow_calls_total` | counter | `name`, `kind` | Of the finished calls, those slower than `slow_call_duration_threshold`; `kind` is `successful` or `failed`. |
//! | `palisade_circuit_breaker_call_duration_seconds` | histogram | `name`, `kind` | Durations of the calls the breaker times (when slow calls are detected, or the duration is given with `CallPermit::on_result`); `kind` is `successful` or `failed`. |
//! | `palisade_circuit_breaker_state` | gauge | `name`, `state` | 1 for the state the breaker is in, 0 for the others; `state` is `closed`, `open`, `half_open`, `disabled`, `forced_open` or `metrics_only`. |
//! | `palisade_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` | State changes (same labels as `state`). |
//! | `palisade_retry_calls_total` | counter | `name`, `outcome` | Calls that finished: `outcome` is `succeeded_without_retry`, `succeeded_after_retry`, `failed_without_retry` or `failed_after_retries`. |
//! | `palisade_retry_retries_total` | counter | `name` | Retries made (attempts after the first). |
//! | `palisade_retry_budget_exhausted_total` | counter | `name` | Retries refused because the retry budget was empty. |
//! | `palisade_retry_attempt_timeouts_total` | counter | `name` | Attempts cancelled by `attempt_timeout`. |
//! | `palisade_bulkhead_calls_total` | counter | `name`, `outcome` | Calls that asked for a permit: `outcome` is `permitted` or `rejected`. |
//! | `palisade_bulkhead_available_permits` | gauge | `name` | Permits free now. |
//! | `palisade_bulkhead_max_concurrent_calls` | gauge | `name` | The limit now (it changes with `resize`). |
//! | `palisade_bulkhead_wait_duration_seconds` | histogram | `name` | How long each permitted call waited for its permit (zero when one was free). |
//! | `palisade_rate_limiter_calls_total` | counter | `name`, `outcome` | Calls that asked for a permit: `outcome` is `permitted` or `rejected`. |
//! | `palisade_rate_limiter_waiting_calls` | gauge | `name` | Callers waiting for a permit now. |
//! | `palisade_rate_limiter_wait_duration_seconds` | histogram | `name` | How long each permitted call waited for its permit (zero when one was free). |
//! | `palisade_rate_limiter_keys` | gauge | `name` | Keys a keyed rate limiter holds state for now. |
//! | `palisade_balancer_instances` | gauge | `name`, `status` | A balancer's healthy instances (`name` is the service): `status` is `ready` (picked) or `ejected` (by outlier detection). |
//! | `palisade_balancer_ejections_total` | counter | `name` | Instances ejected by outlier detection. |
//! | `palisade_saga_started_total` | counter | | Sagas started by the executors of the process. |
//! | `palisade_saga_resumed_total` | counter | | Sagas taken over from the log (recovery, `retry_stuck`). |
//! | `palisade_saga_running` | gauge | | Sagas being driven now. |
//! | `palisade_saga_finished_total` | counter | `outcome` | Sagas finished: `outcome` is `completed`, `compensated` or `abandoned`. |
//! | `palisade_saga_stuck_total` | counter | | Sagas stuck (a compensation kept failing). |
//! | `palisade_saga_step_failures_total` | counter | | Failed step action attempts. |
//! | `palisade_saga_step_duration_seconds` | histogram | `step` | Durations of successful step actions, by step name. |
//!
//! # Cost
//!
//! Each layer takes its handles (`metrics::Counter`, `Gauge`, `Histogram`)
//! from the recorder once, when it is created, with its name as the label:
//! a call does no lookup, no allocation and no label formatting. What a
//! call still costs is what the recorder does with a handle: with
//! `metrics-exporter-prometheus`, one atomic add per counter (shared by all
//! threads, unlike the layers' own striped counters) and, for a histogram,
//! a push onto a lock-free bucket. No clock is read for the metrics: the
//! histograms only record durations a layer measures anyway.
//!
//! `benches/metrics.rs` measures a CLOSED breaker's success through
//! `try_acquire` + `record` (run it with and without `--features metrics`).
//! On the 2-core development machine, shared with other builds (load
//! average 8–11, so the figures are noisy), two runs each gave:
//!
//! | build | per call |
//! |---|---|
//! | feature off | 43.5–43.7 ns |
//! | feature on, no recorder installed (no-op handles) | 44.1–52.8 ns |
//! | feature on, `metrics-exporter-prometheus` recorder | 61.2–72.5 ns |
//!
//! So the feature costs nothing measurable until a recorder is installed,
//! and about 20 ns a call with Prometheus's: the dynamic call into the
//! recorder's counter and its atomic add, shared by every thread.
//!
//! Because handles are taken at creation, install the recorder
//! (`metrics::set_global_recorder`, or an exporter's `install`) before
//! creating the layers; layers created before that report to nothing.
//! A state gauge keeps its last value after its layer is dropped; use the
//! exporter's idle timeout to forget the series of dropped layers (keyed
//! breakers evicted from a `KeyedCircuitBreakerLayer`, say).

/// Registers the unit and help text of every metric above with the
/// installed recorder (Prometheus shows them as `# HELP` lines). Optional:
/// the metrics are reported without it.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "palisade_circuit_breaker_calls_total",
        Unit::Count,
        "Calls through a circuit breaker, by outcome (kind)."
    );
    describe_counter!(
        "palisade_circuit_breaker_slow_calls_total",
        Unit::Count,
        "Calls slower than the breaker's slow-call threshold."
    );
    describe_histogram!(
        "palisade_circuit_breaker_call_duration_seconds",
        Unit::Seconds,
        "Durations of the calls a circuit breaker times."
    );
    describe_gauge!(
        "palisade_circuit_breaker_state",
        "1 for the state a circuit breaker is in, 0 for the others."
    );
    describe_counter!(
        "palisade_circuit_breaker_transitions_total",
        Unit::Count,
        "Circuit breaker state changes."
    );
    describe_counter!(
        "palisade_retry_calls_total",
        Unit::Count,
        "Calls through a retry layer, by outcome."
    );
    describe_counter!(
        "palisade_retry_retries_total",
        Unit::Count,
        "Retries made (attempts after the first)."
    );
    describe_counter!(
        "palisade_retry_budget_exhausted_total",
        Unit::Count,
        "Retries refused because the retry budget was empty."
    );
    describe_counter!(
        "palisade_retry_attempt_timeouts_total",
        Unit::Count,
        "Attempts cancelled by the attempt timeout."
    );
    describe_counter!(
        "palisade_bulkhead_calls_total",
        Unit::Count,
        "Calls that asked a bulkhead for a permit, by outcome."
    );
    describe_gauge!(
        "palisade_bulkhead_available_permits",
        Unit::Count,
        "Bulkhead permits free now."
    );
    describe_gauge!(
        "palisade_bulkhead_max_concurrent_calls",
        Unit::Count,
        "A bulkhead's limit now."
    );
    describe_histogram!(
        "palisade_bulkhead_wait_duration_seconds",
        Unit::Seconds,
        "How long permitted calls waited for a bulkhead permit."
    );
    describe_counter!(
        "palisade_rate_limiter_calls_total",
        Unit::Count,
        "Calls that asked a rate limiter for a permit, by outcome."
    );
    describe_gauge!(
        "palisade_rate_limiter_waiting_calls",
        Unit::Count,
        "Callers waiting for a rate limiter permit now."
    );
    describe_histogram!(
        "palisade_rate_limiter_wait_duration_seconds",
        Unit::Seconds,
        "How long permitted calls waited for a rate limiter permit."
    );
    describe_gauge!(
        "palisade_rate_limiter_keys",
        Unit::Count,
        "Keys a keyed rate limiter holds state for."
    );
    describe_gauge!(
        "palisade_balancer_instances",
        Unit::Count,
        "A balancer's healthy instances, ready or ejected (status)."
    );
    describe_counter!(
        "palisade_balancer_ejections_total",
        Unit::Count,
        "Instances ejected by outlier detection."
    );
    describe_counter!("palisade_saga_started_total", Unit::Count, "Sagas started.");
    describe_counter!(
        "palisade_saga_resumed_total",
        Unit::Count,
        "Sagas taken over from the log."
    );
    describe_gauge!(
        "palisade_saga_running",
        Unit::Count,
        "Sagas being driven now."
    );
    describe_counter!(
        "palisade_saga_finished_total",
        Unit::Count,
        "Sagas finished, by outcome."
    );
    describe_counter!(
        "palisade_saga_stuck_total",
        Unit::Count,
        "Sagas stuck because a compensation kept failing."
    );
    describe_counter!(
        "palisade_saga_step_failures_total",
        Unit::Count,
        "Failed step action attempts."
    );
    describe_histogram!(
        "palisade_saga_step_duration_seconds",
        Unit::Seconds,
        "Durations of successful step actions, by step."
    );
}

/// The `name` label's value for a layer named `name`: shares the name's
/// allocation instead of copying it.
pub(crate) fn name_label(name: &std::sync::Arc<str>) -> ::metrics::SharedString {
    ::metrics::SharedString::from(std::sync::Arc::clone(name))
}
