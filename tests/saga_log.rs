//! The `SagaLog` contract, run against every backend built by default.

mod saga_log_contract;

use palisade::saga::MemoryLog;

#[tokio::test(start_paused = true)]
async fn memory_log_keeps_the_saga_log_contract() {
    saga_log_contract::all(&MemoryLog::new()).await;
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
