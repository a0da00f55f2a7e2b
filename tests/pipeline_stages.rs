//! The pipeline's extra stages (cache, coalescing, fallback, hedging,
//! adaptive concurrency, chaos) land in their documented place whatever
//! order they are added in: each test adds them backwards and checks, by
//! what each stage sees, who wraps whom.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig, Aimd};
use palisade::backoff::Backoff;
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use palisade::coalesce::Coalesce;
use palisade::fallback::{Fallback, FallbackConfig};
use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
use palisade::pipeline::{Pipeline, PipelineError, Stage};
use palisade::retry::{Retry, RetryConfig};
use tower::{Layer, Service, ServiceExt};

fn retry(max_attempts: u32) -> Retry {
    Retry::new(
        "stages",
        RetryConfig::builder()
            .max_attempts(max_attempts)
            .backoff(
                Backoff::constant(Duration::from_millis(10))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
}

/// A breaker that never opens on its own, so it only counts.
fn counting_breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        "stages",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(100))
            .minimum_number_of_calls(100)
            .build()
            .unwrap(),
    )
}

/// A service that counts its calls, answers `request * 10` after `latency`,
/// and fails while `failing` is set.
#[derive(Clone)]
struct Counted {
    calls: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    latency: Duration,
}

impl Counted {
    fn new(latency: Duration) -> Self {
        Self {
            calls: Arc::default(),
            failing: Arc::default(),
            latency,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u32> for Counted {
    type Response = u32;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = self.failing.load(Ordering::SeqCst);
        let latency = self.latency;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if fail {
                Err("dependency failed".into())
            } else {
                Ok(request * 10)
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_answers_only_after_every_retry_attempt_went_through_the_breaker() {
    let breaker = counting_breaker();
    let retry = retry(3);
    let fallback = Fallback::new(
        "stages",
        FallbackConfig::builder().value(7).build().unwrap(),
    );
    let backend = Counted::new(Duration::from_millis(5));
    backend.failing.store(true, Ordering::SeqCst);

    // Added innermost first: the order of the calls does not matter.
    let pipeline = Pipeline::builder("stages")
        .circuit_breaker(breaker.clone())
        .fallback(fallback.layer())
        .retry(retry.clone())
        .build()
        .unwrap();
    let mut service = pipeline.layer(backend.clone());

    let answer = service.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(answer, 7, "the fallback's value answers the failure");
    assert_eq!(
        backend.calls(),
        3,
        "every attempt reached the service first"
    );
    assert_eq!(
        breaker.metrics().failed_calls,
        3,
        "the breaker saw each attempt"
    );
    assert_eq!(retry.metrics().failed_after_retries, 1);
    assert_eq!(fallback.metrics().answered_by_value, 1);
}

#[tokio::test(start_paused = true)]
async fn coalescing_is_outside_the_retry_so_concurrent_callers_share_one_retry_sequence() {
    let retry = retry(3);
    let coalesce = Coalesce::with_defaults("stages");
    let backend = Counted::new(Duration::from_millis(20));

    let pipeline = Pipeline::builder("stages")
        .retry(retry.clone())
        .coalesce(coalesce.layer(|request: &u32| *request))
        .build()
        .unwrap();
    let service = pipeline.layer(backend.clone());

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(4).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 40);
    }
    assert_eq!(
        backend.calls(),
        1,
        "five callers, one trip through the stages"
    );
    assert_eq!(coalesce.metrics().coalesced, 4);
    assert_eq!(retry.metrics().succeeded_without_retry, 1);
}

#[tokio::test(start_paused = true)]
async fn hedged_copies_each_go_through_the_breaker_inside() {
    let breaker = counting_breaker();
    let hedge = Hedge::new(
        "stages",
        HedgeConfig::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(10)))
            .max_hedged_attempts(1)
            .no_budget()
            .build()
            .unwrap(),
    );
    let backend = Counted::new(Duration::from_millis(50));

    let pipeline = Pipeline::builder("stages")
        .circuit_breaker(breaker.clone())
        .hedge(hedge.layer())
        .build()
        .unwrap();
    let mut service = pipeline.layer(backend.clone());

    assert_eq!(service.ready().await.unwrap().call(2).await.unwrap(), 20);
    assert_eq!(backend.calls(), 2, "the original and one copy");
    assert_eq!(hedge.metrics().hedges_started, 1);
    // The losing copy is cancelled: the breaker records the winner and
    // releases the loser's permit without an outcome.
    assert_eq!(breaker.metrics().successful_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_is_inside_the_breaker_and_its_rejections_name_their_stage() {
    let breaker = counting_breaker();
    let limit = AdaptiveConcurrency::new(
        "stages",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Aimd::new(Duration::from_secs(1)))
            .initial_limit(1)
            .min_limit(1)
            .max_limit(1)
            .build()
            .unwrap(),
    );
    let bulkhead = Bulkhead::new(
        "stages",
        BulkheadConfig::builder()
            .max_concurrent_calls(10)
            .build()
            .unwrap(),
    );
    let backend = Counted::new(Duration::from_millis(100));

    let pipeline = Pipeline::builder("stages")
        .adaptive_concurrency(limit.layer())
        .bulkhead(bulkhead)
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let service = pipeline.layer(backend.clone());

    let first = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    let error = service.clone().oneshot(2).await.unwrap_err();
    assert!(matches!(error, PipelineError::Rejected(_)), "{error:?}");
    assert_eq!(error.stage(), Stage::AdaptiveConcurrency);
    assert_eq!(first.await.unwrap().unwrap(), 10);
    assert_eq!(backend.calls(), 1);
    assert_eq!(limit.metrics().rejected, 1);
    assert_eq!(
        breaker.metrics().failed_calls,
        0,
        "a rejection is not the dependency's failure"
    );
    assert_eq!(breaker.metrics().successful_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn an_outer_stage_passes_the_core_error_on_as_a_downcastable_pipeline_error() {
    let breaker = counting_breaker();
    breaker.transition_to_forced_open();
    let coalesce = Coalesce::with_defaults("stages");
    let backend = Counted::new(Duration::from_millis(1));

    let pipeline = Pipeline::builder("stages")
        .circuit_breaker(breaker)
        .coalesce(coalesce.layer(|request: &u32| *request))
        .build()
        .unwrap();
    let mut service = pipeline.layer(backend.clone());

    let error = service.ready().await.unwrap().call(3).await.unwrap_err();
    let core = palisade::find_cause::<PipelineError>(&*error).expect("the core's error inside");
    assert_eq!(core.stage(), Stage::CircuitBreaker);
    assert_eq!(backend.calls(), 0);
}

#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn chaos_is_innermost_so_the_breaker_counts_and_the_retry_retries_its_faults() {
    use palisade::chaos::{Chaos, ChaosConfig};

    let breaker = counting_breaker();
    let retry = retry(2);
    let chaos = Chaos::new(
        "stages",
        ChaosConfig::builder()
            .error_rate(1.0)
            .seed(7)
            .build()
            .unwrap(),
    );
    let backend = Counted::new(Duration::from_millis(1));

    let pipeline = Pipeline::builder("stages")
        .chaos(chaos.layer())
        .circuit_breaker(breaker.clone())
        .retry(retry.clone())
        .build()
        .unwrap();
    let mut service = pipeline.layer(backend.clone());

    let error = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        error.stage(),
        Stage::Service,
        "an injected fault stands for the dependency's"
    );
    assert_eq!(
        chaos.metrics().errors_injected,
        2,
        "each attempt met the fault"
    );
    assert_eq!(breaker.metrics().failed_calls, 2);
    assert_eq!(
        backend.calls(),
        0,
        "an injected error never reaches the service"
    );
}

#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn a_cache_hit_runs_no_other_stage_and_a_stale_entry_answers_an_open_breaker() {
    use palisade::cache::{CacheConfig, ResponseCache};

    let breaker = counting_breaker();
    let cache = ResponseCache::new(
        "stages",
        CacheConfig::builder()
            .ttl(Duration::from_secs(1))
            .max_entries(100)
            .max_staleness(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let backend = Counted::new(Duration::from_millis(1));

    let pipeline = Pipeline::builder("stages")
        .circuit_breaker(breaker.clone())
        .cache(cache.layer(|request: &u32| *request))
        .build()
        .unwrap();
    let mut service = pipeline.layer(backend.clone());

    assert_eq!(service.ready().await.unwrap().call(5).await.unwrap(), 50);
    assert_eq!(service.ready().await.unwrap().call(5).await.unwrap(), 50);
    assert_eq!(backend.calls(), 1);
    assert_eq!(
        breaker.metrics().successful_calls,
        1,
        "the hit never reached the breaker"
    );

    tokio::time::advance(Duration::from_secs(2)).await;
    breaker.transition_to_forced_open();
    assert_eq!(service.ready().await.unwrap().call(5).await.unwrap(), 50);
    assert_eq!(
        cache.metrics().stale_served,
        1,
        "the stale entry answered the rejection"
    );
}
