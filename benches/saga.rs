//! Saga steps per second with the in-memory and the SQLite log, one saga
//! at a time and many at once, next to the disk's own sync rate.
//!
//! Each step writes two records (started, completed); the executor hands
//! a step's completion to the log together with the next step's start,
//! and a saga's creation together with its first step's start, so the
//! SQLite log makes one durable commit (`synchronous = FULL`) per step
//! and one more per saga (its end, with the last completion): 11 for a
//! saga of 10 steps. It groups the records of concurrent sagas into one
//! transaction.
//!
//! The disk's sync rate is probed as a reused WAL is written: one 4 KiB
//! block at the next offset of a file written beforehand, then
//! `fdatasync` (and `fsync`, what the bundled SQLite calls unless built
//! with `LIBSQLITE3_FLAGS=-DHAVE_FDATASYNC`, as this repository's
//! `.cargo/config.toml` does). A commit writes a few such blocks; one
//! saga at a time cannot make more commits per second than the probe
//! makes syncs.
//!
//! Criterion's `thrpt` column is steps per second. The disk is shared
//! with whatever else runs, so the summary printed at the end measures
//! each case again in short slices interleaved with slices of the probe,
//! and gives the ratio of the two rates measured in the same seconds.

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

/// A file in the log's directory written and synced as a reused WAL is.
struct SyncProbe {
    file: std::fs::File,
    path: std::path::PathBuf,
    block: u64,
}

/// The probe file's size: about a WAL's between two checkpoints.
const PROBE_BLOCKS: u64 = 1024;
const BLOCK: [u8; 4096] = [0x5a; 4096];

impl SyncProbe {
    fn new(dir: &Path) -> Self {
        let path = dir.join("sync-probe");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .expect("probe file");
        for _ in 0..PROBE_BLOCKS {
            file.write_all(&BLOCK).expect("written");
        }
        file.sync_all().expect("synced");
        Self {
            file,
            path,
            block: 0,
        }
    }

    /// Writes and syncs blocks for `span`; returns how many and the time.
    fn run(
        &mut self,
        span: Duration,
        sync: fn(&std::fs::File) -> std::io::Result<()>,
    ) -> (u64, Duration) {
        let mut syncs = 0u64;
        let started = Instant::now();
        while started.elapsed() < span {
            let offset = (self.block % PROBE_BLOCKS) * BLOCK.len() as u64;
            self.file.seek(SeekFrom::Start(offset)).expect("sought");
            self.file.write_all(&BLOCK).expect("written");
            sync(&self.file).expect("synced");
            self.block += 1;
            syncs += 1;
        }
        (syncs, started.elapsed())
    }
}

impl Drop for SyncProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Syncs per second over one second.
fn sync_rate(dir: &Path, sync: fn(&std::fs::File) -> std::io::Result<()>) -> f64 {
    let (syncs, took) = SyncProbe::new(dir).run(Duration::from_secs(1), sync);
    syncs as f64 / took.as_secs_f64()
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

/// Each case's steps/s and the disk's fdatasync/s, measured in the same
/// seconds, for the summary.
type Summary = RefCell<Vec<(String, f64, f64)>>;

/// Slices of the interleaved measurement.
const SLICES: u32 = 20;
const SLICE: Duration = Duration::from_millis(100);

/// Steps/s of the case and the probe's fdatasync/s, measured in
/// alternating slices of about 100 ms each, and the steps run.
fn interleaved(
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    executor: &SagaExecutor<NoServices>,
    def: &SagaDefinition<NoServices>,
    sagas: usize,
) -> (f64, f64, u64) {
    let mut probe = SyncProbe::new(dir);
    let (mut syncs, mut sync_time) = (0u64, Duration::ZERO);
    let (mut steps, mut step_time) = (0u64, Duration::ZERO);
    for _ in 0..SLICES {
        let (n, took) = probe.run(SLICE, std::fs::File::sync_data);
        syncs += n;
        sync_time += took;
        let started = step_time;
        while step_time - started < SLICE {
            step_time += run(runtime, executor, def, sagas, 1);
            steps += (STEPS * sagas) as u64;
        }
    }
    (
        steps as f64 / step_time.as_secs_f64(),
        syncs as f64 / sync_time.as_secs_f64(),
        steps,
    )
}

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
        // Every step the case ran, warm-up included: with `strace -c`,
        // syncs per step.
        let mut ran = 0u64;
        group.bench_function(&case, |b| {
            b.iter_custom(|iters| {
                ran += iters * (STEPS * sagas) as u64;
                run(&runtime, &executor, &def, sagas, iters)
            })
        });
        if ran > 0 {
            let (rate, sync, steps) = interleaved(dir, &runtime, &executor, &def, sagas);
            let case = format!("saga/{name}/{case} ({} steps)", ran + steps);
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
        "disk under {}: {fdatasync:.0} write+fdatasync/s, {fsync:.0} write+fsync/s (4 KiB blocks)",
        dir.path().display()
    );
    println!(
        "bundled SQLite built with LIBSQLITE3_FLAGS={:?} (with -DHAVE_FDATASYNC it calls fdatasync, else fsync)",
        option_env!("LIBSQLITE3_FLAGS").unwrap_or("")
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
        "\nsteps/s against the disk's write+fdatasync/s, measured in {SLICES} alternating slices of {SLICE:?} each"
    );
    for (case, rate, sync) in summary.into_inner() {
        println!(
            "  {case:<55} {rate:>8.0} steps/s  {sync:>6.0} fdatasync/s  = {:>6.2} x",
            rate / sync
        );
    }
}

criterion_group!(benches, steps_per_second);
criterion_main!(benches);
