//! Admission order across stages: a layer decides its own admission before
//! it asks the layers inside it to reserve anything, and a rejection leaves
//! nothing reserved downstream (issue 12, defect 1).

mod support;

use std::time::Duration;

use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
use palisade::pipeline::{Pipeline, PipelineError};
use palisade::rate_limit::{RateLimited, RateLimiter, RateLimiterConfig};
use support::{Backend, Reply};
use tower::{Layer, Service, ServiceExt};

fn bulkhead_of_one() -> Bulkhead {
    Bulkhead::new(
        "test",
        BulkheadConfig::builder()
            .max_concurrent_calls(1)
            .build()
            .expect("valid bulkhead"),
    )
}

/// One permit a minute.
fn one_per_minute() -> RateLimiter {
    RateLimiter::new(
        "test",
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(Duration::from_secs(60))
            .build()
            .expect("valid limiter"),
    )
}

fn rejected_with<E: std::error::Error + 'static>(error: &PipelineError) -> bool {
    error
        .rejection()
        .is_some_and(|rejection| rejection.downcast_ref::<E>().is_some())
}

#[tokio::test(start_paused = true)]
async fn a_rate_limiter_rejection_leaves_no_bulkhead_permit_reserved() {
    let bulkhead = bulkhead_of_one();
    let limiter = one_per_minute();
    let pipeline = Pipeline::builder("orders")
        .rate_limiter(limiter.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .expect("valid pipeline");
    let backend = Backend::default();
    let mut first = pipeline.layer(backend.clone());
    let mut second = pipeline.layer(backend.clone());
    first
        .ready()
        .await
        .expect("ready")
        .call(Reply::Ok)
        .await
        .expect("the limiter's only permit");

    let error = second
        .ready()
        .await
        .expect("ready")
        .call(Reply::Ok)
        .await
        .expect_err("no permit left");
    assert!(rejected_with::<RateLimited>(&error), "{error}");
    assert_eq!(
        bulkhead.metrics().in_flight,
        0,
        "the rejected call holds no bulkhead permit"
    );
    // And the next poll_ready of the rejected service reserves nothing
    // either while the limiter still has no permit.
    let error = second
        .ready()
        .await
        .expect("ready")
        .call(Reply::Ok)
        .await
        .expect_err("still no permit");
    assert!(rejected_with::<RateLimited>(&error), "{error}");
    assert_eq!(bulkhead.metrics().in_flight, 0);
    assert!(
        bulkhead.try_acquire().is_ok(),
        "nothing runs, so the bulkhead admits another caller"
    );
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_bulkhead_rejection_does_not_come_back_after_a_rate_limiter_rejection() {
    let bulkhead = bulkhead_of_one();
    let limiter = one_per_minute();
    limiter.try_acquire().expect("spend the only permit");
    let occupant = bulkhead.try_acquire().expect("fill the bulkhead");
    let backend = Backend::default();
    let mut service = Pipeline::builder("orders")
        .rate_limiter(limiter.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .expect("valid pipeline")
        .layer(backend.clone());

    let error = service
        .ready()
        .await
        .expect("ready")
        .call(Reply::Ok)
        .await
        .expect_err("both the limiter and the bulkhead are full");
    assert!(rejected_with::<RateLimited>(&error), "{error}");

    drop(occupant);
    tokio::time::advance(Duration::from_secs(60)).await;
    let response = service.ready().await.expect("ready").call(Reply::Ok).await;
    assert!(
        !matches!(&response, Err(error) if rejected_with::<BulkheadFull>(error)),
        "a BulkheadFull decided a minute ago came back: {response:?}"
    );
    assert_eq!(response.expect("both have room now"), "ok");
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_rejection_leaves_nothing_reserved_in_the_rate_limiter_inside_it() {
    // A bulkhead outside a rate limiter (an order the pipeline does not use,
    // but a hand-built stack may): the bulkhead rejects before the limiter
    // is asked, so no rate permit is spent on a call that never runs.
    let bulkhead = bulkhead_of_one();
    let limiter = one_per_minute();
    let occupant = bulkhead.try_acquire().expect("fill the bulkhead");
    let mut service = bulkhead
        .layer()
        .layer(limiter.layer().layer(Backend::default()));
    let error = service
        .ready()
        .await
        .expect("ready")
        .call(Reply::Ok)
        .await
        .expect_err("the bulkhead is full");
    assert!(error.downcast_ref::<BulkheadFull>().is_some(), "{error}");
    assert_eq!(limiter.metrics().permitted, 0, "no rate permit was spent");
    drop(occupant);
    let response = service.ready().await.expect("ready").call(Reply::Ok).await;
    assert_eq!(response.expect("room in both"), "ok");
}
