//! The adaptive concurrency limit, driven through its tower service with
//! paused time against a simulated dependency of fixed capacity.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::adaptive_concurrency::{
    AdaptiveConcurrency, AdaptiveConcurrencyConfig, AdaptiveConcurrencyEventKind, Aimd,
    ConcurrencyLimitExceeded, Vegas,
};
use palisade::error::find_rejection;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// A dependency that serves `capacity` calls at once, each taking the
/// current service time, and queues the others in FIFO order.
#[derive(Clone)]
struct Dependency {
    workers: Arc<Semaphore>,
    service_time_ms: Arc<AtomicU64>,
    alive: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Dependency {
    fn new(capacity: usize, service_time: Duration) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(capacity)),
            service_time_ms: Arc::new(AtomicU64::new(service_time.as_millis() as u64)),
            alive: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn set_service_time(&self, service_time: Duration) {
        self.service_time_ms
            .store(service_time.as_millis() as u64, Ordering::SeqCst);
    }

    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + use<>
    {
        let dependency = self.clone();
        service_fn(move |id: u32| {
            let dependency = dependency.clone();
            dependency.alive.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(Arc::clone(&dependency.alive));
            async move {
                let _worker = dependency.workers.acquire().await?;
                let takes = dependency.service_time_ms.load(Ordering::SeqCst);
                tokio::time::sleep(MS * takes as u32).await;
                drop(alive);
                Ok::<_, BoxError>(id)
            }
        })
    }
}

/// Calls `per_second` times a second (one call every `1 / per_second`,
/// each on its own task) until `until`; rejected calls are not retried.
fn load<S>(service: S, per_second: u32, until: Instant) -> tokio::task::JoinHandle<()>
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(async move {
        let mut arrivals = tokio::time::interval(Duration::from_secs(1) / per_second);
        let mut calls = tokio::task::JoinSet::new();
        let mut id = 0;
        while Instant::now() < until {
            arrivals.tick().await;
            let mut service = service.clone();
            id += 1;
            calls.spawn(async move {
                if let Err(error) = async { service.ready().await?.call(id).await }.await {
                    assert!(error.is::<ConcurrencyLimitExceeded>(), "{error}");
                }
            });
            while calls.try_join_next().is_some() {}
        }
        while calls.join_next().await.is_some() {}
    })
}

/// The limit every 100 ms from now until `until`.
async fn watch(limit: &AdaptiveConcurrency, until: Instant) -> Vec<usize> {
    let mut limits = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(MS * 100).await;
        limits.push(limit.limit());
    }
    limits
}

fn mean(values: &[usize]) -> f64 {
    values.iter().sum::<usize>() as f64 / values.len() as f64
}

const CAPACITY: usize = 20;
/// Probes run at this limit: below the capacity, so they queue nothing.
const MIN_LIMIT: usize = 4;

#[tokio::test(start_paused = true)]
async fn vegas_converges_near_capacity_and_backs_off_when_latency_rises() {
    let dependency = Dependency::new(CAPACITY, MS * 100);
    let limit = AdaptiveConcurrency::new(
        "dependency",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Vegas::default())
            .initial_limit(5)
            .min_limit(MIN_LIMIT)
            .max_limit(500)
            .build()
            .unwrap(),
    );
    let service = limit.layer().layer(dependency.service());
    let start = Instant::now();
    let load = load(service, 500, start + MS * 60_000);

    let warming = watch(&limit, start + MS * 10_000).await;
    let settled = watch(&limit, start + MS * 30_000).await;
    // Little's law: 20 calls at once, each 100 ms, serve 200 calls a second;
    // Vegas keeps alpha to beta times log10(limit) (about 4 to 8) queued.
    // Probes of the no-load latency drop the limit to min_limit for a while.
    let (probing, settled): (Vec<usize>, Vec<usize>) =
        settled.into_iter().partition(|limit| *limit == MIN_LIMIT);
    assert!(!probing.is_empty(), "the no-load latency was probed");
    let settled_mean = mean(&settled);
    assert!(
        settled
            .iter()
            .all(|limit| (CAPACITY..=3 * CAPACITY / 2).contains(limit)),
        "settled near capacity: {settled:?} (after {warming:?})"
    );
    dependency.set_service_time(MS * 200);
    let slower = watch(&limit, start + MS * 60_000).await;
    // Vegas reads the longer latency as a queue and takes log10(limit)
    // off per window, until a probe measures the new no-load latency.
    let before_probe: Vec<usize> = slower
        .iter()
        .copied()
        .take_while(|limit| *limit != MIN_LIMIT)
        .collect();
    let lowest = *before_probe.iter().min().unwrap();
    assert!(
        before_probe.windows(2).all(|pair| pair[1] <= pair[0])
            && lowest as f64 <= 0.8 * settled_mean,
        "backed off when latency doubled: {slower:?}"
    );
    let resettled: Vec<usize> = slower[slower.len() - 100..]
        .iter()
        .copied()
        .filter(|limit| *limit != MIN_LIMIT)
        .collect();
    assert!(
        resettled
            .iter()
            .all(|limit| (CAPACITY..=3 * CAPACITY / 2).contains(limit)),
        "settled near capacity again once a probe measured the new latency: {slower:?}"
    );
    load.await.unwrap();
    assert_eq!(limit.metrics().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn aimd_converges_under_its_latency_threshold_and_backs_off_when_latency_rises() {
    let dependency = Dependency::new(CAPACITY, MS * 100);
    let limit = AdaptiveConcurrency::new(
        "dependency",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Aimd::new(MS * 130))
            .initial_limit(5)
            .min_limit(2)
            .build()
            .unwrap(),
    );
    let service = limit.layer().layer(dependency.service());
    let start = Instant::now();
    let load = load(service, 500, start + MS * 30_000);

    watch(&limit, start + MS * 10_000).await;
    let settled = watch(&limit, start + MS * 20_000).await;
    // Under 130 ms a call waits behind at most 30 % of the capacity.
    let settled_mean = mean(&settled);
    assert!(
        (0.8 * CAPACITY as f64..=1.4 * CAPACITY as f64).contains(&settled_mean),
        "settled near capacity: mean {settled_mean}, {settled:?}"
    );

    dependency.set_service_time(MS * 200);
    let slower = watch(&limit, start + MS * 30_000).await;
    assert!(
        slower.windows(2).all(|pair| pair[1] <= pair[0]) && slower[slower.len() - 1] <= 4,
        "every call is over the threshold now: the limit only falls, to near min_limit, {slower:?}"
    );
    load.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_call_over_the_limit_is_a_rejection_that_never_reaches_the_service() {
    let dependency = Dependency::new(1, MS * 100);
    let limit = AdaptiveConcurrency::new(
        "one",
        AdaptiveConcurrencyConfig::builder()
            .initial_limit(1)
            .build()
            .unwrap(),
    );
    let mut events = limit.subscribe();
    let mut first = limit.layer().layer(dependency.service());
    let mut second = first.clone();
    let running = first.ready().await.unwrap().call(1);
    let error = second.ready().await.unwrap().call(2).await.unwrap_err();
    let exceeded = error.downcast_ref::<ConcurrencyLimitExceeded>().unwrap();
    assert_eq!((exceeded.name(), exceeded.limit()), ("one", 1));
    let marker = find_rejection(&*error).expect("the core marker");
    assert_eq!(
        (marker.layer(), marker.name()),
        ("adaptive_concurrency", "one")
    );
    assert_eq!(
        dependency.alive.load(Ordering::SeqCst),
        1,
        "only the first call"
    );
    assert_eq!(running.await.unwrap(), 1);
    let metrics = limit.metrics();
    assert_eq!(
        (metrics.rejected, metrics.samples, metrics.in_flight),
        (1, 1, 0)
    );
    assert_eq!(
        events.try_recv().unwrap().kind,
        AdaptiveConcurrencyEventKind::Rejected { limit: 1 }
    );
}

#[tokio::test(start_paused = true)]
async fn failures_shrink_the_limit_and_report_the_change() {
    let limit = AdaptiveConcurrency::new(
        "failing",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Aimd::new(MS * 100).backoff_ratio(0.5))
            .initial_limit(8)
            .window_samples(1)
            .build()
            .unwrap(),
    );
    let mut events = limit.subscribe();
    let mut service = limit.layer().layer(service_fn(|_: u32| async {
        Err::<u32, BoxError>("down".into())
    }));
    assert!(service.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(limit.limit(), 4);
    assert_eq!(limit.metrics().failures, 1);
    assert_eq!(
        events.try_recv().unwrap().kind,
        AdaptiveConcurrencyEventKind::LimitChanged { from: 8, to: 4 }
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_samples() {
    use palisade::classify::{ClassifyExt, DefaultClassifier};
    let limit = AdaptiveConcurrency::new(
        "ignoring",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Aimd::new(MS * 100))
            .initial_limit(8)
            .build()
            .unwrap(),
    );
    let classifier = DefaultClassifier.ignore_errors(|_: &BoxError| true);
    let mut service = limit
        .layer()
        .with_classifier(classifier)
        .layer(service_fn(|_: u32| async {
            Err::<u32, BoxError>("not found".into())
        }));
    assert!(service.ready().await.unwrap().call(1).await.is_err());
    let metrics = limit.metrics();
    assert_eq!(
        (metrics.limit, metrics.samples, metrics.in_flight),
        (8, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_gives_every_slot_back_without_samples() {
    let dependency = Dependency::new(4, MS * 50);
    let limit = AdaptiveConcurrency::new(
        "storm",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Aimd::new(MS * 10_000))
            .initial_limit(16)
            .max_limit(64)
            .build()
            .unwrap(),
    );
    let service = limit.layer().layer(dependency.service());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut tasks = Vec::new();
    for id in 0..500 {
        let mut service = service.clone();
        let drop_after = MS * rng.random_range(0..400);
        tasks.push(tokio::spawn(async move {
            // Calls again while rejected, until it succeeds or is dropped.
            let call = async move {
                loop {
                    match service.ready().await?.call(id).await {
                        Err(error) if error.is::<ConcurrencyLimitExceeded>() => {
                            tokio::time::sleep(MS).await;
                        }
                        other => return other,
                    }
                }
            };
            tokio::time::timeout(drop_after, call).await
        }));
    }
    let mut succeeded = 0;
    let mut dropped = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(result) => {
                result.unwrap();
                succeeded += 1;
            }
            Err(_) => dropped += 1,
        }
    }
    assert!(
        dropped > 100 && succeeded > 10,
        "{dropped} dropped, {succeeded} succeeded"
    );
    let metrics = limit.metrics();
    assert_eq!(metrics.in_flight, 0, "every slot came back");
    assert_eq!(dependency.alive.load(Ordering::SeqCst), 0);
    assert_eq!(metrics.samples, succeeded, "a dropped call is not a sample");
    assert!(
        metrics.cancelled > 0 && metrics.cancelled <= dropped,
        "{metrics:?}"
    );
}

#[test]
fn the_builder_names_the_field_that_breaks_its_rule() {
    let build = |b: palisade::adaptive_concurrency::AdaptiveConcurrencyConfigBuilder| {
        b.build().unwrap_err().field()
    };
    let b = AdaptiveConcurrencyConfig::builder;
    assert_eq!(build(b().min_limit(0)), "min_limit");
    assert_eq!(build(b().min_limit(5).max_limit(4)), "max_limit");
    assert_eq!(build(b().initial_limit(2000)), "initial_limit");
    assert_eq!(build(b().smoothing(0.0)), "smoothing");
    assert_eq!(build(b().smoothing(f64::NAN)), "smoothing");
    assert_eq!(build(b().algorithm(Aimd::new(Duration::ZERO))), "algorithm");
    assert_eq!(
        build(b().algorithm(Aimd::new(MS).backoff_ratio(1.0))),
        "algorithm"
    );
    assert_eq!(build(b().algorithm(Vegas::new().alpha(7.0))), "algorithm");
    assert_eq!(
        build(b().algorithm(Vegas::new().probe_multiplier(0))),
        "algorithm"
    );
    assert_eq!(build(b().event_capacity(0)), "event_capacity");
}
