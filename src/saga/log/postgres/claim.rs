//! Claims: taking over one saga, or many unfinished ones at once.

use std::collections::HashMap;
use std::time::Duration;

use super::read::{decode, history_in, stored_record};
use super::schema::ttl_micros;
use super::write::lock;
use super::{PostgresLog, as_i64, unavailable};
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::log::decode::{StoredRecord, corrupt, stored_owner, stored_state, stored_u64};
use crate::saga::log::{ClaimedSaga, Lease, LogError, SagaState};

impl PostgresLog {
    pub(super) async fn claim_one(
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

    pub(super) async fn claim_many(
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
        let mut stored: HashMap<String, Vec<StoredRecord>> = HashMap::new();
        // A row whose columns cannot be read spoils its own saga only.
        let mut unreadable: HashMap<String, String> = HashMap::new();
        for row in tx.query(&read, &[&ids]).await.map_err(unavailable)? {
            let id: String = row.get(0);
            match stored_record(&row, 1) {
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
                    // Reported to the caller with the saga's id, as the
                    // SQLite log does, rather than skipped: recovery lists it
                    // among the sagas it could not resume.
                    tracing::error!(%saga, %error, "postgres saga log: saga row unreadable");
                    let epoch = row.get::<_, i64>(1);
                    by_id.insert(
                        id,
                        ClaimedSaga {
                            lease: Lease {
                                saga,
                                owner: owner.clone(),
                                epoch: u64::try_from(epoch).unwrap_or_default(),
                            },
                            state: SagaState::Running,
                            records: Err(error),
                        },
                    );
                    continue;
                }
            };
            let records = match unreadable.remove(&id) {
                Some(detail) => Err(corrupt(saga, None, detail)),
                None => stored_u64(saga, row.get(3), "record count").and_then(|expected| {
                    decode(saga, stored.remove(&id).unwrap_or_default(), expected)
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
}
