//! The bulkhead, driven through its tower service with paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadConfigBuilder, BulkheadFull};
use palisade::circuit_breaker::BreakerOpen;
use palisade::{BoxError, find_cause, is_caused_by};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

const SECOND: Duration = Duration::from_secs(1);

/// Counts calls in flight (and the most ever), holds each call for the
/// duration in its request or until the gate opens, and notes arrival order.
#[derive(Clone, Default)]
struct Backend {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<u64>>>,
    gate: Option<Arc<Semaphore>>,
}

impl Backend {
    fn gated() -> Self {
        Self {
            gate: Some(Arc::new(Semaphore::new(0))),
            ..Self::default()
        }
    }

    fn open_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    fn arrivals(&self) -> Vec<u64> {
        self.arrivals.lock().expect("arrivals").clone()
    }
}

/// (request id, how long the call takes)
type Request = (u64, Duration);

impl Service<Request> for Backend {
    type Response = u64;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (id, takes): Request) -> Self::Future {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.arrivals.lock().expect("arrivals").push(id);
        let in_flight = self.in_flight.clone();
        let gate = self.gate.clone();
        Box::pin(async move {
            struct Leave(Arc<AtomicUsize>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _leave = Leave(in_flight);
            if let Some(gate) = gate {
                let _ = gate.acquire().await;
            }
            tokio::time::sleep(takes).await;
            Ok(id)
        })
    }
}

fn bulkhead(builder: BulkheadConfigBuilder) -> Bulkhead {
    Bulkhead::new("backend", builder.build().expect("valid config"))
}

fn config(limit: usize) -> BulkheadConfigBuilder {
    BulkheadConfig::builder().max_concurrent_calls(limit)
}

fn full(result: Result<u64, BoxError>) -> BulkheadFull {
    let err = result.expect_err("rejected");
    find_cause::<BulkheadFull>(&*err)
        .unwrap_or_else(|| panic!("expected BulkheadFull, got {err}"))
        .clone()
}

/// Spawns a call through a clone of `service` and lets it start.
async fn spawn_call<S>(
    service: &S,
    request: Request,
) -> tokio::task::JoinHandle<Result<u64, BoxError>>
where
    S: Service<Request, Response = u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut service = service.clone();
    let task = tokio::spawn(async move { service.ready().await?.call(request).await });
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    task
}

#[tokio::test(start_paused = true)]
async fn concurrency_never_exceeds_the_limit_under_10000_concurrent_calls() {
    let b = bulkhead(
        config(10)
            .max_wait_duration(3600 * SECOND)
            .max_waiting(10_000),
    );
    let backend = Backend::default();
    let service = b.layer().layer(backend.clone());
    let mut tasks = Vec::new();
    for id in 0..10_000u64 {
        let mut service = service.clone();
        let takes = Duration::from_millis(1 + id % 7);
        tasks.push(tokio::spawn(async move {
            service.ready().await?.call((id, takes)).await
        }));
    }
    for task in tasks {
        task.await
            .expect("task")
            .expect("every call waits its turn");
    }
    assert_eq!(backend.max_in_flight.load(Ordering::SeqCst), 10);
    let m = b.metrics();
    assert_eq!(
        (m.in_flight, m.waiting, m.available_permits, m.rejected),
        (0, 0, 10, 0)
    );
    assert_eq!(m.max_in_flight_observed, 10);
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_are_served_in_fifo_order() {
    let b = bulkhead(config(1).max_wait_duration(60 * SECOND));
    let backend = Backend::gated();
    let service = b.layer().layer(backend.clone());
    let mut tasks = Vec::new();
    for id in 0..6 {
        tasks.push(spawn_call(&service, (id, Duration::ZERO)).await);
    }
    assert_eq!(b.metrics().waiting, 5);
    backend.open_gate();
    for task in tasks {
        task.await.expect("task").expect("served");
    }
    assert_eq!(backend.arrivals(), [0, 1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_caller_waits_at_most_max_wait_duration() {
    let b = bulkhead(config(1).max_wait_duration(2 * SECOND));
    let backend = Backend::default();
    let mut service = b.layer().layer(backend.clone());
    let holder = spawn_call(&service, (1, 10 * SECOND)).await;
    let started = tokio::time::Instant::now();
    let rejected = full(
        service
            .ready()
            .await
            .expect("ready")
            .call((2, Duration::ZERO))
            .await,
    );
    assert_eq!(started.elapsed(), 2 * SECOND);
    assert_eq!(rejected.waited(), 2 * SECOND);
    assert_eq!(
        backend.arrivals(),
        [1],
        "the rejected call never reached the backend"
    );
    holder.await.expect("task").expect("holder finishes");
}

#[tokio::test(start_paused = true)]
async fn zero_max_wait_fails_fast() {
    let b = bulkhead(config(1));
    let mut service = b.layer().layer(Backend::default());
    let _holder = spawn_call(&service, (1, 10 * SECOND)).await;
    let rejected = full(
        service
            .ready()
            .await
            .expect("ready")
            .call((2, Duration::ZERO))
            .await,
    );
    assert_eq!(rejected.waited(), Duration::ZERO);
    assert_eq!(
        rejected.to_string(),
        "bulkhead 'backend' is full: all 1 permits are in use"
    );
    assert!(
        !is_caused_by::<BreakerOpen>(&rejected),
        "not the breaker's error"
    );
}

#[tokio::test(start_paused = true)]
async fn callers_beyond_max_waiting_are_rejected_at_once() {
    let b = bulkhead(config(1).max_wait_duration(60 * SECOND).max_waiting(2));
    let service = b.layer().layer(Backend::gated());
    let _holder = spawn_call(&service, (1, Duration::ZERO)).await;
    let _w1 = spawn_call(&service, (2, Duration::ZERO)).await;
    let _w2 = spawn_call(&service, (3, Duration::ZERO)).await;
    assert_eq!(b.metrics().waiting, 2);
    let mut service = service.clone();
    let rejected = full(
        service
            .ready()
            .await
            .expect("ready")
            .call((4, Duration::ZERO))
            .await,
    );
    assert!(rejected.queue_full());
    assert_eq!(b.metrics().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn shrinking_keeps_calls_in_flight_and_growing_wakes_waiters() {
    let b = bulkhead(config(4).max_wait_duration(60 * SECOND));
    let backend = Backend::gated();
    let service = b.layer().layer(backend.clone());
    let mut running = Vec::new();
    for id in 0..4 {
        running.push(spawn_call(&service, (id, Duration::ZERO)).await);
    }
    b.resize(2).expect("valid size");
    assert_eq!(
        b.metrics().in_flight,
        4,
        "nothing in flight was interrupted"
    );
    assert_eq!(b.metrics().max_concurrent_calls, 2);
    backend.open_gate();
    for task in running {
        task.await.expect("task").expect("finished normally");
    }
    assert_eq!(
        b.metrics().available_permits,
        2,
        "two slots went out of circulation"
    );

    // Grow from 1 to 3 while two callers wait: both start at once.
    b.resize(1).expect("valid size");
    let backend = Backend::gated();
    let service = b.layer().layer(backend.clone());
    let _holder = spawn_call(&service, (10, Duration::ZERO)).await;
    let _w1 = spawn_call(&service, (11, Duration::ZERO)).await;
    let _w2 = spawn_call(&service, (12, Duration::ZERO)).await;
    assert_eq!(backend.arrivals(), [10]);
    b.resize(3).expect("valid size");
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    assert_eq!(backend.arrivals(), [10, 11, 12]);
    assert!(b.resize(0).is_err());
}

#[tokio::test(start_paused = true)]
async fn randomly_cancelled_calls_never_leak_a_permit() {
    let b = bulkhead(config(8).max_wait_duration(5 * SECOND).max_waiting(100_000));
    let service = b.layer().layer(Backend::default());
    // A fixed pseudo-random sequence: xorshift.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut tasks = VecDeque::new();
    for id in 0..5_000u64 {
        let takes = Duration::from_millis(next() % 50);
        let mut service = service.clone();
        tasks.push_back(tokio::spawn(async move {
            service.ready().await?.call((id, takes)).await
        }));
        if next() % 3 == 0 {
            // Cancel an earlier call, wherever it is: waiting, running or done.
            let index = (next() as usize) % tasks.len();
            if let Some(task) = tasks.get(index) {
                task.abort();
            }
        }
        if next() % 10 == 0 {
            tokio::time::advance(Duration::from_millis(next() % 20)).await;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let m = b.metrics();
    assert_eq!((m.in_flight, m.waiting, m.available_permits), (0, 0, 8));
    assert!(m.max_in_flight_observed <= 8);
}

#[tokio::test(start_paused = true)]
async fn a_permit_taken_by_poll_ready_comes_back_when_the_service_is_dropped() {
    let b = bulkhead(config(1));
    let mut service = b.layer().layer(Backend::default());
    service.ready().await.expect("ready");
    assert_eq!(b.metrics().available_permits, 0);
    drop(service);
    assert_eq!(b.metrics().available_permits, 1);
}

#[tokio::test(start_paused = true)]
async fn an_admitted_call_holds_its_permit_while_the_inner_service_gets_ready() {
    struct NeverReady;
    impl Service<Request> for NeverReady {
        type Response = u64;
        type Error = BoxError;
        type Future = std::future::Ready<Result<u64, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Pending
        }
        fn call(&mut self, _: Request) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let b = bulkhead(config(1));
    let mut service = b.layer().layer(NeverReady);
    {
        let mut ready = std::pin::pin!(service.ready());
        assert!(futures::poll!(&mut ready).is_pending());
        assert_eq!(
            b.metrics().available_permits,
            0,
            "the bulkhead decides before it asks the inner service (tower's ConcurrencyLimit order)"
        );
    }
    drop(service);
    assert_eq!(
        b.metrics().available_permits,
        1,
        "given back with the service"
    );
}

#[tokio::test(start_paused = true)]
async fn a_permit_comes_back_when_the_inner_service_fails_to_get_ready() {
    struct Broken;
    impl Service<Request> for Broken {
        type Response = u64;
        type Error = BoxError;
        type Future = std::future::Ready<Result<u64, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err("connection refused".into()))
        }
        fn call(&mut self, _: Request) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let b = bulkhead(config(1));
    let mut service = b.layer().layer(Broken);
    let error = service.ready().await.map(|_| ()).unwrap_err();
    assert_eq!(error.to_string(), "connection refused");
    assert_eq!(b.metrics().available_permits, 1);
    assert_eq!(b.metrics().in_flight, 0);
}

#[test]
fn config_rejects_invalid_values_naming_the_field() {
    let err = config(0).build().unwrap_err();
    assert_eq!(
        (err.component(), err.field()),
        ("bulkhead", "max_concurrent_calls")
    );
    let err = config(1).event_capacity(0).build().unwrap_err();
    assert_eq!(err.field(), "event_capacity");
}

#[tokio::test(start_paused = true)]
async fn a_retry_outside_the_bulkhead_does_not_retry_its_rejection() {
    use palisade::backoff::Backoff;
    use palisade::classify::{ClassifyExt, DefaultClassifier};
    use palisade::retry::{Retry, RetryConfig};
    let b = bulkhead(config(1));
    let retry = Retry::new(
        "backend",
        RetryConfig::builder()
            .no_budget()
            .backoff(Backoff::constant(SECOND).build().expect("valid"))
            .build()
            .expect("valid"),
    )
    .layer()
    .with_classifier(DefaultClassifier.pass_rejections());
    let service = tower::ServiceBuilder::new()
        .layer(retry.clone())
        .layer(b.layer())
        .service(Backend::default());
    let _holder = spawn_call(&service, (1, 10 * SECOND)).await;
    let mut service = service.clone();
    let started = tokio::time::Instant::now();
    full(
        service
            .ready()
            .await
            .expect("ready")
            .call((2, Duration::ZERO))
            .await,
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "returned at once, not retried"
    );
    assert_eq!(retry.retry().metrics().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_of_duration_max_waits_until_a_permit_is_free() {
    let b = bulkhead(config(1).max_wait_duration(Duration::MAX));
    let held = b.try_acquire().expect("free");
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.map(drop) }
    });
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    assert_eq!(b.metrics().waiting, 1, "still waiting a year later");
    drop(held);
    waiter.await.expect("no panic").expect("got the permit");
    let mut service = b.layer().layer(Backend::default());
    service.ready().await.expect("ready");
}
