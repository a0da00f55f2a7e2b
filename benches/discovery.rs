//! What the balancer's pick adds to a call, for 3, 30 and 300 instances and
//! every picker (peak-EWMA with its default call clock, the TSC, with
//! tokio's and with the coarse one), next to a bare service and to tower's p2c `Balance` (with
//! pending-requests and peak-EWMA load), in one run; and what membership
//! churn costs: instances registered one by one with an
//! [`InMemoryRegistry`], each awaited until the balancer has added it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::clock::CallClock;
use palisade::discovery::{
    Balance, BalanceConfig, BalanceEventKind, HealthCheck, InMemoryRegistry, Instance, Picker,
    Registrar, Registration, StaticRegistry, make_fn,
};
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

fn registry(instances: usize) -> StaticRegistry {
    StaticRegistry::new((0..instances).map(|i| {
        Instance::builder(
            "bench",
            format!("i{i}"),
            format!("10.0.{}.{}:80", i / 250, i % 250),
        )
        .weight(1 + (i % 3) as u32)
        .build()
        .expect("valid instance")
    }))
}

fn pick(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    // Peak-EWMA with the default call clock (the TSC), tokio's and the
    // coarse one.
    let pickers = [
        ("round-robin", Picker::RoundRobin, CallClock::Tsc),
        ("random", Picker::Random, CallClock::Tsc),
        ("weighted", Picker::Weighted, CallClock::Tsc),
        ("least-loaded", Picker::LeastLoaded, CallClock::Tsc),
        ("peak-ewma", Picker::peak_ewma(), CallClock::Tsc),
        (
            "peak-ewma-tokio-clock",
            Picker::peak_ewma(),
            CallClock::Tokio,
        ),
        (
            "peak-ewma-coarse-clock",
            Picker::peak_ewma(),
            CallClock::Coarse,
        ),
    ];
    for instances in [3usize, 30, 300] {
        let mut group = c.benchmark_group(format!("discovery/{instances}"));
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(1));

        let mut bare = Echo;
        group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

        let registry = registry(instances);
        for (name, picker, clock) in pickers {
            let config = BalanceConfig::builder()
                .picker(picker)
                .call_clock(clock)
                .build()
                .expect("valid config");
            let mut balance = Balance::new(
                "bench",
                &registry,
                make_fn(|_: &Instance| Ok::<_, std::convert::Infallible>(Echo)),
                config,
            )
            .expect("valid name");
            // Let the watch task deliver the instances.
            runtime.block_on(async {
                use tower::ServiceExt;
                let _ = ServiceExt::<u64>::ready(&mut balance).await;
            });
            assert_eq!(balance.metrics().instances, instances);
            group.bench_function(format!("palisade/{name}"), |b| {
                b.iter(|| call_now(&mut balance, black_box(7)))
            });
        }

        let mut tower_pending = p2c::Balance::new(PendingRequestsDiscover::new(
            ServiceList::new(vec![Echo; instances]),
            CompleteOnResponse::default(),
        ));
        group.bench_function("tower-p2c/pending-requests", |b| {
            b.iter(|| call_now(&mut tower_pending, black_box(7)))
        });
        let mut tower_ewma = p2c::Balance::new(PeakEwmaDiscover::new(
            ServiceList::new(vec![Echo; instances]),
            Duration::from_millis(30),
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        ));
        group.bench_function("tower-p2c/peak-ewma", |b| {
            b.iter(|| call_now(&mut tower_ewma, black_box(7)))
        });
        group.finish();
    }
}

/// Registers `instances` instances one at a time, waiting after each until
/// the balancer announces it (so every change is seen by the balancer, and
/// a change's cost at every layer is paid `instances` times).
async fn add_one_by_one(instances: usize) {
    let registry = InMemoryRegistry::new();
    let balance = Balance::new(
        "churn",
        &registry,
        make_fn(|_: &Instance| Ok::<_, std::convert::Infallible>(Echo)),
        BalanceConfig::default(),
    )
    .expect("valid name");
    let mut events = balance.subscribe();
    let mut guards = Vec::with_capacity(instances);
    for i in 0..instances {
        let instance = Instance::builder(
            "churn",
            format!("i{i:05}"),
            format!("10.{}.{}.{}:80", i / 62500, (i / 250) % 250, i % 250),
        )
        .build()
        .expect("valid instance");
        let guard = registry
            .register(Registration::new(instance, HealthCheck::None))
            .await
            .expect("registered");
        guards.push(guard.keep());
        loop {
            let event = events.recv().await.expect("balancer alive");
            if matches!(event.kind, BalanceEventKind::Added { .. }) {
                break;
            }
        }
    }
    assert_eq!(balance.metrics().instances, instances);
}

fn churn(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("discovery/membership churn");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_secs(1));
    for instances in [500usize, 5_000] {
        group.bench_function(
            format!("{instances} one-by-one additions seen by a balancer"),
            |b| b.iter(|| runtime.block_on(add_one_by_one(instances))),
        );
    }
    group.finish();
}

criterion_group!(benches, pick, churn);
criterion_main!(benches);
