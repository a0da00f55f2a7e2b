//! What a call through the coalescing layer costs when no other request
//! shares its key (the price of starting and finishing a shared call),
//! next to a bare service and to tower-resilience's coalesce, in one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::coalesce::Coalesce;
use tower::{Layer, ServiceExt};
use tower_resilience_coalesce::CoalesceLayer as PeerCoalesceLayer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::Echo;

fn alone(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("coalesce");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let bare = Echo;
    group.bench_function("bare", |b| {
        b.iter(|| runtime.block_on(bare.oneshot(black_box(7))))
    });

    let ours = Coalesce::with_defaults("bench");
    let service = ours.layer(|request: &u64| *request).layer(Echo);
    group.bench_function("palisade", |b| {
        b.iter(|| runtime.block_on(service.clone().oneshot(black_box(7))))
    });

    let peer = PeerCoalesceLayer::new(|request: &u64| *request).layer(Echo);
    group.bench_function("tower-resilience", |b| {
        b.iter(|| runtime.block_on(peer.clone().oneshot(black_box(7))))
    });
    group.finish();
}

criterion_group!(benches, alone);
criterion_main!(benches);
