//! Where sagas are recorded: the [`SagaLog`] trait and its backends.
//!
//! A log stores, per saga, an append-only list of records
//! ([`RecordKind`]) and an owner *lease*. The executor that drives a saga
//! holds its lease; every append carries the lease's epoch, and the log
//! rejects an append whose epoch is not the saga's current one with
//! [`LogError::Fenced`]. When an executor dies, another one claims its
//! unfinished sagas ([`SagaLog::claim_unfinished`]) once their leases
//! expire; each claim increments the epoch, so the old executor, should
//! it wake up, can no longer write.
//!
//! | backend | feature | use |
//! |---|---|---|
//! | [`MemoryLog`] | always | tests, sagas that need not survive the process |
//! | [`SqliteLog`] | `sqlite` (default) | one process, durable in a file |
//!
//! # Contract for implementors
//!
//! * Sequence numbers start at 0 with [`RecordKind::SagaCreated`] and have
//!   no gaps. An append is acknowledged only once it is durable (for a
//!   durable backend).
//! * [`append`](SagaLog::append) succeeds only if the lease's owner and
//!   epoch are the saga's current ones and the saga is not finished. An
//!   expired lease that nobody claimed may still append: fencing is by
//!   epoch, and expiry only makes the saga claimable.
//! * The saga's state is kept with [`SagaState::after`] on every append.
//! * [`claim`](SagaLog::claim) and [`claim_unfinished`](SagaLog::claim_unfinished)
//!   take a lease that is released, expired or already held by the same
//!   owner, and increment the epoch; concurrent claims of one saga must
//!   not both succeed (`SELECT ... FOR UPDATE SKIP LOCKED` or a
//!   compare-and-set on the epoch).
//! * A record that cannot be read is reported as [`LogError::Corrupt`]
//!   with the saga id, never skipped; so is a saga whose stored record
//!   count, state, owner or counters cannot be read or do not match its
//!   records, and [`claim_unfinished`](SagaLog::claim_unfinished) returns
//!   such a saga with its error in [`ClaimedSaga::records`].
//! * [`list`](SagaLog::list) is paged: sagas in (creation time, id) order,
//!   starting after a [`ListCursor`], at most `limit` of them.
//! * [`prune_finished`](SagaLog::prune_finished) deletes finished sagas
//!   (completed, compensated, abandoned; never stuck or active ones) whose
//!   last record is older than a given time, records included, at most
//!   `limit` per call; pruned sagas are [`LogError::NotFound`] afterwards.
//!   [`SagaExecutorBuilder::retention`](crate::saga::SagaExecutorBuilder::retention)
//!   calls it in the background.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::id::{OwnerId, SagaId};
use super::record::{LoggedRecord, RecordKind, SagaState};

mod decode;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use self::memory::MemoryLog;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{
    POSTGRES_SCHEMA_VERSION, PostgresConnectError, PostgresLog, PostgresLogConfig,
    PostgresLogConfigBuilder, PostgresPoolStatus, PostgresSslMode,
};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::sqlite::{
    MAX_SQLITE_BATCH, SqliteLog, SqliteLogConfig, SqliteLogConfigBuilder, SqliteSync,
};

pub use crate::future::BoxFuture;

/// The right to write a saga's records, held by one executor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The saga.
    pub saga: SagaId,
    /// The executor holding it.
    pub owner: OwnerId,
    /// Incremented by every claim; appends carry it and are rejected when
    /// it is no longer the saga's current epoch.
    pub epoch: u64,
}

/// A new saga, as given to [`SagaLog::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSaga {
    /// Its id.
    pub id: SagaId,
    /// The definition's name.
    pub definition: String,
    /// The definition's version.
    pub version: u32,
    /// The encoded input.
    pub input: Vec<u8>,
}

impl NewSaga {
    /// The [`RecordKind::SagaCreated`] record that starts its log.
    pub fn created_record(&self) -> RecordKind {
        RecordKind::SagaCreated {
            definition: self.definition.clone(),
            version: self.version,
            input: self.input.clone(),
        }
    }
}

/// A saga taken over by [`SagaLog::claim`] or [`SagaLog::claim_unfinished`].
#[derive(Debug, Clone)]
pub struct ClaimedSaga {
    /// The new lease (epoch incremented).
    pub lease: Lease,
    /// The saga's state when claimed.
    pub state: SagaState,
    /// Its records in order, or the error that prevented reading them
    /// (for example [`LogError::Corrupt`]): one unreadable saga does not
    /// stop the others from being claimed.
    pub records: Result<Vec<LoggedRecord>, LogError>,
}

/// One saga, as listed by [`SagaLog::list`] and [`SagaLog::summary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaSummary {
    /// Its id.
    pub id: SagaId,
    /// The definition's name.
    pub definition: String,
    /// The definition's version.
    pub version: u32,
    /// Its state.
    pub state: SagaState,
    /// The executor holding its lease, if the lease is neither released
    /// nor expired.
    pub owner: Option<OwnerId>,
    /// The current lease epoch.
    pub epoch: u64,
    /// The number of records.
    pub records: u64,
    /// When it was created (the backend's clock).
    pub created_at: SystemTime,
    /// When its last record was appended.
    pub updated_at: SystemTime,
}

/// Where a page of [`SagaLog::list`] starts: just after this saga, in
/// (creation time, id) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// The last listed saga's creation time, as the log reported it.
    pub created_at: SystemTime,
    /// The last listed saga's id.
    pub id: SagaId,
}

impl ListCursor {
    /// The cursor for the page after `last`, the last saga of a page.
    pub fn after(last: &SagaSummary) -> Self {
        Self {
            created_at: last.created_at,
            id: last.id,
        }
    }

    /// Whether `summary` comes after the cursor.
    pub fn precedes(&self, summary: &SagaSummary) -> bool {
        (summary.created_at, summary.id) > (self.created_at, self.id)
    }
}

/// A saga log failed or refused an operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// [`SagaLog::create`] with an id that is already used.
    #[error("saga {saga} already exists")]
    AlreadyExists {
        /// The saga.
        saga: SagaId,
    },
    /// No saga has this id.
    #[error("no saga {saga} in the log")]
    NotFound {
        /// The saga.
        saga: SagaId,
    },
    /// The lease was taken over: its epoch is no longer the saga's.
    #[error("saga {saga}: lease epoch {epoch} of {owner} is fenced off (current epoch {current})")]
    Fenced {
        /// The saga.
        saga: SagaId,
        /// The owner that tried to write.
        owner: OwnerId,
        /// The epoch it tried to write with.
        epoch: u64,
        /// The saga's current epoch.
        current: u64,
    },
    /// A claim found the lease held by another live owner.
    #[error("saga {saga} is leased to {owner}")]
    LeaseHeld {
        /// The saga.
        saga: SagaId,
        /// Its owner.
        owner: OwnerId,
    },
    /// The saga has finished; nothing more may be appended or claimed.
    #[error("saga {saga} has finished ({state})")]
    Finished {
        /// The saga.
        saga: SagaId,
        /// How it finished.
        state: SagaState,
    },
    /// A stored record could not be read.
    #[error("saga {saga}: corrupt log record{}: {detail}", seq.map(|s| format!(" {s}")).unwrap_or_default())]
    Corrupt {
        /// The saga whose record is unreadable.
        saga: SagaId,
        /// The record's sequence number, when known.
        seq: Option<u64>,
        /// What is wrong with it.
        detail: String,
    },
    /// The backend failed (I/O, connection, database error).
    #[error("{backend} saga log unavailable: {source}")]
    Unavailable {
        /// The backend, e.g. `"sqlite"`.
        backend: &'static str,
        /// The cause.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The log was shut down.
    #[error("{backend} saga log is closed")]
    Closed {
        /// The backend.
        backend: &'static str,
    },
}

impl LogError {
    /// A [`LogError::Unavailable`] from any error.
    pub fn unavailable(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        LogError::Unavailable {
            backend,
            source: Arc::from(source.into()),
        }
    }
}

/// A saga log: append-only records per saga, plus an owner lease.
///
/// Object safe; the executor holds an `Arc<dyn SagaLog>`. Read the module
/// documentation for the contract every backend keeps.
pub trait SagaLog: fmt::Debug + Send + Sync + 'static {
    /// The backend's name, e.g. `"memory"`, `"sqlite"`, `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Creates a saga: stores its [`RecordKind::SagaCreated`] record with
    /// sequence number 0 and leases it to `owner` at epoch 1 for
    /// `lease_ttl`. [`LogError::AlreadyExists`] if the id is used.
    fn create<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, LogError>>;

    /// Appends `record` to the lease's saga and returns its sequence
    /// number, once durable. [`LogError::Fenced`] if the lease's owner or
    /// epoch is not current, [`LogError::Finished`] after
    /// [`RecordKind::SagaFinished`], [`LogError::NotFound`] for an unknown
    /// saga.
    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>>;

    /// Appends `records`, in order, to the lease's saga and returns the
    /// sequence number of the last one (`None` for an empty list), once
    /// all of them are durable. The checks are those of
    /// [`append`](Self::append), made for every record.
    ///
    /// The executor uses it to write a step's completion together with
    /// the record that follows it (the next step's start), so that a
    /// durable backend makes one commit for both. A backend that can
    /// writes the records in one transaction (all or none, as
    /// the SQLite and memory logs do); the default appends them one after the other,
    /// so a failure or a crash may keep a prefix of them, which is what
    /// the same appends made one by one would have kept.
    fn append_batch<'a>(
        &'a self,
        lease: &'a Lease,
        records: Vec<RecordKind>,
    ) -> BoxFuture<'a, Result<Option<u64>, LogError>> {
        Box::pin(async move {
            let mut last = None;
            for record in records {
                last = Some(self.append(lease, record).await?);
            }
            Ok(last)
        })
    }

    /// Creates a saga as [`create`](Self::create) does and appends
    /// `records` after its [`RecordKind::SagaCreated`] record (sequence
    /// numbers 1, 2, …), as [`append_batch`](Self::append_batch) would
    /// with the new lease; returns the lease once all of them are durable.
    ///
    /// The executor uses it to write a saga's creation together with its
    /// first step's start, so that a durable backend makes one commit for
    /// both, when [`creates_atomically`](Self::creates_atomically) says
    /// the backend writes everything in one transaction (all or none, as
    /// the SQLite and memory logs do). The default creates the saga and
    /// then appends the records, so a failure or a crash may leave the
    /// saga created without them (and the error returned), which is what
    /// the same calls made one by one would have left.
    fn create_with<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        lease_ttl: Duration,
        records: Vec<RecordKind>,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        Box::pin(async move {
            let lease = self.create(saga, owner, lease_ttl).await?;
            self.append_batch(&lease, records).await?;
            Ok(lease)
        })
    }

    /// Whether [`create_with`](Self::create_with) writes the saga and its
    /// records in one commit, all or none (default `false`). Only then
    /// does the executor write a saga's first step's start with its
    /// creation; otherwise it creates the saga alone and appends the start
    /// from the saga's driver, which resumes the saga if that append fails.
    fn creates_atomically(&self) -> bool {
        false
    }

    /// Extends the lease to `lease_ttl` from now; [`LogError::Fenced`] if
    /// it was taken over.
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Gives the lease up (it expires now, the epoch is unchanged), so any
    /// executor may claim the saga. [`LogError::Fenced`] if it was
    /// already taken over.
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LogError>>;

    /// Claims one unfinished saga (running, compensating or stuck) whose
    /// lease is released, expired or held by `owner`: increments its epoch
    /// and leases it to `owner` for `lease_ttl`. [`LogError::LeaseHeld`]
    /// if another owner's lease is live, [`LogError::Finished`] if it
    /// finished.
    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>>;

    /// Claims up to `limit` sagas that are [active](SagaState::is_active)
    /// and whose lease is released, expired or held by `owner`, as
    /// [`claim`](Self::claim) does each. Sagas leased to other live owners
    /// are skipped (not waited for); stuck sagas are left to operators.
    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a OwnerId,
        lease_ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ClaimedSaga>, LogError>>;

    /// Every record of a saga, in order.
    fn history(&self, saga: SagaId) -> BoxFuture<'_, Result<Vec<LoggedRecord>, LogError>>;

    /// The saga's summary.
    fn summary(&self, saga: SagaId) -> BoxFuture<'_, Result<SagaSummary, LogError>>;

    /// Up to `limit` sagas, in `state` if given, oldest first (by creation
    /// time, then id), starting after `after`: pass
    /// [`ListCursor::after`] the last saga of a page to read the next.
    fn list(
        &self,
        state: Option<SagaState>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>>;

    /// Deletes up to `limit` finished sagas (completed, compensated or
    /// abandoned) whose last record was appended before `finished_before`,
    /// with their records; returns how many were deleted.
    fn prune_finished(
        &self,
        finished_before: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, LogError>>;
}

macro_rules! forward_saga_log {
    ($($ptr:ident),*) => {$(
        impl<L: SagaLog + ?Sized> SagaLog for $ptr<L> {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn create<'a>(&'a self, saga: NewSaga, owner: &'a OwnerId, lease_ttl: Duration) -> BoxFuture<'a, Result<Lease, LogError>> {
                (**self).create(saga, owner, lease_ttl)
            }
            fn creates_atomically(&self) -> bool {
                (**self).creates_atomically()
            }
            fn create_with<'a>(&'a self, saga: NewSaga, owner: &'a OwnerId, lease_ttl: Duration, records: Vec<RecordKind>) -> BoxFuture<'a, Result<Lease, LogError>> {
                (**self).create_with(saga, owner, lease_ttl, records)
            }
            fn append<'a>(&'a self, lease: &'a Lease, record: RecordKind) -> BoxFuture<'a, Result<u64, LogError>> {
                (**self).append(lease, record)
            }
            fn append_batch<'a>(&'a self, lease: &'a Lease, records: Vec<RecordKind>) -> BoxFuture<'a, Result<Option<u64>, LogError>> {
                (**self).append_batch(lease, records)
            }
            fn renew<'a>(&'a self, lease: &'a Lease, lease_ttl: Duration) -> BoxFuture<'a, Result<(), LogError>> {
                (**self).renew(lease, lease_ttl)
            }
            fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LogError>> {
                (**self).release(lease)
            }
            fn claim<'a>(&'a self, saga: SagaId, owner: &'a OwnerId, lease_ttl: Duration) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
                (**self).claim(saga, owner, lease_ttl)
            }
            fn claim_unfinished<'a>(&'a self, owner: &'a OwnerId, lease_ttl: Duration, limit: usize) -> BoxFuture<'a, Result<Vec<ClaimedSaga>, LogError>> {
                (**self).claim_unfinished(owner, lease_ttl, limit)
            }
            fn history(&self, saga: SagaId) -> BoxFuture<'_, Result<Vec<LoggedRecord>, LogError>> {
                (**self).history(saga)
            }
            fn summary(&self, saga: SagaId) -> BoxFuture<'_, Result<SagaSummary, LogError>> {
                (**self).summary(saga)
            }
            fn list(&self, state: Option<SagaState>, after: Option<ListCursor>, limit: usize) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
                (**self).list(state, after, limit)
            }
            fn prune_finished(&self, finished_before: SystemTime, limit: usize) -> BoxFuture<'_, Result<u64, LogError>> {
                (**self).prune_finished(finished_before, limit)
            }
        }
    )*};
}

forward_saga_log!(Arc, Box);
