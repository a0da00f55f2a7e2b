//! What the retry layer costs on the success path (the first attempt
//! succeeds), next to the same call without it and through tower's `Retry`
//! with the smallest policy that can be written for it.
//!
//! Every call is driven by hand: `poll_ready`, `call`, one poll of the
//! response future with a no-op waker, inside a tokio runtime context (the
//! retry layer creates timers only when it must wait, and none here does).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::task::noop_waker_ref;
use palisade::retry::{RetryConfig, RetryLayer};
use tower::{Layer, Service};

/// The cheapest service there is: always ready, answers with its request.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ready(Ok(request))
    }
}

#[inline]
fn call_now<S: Service<u64>>(service: &mut S, request: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(noop_waker_ref());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => return Err(error),
        Poll::Pending => panic!("a benchmarked service was not ready"),
    }
    let mut response = pin!(service.call(request));
    match response.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("a benchmarked response did not complete on its first poll"),
    }
}

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

    let budgeted = RetryLayer::new("bench", RetryConfig::default());
    let mut service = budgeted.layer(Echo);
    group.bench_function("palisade/default (budget)", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let unbudgeted = RetryLayer::new(
        "bench",
        RetryConfig::builder()
            .no_budget()
            .build()
            .expect("valid config"),
    );
    let mut service = unbudgeted.layer(Echo);
    group.bench_function("palisade/no budget", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let timed = RetryLayer::new(
        "bench",
        RetryConfig::builder()
            .attempt_timeout(Duration::from_secs(5))
            .build()
            .expect("valid config"),
    );
    let mut service = timed.layer(Echo);
    group.bench_function("palisade/attempt timeout", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });

    let mut service = tower::retry::RetryLayer::new(Attempts(2)).layer(Echo);
    group.bench_function("tower/retry", |b| {
        b.iter(|| call_now(&mut service, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
