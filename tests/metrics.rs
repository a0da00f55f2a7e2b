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
    // Every metric exported so far (by the tests that ran before this
    // render) was described.
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split(' ').next())
        {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help text"
            );
        }
    }
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

#[tokio::test(start_paused = true)]
async fn fallback_exports_answers_by_source_and_cause_and_its_last_good_entries()
-> Result<(), BoxError> {
    use palisade::fallback::{Fallback, FallbackConfig};
    use tower::Layer;
    prometheus();
    // Requests are `(key, succeed)`.
    let backend = tower::service_fn(|(key, succeed): (u64, bool)| async move {
        if succeed {
            Ok(key * 10)
        } else {
            Err(std::io::Error::other("down"))
        }
    });
    let by_value = Fallback::new(
        "metrics-fallback",
        FallbackConfig::builder().value(0).build()?,
    );
    by_value.layer().layer(backend).oneshot((1, false)).await?;
    let series = |labels: &str| format!("palisade_fallback_{labels}");
    expect(
        &series(r#"answered_total{name="metrics-fallback",source="value",cause="failure"}"#),
        1.0,
    );
    expect(
        &series(r#"answered_total{name="metrics-fallback",source="value",cause="rejection"}"#),
        0.0,
    );

    let last_good = Fallback::new(
        "metrics-last-good",
        FallbackConfig::builder().last_good().build()?,
    );
    let service = last_good
        .layer_keyed(|(key, _): &(u64, bool)| *key)
        .layer(backend);
    service.clone().oneshot((1, true)).await?;
    service.clone().oneshot((2, true)).await?;
    expect(
        &series(r#"last_good_entries{name="metrics-last-good"}"#),
        2.0,
    );
    assert_eq!(service.clone().oneshot((1, false)).await?, 10);
    assert!(service.clone().oneshot((3, false)).await.is_err());
    expect(
        &series(r#"answered_total{name="metrics-last-good",source="last_good",cause="failure"}"#),
        1.0,
    );
    expect(
        &series(r#"no_last_good_total{name="metrics-last-good"}"#),
        1.0,
    );
    drop(service);
    expect(
        &series(r#"last_good_entries{name="metrics-last-good"}"#),
        0.0,
    );
    assert_eq!(
        last_good.metrics().last_good_entries,
        0,
        "the snapshot agrees"
    );
    Ok(())
}

#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn cache_exports_hits_misses_stale_answers_and_stores() -> Result<(), BoxError> {
    use palisade::cache::{CacheConfig, ResponseCache};
    use std::sync::atomic::AtomicBool;
    use tower::Layer;
    prometheus();
    let failing = std::sync::Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let backend = tower::service_fn(move |key: u64| {
        let fail = fail.load(Ordering::SeqCst);
        async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                Ok(key * 10)
            }
        }
    });
    let cache: ResponseCache<u64, u64> = ResponseCache::new(
        "metrics-cache",
        CacheConfig::builder()
            .ttl(Duration::from_secs(30))
            .max_staleness(Duration::from_secs(300))
            .build()?,
    );
    let service = cache.layer(|key: &u64| *key).layer(backend);
    service.clone().oneshot(1).await?; // miss, stored
    service.clone().oneshot(1).await?; // hit
    tokio::time::advance(Duration::from_secs(31)).await;
    failing.store(true, Ordering::SeqCst);
    assert_eq!(service.clone().oneshot(1).await?, 10, "the stale entry"); // miss, stale served
    let series = |labels: &str| format!("palisade_cache_{labels}");
    expect(
        &series(r#"requests_total{name="metrics-cache",result="hit"}"#),
        1.0,
    );
    expect(
        &series(r#"requests_total{name="metrics-cache",result="miss"}"#),
        2.0,
    );
    expect(&series(r#"stale_served_total{name="metrics-cache"}"#), 1.0);
    expect(&series(r#"stored_total{name="metrics-cache"}"#), 1.0);
    // moka counts entries lazily: the gauge shows its count at the last
    // store or invalidation, as the snapshot does.
    let entries = value(&series(r#"entries{name="metrics-cache"}"#)).expect("the entries gauge");
    assert!(entries <= 1.0, "{entries}");
    cache.invalidate_all();
    expect(&series(r#"entries{name="metrics-cache"}"#), 0.0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn coalesce_exports_leaders_followers_and_what_is_in_flight() -> Result<(), BoxError> {
    use palisade::coalesce::Coalesce;
    use tower::Layer;
    prometheus();
    let backend = tower::service_fn(|key: u64| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(key)
    });
    let coalesce = Coalesce::with_defaults("metrics-coalesce");
    let service = coalesce.layer(|key: &u64| *key).layer(backend);
    let series = |labels: &str| format!("palisade_coalesce_{labels}");
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(service.clone().oneshot(7)))
        .collect();
    tokio::task::yield_now().await;
    expect(&series(r#"in_flight_keys{name="metrics-coalesce"}"#), 1.0);
    expect(&series(r#"waiters{name="metrics-coalesce"}"#), 4.0);
    for call in calls {
        assert_eq!(call.await??, 7);
    }
    expect(
        &series(r#"requests_total{name="metrics-coalesce",role="leader"}"#),
        1.0,
    );
    expect(
        &series(r#"requests_total{name="metrics-coalesce",role="follower"}"#),
        3.0,
    );
    expect(&series(r#"in_flight_keys{name="metrics-coalesce"}"#), 0.0);
    expect(&series(r#"waiters{name="metrics-coalesce"}"#), 0.0);

    // A call every waiter leaves is abandoned.
    let abandoned = tokio::spawn(service.clone().oneshot(8));
    tokio::task::yield_now().await;
    abandoned.abort();
    let _ = abandoned.await;
    expect(&series(r#"abandoned_total{name="metrics-coalesce"}"#), 1.0);
    expect(&series(r#"in_flight_keys{name="metrics-coalesce"}"#), 0.0);
    assert_eq!(coalesce.metrics().abandoned, 1, "the snapshot agrees");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hedge_exports_calls_hedged_attempts_and_wins() -> Result<(), BoxError> {
    use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
    use tower::Layer;
    prometheus();
    // The first attempt takes a second, every copy 10 ms.
    let attempts = std::sync::Arc::new(AtomicU32::new(0));
    let backend = tower::service_fn(move |key: u64| {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst);
        async move {
            let took = if attempt == 0 { 1000 } else { 10 };
            tokio::time::sleep(Duration::from_millis(took)).await;
            Ok::<_, std::io::Error>((key, attempt))
        }
    });
    let hedge = Hedge::new(
        "metrics-hedge",
        HedgeConfig::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
            .max_hedged_attempts(1)
            .no_budget()
            .build()?,
    );
    let answer = hedge.layer().layer(backend).oneshot(7).await?;
    assert_eq!(answer, (7, 1), "the copy won");
    let series = |labels: &str| format!("palisade_hedge_{labels}");
    expect(&series(r#"calls_total{name="metrics-hedge"}"#), 1.0);
    expect(&series(r#"hedges_total{name="metrics-hedge"}"#), 1.0);
    expect(&series(r#"wins_total{name="metrics-hedge"}"#), 1.0);
    expect(
        &series(r#"budget_exhausted_total{name="metrics-hedge"}"#),
        0.0,
    );
    expect(&series(r#"not_hedgeable_total{name="metrics-hedge"}"#), 0.0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn adaptive_concurrency_exports_its_limit_slots_rejections_and_samples()
-> Result<(), BoxError> {
    use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig, Aimd};
    prometheus();
    let limit = AdaptiveConcurrency::new(
        "metrics-adaptive",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Aimd::new(Duration::from_millis(100)))
            .initial_limit(2)
            .build()?,
    );
    let series = |labels: &str| format!("palisade_adaptive_concurrency_{labels}");
    expect(&series(r#"limit{name="metrics-adaptive"}"#), 2.0);
    let first = limit.try_acquire()?;
    let second = limit.try_acquire()?;
    expect(&series(r#"in_flight{name="metrics-adaptive"}"#), 2.0);
    assert!(limit.try_acquire().is_err(), "at the limit");
    expect(&series(r#"rejected_total{name="metrics-adaptive"}"#), 1.0);
    first.finish(FAILURE);
    drop(second); // cancelled
    expect(&series(r#"in_flight{name="metrics-adaptive"}"#), 0.0);
    expect(
        &series(r#"samples_total{name="metrics-adaptive",outcome="failure"}"#),
        1.0,
    );
    expect(
        &series(r#"samples_total{name="metrics-adaptive",outcome="success"}"#),
        0.0,
    );
    expect(&series(r#"cancelled_total{name="metrics-adaptive"}"#), 1.0);
    // Whatever the algorithm made of the failure, the gauge follows it.
    expect(
        &series(r#"limit{name="metrics-adaptive"}"#),
        limit.limit() as f64,
    );
    Ok(())
}

#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn chaos_exports_injected_faults_by_kind_and_whether_it_is_on() -> Result<(), BoxError> {
    use palisade::chaos::{Chaos, ChaosConfig};
    use tower::Layer;
    prometheus();
    let chaos = Chaos::new(
        "metrics-chaos",
        ChaosConfig::builder()
            .error_rate(1.0)
            .latency(1.0, Duration::from_millis(20))
            .build()?,
    );
    let backend = tower::service_fn(|key: u64| async move { Ok::<_, std::io::Error>(key) });
    let service = chaos.layer().layer(backend);
    assert!(
        service.clone().oneshot(1).await.is_err(),
        "an injected error"
    );
    let series = |labels: &str| format!("palisade_chaos_{labels}");
    expect(&series(r#"enabled{name="metrics-chaos"}"#), 1.0);
    expect(&series(r#"calls_total{name="metrics-chaos"}"#), 1.0);
    expect(
        &series(r#"faults_total{name="metrics-chaos",kind="error"}"#),
        1.0,
    );
    expect(
        &series(r#"faults_total{name="metrics-chaos",kind="latency"}"#),
        1.0,
    );
    expect(
        &series(r#"faults_total{name="metrics-chaos",kind="response"}"#),
        0.0,
    );
    chaos.disable();
    assert_eq!(service.clone().oneshot(2).await?, 2);
    expect(&series(r#"enabled{name="metrics-chaos"}"#), 0.0);
    expect(&series(r#"calls_total{name="metrics-chaos"}"#), 1.0);
    Ok(())
}

#[cfg(feature = "discovery")]
#[tokio::test(start_paused = true)]
async fn in_memory_registry_exports_registrations_removals_ttl_passes_and_instances()
-> Result<(), BoxError> {
    use palisade::discovery::{HealthCheck, InMemoryRegistry, Instance, Registrar, Registration};
    prometheus();
    let registry = InMemoryRegistry::new();
    let instance = |id: &str| {
        Instance::builder("metrics-registry", id, "10.0.0.1:80")
            .build()
            .expect("valid instance")
    };
    let a = registry
        .register(Registration::new(instance("a"), HealthCheck::None))
        .await?;
    let _b = registry
        .register(Registration::new(instance("b"), HealthCheck::None))
        .await?;
    let _c = registry
        .register(Registration::new(
            instance("c"),
            HealthCheck::ttl(Duration::from_secs(10))?,
        ))
        .await?;
    registry.pass_ttl("metrics-registry", "c").await?;
    let series = |name: &str, labels: &str| {
        format!(
            r#"palisade_registry_{name}{{backend="in-memory",service="metrics-registry"{labels}}}"#
        )
    };
    expect(&series("registrations_total", ""), 3.0);
    expect(&series("ttl_passes_total", ""), 1.0);
    expect(&series("instances", r#",status="passing""#), 3.0);
    expect(&series("instances", r#",status="critical""#), 0.0);

    a.deregister().await?;
    registry.deregister("metrics-registry", "b").await?;
    tokio::time::advance(Duration::from_secs(11)).await;
    tokio::task::yield_now().await;
    expect(
        &series("deregistrations_total", r#",reason="deregistered""#),
        2.0,
    );
    expect(
        &series("deregistrations_total", r#",reason="ttl_expired""#),
        1.0,
    );
    expect(
        &series("deregistrations_total", r#",reason="critical""#),
        0.0,
    );
    expect(&series("instances", r#",status="passing""#), 0.0);
    assert_eq!(registry.metrics().ttl_expirations, 1, "the snapshot agrees");
    Ok(())
}

#[cfg(all(feature = "discovery", feature = "http"))]
#[tokio::test]
async fn in_memory_registry_exports_health_check_results() -> Result<(), BoxError> {
    use palisade::discovery::{
        HealthCheck, HttpCheck, InMemoryRegistry, Instance, Registrar, Registration,
        RegistryEventKind,
    };
    use std::sync::Arc;
    use std::sync::atomic::AtomicU16;
    prometheus();
    // A health endpoint answering with the status the test sets.
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let status = answer.load(Ordering::SeqCst);
            async move { axum::http::StatusCode::from_u16(status).expect("a status") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let registry = InMemoryRegistry::new();
    let mut events = registry.subscribe();
    let check = HttpCheck::builder()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(50))
        .build()?;
    let _guard = registry
        .register(Registration::new(
            Instance::builder("metrics-checked", "a", address.to_string()).build()?,
            HealthCheck::Http(check),
        ))
        .await?;
    let mut next_health = async || loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("no event lost");
        if matches!(
            event.kind,
            RegistryEventKind::Passing | RegistryEventKind::Critical { .. }
        ) {
            return event.kind;
        }
    };
    assert_eq!(next_health().await, RegistryEventKind::Passing);
    let checks = |result: &str| {
        value(&format!(
            r#"palisade_registry_health_checks_total{{backend="in-memory",service="metrics-checked",result="{result}"}}"#
        ))
    };
    // Checks go on every 50 ms: at least the one that passed, none failed.
    assert!(checks("passed") >= Some(1.0));
    assert_eq!(checks("failed"), Some(0.0));
    expect(
        r#"palisade_registry_instances{backend="in-memory",service="metrics-checked",status="passing"}"#,
        1.0,
    );
    status.store(503, Ordering::SeqCst);
    assert!(matches!(
        next_health().await,
        RegistryEventKind::Critical { .. }
    ));
    assert!(checks("failed") >= Some(1.0));
    expect(
        r#"palisade_registry_instances{backend="in-memory",service="metrics-checked",status="critical"}"#,
        1.0,
    );
    server.abort();
    Ok(())
}

#[cfg(feature = "discovery")]
#[test]
fn static_registry_exports_its_instances_per_service() {
    use palisade::discovery::{Instance, StaticRegistry};
    prometheus();
    let instance = |service: &str, id: &str| {
        Instance::builder(service, id, "10.0.0.1:80")
            .build()
            .expect("valid instance")
    };
    let registry = StaticRegistry::new([
        instance("metrics-static-a", "1"),
        instance("metrics-static-a", "2"),
        instance("metrics-static-b", "1"),
    ]);
    let series = |service: &str| {
        format!(
            r#"palisade_registry_instances{{backend="static",service="{service}",status="passing"}}"#
        )
    };
    expect(&series("metrics-static-a"), 2.0);
    expect(&series("metrics-static-b"), 1.0);
    registry.replace([instance("metrics-static-a", "3")]);
    expect(&series("metrics-static-a"), 1.0);
    expect(&series("metrics-static-b"), 0.0);
}
