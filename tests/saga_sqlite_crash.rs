//! The SQLite log's group commit never acknowledges a record before the
//! transaction holding it committed: a process appending from many tasks
//! at once (so that the writer is always in the middle of a batch) is
//! killed with SIGKILL, and every record it saw acknowledged is in the
//! reopened file.
#![cfg(all(feature = "sqlite", unix))]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use palisade::saga::{LogError, NewSaga, OwnerId, RecordKind, SagaId, SagaLog, SqliteLog};

/// Set (to the log's path) in the child process only.
const CHILD: &str = "PALISADE_SAGA_CRASH_CHILD";
const SAGAS: usize = 40;
/// Acknowledgements the parent waits for before it kills the child.
const KILL_AFTER: usize = 2_000;

/// The child's side of
/// [`every_record_acknowledged_before_a_kill_is_in_the_file`]: appends to
/// `SAGAS` sagas at once until it is killed, printing `ack <saga> <seq>`
/// once each append (or two-record batch) is acknowledged. Returns at
/// once when run as an ordinary test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appends_until_killed() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let log = Arc::new(SqliteLog::open(path).expect("opened"));
    let owner = OwnerId::new("crash").expect("valid owner");
    let mut tasks = Vec::new();
    for task in 0..SAGAS {
        let log = Arc::clone(&log);
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            let id = SagaId::random();
            let saga = NewSaga {
                id,
                definition: "crash".into(),
                version: 1,
                input: Vec::new(),
            };
            let lease = log
                .create(saga, &owner, Duration::from_secs(600))
                .await
                .expect("created");
            print_ack(id, 0);
            loop {
                let seq = if task % 2 == 0 {
                    log.append(&lease, RecordKind::StuckRetried).await
                } else {
                    let batch = vec![RecordKind::StuckRetried, RecordKind::StuckRetried];
                    log.append_batch(&lease, batch)
                        .await
                        .map(|last| last.expect("a non-empty batch"))
                };
                match seq {
                    Ok(seq) => print_ack(id, seq),
                    Err(error) => return Err(error),
                }
            }
        }));
    }
    for task in tasks {
        let ended: Result<(), LogError> = task.await.expect("appending task");
        ended.expect("appended until killed");
    }
}

fn print_ack(saga: SagaId, seq: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ack {saga} {seq}").expect("printed");
    out.flush().expect("flushed");
}

#[tokio::test]
async fn every_record_acknowledged_before_a_kill_is_in_the_file() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sagas.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_appends_until_killed", "--nocapture"])
        .env(CHILD, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("child started");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    // The highest sequence number acknowledged per saga.
    let mut acknowledged: HashMap<SagaId, u64> = HashMap::new();
    let mut acks = 0;
    let read = |line: String, acknowledged: &mut HashMap<SagaId, u64>| {
        let Some(ack) = line.strip_prefix("ack ") else {
            return false;
        };
        let (saga, seq) = ack.split_once(' ').expect("ack <saga> <seq>");
        let saga: SagaId = saga.parse().expect("saga id");
        let seq: u64 = seq.parse().expect("sequence number");
        let highest = acknowledged.entry(saga).or_default();
        *highest = (*highest).max(seq);
        true
    };
    for line in lines.by_ref() {
        if read(line.expect("child output"), &mut acknowledged) {
            acks += 1;
            if acks == KILL_AFTER {
                break;
            }
        }
    }
    assert_eq!(acks, KILL_AFTER, "the child stopped before it was killed");
    child.kill().expect("killed");
    // What the child printed before it died was acknowledged too.
    for line in lines {
        let Ok(line) = line else { break };
        read(line, &mut acknowledged);
    }
    let status = child.wait().expect("reaped");
    assert!(!status.success(), "the child was killed, not finished");

    let log = SqliteLog::open(&path).expect("reopened after the kill");
    assert!(!acknowledged.is_empty());
    for (saga, highest) in acknowledged {
        let history = log.history(saga).await.expect("readable history");
        assert!(
            history.len() as u64 > highest,
            "saga {saga}: record {highest} was acknowledged, the file has {} records",
            history.len()
        );
    }
}
