//! What the retry layer costs on the success path (the first attempt
//! succeeds), next to the same call without it and through tower's `Retry`
//! with the smallest policy that can be written for it.
//!
//! Every call is driven by hand: `poll_ready`, `call`, one poll of the
//! response future with a no-op waker, inside a tokio runtime context (the
//! retry layer creates timers only when it must wait, and none here does).

use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::retry::{Retry, RetryConfig};
use tower::Layer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

/// tower's `Retry` needs a policy; this is the least one can write: retry
/// every error up to twice, no backoff.
#[derive(Clone)]
struct Attempts(usize);

impl<E> tower::retry::Policy<u64, u64, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

/// Prints the size of `service`'s response future: what each call moves
/// and keeps on its task's stack or in its task.
fn print_future_size<S: tower::Service<u64>>(name: &str, service: &mut S) {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = service.call(7);
    println!(
        "retry-success/{name}: response future of {} bytes",
        std::mem::size_of_val(&future)
    );
}

fn success_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("retry-success");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let budgeted = Retry::new("bench", RetryConfig::default());
    let mut service = budgeted.layer().layer(Echo);
    print_future_size("palisade/default (budget)", &mut service);
    group.bench_function("palisade/default (budget)", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let unbudgeted = Retry::new(
        "bench",
        RetryConfig::builder()
            .no_budget()
            .build()
            .expect("valid config"),
    );
    let mut service = unbudgeted.layer().layer(Echo);
    group.bench_function("palisade/no budget", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let timed = Retry::new(
        "bench",
        RetryConfig::builder()
            .attempt_timeout(Duration::from_secs(5))
            .build()
            .expect("valid config"),
    );
    let mut service = timed.layer().layer(Echo);
    group.bench_function("palisade/attempt timeout", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let mut service = tower::retry::RetryLayer::new(Attempts(2)).layer(Echo);
    print_future_size("tower/retry", &mut service);
    group.bench_function("tower/retry", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
