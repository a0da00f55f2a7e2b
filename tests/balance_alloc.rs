//! A call through the balancer (pick + call) makes no allocation once the
//! instances are known, with every picker: a counting global allocator
//! watches the calls.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;

use counting_alloc::allocations_during;
use palisade::discovery::{Balance, BalanceConfig, Instance, Picker, StaticRegistry, make_fn};
use tower::ServiceExt;

#[path = "support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const MEASURED_CALLS: u64 = 1_000;

fn registry(instances: usize) -> StaticRegistry {
    StaticRegistry::new((0..instances).map(|i| {
        Instance::builder("alloc", format!("i{i}"), format!("10.0.0.{}:80", i + 1))
            .weight(1 + (i % 3) as u32)
            .build()
            .expect("valid instance")
    }))
}

fn pick_and_call_allocate_nothing(picker: Picker) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let registry = registry(100);
    let config = BalanceConfig::builder()
        .picker(picker)
        .build()
        .expect("valid config");
    let mut balance = Balance::new(
        "alloc",
        &registry,
        make_fn(|_: &Instance| Ok::<_, std::convert::Infallible>(Echo)),
        config,
    )
    .expect("valid name");
    // Let the watch task deliver the instances, then warm up.
    runtime.block_on(async {
        let _ = ServiceExt::<u64>::ready(&mut balance).await;
    });
    assert_eq!(balance.metrics().instances, 100);
    for request in 0..10 {
        assert_eq!(call_now(&mut balance, request).ok(), Some(request));
    }
    let mut answered = 0;
    let allocations = allocations_during(|| {
        for request in 0..MEASURED_CALLS {
            answered += u64::from(call_now(&mut balance, black_box(request)).is_ok());
        }
    });
    assert_eq!(answered, MEASURED_CALLS);
    assert_eq!(
        allocations, 0,
        "allocations in {MEASURED_CALLS} calls with {picker:?}"
    );
}

#[test]
fn round_robin_allocates_nothing() {
    pick_and_call_allocate_nothing(Picker::RoundRobin);
}

#[test]
fn random_allocates_nothing() {
    pick_and_call_allocate_nothing(Picker::Random);
}

#[test]
fn weighted_allocates_nothing() {
    pick_and_call_allocate_nothing(Picker::Weighted);
}

#[test]
fn least_loaded_allocates_nothing() {
    pick_and_call_allocate_nothing(Picker::LeastLoaded);
}

#[test]
fn peak_ewma_allocates_nothing() {
    pick_and_call_allocate_nothing(Picker::peak_ewma());
}
