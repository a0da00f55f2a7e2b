//! Reads: a saga's records, its summary and lists of sagas.

use super::{PostgresLog, as_i64, unavailable};
use crate::saga::id::SagaId;
use crate::saga::log::decode::{
    RecordDecoder, StoredRecord, corrupt, stored_owner, stored_state, stored_u64,
};
use crate::saga::log::{ListCursor, LogError, SagaSummary};
use crate::saga::record::{LoggedRecord, SagaState};

/// Reads [`RECORD_COLUMNS`](super::schema::RECORD_COLUMNS) starting at
/// column `at`; `None` when the record columns are NULL (a saga without
/// records in a left join).
pub(super) fn stored_record(
    row: &tokio_postgres::Row,
    at: usize,
) -> Result<Option<StoredRecord>, tokio_postgres::Error> {
    let Some(seq) = row.try_get::<_, Option<i64>>(at)? else {
        return Ok(None);
    };
    Ok(Some(StoredRecord {
        seq,
        epoch: row.try_get(at + 1)?,
        at: row.try_get(at + 2)?,
        kind: row.try_get(at + 3)?,
        body: row.try_get(at + 4)?,
        payload: row.try_get(at + 5)?,
    }))
}

/// Decodes a saga's stored records, which must be the `expected` number
/// its row counts.
pub(super) fn decode(
    saga: SagaId,
    stored: Vec<StoredRecord>,
    expected: u64,
) -> Result<Vec<LoggedRecord>, LogError> {
    let mut decoder = RecordDecoder::new(saga);
    for record in stored {
        decoder.push_stored(record)?;
    }
    decoder.finish_expecting(expected)
}

pub(super) async fn history_in(
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
        if let Some(record) = stored_record(row, 1).map_err(unavailable)? {
            stored.push(record);
        }
    }
    decode(saga, stored, expected)
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
    pub(super) async fn read_history(&self, saga: SagaId) -> Result<Vec<LoggedRecord>, LogError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.history)
            .await
            .map_err(unavailable)?;
        history_in(&client, &statement, saga).await
    }

    pub(super) async fn read_summary(&self, saga: SagaId) -> Result<SagaSummary, LogError> {
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

    pub(super) async fn read_list(
        &self,
        state: Option<SagaState>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, LogError> {
        let after_time = after.map(|cursor| cursor.created_at);
        let after_id = after.map(|cursor| cursor.id.to_string());
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.list)
            .await
            .map_err(unavailable)?;
        client
            .query(
                &statement,
                &[
                    &state.map(SagaState::as_str),
                    &as_i64(limit as u64),
                    &after_time,
                    &after_id,
                ],
            )
            .await
            .map_err(unavailable)?
            .iter()
            .map(summary_from)
            .collect()
    }
}
