//! A saga log double that misbehaves on purpose: [`FaultyLog`] forwards
//! every operation to a real log, except those its [`Faults`] take over
//! (a crash before or after an append commits, a partition that cuts off
//! lease renewals and claims, a disk that refuses appends).
#![allow(dead_code)]

use std::fmt;
use std::time::{Duration, SystemTime};

use palisade::saga::{
    BoxFuture, ClaimedSaga, Lease, ListCursor, LogError, LoggedRecord, NewSaga, OwnerId,
    RecordKind, SagaId, SagaLog, SagaState, SagaSummary,
};

/// What a [`FaultyLog`] does instead of its inner log. Every method
/// forwards to [`inner`](Self::inner) unless overridden.
pub trait Faults: fmt::Debug + Send + Sync + 'static {
    /// The log that does the real work.
    type Inner: SagaLog;

    fn inner(&self) -> &Self::Inner;

    /// The name [`SagaLog::backend`] reports.
    fn backend(&self) -> &'static str {
        "faulty"
    }

    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        self.inner().append(lease, record)
    }

    /// What [`SagaLog::creates_atomically`] reports (default `false`: the
    /// executor then appends a saga's first record through
    /// [`append`](Self::append)).
    fn creates_atomically(&self) -> bool {
        false
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, Result<(), LogError>> {
        self.inner().renew(lease, ttl)
    }

    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
        self.inner().claim(saga, owner, ttl)
    }
}

/// A [`SagaLog`] that forwards to `F::inner()` except where `F` says
/// otherwise.
#[derive(Debug, Clone)]
pub struct FaultyLog<F>(pub F);

impl<F> std::ops::Deref for FaultyLog<F> {
    type Target = F;

    fn deref(&self) -> &F {
        &self.0
    }
}

impl<F: Faults> SagaLog for FaultyLog<F> {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn create<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        self.0.inner().create(saga, owner, ttl)
    }
    fn creates_atomically(&self) -> bool {
        self.0.creates_atomically()
    }
    fn create_with<'a>(
        &'a self,
        saga: NewSaga,
        owner: &'a OwnerId,
        ttl: Duration,
        records: Vec<RecordKind>,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        self.0.inner().create_with(saga, owner, ttl, records)
    }
    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        self.0.append(lease, record)
    }
    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, Result<(), LogError>> {
        self.0.renew(lease, ttl)
    }
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LogError>> {
        self.0.inner().release(lease)
    }
    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
        self.0.claim(saga, owner, ttl)
    }
    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a OwnerId,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ClaimedSaga>, LogError>> {
        self.0.inner().claim_unfinished(owner, ttl, limit)
    }
    fn history(&self, saga: SagaId) -> BoxFuture<'_, Result<Vec<LoggedRecord>, LogError>> {
        self.0.inner().history(saga)
    }
    fn summary(&self, saga: SagaId) -> BoxFuture<'_, Result<SagaSummary, LogError>> {
        self.0.inner().summary(saga)
    }
    fn list(
        &self,
        state: Option<SagaState>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<SagaSummary>, LogError>> {
        self.0.inner().list(state, after, limit)
    }
    fn prune_finished(
        &self,
        finished_before: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, LogError>> {
        self.0.inner().prune_finished(finished_before, limit)
    }
}
