//! The response cache, driven through its tower service with paused time.
//! Run with `cargo test --features cache --test cache`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::BoxError;
use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
use palisade::cache::{CacheConfig, CacheEventKind, ResponseCache};
use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker};
use palisade::fallback::FailureCause;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::{Layer, Service, ServiceExt};

const TTL: Duration = Duration::from_secs(30);
const STALENESS: Duration = Duration::from_secs(300);
const CALL_TIME: Duration = Duration::from_millis(100);

/// Answers `key * 10_000 + version` after `delay` (the version goes up with
/// every call) or fails while `fail` is set; counts calls and calls alive.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    delay: Duration,
}

impl Backend {
    fn new(delay: Duration) -> Self {
        Self {
            calls: Arc::default(),
            live: Arc::default(),
            fail: Arc::default(),
            delay,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_failing(&self, failing: bool) {
        self.fail.store(failing, Ordering::SeqCst);
    }
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<u64> for Backend {
    type Response = u64;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<u64, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: u64) -> Self::Future {
        let version = self.calls.fetch_add(1, Ordering::SeqCst) as u64;
        self.live.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(Arc::clone(&self.live));
        let (delay, fail) = (self.delay, self.fail.load(Ordering::SeqCst));
        Box::pin(async move {
            let _alive = alive;
            tokio::time::sleep(delay).await;
            if fail {
                Err(std::io::Error::other("backend down"))
            } else {
                Ok(key * 10_000 + version)
            }
        })
    }
}

fn cache(staleness: Duration) -> ResponseCache<u64, u64> {
    ResponseCache::new(
        "test",
        CacheConfig::builder()
            .ttl(TTL)
            .max_staleness(staleness)
            .build()
            .expect("valid config"),
    )
}

fn key(request: &u64) -> u64 {
    *request
}

async fn call<S>(service: &S, request: u64) -> Result<u64, BoxError>
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone,
{
    service.clone().oneshot(request).await
}

#[tokio::test(start_paused = true)]
async fn a_fresh_entry_answers_without_calling_the_service() {
    let backend = Backend::new(Duration::ZERO);
    let cache = cache(Duration::ZERO);
    let mut events = cache.subscribe();
    let service = cache.layer(key).layer(backend.clone());
    assert_eq!(call(&service, 1).await.unwrap(), 10_000);
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(
        call(&service, 1).await.unwrap(),
        10_000,
        "the stored response"
    );
    assert_eq!(backend.calls(), 1);
    let metrics = cache.metrics();
    assert_eq!((metrics.hits, metrics.misses, metrics.stored), (1, 1, 1));
    assert_eq!(
        events
            .drain()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>(),
        [
            CacheEventKind::Miss {
                stale_available: false
            },
            CacheEventKind::Stored,
            CacheEventKind::Hit
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_entry_answers_no_request_after_its_ttl() {
    let backend = Backend::new(Duration::ZERO);
    let cache = cache(STALENESS);
    let service = cache.layer(key).layer(backend.clone());
    assert_eq!(call(&service, 1).await.unwrap(), 10_000);
    tokio::time::advance(TTL).await;
    assert_eq!(
        call(&service, 1).await.unwrap(),
        10_001,
        "a new response from the service"
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_answers_a_failed_call_within_max_staleness() {
    let backend = Backend::new(Duration::ZERO);
    let cache = cache(STALENESS);
    let mut events = cache.subscribe();
    let service = cache.layer(key).layer(backend.clone());
    call(&service, 2).await.unwrap();
    backend.set_failing(true);
    tokio::time::advance(TTL + STALENESS - Duration::from_millis(1)).await;
    assert_eq!(call(&service, 2).await.unwrap(), 20_000, "the stale entry");
    assert_eq!(backend.calls(), 2, "the service was asked first");
    assert_eq!(cache.metrics().stale_served, 1);
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds[2..],
        [
            CacheEventKind::Miss {
                stale_available: true
            },
            CacheEventKind::StaleServed {
                cause: FailureCause::Failure
            }
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn beyond_max_staleness_the_failure_passes_through() {
    let backend = Backend::new(Duration::ZERO);
    let cache = cache(STALENESS);
    let service = cache.layer(key).layer(backend.clone());
    call(&service, 2).await.unwrap();
    backend.set_failing(true);
    tokio::time::advance(TTL + STALENESS).await;
    let error = call(&service, 2).await.unwrap_err();
    assert!(error.downcast_ref::<std::io::Error>().is_some(), "{error}");
    assert_eq!(cache.metrics().stale_served, 0);
}

#[tokio::test(start_paused = true)]
async fn without_max_staleness_an_expired_entry_never_answers() {
    let backend = Backend::new(Duration::ZERO);
    let cache = cache(Duration::ZERO);
    let service = cache.layer(key).layer(backend.clone());
    call(&service, 2).await.unwrap();
    backend.set_failing(true);
    tokio::time::advance(TTL).await;
    assert!(call(&service, 2).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn failures_are_never_stored() {
    let backend = Backend::new(Duration::ZERO);
    backend.set_failing(true);
    let cache = cache(STALENESS);
    let service = cache.layer(key).layer(backend.clone());
    assert!(call(&service, 3).await.is_err());
    backend.set_failing(false);
    assert_eq!(
        call(&service, 3).await.unwrap(),
        30_001,
        "the service was called again"
    );
    assert_eq!(cache.metrics().stored, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_answers_a_rejection_unless_turned_off() {
    let backend = Backend::new(Duration::ZERO);
    let breaker = CircuitBreaker::with_defaults("inner");
    for (stale_on_rejection, answered) in [(true, true), (false, false)] {
        breaker.transition_to_closed();
        let cache = ResponseCache::new(
            "test",
            CacheConfig::builder()
                .ttl(TTL)
                .max_staleness(STALENESS)
                .stale_on_rejection(stale_on_rejection)
                .build()
                .unwrap(),
        );
        let service = cache
            .layer(key)
            .layer(breaker.layer().layer(backend.clone()));
        let fresh = call(&service, 4).await.unwrap();
        breaker.transition_to_forced_open();
        tokio::time::advance(TTL).await;
        let result = call(&service, 4).await;
        if answered {
            assert_eq!(result.unwrap(), fresh);
        } else {
            let error = result.unwrap_err();
            assert!(error.downcast_ref::<BreakerOpen>().is_some(), "{error}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hit_reserves_nothing_downstream() {
    let backend = Backend::new(CALL_TIME);
    let bulkhead = Bulkhead::new(
        "downstream",
        BulkheadConfig::builder()
            .max_concurrent_calls(1)
            .build()
            .unwrap(),
    );
    let cache = cache(Duration::ZERO);
    let service = cache
        .layer(key)
        .layer(bulkhead.layer().layer(backend.clone()));
    call(&service, 1).await.unwrap();
    // Key 2 takes the bulkhead's only permit ...
    let mut slow = Box::pin(call(&service, 2));
    assert!(futures::poll!(slow.as_mut()).is_pending());
    assert_eq!(bulkhead.metrics().in_flight, 1);
    // ... and key 1 is still answered: a hit does not ask the bulkhead.
    let mut readied = service.clone();
    readied.ready().await.unwrap();
    assert_eq!(readied.call(1).await.unwrap(), 10_000);
    // A miss meanwhile meets the full bulkhead.
    let error = call(&service, 3).await.unwrap_err();
    assert!(error.downcast_ref::<BulkheadFull>().is_some(), "{error}");
    assert_eq!(slow.await.unwrap(), 20_001);
    assert_eq!(bulkhead.metrics().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_leaves_nothing_behind_and_spares_the_other_callers() {
    let backend = Backend::new(CALL_TIME);
    let bulkhead = Bulkhead::new(
        "downstream",
        BulkheadConfig::builder()
            .max_concurrent_calls(4)
            .max_wait_duration(Duration::from_secs(10))
            .max_waiting(1000)
            .build()
            .unwrap(),
    );
    let cache = ResponseCache::new(
        "storm",
        CacheConfig::builder()
            .ttl(Duration::from_millis(150))
            .max_staleness(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let service = cache
        .layer(key)
        .layer(bulkhead.layer().layer(backend.clone()));
    let mut rng = StdRng::seed_from_u64(15);
    let mut kept = Vec::new();
    let mut cancelled = Vec::new();
    for i in 0..600 {
        let key = rng.random_range(0..10u64);
        let start = Duration::from_millis(rng.random_range(0..2000));
        let service = service.clone();
        if i % 4 == 0 {
            kept.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                (key, call(&service, key).await)
            }));
        } else {
            let patience = Duration::from_millis(rng.random_range(0..300));
            cancelled.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                let _ = tokio::time::timeout(patience, call(&service, key)).await;
            }));
        }
    }
    for task in cancelled {
        task.await.unwrap();
    }
    for task in kept {
        let (key, result) = task.await.unwrap();
        let response = result.expect("a kept caller is answered");
        assert_eq!(
            response / 10_000,
            key,
            "key {key}'s response, got {response}"
        );
    }
    assert_eq!(
        backend.live.load(Ordering::SeqCst),
        0,
        "no inner call left running"
    );
    let downstream = bulkhead.metrics();
    assert_eq!(
        (downstream.in_flight, downstream.waiting),
        (0, 0),
        "every permit came back"
    );
    let metrics = cache.metrics();
    assert!(metrics.hits > 0 && metrics.misses > 0, "{metrics:?}");
}

#[test]
fn the_builder_names_the_field_it_rejects() {
    let zero_ttl = CacheConfig::builder()
        .ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(zero_ttl.field(), "ttl");
    let no_entries = CacheConfig::builder().max_entries(0).build().unwrap_err();
    assert_eq!(no_entries.field(), "max_entries");
    let forever = CacheConfig::builder()
        .max_staleness(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(forever.field(), "max_staleness");
    let huge_ttl = CacheConfig::builder()
        .ttl(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(huge_ttl.field(), "ttl");
}
