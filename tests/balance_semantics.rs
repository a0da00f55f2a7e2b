//! Regression tests for the balancer's semantics (issue 12, items 7 and 9):
//! outlier-detection limits, peak-EWMA decay, ejection state across weight
//! updates, event order, ejection-count decay and seeded picks. Every test
//! runs on paused time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{
    Balance, BalanceConfig, BalanceEventKind, Instance, OutlierDetection, Picker, StaticRegistry,
    make_fn,
};
use tower::{Service, ServiceExt, service_fn};

fn instance(id: &str, address: &str, weight: u32) -> Instance {
    Instance::builder("users", id, address)
        .weight(weight)
        .build()
        .expect("valid instance")
}

async fn call<S>(balance: &mut S) -> Result<String, BoxError>
where
    S: Service<(), Response = String, Error = BoxError>,
{
    balance.ready().await?.call(()).await
}

/// Lets the balancer's watch task and timers run.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// The per-instance snapshot of `id`.
fn endpoint<S: Clone + Send + Sync + 'static>(
    balance: &Balance<S>,
    id: &str,
) -> palisade::discovery::EndpointMetrics {
    balance
        .metrics()
        .endpoints
        .into_iter()
        .find(|e| e.id.as_str() == id)
        .expect("the instance is known")
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

#[test]
fn ejection_times_past_a_year_are_rejected_naming_the_field() {
    let base = OutlierDetection::builder()
        .base_ejection_time(Duration::MAX)
        .max_ejection_time(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(base.field(), "base_ejection_time");
    let max = OutlierDetection::builder()
        .max_ejection_time(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(max.field(), "max_ejection_time");
    let over = OutlierDetection::builder()
        .max_ejection_time(YEAR + Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert_eq!(over.field(), "max_ejection_time");
    let longest = YEAR;
    OutlierDetection::builder()
        .base_ejection_time(longest)
        .max_ejection_time(longest)
        .build()
        .expect("a year is accepted");
}

#[tokio::test(start_paused = true)]
async fn the_longest_accepted_ejection_time_ejects_without_panicking() {
    let registry = StaticRegistry::new([
        instance("a", "10.0.0.1:80", 1),
        instance("b", "10.0.0.2:80", 1),
    ]);
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(service_fn(move |()| {
            let id = id.clone();
            async move {
                match id.as_str() {
                    "a" => Err::<String, BoxError>("a is down".into()),
                    _ => Ok(id),
                }
            }
        }))
    });
    let longest = YEAR;
    let outliers = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(longest)
        .max_ejection_time(longest)
        .build()
        .unwrap();
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(outliers)
        .build()
        .unwrap();
    let mut balance = Balance::new("users", &registry, make, config).unwrap();
    for _ in 0..4 {
        let _ = call(&mut balance).await;
    }
    assert!(endpoint(&balance, "a").ejected);
}
