//! The keyed rate limiter, alone and through its tower layer, with paused
//! time: each key's own limit and refill, removal of idle keys, the bound on
//! keys, waiting and cancellation.

use std::time::Duration;

use palisade::error::Rejected;
use palisade::rate_limit::{
    KeyedRateLimiter, KeyedRejection, RateLimited, RateLimiterConfig, RateLimiterEventKind,
    TooManyKeys,
};
use palisade::{BoxError, find_cause};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// `limit` calls per `period` for each key.
fn config(limit: u32, period: Duration) -> RateLimiterConfig {
    RateLimiterConfig::builder()
        .limit_for_period(limit)
        .limit_refresh_period(period)
        .build()
        .expect("valid config")
}

fn rate_limited(result: Result<(), KeyedRejection>) -> RateLimited {
    match result {
        Err(KeyedRejection::RateLimited(error)) => error,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

fn too_many_keys(result: Result<(), KeyedRejection>) -> TooManyKeys {
    match result {
        Err(KeyedRejection::TooManyKeys(error)) => error,
        other => panic!("expected TooManyKeys, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn each_key_has_a_limit_of_its_own() {
    let limiter = KeyedRateLimiter::new("per-user", config(2, SECOND));
    limiter.try_acquire(&"alice").expect("first of alice's two");
    limiter
        .try_acquire(&"alice")
        .expect("second of alice's two");
    let rejected = rate_limited(limiter.try_acquire(&"alice"));
    assert_eq!(rejected.limiter(), "per-user");
    assert_eq!(rejected.retry_after(), 500 * MS, "one permit every 500 ms");

    limiter
        .try_acquire(&"bob")
        .expect("bob is not limited by alice");
    limiter.try_acquire(&"bob").expect("bob's second");
    assert!(limiter.try_acquire(&"bob").is_err());

    let metrics = limiter.metrics();
    assert_eq!(metrics.permitted, 4);
    assert_eq!(metrics.rejected, 2);
    assert_eq!(metrics.keys, 2);
}

#[tokio::test(start_paused = true)]
async fn a_key_gets_its_permits_back_at_the_configured_rate() {
    let limiter = KeyedRateLimiter::new("refill", config(2, SECOND));
    limiter.try_acquire(&1u64).expect("first");
    limiter.try_acquire(&1u64).expect("second");
    assert!(limiter.try_acquire(&1u64).is_err());

    tokio::time::advance(499 * MS).await;
    assert_eq!(rate_limited(limiter.try_acquire(&1u64)).retry_after(), MS);
    tokio::time::advance(MS).await;
    limiter
        .try_acquire(&1u64)
        .expect("one permit back after 500 ms");
    assert!(limiter.try_acquire(&1u64).is_err(), "only one");

    tokio::time::advance(SECOND).await;
    limiter
        .try_acquire(&1u64)
        .expect("the full burst is back after a period");
    limiter.try_acquire(&1u64).expect("both permits");
    assert!(limiter.try_acquire(&1u64).is_err());
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_removed_on_the_cleanup_cadence_and_busy_ones_stay() {
    let limiter = KeyedRateLimiter::new("cleanup", config(1, SECOND))
        .with_idle_cleanup_interval(10 * SECOND)
        .expect("valid interval");
    let mut events = limiter.subscribe();
    for user in 0..100u32 {
        limiter
            .try_acquire(&user)
            .expect("a new key has its permit");
    }
    assert_eq!(limiter.keys(), 100);

    // Before the interval is over nothing is removed, idle or not.
    tokio::time::advance(9 * SECOND).await;
    limiter.try_acquire(&1000).expect("a new key");
    assert_eq!(limiter.keys(), 101);

    // User 1000 used its permit 1 s before the cleanup: not idle yet.
    tokio::time::advance(SECOND + MS).await;
    limiter.try_acquire(&0).expect("user 0's permit is back");
    assert_eq!(
        limiter.keys(),
        2,
        "users 0 to 99 were idle and are gone (user 0 is back, with its new call); user 1000 stays"
    );
    let metrics = limiter.metrics();
    assert_eq!(metrics.evicted_keys, 100);
    let evictions: Vec<_> = events
        .drain()
        .into_iter()
        .filter_map(|event| match event.kind {
            RateLimiterEventKind::IdleKeysEvicted { evicted, keys } => Some((evicted, keys)),
            _ => None,
        })
        .collect();
    assert_eq!(evictions, [(100, 1)]);

    // A removed key starts again with its full burst, as it would have.
    limiter.try_acquire(&42).expect("user 42 starts afresh");
    // User 0's state was kept: its permit was just used.
    assert!(limiter.try_acquire(&0).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_new_key_beyond_the_bound_is_rejected_and_known_keys_are_unaffected() {
    // One permit per 100 s: a used key stays busy (not idle) for 100 s.
    let limiter = KeyedRateLimiter::new("bounded", config(1, 100 * SECOND))
        .with_max_keys(2)
        .expect("valid bound")
        .with_idle_cleanup_interval(80 * SECOND)
        .expect("valid interval");
    limiter.try_acquire(&"a").expect("first key");
    limiter.try_acquire(&"b").expect("second key");

    let rejected = too_many_keys(limiter.try_acquire(&"c"));
    assert_eq!(rejected.max_keys(), 2);
    assert_eq!(rejected.limiter(), "bounded");
    let marker = find_cause::<Rejected>(&rejected).expect("the core marker");
    assert_eq!(marker.layer(), "rate_limiter");
    assert_eq!(limiter.keys(), 2, "the rejected key holds no state");

    // Known keys keep their own limits.
    assert!(matches!(
        limiter.try_acquire(&"a"),
        Err(KeyedRejection::RateLimited(_))
    ));
    assert_eq!(limiter.metrics().rejected_too_many_keys, 1);
    assert_eq!(limiter.metrics().rejected, 1);

    // Once "a" and "b" are idle, a new key evicts them instead of failing
    // (a forced cleanup runs at most once per eighth of the interval).
    tokio::time::advance(201 * SECOND).await;
    limiter.try_acquire(&"c").expect("idle keys make room");
    assert_eq!(limiter.keys(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_limiter_rescans_for_idle_keys_at_most_once_per_eighth_of_the_interval() {
    let limiter = KeyedRateLimiter::new("rescan", config(1, SECOND))
        .with_max_keys(1)
        .expect("valid bound")
        .with_idle_cleanup_interval(80 * SECOND)
        .expect("valid interval");
    limiter.try_acquire(&1).expect("the one key");
    // Idle: its permit has been back for a replenish interval.
    tokio::time::advance(3 * SECOND).await;
    // No cleanup has run yet: the full limiter makes room.
    limiter.try_acquire(&2).expect("idle key 1 is removed");
    tokio::time::advance(3 * SECOND).await;
    // Key 2 is idle too, but the last scan was 3 s ago (< 10 s).
    too_many_keys(limiter.try_acquire(&3));
    tokio::time::advance(7 * SECOND).await;
    limiter
        .try_acquire(&3)
        .expect("10 s after the last scan, another");
    assert_eq!(limiter.metrics().evicted_keys, 2);
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_for_the_keys_next_permit_and_a_dropped_wait_takes_nothing()
-> Result<(), BoxError> {
    let limiter = KeyedRateLimiter::new(
        "waits",
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(SECOND)
            .max_wait_duration(2 * SECOND)
            .build()?,
    );
    limiter.acquire(&"k").await?;
    let started = tokio::time::Instant::now();
    limiter.acquire(&"k").await?;
    assert_eq!(started.elapsed(), SECOND);
    assert_eq!(limiter.metrics().permitted_after_waiting, 1);

    // Many callers give up while waiting: none stays counted.
    let mut waits = Vec::new();
    for _ in 0..50 {
        let limiter = limiter.clone();
        waits.push(tokio::spawn(async move { limiter.acquire(&"k").await }));
    }
    tokio::time::sleep(100 * MS).await;
    assert!(limiter.metrics().waiting > 0);
    for wait in &waits {
        wait.abort();
    }
    for wait in waits {
        let _ = wait.await;
    }
    assert_eq!(limiter.metrics().waiting, 0);

    // A wait longer than max_wait_duration is refused at once.
    let limiter = KeyedRateLimiter::new(
        "too-long",
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(10 * SECOND)
            .max_wait_duration(SECOND)
            .build()?,
    );
    limiter.acquire(&"k").await?;
    let started = tokio::time::Instant::now();
    let refused = rate_limited(limiter.acquire(&"k").await);
    assert_eq!(refused.retry_after(), 10 * SECOND);
    assert_eq!(started.elapsed(), Duration::ZERO);
    Ok(())
}

#[derive(Debug)]
struct Request {
    user: u64,
}

#[tokio::test(start_paused = true)]
async fn the_layer_limits_each_requests_key_and_fails_with_the_usual_errors() -> Result<(), BoxError>
{
    let limiter = KeyedRateLimiter::new("gateway", config(1, SECOND))
        .with_max_keys(2)
        .expect("valid bound");
    let layer = limiter.layer(|request: &Request| request.user);
    let mut gateway = layer.layer(tower::service_fn(|request: Request| async move {
        Ok::<_, std::io::Error>(request.user)
    }));

    assert_eq!(gateway.ready().await?.call(Request { user: 1 }).await?, 1);
    assert_eq!(gateway.ready().await?.call(Request { user: 2 }).await?, 2);
    let error = gateway
        .ready()
        .await?
        .call(Request { user: 1 })
        .await
        .expect_err("user 1 is limited");
    let limited = error.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.retry_after(), SECOND);
    assert!(find_cause::<Rejected>(error.as_ref()).is_some());

    let error = gateway
        .ready()
        .await?
        .call(Request { user: 3 })
        .await
        .expect_err("a third key is over the bound");
    assert!(error.downcast_ref::<TooManyKeys>().is_some());

    tokio::time::advance(SECOND).await;
    assert_eq!(gateway.ready().await?.call(Request { user: 1 }).await?, 1);
    Ok(())
}

#[test]
fn bounds_are_validated() {
    let limiter = KeyedRateLimiter::<u64>::new("checked", RateLimiterConfig::default());
    let error = limiter.clone().with_max_keys(0).expect_err("zero keys");
    assert_eq!(error.field(), "max_keys");
    let error = limiter
        .with_idle_cleanup_interval(Duration::ZERO)
        .expect_err("zero interval");
    assert_eq!(error.field(), "idle_cleanup_interval");
}
