//! The SQLite saga log, with group commit.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{BoxFuture, ClaimedSaga, Lease, LogError, NewSaga, SagaLog, SagaSummary};
use crate::error::ConfigError;
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

const BACKEND: &str = "sqlite";
const COMPONENT: &str = "sqlite saga log";

/// The largest [`max_batch`](SqliteLogConfigBuilder::max_batch).
pub const MAX_SQLITE_BATCH: usize = 65_536;

/// How hard SQLite works to make each commit survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// `synchronous = FULL`: a commit survives an operating-system crash
    /// or a power loss (the default).
    #[default]
    Full,
    /// `synchronous = NORMAL`: in WAL mode a commit survives a crash of
    /// the process but the last ones may be lost on power loss; faster.
    Normal,
}

/// Settings of a [`SqliteLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteLogConfig {
    max_batch: usize,
    synchronous: SqliteSync,
    busy_timeout: Duration,
}

impl Default for SqliteLogConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            synchronous: SqliteSync::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteLogConfig {
    /// Starts from the defaults: batches of up to 1024 operations,
    /// `synchronous = FULL`, a 5 s busy timeout.
    pub fn builder() -> SqliteLogConfigBuilder {
        SqliteLogConfigBuilder {
            config: Self::default(),
        }
    }
}

/// Builds a [`SqliteLogConfig`].
#[derive(Debug, Clone)]
pub struct SqliteLogConfigBuilder {
    config: SqliteLogConfig,
}

impl SqliteLogConfigBuilder {
    /// The most operations committed in one transaction (1 to
    /// [`MAX_SQLITE_BATCH`]). 1 disables group commit.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.config.max_batch = max_batch;
        self
    }

    /// The durability of each commit.
    pub fn synchronous(mut self, synchronous: SqliteSync) -> Self {
        self.config.synchronous = synchronous;
        self
    }

    /// How long to wait for another process's lock on the file (at most
    /// one hour).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.config.busy_timeout = timeout;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<SqliteLogConfig, ConfigError> {
        let config = self.config;
        if !(1..=MAX_SQLITE_BATCH).contains(&config.max_batch) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_batch",
                format!("must be 1 to {MAX_SQLITE_BATCH}, got {}", config.max_batch),
            ));
        }
        if config.busy_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                COMPONENT,
                "busy_timeout",
                format!("must be at most 1h, got {:?}", config.busy_timeout),
            ));
        }
        Ok(config)
    }
}

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

enum Command {
    Create(NewSaga, OwnerId, Duration, Reply<Lease>),
    Append(Lease, RecordKind, Reply<u64>),
    Renew(Lease, Duration, Reply<()>),
    Release(Lease, Reply<()>),
    Claim(SagaId, OwnerId, Duration, Reply<ClaimedSaga>),
    ClaimUnfinished(OwnerId, Duration, usize, Reply<Vec<ClaimedSaga>>),
    History(SagaId, Reply<Vec<LoggedRecord>>),
    Summary(SagaId, Reply<SagaSummary>),
    List(Option<SagaState>, usize, Reply<Vec<SagaSummary>>),
}

/// A durable saga log in a SQLite file (WAL mode), for one process or a
/// few on one host.
///
/// One writer thread owns the connection. Operations that arrive while a
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

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> LogError {
    LogError::unavailable(BACKEND, error)
}

impl SqliteLog {
    /// Opens (or creates) the log at `path` with the default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path, SqliteLogConfig::default())
    }

    /// Opens (or creates) the log at `path`.
    pub fn open_with(path: impl AsRef<Path>, config: SqliteLogConfig) -> Result<Self, LogError> {
        let path = path.as_ref().to_path_buf();
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
                "PRAGMA synchronous = {sync};
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
        let (commands, receiver) = mpsc::channel();
        let max_batch = config.max_batch;
        thread::Builder::new()
            .name("palisade-saga-sqlite".into())
            .spawn(move || Writer { connection }.run(receiver, max_batch))
            .map_err(unavailable)?;
        Ok(Self { commands, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send<T: Send + 'static>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> BoxFuture<'static, Result<T, LogError>> {
        let (reply, result) = oneshot::channel();
        let sent = self.commands.send(command(reply));
        Box::pin(async move {
            sent.map_err(|_| LogError::Closed { backend: BACKEND })?;
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
        self.send(|r| Command::Create(saga, owner.clone(), lease_ttl, r))
    }

    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        self.send(|r| Command::Append(lease.clone(), record, r))
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
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
        self.send(|r| Command::List(state, limit, r))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms_to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn expiry_ms(ttl: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// One operation's outcome, waiting for its transaction to commit.
enum Done {
    Lease(Reply<Lease>, Result<Lease, LogError>),
    Seq(Reply<u64>, Result<u64, LogError>),
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

/// A saga row's lease and state.
struct Row {
    state: SagaState,
    owner: OwnerId,
    epoch: u64,
    expires_ms: Option<i64>,
    records: u64,
}

struct Writer {
    connection: Connection,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Command>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while let Ok(first) = receiver.recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
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
        Command::Renew(.., r) => drop(r.send(Err(error))),
        Command::Release(.., r) => drop(r.send(Err(error))),
        Command::Claim(.., r) => drop(r.send(Err(error))),
        Command::ClaimUnfinished(.., r) => drop(r.send(Err(error))),
        Command::History(.., r) => drop(r.send(Err(error))),
        Command::Summary(.., r) => drop(r.send(Err(error))),
        Command::List(.., r) => drop(r.send(Err(error))),
    }
}

/// A database failure inside an operation: the transaction must roll back.
type Sql<T> = Result<Result<T, LogError>, rusqlite::Error>;

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
        Command::Create(saga, owner, ttl, r) => run!(Lease, r, create(tx, saga, &owner, ttl)),
        Command::Append(lease, record, r) => run!(Seq, r, append(tx, &lease, record)),
        Command::Renew(lease, ttl, r) => run!(Unit, r, renew(tx, &lease, Some(ttl))),
        Command::Release(lease, r) => run!(Unit, r, renew(tx, &lease, None)),
        Command::Claim(saga, owner, ttl, r) => run!(Claimed, r, claim(tx, saga, &owner, ttl)),
        Command::ClaimUnfinished(owner, ttl, limit, r) => {
            run!(ClaimedMany, r, claim_unfinished(tx, &owner, ttl, limit))
        }
        Command::History(saga, r) => run!(History, r, history(tx, saga)),
        Command::Summary(saga, r) => run!(Summary, r, summary(tx, saga)),
        Command::List(state, limit, r) => run!(List, r, list(tx, state, limit)),
    }
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn corrupt(saga: SagaId, seq: Option<u64>, detail: impl Into<String>) -> LogError {
    LogError::Corrupt {
        saga,
        seq,
        detail: detail.into(),
    }
}

fn read_row(tx: &Transaction<'_>, saga: SagaId) -> Sql<Row> {
    let row = tx
        .query_row(
            "SELECT state, owner, epoch, lease_expires_ms, records FROM saga WHERE id = ?1",
            params![saga.to_string()],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((state, owner, epoch, expires_ms, records)) = row else {
        return Ok(Err(LogError::NotFound { saga }));
    };
    let Some(state) = SagaState::from_name(&state) else {
        return Ok(Err(corrupt(
            saga,
            None,
            format!("unknown saga state {state:?}"),
        )));
    };
    let Ok(owner) = OwnerId::new(&owner) else {
        return Ok(Err(corrupt(saga, None, format!("invalid owner {owner:?}"))));
    };
    Ok(Ok(Row {
        state,
        owner,
        epoch: u64::try_from(epoch).unwrap_or(0),
        expires_ms,
        records: u64::try_from(records).unwrap_or(0),
    }))
}

fn check_lease(row: &Row, lease: &Lease) -> Result<(), LogError> {
    if row.epoch != lease.epoch || row.owner != lease.owner {
        return Err(LogError::Fenced {
            saga: lease.saga,
            owner: lease.owner.clone(),
            epoch: lease.epoch,
            current: row.epoch,
        });
    }
    Ok(())
}

fn insert_record(
    tx: &Transaction<'_>,
    saga: SagaId,
    seq: u64,
    epoch: u64,
    at_ms: i64,
    record: &RecordKind,
) -> rusqlite::Result<()> {
    let parts = record.to_parts();
    tx.prepare_cached(
        "INSERT INTO saga_record (saga, seq, epoch, at_ms, kind, body, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        saga.to_string(),
        as_i64(seq),
        as_i64(epoch),
        at_ms,
        parts.kind,
        parts.body,
        parts.payload
    ])?;
    Ok(())
}

fn create(tx: &Transaction<'_>, saga: NewSaga, owner: &OwnerId, ttl: Duration) -> Sql<Lease> {
    let id = saga.id.to_string();
    let exists = tx
        .query_row("SELECT 1 FROM saga WHERE id = ?1", params![id], |_| Ok(()))
        .optional()?;
    if exists.is_some() {
        return Ok(Err(LogError::AlreadyExists { saga: saga.id }));
    }
    let now = now_ms();
    tx.prepare_cached(
        "INSERT INTO saga (id, definition, version, state, owner, epoch, lease_expires_ms,
                           records, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, 1, ?7, ?7)",
    )?
    .execute(params![
        id,
        saga.definition,
        saga.version,
        SagaState::Running.as_str(),
        owner.as_str(),
        expiry_ms(ttl),
        now
    ])?;
    insert_record(tx, saga.id, 0, 1, now, &saga.created_record())?;
    Ok(Ok(Lease {
        saga: saga.id,
        owner: owner.clone(),
        epoch: 1,
    }))
}

fn append(tx: &Transaction<'_>, lease: &Lease, record: RecordKind) -> Sql<u64> {
    let row = match read_row(tx, lease.saga)? {
        Ok(row) => row,
        Err(error) => return Ok(Err(error)),
    };
    if let Err(error) = check_lease(&row, lease) {
        return Ok(Err(error));
    }
    if row.state.is_finished() {
        return Ok(Err(LogError::Finished {
            saga: lease.saga,
            state: row.state,
        }));
    }
    let now = now_ms();
    let seq = row.records;
    insert_record(tx, lease.saga, seq, lease.epoch, now, &record)?;
    tx.prepare_cached("UPDATE saga SET state = ?2, records = ?3, updated_ms = ?4 WHERE id = ?1")?
        .execute(params![
            lease.saga.to_string(),
            row.state.after(&record).as_str(),
            as_i64(seq + 1),
            now
        ])?;
    Ok(Ok(seq))
}

/// Renews the lease for `ttl`, or releases it with `None`.
fn renew(tx: &Transaction<'_>, lease: &Lease, ttl: Option<Duration>) -> Sql<()> {
    let row = match read_row(tx, lease.saga)? {
        Ok(row) => row,
        Err(error) => return Ok(Err(error)),
    };
    if let Err(error) = check_lease(&row, lease) {
        return Ok(Err(error));
    }
    tx.prepare_cached("UPDATE saga SET lease_expires_ms = ?2 WHERE id = ?1")?
        .execute(params![lease.saga.to_string(), ttl.map(expiry_ms)])?;
    Ok(Ok(()))
}

fn take(
    tx: &Transaction<'_>,
    saga: SagaId,
    row: &Row,
    owner: &OwnerId,
    ttl: Duration,
) -> Sql<ClaimedSaga> {
    let epoch = row.epoch + 1;
    tx.prepare_cached(
        "UPDATE saga SET owner = ?2, epoch = ?3, lease_expires_ms = ?4 WHERE id = ?1",
    )?
    .execute(params![
        saga.to_string(),
        owner.as_str(),
        as_i64(epoch),
        expiry_ms(ttl)
    ])?;
    Ok(Ok(ClaimedSaga {
        lease: Lease {
            saga,
            owner: owner.clone(),
            epoch,
        },
        state: row.state,
        records: history(tx, saga)?,
    }))
}

fn claimable_by(row: &Row, owner: &OwnerId, now: i64) -> bool {
    match row.expires_ms {
        Some(expires) if expires > now => row.owner == *owner,
        _ => true,
    }
}

fn claim(tx: &Transaction<'_>, saga: SagaId, owner: &OwnerId, ttl: Duration) -> Sql<ClaimedSaga> {
    let row = match read_row(tx, saga)? {
        Ok(row) => row,
        Err(error) => return Ok(Err(error)),
    };
    if row.state.is_finished() {
        return Ok(Err(LogError::Finished {
            saga,
            state: row.state,
        }));
    }
    if !claimable_by(&row, owner, now_ms()) {
        return Ok(Err(LogError::LeaseHeld {
            saga,
            owner: row.owner,
        }));
    }
    take(tx, saga, &row, owner, ttl)
}

fn claim_unfinished(
    tx: &Transaction<'_>,
    owner: &OwnerId,
    ttl: Duration,
    limit: usize,
) -> Sql<Vec<ClaimedSaga>> {
    let now = now_ms();
    let ids: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM saga
             WHERE state IN ('running', 'compensating')
               AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?1 OR owner = ?2)
             ORDER BY created_ms, id LIMIT ?3",
        )?
        .query_map(params![now, owner.as_str(), as_i64(limit as u64)], |row| {
            row.get(0)
        })?
        .collect::<Result<_, _>>()?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(saga) = id.parse::<SagaId>() else {
            tracing::error!(id, "sqlite saga log: saga row with an invalid id");
            continue;
        };
        let row = match read_row(tx, saga)? {
            Ok(row) => row,
            Err(error) => {
                tracing::error!(%saga, %error, "sqlite saga log: saga row unreadable");
                continue;
            }
        };
        if let Ok(saga) = take(tx, saga, &row, owner, ttl)? {
            claimed.push(saga);
        }
    }
    Ok(Ok(claimed))
}

fn history(tx: &Transaction<'_>, saga: SagaId) -> Sql<Vec<LoggedRecord>> {
    let mut statement = tx.prepare_cached(
        "SELECT seq, epoch, at_ms, kind, body, payload FROM saga_record
         WHERE saga = ?1 ORDER BY seq",
    )?;
    let rows = statement.query_map(params![saga.to_string()], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, Option<Vec<u8>>>(5)?,
        ))
    })?;
    let mut records = Vec::new();
    for row in rows {
        let (seq, epoch, at_ms, kind, body, payload) = match row {
            Ok(row) => row,
            // A column of the wrong type is a corrupt record, not an
            // unavailable database.
            Err(
                rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..),
            ) => {
                return Ok(Err(corrupt(
                    saga,
                    None,
                    "a record column has the wrong type",
                )));
            }
            Err(error) => return Err(error),
        };
        let seq = u64::try_from(seq).unwrap_or(u64::MAX);
        let kind = match RecordKind::from_parts(&kind, &body, payload) {
            Ok(kind) => kind,
            Err(detail) => return Ok(Err(corrupt(saga, Some(seq), detail))),
        };
        records.push(LoggedRecord {
            seq,
            epoch: u64::try_from(epoch).unwrap_or(0),
            at: ms_to_time(at_ms),
            kind,
        });
    }
    if records.is_empty() {
        let exists = tx
            .query_row(
                "SELECT 1 FROM saga WHERE id = ?1",
                params![saga.to_string()],
                |_| Ok(()),
            )
            .optional()?;
        if exists.is_none() {
            return Ok(Err(LogError::NotFound { saga }));
        }
    }
    Ok(Ok(records))
}

const SUMMARY_COLUMNS: &str = "id, definition, version, state, owner, epoch, lease_expires_ms, records, created_ms, updated_ms";

type SummaryRow = (
    String,
    String,
    i64,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    i64,
    i64,
);

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
    ))
}

fn to_summary(row: SummaryRow, now: i64) -> Result<SagaSummary, LogError> {
    let (id, definition, version, state, owner, epoch, expires, records, created, updated) = row;
    let saga = id
        .parse::<SagaId>()
        .map_err(|e| LogError::unavailable(BACKEND, e))?;
    let state = SagaState::from_name(&state)
        .ok_or_else(|| corrupt(saga, None, format!("unknown saga state {state:?}")))?;
    let owner = OwnerId::new(&owner)
        .map_err(|_| corrupt(saga, None, format!("invalid owner {owner:?}")))?;
    Ok(SagaSummary {
        id: saga,
        definition,
        version: u32::try_from(version).map_err(|_| corrupt(saga, None, "invalid version"))?,
        state,
        owner: expires.filter(|e| *e > now).map(|_| owner),
        epoch: u64::try_from(epoch).unwrap_or(0),
        records: u64::try_from(records).unwrap_or(0),
        created_at: ms_to_time(created),
        updated_at: ms_to_time(updated),
    })
}

fn summary(tx: &Transaction<'_>, saga: SagaId) -> Sql<SagaSummary> {
    let row = tx
        .query_row(
            &format!("SELECT {SUMMARY_COLUMNS} FROM saga WHERE id = ?1"),
            params![saga.to_string()],
            summary_row,
        )
        .optional()?;
    Ok(match row {
        Some(row) => to_summary(row, now_ms()),
        None => Err(LogError::NotFound { saga }),
    })
}

fn list(tx: &Transaction<'_>, state: Option<SagaState>, limit: usize) -> Sql<Vec<SagaSummary>> {
    let now = now_ms();
    let limit = as_i64(limit as u64);
    let rows: Vec<SummaryRow> = match state {
        Some(state) => tx
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM saga WHERE state = ?1 ORDER BY created_ms, id LIMIT ?2"
            ))?
            .query_map(params![state.as_str(), limit], summary_row)?
            .collect::<Result<_, _>>()?,
        None => tx
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM saga ORDER BY created_ms, id LIMIT ?1"
            ))?
            .query_map(params![limit], summary_row)?
            .collect::<Result<_, _>>()?,
    };
    Ok(rows.into_iter().map(|row| to_summary(row, now)).collect())
}
