//! What a cache hit costs, next to a bare service and to
//! tower-resilience's cache, in one run. Needs `--features cache`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::cache::{CacheConfig, ResponseCache};
use tower::{Layer, ServiceExt};
use tower_resilience_cache::CacheLayer as PeerCacheLayer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::Echo;

fn hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("cache");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let bare = Echo;
    group.bench_function("bare", |b| {
        b.iter(|| runtime.block_on(bare.oneshot(black_box(7))))
    });

    let ours: ResponseCache<u64, u64> = ResponseCache::new(
        "bench",
        CacheConfig::builder()
            .ttl(Duration::from_secs(3600))
            .max_entries(1000)
            .build()
            .expect("valid config"),
    );
    let service = ours.layer(|request: &u64| *request).layer(Echo);
    runtime
        .block_on(service.clone().oneshot(7))
        .expect("the first call fills the entry");
    group.bench_function("hit/palisade", |b| {
        b.iter(|| runtime.block_on(service.clone().oneshot(black_box(7))))
    });

    let peer = PeerCacheLayer::builder()
        .max_size(1000)
        .ttl(Duration::from_secs(3600))
        .key_extractor(|request: &u64| *request)
        .build()
        .expect("valid config")
        .layer(Echo);
    runtime
        .block_on(peer.clone().oneshot(7))
        .expect("the first call fills the entry");
    group.bench_function("hit/tower-resilience", |b| {
        b.iter(|| runtime.block_on(peer.clone().oneshot(black_box(7))))
    });
    group.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
