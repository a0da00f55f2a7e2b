//! Outlier ejection of the balancer, checked step by step in paused time.

use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{
    Balance, BalanceConfig, Instance, OutlierDetection, Picker, StaticRegistry, make_fn,
};
use tower::{Service, ServiceExt, service_fn};

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Regression: the ejection timer used to start counting when its task
/// first ran, so an ejection followed by a clock advance before the
/// caller yielded lasted that much longer than `base_ejection_time`.
#[tokio::test(start_paused = true)]
async fn an_ejection_lasts_from_the_failure_that_caused_it_not_from_when_its_timer_first_runs() {
    let registry = StaticRegistry::new([Instance::builder("model", "i0", "10.0.0.1:80")
        .build()
        .expect("valid instance")]);
    let make = make_fn(|_: &Instance| {
        Ok::<_, BoxError>(service_fn(|()| async {
            Err::<String, BoxError>("down".into())
        }))
    });
    let outliers = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_percent(100)
        .build()
        .unwrap();
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(outliers)
        .build()
        .unwrap();
    let mut balance = Balance::new("model", &registry, make, config).unwrap();
    assert!(balance.ready().await.unwrap().call(()).await.is_err());
    assert_eq!(balance.metrics().ejected, 1);
    // Straight on, before this task yields to the ejection's timer task.
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(
        balance.metrics().ejected,
        0,
        "returned after base_ejection_time"
    );
}
