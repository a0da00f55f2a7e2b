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
//!
//! TLS: see [`PostgresLog`]'s docs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use rustls::ClientConfig;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use self::schema::Statements;
use super::{BoxFuture, ClaimedSaga, Lease, LogError, NewSaga, SagaLog, SagaSummary};
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

mod claim;
mod config;
mod conninfo;
mod read;
mod schema;
mod tls;
mod write;

pub use self::config::{PostgresLogConfig, PostgresLogConfigBuilder};
pub use self::tls::PostgresSslMode;

const BACKEND: &str = "postgres";
const COMPONENT: &str = "postgres saga log";

/// The version of the table layout written and read by this version of
/// palisade; stored in the schema's `saga_schema` table.
pub const POSTGRES_SCHEMA_VERSION: i32 = 1;

/// The longest lease accepted by the log; longer TTLs (such as
/// `Duration::MAX`) are stored as this, which no executor outlives.
const LONGEST_LEASE: Duration = Duration::from_secs(86_400 * 365 * 100);

/// [`PostgresLog::connect`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresConnectError {
    /// The server could not be reached, the TLS handshake failed (the
    /// server's certificate was not accepted, say) or the server refused
    /// the connection or the schema creation (usually
    /// [`LogError::Unavailable`]). The message shows the whole chain of
    /// causes.
    #[error("cannot open the postgres saga log: {}", with_causes(.0))]
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

/// `error` followed by the causes its own message leaves out: tokio-postgres
/// says "error performing TLS handshake" and keeps the why in its source.
fn with_causes(error: &LogError) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    // LogError::Unavailable's message already shows its direct source.
    let mut cause = error.source().and_then(|source| source.source());
    while let Some(error) = cause {
        let more = error.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = error.source();
    }
    text
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
/// Clones share one connection pool. TCP connections use TLS as the
/// connection string's `sslmode` asks (see [TLS](#tls) below). A lost connection or any database failure is
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
///
/// # TLS
///
/// TCP connections use TLS (rustls, with the `ring` provider) as the
/// connection string's `sslmode` asks, with libpq's meanings; Unix sockets
/// never use TLS.
///
/// | `sslmode` | TLS | the server's certificate |
/// |---|---|---|
/// | `disable` | never | - |
/// | `prefer` (default) | if the server offers it | not verified |
/// | `require` | always | not verified; with root certificates, its chain is (as `verify-ca`) |
/// | `verify-ca` | always | must chain to a root certificate |
/// | `verify-full` | always | must chain to a root certificate and name the host |
///
/// Root certificates (no default set is trusted):
///
/// * `sslrootcert=/path/ca.pem` in the connection string: a PEM file of CA
///   certificates, read by [`build`](PostgresLogConfigBuilder::build);
/// * `sslrootcert=system`: the platform's trusted roots (as
///   `rustls-native-certs` finds them; on Linux the OpenSSL CA bundle);
///   as in libpq this means `verify-full`, and a weaker `sslmode` is an
///   error;
/// * [`PostgresLogConfigBuilder::root_certificate`]: PEM text, added to
///   the above.
///
/// `verify-ca` or `verify-full` without any root certificate is a
/// [`ConfigError`](crate::ConfigError). [`PostgresLogConfigBuilder::ssl_mode`]
/// overrides the string's `sslmode` (the only way to ask for
/// `verify-full` with [`PostgresLogConfig::builder_from`]). The name
/// checked by `verify-full` is the `host` (a DNS name or an IP address in
/// the certificate's subject alternative names), also when `hostaddr`
/// gives the address to connect to. Client certificates (`sslcert`,
/// `sslkey`) are not supported.
///
/// No password is shown: the `Debug` output of the config, its builder and
/// the log hide it, and errors and traces never quote the connection
/// string.
///
/// ```no_run
/// use palisade::saga::log::{PostgresLog, PostgresLogConfig, PostgresSslMode};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = PostgresLogConfig::builder(
///     "postgres://orders@db.internal/orders?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
/// )
/// .build()?; // reads the CA file; a missing one is a ConfigError naming `sslrootcert`
/// assert_eq!(config.ssl_mode(), PostgresSslMode::VerifyFull);
/// let log = PostgresLog::connect(config).await?; // a certificate the CA did not sign fails here
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
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &config.tls {
            Some(tls) => Manager::from_config(
                config.pg.clone(),
                MakeRustlsConnect::new(ClientConfig::clone(tls)),
                manager_config,
            ),
            None => Manager::from_config(config.pg.clone(), NoTls, manager_config),
        };
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
        if let Err(error) = log.prepare_schema().await {
            tracing::warn!(schema = %config.schema, %error, "postgres saga log connect failed");
            return Err(error);
        }
        tracing::info!(
            schema = %config.schema,
            max_connections = config.max_connections,
            sslmode = %config.ssl_mode(),
            "postgres saga log connected"
        );
        Ok(log)
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

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
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
        after: Option<super::ListCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
        Box::pin(async move { traced("list", self.read_list(state, after, limit).await) })
    }

    fn prune_finished(
        &self,
        finished_before: std::time::SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, LogError>> {
        Box::pin(async move { traced("prune", self.prune(finished_before, limit).await) })
    }
}
