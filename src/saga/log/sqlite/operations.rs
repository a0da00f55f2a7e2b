//! Each operation's statements, run inside the writer's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, Transaction, params};

use super::BACKEND;
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::log::decode::{RecordDecoder, StoredRecord, corrupt, stored_owner, stored_state};
use crate::saga::log::{ClaimedSaga, Lease, LogError, NewSaga, SagaSummary};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

/// A database failure inside an operation: the transaction must roll back.
pub(super) type Sql<T> = Result<Result<T, LogError>, rusqlite::Error>;

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

/// A saga row's lease and state.
struct Row {
    state: SagaState,
    owner: OwnerId,
    epoch: u64,
    expires_ms: Option<i64>,
    records: u64,
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
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
    let state = match stored_state(saga, &state) {
        Ok(state) => state,
        Err(error) => return Ok(Err(error)),
    };
    let owner = match stored_owner(saga, &owner) {
        Ok(owner) => owner,
        Err(error) => return Ok(Err(error)),
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

pub(super) fn create(
    tx: &Transaction<'_>,
    saga: NewSaga,
    owner: &OwnerId,
    ttl: Duration,
) -> Sql<Lease> {
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

pub(super) fn append(tx: &Transaction<'_>, lease: &Lease, record: RecordKind) -> Sql<u64> {
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
pub(super) fn renew(tx: &Transaction<'_>, lease: &Lease, ttl: Option<Duration>) -> Sql<()> {
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

pub(super) fn claim(
    tx: &Transaction<'_>,
    saga: SagaId,
    owner: &OwnerId,
    ttl: Duration,
) -> Sql<ClaimedSaga> {
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

pub(super) fn claim_unfinished(
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

pub(super) fn history(tx: &Transaction<'_>, saga: SagaId) -> Sql<Vec<LoggedRecord>> {
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
    let mut decoder = RecordDecoder::new(saga);
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
        let stored = StoredRecord {
            seq,
            epoch,
            at: ms_to_time(at_ms),
            kind,
            body,
            payload,
        };
        if let Err(error) = decoder.push_stored(stored) {
            return Ok(Err(error));
        }
    }
    let records = decoder.finish();
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
    let state = stored_state(saga, &state)?;
    let owner = stored_owner(saga, &owner)?;
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

pub(super) fn summary(tx: &Transaction<'_>, saga: SagaId) -> Sql<SagaSummary> {
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

pub(super) fn list(
    tx: &Transaction<'_>,
    state: Option<SagaState>,
    limit: usize,
) -> Sql<Vec<SagaSummary>> {
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
