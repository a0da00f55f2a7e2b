//! The chaos layer, driven through its tower service with paused time.
//! Needs the `chaos` feature: `cargo test --test chaos --features chaos`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::chaos::{Chaos, ChaosConfig, ChaosEventKind, ChaosFault};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Counts calls that reached it and futures alive; each call takes `takes`.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    fn service(
        &self,
        takes: Duration,
    ) -> impl Service<u32, Response = String, Error = BoxError, Future: Send> + Clone + use<> {
        let backend = self.clone();
        service_fn(move |id: u32| {
            backend.calls.fetch_add(1, Ordering::SeqCst);
            backend.alive.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(Arc::clone(&backend.alive));
            async move {
                tokio::time::sleep(takes).await;
                drop(alive);
                Ok::<_, BoxError>(format!("real {id}"))
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn disabled_chaos_passes_every_call_through() {
    let backend = Backend::default();
    let chaos = Chaos::new(
        "off",
        ChaosConfig::builder()
            .error_rate(1.0)
            .enabled(false)
            .build()
            .unwrap(),
    );
    let mut service = chaos.layer().layer(backend.service(Duration::ZERO));
    for id in 0..10 {
        assert_eq!(
            service.ready().await.unwrap().call(id).await.unwrap(),
            format!("real {id}")
        );
    }
    assert_eq!(backend.calls(), 10);
    let metrics = chaos.metrics();
    assert!(!metrics.enabled);
    assert_eq!(metrics.calls_while_enabled, 0);
    assert_eq!(metrics.errors_injected, 0);
}

#[tokio::test(start_paused = true)]
async fn an_injected_error_fails_the_call_without_reaching_the_service() {
    let backend = Backend::default();
    let chaos = Chaos::new(
        "inventory",
        ChaosConfig::builder().error_rate(1.0).build().unwrap(),
    );
    let mut events = chaos.subscribe();
    let mut service = chaos.layer().layer(backend.service(Duration::ZERO));
    let error = service.ready().await.unwrap().call(1).await.unwrap_err();
    let fault = error.downcast_ref::<ChaosFault>().expect("a ChaosFault");
    assert_eq!(fault.chaos(), "inventory");
    assert!(
        !palisade::error::is_rejection(&*error),
        "a fault, not a rejection"
    );
    assert_eq!(backend.calls(), 0);
    assert_eq!(chaos.metrics().errors_injected, 1);
    assert_eq!(
        events.try_recv().unwrap().kind,
        ChaosEventKind::ErrorInjected
    );
}

#[tokio::test(start_paused = true)]
async fn a_custom_error_is_made_for_each_injected_fault() {
    let chaos = Chaos::new(
        "custom",
        ChaosConfig::builder()
            .error_rate(1.0)
            .error_with(|| std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
            .build()
            .unwrap(),
    );
    let mut service = chaos
        .layer()
        .layer(Backend::default().service(Duration::ZERO));
    for _ in 0..2 {
        let error = service.ready().await.unwrap().call(1).await.unwrap_err();
        let io = error
            .downcast_ref::<std::io::Error>()
            .expect("the custom error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    }
}

#[tokio::test(start_paused = true)]
async fn an_injected_response_answers_without_the_service() {
    let backend = Backend::default();
    let chaos = Chaos::new(
        "canned",
        ChaosConfig::builder()
            .response(1.0, || "canned".to_string())
            .build()
            .unwrap(),
    );
    let mut service = chaos.layer().layer(backend.service(Duration::ZERO));
    assert_eq!(
        service.ready().await.unwrap().call(1).await.unwrap(),
        "canned"
    );
    assert_eq!(backend.calls(), 0);
    assert_eq!(chaos.metrics().responses_injected, 1);
}

#[tokio::test(start_paused = true)]
async fn injected_latency_delays_the_answer_by_the_configured_delay() {
    let backend = Backend::default();
    let chaos = Chaos::new(
        "slow",
        ChaosConfig::builder()
            .latency(1.0, Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    let mut service = chaos
        .layer()
        .layer(backend.service(Duration::from_millis(10)));
    let started = Instant::now();
    assert_eq!(
        service.ready().await.unwrap().call(4).await.unwrap(),
        "real 4"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(310));
    assert_eq!(chaos.metrics().latencies_injected, 1);
}

/// Which of `calls` calls fail, for a chaos with `seed` and an error rate of 0.3.
async fn faults_with_seed(seed: u64, calls: u32) -> Vec<bool> {
    let chaos = Chaos::new(
        "seeded",
        ChaosConfig::builder()
            .error_rate(0.3)
            .seed(seed)
            .build()
            .unwrap(),
    );
    let mut service = chaos
        .layer()
        .layer(Backend::default().service(Duration::ZERO));
    let mut failed = Vec::new();
    for id in 0..calls {
        failed.push(service.ready().await.unwrap().call(id).await.is_err());
    }
    failed
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_injects_the_same_faults_at_the_configured_rate() {
    let first = faults_with_seed(42, 2000).await;
    assert_eq!(first, faults_with_seed(42, 2000).await);
    assert_ne!(first, faults_with_seed(43, 2000).await);
    let failures = first.iter().filter(|failed| **failed).count();
    // 0.3 of 2000 is 600; the standard deviation is about 20.
    assert!((520..=680).contains(&failures), "{failures} failures");
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_and_switching_take_effect_at_the_next_call() {
    let backend = Backend::default();
    let chaos = Chaos::new("knob", ChaosConfig::<String>::builder().build().unwrap());
    let mut events = chaos.subscribe();
    let mut service = chaos.layer().layer(backend.service(Duration::ZERO));
    assert!(service.ready().await.unwrap().call(1).await.is_ok());

    chaos.reconfigure(ChaosConfig::builder().error_rate(1.0).build().unwrap());
    assert!(service.ready().await.unwrap().call(2).await.is_err());
    chaos.disable();
    assert!(service.ready().await.unwrap().call(3).await.is_ok());
    chaos.enable();
    assert!(service.ready().await.unwrap().call(4).await.is_err());
    chaos.reconfigure(
        ChaosConfig::builder()
            .error_rate(1.0)
            .enabled(false)
            .build()
            .unwrap(),
    );
    assert!(service.ready().await.unwrap().call(5).await.is_ok());

    let kinds: Vec<_> = events
        .drain()
        .into_iter()
        .map(|event| event.kind)
        .filter(|kind| !matches!(kind, ChaosEventKind::ErrorInjected))
        .collect();
    assert_eq!(
        kinds,
        [
            ChaosEventKind::Reconfigured,
            ChaosEventKind::Switched { enabled: false },
            ChaosEventKind::Switched { enabled: true },
            ChaosEventKind::Reconfigured,
            ChaosEventKind::Switched { enabled: false },
        ]
    );
    assert_eq!(backend.calls(), 3);
}

#[test]
fn the_builder_names_the_rate_that_breaks_its_rule() {
    let error = ChaosConfig::<()>::builder()
        .error_rate(1.5)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "error_rate");
    let error = ChaosConfig::<()>::builder()
        .latency(f64::NAN, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "latency_rate");
    let error = ChaosConfig::builder()
        .error_rate(0.6)
        .response(0.6, || ())
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "response_rate");
    assert!(error.to_string().contains("at most 1"), "{error}");
    let error = ChaosConfig::<()>::builder()
        .event_capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "event_capacity");
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_leaves_no_inner_call_alive() {
    let backend = Backend::default();
    let chaos = Chaos::new(
        "storm",
        ChaosConfig::builder()
            .latency(0.5, Duration::from_millis(50))
            .error_rate(0.2)
            .seed(9)
            .build()
            .unwrap(),
    );
    let service = chaos
        .layer()
        .layer(backend.service(Duration::from_millis(100)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut tasks = Vec::new();
    for id in 0..500 {
        let mut service = service.clone();
        let drop_after = Duration::from_millis(rng.random_range(0..200));
        tasks.push(tokio::spawn(async move {
            let call = async move { service.ready().await?.call(id).await };
            tokio::time::timeout(drop_after, call).await
        }));
    }
    for task in tasks {
        let _ = task.await.unwrap();
    }
    assert_eq!(
        backend.alive.load(Ordering::SeqCst),
        0,
        "every inner future was dropped"
    );
    assert_eq!(chaos.metrics().calls_while_enabled, 500);
}
