//! The rate limiter: permits per period on governor's GCRA, tokio's clock.

mod support;

use std::time::Duration;

use palisade::BoxError;
use palisade::rate_limit::{
    RateLimited, RateLimiter, RateLimiterConfig, RateLimiterConfigBuilder, RateLimiterEventKind,
};
use support::{Backend, Reply};
use tower::{Layer, Service, ServiceExt};

fn limiter(builder: RateLimiterConfigBuilder) -> RateLimiter {
    RateLimiter::new("sms", builder.build().unwrap())
}

fn per_second(limit: u32) -> RateLimiterConfigBuilder {
    RateLimiterConfig::builder()
        .limit_for_period(limit)
        .limit_refresh_period(Duration::from_secs(1))
}

fn limited(result: Result<&'static str, BoxError>) -> RateLimited {
    let error = result.expect_err("expected a rejection");
    error
        .downcast_ref::<RateLimited>()
        .cloned()
        .unwrap_or_else(|| panic!("expected RateLimited, got {error}"))
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_the_limit_passes_then_calls_are_rejected_with_retry_after() {
    let limiter = limiter(per_second(4));
    let backend = Backend::default();
    let mut service = limiter.layer().layer(backend.clone());
    for _ in 0..4 {
        assert_eq!(
            service
                .ready()
                .await
                .unwrap()
                .call(Reply::Ok)
                .await
                .unwrap(),
            "ok"
        );
    }
    let rejected = limited(service.ready().await.unwrap().call(Reply::Ok).await);
    assert_eq!(rejected.limiter(), "sms");
    assert_eq!(rejected.retry_after(), Duration::from_millis(250));
    assert_eq!(
        backend.calls(),
        4,
        "the rejected call never reached the service"
    );
    let metrics = limiter.metrics();
    assert_eq!((metrics.permitted, metrics.rejected), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn permits_come_back_at_the_configured_rate() {
    let limiter = limiter(per_second(4));
    for _ in 0..4 {
        limiter.try_acquire().unwrap();
    }
    assert!(limiter.try_acquire().is_err());
    tokio::time::advance(Duration::from_millis(249)).await;
    assert!(
        limiter.try_acquire().is_err(),
        "not before a quarter second"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    limiter.try_acquire().expect("one permit per 250 ms");
    assert!(limiter.try_acquire().is_err());
    // Over ten seconds exactly 40 more permits are handed out.
    let mut permitted = 0;
    for _ in 0..1000 {
        tokio::time::advance(Duration::from_millis(10)).await;
        while limiter.try_acquire().is_ok() {
            permitted += 1;
        }
    }
    assert_eq!(permitted, 40);
}

#[tokio::test(start_paused = true)]
async fn a_caller_waits_for_a_permit_within_max_wait() {
    let limiter = limiter(per_second(2).max_wait_duration(Duration::from_secs(1)));
    let backend = Backend::default();
    let mut service = limiter.layer().layer(backend.clone());
    for _ in 0..2 {
        service
            .ready()
            .await
            .unwrap()
            .call(Reply::Ok)
            .await
            .unwrap();
    }
    let started = tokio::time::Instant::now();
    assert_eq!(
        service
            .ready()
            .await
            .unwrap()
            .call(Reply::Ok)
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(500),
        "waited for the next permit"
    );
    let metrics = limiter.metrics();
    assert_eq!(metrics.permitted, 3);
    assert_eq!(metrics.permitted_after_waiting, 1);
    assert_eq!(metrics.waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_permit_beyond_max_wait_is_rejected_at_once() {
    let limiter = limiter(
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(Duration::from_secs(10))
            .max_wait_duration(Duration::from_secs(1)),
    );
    limiter.try_acquire().unwrap();
    let started = tokio::time::Instant::now();
    let rejected = limiter.acquire().await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "rejected without waiting in vain"
    );
    assert_eq!(rejected.retry_after(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn waiters_racing_for_permits_each_get_one_or_are_rejected_at_their_deadline() {
    let limiter = limiter(per_second(1).max_wait_duration(Duration::from_millis(2500)));
    limiter.try_acquire().unwrap();
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let limiter = limiter.clone();
        waiters.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            (limiter.acquire().await.is_ok(), started.elapsed())
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(limiter.metrics().waiting, 4);
    let mut granted = Vec::new();
    let mut rejected = 0;
    for waiter in waiters {
        match waiter.await.unwrap() {
            (true, waited) => granted.push(waited),
            (false, waited) => {
                assert!(waited <= Duration::from_millis(2500));
                rejected += 1;
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        vec![Duration::from_secs(1), Duration::from_secs(2)],
        "one permit per second within the 2.5 s wait"
    );
    assert_eq!(rejected, 2);
    assert_eq!(limiter.metrics().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_is_no_longer_counted() {
    let limiter = limiter(per_second(1).max_wait_duration(Duration::from_secs(5)));
    limiter.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire().await }
    });
    tokio::task::yield_now().await;
    assert_eq!(limiter.metrics().waiting, 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(limiter.metrics().waiting, 0);

    // The same through the service: drop it while it waits in poll_ready.
    let mut service = limiter.layer().layer(Backend::default());
    let ready = futures::FutureExt::now_or_never(service.ready());
    assert!(ready.is_none(), "waiting for a permit");
    assert_eq!(limiter.metrics().waiting, 1);
    drop(service);
    assert_eq!(limiter.metrics().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_taken_before_the_inner_service_is_asked_to_be_ready() {
    let limiter = limiter(per_second(1));
    let readiness = NotReady::default();
    let mut service = limiter.layer().layer(readiness.clone());
    let ready = futures::FutureExt::now_or_never(service.ready());
    assert!(ready.is_none(), "the inner service is not ready");
    assert_eq!(
        limiter.metrics().permitted,
        1,
        "the limiter decides first (tower's ConcurrencyLimit order)"
    );
    readiness.0.store(true, std::sync::atomic::Ordering::SeqCst);
    service.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(
        limiter.metrics().permitted,
        1,
        "one permit for the one call"
    );
    assert!(limiter.try_acquire().is_err());
}

/// A service that is ready only once the test says so.
#[derive(Clone, Default)]
struct NotReady(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Service<()> for NotReady {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<(), std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn clones_share_permits_and_events_are_published() {
    let limiter = limiter(per_second(2));
    let mut events = limiter.subscribe();
    let clone = limiter.clone();
    limiter.try_acquire().unwrap();
    clone.try_acquire().unwrap();
    assert!(limiter.try_acquire().is_err());
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            RateLimiterEventKind::Acquired {
                waited: Duration::ZERO
            },
            RateLimiterEventKind::Acquired {
                waited: Duration::ZERO
            },
            RateLimiterEventKind::Rejected {
                retry_after: Duration::from_millis(500)
            },
        ]
    );
}

#[test]
fn config_rejects_invalid_values_naming_the_field() {
    let error = RateLimiterConfig::builder()
        .limit_for_period(0)
        .build()
        .unwrap_err();
    assert_eq!(
        (error.component(), error.field()),
        ("rate_limiter", "limit_for_period")
    );
    let error = RateLimiterConfig::builder()
        .limit_refresh_period(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "limit_refresh_period");
    let error = RateLimiterConfig::builder()
        .limit_for_period(10)
        .limit_refresh_period(Duration::from_nanos(5))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "limit_refresh_period");
    assert!(
        error.problem().contains("one nanosecond per permit"),
        "{error}"
    );
    let error = RateLimiterConfig::builder()
        .event_capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "event_capacity");
}

#[test]
fn a_refresh_period_governor_cannot_count_is_rejected_naming_the_field() {
    use palisade::rate_limit::MAX_LIMIT_REFRESH_PERIOD;
    for limit in [1, 50] {
        let error = RateLimiterConfig::builder()
            .limit_for_period(limit)
            .limit_refresh_period(Duration::MAX)
            .build()
            .expect_err("Duration::MAX is too long");
        assert_eq!(
            (error.component(), error.field()),
            ("rate_limiter", "limit_refresh_period")
        );
        let error = RateLimiterConfig::builder()
            .limit_refresh_period(MAX_LIMIT_REFRESH_PERIOD + Duration::from_nanos(1))
            .build()
            .expect_err("just over the limit");
        assert_eq!(error.field(), "limit_refresh_period");
    }
}

#[tokio::test(start_paused = true)]
async fn the_longest_refresh_period_builds_a_working_limiter() {
    use palisade::rate_limit::MAX_LIMIT_REFRESH_PERIOD;
    for limit in [1, u32::MAX] {
        let limiter = limiter(
            RateLimiterConfig::builder()
                .limit_for_period(limit)
                .limit_refresh_period(MAX_LIMIT_REFRESH_PERIOD)
                .max_wait_duration(Duration::MAX),
        );
        assert!(limiter.try_acquire().is_ok());
        if limit == 1 {
            let rejected = limiter.try_acquire().expect_err("one permit per century");
            assert!(rejected.retry_after() > Duration::from_secs(86_400 * 365 * 99));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unbounded_max_wait_waits_as_long_as_the_permit_takes() {
    let limiter = limiter(per_second(1).max_wait_duration(Duration::MAX));
    let backend = Backend::default();
    let mut service = limiter.layer().layer(backend.clone());
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        let response = service.ready().await.expect("ready").call(Reply::Ok).await;
        assert_eq!(response.expect("waited for its permit"), "ok");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    limiter.acquire().await.expect("acquire waits too");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(limiter.metrics().permitted_after_waiting, 3);
    assert_eq!(limiter.metrics().waiting, 0);
}
