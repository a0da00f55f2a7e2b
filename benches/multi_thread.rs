//! Each layer on a multi-thread tokio runtime, with as many tasks as the
//! machine has cores, every task calling its own clone of one service (one
//! shared breaker, retry budget, bulkhead or limiter).
//!
//! A figure is the time one task takes per call while all of them call at
//! once (wall time of the whole run divided by the calls each task made),
//! so a layer that scales perfectly shows the same figure as with one task
//! (`tasks-1/...`), and one whose calls all write one cache line shows it
//! growing with the number of cores. Calls go through
//! `ServiceExt::ready` and `call` and are awaited, as an application's
//! would be; the inner service answers at once.
//!
//! Run with `cargo bench --bench multi_thread`.

use std::future::{Ready, ready};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use tower::{Layer, Service, ServiceExt};

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::Echo;

/// tower's `Retry` with the least policy one can write (as in `benches/retry.rs`).
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

fn breaker_config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .sliding_window(SlidingWindow::count(100))
        .wait_duration_in_open_state(Duration::from_secs(3600))
        .build()
        .expect("valid config")
}

/// Runs `iters` calls on each of `tasks` tasks at once and returns the wall
/// time of the run; criterion divides it by `iters`, giving the time per
/// call as each task sees it.
fn time_tasks<S>(
    runtime: &tokio::runtime::Runtime,
    service: &S,
    tasks: usize,
    iters: u64,
) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    runtime.block_on(async {
        let start_line = std::sync::Arc::new(tokio::sync::Barrier::new(tasks + 1));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let mut service = service.clone();
                let start_line = start_line.clone();
                tokio::spawn(async move {
                    start_line.wait().await;
                    for request in 0..iters {
                        let ready = service.ready().await.expect("ready");
                        let response = ready.call(request).await;
                        std::hint::black_box(response.is_ok());
                    }
                })
            })
            .collect();
        start_line.wait().await;
        let started = Instant::now();
        for handle in handles {
            handle.await.expect("a benchmark task panicked");
        }
        started.elapsed()
    })
}

fn bench<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    tasks: usize,
    name: &str,
    service: S,
) where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| time_tasks(runtime, &service, tasks, iters))
    });
}

fn layers(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    for tasks in [1, cores] {
        let mut group = c.benchmark_group(format!("tasks-{tasks}"));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        bench(&mut group, &runtime, tasks, "bare", Echo);
        bench(
            &mut group,
            &runtime,
            tasks,
            "circuit-breaker/new",
            CircuitBreaker::new("bench", breaker_config())
                .layer()
                .layer(Echo),
        );
        bench(
            &mut group,
            &runtime,
            tasks,
            "circuit-breaker/new_static",
            CircuitBreaker::new_static("bench", breaker_config())
                .layer()
                .layer(Echo),
        );
        bench(
            &mut group,
            &runtime,
            tasks,
            "retry/default-budget",
            Retry::new("bench", RetryConfig::default())
                .layer()
                .layer(Echo),
        );
        bench(
            &mut group,
            &runtime,
            tasks,
            "tower/retry",
            tower::retry::RetryLayer::new(Attempts(2)).layer(Echo),
        );
        let bulkhead = Bulkhead::new(
            "bench",
            BulkheadConfig::builder()
                .max_concurrent_calls(1024)
                .build()
                .expect("valid config"),
        );
        bench(
            &mut group,
            &runtime,
            tasks,
            "bulkhead",
            bulkhead.layer().layer(Echo),
        );
        // The clones of one `ConcurrencyLimit` share its semaphore, as the
        // bulkhead's share the bulkhead.
        bench(
            &mut group,
            &runtime,
            tasks,
            "tower/concurrency-limit",
            tower::limit::ConcurrencyLimitLayer::new(1024).layer(Echo),
        );
        let limiter = RateLimiter::new(
            "bench",
            RateLimiterConfig::builder()
                .limit_for_period(1_000_000_000)
                .limit_refresh_period(Duration::from_secs(1))
                .build()
                .expect("valid config"),
        );
        bench(
            &mut group,
            &runtime,
            tasks,
            "rate-limiter",
            limiter.layer().layer(Echo),
        );
        group.finish();
    }
}

criterion_group!(benches, layers);
criterion_main!(benches);
