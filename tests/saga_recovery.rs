//! Crash injection: the executor is stopped at every record boundary (its
//! log hangs before or after the k-th append commits, and the executor is
//! dropped), a new executor recovers the same SQLite file, and every saga
//! must end completed or compensated, with every effect applied once and
//! undone at most once, as a service that de-duplicates by idempotency key
//! observes it.

#![cfg(feature = "sqlite")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[path = "support/faulty_log.rs"]
mod faulty_log;

use faulty_log::{Faults, FaultyLog};
use palisade::backoff::Backoff;
use palisade::saga::{
    BoxFuture, Lease, LogError, RecordKind, SagaDefinition, SagaError, SagaExecutor, SagaId,
    SagaLog, SagaOutcome, SagaState, SqliteLog, SqliteLogConfig, SqliteSync, Step, StepContext,
    StepError,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use tokio::sync::Notify;

const STEPS: [&str; 5] = ["reserve", "charge", "notify", "pack", "ship"];

/// What the warehouse does wrong, for one saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The step's action is refused (changes nothing).
    Refuse(usize),
    /// The step's action takes effect but the reply is lost.
    LoseReply(usize),
    /// As `Refuse`, and the first compensation of step `.1` fails once.
    RefuseAndUndoFailsOnce(usize, usize),
}

/// A service that de-duplicates by idempotency key, like a real one.
#[derive(Debug, Default)]
struct Warehouse {
    faults: Mutex<HashMap<SagaId, Fault>>,
    /// Action key -> the effect is in place.
    effects: Mutex<HashMap<String, bool>>,
    /// Undo key -> effects actually reverted under it.
    reverted: Mutex<HashMap<String, u32>>,
    /// Every call, by key (re-runs included).
    calls: Mutex<HashMap<String, u32>>,
    undo_failed: Mutex<HashMap<SagaId, bool>>,
}

impl Warehouse {
    fn fault(&self, saga: SagaId) -> Fault {
        self.faults
            .lock()
            .get(&saga)
            .copied()
            .unwrap_or(Fault::None)
    }

    fn count_call(&self, key: &str) {
        *self.calls.lock().entry(key.to_owned()).or_default() += 1;
    }

    fn act(&self, cx: &StepContext, index: usize) -> Result<String, StepError> {
        let key = cx.idempotency_key();
        self.count_call(&key);
        let fault = self.fault(cx.saga_id());
        if matches!(fault, Fault::Refuse(i) | Fault::RefuseAndUndoFailsOnce(i, _) if i == index) {
            return Err(StepError::no_effect("refused"));
        }
        // Applying twice under one key is a no-op.
        self.effects.lock().entry(key).or_insert(true);
        if fault == Fault::LoseReply(index) {
            return Err(StepError::unknown("reply lost"));
        }
        Ok(format!("{}-done", cx.step()))
    }

    fn undo(&self, cx: &StepContext, index: usize) -> Result<(), std::io::Error> {
        let key = cx.idempotency_key();
        self.count_call(&key);
        if let Fault::RefuseAndUndoFailsOnce(_, u) = self.fault(cx.saga_id()) {
            let mut failed = self.undo_failed.lock();
            if u == index && !failed.get(&cx.saga_id()).copied().unwrap_or(false) {
                failed.insert(cx.saga_id(), true);
                return Err(std::io::Error::other("warehouse busy"));
            }
        }
        let action_key = format!("{}:{}:action", cx.saga_id(), cx.step());
        let mut reverted = self.reverted.lock();
        if reverted.contains_key(&key) {
            return Ok(()); // de-duplicated
        }
        let mut effects = self.effects.lock();
        match effects.get_mut(&action_key) {
            Some(in_place @ true) => {
                *in_place = false;
                reverted.insert(key, 1);
            }
            // Undoing what never happened is tolerated (and remembered).
            _ => {
                reverted.insert(key, 0);
            }
        }
        Ok(())
    }
}

fn definition() -> SagaDefinition<Warehouse> {
    let quick = || {
        Backoff::constant(Duration::from_millis(1))
            .build()
            .expect("valid")
    };
    let step = |index: usize| {
        Step::new(
            STEPS[index],
            move |w: Arc<Warehouse>, cx: StepContext| async move { w.act(&cx, index) },
            move |w: Arc<Warehouse>, cx: StepContext| async move { w.undo(&cx, index) },
        )
        .compensation_retry(quick(), 3)
    };
    SagaDefinition::builder("warehouse", 1)
        .step(step(0))
        .parallel([step(1), step(2)])
        .step(step(3))
        .step(step(4))
        .build()
        .expect("valid")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// The k-th append never reaches the log.
    BeforeCommit,
    /// The k-th append commits but is never acknowledged.
    AfterCommit,
}

/// A log that hangs from the k-th append on (counting from 0).
#[derive(Debug)]
struct CrashingLog {
    inner: SqliteLog,
    appends: AtomicUsize,
    crash_at: usize,
    mode: Crash,
    crashed: Arc<Notify>,
}

impl Faults for CrashingLog {
    type Inner = SqliteLog;

    fn inner(&self) -> &SqliteLog {
        &self.inner
    }
    fn backend(&self) -> &'static str {
        "crashing"
    }
    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        let n = self.appends.fetch_add(1, Ordering::SeqCst);
        if n < self.crash_at {
            return self.inner.append(lease, record);
        }
        if n == self.crash_at {
            self.crashed.notify_one();
        }
        let commit = (n == self.crash_at && self.mode == Crash::AfterCommit)
            .then(|| self.inner.append(lease, record));
        Box::pin(async move {
            if let Some(commit) = commit {
                let _ = commit.await;
            }
            std::future::pending().await
        })
    }
}

fn open(path: &Path) -> SqliteLog {
    // NORMAL keeps the tests quick; a crash of the process (not of the
    // machine) loses nothing in WAL mode either way.
    let config = SqliteLogConfig::builder()
        .synchronous(SqliteSync::Normal)
        .build()
        .expect("valid");
    SqliteLog::open_with(path, config).expect("open log")
}

fn executor(warehouse: &Arc<Warehouse>, log: impl SagaLog) -> SagaExecutor<Warehouse> {
    SagaExecutor::builder(Arc::clone(warehouse), log)
        .owner("warehouse-node")
        .build()
        .expect("valid")
}

/// What happened in one scenario.
#[derive(Debug)]
struct Run {
    crashed: bool,
}

/// Starts one saga per fault, crashes at append `crash_at`, recovers on a
/// new executor and checks the invariants.
async fn crash_and_recover(faults: &[Fault], crash_at: usize, mode: Crash) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sagas.db");
    let warehouse = Arc::new(Warehouse::default());
    let crashed = Arc::new(Notify::new());
    let log = FaultyLog(CrashingLog {
        inner: open(&path),
        appends: AtomicUsize::new(0),
        crash_at,
        mode,
        crashed: Arc::clone(&crashed),
    });
    let def = definition();
    let first = executor(&warehouse, log);
    let mut ids = Vec::new();
    let mut handles = Vec::new();
    for fault in faults {
        let id = SagaId::random();
        warehouse.faults.lock().insert(id, *fault);
        ids.push(id);
    }
    for id in &ids {
        handles.push(
            first
                .start_with_id(*id, &def, &"order")
                .await
                .expect("started"),
        );
    }
    let all_done = async {
        for handle in handles {
            let _ = handle.outcome().await;
        }
    };
    let did_crash = tokio::select! {
        () = crashed.notified() => true,
        () = all_done => false,
    };
    drop(first); // the crash: every saga stops where it is

    let second = executor(&warehouse, open(&path));
    second.register(&def);
    let recovery = second.recover().await.expect("recover");
    assert!(recovery.failed.is_empty(), "{:?}", recovery.failed);
    for handle in recovery.resumed {
        let outcome = tokio::time::timeout(Duration::from_secs(30), handle.outcome())
            .await
            .expect("recovered saga finishes in time")
            .expect("recovered saga ends");
        assert!(!matches!(outcome, SagaOutcome::Stuck(_)), "{outcome:?}");
    }
    for (id, fault) in ids.iter().zip(faults) {
        check_invariants(&second, &warehouse, *id, *fault, crash_at, mode).await;
    }
    Run { crashed: did_crash }
}

async fn check_invariants(
    exec: &SagaExecutor<Warehouse>,
    warehouse: &Warehouse,
    id: SagaId,
    fault: Fault,
    crash_at: usize,
    mode: Crash,
) {
    let ctx = format!("saga {id} fault {fault:?} crash at {crash_at} {mode:?}");
    let state = exec.status(id).await.expect("status").state;
    let effects = warehouse.effects.lock().clone();
    let reverted = warehouse.reverted.lock().clone();
    let calls = warehouse.calls.lock().clone();
    let in_place = |step: &str| effects.get(&format!("{id}:{step}:action")).copied();
    match fault {
        Fault::None => {
            assert_eq!(state, SagaState::Completed, "{ctx}");
            for step in STEPS {
                assert_eq!(in_place(step), Some(true), "{ctx}: {step} applied");
                assert!(
                    !reverted.contains_key(&format!("{id}:{step}:undo")),
                    "{ctx}"
                );
            }
        }
        _ => {
            assert_eq!(state, SagaState::Compensated, "{ctx}");
            for step in STEPS {
                assert_ne!(in_place(step), Some(true), "{ctx}: {step} left in place");
                let undone = reverted
                    .get(&format!("{id}:{step}:undo"))
                    .copied()
                    .unwrap_or(0);
                let applied = effects.contains_key(&format!("{id}:{step}:action"));
                assert_eq!(
                    undone,
                    u32::from(applied),
                    "{ctx}: {step} undone once per effect"
                );
            }
        }
    }
    // One crash re-runs a call at most once (a failing undo adds one try).
    for step in STEPS {
        let action = calls
            .get(&format!("{id}:{step}:action"))
            .copied()
            .unwrap_or(0);
        let undo = calls
            .get(&format!("{id}:{step}:undo"))
            .copied()
            .unwrap_or(0);
        assert!(action <= 2, "{ctx}: {step} action called {action} times");
        assert!(undo <= 3, "{ctx}: {step} undo called {undo} times");
    }
    let history = exec.history(id).await.expect("history");
    assert!(
        matches!(
            history.last().map(|r| &r.kind),
            Some(RecordKind::SagaFinished { .. })
        ),
        "{ctx}"
    );
}

const FAULTS: [Fault; 5] = [
    Fault::None,
    Fault::Refuse(3),
    Fault::LoseReply(2),
    Fault::Refuse(1),
    Fault::RefuseAndUndoFailsOnce(4, 3),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_record_boundary_is_recovered() {
    let mut scenarios = 0;
    for fault in FAULTS {
        for mode in [Crash::BeforeCommit, Crash::AfterCommit] {
            let mut crash_at = 0;
            loop {
                let run = crash_and_recover(&[fault], crash_at, mode).await;
                scenarios += 1;
                if !run.crashed {
                    break; // past the saga's last record
                }
                crash_at += 1;
            }
        }
    }
    // Every boundary of every fault, in both modes, plus the final clean runs.
    assert!(scenarios > 100, "{scenarios} scenarios");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_among_concurrent_sagas_is_recovered() {
    for crash_at in [0, 7, 19, 33, 50] {
        let run = crash_and_recover(&FAULTS, crash_at, Crash::AfterCommit).await;
        assert!(run.crashed);
    }
}

#[tokio::test]
async fn a_corrupt_record_is_reported_with_its_saga_id_and_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sagas.db");
    let warehouse = Arc::new(Warehouse::default());
    let crashed = Arc::new(Notify::new());
    let def = definition();
    let first = executor(
        &warehouse,
        FaultyLog(CrashingLog {
            inner: open(&path),
            appends: AtomicUsize::new(0),
            crash_at: 3,
            mode: Crash::BeforeCommit,
            crashed: Arc::clone(&crashed),
        }),
    );
    let handle = first.start(&def, &"order").await.unwrap();
    let id = handle.id();
    crashed.notified().await;
    drop(first);
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        let changed = db
            .execute(
                "UPDATE saga_record SET body = '{not json' WHERE saga = ?1 AND seq = 2",
                [id.to_string()],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let second = executor(&warehouse, open(&path));
    second.register(&def);
    let recovery = second.recover().await.unwrap();
    assert!(recovery.resumed.is_empty());
    let (failed, error) = &recovery.failed[0];
    assert_eq!(*failed, id);
    assert!(
        matches!(error, SagaError::Log(LogError::Corrupt { saga, seq: Some(2), .. }) if *saga == id),
        "{error:?}"
    );
    assert!(error.to_string().contains(&id.to_string()));
    assert!(matches!(
        second.history(id).await,
        Err(SagaError::Log(LogError::Corrupt { .. }))
    ));
    // Not skipped: it is still unfinished, and reported again next time.
    assert_eq!(second.status(id).await.unwrap().state, SagaState::Running);
    assert_eq!(second.recover().await.unwrap().failed.len(), 1);
}

fn any_fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::None),
        (0..STEPS.len()).prop_map(Fault::Refuse),
        (0..STEPS.len()).prop_map(Fault::LoseReply),
        (1..STEPS.len())
            .prop_flat_map(|f| (0..f).prop_map(move |u| Fault::RefuseAndUndoFailsOnce(f, u))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_crash_points_among_random_faults_are_recovered(
        faults in proptest::collection::vec(any_fault(), 1..4),
        crash_at in 0usize..60,
        after_commit in any::<bool>(),
    ) {
        let mode = if after_commit { Crash::AfterCommit } else { Crash::BeforeCommit };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(crash_and_recover(&faults, crash_at, mode));
    }
}
