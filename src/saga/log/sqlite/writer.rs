//! The writer thread: group commit of the operations that queue up while a transaction commits.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::operations::{
    Sql, append, append_batch, claim, claim_unfinished, create, history, list, prune_finished,
    renew, summary,
};
use super::{BACKEND, unavailable};
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::log::{ClaimedSaga, Lease, ListCursor, LogError, NewSaga, SagaSummary};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

pub(super) type Reply<T> = oneshot::Sender<Result<T, LogError>>;

pub(super) enum Command {
    Create(NewSaga, OwnerId, Duration, Vec<RecordKind>, Reply<Lease>),
    Append(Lease, RecordKind, Reply<u64>),
    AppendBatch(Lease, Vec<RecordKind>, Reply<Option<u64>>),
    Renew(Lease, Duration, Reply<()>),
    Release(Lease, Reply<()>),
    Claim(SagaId, OwnerId, Duration, Reply<ClaimedSaga>),
    ClaimUnfinished(OwnerId, Duration, usize, Reply<Vec<ClaimedSaga>>),
    History(SagaId, Reply<Vec<LoggedRecord>>),
    Summary(SagaId, Reply<SagaSummary>),
    List(
        Option<SagaState>,
        Option<ListCursor>,
        usize,
        Reply<Vec<SagaSummary>>,
    ),
    Prune(SystemTime, usize, Reply<u64>),
    /// Commit what came before, refuse what comes after, close the
    /// database and then answer.
    Close(Reply<()>),
}

/// One operation's outcome, waiting for its transaction to commit.
enum Done {
    Lease(Reply<Lease>, Result<Lease, LogError>),
    Seq(Reply<u64>, Result<u64, LogError>),
    LastSeq(Reply<Option<u64>>, Result<Option<u64>, LogError>),
    Unit(Reply<()>, Result<(), LogError>),
    Claimed(Reply<ClaimedSaga>, Result<ClaimedSaga, LogError>),
    ClaimedMany(Reply<Vec<ClaimedSaga>>, Result<Vec<ClaimedSaga>, LogError>),
    History(
        Reply<Vec<LoggedRecord>>,
        Result<Vec<LoggedRecord>, LogError>,
    ),
    Summary(Reply<SagaSummary>, Result<SagaSummary, LogError>),
    List(Reply<Vec<SagaSummary>>, Result<Vec<SagaSummary>, LogError>),
}

impl Done {
    fn send(self) {
        // A dropped receiver means the caller stopped waiting.
        let _ = match self {
            Done::Lease(r, v) => r.send(v).map_err(drop),
            Done::Seq(r, v) => r.send(v).map_err(drop),
            Done::LastSeq(r, v) => r.send(v).map_err(drop),
            Done::Unit(r, v) => r.send(v).map_err(drop),
            Done::Claimed(r, v) => r.send(v).map_err(drop),
            Done::ClaimedMany(r, v) => r.send(v).map_err(drop),
            Done::History(r, v) => r.send(v).map_err(drop),
            Done::Summary(r, v) => r.send(v).map_err(drop),
            Done::List(r, v) => r.send(v).map_err(drop),
        };
    }

    /// Replaces the outcome with `error` (the transaction did not commit).
    fn fail(self, error: LogError) {
        match self {
            Done::Lease(r, _) => Done::Lease(r, Err(error)),
            Done::Seq(r, _) => Done::Seq(r, Err(error)),
            Done::LastSeq(r, _) => Done::LastSeq(r, Err(error)),
            Done::Unit(r, _) => Done::Unit(r, Err(error)),
            Done::Claimed(r, _) => Done::Claimed(r, Err(error)),
            Done::ClaimedMany(r, _) => Done::ClaimedMany(r, Err(error)),
            Done::History(r, _) => Done::History(r, Err(error)),
            Done::Summary(r, _) => Done::Summary(r, Err(error)),
            Done::List(r, _) => Done::List(r, Err(error)),
        }
        .send();
    }
}

/// Operations applied since the last checkpoint after which the writer
/// checkpoints the WAL as soon as its queue is empty. A step's commit
/// writes about three pages, so the WAL stays near SQLite's own default
/// of 1,000 pages.
const CHECKPOINT_AFTER: usize = 256;

/// Operations applied since the last checkpoint after which the writer
/// checkpoints even though operations are waiting: bounds the WAL's size
/// under a load that never lets the queue empty.
const CHECKPOINT_AT_THE_LATEST: usize = 16 * CHECKPOINT_AFTER;

pub(super) struct Writer {
    pub(super) connection: Connection,
    /// Operations applied since the last checkpoint.
    pub(super) since_checkpoint: usize,
}

impl Writer {
    pub(super) fn run(mut self, mut receiver: mpsc::Receiver<Command>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        let mut closing = None;
        while let Some(first) = receiver.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                if let Command::Close(reply) = command {
                    closing = Some(reply);
                    break;
                }
                batch.push(command);
                if batch.len() < max_batch {
                    next = receiver.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if closing.is_some() {
                break;
            }
            self.checkpoint_if_due(receiver.is_empty());
        }
        // Closing (or every handle is gone): what is still queued came
        // after the close and is refused.
        receiver.close();
        while let Ok(command) = receiver.try_recv() {
            fail_command(command, LogError::Closed { backend: BACKEND });
        }
        // Closing the last connection checkpoints the WAL into the
        // database file and deletes it.
        let closed = self
            .connection
            .close()
            .map_err(|(_, error)| unavailable(error));
        if let Some(reply) = closing {
            let _ = reply.send(closed);
        } else if let Err(error) = closed {
            tracing::warn!(%error, "sqlite saga log not closed cleanly");
        }
    }

    /// Copies the WAL into the database file once enough was written
    /// (SQLite's automatic checkpoint is off). It runs here, after the
    /// batch's operations were answered and preferably while nothing
    /// waits, instead of inside a commit: no acknowledged operation waits
    /// for a checkpoint's syncs. A checkpoint that copies every frame lets
    /// the next commit write the WAL from its start again, over the same
    /// blocks, instead of growing the file.
    fn checkpoint_if_due(&mut self, idle: bool) {
        let due = if idle {
            CHECKPOINT_AFTER
        } else {
            CHECKPOINT_AT_THE_LATEST
        };
        if self.since_checkpoint < due {
            return;
        }
        self.since_checkpoint = 0;
        let checkpoint = self
            .connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(0)
            });
        if let Err(error) = checkpoint {
            tracing::warn!(%error, "sqlite saga log checkpoint failed; the WAL keeps growing");
        }
    }

    /// Applies a batch in one transaction and answers each operation only
    /// after the commit. If any statement or the commit fails, nothing of
    /// the batch happened and every operation in it fails with
    /// [`LogError::Unavailable`].
    fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        let tx = match self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(error) => {
                let error = unavailable(error);
                for command in batch.drain(..) {
                    fail_command(command, error.clone());
                }
                return;
            }
        };
        self.since_checkpoint += batch.len();
        let mut done = Vec::with_capacity(batch.len());
        let mut failure: Option<LogError> = None;
        for command in batch.drain(..) {
            match &failure {
                Some(error) => fail_command(command, error.clone()),
                None => {
                    let (d, error) = apply(&tx, command);
                    done.push(d);
                    failure = error;
                }
            }
        }
        if failure.is_none() {
            if let Err(error) = tx.commit() {
                failure = Some(unavailable(error));
            }
        } else {
            drop(tx); // rolls back
        }
        match failure {
            None => done.into_iter().for_each(Done::send),
            Some(error) => {
                tracing::warn!(%error, operations = done.len(), "sqlite saga log transaction failed");
                for d in done {
                    d.fail(error.clone());
                }
            }
        }
    }
}

fn fail_command(command: Command, error: LogError) {
    match command {
        Command::Create(.., r) => drop(r.send(Err(error))),
        Command::Append(.., r) => drop(r.send(Err(error))),
        Command::AppendBatch(.., r) => drop(r.send(Err(error))),
        Command::Renew(.., r) => drop(r.send(Err(error))),
        Command::Release(.., r) => drop(r.send(Err(error))),
        Command::Claim(.., r) => drop(r.send(Err(error))),
        Command::ClaimUnfinished(.., r) => drop(r.send(Err(error))),
        Command::History(.., r) => drop(r.send(Err(error))),
        Command::Summary(.., r) => drop(r.send(Err(error))),
        Command::List(.., r) => drop(r.send(Err(error))),
        Command::Prune(.., r) => drop(r.send(Err(error))),
        Command::Close(r) => drop(r.send(Err(error))),
    }
}

/// Runs one operation in `tx`. The second value is set when a statement
/// failed, which dooms the transaction.
fn apply(tx: &Transaction<'_>, command: Command) -> (Done, Option<LogError>) {
    fn split<T>(result: Sql<T>) -> (Result<T, LogError>, Option<LogError>) {
        match result {
            Ok(result) => (result, None),
            Err(error) => {
                let error = unavailable(error);
                (Err(error.clone()), Some(error))
            }
        }
    }
    macro_rules! run {
        ($variant:ident, $reply:expr, $op:expr) => {{
            let (result, failure) = split($op);
            (Done::$variant($reply, result), failure)
        }};
    }
    match command {
        Command::Create(saga, owner, ttl, records, r) => {
            run!(Lease, r, create(tx, saga, &owner, ttl, records))
        }
        Command::Append(lease, record, r) => run!(Seq, r, append(tx, &lease, record)),
        Command::AppendBatch(lease, records, r) => {
            run!(LastSeq, r, append_batch(tx, &lease, records))
        }
        Command::Renew(lease, ttl, r) => run!(Unit, r, renew(tx, &lease, Some(ttl))),
        Command::Release(lease, r) => run!(Unit, r, renew(tx, &lease, None)),
        Command::Claim(saga, owner, ttl, r) => run!(Claimed, r, claim(tx, saga, &owner, ttl)),
        Command::ClaimUnfinished(owner, ttl, limit, r) => {
            run!(ClaimedMany, r, claim_unfinished(tx, &owner, ttl, limit))
        }
        Command::History(saga, r) => run!(History, r, history(tx, saga)),
        Command::Summary(saga, r) => run!(Summary, r, summary(tx, saga)),
        Command::List(state, after, limit, r) => run!(List, r, list(tx, state, after, limit)),
        Command::Prune(before, limit, r) => run!(Seq, r, prune_finished(tx, before, limit)),
        // Taken out of the batch by the writer's loop before it applies it.
        Command::Close(r) => (Done::Unit(r, Ok(())), None),
    }
}
