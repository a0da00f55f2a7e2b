//! The in-memory saga log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::decode::RecordDecoder;
use super::{BoxFuture, ClaimedSaga, Lease, ListCursor, LogError, NewSaga, SagaLog, SagaSummary};
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

/// A saga log in memory, with the same lease and fencing rules as the
/// durable backends. Lease expiry uses `tokio::time`, so paused-time tests
/// can expire leases with `tokio::time::advance`.
///
/// Clones share one log, so a test can drop an executor and start a new
/// one on the same records.
///
/// ```
/// use std::time::Duration;
/// use palisade::saga::{MemoryLog, NewSaga, OwnerId, RecordKind, SagaId, SagaLog, LogError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let log = MemoryLog::new();
/// let (a, b) = (OwnerId::new("a")?, OwnerId::new("b")?);
/// let id = SagaId::random();
/// let saga = NewSaga { id, definition: "order".into(), version: 1, input: b"{}".to_vec() };
/// let lease_a = log.create(saga, &a, Duration::ZERO).await?;
///
/// // a's lease expired at once (ttl zero): b takes the saga over.
/// let claimed = log.claim(id, &b, Duration::from_secs(30)).await?;
/// assert_eq!(claimed.lease.epoch, lease_a.epoch + 1);
///
/// // a can no longer write.
/// let late = log.append(&lease_a, RecordKind::StuckRetried).await;
/// assert!(matches!(late, Err(LogError::Fenced { .. })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    sagas: Arc<Mutex<HashMap<SagaId, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    definition: String,
    version: u32,
    state: SagaState,
    owner: OwnerId,
    epoch: u64,
    /// `None` once released.
    expires: Option<Instant>,
    records: Vec<LoggedRecord>,
    created_at: SystemTime,
}

impl Entry {
    fn live_owner(&self, now: Instant) -> Option<&OwnerId> {
        self.expires.filter(|e| *e > now).map(|_| &self.owner)
    }

    fn check_lease(&self, lease: &Lease) -> Result<(), LogError> {
        if lease.epoch != self.epoch || lease.owner != self.owner {
            return Err(LogError::Fenced {
                saga: lease.saga,
                owner: lease.owner.clone(),
                epoch: lease.epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }

    fn summary(&self, id: SagaId, now: Instant) -> SagaSummary {
        SagaSummary {
            id,
            definition: self.definition.clone(),
            version: self.version,
            state: self.state,
            owner: self.live_owner(now).cloned(),
            epoch: self.epoch,
            records: self.records.len() as u64,
            created_at: self.created_at,
            updated_at: self.records.last().map_or(self.created_at, |r| r.at),
        }
    }

    /// The saga's records, read back through the decoder every backend
    /// shares (which a record kept in memory always passes).
    fn records(&self, id: SagaId) -> Result<Vec<LoggedRecord>, LogError> {
        let mut decoder = RecordDecoder::new(id);
        for record in &self.records {
            decoder.push(record.clone())?;
        }
        Ok(decoder.finish())
    }

    fn take(&mut self, id: SagaId, owner: &OwnerId, ttl: Duration, now: Instant) -> ClaimedSaga {
        self.epoch += 1;
        self.owner = owner.clone();
        self.expires = Some(expiry(now, ttl));
        ClaimedSaga {
            lease: Lease {
                saga: id,
                owner: owner.clone(),
                epoch: self.epoch,
            },
            state: self.state,
            records: self.records(id),
        }
    }

    /// Appends `records` under `lease`: every record is checked before
    /// any is appended, all or none.
    fn append(&mut self, lease: &Lease, records: Vec<RecordKind>) -> Result<Option<u64>, LogError> {
        self.check_lease(lease)?;
        let mut state = self.state;
        for record in &records {
            if state.is_finished() {
                return Err(LogError::Finished {
                    saga: lease.saga,
                    state,
                });
            }
            state = state.after(record);
        }
        self.state = state;
        let at = SystemTime::now();
        let mut last = None;
        for record in records {
            let seq = self.records.len() as u64;
            self.records.push(LoggedRecord {
                seq,
                epoch: lease.epoch,
                at,
                kind: record,
            });
            last = Some(seq);
        }
        Ok(last)
    }

    fn claimable_by(&self, owner: &OwnerId, now: Instant) -> bool {
        self.live_owner(now).is_none_or(|o| o == owner)
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    crate::clock::saturating_add(now, ttl)
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<SagaId, Entry>) -> T) -> T {
        f(&mut self.sagas.lock())
    }
}

impl SagaLog for MemoryLog {
    fn backend(&self) -> &'static str {
        "memory"
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
        let result = self.with(|sagas| {
            if sagas.contains_key(&saga.id) {
                return Err(LogError::AlreadyExists { saga: saga.id });
            }
            let now = SystemTime::now();
            let kind = saga.created_record();
            let mut entry = Entry {
                definition: saga.definition,
                version: saga.version,
                state: SagaState::Running,
                owner: owner.clone(),
                epoch: 1,
                expires: Some(expiry(Instant::now(), lease_ttl)),
                records: vec![LoggedRecord {
                    seq: 0,
                    epoch: 1,
                    at: now,
                    kind,
                }],
                created_at: now,
            };
            let lease = Lease {
                saga: saga.id,
                owner: owner.clone(),
                epoch: 1,
            };
            // Checked before the saga is inserted: all or none.
            entry.append(&lease, records)?;
            sagas.insert(saga.id, entry);
            Ok(lease)
        });
        Box::pin(async move { result })
    }

    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        let result = self.with(|sagas| {
            let entry = sagas
                .get_mut(&lease.saga)
                .ok_or(LogError::NotFound { saga: lease.saga })?;
            entry.check_lease(lease)?;
            if entry.state.is_finished() {
                return Err(LogError::Finished {
                    saga: lease.saga,
                    state: entry.state,
                });
            }
            let seq = entry.records.len() as u64;
            entry.state = entry.state.after(&record);
            entry.records.push(LoggedRecord {
                seq,
                epoch: lease.epoch,
                at: SystemTime::now(),
                kind: record,
            });
            Ok(seq)
        });
        Box::pin(async move { result })
    }

    fn append_batch<'a>(
        &'a self,
        lease: &'a Lease,
        records: Vec<RecordKind>,
    ) -> BoxFuture<'a, Result<Option<u64>, LogError>> {
        let result = self.with(|sagas| {
            sagas
                .get_mut(&lease.saga)
                .ok_or(LogError::NotFound { saga: lease.saga })?
                .append(lease, records)
        });
        Box::pin(async move { result })
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let result = self.with(|sagas| {
            let entry = sagas
                .get_mut(&lease.saga)
                .ok_or(LogError::NotFound { saga: lease.saga })?;
            entry.check_lease(lease)?;
            entry.expires = Some(expiry(Instant::now(), lease_ttl));
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LogError>> {
        let result = self.with(|sagas| {
            let entry = sagas
                .get_mut(&lease.saga)
                .ok_or(LogError::NotFound { saga: lease.saga })?;
            entry.check_lease(lease)?;
            entry.expires = None;
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
        let result = self.with(|sagas| {
            let entry = sagas.get_mut(&saga).ok_or(LogError::NotFound { saga })?;
            if entry.state.is_finished() {
                return Err(LogError::Finished {
                    saga,
                    state: entry.state,
                });
            }
            let now = Instant::now();
            if !entry.claimable_by(owner, now) {
                return Err(LogError::LeaseHeld {
                    saga,
                    owner: entry.owner.clone(),
                });
            }
            Ok(entry.take(saga, owner, lease_ttl, now))
        });
        Box::pin(async move { result })
    }

    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a OwnerId,
        lease_ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ClaimedSaga>, LogError>> {
        let result = self.with(|sagas| {
            let now = Instant::now();
            let mut ids: Vec<(SystemTime, SagaId)> = sagas
                .iter()
                .filter(|(_, e)| e.state.is_active() && e.claimable_by(owner, now))
                .map(|(id, e)| (e.created_at, *id))
                .collect();
            ids.sort();
            ids.into_iter()
                .take(limit)
                .filter_map(|(_, id)| {
                    let entry = sagas.get_mut(&id)?;
                    Some(entry.take(id, owner, lease_ttl, now))
                })
                .collect()
        });
        Box::pin(async move { Ok(result) })
    }

    fn history(&self, saga: SagaId) -> BoxFuture<'_, Result<Vec<LoggedRecord>, LogError>> {
        let result = self.with(|sagas| {
            sagas
                .get(&saga)
                .ok_or(LogError::NotFound { saga })?
                .records(saga)
        });
        Box::pin(async move { result })
    }

    fn summary(&self, saga: SagaId) -> BoxFuture<'_, Result<SagaSummary, LogError>> {
        let result = self.with(|sagas| {
            sagas
                .get(&saga)
                .map(|e| e.summary(saga, Instant::now()))
                .ok_or(LogError::NotFound { saga })
        });
        Box::pin(async move { result })
    }

    fn list(
        &self,
        state: Option<SagaState>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
        let result = self.with(|sagas| {
            let now = Instant::now();
            let mut page: Vec<SagaSummary> = sagas
                .iter()
                .filter(|(_, e)| state.is_none_or(|s| e.state == s))
                .map(|(id, e)| e.summary(*id, now))
                .filter(|s| after.is_none_or(|cursor| cursor.precedes(s)))
                .collect();
            page.sort_by_key(|s| (s.created_at, s.id));
            page.truncate(limit);
            page
        });
        Box::pin(async move { Ok(result) })
    }

    fn prune_finished(
        &self,
        finished_before: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, LogError>> {
        let pruned = self.with(|sagas| {
            let now = Instant::now();
            let mut old: Vec<(SystemTime, SagaId)> = sagas
                .iter()
                .map(|(id, e)| (e.summary(*id, now), e.state))
                .filter(|(s, state)| state.is_finished() && s.updated_at < finished_before)
                .map(|(s, _)| (s.updated_at, s.id))
                .collect();
            old.sort();
            old.truncate(limit);
            for (_, id) in &old {
                sagas.remove(id);
            }
            old.len() as u64
        });
        Box::pin(async move { Ok(pruned) })
    }
}
