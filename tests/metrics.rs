//! The `metrics` feature, rendered by a real Prometheus exporter: each layer
//! is driven, then the exported text is checked for the documented names,
//! labels and values. Run with `cargo test --features metrics --test metrics`.
//!
//! The recorder is installed once, globally, for this test binary; each test
//! uses its own layer names, so tests running at once do not share series.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use palisade::BoxError;
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use palisade::classify::Outcome;
use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use tower::{Service, ServiceBuilder, ServiceExt};

const FAILURE: Outcome = Outcome::Failure { retryable: true };

/// The process-wide Prometheus recorder, installed on first use.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
        palisade::metrics::describe();
        handle
    })
}

/// The value of the series written exactly as `series` (name and labels),
/// or `None` if the exporter does not show it.
fn value(series: &str) -> Option<f64> {
    let text = prometheus().render();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

fn expect(series: &str, expected: f64) {
    assert_eq!(
        value(series),
        Some(expected),
        "{series} in:\n{}",
        prometheus().render()
    );
}

#[test]
fn circuit_breaker_exports_calls_state_transitions_and_durations() {
    prometheus();
    let breaker = CircuitBreaker::new(
        "metrics-breaker",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4)
            .build()
            .expect("valid config"),
    );
    expect(
        r#"palisade_circuit_breaker_state{name="metrics-breaker",state="closed"}"#,
        1.0,
    );
    expect(
        r#"palisade_circuit_breaker_state{name="metrics-breaker",state="open"}"#,
        0.0,
    );
    breaker
        .try_acquire()
        .expect("closed")
        .record(Outcome::Success);
    breaker
        .try_acquire()
        .expect("closed")
        .on_result(Duration::from_millis(250), Outcome::Success);
    breaker
        .try_acquire()
        .expect("closed")
        .record(Outcome::Ignored);
    breaker.try_acquire().expect("closed").record(FAILURE);
    breaker.try_acquire().expect("closed").record(FAILURE);
    // 2 failures of 4 recorded calls: 50 % trips the breaker.
    assert!(breaker.try_acquire().is_err(), "the breaker is open");
    assert!(breaker.try_acquire().is_err(), "the breaker is open");

    let series = |labels: &str| format!("palisade_circuit_breaker_{labels}");
    expect(
        &series(r#"calls_total{name="metrics-breaker",kind="successful"}"#),
        2.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-breaker",kind="failed"}"#),
        2.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-breaker",kind="ignored"}"#),
        1.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-breaker",kind="not_permitted"}"#),
        2.0,
    );
    expect(
        &series(r#"state{name="metrics-breaker",state="open"}"#),
        1.0,
    );
    expect(
        &series(r#"state{name="metrics-breaker",state="closed"}"#),
        0.0,
    );
    expect(
        &series(r#"transitions_total{name="metrics-breaker",from="closed",to="open"}"#),
        1.0,
    );
    // The one call whose duration was given is the only one timed.
    expect(
        &series(r#"call_duration_seconds_count{name="metrics-breaker",kind="successful"}"#),
        1.0,
    );
    expect(
        &series(r#"call_duration_seconds_sum{name="metrics-breaker",kind="successful"}"#),
        0.25,
    );

    breaker
        .transition_to_half_open()
        .expect("open to half-open");
    expect(
        &series(r#"state{name="metrics-breaker",state="half_open"}"#),
        1.0,
    );
    expect(
        &series(r#"state{name="metrics-breaker",state="open"}"#),
        0.0,
    );
    expect(
        &series(r#"transitions_total{name="metrics-breaker",from="open",to="half_open"}"#),
        1.0,
    );
}

#[test]
fn circuit_breaker_counts_slow_calls() {
    prometheus();
    let breaker = CircuitBreaker::new(
        "metrics-slow",
        CircuitBreakerConfig::builder()
            .slow_call_duration_threshold(Duration::from_millis(100))
            .build()
            .expect("valid config"),
    );
    breaker
        .try_acquire()
        .expect("closed")
        .on_result(Duration::from_millis(300), FAILURE);
    breaker
        .try_acquire()
        .expect("closed")
        .on_result(Duration::from_millis(10), Outcome::Success);
    expect(
        r#"palisade_circuit_breaker_slow_calls_total{name="metrics-slow",kind="failed"}"#,
        1.0,
    );
    expect(
        r#"palisade_circuit_breaker_slow_calls_total{name="metrics-slow",kind="successful"}"#,
        0.0,
    );
    expect(
        r#"palisade_circuit_breaker_call_duration_seconds_count{name="metrics-slow",kind="failed"}"#,
        1.0,
    );
}

#[tokio::test(start_paused = true)]
async fn retry_exports_outcomes_and_retries() -> Result<(), BoxError> {
    prometheus();
    let retry = Retry::new(
        "metrics-retry",
        RetryConfig::builder().max_attempts(3).no_budget().build()?,
    );
    let attempts = std::sync::Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let mut flaky = ServiceBuilder::new()
        .layer(retry.layer())
        .service_fn(move |n: u32| {
            let attempt = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt == 0 {
                    Err(std::io::Error::other("first attempt fails"))
                } else {
                    Ok(n)
                }
            }
        });
    assert_eq!(flaky.ready().await?.call(1).await?, 1);
    assert_eq!(flaky.ready().await?.call(2).await?, 2);

    let series = |labels: &str| format!("palisade_retry_{labels}");
    expect(
        &series(r#"calls_total{name="metrics-retry",outcome="succeeded_after_retry"}"#),
        1.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-retry",outcome="succeeded_without_retry"}"#),
        1.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-retry",outcome="failed_after_retries"}"#),
        0.0,
    );
    expect(&series(r#"retries_total{name="metrics-retry"}"#), 1.0);
    expect(
        &series(r#"budget_exhausted_total{name="metrics-retry"}"#),
        0.0,
    );
    assert_eq!(retry.metrics().retries, 1, "the snapshot agrees");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn bulkhead_exports_permits_and_rejections() -> Result<(), BoxError> {
    prometheus();
    let bulkhead = Bulkhead::new(
        "metrics-bulkhead",
        BulkheadConfig::builder().max_concurrent_calls(2).build()?,
    );
    let series = |labels: &str| format!("palisade_bulkhead_{labels}");
    expect(
        &series(r#"available_permits{name="metrics-bulkhead"}"#),
        2.0,
    );
    let first = bulkhead.try_acquire()?;
    let second = bulkhead.try_acquire()?;
    expect(
        &series(r#"available_permits{name="metrics-bulkhead"}"#),
        0.0,
    );
    assert!(bulkhead.try_acquire().is_err(), "full");
    drop(first);
    expect(
        &series(r#"available_permits{name="metrics-bulkhead"}"#),
        1.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-bulkhead",outcome="permitted"}"#),
        2.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-bulkhead",outcome="rejected"}"#),
        1.0,
    );
    expect(
        &series(r#"wait_duration_seconds_count{name="metrics-bulkhead"}"#),
        2.0,
    );
    bulkhead.resize(5)?;
    expect(
        &series(r#"max_concurrent_calls{name="metrics-bulkhead"}"#),
        5.0,
    );
    expect(
        &series(r#"available_permits{name="metrics-bulkhead"}"#),
        4.0,
    );
    drop(second);
    expect(
        &series(r#"available_permits{name="metrics-bulkhead"}"#),
        5.0,
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_exports_permits_rejections_and_waits() -> Result<(), BoxError> {
    prometheus();
    let limiter = RateLimiter::new(
        "metrics-limiter",
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(Duration::from_secs(1))
            .max_wait_duration(Duration::from_secs(2))
            .build()?,
    );
    let series = |labels: &str| format!("palisade_rate_limiter_{labels}");
    limiter.try_acquire()?;
    assert!(limiter.try_acquire().is_err(), "no permit left");
    // Waits a second for the next permit.
    let waiting = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire().await }
    });
    tokio::task::yield_now().await;
    expect(&series(r#"waiting_calls{name="metrics-limiter"}"#), 1.0);
    waiting.await??;
    expect(&series(r#"waiting_calls{name="metrics-limiter"}"#), 0.0);
    expect(
        &series(r#"calls_total{name="metrics-limiter",outcome="permitted"}"#),
        2.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-limiter",outcome="rejected"}"#),
        1.0,
    );
    expect(
        &series(r#"wait_duration_seconds_sum{name="metrics-limiter"}"#),
        1.0,
    );
    Ok(())
}

#[test]
fn every_metric_has_help_text() {
    prometheus();
    let _breaker = CircuitBreaker::with_defaults("metrics-help");
    let text = prometheus().render();
    assert!(
        text.contains("# HELP palisade_circuit_breaker_state 1 for the state"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_rate_limiter_exports_one_series_for_all_keys() -> Result<(), BoxError> {
    prometheus();
    let limiter = palisade::rate_limit::KeyedRateLimiter::new(
        "metrics-keyed",
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(Duration::from_secs(1))
            .build()?,
    );
    let series = |labels: &str| format!("palisade_rate_limiter_{labels}");
    expect(&series(r#"keys{name="metrics-keyed"}"#), 0.0);
    limiter.try_acquire(&"alice")?;
    limiter.try_acquire(&"bob")?;
    assert!(limiter.try_acquire(&"alice").is_err());
    expect(&series(r#"keys{name="metrics-keyed"}"#), 2.0);
    expect(
        &series(r#"calls_total{name="metrics-keyed",outcome="permitted"}"#),
        2.0,
    );
    expect(
        &series(r#"calls_total{name="metrics-keyed",outcome="rejected"}"#),
        1.0,
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(limiter.remove_idle_keys(), 2);
    expect(&series(r#"keys{name="metrics-keyed"}"#), 0.0);
    Ok(())
}

#[cfg(feature = "discovery")]
#[tokio::test(start_paused = true)]
async fn balancer_exports_its_ready_and_ejected_instances() -> Result<(), BoxError> {
    use palisade::discovery::{Balance, BalanceConfig, Instance, StaticRegistry, make_fn};
    prometheus();
    let instance = |id: &str, address: &str| {
        Instance::builder("metrics-users", id, address)
            .build()
            .expect("valid instance")
    };
    let registry =
        StaticRegistry::new([instance("a", "10.0.0.1:80"), instance("b", "10.0.0.2:80")]);
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(tower::service_fn(move |()| {
            let id = id.clone();
            async move { Ok::<_, BoxError>(id) }
        }))
    });
    let mut balance = Balance::new("metrics-users", &registry, make, BalanceConfig::default())?;
    balance.ready().await?.call(()).await?;
    expect(
        r#"palisade_balancer_instances{name="metrics-users",status="ready"}"#,
        2.0,
    );
    expect(
        r#"palisade_balancer_instances{name="metrics-users",status="ejected"}"#,
        0.0,
    );
    expect(
        r#"palisade_balancer_ejections_total{name="metrics-users"}"#,
        0.0,
    );
    Ok(())
}

#[cfg(feature = "saga")]
#[tokio::test(start_paused = true)]
async fn saga_executor_exports_started_running_and_finished_sagas() -> Result<(), BoxError> {
    use palisade::saga::{MemoryLog, SagaDefinition, SagaExecutor, SagaOutcome, Step, StepContext};
    use std::sync::Arc;
    prometheus();
    let definition = SagaDefinition::<()>::builder("metrics-saga", 1)
        .step(Step::new(
            "metrics-step",
            |_: Arc<()>, _: StepContext| async move {
                tokio::time::sleep(Duration::from_millis(40)).await;
                Ok::<_, palisade::saga::StepError>(1u32)
            },
            |_, _| async move { Ok::<_, std::io::Error>(()) },
        ))
        .build()?;
    let executor = SagaExecutor::builder((), MemoryLog::new()).build()?;
    executor.register(&definition);
    let handle = executor.start(&definition, &"input").await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    expect("palisade_saga_running", 1.0);
    assert!(matches!(handle.outcome().await?, SagaOutcome::Completed(_)));
    tokio::task::yield_now().await;
    expect("palisade_saga_running", 0.0);
    expect("palisade_saga_started_total", 1.0);
    expect(r#"palisade_saga_finished_total{outcome="completed"}"#, 1.0);
    expect(
        r#"palisade_saga_step_duration_seconds_count{step="metrics-step"}"#,
        1.0,
    );
    Ok(())
}
