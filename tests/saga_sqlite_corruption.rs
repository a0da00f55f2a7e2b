//! A corrupt SQLite saga log is reported, never read around: each test
//! writes a saga through the log, corrupts the real database file with
//! rusqlite, and checks what `recover()`, `status()` and `history()` say.
#![cfg(feature = "sqlite")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade::saga::{
    LogError, NewSaga, OwnerId, RecordKind, SagaDefinition, SagaError, SagaExecutor, SagaId,
    SagaLog, SqliteLog, Step, StepContext, StepError,
};
use rusqlite::params;

const OWNER: &str = "corruption-test";

struct Services;

fn definition() -> SagaDefinition<Services> {
    SagaDefinition::builder("corruptible", 1)
        .step(Step::without_compensation(
            "a",
            |_svc: Arc<Services>, _cx: StepContext| async move { Ok::<_, StepError>(()) },
        ))
        .build()
        .expect("valid")
}

/// A log file holding one running saga with `started` step_started records
/// after its creation (sequence numbers 0 ..= started), closed: the file
/// holds everything and no WAL is left.
async fn log_with_a_running_saga(dir: &Path, started: u32) -> (PathBuf, SagaId) {
    let path = dir.join("sagas.db");
    let log = SqliteLog::open(&path).expect("opened");
    let id = SagaId::random();
    let owner = OwnerId::new(OWNER).expect("valid owner");
    let new = NewSaga {
        id,
        definition: "corruptible".into(),
        version: 1,
        input: b"null".to_vec(),
    };
    let lease = log
        .create(new, &owner, Duration::from_secs(30))
        .await
        .expect("created");
    for attempt in 1..=started {
        let record = RecordKind::StepStarted {
            step: "a".into(),
            attempt,
        };
        log.append(&lease, record).await.expect("appended");
    }
    log.close().await.expect("closed");
    (path, id)
}

fn corrupt(path: &Path, sql: &str, id: SagaId) {
    let connection = rusqlite::Connection::open(path).expect("opened with rusqlite");
    let changed = connection
        .execute(sql, params![id.to_string()])
        .expect("corrupted");
    assert!(changed > 0, "{sql} changed nothing");
}

fn executor(path: &Path) -> SagaExecutor<Services> {
    let executor = SagaExecutor::builder(Services, SqliteLog::open(path).expect("reopened"))
        .owner(OWNER)
        .build()
        .expect("valid executor");
    executor.register(&definition());
    executor
}

fn is_corrupt(error: &SagaError, saga: SagaId) -> bool {
    matches!(error, SagaError::Log(LogError::Corrupt { saga: s, .. }) if *s == saga)
}

/// `recover()` reports the saga as failed with `Corrupt`, resumes nothing.
async fn assert_recovery_reports_corrupt(path: &Path, id: SagaId) {
    let recovery = executor(path).recover().await.expect("recovery ran");
    assert!(recovery.resumed.is_empty(), "resumed a corrupt saga");
    assert_eq!(recovery.failed.len(), 1, "{:?}", recovery.failed);
    let (saga, error) = &recovery.failed[0];
    assert_eq!(*saga, id);
    assert!(is_corrupt(error, id), "{error:?}");
}

#[tokio::test]
async fn a_deleted_last_record_is_corrupt_not_resumed_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, id) = log_with_a_running_saga(dir.path(), 3).await;
    corrupt(
        &path,
        "DELETE FROM saga_record WHERE saga = ?1 AND seq = 3",
        id,
    );
    let history = executor(&path).history(id).await;
    assert!(
        matches!(&history, Err(error) if is_corrupt(error, id)),
        "{history:?}"
    );
    assert_recovery_reports_corrupt(&path, id).await;
}

#[tokio::test]
async fn an_append_after_a_deleted_record_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, id) = log_with_a_running_saga(dir.path(), 2).await;
    corrupt(
        &path,
        "DELETE FROM saga_record WHERE saga = ?1 AND seq = 2",
        id,
    );
    let log = SqliteLog::open(&path).expect("reopened");
    let owner = OwnerId::new(OWNER).expect("valid owner");
    let lease = palisade::saga::Lease {
        saga: id,
        owner,
        epoch: 1,
    };
    let appended = log.append(&lease, RecordKind::StuckRetried).await;
    assert!(
        matches!(appended, Err(LogError::Corrupt { saga, .. }) if saga == id),
        "{appended:?}"
    );
}

#[tokio::test]
async fn undecodable_counters_are_corrupt_not_coerced() {
    for sql in [
        "UPDATE saga SET epoch = -5 WHERE id = ?1",
        "UPDATE saga SET records = -1 WHERE id = ?1",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, id) = log_with_a_running_saga(dir.path(), 1).await;
        corrupt(&path, sql, id);
        let status = executor(&path).status(id).await;
        assert!(
            matches!(&status, Err(error) if is_corrupt(error, id)),
            "{sql}: {status:?}"
        );
        assert_recovery_reports_corrupt(&path, id).await;
    }
}

#[tokio::test]
async fn a_saga_row_with_an_invalid_owner_or_state_is_reported_by_recovery() {
    for sql in [
        "UPDATE saga SET owner = '' WHERE id = ?1",
        "UPDATE saga SET state = 'sleeping' WHERE id = ?1",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, id) = log_with_a_running_saga(dir.path(), 1).await;
        corrupt(&path, sql, id);
        let status = executor(&path).status(id).await;
        assert!(
            matches!(&status, Err(error) if is_corrupt(error, id)),
            "{sql}: {status:?}"
        );
        assert_recovery_reports_corrupt(&path, id).await;
        // Reported again on the next recovery: the row was not rewritten.
        assert_recovery_reports_corrupt(&path, id).await;
    }
}

#[tokio::test]
async fn a_log_file_truncated_to_zero_bytes_does_not_open_as_a_new_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = log_with_a_running_saga(dir.path(), 1).await;
    // Closed: the WAL was copied into the file and deleted, so nothing
    // refills the file truncated here.
    assert!(!dir.path().join("sagas.db-wal").exists());
    std::fs::File::create(&path).expect("truncated");
    let opened = SqliteLog::open(&path);
    assert!(opened.is_err(), "an emptied log opened as a new one");
}

#[tokio::test]
async fn a_log_whose_tables_were_dropped_does_not_open_as_a_new_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = log_with_a_running_saga(dir.path(), 1).await;
    let connection = rusqlite::Connection::open(&path).expect("opened with rusqlite");
    connection
        .execute_batch("DROP TABLE saga_record; DROP TABLE saga;")
        .expect("dropped");
    drop(connection);
    assert!(SqliteLog::open(&path).is_err());
}

#[tokio::test]
async fn a_new_file_opens_and_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    drop(SqliteLog::open(&path).expect("created"));
    SqliteLog::open(&path).expect("reopened");
}
