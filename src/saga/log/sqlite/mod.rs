//! The SQLite saga log, with group commit.
//!
//! # Durability and speed
//!
//! The log must never lose a record it acknowledged: the executor runs a
//! step only after the step's *started* record was acknowledged, so a lost
//! *started* record is a step that ran without the log knowing, which no
//! recovery would retry or compensate. Hence:
//!
//! * **`synchronous = FULL` by default.** In WAL mode it syncs the WAL at
//!   every commit, so an acknowledged record survives a crash of the
//!   process, of the operating system and a power loss. `NORMAL` syncs
//!   the WAL only at checkpoints: a commit survives a crash of the
//!   process (the WAL is in the operating system's cache) but the last
//!   ones may vanish with the machine, and with them the *started* record
//!   of a step that ran. [`SqliteSync::Normal`] is there for logs whose
//!   sagas may be lost that way; it is not the default.
//! * **One commit per step.** The executor hands a step's completion to
//!   the log in the same [`append_batch`](SagaLog::append_batch) as the
//!   next record (the next step's start, or the saga's end), and a saga's
//!   creation together with its first step's start
//!   ([`create_with`](SagaLog::create_with)); this log writes each in one
//!   transaction: one sync per step, not two. A saga of *n* steps makes
//!   *n* + 1 commits (the last is its end).
//! * **`fdatasync`, if SQLite is built for it.** The bundled SQLite syncs
//!   with `fsync` unless it is compiled with `HAVE_FDATASYNC`; on Linux
//!   `fsync` also writes the file's modification time, a journal commit
//!   of the file system that `fdatasync` skips (SQLite needs only the
//!   data and the file's size, which `fdatasync` writes too). Your build
//!   decides: set `LIBSQLITE3_FLAGS=-DHAVE_FDATASYNC` in the environment
//!   of `cargo build`, or in your project's `.cargo/config.toml`:
//!
//!   ```toml
//!   [env]
//!   LIBSQLITE3_FLAGS = "-DHAVE_FDATASYNC"
//!   ```
//!
//!   palisade's own tests and benchmarks are built that way. On macOS
//!   SQLite calls `fsync` (or `F_FULLFSYNC`) whatever the flag says.
//! * **Group commit.** Operations that queue up while a transaction
//!   commits go into the next one, with one sync for all: many sagas at
//!   once cost far less than one sync per step each.
//! * **Checkpoints off the commit.** SQLite's automatic checkpoint runs
//!   inside the commit that crosses its threshold, and syncs the database
//!   file and the WAL there. It is turned off; the writer thread
//!   checkpoints (`PASSIVE`) after it has answered the batch's operations,
//!   once some 256 operations were written and no operation waits (or
//!   after 4,096 when the queue never empties). The checkpoint restarts
//!   the WAL, which then rewrites the same blocks instead of growing.
//!
//! An operation is answered only after its transaction committed; an
//! operation whose transaction failed is answered with the error, never
//! with success.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use self::writer::{Command, Reply, Writer};
use super::{BoxFuture, ClaimedSaga, Lease, ListCursor, LogError, NewSaga, SagaLog, SagaSummary};
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

mod config;
mod operations;
mod writer;

pub use self::config::{MAX_SQLITE_BATCH, SqliteLogConfig, SqliteLogConfigBuilder, SqliteSync};

const BACKEND: &str = "sqlite";

/// Written to SQLite's `user_version` when the log's tables are created:
/// a database that has it but not the tables lost them.
const SCHEMA_MARKER: i64 = 0x5a6a_0001;

/// Refuses a database whose `user_version` says the log was created in it
/// but whose `saga` table is missing, or that another application marked.
fn check_schema_marker(connection: &Connection, path: &Path) -> Result<(), LogError> {
    let marker: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(unavailable)?;
    let tables: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('saga', 'saga_record')",
            [],
            |row| row.get(0),
        )
        .map_err(unavailable)?;
    let problem = match marker {
        // A new database, or a log created before the marker existed.
        0 => return Ok(()),
        SCHEMA_MARKER if tables == 2 => return Ok(()),
        SCHEMA_MARKER => "its saga log was created but its tables are gone".to_owned(),
        other => format!("its user_version is {other}: it is not a palisade saga log"),
    };
    Err(LogError::unavailable(
        BACKEND,
        format!("{}: {problem}", path.display()),
    ))
}

/// A durable saga log in a SQLite file (WAL mode), for one process or a
/// few on one host.
///
/// One writer thread owns the connection; operations wait in a bounded
/// queue ([`queue_capacity`](SqliteLogConfigBuilder::queue_capacity)). Operations that arrive while a
/// transaction commits are *group committed*: the next transaction applies
/// all of them (up to [`max_batch`](SqliteLogConfigBuilder::max_batch)),
/// and each is acknowledged only after the transaction that holds it has
/// committed. Each operation's checks (fencing, state) run inside that
/// transaction, in arrival order, so batching changes nothing but speed.
///
/// Lease expiry uses the system clock.
///
/// ```
/// use palisade::saga::{SqliteLog, SagaLog};
///
/// let dir = tempfile::tempdir().unwrap();
/// let log = SqliteLog::open(dir.path().join("sagas.db")).unwrap();
/// assert_eq!(log.backend(), "sqlite");
/// ```
#[derive(Debug, Clone)]
pub struct SqliteLog {
    commands: mpsc::Sender<Command>,
    path: PathBuf,
}

pub(super) fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> LogError {
    LogError::unavailable(BACKEND, error)
}

impl SqliteLog {
    /// Opens (or creates) the log at `path` with the default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path, SqliteLogConfig::default())
    }

    /// Opens (or creates) the log at `path`.
    ///
    /// A log is created only where no file is, or in a SQLite database
    /// that has no saga log yet. A file that exists but is empty (a log
    /// truncated to zero bytes) and a database whose log was created but
    /// whose tables are gone are refused ([`LogError::Unavailable`]): they
    /// would otherwise open as a new, empty log and lose every saga
    /// silently.
    pub fn open_with(path: impl AsRef<Path>, config: SqliteLogConfig) -> Result<Self, LogError> {
        let path = path.as_ref().to_path_buf();
        if std::fs::metadata(&path).is_ok_and(|file| file.len() == 0) {
            return Err(LogError::unavailable(
                BACKEND,
                format!(
                    "{} exists but is empty: a saga log truncated to zero bytes is not opened as a new one \
                     (remove the file to start a new log)",
                    path.display()
                ),
            ));
        }
        let connection = Connection::open(&path).map_err(unavailable)?;
        connection
            .busy_timeout(config.busy_timeout)
            .map_err(unavailable)?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LogError::unavailable(
                BACKEND,
                format!("cannot use WAL journal mode (got {mode})"),
            ));
        }
        let sync = match config.synchronous {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        connection
            .execute_batch(&format!(
                "PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = 0;"
            ))
            .map_err(unavailable)?;
        check_schema_marker(&connection, &path)?;
        connection
            .execute_batch(&format!(
                "PRAGMA user_version = {SCHEMA_MARKER};
                 CREATE TABLE IF NOT EXISTS saga (
                     id TEXT PRIMARY KEY,
                     definition TEXT NOT NULL,
                     version INTEGER NOT NULL,
                     state TEXT NOT NULL,
                     owner TEXT NOT NULL,
                     epoch INTEGER NOT NULL,
                     lease_expires_ms INTEGER,
                     records INTEGER NOT NULL,
                     created_ms INTEGER NOT NULL,
                     updated_ms INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS saga_by_state ON saga (state, created_ms);
                 CREATE TABLE IF NOT EXISTS saga_record (
                     saga TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     epoch INTEGER NOT NULL,
                     at_ms INTEGER NOT NULL,
                     kind TEXT NOT NULL,
                     body TEXT NOT NULL,
                     payload BLOB,
                     PRIMARY KEY (saga, seq)
                 ) WITHOUT ROWID;"
            ))
            .map_err(unavailable)?;
        let (commands, receiver) = mpsc::channel(config.queue_capacity);
        let max_batch = config.max_batch;
        thread::Builder::new()
            .name("palisade-saga-sqlite".into())
            .spawn(move || {
                let writer = Writer {
                    connection,
                    since_checkpoint: 0,
                };
                writer.run(receiver, max_batch)
            })
            .map_err(unavailable)?;
        Ok(Self { commands, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the log: commits every operation queued before the call,
    /// closes the database (which copies the WAL into the file and
    /// deletes it) and returns once the writer thread has done so, so
    /// that the file is complete and consistent on its own.
    ///
    /// Operations sent afterwards, through this log's clones, fail with
    /// [`LogError::Closed`]; so does a second `close`. Dropping every
    /// clone also closes the log, but on the writer thread's own time.
    ///
    /// ```
    /// use palisade::saga::SqliteLog;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade::saga::LogError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("sagas.db");
    /// SqliteLog::open(&path)?.close().await?;
    /// assert!(!dir.path().join("sagas.db-wal").exists());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(self) -> Result<(), LogError> {
        self.send(Command::Close).await
    }

    fn send<T: Send + 'static>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> BoxFuture<'static, Result<T, LogError>> {
        let (reply, result) = oneshot::channel();
        let command = command(reply);
        let commands = self.commands.clone();
        Box::pin(async move {
            // Waits for room when the writer is behind: the queue is bounded.
            commands
                .send(command)
                .await
                .map_err(|_| LogError::Closed { backend: BACKEND })?;
            result
                .await
                .unwrap_or(Err(LogError::Closed { backend: BACKEND }))
        })
    }
}

impl SagaLog for SqliteLog {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn create<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        self.create_with(saga, owner, lease_ttl, Vec::new())
    }

    fn creates_atomically(&self) -> bool {
        true
    }

    fn create_with<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        lease_ttl: Duration,
        records: Vec<RecordKind>,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        self.send(|r| Command::Create(saga, owner.clone(), lease_ttl, records, r))
    }

    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        self.send(|r| Command::Append(lease.clone(), record, r))
    }

    fn append_batch<'a>(
        &'a self,
        lease: &'a Lease,
        records: Vec<RecordKind>,
    ) -> BoxFuture<'a, Result<Option<u64>, LogError>> {
        self.send(|r| Command::AppendBatch(lease.clone(), records, r))
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        self.send(|r| Command::Renew(lease.clone(), lease_ttl, r))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LogError>> {
        self.send(|r| Command::Release(lease.clone(), r))
    }

    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
        self.send(|r| Command::Claim(saga, owner.clone(), lease_ttl, r))
    }

    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a OwnerId,
        lease_ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ClaimedSaga>, LogError>> {
        self.send(|r| Command::ClaimUnfinished(owner.clone(), lease_ttl, limit, r))
    }

    fn history(&self, saga: SagaId) -> BoxFuture<'_, Result<Vec<LoggedRecord>, LogError>> {
        self.send(|r| Command::History(saga, r))
    }

    fn summary(&self, saga: SagaId) -> BoxFuture<'_, Result<SagaSummary, LogError>> {
        self.send(|r| Command::Summary(saga, r))
    }

    fn list(
        &self,
        state: Option<SagaState>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
        self.send(|r| Command::List(state, after, limit, r))
    }

    fn prune_finished(
        &self,
        finished_before: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, LogError>> {
        self.send(|r| Command::Prune(finished_before, limit, r))
    }
}
