//! Each operation's statements, run inside the writer's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, Transaction, params};

use super::BACKEND;
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::log::decode::{
    RecordDecoder, StoredRecord, corrupt, stored_owner, stored_state, stored_u64,
};
use crate::saga::log::{ClaimedSaga, Lease, ListCursor, LogError, NewSaga, SagaSummary};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

/// A database failure inside an operation: the transaction must roll back.
pub(super) type Sql<T> = Result<Result<T, LogError>, rusqlite::Error>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stored time in milliseconds since the Unix epoch.
fn stored_time(saga: SagaId, ms: i64, what: &str) -> Result<SystemTime, LogError> {
    Ok(UNIX_EPOCH + Duration::from_millis(stored_u64(saga, ms, what)?))
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
        .prepare_cached(
            "SELECT state, owner, epoch, lease_expires_ms, records FROM saga WHERE id = ?1",
        )?
        .query_row(params![saga.to_string()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((state, owner, epoch, expires_ms, records)) = row else {
        return Ok(Err(LogError::NotFound { saga }));
    };
    let decoded = (|| {
        Ok(Row {
            state: stored_state(saga, &state)?,
            owner: stored_owner(saga, &owner)?,
            epoch: stored_u64(saga, epoch, "epoch")?,
            expires_ms,
            records: stored_u64(saga, records, "record count")?,
        })
    })();
    Ok(decoded)
}

/// The last stored record's sequence number must be the one before the
/// row's record count: otherwise records were lost (or added behind the
/// log's back), and appending would reuse or skip a sequence number.
fn check_last_record(tx: &Transaction<'_>, saga: SagaId, records: u64) -> Sql<()> {
    let last: Option<i64> = tx
        .prepare_cached("SELECT MAX(seq) FROM saga_record WHERE saga = ?1")?
        .query_row(params![saga.to_string()], |row| row.get(0))?;
    let expected = records.checked_sub(1).map(as_i64);
    if last == expected {
        return Ok(Ok(()));
    }
    Ok(Err(corrupt(
        saga,
        None,
        format!(
            "the saga has {records} records but the last stored one is {}",
            last.map_or_else(|| "none".to_owned(), |seq| seq.to_string())
        ),
    )))
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
    saga: &str,
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
        saga,
        as_i64(seq),
        as_i64(epoch),
        at_ms,
        parts.kind,
        parts.body,
        parts.payload
    ])?;
    Ok(())
}

/// Creates the saga with its created record and `records` after it:
/// every check is made before anything is written, so a refused creation
/// leaves nothing behind.
pub(super) fn create(
    tx: &Transaction<'_>,
    saga: NewSaga,
    owner: &OwnerId,
    ttl: Duration,
    records: Vec<RecordKind>,
) -> Sql<Lease> {
    let id = saga.id.to_string();
    let exists = tx
        .prepare_cached("SELECT 1 FROM saga WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?;
    if exists.is_some() {
        return Ok(Err(LogError::AlreadyExists { saga: saga.id }));
    }
    let mut state = SagaState::Running;
    for record in &records {
        if state.is_finished() {
            return Ok(Err(LogError::Finished {
                saga: saga.id,
                state,
            }));
        }
        state = state.after(record);
    }
    let now = now_ms();
    let count = 1 + records.len() as u64;
    tx.prepare_cached(
        "INSERT INTO saga (id, definition, version, state, owner, epoch, lease_expires_ms,
                           records, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?8)",
    )?
    .execute(params![
        id,
        saga.definition,
        saga.version,
        state.as_str(),
        owner.as_str(),
        expiry_ms(ttl),
        as_i64(count),
        now
    ])?;
    insert_record(tx, &id, 0, 1, now, &saga.created_record())?;
    for (seq, record) in (1..).zip(&records) {
        insert_record(tx, &id, seq, 1, now, record)?;
    }
    Ok(Ok(Lease {
        saga: saga.id,
        owner: owner.clone(),
        epoch: 1,
    }))
}

pub(super) fn append(tx: &Transaction<'_>, lease: &Lease, record: RecordKind) -> Sql<u64> {
    Ok(append_batch(tx, lease, vec![record])?.map(|last| last.unwrap_or_default()))
}

/// Appends `records` in order: every check is made before anything is
/// written, so a refused batch leaves nothing behind.
pub(super) fn append_batch(
    tx: &Transaction<'_>,
    lease: &Lease,
    records: Vec<RecordKind>,
) -> Sql<Option<u64>> {
    let row = match read_row(tx, lease.saga)? {
        Ok(row) => row,
        Err(error) => return Ok(Err(error)),
    };
    if let Err(error) = check_lease(&row, lease) {
        return Ok(Err(error));
    }
    let mut state = row.state;
    for record in &records {
        if state.is_finished() {
            return Ok(Err(LogError::Finished {
                saga: lease.saga,
                state,
            }));
        }
        state = state.after(record);
    }
    if records.is_empty() {
        return Ok(Ok(None));
    }
    if let Err(error) = check_last_record(tx, lease.saga, row.records)? {
        return Ok(Err(error));
    }
    let now = now_ms();
    let saga = lease.saga.to_string();
    let mut seq = row.records;
    for record in &records {
        insert_record(tx, &saga, seq, lease.epoch, now, record)?;
        seq += 1;
    }
    if state == row.state {
        // Leaves the `saga_by_state` index alone: one page fewer to write
        // (most appends, every step's, do not change the state).
        tx.prepare_cached("UPDATE saga SET records = ?2, updated_ms = ?3 WHERE id = ?1")?
            .execute(params![saga, as_i64(seq), now])?;
    } else {
        tx.prepare_cached(
            "UPDATE saga SET state = ?2, records = ?3, updated_ms = ?4 WHERE id = ?1",
        )?
        .execute(params![saga, state.as_str(), as_i64(seq), now])?;
    }
    Ok(Ok(Some(seq - 1)))
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
    // Every state but the finished ones and `stuck`: a row whose state is
    // unreadable is reported, not skipped.
    let mut rows: Vec<(String, i64)> = Vec::new();
    let mut select = tx.prepare_cached(
        "SELECT id, epoch, owner, lease_expires_ms FROM saga
         WHERE state NOT IN ('stuck', 'completed', 'compensated', 'abandoned')
         ORDER BY created_ms, id",
    )?;
    let mut candidates = select.query([])?;
    while rows.len() < limit {
        let Some(row) = candidates.next()? else { break };
        let (id, epoch, held_by, expires_ms): (String, i64, String, Option<i64>) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        // A lease held by an owner that cannot be read is no lease: the
        // row is reported below rather than left to nobody.
        let claimable = expires_ms.is_none_or(|expires| expires <= now)
            || held_by == owner.as_str()
            || OwnerId::new(held_by).is_err();
        if claimable {
            rows.push((id, epoch));
        }
    }
    drop(candidates);
    let mut claimed = Vec::with_capacity(rows.len());
    for (id, epoch) in rows {
        let Ok(saga) = id.parse::<SagaId>() else {
            // No saga id to report it under: not a row this crate wrote.
            tracing::error!(id, "sqlite saga log: saga row with an invalid id");
            continue;
        };
        match read_row(tx, saga)? {
            Ok(row) => {
                if let Ok(saga) = take(tx, saga, &row, owner, ttl)? {
                    claimed.push(saga);
                }
            }
            // Reported to the caller with the saga's id and left as it is
            // (not taken, so not rewritten): the lease below is not held.
            Err(error) => {
                tracing::error!(%saga, %error, "sqlite saga log: saga row unreadable");
                claimed.push(ClaimedSaga {
                    lease: Lease {
                        saga,
                        owner: owner.clone(),
                        epoch: u64::try_from(epoch).unwrap_or_default(),
                    },
                    state: SagaState::Running,
                    records: Err(error),
                });
            }
        }
    }
    Ok(Ok(claimed))
}

pub(super) fn history(tx: &Transaction<'_>, saga: SagaId) -> Sql<Vec<LoggedRecord>> {
    let count: Option<i64> = tx
        .prepare_cached("SELECT records FROM saga WHERE id = ?1")?
        .query_row(params![saga.to_string()], |row| row.get(0))
        .optional()?;
    let Some(count) = count else {
        return Ok(Err(LogError::NotFound { saga }));
    };
    let expected = match stored_u64(saga, count, "record count") {
        Ok(expected) => expected,
        Err(error) => return Ok(Err(error)),
    };
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
        let at = match stored_time(saga, at_ms, "record time") {
            Ok(at) => at,
            Err(error) => return Ok(Err(error)),
        };
        let stored = StoredRecord {
            seq,
            epoch,
            at,
            kind,
            body,
            payload,
        };
        if let Err(error) = decoder.push_stored(stored) {
            return Ok(Err(error));
        }
    }
    Ok(decoder.finish_expecting(expected))
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
        epoch: stored_u64(saga, epoch, "epoch")?,
        records: stored_u64(saga, records, "record count")?,
        created_at: stored_time(saga, created, "creation time")?,
        updated_at: stored_time(saga, updated, "update time")?,
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

fn time_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn list(
    tx: &Transaction<'_>,
    state: Option<SagaState>,
    after: Option<ListCursor>,
    limit: usize,
) -> Sql<Vec<SagaSummary>> {
    let now = now_ms();
    let limit = as_i64(limit as u64);
    // The cursor's time came from a summary of this log, in whole
    // milliseconds, so the comparison is exact.
    let (after_ms, after_id) = match after {
        Some(cursor) => (Some(time_ms(cursor.created_at)), cursor.id.to_string()),
        None => (None, String::new()),
    };
    let rows: Vec<SummaryRow> = tx
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM saga
             WHERE (?1 IS NULL OR state = ?1)
               AND (?2 IS NULL OR (created_ms, id) > (?2, ?3))
             ORDER BY created_ms, id LIMIT ?4"
        ))?
        .query_map(
            params![state.map(SagaState::as_str), after_ms, after_id, limit],
            summary_row,
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows.into_iter().map(|row| to_summary(row, now)).collect())
}

pub(super) fn prune_finished(
    tx: &Transaction<'_>,
    finished_before: SystemTime,
    limit: usize,
) -> Sql<u64> {
    let ids: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM saga
             WHERE state IN ('completed', 'compensated', 'abandoned') AND updated_ms < ?1
             ORDER BY updated_ms, id LIMIT ?2",
        )?
        .query_map(
            params![time_ms(finished_before), as_i64(limit as u64)],
            |row| row.get(0),
        )?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        tx.prepare_cached("DELETE FROM saga_record WHERE saga = ?1")?
            .execute(params![id])?;
        tx.prepare_cached("DELETE FROM saga WHERE id = ?1")?
            .execute(params![id])?;
    }
    Ok(Ok(ids.len() as u64))
}
