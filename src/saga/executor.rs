//! Runs sagas: forward through their steps, backward through their
//! compensations, recording each move in the log first.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::codec::{Codec, JsonCodec};
use super::definition::SagaDefinition;
use super::driver::{InFlight, Run};
use super::error::SagaError;
use super::event::{Counters, SagaEvent, SagaEventKind, SagaMetrics, bump};
use super::id::{OwnerId, SagaId};
use super::log::{ClaimedSaga, Lease, ListCursor, LogError, NewSaga, SagaLog, SagaSummary};
use super::outcome::{Recovery, SagaHandle, SagaOutcome};
use super::progress::Progress;
use super::record::{FinishedOutcome, LoggedRecord, RecordKind, SagaState};
use super::recording::Note;
use super::unwind::CatchPanic;
use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::events::{EventHub, EventStream, check_event_capacity};

const COMPONENT: &str = "saga executor";

/// The longest lease an executor takes on a saga: one day.
const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Builds a [`SagaExecutor`].
pub struct SagaExecutorBuilder<Ctx, C = JsonCodec> {
    ctx: Arc<Ctx>,
    log: Arc<dyn SagaLog>,
    codec: C,
    owner: Option<String>,
    lease_ttl: Duration,
    event_capacity: usize,
    takeover_interval: Option<Duration>,
    retention: Option<Duration>,
}

impl<Ctx, C: fmt::Debug> fmt::Debug for SagaExecutorBuilder<Ctx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaExecutorBuilder")
            .field("log", &self.log)
            .field("codec", &self.codec)
            .field("owner", &self.owner)
            .field("lease_ttl", &self.lease_ttl)
            .field("event_capacity", &self.event_capacity)
            .field("takeover_interval", &self.takeover_interval)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl<Ctx, C> SagaExecutorBuilder<Ctx, C> {
    /// Keeps finished sagas (completed, compensated, abandoned) in the log
    /// for `keep_finished_for` after their last record, then deletes them
    /// (default: kept forever; at least 1 s). Once
    /// [`recover`](SagaExecutor::recover) has run, the executor prunes
    /// every quarter of it (at most hourly, at least every second). Stuck
    /// and unfinished sagas are never pruned.
    pub fn retention(mut self, keep_finished_for: Duration) -> Self {
        self.retention = Some(keep_finished_for);
        self
    }

    /// After [`recover`](SagaExecutor::recover), look for unfinished sagas
    /// whose lease expired (their executor died or was cut off) every
    /// `interval`, and take them over (default: off; at least 10 ms). Turn
    /// it on when several executors share a log.
    pub fn takeover_interval(mut self, interval: Duration) -> Self {
        self.takeover_interval = Some(interval);
        self
    }

    /// The name this executor holds leases under (default: `"palisade"`
    /// and the process id). Restarted under the same name, it takes back
    /// its sagas at once; concurrent executors need different names.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How long a lease lasts without renewal (default 30 s, at least
    /// 10 ms and at most one day). Leases are renewed every third of it
    /// while a saga runs.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Events buffered per subscriber (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Encodes inputs and outputs with `codec` instead of JSON.
    pub fn codec<C2: Codec>(self, codec: C2) -> SagaExecutorBuilder<Ctx, C2> {
        SagaExecutorBuilder {
            ctx: self.ctx,
            log: self.log,
            codec,
            owner: self.owner,
            lease_ttl: self.lease_ttl,
            event_capacity: self.event_capacity,
            takeover_interval: self.takeover_interval,
            retention: self.retention,
        }
    }

    /// Validates the settings and builds the executor. Call
    /// [`register`](SagaExecutor::register) and
    /// [`recover`](SagaExecutor::recover) next.
    pub fn build(self) -> Result<SagaExecutor<Ctx, C>, ConfigError> {
        let owner = match self.owner {
            Some(owner) => OwnerId::new(owner)?,
            None => OwnerId::new(format!("palisade-{}", std::process::id()))?,
        };
        if self.lease_ttl < Duration::from_millis(10) {
            return Err(ConfigError::new(
                COMPONENT,
                "lease_ttl",
                format!("must be at least 10ms, got {:?}", self.lease_ttl),
            ));
        }
        if self.lease_ttl > MAX_LEASE_TTL {
            return Err(ConfigError::new(
                COMPONENT,
                "lease_ttl",
                format!(
                    "must be at most one day (a longer lease leaves a dead executor's \
                     sagas unclaimed that long), got {:?}",
                    self.lease_ttl
                ),
            ));
        }
        check_event_capacity(COMPONENT, self.event_capacity)?;
        if let Some(interval) = self.takeover_interval {
            if interval < Duration::from_millis(10) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "takeover_interval",
                    format!("must be at least 10ms, got {interval:?}"),
                ));
            }
        }
        if let Some(retention) = self.retention {
            if retention < Duration::from_secs(1) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "retention",
                    format!("must be at least 1s, got {retention:?}"),
                ));
            }
        }
        Ok(SagaExecutor {
            shared: Arc::new(Shared {
                ctx: self.ctx,
                codec: Arc::new(self.codec),
                log: self.log,
                owner,
                lease_ttl: self.lease_ttl,
                takeover_interval: self.takeover_interval,
                retention: self.retention,
                definitions: RwLock::new(HashMap::new()),
                events: EventHub::new(self.event_capacity),
                counters: Counters::default(),
            }),
            tasks: Arc::new(Tasks::default()),
        })
    }
}

pub(crate) struct Shared<Ctx, C> {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) codec: Arc<C>,
    pub(crate) log: Arc<dyn SagaLog>,
    pub(crate) owner: OwnerId,
    pub(crate) lease_ttl: Duration,
    pub(crate) takeover_interval: Option<Duration>,
    pub(crate) retention: Option<Duration>,
    pub(crate) definitions: RwLock<HashMap<String, SagaDefinition<Ctx, C>>>,
    pub(crate) events: EventHub<SagaEvent>,
    pub(crate) counters: Counters,
}

/// What became of an attempt to take back a saga after a log failure.
enum Resumption<Ctx, C> {
    /// Taken back: drive it on.
    Resumed(Arc<Run<Ctx, C>>, Progress),
    /// The log is still unavailable.
    Unavailable,
    /// Another driver (after `recover` or a takeover) drives it now.
    Superseded,
    /// It cannot be resumed.
    Failed(SagaError),
}

/// The drivers of the sagas in flight; aborted when the last executor
/// clone is dropped.
#[derive(Debug, Default)]
struct Tasks {
    running: Mutex<HashMap<SagaId, (AbortHandle, Lease)>>,
    /// Sagas an operator call (`retry_stuck`, `abandon`) is acting on.
    operated: Mutex<HashSet<SagaId>>,
    takeover: Mutex<Option<AbortHandle>>,
    pruning: Mutex<Option<AbortHandle>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for (abort, _) in self.running.get_mut().values() {
            abort.abort();
        }
        if let Some(takeover) = self.takeover.get_mut() {
            takeover.abort();
        }
        if let Some(pruning) = self.pruning.get_mut() {
            pruning.abort();
        }
    }
}

/// One operator call on a saga at a time per executor: the mark is
/// removed when the call returns.
struct OperatorCall<'a> {
    tasks: &'a Tasks,
    saga: SagaId,
}

impl<'a> OperatorCall<'a> {
    /// Marks `saga` as operated on; `None` if it is already, or if this
    /// executor drives it.
    fn begin(tasks: &'a Tasks, saga: SagaId) -> Option<Self> {
        if tasks.running.lock().contains_key(&saga) || !tasks.operated.lock().insert(saga) {
            return None;
        }
        Some(Self { tasks, saga })
    }
}

impl Drop for OperatorCall<'_> {
    fn drop(&mut self) {
        self.tasks.operated.lock().remove(&self.saga);
    }
}

/// Runs sagas and recovers them from a [`SagaLog`] after a crash.
///
/// Cheap to clone; clones share one executor. When the last clone is
/// dropped, the sagas in flight stop where they are (as in a crash) and are
/// resumed by the next executor that [recovers](Self::recover) the log.
///
/// ```
/// use std::sync::Arc;
/// use palisade::saga::{MemoryLog, SagaDefinition, SagaExecutor, SagaOutcome, Step, StepContext, StepError};
///
/// struct Services;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let definition = SagaDefinition::<Services>::builder("greet", 1)
///     .step(Step::without_compensation("hello", |_svc, cx: StepContext| async move {
///         let name: String = cx.input()?;
///         Ok::<_, StepError>(format!("hello {name}"))
///     }))
///     .build()?;
/// let executor = SagaExecutor::builder(Services, MemoryLog::new()).build()?;
/// let handle = executor.start(&definition, "ada").await?;
/// match handle.outcome().await? {
///     SagaOutcome::Completed(output) => assert_eq!(output.get::<String>("hello")?, "hello ada"),
///     other => panic!("{other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
pub struct SagaExecutor<Ctx, C = JsonCodec> {
    shared: Arc<Shared<Ctx, C>>,
    tasks: Arc<Tasks>,
}

impl<Ctx, C> Clone for SagaExecutor<Ctx, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            tasks: Arc::clone(&self.tasks),
        }
    }
}

impl<Ctx, C: fmt::Debug> fmt::Debug for SagaExecutor<Ctx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaExecutor")
            .field("owner", &self.shared.owner)
            .field("log", &self.shared.log)
            .field("codec", &self.shared.codec)
            .field("in_flight", &self.tasks.running.lock().len())
            .finish_non_exhaustive()
    }
}

impl<Ctx: Send + Sync + 'static> SagaExecutor<Ctx, JsonCodec> {
    /// Starts building an executor over your services (`ctx`, shared by
    /// every step) and a log.
    pub fn builder(ctx: impl Into<Arc<Ctx>>, log: impl SagaLog) -> SagaExecutorBuilder<Ctx> {
        SagaExecutorBuilder {
            ctx: ctx.into(),
            log: Arc::new(log),
            codec: JsonCodec,
            owner: None,
            lease_ttl: Duration::from_secs(30),
            event_capacity: 1024,
            takeover_interval: None,
            retention: None,
        }
    }
}

impl<Ctx, C> SagaExecutor<Ctx, C>
where
    Ctx: Send + Sync + 'static,
    C: Codec,
{
    /// Makes `definition` known for [`recover`](Self::recover),
    /// replacing one of the same name. ([`start`](Self::start) registers
    /// its definition too.)
    pub fn register(&self, definition: &SagaDefinition<Ctx, C>) {
        self.shared
            .definitions
            .write()
            .insert(definition.name().to_owned(), definition.clone());
    }

    /// Starts a saga with a new random id; see [`start_with_id`](Self::start_with_id).
    pub async fn start<I: serde::Serialize + ?Sized>(
        &self,
        definition: &SagaDefinition<Ctx, C>,
        input: &I,
    ) -> Result<SagaHandle<C>, SagaError> {
        self.start_with_id(SagaId::random(), definition, input)
            .await
    }

    /// Starts saga `id`: encodes the input, records the saga's creation
    /// (durably, for a durable log; in the same commit as its first
    /// stage's *started* records when the log
    /// [creates atomically](SagaLog::creates_atomically)), then drives it
    /// in a task on the current tokio runtime. [`LogError::AlreadyExists`] if the id is
    /// used, which makes starts idempotent when the id is derived from the
    /// request. Registers the definition.
    pub async fn start_with_id<I: serde::Serialize + ?Sized>(
        &self,
        id: SagaId,
        definition: &SagaDefinition<Ctx, C>,
        input: &I,
    ) -> Result<SagaHandle<C>, SagaError> {
        let input = self.shared.codec.encode(input)?;
        self.register(definition);
        let new = NewSaga {
            id,
            definition: definition.name().to_owned(),
            version: definition.version(),
            input,
        };
        let progress = Progress::new(Arc::from(&new.input[..]));
        // The first stage's steps start at once: with a log that creates
        // atomically, their *started* records go into the creation's
        // commit (one commit fewer per saga), and their first attempts do
        // not write them again.
        let prestarted: Vec<Arc<str>> = match definition.inner.stages.first() {
            Some(stage) if self.shared.log.creates_atomically() => {
                stage.steps.iter().map(|s| Arc::clone(&s.name)).collect()
            }
            _ => Vec::new(),
        };
        let started: Vec<RecordKind> = prestarted
            .iter()
            .map(|step| RecordKind::StepStarted {
                step: step.to_string(),
                attempt: 1,
            })
            .collect();
        let lease = self
            .shared
            .log
            .create_with(
                new,
                &self.shared.owner,
                self.shared.lease_ttl,
                started.clone(),
            )
            .await?;
        bump(&self.shared.counters.started);
        self.shared.counters.exported.on_started();
        tracing::info!(saga = %id, definition = %definition.name(), "saga started");
        self.publish(id, definition, SagaEventKind::Started);
        for record in &started {
            self.shared
                .report(&lease, &definition.inner.name, record, Note::default());
        }
        Ok(self.spawn(definition.clone(), lease, progress, prestarted))
    }

    /// Takes over every unfinished saga in the log whose lease is free,
    /// expired or this executor's own (after a restart), and resumes it: a
    /// step that was started but not completed is run again (with the same
    /// idempotency key); a saga that was compensating goes on compensating.
    /// Register every definition first.
    ///
    /// Meant for start-up: a saga this executor is driving is taken back
    /// too, its driver stopped (its handle returns
    /// [`SagaError::Interrupted`]) and a new one resumes it from the log.
    pub async fn recover(&self) -> Result<Recovery<C>, SagaError> {
        let claimed = self
            .shared
            .log
            .claim_unfinished(&self.shared.owner, self.shared.lease_ttl, usize::MAX)
            .await?;
        let mut recovery = Recovery {
            resumed: Vec::new(),
            failed: Vec::new(),
        };
        for claim in claimed {
            let saga = claim.lease.saga;
            match self.resume(claim, false).await {
                Ok(handle) => recovery.resumed.push(handle),
                Err(error) => {
                    tracing::error!(saga = %saga, %error, "saga cannot be recovered");
                    recovery.failed.push((saga, error));
                }
            }
        }
        tracing::info!(
            resumed = recovery.resumed.len(),
            failed = recovery.failed.len(),
            "saga recovery done"
        );
        self.start_takeover();
        self.start_pruning();
        Ok(recovery)
    }

    /// How many unfinished sagas one page of a takeover round reads.
    const TAKEOVER_BATCH: usize = 1000;

    /// Takes over the unfinished sagas whose lease expired or was released
    /// and that this executor is not driving; returns their handles.
    /// Sagas that cannot be resumed are logged and left in the log. Runs
    /// every [`takeover_interval`](SagaExecutorBuilder::takeover_interval)
    /// once recovery has run; call it yourself to take over at a time of
    /// your choosing.
    pub async fn take_over_expired(&self) -> Result<Vec<SagaHandle<C>>, SagaError> {
        let mut handles = Vec::new();
        for state in [SagaState::Running, SagaState::Compensating] {
            let mut after = None;
            loop {
                let sagas = self
                    .shared
                    .log
                    .list(Some(state), after, Self::TAKEOVER_BATCH)
                    .await?;
                let full = sagas.len() == Self::TAKEOVER_BATCH;
                after = sagas.last().map(ListCursor::after);
                for summary in sagas {
                    if summary.owner.is_some()
                        || self.tasks.running.lock().contains_key(&summary.id)
                    {
                        continue;
                    }
                    let claim = match self
                        .shared
                        .log
                        .claim(summary.id, &self.shared.owner, self.shared.lease_ttl)
                        .await
                    {
                        Ok(claim) => claim,
                        // Taken or finished meanwhile.
                        Err(LogError::LeaseHeld { .. } | LogError::Finished { .. }) => continue,
                        Err(error) => return Err(error.into()),
                    };
                    match self.resume(claim, false).await {
                        Ok(handle) => handles.push(handle),
                        Err(error) => {
                            tracing::error!(saga = %summary.id, %error, "saga cannot be taken over");
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(handles)
    }

    fn start_pruning(&self) {
        let Some(retention) = self.shared.retention else {
            return;
        };
        let mut pruning = self.tasks.pruning.lock();
        if pruning.is_some() {
            return;
        }
        let period = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let shared = Arc::clone(&self.shared);
        let tasks = Arc::downgrade(&self.tasks);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(tasks) = tasks.upgrade() else { return };
                let executor = SagaExecutor {
                    shared: Arc::clone(&shared),
                    tasks,
                };
                if let Err(error) = executor.prune_finished(retention).await {
                    tracing::warn!(%error, "pruning finished sagas failed");
                }
            }
        });
        *pruning = Some(task.abort_handle());
    }

    fn start_takeover(&self) {
        let Some(interval) = self.shared.takeover_interval else {
            return;
        };
        let mut takeover = self.tasks.takeover.lock();
        if takeover.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let tasks = Arc::downgrade(&self.tasks);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(tasks) = tasks.upgrade() else { return };
                let executor = SagaExecutor {
                    shared: Arc::clone(&shared),
                    tasks,
                };
                match executor.take_over_expired().await {
                    Ok(handles) if !handles.is_empty() => {
                        tracing::info!(sagas = handles.len(), "sagas taken over");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "saga takeover round failed"),
                }
            }
        });
        *takeover = Some(task.abort_handle());
    }

    /// Tries a stuck saga's compensation again, with a fresh set of
    /// attempts. [`SagaError::NotStuck`] if it is not stuck (running,
    /// compensating, finished, or being retried already); a saga it does
    /// not act on is left alone.
    pub async fn retry_stuck(&self, saga: SagaId) -> Result<SagaHandle<C>, SagaError> {
        let Some(_operating) = OperatorCall::begin(&self.tasks, saga) else {
            return Err(self.driven_here(saga).await);
        };
        let claim = self.claim_stuck(saga).await?;
        // Still marked as operated on until its driver is in the running
        // table, so that a second call cannot slip in between.
        self.resume(claim, true).await
    }

    /// Gives up on a stuck saga: records it as abandoned, leaving its
    /// remaining compensations undone. [`SagaError::NotStuck`] if it is
    /// not stuck; a saga it does not act on is left alone.
    pub async fn abandon(&self, saga: SagaId) -> Result<(), SagaError> {
        let Some(_operating) = OperatorCall::begin(&self.tasks, saga) else {
            return Err(self.driven_here(saga).await);
        };
        let claim = self.claim_stuck(saga).await?;
        let abandoned = RecordKind::SagaFinished {
            outcome: FinishedOutcome::Abandoned,
        };
        let definition = self.definition_name_of(&claim);
        self.shared
            .record(&claim.lease, &definition, abandoned, Note::default())
            .await?;
        Ok(())
    }

    /// The answer to an operator call on a saga this executor drives (or
    /// is operating on already): not stuck.
    async fn driven_here(&self, saga: SagaId) -> SagaError {
        match self.shared.log.summary(saga).await {
            // Its driver is about to take it out of `stuck`.
            Ok(summary) if summary.state == SagaState::Stuck => SagaError::NotStuck {
                saga,
                state: SagaState::Compensating,
            },
            Ok(summary) => SagaError::NotStuck {
                saga,
                state: summary.state,
            },
            Err(error) => error.into(),
        }
    }

    /// Claims a saga for an operator call if, and only if, it is stuck:
    /// its state is checked before the claim, which would otherwise fence
    /// off the driver of a saga that is not.
    async fn claim_stuck(&self, saga: SagaId) -> Result<ClaimedSaga, SagaError> {
        let not_stuck = |state| SagaError::NotStuck { saga, state };
        if self.tasks.running.lock().contains_key(&saga) {
            return Err(self.driven_here(saga).await);
        }
        let summary = self.shared.log.summary(saga).await?;
        if summary.state != SagaState::Stuck {
            return Err(not_stuck(summary.state));
        }
        match self
            .shared
            .log
            .claim(saga, &self.shared.owner, self.shared.lease_ttl)
            .await
        {
            Ok(claim) if claim.state == SagaState::Stuck => Ok(claim),
            // It left `stuck` between the check and the claim.
            Ok(claim) => {
                let _ = self.shared.log.release(&claim.lease).await;
                Err(not_stuck(claim.state))
            }
            Err(LogError::Finished { state, .. }) => Err(not_stuck(state)),
            // Another executor is retrying it.
            Err(LogError::LeaseHeld { .. }) => Err(not_stuck(SagaState::Compensating)),
            Err(error) => Err(error.into()),
        }
    }

    /// The saga's summary (state, owner, epoch, record count) from the log.
    pub async fn status(&self, saga: SagaId) -> Result<SagaSummary, SagaError> {
        Ok(self.shared.log.summary(saga).await?)
    }

    /// Every record of the saga, in order.
    pub async fn history(&self, saga: SagaId) -> Result<Vec<LoggedRecord>, SagaError> {
        Ok(self.shared.log.history(saga).await?)
    }

    /// Up to `limit` sagas in `state`, oldest first, starting after
    /// `after` (`None` for the first page; [`ListCursor::after`] the last
    /// saga of a page for the next).
    pub async fn list(
        &self,
        state: SagaState,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, SagaError> {
        Ok(self.shared.log.list(Some(state), after, limit).await?)
    }

    /// Deletes the finished sagas (completed, compensated, abandoned) whose
    /// last record is older than `older_than`, with their records, in
    /// batches; returns how many were deleted. Stuck and unfinished sagas
    /// are kept. [`retention`](SagaExecutorBuilder::retention) calls it in
    /// the background.
    pub async fn prune_finished(&self, older_than: Duration) -> Result<u64, SagaError> {
        const BATCH: usize = 1000;
        let before = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut pruned = 0;
        loop {
            let deleted = self.shared.log.prune_finished(before, BATCH).await?;
            pruned += deleted;
            if deleted < BATCH as u64 {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, "finished sagas pruned from the log");
        }
        Ok(pruned)
    }

    /// Subscribes to what happens to this executor's sagas.
    pub fn subscribe(&self) -> EventStream<SagaEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of this executor's counters.
    pub fn metrics(&self) -> SagaMetrics {
        self.shared.counters.snapshot()
    }

    /// This executor's lease owner id.
    pub fn owner(&self) -> &OwnerId {
        &self.shared.owner
    }

    /// Stops driving every saga in flight and releases their leases, so
    /// another executor can take them over at once. Their handles return
    /// [`SagaError::Interrupted`].
    pub async fn shutdown(&self) {
        let running: Vec<(AbortHandle, Lease)> =
            self.tasks.running.lock().drain().map(|(_, v)| v).collect();
        for (abort, _) in &running {
            abort.abort();
        }
        for (_, lease) in &running {
            if let Err(error) = self.shared.log.release(lease).await {
                tracing::debug!(saga = %lease.saga, %error, "lease not released at shutdown");
            }
        }
    }

    fn definition_name_of(&self, claim: &ClaimedSaga) -> Arc<str> {
        match &claim.records {
            Ok(records) => match records.first().map(|r| &r.kind) {
                Some(RecordKind::SagaCreated { definition, .. }) => Arc::from(definition.as_str()),
                _ => Arc::from(""),
            },
            Err(_) => Arc::from(""),
        }
    }

    async fn resume(
        &self,
        claim: ClaimedSaga,
        retry_stuck: bool,
    ) -> Result<SagaHandle<C>, SagaError> {
        let lease = claim.lease.clone();
        let result = self.prepare_resume(claim, retry_stuck).await;
        match result {
            Ok((definition, progress)) => {
                bump(&self.shared.counters.resumed);
                self.shared.counters.exported.on_resumed();
                tracing::info!(saga = %lease.saga, state = %progress.state, epoch = lease.epoch, "saga resumed");
                self.publish(
                    lease.saga,
                    &definition,
                    SagaEventKind::Resumed {
                        state: progress.state,
                    },
                );
                Ok(self.spawn(definition, lease, progress, Vec::new()))
            }
            Err(error) => {
                if let Err(release) = self.shared.log.release(&lease).await {
                    tracing::debug!(saga = %lease.saga, %release, "lease not released");
                }
                Err(error)
            }
        }
    }

    async fn prepare_resume(
        &self,
        claim: ClaimedSaga,
        retry_stuck: bool,
    ) -> Result<(SagaDefinition<Ctx, C>, Progress), SagaError> {
        let saga = claim.lease.saga;
        let records = claim.records?;
        let (name, logged) = match records.first().map(|r| &r.kind) {
            Some(RecordKind::SagaCreated {
                definition,
                version,
                ..
            }) => (definition.clone(), *version),
            _ => {
                return Err(SagaError::Log(LogError::Corrupt {
                    saga,
                    seq: Some(0),
                    detail: "first record is not `saga_created`".into(),
                }));
            }
        };
        let definition = self
            .shared
            .definitions
            .read()
            .get(&name)
            .cloned()
            .ok_or_else(|| SagaError::UnknownDefinition {
                saga,
                definition: name.clone(),
            })?;
        if definition.version() != logged {
            return Err(SagaError::VersionMismatch {
                saga,
                definition: name,
                logged,
                registered: definition.version(),
            });
        }
        let mut progress =
            Progress::replay(saga, &records, |step| definition.step(step).is_some())?;
        if retry_stuck {
            if progress.state != SagaState::Stuck {
                return Err(SagaError::NotStuck {
                    saga,
                    state: progress.state,
                });
            }
            let definition = &definition.inner.name;
            self.shared
                .record(
                    &claim.lease,
                    definition,
                    RecordKind::StuckRetried,
                    Note::default(),
                )
                .await?;
            progress.apply(&RecordKind::StuckRetried);
        } else if !progress.state.is_active() {
            return Err(SagaError::InconsistentLog {
                saga,
                detail: format!("claimed for recovery while {}", progress.state),
            });
        }
        Ok((definition, progress))
    }

    /// Takes back a saga whose driver (holding the lease of `epoch`) was
    /// stopped by an unavailable log, and prepares to drive it again from
    /// its records.
    async fn resume_after_log_failure(&self, saga: SagaId, epoch: u64) -> Resumption<Ctx, C> {
        let still_ours = |running: &HashMap<SagaId, (AbortHandle, Lease)>| {
            running
                .get(&saga)
                .is_some_and(|(_, held)| held.epoch == epoch)
        };
        if !still_ours(&self.tasks.running.lock()) {
            // `recover` or a takeover started another driver: leave it be.
            return Resumption::Superseded;
        }
        let claim = match self
            .shared
            .log
            .claim(saga, &self.shared.owner, self.shared.lease_ttl)
            .await
        {
            Ok(claim) => claim,
            Err(LogError::Unavailable { .. }) => return Resumption::Unavailable,
            // Another executor took the released lease meanwhile (and
            // may have finished the saga).
            Err(error @ (LogError::LeaseHeld { .. } | LogError::Finished { .. })) => {
                return Resumption::Failed(SagaError::LeaseLost {
                    saga,
                    source: error,
                });
            }
            Err(error) => return Resumption::Failed(error.into()),
        };
        let lease = claim.lease.clone();
        match self.prepare_resume(claim, false).await {
            Ok((definition, progress)) => {
                {
                    let mut running = self.tasks.running.lock();
                    if !still_ours(&running) {
                        return Resumption::Superseded;
                    }
                    if let Some((_, held)) = running.get_mut(&saga) {
                        *held = lease.clone();
                    }
                }
                bump(&self.shared.counters.resumed);
                self.shared.counters.exported.on_resumed();
                tracing::info!(saga = %saga, state = %progress.state, epoch = lease.epoch, "saga resumed after a log failure");
                self.publish(
                    saga,
                    &definition,
                    SagaEventKind::Resumed {
                        state: progress.state,
                    },
                );
                let run = Arc::new(Run {
                    shared: Arc::clone(&self.shared),
                    definition,
                    lease,
                    deferred: Default::default(),
                    prestarted: Mutex::default(),
                });
                Resumption::Resumed(run, progress)
            }
            Err(error) => {
                if let Err(release) = self.shared.log.release(&lease).await {
                    tracing::debug!(saga = %saga, %release, "lease not released");
                }
                match error {
                    SagaError::Log(LogError::Unavailable { .. }) => Resumption::Unavailable,
                    error => Resumption::Failed(error),
                }
            }
        }
    }

    fn publish(&self, saga: SagaId, definition: &SagaDefinition<Ctx, C>, kind: SagaEventKind) {
        self.shared.events.publish_with(|| SagaEvent {
            saga,
            definition: Arc::clone(&definition.inner.name),
            kind,
        });
    }

    /// Drives a saga to its end. A log that is unavailable for a while (a
    /// database restart, a lost connection) does not strand the saga: its
    /// driver takes it back and goes on from what the log says, until the
    /// log answers. `epoch` follows the lease the driver holds.
    async fn drive_until_settled(
        run: Arc<Run<Ctx, C>>,
        progress: Progress,
        tasks: Weak<Tasks>,
        epoch: Arc<AtomicU64>,
    ) -> Result<SagaOutcome<C>, SagaError> {
        let id = run.lease.saga;
        let shared = Arc::clone(&run.shared);
        let mut result = run.drive_with_lease(progress).await;
        let mut delays = Backoff::default().schedule();
        while let Err(SagaError::Log(LogError::Unavailable { .. })) = &result {
            tokio::time::sleep(delays.next_delay()).await;
            let Some(tasks) = tasks.upgrade() else { break };
            let executor = SagaExecutor {
                shared: Arc::clone(&shared),
                tasks,
            };
            match executor
                .resume_after_log_failure(id, epoch.load(Ordering::Acquire))
                .await
            {
                Resumption::Resumed(run, progress) => {
                    epoch.store(run.lease.epoch, Ordering::Release);
                    drop(executor);
                    result = run.drive_with_lease(progress).await;
                }
                // Still unavailable: try again after a longer wait.
                Resumption::Unavailable => {}
                Resumption::Superseded => break,
                Resumption::Failed(error) => result = Err(error),
            }
        }
        result
    }

    fn spawn(
        &self,
        definition: SagaDefinition<Ctx, C>,
        lease: Lease,
        progress: Progress,
        prestarted: Vec<Arc<str>>,
    ) -> SagaHandle<C> {
        let id = lease.saga;
        let (tx, rx) = oneshot::channel();
        let span = tracing::info_span!("saga", saga = %id, definition = %definition.name());
        let run = Arc::new(Run {
            shared: Arc::clone(&self.shared),
            definition,
            lease: lease.clone(),
            deferred: Default::default(),
            prestarted: Mutex::new(prestarted),
        });
        let tasks = Arc::downgrade(&self.tasks);
        let epoch = lease.epoch;
        // Held across the spawn so the task cannot remove its entry before
        // it is inserted.
        let mut running = self.tasks.running.lock();
        let task = tokio::spawn(
            async move {
                let shared = Arc::clone(&run.shared);
                let in_flight = InFlight::new(&shared.counters);
                let epoch = Arc::new(AtomicU64::new(epoch));
                let driving = Self::drive_until_settled(
                    run,
                    progress,
                    Weak::clone(&tasks),
                    Arc::clone(&epoch),
                );
                let result = match CatchPanic::new(driving).await {
                    Ok(result) => result,
                    // A bug, not a step (their panics are failed attempts):
                    // give the saga back so that it is not stranded.
                    Err(message) => {
                        tracing::error!(%message, "saga driver panicked; releasing its lease");
                        Err(SagaError::DriverPanicked { saga: id, message })
                    }
                };
                drop(in_flight);
                let epoch = epoch.load(Ordering::Acquire);
                let ours = tasks.upgrade().and_then(|tasks| {
                    let mut running = tasks.running.lock();
                    // Only our own entry: a newer driver of the same saga
                    // (after `recover`) has a higher epoch.
                    match running.get(&id) {
                        Some((_, l)) if l.epoch == epoch => running.remove(&id).map(|(_, l)| l),
                        _ => None,
                    }
                });
                if let (Some(lease), Err(SagaError::DriverPanicked { .. })) = (ours, &result) {
                    if let Err(error) = shared.log.release(&lease).await {
                        tracing::debug!(%error, "lease of a panicked driver not released");
                    }
                }
                let _ = tx.send(result);
            }
            .instrument(span),
        );
        if let Some((older, _)) = running.insert(id, (task.abort_handle(), lease)) {
            // `recover` took back a saga this executor was driving: the old
            // driver is fenced off anyway; stop it now.
            older.abort();
        }
        SagaHandle { id, result: rx }
    }
}
