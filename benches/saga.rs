//! Saga steps per second with the in-memory and the SQLite log, one saga
//! at a time and many at once. Each step writes two records (started,
//! completed); the SQLite log commits them durably (`synchronous = FULL`)
//! and groups concurrent appends into one transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::saga::{
    MemoryLog, SagaDefinition, SagaExecutor, SagaLog, SagaOutcome, SqliteLog, SqliteLogConfig,
    SqliteSync, Step, StepContext, StepError,
};

const STEPS: usize = 10;
const CONCURRENT: usize = 100;

struct NoServices;

fn definition() -> SagaDefinition<NoServices> {
    (0..STEPS)
        .fold(SagaDefinition::builder("bench", 1), |builder, i| {
            builder.step(Step::new(
                format!("step-{i}"),
                |_svc: Arc<NoServices>, _cx: StepContext| async { Ok::<_, StepError>(1u8) },
                |_svc, _cx| async { Ok::<_, std::io::Error>(()) },
            ))
        })
        .build()
        .expect("valid")
}

/// Runs `iters` rounds of `sagas` concurrent sagas and returns the time.
fn run(
    runtime: &tokio::runtime::Runtime,
    executor: &SagaExecutor<NoServices>,
    def: &SagaDefinition<NoServices>,
    sagas: usize,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let mut handles = Vec::with_capacity(sagas);
            for _ in 0..sagas {
                handles.push(executor.start(def, &()).await.expect("started"));
            }
            for handle in handles {
                let outcome = handle.outcome().await.expect("finished");
                assert!(matches!(outcome, SagaOutcome::Completed(_)));
            }
        }
        started.elapsed()
    })
}

fn bench_log(c: &mut Criterion, name: &str, log: impl SagaLog) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let executor = SagaExecutor::builder(NoServices, log)
        .owner("bench")
        .build()
        .expect("valid");
    let def = definition();
    let mut group = c.benchmark_group(format!("saga/{name}"));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(10);
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| run(&runtime, &executor, &def, 1, iters))
    });
    group.throughput(Throughput::Elements((STEPS * CONCURRENT) as u64));
    group.bench_function(format!("{CONCURRENT}-concurrent"), |b| {
        b.iter_custom(|iters| run(&runtime, &executor, &def, CONCURRENT, iters))
    });
    group.finish();
}

fn steps_per_second(c: &mut Criterion) {
    bench_log(c, "memory", MemoryLog::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let full = SqliteLog::open(dir.path().join("full.db")).expect("open");
    bench_log(c, "sqlite-full", full);
    let normal = SqliteLogConfig::builder()
        .synchronous(SqliteSync::Normal)
        .build()
        .expect("valid");
    let normal = SqliteLog::open_with(dir.path().join("normal.db"), normal).expect("open");
    bench_log(c, "sqlite-normal", normal);
    let unbatched = SqliteLogConfig::builder()
        .max_batch(1)
        .build()
        .expect("valid");
    let unbatched = SqliteLog::open_with(dir.path().join("unbatched.db"), unbatched).expect("open");
    bench_log(c, "sqlite-full-no-group-commit", unbatched);
}

criterion_group!(benches, steps_per_second);
criterion_main!(benches);
