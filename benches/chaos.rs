//! What the chaos layer costs a call it injects nothing into: disabled (the
//! production setting of a fault knob) against the bare service, enabled
//! with every rate zero, and tower-resilience's chaos layer with zero rates
//! (it has no switch). `cargo bench --bench chaos --features chaos`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::chaos::{Chaos, ChaosConfig};
use tower::Layer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

fn nothing_injected(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("chaos");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let disabled = Chaos::new(
        "bench",
        ChaosConfig::builder()
            .error_rate(0.5)
            .enabled(false)
            .build()
            .expect("valid config"),
    );
    let mut service = disabled.layer().layer(Echo);
    group.bench_function("palisade/disabled", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let enabled = Chaos::new(
        "bench",
        ChaosConfig::builder().build().expect("valid config"),
    );
    let mut service = enabled.layer().layer(Echo);
    group.bench_function("palisade/enabled, zero rates", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let mut peer = tower_resilience_chaos::ChaosLayer::builder()
        .latency_rate(0.0)
        .build()
        .layer(Echo);
    group.bench_function("tower-resilience/zero rates", |b| {
        b.iter(|| call_now(&mut peer, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, nothing_injected);
criterion_main!(benches);
