//! Saga steps per second with the in-memory and the SQLite log, one saga
//! at a time and many at once, next to the disk's own sync rate.
//!
//! Each step writes two records (started, completed); the executor hands
//! a step's completion to the log together with the next step's start,
//! so the SQLite log makes one durable commit (`synchronous = FULL`) per
//! step, and it groups the records of concurrent sagas into one
//! transaction. The bench first measures how many `write` + `fdatasync`
//! (and `write` + `fsync`, what the bundled SQLite calls) of a small file
//! the disk under the log's directory does per second: one saga at a
//! time cannot go faster than that, in steps per second.
//!
//! Criterion's `thrpt` column is steps per second; a summary with the
//! ratio to the sync rate is printed at the end.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
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

/// How many `write` + `sync` of a small file in `dir` the disk does per
/// second, over one second: the same 64 bytes rewritten in place, as a
/// log that reuses its blocks does.
fn sync_rate(dir: &Path, sync: fn(&std::fs::File) -> std::io::Result<()>) -> f64 {
    let path = dir.join("sync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("probe file");
    let mut syncs = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        file.seek(SeekFrom::Start(0)).expect("rewound");
        file.write_all(&[0x5a; 64]).expect("written");
        sync(&file).expect("synced");
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path).expect("probe removed");
    rate
}

/// Runs `iters` rounds of `sagas` concurrent sagas (all started at once)
/// and returns the time.
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
            let mut running = tokio::task::JoinSet::new();
            for _ in 0..sagas {
                let executor = executor.clone();
                let def = def.clone();
                running.spawn(async move {
                    let handle = executor.start(&def, &()).await.expect("started");
                    handle.outcome().await.expect("finished")
                });
            }
            while let Some(outcome) = running.join_next().await {
                let outcome = outcome.expect("saga task");
                assert!(matches!(outcome, SagaOutcome::Completed(_)));
            }
        }
        started.elapsed()
    })
}

/// Steps per second of each measured case and the disk's fdatasync rate
/// around it, for the summary.
type Summary = RefCell<Vec<(String, f64, f64)>>;

fn bench_log(c: &mut Criterion, summary: &Summary, dir: &Path, name: &str, log: impl SagaLog) {
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
    group.sample_size(10);
    for (case, sagas) in [
        ("sequential".to_owned(), 1),
        (format!("{CONCURRENT}-concurrent"), CONCURRENT),
    ] {
        group.throughput(Throughput::Elements((STEPS * sagas) as u64));
        let measured = RefCell::new((0u64, Duration::ZERO));
        // The disk is shared: its sync rate is taken right before and
        // right after each case, and the case compared with their mean.
        let sync_before = sync_rate(dir, std::fs::File::sync_data);
        group.bench_function(&case, |b| {
            b.iter_custom(|iters| {
                let took = run(&runtime, &executor, &def, sagas, iters);
                let mut measured = measured.borrow_mut();
                measured.0 += iters * (STEPS * sagas) as u64;
                measured.1 += took;
                took
            })
        });
        let (steps, took) = measured.into_inner();
        if !took.is_zero() {
            let sync = (sync_before + sync_rate(dir, std::fs::File::sync_data)) / 2.0;
            let rate = steps as f64 / took.as_secs_f64();
            let case = format!("saga/{name}/{case} ({steps} steps)");
            summary.borrow_mut().push((case, rate, sync));
        }
    }
    group.finish();
}

fn steps_per_second(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fdatasync = sync_rate(dir.path(), std::fs::File::sync_data);
    let fsync = sync_rate(dir.path(), std::fs::File::sync_all);
    println!(
        "disk under {}: {fdatasync:.0} write+fdatasync/s, {fsync:.0} write+fsync/s",
        dir.path().display()
    );
    let summary = Summary::default();
    bench_log(c, &summary, dir.path(), "memory", MemoryLog::new());
    let full = SqliteLog::open(dir.path().join("full.db")).expect("open");
    bench_log(c, &summary, dir.path(), "sqlite-full", full);
    let normal = SqliteLogConfig::builder()
        .synchronous(SqliteSync::Normal)
        .build()
        .expect("valid");
    let normal = SqliteLog::open_with(dir.path().join("normal.db"), normal).expect("open");
    bench_log(c, &summary, dir.path(), "sqlite-normal", normal);
    let unbatched = SqliteLogConfig::builder()
        .max_batch(1)
        .build()
        .expect("valid");
    let unbatched = SqliteLog::open_with(dir.path().join("unbatched.db"), unbatched).expect("open");
    bench_log(
        c,
        &summary,
        dir.path(),
        "sqlite-full-no-group-commit",
        unbatched,
    );
    println!(
        "\nsteps/s, warm-up included, against the disk's fdatasync/s measured around each case"
    );
    for (case, rate, sync) in summary.into_inner() {
        println!(
            "  {case:<62} {rate:>8.0} steps/s  {sync:>6.0} fdatasync/s  = {:>6.2} x",
            rate / sync
        );
    }
}

criterion_group!(benches, steps_per_second);
criterion_main!(benches);
