//! What a call through the fallback costs, next to a bare service and to
//! tower-resilience's fallback, in one run: when the call succeeds (the
//! price every call pays) and when it fails and the static value answers.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::fallback::{Fallback, FallbackConfig};
use tower::{Layer, Service, ServiceExt};
use tower_resilience_fallback::FallbackLayer as PeerFallbackLayer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::Echo;

/// The error of [`Failing`].
#[derive(Debug, Clone)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

/// Always ready; always fails.
#[derive(Debug, Clone, Copy)]
struct Failing;

impl Service<u64> for Failing {
    type Response = u64;
    type Error = Failed;
    type Future = Ready<Result<u64, Failed>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: u64) -> Self::Future {
        ready(Err(Failed))
    }
}

fn fallback(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("fallback");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let bare = Echo;
    group.bench_function("success/bare", |b| {
        b.iter(|| runtime.block_on(bare.oneshot(black_box(7))))
    });

    let ours = Fallback::new(
        "bench",
        FallbackConfig::builder()
            .value(0)
            .build()
            .expect("valid config"),
    );
    let service = ours.layer().layer(Echo);
    group.bench_function("success/palisade", |b| {
        b.iter(|| runtime.block_on(service.clone().oneshot(black_box(7))))
    });
    let failing = ours.layer().layer(Failing);
    group.bench_function("failure/palisade", |b| {
        b.iter(|| runtime.block_on(failing.clone().oneshot(black_box(7))))
    });

    let peer = PeerFallbackLayer::<u64, u64, Infallible>::value(0).layer(Echo);
    group.bench_function("success/tower-resilience", |b| {
        b.iter(|| runtime.block_on(peer.clone().oneshot(black_box(7))))
    });
    let peer_failing = PeerFallbackLayer::<u64, u64, Failed>::value(0).layer(Failing);
    group.bench_function("failure/tower-resilience", |b| {
        b.iter(|| runtime.block_on(peer_failing.clone().oneshot(black_box(7))))
    });
    group.finish();
}

criterion_group!(benches, fallback);
criterion_main!(benches);
