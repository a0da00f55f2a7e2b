//! Durable appends per second on the PostgreSQL saga log: one saga at a
//! time (latency of one transaction), and 64 sagas appending at once
//! (throughput with a pool of 16 connections).
//!
//! Needs a server: `PALISADE_POSTGRES_URL=... cargo bench --features postgres
//! --bench saga_postgres` (scripts/integration-postgres.sh runs it with
//! `PALISADE_PG_BENCH=1`). Without the variable it prints a note and
//! measures nothing.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::saga::log::{PostgresLog, PostgresLogConfig};
use palisade::saga::{Lease, NewSaga, OwnerId, RecordKind, SagaId, SagaLog};

const CONCURRENT: usize = 64;

fn record() -> RecordKind {
    RecordKind::StepStarted {
        step: "reserve-inventory".into(),
        attempt: 1,
    }
}

async fn setup(url: &str, sagas: usize) -> (PostgresLog, Vec<Lease>) {
    let schema = format!("bench_{:016x}", SagaId::random().as_u128() as u64);
    let config = PostgresLogConfig::builder(url)
        .schema(schema)
        .max_connections(16)
        .build()
        .expect("valid config");
    let log = PostgresLog::connect(config).await.expect("connect");
    let owner = OwnerId::new("bench").expect("valid owner");
    let mut leases = Vec::with_capacity(sagas);
    for _ in 0..sagas {
        let saga = NewSaga {
            id: SagaId::random(),
            definition: "order".into(),
            version: 1,
            input: b"{\"order\":42}".to_vec(),
        };
        let lease = log
            .create(saga, &owner, Duration::from_secs(3600))
            .await
            .expect("create");
        leases.push(lease);
    }
    (log, leases)
}

fn appends(c: &mut Criterion) {
    let Ok(url) = std::env::var("PALISADE_POSTGRES_URL") else {
        eprintln!(
            "saga_postgres bench: PALISADE_POSTGRES_URL is not set, nothing measured \
             (scripts/integration-postgres.sh with PALISADE_PG_BENCH=1 sets it)"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("saga_postgres");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);

    let (log, leases) = runtime.block_on(setup(&url, CONCURRENT));
    group.throughput(Throughput::Elements(1));
    group.bench_function("append/one-saga", |b| {
        b.iter(|| {
            runtime
                .block_on(log.append(&leases[0], record()))
                .expect("append")
        })
    });

    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group.bench_function("append/64-sagas-at-once", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let appends = leases.iter().map(|lease| log.append(lease, record()));
                for seq in futures::future::join_all(appends).await {
                    seq.expect("append");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
