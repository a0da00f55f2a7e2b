//! The PostgreSQL saga log, shared by several executor processes.
//!
//! Tables (in the configured schema, created if absent):
//!
//! * `sagas(id, definition, version, state, owner, epoch, lease_expires_at,
//!   records, created_at, updated_at)`: one row per saga, holding its lease;
//!   `lease_expires_at` is `NULL` once released.
//! * `saga_records(saga_id, seq, epoch, at, kind, body jsonb, payload bytea)`,
//!   primary key `(saga_id, seq)`: the records, split by
//!   [`RecordKind::to_parts`].
//! * `saga_schema(version)`: the layout's version, checked on connect.
//!
//! Every operation is one transaction. Writes lock the saga's row
//! (`SELECT ... FOR UPDATE`) and check the lease in the same transaction;
//! [`claim_unfinished`](SagaLog::claim_unfinished) locks its candidates
//! with `FOR UPDATE SKIP LOCKED`, so executors racing for the same sagas
//! each take different ones and never wait for each other. Lease expiry
//! is computed with the database server's clock (`now()`), never the
//! client's, so executors on hosts whose clocks disagree still agree on
//! who owns a saga.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::{BoxFuture, ClaimedSaga, Lease, LogError, NewSaga, SagaLog, SagaSummary};
use crate::error::ConfigError;
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

const BACKEND: &str = "postgres";
const COMPONENT: &str = "postgres saga log";

/// The version of the table layout written and read by this version of
/// palisade; stored in the schema's `saga_schema` table.
pub const POSTGRES_SCHEMA_VERSION: i32 = 1;

/// The longest lease accepted by the log; longer TTLs (such as
/// `Duration::MAX`) are stored as this, which no executor outlives.
const LONGEST_LEASE: Duration = Duration::from_secs(86_400 * 365 * 100);

/// Settings of a [`PostgresLog`].
#[derive(Debug, Clone)]
pub struct PostgresLogConfig {
    pg: tokio_postgres::Config,
    schema: String,
    max_connections: usize,
    connect_timeout: Duration,
    acquire_timeout: Duration,
}

impl PostgresLogConfig {
    /// Starts from a connection string, either a URL
    /// (`postgres://user:password@host:port/database`) or key-value pairs
    /// (`host=... user=... dbname=...`), with the defaults: schema
    /// `palisade`, up to 8 connections, 10 s to connect, 30 s to wait for
    /// a free connection.
    pub fn builder(url: impl Into<String>) -> PostgresLogConfigBuilder {
        PostgresLogConfigBuilder {
            source: Source::Url(url.into()),
            schema: "palisade".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// Like [`builder`](Self::builder), from a parsed
    /// [`tokio_postgres::Config`].
    pub fn builder_from(pg: tokio_postgres::Config) -> PostgresLogConfigBuilder {
        PostgresLogConfigBuilder {
            source: Source::Config(Box::new(pg)),
            ..Self::builder(String::new())
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The most connections the log opens.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Config(Box<tokio_postgres::Config>),
}

/// Builds a [`PostgresLogConfig`]; see [`PostgresLogConfig::builder`].
#[derive(Debug, Clone)]
pub struct PostgresLogConfigBuilder {
    source: Source,
    schema: String,
    max_connections: usize,
    connect_timeout: Duration,
    acquire_timeout: Duration,
}

/// The longest accepted connect and acquire timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl PostgresLogConfigBuilder {
    /// The schema holding the log's tables (default `palisade`): 1 to 63
    /// characters among `a-z`, `0-9` and `_`, not starting with a digit
    /// nor with `pg_`. Several logs (or test runs) can share a database
    /// in different schemas.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections open at once (1 to 1024, default 8). Each
    /// operation holds one connection for the length of its transaction.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long to wait for a new connection to be established (more than
    /// zero, at most 1 h; default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an operation waits for a free connection when all
    /// [`max_connections`](Self::max_connections) are busy (more than
    /// zero, at most 1 h; default 30 s). A timeout fails the operation
    /// with [`LogError::Unavailable`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<PostgresLogConfig, ConfigError> {
        let mut pg = match self.source {
            Source::Url(url) => url.parse::<tokio_postgres::Config>().map_err(|e| {
                ConfigError::new(COMPONENT, "url", format!("is not a connection string: {e}"))
            })?,
            Source::Config(pg) => *pg,
        };
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::new(COMPONENT, "url", "must name a host"));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("palisade-saga");
        }
        check_schema_name(&self.schema)?;
        if !(1..=1024).contains(&self.max_connections) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_connections",
                format!("must be 1 to 1024, got {}", self.max_connections),
            ));
        }
        for (field, timeout) in [
            ("connect_timeout", self.connect_timeout),
            ("acquire_timeout", self.acquire_timeout),
        ] {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(ConfigError::new(
                    COMPONENT,
                    field,
                    format!("must be more than zero and at most 1h, got {timeout:?}"),
                ));
            }
        }
        pg.connect_timeout(self.connect_timeout);
        Ok(PostgresLogConfig {
            pg,
            schema: self.schema,
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
            acquire_timeout: self.acquire_timeout,
        })
    }
}

fn check_schema_name(schema: &str) -> Result<(), ConfigError> {
    let problem = if schema.is_empty() || schema.len() > 63 {
        Some(format!("must be 1 to 63 characters, got {}", schema.len()))
    } else if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some(format!("must use only a-z, 0-9 and _, got {schema:?}"))
    } else if schema.as_bytes()[0].is_ascii_digit() || schema.starts_with("pg_") {
        Some(format!(
            "must not start with a digit or `pg_`, got {schema:?}"
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::new(COMPONENT, "schema", problem)),
        None => Ok(()),
    }
}

/// [`PostgresLog::connect`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresConnectError {
    /// The server could not be reached or refused the connection or the
    /// schema creation (usually [`LogError::Unavailable`]).
    #[error("cannot open the postgres saga log: {0}")]
    Unavailable(#[source] LogError),
    /// The schema was written by a different version of palisade.
    #[error(
        "postgres saga log schema {schema:?} has layout version {found}; \
         this palisade reads version {supported}"
    )]
    SchemaVersion {
        /// The schema.
        schema: String,
        /// The version stored in it.
        found: i32,
        /// [`POSTGRES_SCHEMA_VERSION`].
        supported: i32,
    },
    /// The schema holds tables that are not a palisade saga log's.
    #[error("postgres schema {schema:?} is not a palisade saga log: {detail}")]
    UnknownSchema {
        /// The schema.
        schema: String,
        /// What was found.
        detail: String,
    },
}

/// The log's connection pool, as seen by [`PostgresLog::pool_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresPoolStatus {
    /// [`max_connections`](PostgresLogConfigBuilder::max_connections).
    pub max_connections: usize,
    /// Connections open now.
    pub open: usize,
    /// Open connections not in use.
    pub idle: usize,
    /// Operations waiting for a connection.
    pub waiting: usize,
}

/// A durable saga log in PostgreSQL that several executor processes share:
/// each saga is owned through a lease, and an executor whose lease was
/// taken over is fenced off (see [`SagaLog`]).
///
/// Clones share one connection pool. Connections are plain TCP or Unix
/// sockets (no TLS). A lost connection or any database failure is
/// reported as [`LogError::Unavailable`] and is transient: the pool opens
/// a new connection for the next operation. An operation that failed with
/// `Unavailable` while committing may still have been committed; the
/// executor recovers from that by re-reading the log.
///
/// ```no_run
/// use std::time::Duration;
/// use palisade::saga::log::{PostgresLog, PostgresLogConfig};
/// use palisade::saga::{NewSaga, OwnerId, SagaId, SagaLog};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = PostgresLogConfig::builder("postgres://palisade@127.0.0.1:5432/orders")
///     .schema("sagas")
///     .max_connections(16)
///     .build()?;
/// let log = PostgresLog::connect(config).await?;
/// let owner = OwnerId::new("host-a:4711")?;
/// let saga = NewSaga { id: SagaId::random(), definition: "order".into(), version: 1, input: b"{}".to_vec() };
/// let lease = log.create(saga, &owner, Duration::from_secs(30)).await?;
/// assert_eq!(lease.epoch, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresLog {
    pool: Pool,
    sql: Arc<Statements>,
}

impl fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLog")
            .field("schema", &self.sql.schema)
            .field("pool", &self.pool.status())
            .finish()
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> LogError {
    LogError::unavailable(BACKEND, error)
}

fn pool_error(error: PoolError) -> LogError {
    match error {
        PoolError::Closed => LogError::Closed { backend: BACKEND },
        PoolError::Backend(error) => unavailable(error),
        other => unavailable(other),
    }
}

impl PostgresLog {
    /// Connects, creates the schema and its tables if absent, and checks
    /// the layout version of an existing schema.
    ///
    /// Several processes may connect to a new schema at once: creation is
    /// serialized with an advisory lock.
    pub async fn connect(config: PostgresLogConfig) -> Result<Self, PostgresConnectError> {
        let manager = Manager::from_config(
            config.pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(config.connect_timeout))
            .wait_timeout(Some(config.acquire_timeout))
            .build()
            .map_err(|e| PostgresConnectError::Unavailable(unavailable(e)))?;
        let log = Self {
            pool,
            sql: Arc::new(Statements::new(&config.schema)),
        };
        log.prepare_schema().await?;
        tracing::info!(
            schema = %config.schema,
            max_connections = config.max_connections,
            "postgres saga log connected"
        );
        Ok(log)
    }

    async fn prepare_schema(&self) -> Result<(), PostgresConnectError> {
        let failed = PostgresConnectError::Unavailable;
        let schema = &self.sql.schema;
        let mut client = self.pool.get().await.map_err(|e| failed(pool_error(e)))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed(unavailable(e)))?;
        // One creator at a time per schema name, across processes.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('palisade saga log ' || $1::text))",
            &[schema],
        )
        .await
        .map_err(|e| failed(unavailable(e)))?;
        let tables: Vec<String> = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                &[schema],
            )
            .await
            .map_err(|e| failed(unavailable(e)))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let has = |name: &str| tables.iter().any(|t| t == name);
        if has("saga_schema") {
            let versions: Vec<i32> = tx
                .query(
                    &format!("SELECT version FROM \"{schema}\".saga_schema"),
                    &[],
                )
                .await
                .map_err(|e| failed(unavailable(e)))?
                .iter()
                .map(|row| row.get(0))
                .collect();
            return match versions.as_slice() {
                [POSTGRES_SCHEMA_VERSION] if has("sagas") && has("saga_records") => Ok(()),
                [POSTGRES_SCHEMA_VERSION] => Err(PostgresConnectError::UnknownSchema {
                    schema: schema.clone(),
                    detail: "the `sagas` or `saga_records` table is missing".into(),
                }),
                [found] => Err(PostgresConnectError::SchemaVersion {
                    schema: schema.clone(),
                    found: *found,
                    supported: POSTGRES_SCHEMA_VERSION,
                }),
                other => Err(PostgresConnectError::UnknownSchema {
                    schema: schema.clone(),
                    detail: format!("`saga_schema` holds {} rows, not one", other.len()),
                }),
            };
        }
        if has("sagas") || has("saga_records") {
            return Err(PostgresConnectError::UnknownSchema {
                schema: schema.clone(),
                detail: "it has saga tables but no `saga_schema` version table".into(),
            });
        }
        tx.batch_execute(&self.sql.create_tables)
            .await
            .map_err(|e| failed(unavailable(e)))?;
        tx.commit().await.map_err(|e| failed(unavailable(e)))?;
        tracing::info!(schema = %schema, version = POSTGRES_SCHEMA_VERSION, "postgres saga log schema created");
        Ok(())
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.sql.schema
    }

    /// The connection pool's state.
    pub fn pool_status(&self) -> PostgresPoolStatus {
        let status = self.pool.status();
        PostgresPoolStatus {
            max_connections: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
        }
    }

    /// Closes the pool: operations in progress finish, later ones fail
    /// with [`LogError::Closed`]. Clones share the pool and are closed
    /// too.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn client(&self) -> Result<Object, LogError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// SQL text for one schema, built once.
#[derive(Debug)]
struct Statements {
    schema: String,
    create_tables: String,
    create_saga: String,
    insert_record: String,
    lock: String,
    append: String,
    set_expiry: String,
    release: String,
    take: String,
    unfinished: String,
    take_many: String,
    history: String,
    history_many: String,
    summary: String,
    list: String,
}

/// `now() + $n microseconds`, the server-side lease expiry.
fn expiry(param: u8) -> String {
    format!("now() + ${param}::bigint * interval '1 microsecond'")
}

fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.min(LONGEST_LEASE).as_micros()).unwrap_or(i64::MAX)
}

const SUMMARY_COLUMNS: &str = "id, definition, version, state, owner, epoch, \
     COALESCE(lease_expires_at > now(), false), records, created_at, updated_at";

const RECORD_COLUMNS: &str = "r.seq, r.epoch, r.at, r.kind, r.body::text, r.payload";

impl Statements {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        Self {
            schema: schema.to_owned(),
            create_tables: format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE {s}.sagas (
                     id text PRIMARY KEY,
                     definition text NOT NULL,
                     version bigint NOT NULL,
                     state text NOT NULL,
                     owner text NOT NULL,
                     epoch bigint NOT NULL,
                     lease_expires_at timestamptz,
                     records bigint NOT NULL,
                     created_at timestamptz NOT NULL,
                     updated_at timestamptz NOT NULL
                 );
                 CREATE INDEX sagas_by_state ON {s}.sagas (state, created_at, id);
                 CREATE INDEX sagas_by_age ON {s}.sagas (created_at, id);
                 CREATE TABLE {s}.saga_records (
                     saga_id text NOT NULL REFERENCES {s}.sagas (id),
                     seq bigint NOT NULL,
                     epoch bigint NOT NULL,
                     at timestamptz NOT NULL,
                     kind text NOT NULL,
                     body jsonb NOT NULL,
                     payload bytea,
                     PRIMARY KEY (saga_id, seq)
                 );
                 CREATE TABLE {s}.saga_schema (version integer NOT NULL);
                 INSERT INTO {s}.saga_schema (version) VALUES ({POSTGRES_SCHEMA_VERSION});"
            ),
            create_saga: format!(
                "INSERT INTO {s}.sagas (id, definition, version, state, owner, epoch,
                     lease_expires_at, records, created_at, updated_at)
                 VALUES ($1, $2, $3, 'running', $4, 1, {}, 1, now(), now())
                 ON CONFLICT (id) DO NOTHING",
                expiry(5)
            ),
            insert_record: format!(
                "INSERT INTO {s}.saga_records (saga_id, seq, epoch, at, kind, body, payload)
                 VALUES ($1, $2, $3, now(), $4, $5::text::jsonb, $6)"
            ),
            lock: format!(
                "SELECT state, owner, epoch, records, COALESCE(lease_expires_at > now(), false)
                 FROM {s}.sagas WHERE id = $1 FOR UPDATE"
            ),
            append: format!(
                "WITH record AS (
                     INSERT INTO {s}.saga_records (saga_id, seq, epoch, at, kind, body, payload)
                     VALUES ($1, $2, $3, now(), $4, $5::text::jsonb, $6)
                 )
                 UPDATE {s}.sagas SET state = $7, records = $2 + 1, updated_at = now()
                 WHERE id = $1"
            ),
            set_expiry: format!(
                "UPDATE {s}.sagas SET lease_expires_at = {} WHERE id = $1",
                expiry(2)
            ),
            release: format!("UPDATE {s}.sagas SET lease_expires_at = NULL WHERE id = $1"),
            take: format!(
                "UPDATE {s}.sagas SET owner = $2, epoch = epoch + 1, lease_expires_at = {}
                 WHERE id = $1 RETURNING epoch",
                expiry(3)
            ),
            unfinished: format!(
                "SELECT id FROM {s}.sagas
                 WHERE state IN ('running', 'compensating')
                   AND (lease_expires_at IS NULL OR lease_expires_at <= now() OR owner = $1)
                 ORDER BY created_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ),
            take_many: format!(
                "UPDATE {s}.sagas SET owner = $2, epoch = epoch + 1, lease_expires_at = {}
                 WHERE id = ANY($1) RETURNING id, epoch, state, records",
                expiry(3)
            ),
            history: format!(
                "SELECT s.records, {RECORD_COLUMNS}
                 FROM {s}.sagas s LEFT JOIN {s}.saga_records r ON r.saga_id = s.id
                 WHERE s.id = $1 ORDER BY r.seq"
            ),
            history_many: format!(
                "SELECT r.saga_id, {RECORD_COLUMNS} FROM {s}.saga_records r
                 WHERE r.saga_id = ANY($1) ORDER BY r.saga_id, r.seq"
            ),
            summary: format!("SELECT {SUMMARY_COLUMNS} FROM {s}.sagas WHERE id = $1"),
            list: format!(
                "SELECT {SUMMARY_COLUMNS} FROM {s}.sagas
                 WHERE ($1::text IS NULL OR state = $1)
                 ORDER BY created_at, id LIMIT $2"
            ),
        }
    }
}

fn corrupt(saga: SagaId, seq: Option<u64>, detail: impl Into<String>) -> LogError {
    LogError::Corrupt {
        saga,
        seq,
        detail: detail.into(),
    }
}

/// A stored counter (epoch, sequence number, record count) as `u64`.
fn stored_u64(saga: SagaId, value: i64, what: &str) -> Result<u64, LogError> {
    u64::try_from(value).map_err(|_| corrupt(saga, None, format!("negative {what} {value}")))
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn stored_state(saga: SagaId, state: &str) -> Result<SagaState, LogError> {
    SagaState::from_name(state)
        .ok_or_else(|| corrupt(saga, None, format!("unknown saga state {state:?}")))
}

fn stored_owner(saga: SagaId, owner: &str) -> Result<OwnerId, LogError> {
    OwnerId::new(owner).map_err(|_| corrupt(saga, None, format!("invalid owner {owner:?}")))
}

/// A saga row, locked.
struct Locked {
    state: SagaState,
    owner: String,
    epoch: u64,
    records: u64,
    live: bool,
}

impl Locked {
    fn check_lease(&self, lease: &Lease) -> Result<(), LogError> {
        if self.epoch != lease.epoch || self.owner != lease.owner.as_str() {
            return Err(LogError::Fenced {
                saga: lease.saga,
                owner: lease.owner.clone(),
                epoch: lease.epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

async fn lock(tx: &Tx<'_>, sql: &Statements, saga: SagaId) -> Result<Locked, LogError> {
    let statement = tx.prepare_cached(&sql.lock).await.map_err(unavailable)?;
    let row = tx
        .query_opt(&statement, &[&saga.to_string()])
        .await
        .map_err(unavailable)?
        .ok_or(LogError::NotFound { saga })?;
    Ok(Locked {
        state: stored_state(saga, row.get(0))?,
        owner: row.get(1),
        epoch: stored_u64(saga, row.get(2), "epoch")?,
        records: stored_u64(saga, row.get(3), "record count")?,
        live: row.get(4),
    })
}

async fn execute(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, LogError> {
    let statement = tx.prepare_cached(sql).await.map_err(unavailable)?;
    tx.execute(&statement, params).await.map_err(unavailable)
}

/// The columns of one record, as read.
struct RecordRow {
    seq: i64,
    epoch: i64,
    at: SystemTime,
    kind: String,
    body: String,
    payload: Option<Vec<u8>>,
}

impl RecordRow {
    /// Reads [`RECORD_COLUMNS`] starting at column `at`; `None` when the
    /// record columns are NULL (a saga without records in a left join).
    fn read(row: &tokio_postgres::Row, at: usize) -> Result<Option<Self>, tokio_postgres::Error> {
        let Some(seq) = row.try_get::<_, Option<i64>>(at)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            seq,
            epoch: row.try_get(at + 1)?,
            at: row.try_get(at + 2)?,
            kind: row.try_get(at + 3)?,
            body: row.try_get(at + 4)?,
            payload: row.try_get(at + 5)?,
        }))
    }
}

/// Turns a saga's stored rows into records, checking that they are the
/// `expected` records numbered from 0 without gaps.
fn records(
    saga: SagaId,
    rows: Vec<RecordRow>,
    expected: u64,
) -> Result<Vec<LoggedRecord>, LogError> {
    let mut records = Vec::with_capacity(rows.len());
    for (index, row) in rows.into_iter().enumerate() {
        let want = index as u64;
        if row.seq != as_i64(want) {
            return Err(corrupt(
                saga,
                Some(want),
                format!(
                    "record {want} is missing (the next stored one is {})",
                    row.seq
                ),
            ));
        }
        let kind = RecordKind::from_parts(&row.kind, &row.body, row.payload)
            .map_err(|detail| corrupt(saga, Some(want), detail))?;
        if want == 0 && !matches!(kind, RecordKind::SagaCreated { .. }) {
            return Err(corrupt(
                saga,
                Some(0),
                format!("the first record is `{}`, not `saga_created`", kind.name()),
            ));
        }
        records.push(LoggedRecord {
            seq: want,
            epoch: stored_u64(saga, row.epoch, "record epoch")?,
            at: row.at,
            kind,
        });
    }
    let found = records.len() as u64;
    if found != expected {
        return Err(corrupt(
            saga,
            Some(found),
            format!("the saga has {expected} records but {found} are stored"),
        ));
    }
    Ok(records)
}

async fn history_in(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    saga: SagaId,
) -> Result<Vec<LoggedRecord>, LogError> {
    read_history(client.query(statement, &[&saga.to_string()]).await, saga)
}

fn read_history(
    rows: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    saga: SagaId,
) -> Result<Vec<LoggedRecord>, LogError> {
    let rows = rows.map_err(unavailable)?;
    let first = rows.first().ok_or(LogError::NotFound { saga })?;
    let expected = stored_u64(saga, first.get(0), "record count")?;
    let mut stored = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(record) = RecordRow::read(row, 1).map_err(unavailable)? {
            stored.push(record);
        }
    }
    records(saga, stored, expected)
}

fn summary_from(row: &tokio_postgres::Row) -> Result<SagaSummary, LogError> {
    let id: String = row.get(0);
    let saga = id.parse::<SagaId>().map_err(unavailable)?;
    let version: i64 = row.get(2);
    let live: bool = row.get(6);
    Ok(SagaSummary {
        id: saga,
        definition: row.get(1),
        version: u32::try_from(version)
            .map_err(|_| corrupt(saga, None, format!("invalid version {version}")))?,
        state: stored_state(saga, row.get(3))?,
        owner: if live {
            Some(stored_owner(saga, row.get(4))?)
        } else {
            None
        },
        epoch: stored_u64(saga, row.get(5), "epoch")?,
        records: stored_u64(saga, row.get(7), "record count")?,
        created_at: row.get(8),
        updated_at: row.get(9),
    })
}

impl PostgresLog {
    async fn create_saga(
        &self,
        saga: NewSaga,
        owner: &OwnerId,
        ttl: Duration,
    ) -> Result<Lease, LogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let id = saga.id.to_string();
        let inserted = execute(
            &tx,
            &self.sql.create_saga,
            &[
                &id,
                &saga.definition,
                &i64::from(saga.version),
                &owner.as_str(),
                &ttl_micros(ttl),
            ],
        )
        .await?;
        if inserted == 0 {
            return Err(LogError::AlreadyExists { saga: saga.id });
        }
        let created = saga.created_record();
        let parts = created.to_parts();
        execute(
            &tx,
            &self.sql.insert_record,
            &[
                &id,
                &0_i64,
                &1_i64,
                &parts.kind,
                &parts.body,
                &parts.payload,
            ],
        )
        .await?;
        tx.commit().await.map_err(unavailable)?;
        tracing::debug!(saga = %saga.id, owner = %owner, "postgres saga log: saga created");
        Ok(Lease {
            saga: saga.id,
            owner: owner.clone(),
            epoch: 1,
        })
    }

    async fn append_record(&self, lease: &Lease, record: RecordKind) -> Result<u64, LogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let row = lock(&tx, &self.sql, lease.saga).await?;
        row.check_lease(lease)?;
        if row.state.is_finished() {
            return Err(LogError::Finished {
                saga: lease.saga,
                state: row.state,
            });
        }
        let seq = row.records;
        let parts = record.to_parts();
        execute(
            &tx,
            &self.sql.append,
            &[
                &lease.saga.to_string(),
                &as_i64(seq),
                &as_i64(lease.epoch),
                &parts.kind,
                &parts.body,
                &parts.payload,
                &row.state.after(&record).as_str(),
            ],
        )
        .await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(seq)
    }

    /// Renews the lease for `ttl`, or releases it with `None`.
    async fn set_lease(&self, lease: &Lease, ttl: Option<Duration>) -> Result<(), LogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let row = lock(&tx, &self.sql, lease.saga).await?;
        row.check_lease(lease)?;
        let id = lease.saga.to_string();
        match ttl {
            Some(ttl) => execute(&tx, &self.sql.set_expiry, &[&id, &ttl_micros(ttl)]).await?,
            None => execute(&tx, &self.sql.release, &[&id]).await?,
        };
        tx.commit().await.map_err(unavailable)?;
        if ttl.is_none() {
            tracing::debug!(saga = %lease.saga, owner = %lease.owner, epoch = lease.epoch, "postgres saga log: lease released");
        }
        Ok(())
    }

    async fn claim_one(
        &self,
        saga: SagaId,
        owner: &OwnerId,
        ttl: Duration,
    ) -> Result<ClaimedSaga, LogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let row = lock(&tx, &self.sql, saga).await?;
        if row.state.is_finished() {
            return Err(LogError::Finished {
                saga,
                state: row.state,
            });
        }
        if row.live && row.owner != owner.as_str() {
            return Err(LogError::LeaseHeld {
                saga,
                owner: stored_owner(saga, &row.owner)?,
            });
        }
        let take = tx
            .prepare_cached(&self.sql.take)
            .await
            .map_err(unavailable)?;
        let taken = tx
            .query_one(
                &take,
                &[&saga.to_string(), &owner.as_str(), &ttl_micros(ttl)],
            )
            .await
            .map_err(unavailable)?;
        let epoch = stored_u64(saga, taken.get(0), "epoch")?;
        let history = tx
            .prepare_cached(&self.sql.history)
            .await
            .map_err(unavailable)?;
        let records = match history_in(tx.client(), &history, saga).await {
            Err(error @ LogError::Unavailable { .. }) => return Err(error),
            other => other,
        };
        tx.commit().await.map_err(unavailable)?;
        tracing::info!(%saga, owner = %owner, epoch, previous_owner = %row.owner, "postgres saga log: saga claimed");
        Ok(ClaimedSaga {
            lease: Lease {
                saga,
                owner: owner.clone(),
                epoch,
            },
            state: row.state,
            records,
        })
    }

    async fn claim_many(
        &self,
        owner: &OwnerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedSaga>, LogError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let select = tx
            .prepare_cached(&self.sql.unfinished)
            .await
            .map_err(unavailable)?;
        let ids: Vec<String> = tx
            .query(&select, &[&owner.as_str(), &as_i64(limit as u64)])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if ids.is_empty() {
            tx.commit().await.map_err(unavailable)?;
            return Ok(Vec::new());
        }
        let take = tx
            .prepare_cached(&self.sql.take_many)
            .await
            .map_err(unavailable)?;
        let taken = tx
            .query(&take, &[&ids, &owner.as_str(), &ttl_micros(ttl)])
            .await
            .map_err(unavailable)?;
        let read = tx
            .prepare_cached(&self.sql.history_many)
            .await
            .map_err(unavailable)?;
        let mut stored: HashMap<String, Vec<RecordRow>> = HashMap::new();
        // A row whose columns cannot be read spoils its own saga only.
        let mut unreadable: HashMap<String, String> = HashMap::new();
        for row in tx.query(&read, &[&ids]).await.map_err(unavailable)? {
            let id: String = row.get(0);
            match RecordRow::read(&row, 1) {
                Ok(Some(record)) => stored.entry(id).or_default().push(record),
                Ok(None) => {}
                Err(error) => {
                    unreadable.insert(id, error.to_string());
                }
            }
        }
        let mut by_id: HashMap<String, ClaimedSaga> = HashMap::with_capacity(taken.len());
        for row in &taken {
            let id: String = row.get(0);
            let saga = match id.parse::<SagaId>() {
                Ok(saga) => saga,
                Err(error) => {
                    // Not a saga this crate wrote; it cannot be resumed.
                    tracing::error!(id, %error, "postgres saga log: saga row with an invalid id");
                    continue;
                }
            };
            let state = stored_state(saga, row.get(2));
            let epoch = stored_u64(saga, row.get(1), "epoch");
            let (state, epoch) = match (state, epoch) {
                (Ok(state), Ok(epoch)) => (state, epoch),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(%saga, %error, "postgres saga log: saga row unreadable");
                    continue;
                }
            };
            let records = match unreadable.remove(&id) {
                Some(detail) => Err(corrupt(saga, None, detail)),
                None => stored_u64(saga, row.get(3), "record count").and_then(|expected| {
                    records(saga, stored.remove(&id).unwrap_or_default(), expected)
                }),
            };
            by_id.insert(
                id,
                ClaimedSaga {
                    lease: Lease {
                        saga,
                        owner: owner.clone(),
                        epoch,
                    },
                    state,
                    records,
                },
            );
        }
        tx.commit().await.map_err(unavailable)?;
        let claimed: Vec<ClaimedSaga> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
        tracing::info!(owner = %owner, claimed = claimed.len(), "postgres saga log: unfinished sagas claimed");
        Ok(claimed)
    }

    async fn read_history(&self, saga: SagaId) -> Result<Vec<LoggedRecord>, LogError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.history)
            .await
            .map_err(unavailable)?;
        history_in(&client, &statement, saga).await
    }

    async fn read_summary(&self, saga: SagaId) -> Result<SagaSummary, LogError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.summary)
            .await
            .map_err(unavailable)?;
        let row = client
            .query_opt(&statement, &[&saga.to_string()])
            .await
            .map_err(unavailable)?
            .ok_or(LogError::NotFound { saga })?;
        summary_from(&row)
    }

    async fn read_list(
        &self,
        state: Option<SagaState>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, LogError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.list)
            .await
            .map_err(unavailable)?;
        client
            .query(
                &statement,
                &[&state.map(SagaState::as_str), &as_i64(limit as u64)],
            )
            .await
            .map_err(unavailable)?
            .iter()
            .map(summary_from)
            .collect()
    }
}

/// Logs a failed operation: unavailability at `warn`, refusals (fencing,
/// held leases) at `debug`.
fn traced<T>(operation: &'static str, result: Result<T, LogError>) -> Result<T, LogError> {
    match &result {
        Err(error @ (LogError::Unavailable { .. } | LogError::Corrupt { .. })) => {
            tracing::warn!(operation, %error, "postgres saga log operation failed");
        }
        Err(error) => tracing::debug!(operation, %error, "postgres saga log refused"),
        Ok(_) => {}
    }
    result
}

impl SagaLog for PostgresLog {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn create<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        Box::pin(async move { traced("create", self.create_saga(saga, owner, lease_ttl).await) })
    }

    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        Box::pin(async move { traced("append", self.append_record(lease, record).await) })
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move { traced("renew", self.set_lease(lease, Some(lease_ttl)).await) })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move { traced("release", self.set_lease(lease, None).await) })
    }

    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
        Box::pin(async move { traced("claim", self.claim_one(saga, owner, lease_ttl).await) })
    }

    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a OwnerId,
        lease_ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ClaimedSaga>, LogError>> {
        Box::pin(async move {
            traced(
                "claim_unfinished",
                self.claim_many(owner, lease_ttl, limit).await,
            )
        })
    }

    fn history(&self, saga: SagaId) -> BoxFuture<'_, Result<Vec<LoggedRecord>, LogError>> {
        Box::pin(async move { traced("history", self.read_history(saga).await) })
    }

    fn summary(&self, saga: SagaId) -> BoxFuture<'_, Result<SagaSummary, LogError>> {
        Box::pin(async move { traced("summary", self.read_summary(saga).await) })
    }

    fn list(
        &self,
        state: Option<SagaState>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
        Box::pin(async move { traced("list", self.read_list(state, limit).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        for good in ["palisade", "t_1", "_x", &"a".repeat(63)] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "pg_temp",
            "Upper",
            "a-b",
            "a\"b",
            &"a".repeat(64),
        ] {
            let err = check_schema_name(bad).unwrap_err();
            assert_eq!(err.field(), "schema", "{bad}");
        }
    }

    #[test]
    fn huge_lease_ttls_are_capped_and_small_ones_exact() {
        assert_eq!(ttl_micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(ttl_micros(Duration::MAX), ttl_micros(LONGEST_LEASE));
    }

    fn row(seq: i64, record: &RecordKind) -> RecordRow {
        let parts = record.to_parts();
        RecordRow {
            seq,
            epoch: 1,
            at: SystemTime::UNIX_EPOCH,
            kind: parts.kind.into(),
            body: parts.body,
            payload: parts.payload.map(<[u8]>::to_vec),
        }
    }

    fn created() -> RecordKind {
        RecordKind::SagaCreated {
            definition: "d".into(),
            version: 1,
            input: vec![],
        }
    }

    #[test]
    fn gaps_missing_records_and_a_wrong_first_record_are_corrupt() {
        let saga = SagaId::from_u128(7);
        let ok = records(
            saga,
            vec![row(0, &created()), row(1, &RecordKind::StuckRetried)],
            2,
        );
        assert_eq!(ok.unwrap().len(), 2);
        let gap = records(
            saga,
            vec![row(0, &created()), row(2, &RecordKind::StuckRetried)],
            3,
        );
        assert!(
            matches!(gap, Err(LogError::Corrupt { seq: Some(1), .. })),
            "{gap:?}"
        );
        let short = records(saga, vec![row(0, &created())], 2);
        assert!(
            matches!(short, Err(LogError::Corrupt { seq: Some(1), .. })),
            "{short:?}"
        );
        let first = records(saga, vec![row(0, &RecordKind::StuckRetried)], 1);
        assert!(
            matches!(first, Err(LogError::Corrupt { seq: Some(0), .. })),
            "{first:?}"
        );
        let mut bad = row(1, &RecordKind::StuckRetried);
        bad.kind = "no_such_kind".into();
        let unknown = records(saga, vec![row(0, &created()), bad], 2);
        assert!(
            matches!(unknown, Err(LogError::Corrupt { seq: Some(1), .. })),
            "{unknown:?}"
        );
    }
}
