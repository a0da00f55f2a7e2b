//! What hedging costs a call that answers before the delay (cloning the
//! request and the service, the budget deposit, the timer), next to a bare
//! service and tower's `hedge`, in one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
use tower::Layer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

/// tower's hedge policy: every request may be hedged, by cloning it.
#[derive(Clone)]
struct CloneAll;

impl tower::hedge::Policy<u64> for CloneAll {
    fn clone_request(&self, request: &u64) -> Option<u64> {
        Some(*request)
    }

    fn can_retry(&self, _: &u64) -> bool {
        true
    }
}

fn answered_before_the_delay(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("hedge");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let fixed = Hedge::new(
        "bench",
        HedgeConfig::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
            .build()
            .expect("valid config"),
    );
    let mut service = fixed.layer().layer(Echo);
    group.bench_function("palisade/fixed delay (budget)", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let percentile = Hedge::new(
        "bench",
        HedgeConfig::builder()
            .delay(HedgeDelay::percentile(0.9))
            .no_budget()
            .build()
            .expect("valid config"),
    );
    let mut service = percentile.layer().layer(Echo);
    group.bench_function("palisade/percentile (no budget)", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let mut peer = tower::hedge::Hedge::new(Echo, CloneAll, 20, 0.9, Duration::from_secs(10));
    group.bench_function("tower/hedge (percentile)", |b| {
        b.iter(|| call_now(&mut peer, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, answered_before_the_delay);
criterion_main!(benches);
