//! The ordered pipeline: retry → circuit breaker → rate limiter → timeout →
//! bulkhead, each stage optional, one error type, one span per call.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::BoxError;
use palisade::backoff::Backoff;
use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
use palisade::circuit_breaker::{
    BreakerOpen, CircuitBreaker, CircuitBreakerConfig, CircuitState, SlidingWindow,
};
use palisade::pipeline::{Pipeline, PipelineError, Stage};
use palisade::rate_limit::{RateLimited, RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use support::{Backend, Gate, Reply};
use tower::{Layer, Service, ServiceExt};

/// Whether `error` is a rejection whose layer error is an `E`.
fn rejected_with<E: std::error::Error + 'static>(error: &PipelineError) -> bool {
    error
        .rejection()
        .is_some_and(|rejection| rejection.downcast_ref::<E>().is_some())
}

fn retry(max_attempts: u32, backoff: Duration) -> Retry {
    Retry::new(
        "test",
        RetryConfig::builder()
            .max_attempts(max_attempts)
            .backoff(Backoff::constant(backoff).build().unwrap())
            .build()
            .unwrap(),
    )
}

/// A breaker that never opens on its own (the tests force its state).
fn patient_breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        "test",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(100))
            .minimum_number_of_calls(100)
            .build()
            .unwrap(),
    )
}

fn bulkhead(limit: usize) -> Bulkhead {
    Bulkhead::new(
        "test",
        BulkheadConfig::builder()
            .max_concurrent_calls(limit)
            .build()
            .unwrap(),
    )
}

/// Fails its first `failures` calls after `latency`, then succeeds; records
/// how many bulkhead permits were in use while each call ran.
#[derive(Clone)]
struct Flaky {
    calls: Arc<AtomicUsize>,
    failures: usize,
    latency: Duration,
    bulkhead: Bulkhead,
    in_flight_seen: Arc<Mutex<Vec<usize>>>,
}

impl Flaky {
    fn new(failures: usize, latency: Duration, bulkhead: &Bulkhead) -> Self {
        Self {
            calls: Arc::default(),
            failures,
            latency,
            bulkhead: bulkhead.clone(),
            in_flight_seen: Arc::default(),
        }
    }
}

impl Service<u32> for Flaky {
    type Response = u32;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.in_flight_seen
            .lock()
            .unwrap()
            .push(self.bulkhead.metrics().in_flight);
        let fail = n < self.failures;
        let latency = self.latency;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if fail {
                Err("flaky failure")
            } else {
                Ok(request)
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_re_enters_the_breaker_and_the_bulkhead() {
    let breaker = patient_breaker();
    let bulkhead = bulkhead(1);
    let flaky = Flaky::new(2, Duration::from_millis(10), &bulkhead);
    let pipeline = Pipeline::builder("orders")
        .bulkhead(bulkhead.clone())
        .circuit_breaker(breaker.clone())
        .retry(retry(3, Duration::from_secs(1)))
        .build()
        .unwrap();
    let retry_layer = pipeline.retry().unwrap().clone();
    let mut service = pipeline.layer(flaky.clone());

    let call = tokio::spawn(service.ready().await.unwrap().call(7));
    // First attempt runs and fails; the retry waits its backoff. (With
    // paused time, sleeping lets every timer due before it fire first.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        bulkhead.metrics().in_flight,
        0,
        "the bulkhead permit is given back during the backoff wait"
    );
    let response = call.await.unwrap().unwrap();
    assert_eq!(response, 7);

    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        *flaky.in_flight_seen.lock().unwrap(),
        vec![1, 1, 1],
        "every attempt held its own bulkhead permit"
    );
    let metrics = breaker.metrics();
    assert_eq!(
        metrics.failed_calls, 2,
        "the breaker saw each failed attempt"
    );
    assert_eq!(metrics.successful_calls, 1);
    assert_eq!(retry_layer.metrics().retries, 2);
    assert_eq!(bulkhead.metrics().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_rejection_is_not_retried() {
    let breaker = patient_breaker();
    breaker.transition_to_forced_open();
    let backend = Backend::default();
    let pipeline = Pipeline::builder("orders")
        .retry(retry(5, Duration::from_millis(100)))
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let retry_layer = pipeline.retry().unwrap().clone();
    let mut service = pipeline.layer(backend.clone());

    let started = tokio::time::Instant::now();
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Reply::Ok)
        .await
        .unwrap_err();
    assert!(rejected_with::<BreakerOpen>(&error), "{error:?}");
    assert_eq!(error.stage(), Stage::CircuitBreaker);
    assert!(error.is_rejection());
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "returned at once, no backoff"
    );
    assert_eq!(retry_layer.metrics().retries, 0);
    assert_eq!(backend.calls(), 0);
    assert_eq!(breaker.metrics().not_permitted_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_are_retried_when_configured() {
    let breaker = patient_breaker();
    breaker.transition_to_forced_open();
    let backend = Backend::default();
    let pipeline = Pipeline::builder("orders")
        .retry(retry(4, Duration::from_millis(100)))
        .retry_rejections(true)
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let retry_layer = pipeline.retry().unwrap().clone();
    let mut service = pipeline.layer(backend.clone());

    let call = tokio::spawn(service.ready().await.unwrap().call(Reply::Ok));
    // Close the breaker during the second backoff wait: the third attempt passes.
    // (With paused time, sleeping lets every timer due before it fire first.)
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(breaker.metrics().not_permitted_calls, 2);
    breaker.transition_to_closed();
    assert_eq!(call.await.unwrap().unwrap(), "ok");
    assert_eq!(retry_layer.metrics().retries, 2);
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_does_not_count_bulkhead_or_rate_limiter_rejections() {
    let breaker = CircuitBreaker::new(
        "orders",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(2)
            .failure_rate_threshold(50.0)
            .build()
            .unwrap(),
    );
    let bulkhead = bulkhead(1);
    let limiter = RateLimiter::new(
        "orders",
        RateLimiterConfig::builder()
            .limit_for_period(3)
            .limit_refresh_period(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let backend = Backend::default();
    let mut service = Pipeline::builder("orders")
        .circuit_breaker(breaker.clone())
        .rate_limiter(limiter.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap()
        .layer(backend.clone());

    // One call holds the only bulkhead permit.
    let gate = Gate::new();
    let held = tokio::spawn(
        service
            .ready()
            .await
            .unwrap()
            .call(Reply::OkWhen(gate.clone())),
    );
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.metrics().in_flight, 1);
    // Two more are turned away by the bulkhead, then the limiter runs dry.
    for _ in 0..2 {
        let error = service
            .ready()
            .await
            .unwrap()
            .call(Reply::Ok)
            .await
            .unwrap_err();
        assert!(rejected_with::<BulkheadFull>(&error), "{error:?}");
        assert_eq!(error.stage(), Stage::Bulkhead);
    }
    for _ in 0..3 {
        let error = service
            .ready()
            .await
            .unwrap()
            .call(Reply::Ok)
            .await
            .unwrap_err();
        assert!(rejected_with::<RateLimited>(&error), "{error:?}");
        assert_eq!(error.stage(), Stage::RateLimiter);
    }
    gate.open();
    assert_eq!(held.await.unwrap().unwrap(), "ok");

    let metrics = breaker.metrics();
    assert_eq!(metrics.state, CircuitState::Closed);
    assert_eq!(
        metrics.failed_calls, 0,
        "rejections are not the dependency's failures"
    );
    assert_eq!(metrics.successful_calls, 1);
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_timeouts_as_failures_and_opens() {
    let breaker = CircuitBreaker::new(
        "orders",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(2))
            .minimum_number_of_calls(2)
            .failure_rate_threshold(50.0)
            .build()
            .unwrap(),
    );
    let backend = Backend::default();
    let mut service = Pipeline::builder("orders")
        .timeout(Duration::from_secs(1))
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap()
        .layer(backend.clone());

    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        let error = service
            .ready()
            .await
            .unwrap()
            .call(Reply::OkAfter(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        match &error {
            PipelineError::TimedOut(timed_out) => {
                assert_eq!(timed_out.stage(), Stage::Timeout);
                assert_eq!(timed_out.after(), Duration::from_secs(1));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Reply::Ok)
        .await
        .unwrap_err();
    assert!(rejected_with::<BreakerOpen>(&error));
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried() {
    let bulkhead = bulkhead(1);
    let flaky = Flaky::new(0, Duration::from_secs(5), &bulkhead);
    let mut service = Pipeline::builder("orders")
        .retry(retry(2, Duration::from_millis(10)))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(flaky.clone());
    let started = tokio::time::Instant::now();
    let error = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(matches!(error, PipelineError::TimedOut(_)), "{error:?}");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(2010));
}

#[test]
fn a_stage_left_out_is_not_in_the_service() {
    use palisade::circuit_breaker::CircuitBreakerService;
    use palisade::classify::DefaultClassifier;
    use palisade::pipeline::{BoxErrors, PipelineService, StageClassifier};
    use tower::timeout::Timeout;

    // No stage: the service itself, its errors boxed, in the pipeline's
    // span; no wrapper for the stages left out.
    let empty: PipelineService<BoxErrors<Backend>> = Pipeline::builder("s")
        .build()
        .unwrap()
        .layer(Backend::default());
    assert_eq!(empty.name(), "s");

    // A breaker and a timeout, added in either order: those two layers,
    // in the pipeline's order, and nothing else.
    type BreakerAndTimeout = PipelineService<
        CircuitBreakerService<Timeout<BoxErrors<Backend>>, StageClassifier<DefaultClassifier>>,
    >;
    let _: BreakerAndTimeout = Pipeline::builder("s")
        .timeout(Duration::from_secs(1))
        .circuit_breaker(CircuitBreaker::with_defaults("s"))
        .build()
        .unwrap()
        .layer(Backend::default());
    let _: BreakerAndTimeout = Pipeline::builder("s")
        .circuit_breaker(CircuitBreaker::with_defaults("s"))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(Backend::default());
}

/// Calls `service` once with a success and once with the backend's failure.
async fn answers_and_fails<S>(name: &str, mut service: S, backend: &Backend)
where
    S: Service<Reply, Response = &'static str, Error = PipelineError>,
{
    let ok = service.ready().await.unwrap().call(Reply::Ok).await;
    assert_eq!(ok.unwrap(), "ok", "stage {name}");
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Reply::Err)
        .await
        .unwrap_err();
    match &error {
        PipelineError::Service(inner) => assert_eq!(inner.to_string(), "backend failed"),
        other => panic!("stage {name}: expected the service's error, got {other:?}"),
    }
    assert_eq!(backend.calls(), 2, "stage {name}");
}

#[tokio::test(start_paused = true)]
async fn each_stage_is_optional() {
    // Each stage changes the builder's type (its own slot), so each
    // pipeline is built apart.
    let backend = Backend::default();
    let service = Pipeline::builder("s")
        .build()
        .unwrap()
        .layer(backend.clone());
    answers_and_fails("none", service, &backend).await;

    let backend = Backend::default();
    let service = Pipeline::builder("s")
        .circuit_breaker(CircuitBreaker::with_defaults("s"))
        .build()
        .unwrap()
        .layer(backend.clone());
    answers_and_fails("circuit breaker", service, &backend).await;

    let backend = Backend::default();
    let service = Pipeline::builder("s")
        .rate_limiter(RateLimiter::new("s", RateLimiterConfig::default()))
        .build()
        .unwrap()
        .layer(backend.clone());
    answers_and_fails("rate limiter", service, &backend).await;

    let backend = Backend::default();
    let service = Pipeline::builder("s")
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(backend.clone());
    answers_and_fails("timeout", service, &backend).await;

    let backend = Backend::default();
    let service = Pipeline::builder("s")
        .bulkhead(Bulkhead::new("s", BulkheadConfig::default()))
        .build()
        .unwrap()
        .layer(backend.clone());
    answers_and_fails("bulkhead", service, &backend).await;

    // The retry stage alone (it changes the builder's type).
    let backend = Backend::default();
    let mut service = Pipeline::builder("s")
        .retry(retry(3, Duration::from_millis(1)))
        .build()
        .unwrap()
        .layer(backend.clone());
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Reply::Err)
        .await
        .unwrap_err();
    assert!(matches!(error, PipelineError::Service(_)));
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn pipeline_errors_are_downcastable_and_keep_their_cause() {
    let breaker = CircuitBreaker::with_defaults("users");
    breaker.transition_to_forced_open();
    let mut service = Pipeline::builder("users")
        .circuit_breaker(breaker)
        .build()
        .unwrap()
        .layer(Backend::default());
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Reply::Ok)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("rejected by the circuit breaker: "),
        "{error}"
    );
    let boxed: BoxError = error.into();
    let pipeline_error = boxed
        .downcast_ref::<PipelineError>()
        .expect("a PipelineError");
    assert_eq!(pipeline_error.stage(), Stage::CircuitBreaker);
    let open =
        palisade::find_cause::<BreakerOpen>(&*boxed).expect("the breaker's error is the source");
    assert_eq!(open.breaker(), "users");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_releases_its_bulkhead_permit() {
    let bulkhead = bulkhead(2);
    let backend = Backend::default();
    let mut service = Pipeline::builder("s")
        .retry(retry(3, Duration::from_millis(1)))
        .circuit_breaker(patient_breaker())
        .timeout(Duration::from_secs(10))
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap()
        .layer(backend.clone());
    let gate = Gate::new();
    let call = service.ready().await.unwrap().call(Reply::OkWhen(gate));
    let task = tokio::spawn(call);
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.metrics().in_flight, 1);
    task.abort();
    let _ = task.await;
    assert_eq!(bulkhead.metrics().in_flight, 0);
    assert_eq!(bulkhead.metrics().available_permits, 2);
}

#[test]
fn config_rejects_a_zero_timeout_and_an_empty_name() {
    let error = Pipeline::builder("s")
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(error.component(), "pipeline");
    assert_eq!(error.field(), "timeout");
    let error = Pipeline::builder("").build().unwrap_err();
    assert_eq!(error.field(), "name");
}

#[test]
fn pipeline_services_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn future_is_send<S: Service<Reply>>(_: &S)
    where
        S::Future: Send,
    {
    }
    let service = Pipeline::builder("s")
        .retry(retry(2, Duration::from_millis(1)))
        .circuit_breaker(patient_breaker())
        .rate_limiter(RateLimiter::new("s", RateLimiterConfig::default()))
        .timeout(Duration::from_secs(1))
        .bulkhead(bulkhead(1))
        .build()
        .unwrap()
        .layer(Backend::default());
    // Shareable as axum state or behind an Arc.
    send_sync(&service);
    future_is_send(&service);
}

/// A rejecting layer palisade knows nothing about: its error only carries
/// the `Rejected` marker.
#[derive(Debug)]
struct Shed {
    rejected: palisade::error::Rejected,
}

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "load shedder '{}' is overloaded", self.rejected.name())
    }
}

impl std::error::Error for Shed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_layers_marked_rejection_is_neither_retried_nor_counted_by_the_breaker() {
    let breaker = patient_breaker();
    let calls = Arc::new(AtomicUsize::new(0));
    let pipeline = Pipeline::builder("checkout")
        .retry(retry(5, Duration::from_millis(100)))
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let mut service = pipeline.layer(tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_: Reply| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<&'static str, _>(Shed {
                rejected: palisade::error::Rejected::new("load_shed", "checkout"),
            }))
        }
    }));

    let error = service
        .ready()
        .await
        .unwrap()
        .call(Reply::Ok)
        .await
        .unwrap_err();
    assert!(error.is_rejection(), "{error:?}");
    let rejection = error.rejection().unwrap();
    assert_eq!(
        rejection.stage(),
        Stage::Service,
        "not a stage of the pipeline"
    );
    assert_eq!(rejection.rejected().layer(), "load_shed");
    assert_eq!(rejection.rejected().name(), "checkout");
    assert!(rejected_with::<Shed>(&error));
    assert!(palisade::find_cause::<Shed>(&error).is_some());
    assert_eq!(
        error.to_string(),
        "rejected by the load shed: load shedder 'checkout' is overloaded"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(
        breaker.metrics().failed_calls,
        0,
        "not the dependency's failure"
    );
    assert_eq!(breaker.metrics().buffered_calls, 0, "ignored, not recorded");
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_the_bulkhead_gives_up_at_max_elapsed() {
    // The bulkhead lets a caller wait 5 s for its permit; the retry's
    // deadline is 1 s. A retry that finds the bulkhead taken waits for it
    // only until the deadline, then returns the failure it was retrying.
    let bulkhead = Bulkhead::new(
        "test",
        BulkheadConfig::builder()
            .max_concurrent_calls(1)
            .max_wait_duration(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let retry = Retry::new(
        "test",
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(
                Backoff::constant(Duration::from_millis(100))
                    .build()
                    .unwrap(),
            )
            .max_elapsed(Duration::from_secs(1))
            .no_budget()
            .build()
            .unwrap(),
    );
    let backend = Backend::default();
    let mut service = Pipeline::builder("s")
        .retry(retry)
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap()
        .layer(backend.clone());
    let started = tokio::time::Instant::now();
    let call = service
        .ready()
        .await
        .unwrap()
        .call(Reply::ErrAfter(Duration::from_millis(100)));
    let task = tokio::spawn(call);
    tokio::task::yield_now().await;
    // The first attempt fails at 100 ms; during the backoff another caller
    // takes the bulkhead's only permit and keeps it.
    tokio::time::advance(Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(50)).await;
    let occupant = bulkhead.try_acquire().expect("free during the backoff");
    let error = task.await.unwrap().unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed <= Duration::from_secs(1),
        "the call ended {elapsed:?} after it started"
    );
    assert_eq!(
        error.stage(),
        Stage::Service,
        "the failure retried: {error}"
    );
    assert_eq!(backend.calls(), 1);
    assert_eq!(bulkhead.metrics().waiting, 0, "the wait was given up");
    drop(occupant);
}

/// A request that is not `Clone` (it owns the receiving end of a channel),
/// as a `reqwest::Request` or a `tonic::Request` is not.
struct Job {
    answer: tokio::sync::oneshot::Receiver<&'static str>,
}

/// Answers each [`Job`] with what its channel delivers.
#[derive(Clone, Default)]
struct Worker {
    calls: Arc<AtomicUsize>,
}

impl Service<Job> for Worker {
    type Response = &'static str;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, &'static str>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { job.answer.await.map_err(|_| "no answer") })
    }
}

fn answered(answer: &'static str) -> Job {
    let (sender, answer_receiver) = tokio::sync::oneshot::channel();
    sender.send(answer).unwrap();
    Job {
        answer: answer_receiver,
    }
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_without_retry_accepts_requests_that_are_not_clone() {
    let breaker = patient_breaker();
    let bulkhead = bulkhead(1);
    let limiter = RateLimiter::new(
        "jobs",
        RateLimiterConfig::builder()
            .limit_for_period(3)
            .limit_refresh_period(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let worker = Worker::default();
    let mut service = Pipeline::builder("jobs")
        .circuit_breaker(breaker.clone())
        .rate_limiter(limiter)
        .timeout(Duration::from_secs(1))
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap()
        .layer(worker.clone());

    // A success: the request reaches the service through every stage.
    let response = service.ready().await.unwrap().call(answered("done")).await;
    assert_eq!(response.unwrap(), "done");

    // The breaker rejects without reaching the service.
    breaker.transition_to_forced_open();
    let error = service
        .ready()
        .await
        .unwrap()
        .call(answered("unseen"))
        .await
        .unwrap_err();
    assert!(rejected_with::<BreakerOpen>(&error), "{error:?}");
    assert_eq!(error.stage(), Stage::CircuitBreaker);
    breaker.transition_to_closed();

    // A job never answered holds the only bulkhead permit: the next job is
    // turned away. Then the first times out and releases its permit.
    let (_unanswered, answer) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(service.ready().await.unwrap().call(Job { answer }));
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.metrics().in_flight, 1);
    let error = service
        .ready()
        .await
        .unwrap()
        .call(answered("unseen"))
        .await
        .unwrap_err();
    assert!(rejected_with::<BulkheadFull>(&error), "{error:?}");
    assert_eq!(error.stage(), Stage::Bulkhead);
    match held.await.unwrap().unwrap_err() {
        PipelineError::TimedOut(timed_out) => assert_eq!(timed_out.stage(), Stage::Timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(bulkhead.metrics().in_flight, 0);

    // The limiter's three permits are spent: the next job is rejected.
    let error = service
        .ready()
        .await
        .unwrap()
        .call(answered("unseen"))
        .await
        .unwrap_err();
    assert!(rejected_with::<RateLimited>(&error), "{error:?}");
    assert_eq!(error.stage(), Stage::RateLimiter);
    assert_eq!(worker.calls.load(Ordering::SeqCst), 2);
}
