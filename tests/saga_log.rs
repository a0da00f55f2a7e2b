//! The `SagaLog` contract, run against every backend built by default.

mod saga_log_contract;

use palisade::saga::MemoryLog;

#[tokio::test(start_paused = true)]
async fn memory_log_keeps_the_saga_log_contract() {
    saga_log_contract::all(&MemoryLog::new()).await;
}

/// The SQLite and memory logs write a batch in one transaction: a batch
/// refused at its second record leaves not even its first behind.
async fn a_refused_batch_leaves_nothing(log: &dyn palisade::saga::SagaLog) {
    use palisade::saga::{
        FinishedOutcome, LogError, NewSaga, OwnerId, RecordKind, SagaId, SagaState,
    };
    let id = SagaId::random();
    let new = NewSaga {
        id,
        definition: "d".into(),
        version: 1,
        input: Vec::new(),
    };
    let owner = OwnerId::new("a").unwrap();
    let lease = log
        .create(new, &owner, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let batch = vec![
        RecordKind::StuckRetried,
        RecordKind::SagaFinished {
            outcome: FinishedOutcome::Completed,
        },
        RecordKind::StuckRetried,
    ];
    let refused = log.append_batch(&lease, batch).await;
    assert!(
        matches!(refused, Err(LogError::Finished { .. })),
        "{refused:?}"
    );
    let summary = log.summary(id).await.unwrap();
    assert_eq!((summary.records, summary.state), (1, SagaState::Running));
    assert_eq!(log.history(id).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_memory_log_batch_is_all_or_nothing() {
    a_refused_batch_leaves_nothing(&MemoryLog::new()).await;
}

/// The SQLite and memory logs create a saga and its first records in one
/// transaction: a creation refused at its records leaves no saga behind.
async fn a_refused_creation_leaves_nothing(log: &dyn palisade::saga::SagaLog) {
    use palisade::saga::{FinishedOutcome, LogError, NewSaga, OwnerId, RecordKind, SagaId};
    let id = SagaId::random();
    let new = NewSaga {
        id,
        definition: "d".into(),
        version: 1,
        input: Vec::new(),
    };
    let owner = OwnerId::new("a").unwrap();
    let records = vec![
        RecordKind::SagaFinished {
            outcome: FinishedOutcome::Completed,
        },
        RecordKind::StuckRetried,
    ];
    let refused = log
        .create_with(new, &owner, std::time::Duration::from_secs(60), records)
        .await;
    assert!(
        matches!(refused, Err(LogError::Finished { .. })),
        "{refused:?}"
    );
    let summary = log.summary(id).await;
    assert!(
        matches!(summary, Err(LogError::NotFound { .. })),
        "{summary:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_memory_log_creation_is_all_or_nothing() {
    a_refused_creation_leaves_nothing(&MemoryLog::new()).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use palisade::saga::{
        LogError, NewSaga, OwnerId, RecordKind, SagaId, SagaLog, SqliteLog, SqliteLogConfig,
    };
    use std::time::Duration;

    use super::saga_log_contract;

    #[tokio::test]
    async fn sqlite_log_keeps_the_saga_log_contract() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path().join("sagas.db")).unwrap();
        saga_log_contract::all(&log).await;
    }

    #[tokio::test]
    async fn sqlite_log_without_group_commit_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteLogConfig::builder().max_batch(1).build().unwrap();
        let log = SqliteLog::open_with(dir.path().join("sagas.db"), config).unwrap();
        saga_log_contract::all(&log).await;
    }

    #[tokio::test]
    async fn a_sqlite_log_batch_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path().join("sagas.db")).unwrap();
        super::a_refused_batch_leaves_nothing(&log).await;
    }

    #[tokio::test]
    async fn a_sqlite_log_creation_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path().join("sagas.db")).unwrap();
        super::a_refused_creation_leaves_nothing(&log).await;
    }

    #[tokio::test]
    async fn close_commits_what_was_queued_and_refuses_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sagas.db");
        let log = SqliteLog::open(&path).unwrap();
        let owner = OwnerId::new("a").unwrap();
        let id = SagaId::random();
        let saga = NewSaga {
            id,
            definition: "d".into(),
            version: 1,
            input: vec![],
        };
        let lease = log
            .create(saga, &owner, Duration::from_secs(60))
            .await
            .unwrap();
        // Polled once, so queued (the queue has room), before the close.
        let writer = log.clone();
        let mut queued: Vec<_> = (0..20)
            .map(|_| writer.append(&lease, RecordKind::StuckRetried))
            .collect();
        for append in &mut queued {
            let _ = futures::poll!(append);
        }
        log.close().await.unwrap();
        // The file holds everything and no WAL is left.
        assert!(!dir.path().join("sagas.db-wal").exists());
        let mut acknowledged = 0;
        for append in queued {
            append.await.unwrap();
            acknowledged += 1;
        }
        let after = writer.append(&lease, RecordKind::StuckRetried).await;
        assert!(matches!(after, Err(LogError::Closed { .. })), "{after:?}");
        let reopened = SqliteLog::open(&path).unwrap();
        assert_eq!(
            reopened.summary(id).await.unwrap().records,
            1 + acknowledged
        );
    }

    #[tokio::test]
    async fn records_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sagas.db");
        let id = SagaId::random();
        let owner = OwnerId::new("a").unwrap();
        {
            let log = SqliteLog::open(&path).unwrap();
            let saga = NewSaga {
                id,
                definition: "d".into(),
                version: 1,
                input: vec![9],
            };
            let lease = log
                .create(saga, &owner, Duration::from_secs(60))
                .await
                .unwrap();
            log.append(&lease, RecordKind::StuckRetried).await.unwrap();
        }
        let log = SqliteLog::open(&path).unwrap();
        let history = log.history(id).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].kind, RecordKind::StuckRetried);
    }

    #[tokio::test]
    async fn concurrent_appends_are_each_acknowledged_with_their_own_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(SqliteLog::open(dir.path().join("sagas.db")).unwrap());
        let owner = OwnerId::new("a").unwrap();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let log = std::sync::Arc::clone(&log);
            let owner = owner.clone();
            tasks.push(tokio::spawn(async move {
                let id = SagaId::random();
                let saga = NewSaga {
                    id,
                    definition: "d".into(),
                    version: 1,
                    input: vec![],
                };
                let lease = log.create(saga, &owner, Duration::from_secs(60)).await?;
                let mut seqs = Vec::new();
                for _ in 0..20 {
                    seqs.push(log.append(&lease, RecordKind::StuckRetried).await?);
                }
                Ok::<_, LogError>(seqs)
            }));
        }
        for task in tasks {
            let seqs = task.await.unwrap().unwrap();
            assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
        }
    }

    #[tokio::test]
    async fn a_one_slot_queue_applies_backpressure_without_losing_operations() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteLogConfig::builder()
            .queue_capacity(1)
            .build()
            .unwrap();
        let log = SqliteLog::open_with(dir.path().join("sagas.db"), config).unwrap();
        let owner = palisade::saga::OwnerId::new("queue").unwrap();
        let creates = (0..50).map(|_| {
            let new = palisade::saga::NewSaga {
                id: palisade::saga::SagaId::random(),
                definition: "d".into(),
                version: 1,
                input: Vec::new(),
            };
            log.create(new, &owner, std::time::Duration::from_secs(60))
        });
        let results = futures::future::join_all(creates).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(log.list(None, None, 100).await.unwrap().len(), 50);
    }

    #[test]
    fn a_zero_queue_capacity_is_rejected() {
        let error = SqliteLogConfig::builder()
            .queue_capacity(0)
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("queue_capacity"), "{error}");
    }

    #[test]
    fn invalid_sqlite_settings_are_rejected_naming_the_field() {
        let err = SqliteLogConfig::builder().max_batch(0).build().unwrap_err();
        assert_eq!(err.field(), "max_batch");
        let err = SqliteLogConfig::builder()
            .busy_timeout(Duration::from_secs(7200))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "busy_timeout");
    }
}
