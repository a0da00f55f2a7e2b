//! The cost of the `metrics` feature on a CLOSED breaker's call (the
//! hottest path): run once without the feature and once with it.
//!
//! ```text
//! cargo bench --bench metrics                      # feature off: the hooks are empty
//! cargo bench --bench metrics --features metrics   # no recorder (no-op handles), then Prometheus
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use palisade::classify::Outcome;

fn count_breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        "bench",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(100))
            .build()
            .expect("a valid configuration"),
    )
}

fn one_call(breaker: &CircuitBreaker) {
    match breaker.try_acquire() {
        Ok(permit) => permit.record(black_box(Outcome::Success)),
        Err(rejected) => panic!("a CLOSED breaker rejected a call: {rejected}"),
    }
}

fn closed_permit(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    // Without the feature: nothing is exported. With it and no recorder
    // installed: every handle is a no-op.
    let label = if cfg!(feature = "metrics") {
        "closed_permit/no_recorder"
    } else {
        "closed_permit/feature_off"
    };
    let breaker = count_breaker();
    group.bench_function(label, |b| b.iter(|| one_call(&breaker)));

    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let breaker = metrics::with_local_recorder(&recorder, count_breaker);
        group.bench_function("closed_permit/prometheus", |b| {
            b.iter(|| one_call(&breaker))
        });
        let calls = recorder.handle().render();
        assert!(calls.contains("palisade_circuit_breaker_calls_total"));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = closed_permit
}
criterion_main!(benches);
