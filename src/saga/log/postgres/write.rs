//! Writes: creating a saga, appending a record, renewing and releasing a lease.

use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::schema::{Statements, ttl_micros};
use super::{PostgresLog, as_i64, unavailable};
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::log::decode::{stored_state, stored_u64};
use crate::saga::log::{Lease, LogError, NewSaga};
use crate::saga::record::{RecordKind, SagaState};

/// A saga row, locked.
pub(super) struct Locked {
    pub(super) state: SagaState,
    pub(super) owner: String,
    pub(super) epoch: u64,
    pub(super) records: u64,
    pub(super) live: bool,
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

pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

pub(super) async fn lock(tx: &Tx<'_>, sql: &Statements, saga: SagaId) -> Result<Locked, LogError> {
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

pub(super) async fn execute(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, LogError> {
    let statement = tx.prepare_cached(sql).await.map_err(unavailable)?;
    tx.execute(&statement, params).await.map_err(unavailable)
}

impl PostgresLog {
    pub(super) async fn create_saga(
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

    pub(super) async fn append_record(
        &self,
        lease: &Lease,
        record: RecordKind,
    ) -> Result<u64, LogError> {
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
    pub(super) async fn set_lease(
        &self,
        lease: &Lease,
        ttl: Option<Duration>,
    ) -> Result<(), LogError> {
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
}

impl PostgresLog {
    /// Deletes up to `limit` finished sagas whose last record is older
    /// than `finished_before`, with their records, in one statement.
    pub(super) async fn prune(
        &self,
        finished_before: std::time::SystemTime,
        limit: usize,
    ) -> Result<u64, LogError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.prune)
            .await
            .map_err(unavailable)?;
        client
            .execute(&statement, &[&finished_before, &as_i64(limit as u64)])
            .await
            .map_err(unavailable)
    }
}
