//! The fallback layer, driven through its tower service with paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker};
use palisade::classify::{ClassifyExt, DefaultClassifier};
use palisade::fallback::{
    FailureCause, Fallback, FallbackConfig, FallbackEventKind, FallbackSource,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::{Layer, Service, ServiceExt};

/// Requests are `(key, succeed)`: the service answers `key * 10` after
/// `delay`, or fails.
fn flaky(
    delay: Duration,
    live: Arc<AtomicUsize>,
) -> impl Service<(u64, bool), Response = u64, Error = std::io::Error, Future: Send> + Clone {
    tower::service_fn(move |(key, succeed): (u64, bool)| {
        live.fetch_add(1, Ordering::SeqCst);
        let guard = Decrement(Arc::clone(&live));
        async move {
            let _guard = guard;
            tokio::time::sleep(delay).await;
            if succeed {
                Ok(key * 10)
            } else {
                Err(std::io::Error::other(format!("failed for {key}")))
            }
        }
    })
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn config() -> palisade::fallback::FallbackConfigBuilder<u64> {
    FallbackConfig::builder()
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_answered_with_the_static_value() {
    let fallback = Fallback::new("test", config().value(42).build().unwrap());
    let mut events = fallback.subscribe();
    let service = fallback
        .layer()
        .layer(flaky(Duration::ZERO, Arc::default()));
    assert_eq!(
        service.clone().oneshot((1, true)).await.unwrap(),
        10,
        "a success passes"
    );
    assert_eq!(service.clone().oneshot((1, false)).await.unwrap(), 42);
    assert_eq!(fallback.metrics().answered_by_value, 1);
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [FallbackEventKind::Answered {
            source: FallbackSource::Value,
            cause: FailureCause::Failure
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_function_of_the_failure_answers() {
    let fallback = Fallback::new(
        "test",
        config()
            .from_failure(|failure| match failure {
                Err(error) => error.to_string().len() as u64,
                Ok(response) => *response + 1,
            })
            .build()
            .unwrap(),
    );
    let service = fallback
        .layer()
        .layer(flaky(Duration::ZERO, Arc::default()));
    // "failed for 12345" is 16 characters.
    assert_eq!(service.oneshot((12345, false)).await.unwrap(), 16);
    assert_eq!(fallback.metrics().answered_by_function, 1);
}

#[tokio::test(start_paused = true)]
async fn a_response_the_classifier_fails_is_answered_from_that_response() {
    let fallback = Fallback::new(
        "test",
        config()
            .from_failure(|failure| match failure {
                Ok(response) => *response + 1,
                Err(_) => 0,
            })
            .build()
            .unwrap(),
    );
    let classifier = DefaultClassifier.fail_responses(|response: &u64| *response >= 500, true);
    let service = fallback
        .layer()
        .with_classifier(classifier)
        .layer(flaky(Duration::ZERO, Arc::default()));
    assert_eq!(
        service.clone().oneshot((50, true)).await.unwrap(),
        501,
        "500 is a failure"
    );
    assert_eq!(service.oneshot((5, true)).await.unwrap(), 50, "50 is not");
}

#[tokio::test(start_paused = true)]
async fn last_good_answers_with_the_last_success_for_the_same_key() {
    let fallback = Fallback::new("test", config().last_good().build().unwrap());
    let mut events = fallback.subscribe();
    let service = fallback
        .layer_keyed(|(key, _): &(u64, bool)| *key)
        .layer(flaky(Duration::ZERO, Arc::default()));
    assert_eq!(service.clone().oneshot((1, true)).await.unwrap(), 10);
    assert_eq!(
        service.clone().oneshot((1, false)).await.unwrap(),
        10,
        "key 1's last good"
    );
    let error = service.clone().oneshot((2, false)).await.unwrap_err();
    assert!(
        error.downcast_ref::<std::io::Error>().is_some(),
        "key 2 has none: the failure passes through unchanged"
    );
    let metrics = fallback.metrics();
    assert_eq!(
        (metrics.answered_by_last_good, metrics.no_last_good),
        (1, 1)
    );
    assert_eq!(metrics.last_good_entries, 1);
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            FallbackEventKind::Answered {
                source: FallbackSource::LastGood,
                cause: FailureCause::Failure
            },
            FallbackEventKind::NoLastGood {
                cause: FailureCause::Failure
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn last_good_without_a_key_answers_with_the_last_success_of_any_request() {
    let fallback = Fallback::new("test", config().last_good().build().unwrap());
    let service = fallback
        .layer()
        .layer(flaky(Duration::ZERO, Arc::default()));
    service.clone().oneshot((3, true)).await.unwrap();
    assert_eq!(service.oneshot((4, false)).await.unwrap(), 30);
}

#[tokio::test(start_paused = true)]
async fn last_good_keeps_at_most_its_capacity_of_keys() {
    let fallback = Fallback::new(
        "test",
        config().last_good().last_good_capacity(2).build().unwrap(),
    );
    let service = fallback
        .layer_keyed(|(key, _): &(u64, bool)| *key)
        .layer(flaky(Duration::ZERO, Arc::default()));
    for key in [1, 2, 3] {
        service.clone().oneshot((key, true)).await.unwrap();
    }
    assert_eq!(fallback.metrics().last_good_entries, 2);
    assert!(
        service.clone().oneshot((1, false)).await.is_err(),
        "key 1, updated longest ago, was forgotten"
    );
    assert_eq!(service.oneshot((3, false)).await.unwrap(), 30);
}

#[tokio::test(start_paused = true)]
async fn rejections_pass_through_unless_on_rejection_is_set() {
    let breaker = CircuitBreaker::with_defaults("inner");
    breaker.transition_to_forced_open();
    let backend = flaky(Duration::ZERO, Arc::default());

    let plain = Fallback::new("plain", config().value(1).build().unwrap());
    let service = plain.layer().layer(breaker.layer().layer(backend.clone()));
    let error: BoxError = service.oneshot((1, true)).await.unwrap_err();
    assert!(
        error.downcast_ref::<BreakerOpen>().is_some(),
        "passed through: {error}"
    );
    assert_eq!(plain.metrics().answered(), 0);

    let answering = Fallback::new(
        "answering",
        config().value(1).on_rejection(true).build().unwrap(),
    );
    let mut events = answering.subscribe();
    let service = answering.layer().layer(breaker.layer().layer(backend));
    assert_eq!(service.oneshot((1, true)).await.unwrap(), 1);
    assert_eq!(answering.metrics().answered_rejections, 1);
    assert_eq!(
        events
            .drain()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>(),
        [FallbackEventKind::Answered {
            source: FallbackSource::Value,
            cause: FailureCause::Rejection
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn errors_the_classifier_ignores_pass_through_unchanged() {
    let fallback = Fallback::new("test", config().value(1).build().unwrap());
    let classifier = DefaultClassifier.ignore_errors(|_: &std::io::Error| true);
    let service = fallback
        .layer()
        .with_classifier(classifier)
        .layer(flaky(Duration::ZERO, Arc::default()));
    let error = service.oneshot((8, false)).await.unwrap_err();
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("the inner error itself");
    assert_eq!(io.to_string(), "failed for 8");
    assert_eq!(fallback.metrics().answered(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_leaves_nothing_behind_and_spares_the_other_callers() {
    let live = Arc::new(AtomicUsize::new(0));
    let fallback = Fallback::new(
        "storm",
        config().last_good().last_good_capacity(8).build().unwrap(),
    );
    let service = fallback
        .layer_keyed(|(key, _): &(u64, bool)| *key)
        .layer(flaky(Duration::from_millis(50), Arc::clone(&live)));
    // Every key has a last good response before the storm.
    for key in 0..8 {
        service.clone().oneshot((key, true)).await.unwrap();
    }
    let mut rng = StdRng::seed_from_u64(15);
    let mut kept = Vec::new();
    let mut cancelled = Vec::new();
    for i in 0..600 {
        let key = rng.random_range(0..8);
        let succeed = rng.random_bool(0.5);
        let start = Duration::from_millis(rng.random_range(0..200));
        let service = service.clone();
        if i % 4 == 0 {
            kept.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                (key, service.oneshot((key, succeed)).await)
            }));
        } else {
            let patience = Duration::from_millis(rng.random_range(0..80));
            cancelled.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                let _ = tokio::time::timeout(patience, service.oneshot((key, succeed))).await;
            }));
        }
    }
    for task in cancelled {
        task.await.unwrap();
    }
    for task in kept {
        let (key, result) = task.await.unwrap();
        assert_eq!(
            result.expect("answered, by the service or the fallback"),
            key * 10
        );
    }
    assert_eq!(live.load(Ordering::SeqCst), 0, "no inner call left running");
    assert_eq!(fallback.metrics().last_good_entries, 8);
    assert!(fallback.metrics().answered_by_last_good > 0);
}

#[test]
fn an_answer_must_be_chosen_exactly_once() {
    let none = FallbackConfig::<u64>::builder().build().unwrap_err();
    assert_eq!(none.field(), "strategy");
    let twice = config().value(1).last_good().build().unwrap_err();
    assert_eq!(twice.field(), "strategy");
    assert!(
        twice.to_string().contains("value then last_good"),
        "{twice}"
    );
}

#[test]
fn last_good_capacity_must_be_at_least_one() {
    let error = config()
        .last_good()
        .last_good_capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "last_good_capacity");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_layer_forgets_its_last_good_responses() {
    let fallback = Fallback::new("test", config().last_good().build().unwrap());
    let layer = fallback.layer_keyed(|(key, _): &(u64, bool)| *key);
    let service = layer.layer(flaky(Duration::ZERO, Arc::default()));
    service.clone().oneshot((1, true)).await.unwrap();
    assert_eq!(fallback.metrics().last_good_entries, 1);
    drop((layer, service));
    assert_eq!(fallback.metrics().last_good_entries, 0);
}
