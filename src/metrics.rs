//! Export what every layer does through the `metrics` facade ([docs](https://docs.rs/metrics))
//! (feature `metrics`), so that any exporter shows it: Prometheus with
//! `metrics-exporter-prometheus`, OpenTelemetry with `metrics-exporter-otel`
//! or `opentelemetry-metrics`, StatsD, and so on.
//!
//! With the feature on, every layer (breaker, retry, bulkhead, rate
//! limiter, fallback, response cache, coalescing, hedging, adaptive
//! concurrency limit, chaos), the balancer, every discovery registry
//! (in-memory, static, DNS, Consul, etcd) and the saga executor report the
//! counters, gauges and histograms below. With the feature off, none of this code is compiled: the hooks in
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
//! The registries' series carry `backend` (`in-memory`, `static`, `dns`,
//! `consul`, `etcd`) and `service` instead: a registry has no name and
//! serves many services, and every registry of a backend in the process
//! adds to the same series (the balancer's `name` is its service too). The
//! in-memory registry takes its handles once per service; the other
//! backends look their series up when they report, next to a network call
//! that costs far more.
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
//! | `palisade_fallback_answered_total` | counter | `name`, `source`, `cause` | Calls the fallback answered: `source` is `value`, `function` or `last_good`; `cause` is `failure` (the classifier said so) or `rejection` (an inner layer rejected the call). |
//! | `palisade_fallback_no_last_good_total` | counter | `name` | Calls to be answered by the last good response whose key had none (the failure passed through). |
//! | `palisade_fallback_last_good_entries` | gauge | `name` | Keys with a last good response kept now, over every layer of the fallback. |
//! | `palisade_cache_requests_total` | counter | `name`, `result` | Requests looked up (feature `cache`): `result` is `hit` (a fresh entry answered) or `miss` (the service was called). |
//! | `palisade_cache_stale_served_total` | counter | `name` | Failed or rejected calls answered by a stale entry (each also counted as a `miss`). |
//! | `palisade_cache_stored_total` | counter | `name` | Responses stored. |
//! | `palisade_cache_entries` | gauge | `name` | Entries kept, fresh or stale, as of the last store or invalidation (moka counts lazily: it may lag). |
//! | `palisade_coalesce_requests_total` | counter | `name`, `role` | Requests: `role` is `leader` (started a shared call), `follower` (joined one in flight) or `uncoalesced` (ran its own call: `max_in_flight_keys` were in flight). |
//! | `palisade_coalesce_abandoned_total` | counter | `name` | Shared calls cancelled because every waiter went away. |
//! | `palisade_coalesce_in_flight_keys` | gauge | `name` | Keys with a shared call in flight now. |
//! | `palisade_coalesce_waiters` | gauge | `name` | Requests waiting for a shared call now. |
//! | `palisade_hedge_calls_total` | counter | `name` | Calls made. |
//! | `palisade_hedge_hedges_total` | counter | `name` | Hedged attempts started. |
//! | `palisade_hedge_wins_total` | counter | `name` | Calls answered by a hedged attempt rather than the first. |
//! | `palisade_hedge_budget_exhausted_total` | counter | `name` | Hedged attempts refused by the budget. |
//! | `palisade_hedge_not_hedgeable_total` | counter | `name` | Calls that could not be hedged (not idempotent, or not copyable). |
//! | `palisade_adaptive_concurrency_limit` | gauge | `name` | The limit now. |
//! | `palisade_adaptive_concurrency_in_flight` | gauge | `name` | Calls holding a slot now. |
//! | `palisade_adaptive_concurrency_rejected_total` | counter | `name` | Calls rejected at the limit. |
//! | `palisade_adaptive_concurrency_samples_total` | counter | `name`, `outcome` | Calls whose latency the algorithm took: `outcome` is `success` or `failure` (as the classifier said). |
//! | `palisade_adaptive_concurrency_cancelled_total` | counter | `name` | Calls dropped before they finished (their latency was not taken). |
//! | `palisade_chaos_enabled` | gauge | `name` | 1 while the chaos layer injects faults, 0 otherwise (feature `chaos`). |
//! | `palisade_chaos_calls_total` | counter | `name` | Calls that went through while injection was on. |
//! | `palisade_chaos_faults_total` | counter | `name`, `kind` | Faults injected: `kind` is `error`, `response` or `latency` (a call may get a latency and an error). |
//! | `palisade_registry_registrations_total` | counter | `backend`, `service` | Instances registered (in-memory, Consul, etcd; re-registrations included). |
//! | `palisade_registry_deregistrations_total` | counter | `backend`, `service`, `reason` | Instances removed: `reason` is `deregistered` (by id or guard), or, in the in-memory registry, `ttl_expired` or `critical` (critical for `deregister_critical_after`). |
//! | `palisade_registry_ttl_passes_total` | counter | `backend`, `service` | TTL checks renewed (in-memory, Consul). |
//! | `palisade_registry_health_checks_total` | counter | `backend`, `service`, `result` | HTTP and gRPC checks the in-memory registry ran: `result` is `passed` or `failed`. |
//! | `palisade_registry_instances` | gauge | `backend`, `service`, `status` | Instances: in-memory, registered ones by `status` `passing` or `critical`; static, those listed; DNS, Consul and etcd, the healthy ones the last watch of the service saw (`passing`). |
//! | `palisade_registry_queries_total` | counter | `backend`, `service` | DNS resolutions and Consul health queries (by `healthy` and by watches). |
//! | `palisade_registry_errors_total` | counter | `backend`, `service`, `kind` | Failures: `kind` is `query` (a DNS resolution or Consul health query), `watch` (an etcd watch read or stream) or `keep_alive` (an etcd lease keep-alive). |
//! | `palisade_registry_watch_changes_total` | counter | `backend`, `service` | Times a DNS, Consul or etcd watch saw a different set of instances (its first set is not a change). |
//! | `palisade_registry_watch_restarts_total` | counter | `backend`, `service`, `reason` | Watches that started over: `reason` is `index_reset` (Consul's index went backwards or was 0) or `compacted` (etcd compacted the watched revision). |
//! | `palisade_registry_rate_limited_total` | counter | `backend`, `service` | Consul watch queries delayed by the query rate limit. |
//! | `palisade_registry_lease_regrants_total` | counter | `backend`, `service` | etcd leases granted again after one was lost. |
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
//! Instruction counts per call (`benches/instructions.rs` under callgrind,
//! which does not see what an atomic costs; `PALISADE_BENCH_RECORDER=prometheus`
//! installs the recorder):
//!
//! | case | feature off | on, no recorder | on, Prometheus |
//! |---|---|---|---|
//! | CLOSED breaker, a success | 165 | 175 | 187 |
//! | adaptive concurrency limit, a success (in-flight gauge up and down, one sample) | 524 | 544 | 608 |
//! | fallback, a success (nothing to report) | 68 | 67 | 67 |
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
    describe_counter!(
        "palisade_fallback_answered_total",
        Unit::Count,
        "Calls a fallback answered, by source and cause."
    );
    describe_counter!(
        "palisade_fallback_no_last_good_total",
        Unit::Count,
        "Calls whose key had no last good response."
    );
    describe_gauge!(
        "palisade_fallback_last_good_entries",
        Unit::Count,
        "Keys with a last good response kept."
    );
    describe_counter!(
        "palisade_cache_requests_total",
        Unit::Count,
        "Requests a response cache looked up, by result (hit or miss)."
    );
    describe_counter!(
        "palisade_cache_stale_served_total",
        Unit::Count,
        "Failed calls answered by a stale cache entry."
    );
    describe_counter!(
        "palisade_cache_stored_total",
        Unit::Count,
        "Responses stored in a cache."
    );
    describe_gauge!(
        "palisade_cache_entries",
        Unit::Count,
        "Entries a cache keeps (counted lazily)."
    );
    describe_counter!(
        "palisade_coalesce_requests_total",
        Unit::Count,
        "Requests through a coalescing layer, by role."
    );
    describe_counter!(
        "palisade_coalesce_abandoned_total",
        Unit::Count,
        "Shared calls cancelled because every waiter left."
    );
    describe_gauge!(
        "palisade_coalesce_in_flight_keys",
        Unit::Count,
        "Keys with a shared call in flight."
    );
    describe_gauge!(
        "palisade_coalesce_waiters",
        Unit::Count,
        "Requests waiting for a shared call."
    );
    describe_counter!(
        "palisade_hedge_calls_total",
        Unit::Count,
        "Calls through a hedging layer."
    );
    describe_counter!(
        "palisade_hedge_hedges_total",
        Unit::Count,
        "Hedged attempts started."
    );
    describe_counter!(
        "palisade_hedge_wins_total",
        Unit::Count,
        "Calls answered by a hedged attempt."
    );
    describe_counter!(
        "palisade_hedge_budget_exhausted_total",
        Unit::Count,
        "Hedged attempts refused by the budget."
    );
    describe_counter!(
        "palisade_hedge_not_hedgeable_total",
        Unit::Count,
        "Calls that could not be hedged."
    );
    describe_gauge!(
        "palisade_adaptive_concurrency_limit",
        Unit::Count,
        "An adaptive concurrency limit now."
    );
    describe_gauge!(
        "palisade_adaptive_concurrency_in_flight",
        Unit::Count,
        "Calls holding an adaptive concurrency slot."
    );
    describe_counter!(
        "palisade_adaptive_concurrency_rejected_total",
        Unit::Count,
        "Calls rejected at the adaptive concurrency limit."
    );
    describe_counter!(
        "palisade_adaptive_concurrency_samples_total",
        Unit::Count,
        "Latency samples taken by the limit algorithm, by outcome."
    );
    describe_counter!(
        "palisade_adaptive_concurrency_cancelled_total",
        Unit::Count,
        "Calls dropped before they finished."
    );
    describe_gauge!(
        "palisade_chaos_enabled",
        "1 while a chaos layer injects faults."
    );
    describe_counter!(
        "palisade_chaos_calls_total",
        Unit::Count,
        "Calls through a chaos layer while it was on."
    );
    describe_counter!(
        "palisade_chaos_faults_total",
        Unit::Count,
        "Faults injected, by kind."
    );
    describe_counter!(
        "palisade_registry_registrations_total",
        Unit::Count,
        "Instances registered."
    );
    describe_counter!(
        "palisade_registry_deregistrations_total",
        Unit::Count,
        "Instances removed from a registry, by reason."
    );
    describe_counter!(
        "palisade_registry_ttl_passes_total",
        Unit::Count,
        "TTL checks renewed."
    );
    describe_counter!(
        "palisade_registry_health_checks_total",
        Unit::Count,
        "Health checks the in-memory registry ran, by result."
    );
    describe_gauge!(
        "palisade_registry_instances",
        Unit::Count,
        "A service's instances in a registry, by status."
    );
    describe_counter!(
        "palisade_registry_queries_total",
        Unit::Count,
        "DNS resolutions and Consul health queries."
    );
    describe_counter!(
        "palisade_registry_errors_total",
        Unit::Count,
        "Registry failures, by kind."
    );
    describe_counter!(
        "palisade_registry_watch_changes_total",
        Unit::Count,
        "Times a watch saw a different set of instances."
    );
    describe_counter!(
        "palisade_registry_watch_restarts_total",
        Unit::Count,
        "Watches that started over, by reason."
    );
    describe_counter!(
        "palisade_registry_rate_limited_total",
        Unit::Count,
        "Consul watch queries delayed by the rate limit."
    );
    describe_counter!(
        "palisade_registry_lease_regrants_total",
        Unit::Count,
        "etcd leases granted again after one was lost."
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
