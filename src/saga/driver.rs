//! Drives one saga: forward through its stages, backward through its
//! compensations, recording each move in the log before and after it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::saturating_add;
use tracing::Instrument;

use super::codec::Codec;
use super::context::{CallKind, StepContext};
use super::definition::{
    ActionFn, Attempts, SagaDefinition, Step, StepError, StepTimedOut, UndoFn,
};
use super::error::SagaError;
use super::event::{Counters, SagaEvent, SagaEventKind, bump};
use super::executor::Shared;
use super::id::SagaId;
use super::log::{Lease, LogError};
use super::outcome::{SagaFailure, SagaOutcome, SagaOutput};
use super::progress::{Progress, StepProgress};
use super::record::{FinishedOutcome, RecordKind, SagaState, StepEffect};
use super::recording::{Deferred, Note};
use super::unwind::CatchPanic;
use crate::classify::Outcome;

/// What the backoff is told about the attempt before each retry.
const RETRYABLE_FAILURE: Outcome = Outcome::Failure { retryable: true };

pub(crate) struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    pub(crate) fn new(counters: &'a Counters) -> Self {
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        counters.exported.on_running(1);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.exported.on_running(-1);
    }
}

/// One saga being driven.
pub(crate) struct Run<Ctx, C> {
    pub(crate) shared: Arc<Shared<Ctx, C>>,
    pub(crate) definition: SagaDefinition<Ctx, C>,
    pub(crate) lease: Lease,
    /// Completions held back to share a commit with the next record
    /// (see [`Run::record`]).
    pub(crate) deferred: Mutex<Vec<Deferred>>,
    /// Steps whose first attempt's *started* record the log already has:
    /// written with the saga's creation
    /// ([`create_with`](super::log::SagaLog::create_with)).
    pub(crate) prestarted: Mutex<Vec<Arc<str>>>,
}

/// How a step's action or compensation ended, after its retries.
enum CallEnd {
    Completed(Vec<u8>),
    Failed {
        error: String,
        /// Whether any attempt ended with an unknown outcome.
        unknown: bool,
        /// The sequence number of the record of the failure that ended
        /// it: which member of a stage failed first.
        seq: u64,
    },
    /// Stopped retrying because another step of its stage failed for good.
    Stopped {
        /// Whether any attempt ended with an unknown outcome.
        unknown: bool,
    },
}

impl<Ctx, C> Run<Ctx, C>
where
    Ctx: Send + Sync + 'static,
    C: Codec,
{
    fn saga(&self) -> SagaId {
        self.lease.saga
    }

    fn publish(&self, kind: SagaEventKind) {
        self.shared.events.publish_with(|| SagaEvent {
            saga: self.lease.saga,
            definition: Arc::clone(&self.definition.inner.name),
            kind,
        });
    }

    /// Records a move ([`Shared::record`]), with the completions held
    /// back before it ([`Shared::record_after`]); a fenced lease is a lost
    /// one.
    ///
    /// # Why a completion may wait for the next record
    ///
    /// A saga stays correct across crashes as long as a call's *started*
    /// record is durable before the call runs: then the log knows that
    /// the call may have had an effect, and recovery retries it or
    /// compensates it. A *completed* record only spares that retry. So
    /// the completion of a step that is alone in its stage (and of every
    /// compensation, which run one at a time) is not written on its own:
    /// it is appended in the same batch as the very next record, the next
    /// step's or compensation's *started* record or the saga's end, which
    /// the log commits at once and durably before that next call runs or
    /// the outcome is returned. One commit per step instead of two; the
    /// log never holds a *started* record without the completions that
    /// preceded it. A crash between a completion and the next record
    /// loses the completion exactly as a crash just before writing it
    /// would have: the call is retried or compensated on recovery, as its
    /// idempotency key allows. Steps that share a stage with others write
    /// their completions at once, since the next record may be far off.
    async fn record(&self, record: RecordKind, note: Note<'_>) -> Result<u64, SagaError> {
        let definition = &self.definition.inner.name;
        let deferred = std::mem::take(&mut *self.deferred.lock());
        let recorded = if deferred.is_empty() {
            self.shared
                .record(&self.lease, definition, record, note)
                .await
        } else {
            self.shared
                .record_after(&self.lease, definition, deferred, record, note)
                .await
        };
        match recorded {
            Ok(seq) => Ok(seq),
            Err(error @ LogError::Fenced { .. }) => Err(self.lease_lost(error)),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether this attempt's *started* record was written with the
    /// saga's creation (then it is not written again). Only ever true once
    /// per step.
    fn take_prestarted(&self, call: &Call<'_, Ctx, C>, step: &Arc<str>, attempt: u32) -> bool {
        if attempt != 1 || !matches!(call, Call::Action { .. }) {
            return false;
        }
        let mut prestarted = self.prestarted.lock();
        match prestarted.iter().position(|s| s == step) {
            Some(at) => {
                prestarted.swap_remove(at);
                true
            }
            None => false,
        }
    }

    fn lease_lost(&self, error: LogError) -> SagaError {
        SagaError::LeaseLost {
            saga: self.saga(),
            source: error,
        }
    }

    /// Drives the saga while renewing its lease every third of its TTL.
    pub(crate) async fn drive_with_lease(
        self: Arc<Self>,
        progress: Progress,
    ) -> Result<SagaOutcome<C>, SagaError> {
        let period = self.shared.lease_ttl / 3;
        let work = Arc::clone(&self).drive(progress);
        tokio::pin!(work);
        let mut next_renewal = saturating_add(Instant::now(), period);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                () = tokio::time::sleep_until(next_renewal) => {
                    next_renewal = saturating_add(Instant::now(), period);
                    match self.shared.log.renew(&self.lease, self.shared.lease_ttl).await {
                        Ok(()) => {}
                        Err(error @ (LogError::Fenced { .. } | LogError::Finished { .. })) => {
                            break Err(self.lease_lost(error));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "saga lease not renewed; will try again");
                        }
                    }
                }
            }
        };
        if let Err(SagaError::Log(error)) = &result {
            // Give the lease up so that a takeover (here or elsewhere) can
            // resume the saga without waiting for the lease to expire.
            tracing::warn!(%error, "saga stopped by a log failure; releasing its lease");
            if let Err(release) = self.shared.log.release(&self.lease).await {
                tracing::debug!(%release, "lease not released");
            }
        }
        if let Err(SagaError::LeaseLost { .. }) = &result {
            bump(&self.shared.counters.lease_lost);
            tracing::warn!(
                epoch = self.lease.epoch,
                "saga lease lost; another executor drives it now"
            );
            self.publish(SagaEventKind::LeaseLost);
        }
        result
    }

    async fn drive(self: Arc<Self>, mut progress: Progress) -> Result<SagaOutcome<C>, SagaError> {
        if progress.state == SagaState::Running {
            self.run_forward(&mut progress).await?;
        }
        if progress.state == SagaState::Running {
            let completed = RecordKind::SagaFinished {
                outcome: FinishedOutcome::Completed,
            };
            self.record(completed, Note::default()).await?;
            return Ok(SagaOutcome::Completed(SagaOutput {
                outputs: progress.outputs,
                codec: Arc::clone(&self.shared.codec),
            }));
        }
        self.run_backward(&mut progress).await
    }

    /// Runs the stages not yet completed. Returns with `progress.state`
    /// still `Running` when every step completed, `Compensating` when one
    /// failed for good.
    async fn run_forward(self: &Arc<Self>, progress: &mut Progress) -> Result<(), SagaError> {
        let mut past_pivot = false;
        for stage in &self.definition.inner.stages {
            let pending: Vec<&Step<Ctx, C>> = stage
                .steps
                .iter()
                .filter(|s| !progress.step(&s.name).completed)
                .collect();
            if !pending.is_empty() {
                let outputs = Arc::new(progress.outputs.clone());
                let (stage_failed, _) = watch::channel(false);
                let stage_failed = Arc::new(stage_failed);
                let mut members = JoinSet::new();
                let alone = pending.len() == 1;
                for (index, step) in pending.iter().enumerate() {
                    let run = Arc::clone(self);
                    let step = (*step).clone();
                    let state = progress.step(&step.name);
                    let input = Arc::clone(&progress.input);
                    let outputs = Arc::clone(&outputs);
                    let stage_failed = Arc::clone(&stage_failed);
                    let span = tracing::info_span!("saga_step", step = %step.name);
                    members.spawn(
                        async move {
                            let end = run
                                .run_action(
                                    &step,
                                    &state,
                                    Placement { past_pivot, alone },
                                    input,
                                    outputs,
                                    &stage_failed,
                                )
                                .await;
                            (index, end)
                        }
                        .instrument(span),
                    );
                }
                let mut ends: Vec<Option<CallEnd>> = pending.iter().map(|_| None).collect();
                let mut first_error = None;
                while let Some(joined) = members.join_next().await {
                    match joined {
                        Ok((index, Ok(end))) => ends[index] = Some(end),
                        Ok((_, Err(error))) => {
                            first_error.get_or_insert(error);
                        }
                        // A panic in the executor's own code (steps' panics are
                        // failed attempts): the driver's panic catch gives the saga back.
                        Err(join) if join.is_panic() => {
                            std::panic::resume_unwind(join.into_panic())
                        }
                        Err(join) => {
                            first_error.get_or_insert(SagaError::InconsistentLog {
                                saga: self.saga(),
                                detail: format!("a step task failed: {join}"),
                            });
                        }
                    }
                }
                if let Some(error) = first_error {
                    return Err(error);
                }
                // The failure reported is the first in time, as a replay of
                // the log finds it: the lowest sequence number.
                let mut first_failure: Option<(u64, &str, String)> = None;
                for (step, end) in pending.iter().zip(ends) {
                    let name = &*step.name;
                    match end {
                        Some(CallEnd::Completed(output)) => {
                            let s = progress.step_mut(name);
                            s.completed = true;
                            s.in_flight = false;
                            progress.outputs.insert(name.to_owned(), output);
                        }
                        Some(CallEnd::Stopped { unknown }) => {
                            let s = progress.step_mut(name);
                            s.in_flight = false;
                            s.unknown |= unknown;
                        }
                        Some(CallEnd::Failed {
                            error,
                            unknown,
                            seq,
                        }) => {
                            let s = progress.step_mut(name);
                            s.in_flight = false;
                            s.unknown |= unknown;
                            progress.state = SagaState::Compensating;
                            if first_failure
                                .as_ref()
                                .is_none_or(|(first, ..)| seq < *first)
                            {
                                first_failure = Some((seq, name, error));
                            }
                        }
                        None => {}
                    }
                }
                if let Some((_, name, error)) = first_failure {
                    if progress.failure.is_none() {
                        progress.failure = Some((name.to_owned(), error));
                    }
                }
                if progress.state == SagaState::Compensating {
                    return Ok(());
                }
            }
            if stage.pivot {
                past_pivot = true;
            }
        }
        Ok(())
    }

    /// Runs a step's action until it completes, fails for good, or stops
    /// because another member of its stage failed for good.
    async fn run_action(
        &self,
        step: &Step<Ctx, C>,
        so_far: &StepProgress,
        Placement { past_pivot, alone }: Placement,
        input: Arc<[u8]>,
        outputs: Arc<HashMap<String, Vec<u8>>>,
        stage_failed: &watch::Sender<bool>,
    ) -> Result<CallEnd, SagaError> {
        let call = Call::Action {
            action: &step.action,
            past_pivot,
            alone,
            stage_failed,
        };
        let resumed = Resumed {
            next_attempt: so_far.next_attempt(),
            failures: so_far.failures,
            interrupted: so_far.in_flight,
        };
        self.run_attempts(step, call, resumed, input, outputs).await
    }

    /// The attempt loop of both kinds of call: records each attempt's start
    /// and end, and waits the backoff's delay for the retry that comes next.
    ///
    /// A resumed saga goes on where its records left off: with the attempt
    /// number, the failure count and therefore the backoff delay that the
    /// log says come next.
    async fn run_attempts(
        &self,
        step: &Step<Ctx, C>,
        call: Call<'_, Ctx, C>,
        resumed: Resumed,
        input: Arc<[u8]>,
        outputs: Arc<HashMap<String, Vec<u8>>>,
    ) -> Result<CallEnd, SagaError> {
        let Attempts {
            backoff,
            max_attempts,
            timeout,
        } = call.attempts(step);
        let name = &step.name;
        let Resumed {
            next_attempt: mut attempt,
            mut failures,
            interrupted,
        } = resumed;
        // Decorrelated jitter grows from the delay before; a resumed loop
        // does not know it and starts that growth over.
        let mut previous_delay = None;
        // The outcome of an attempt cut off by a crash is unknown: a re-run
        // that fails with no effect does not show the first changed nothing.
        let mut unknown = interrupted;
        loop {
            if !self.take_prestarted(&call, name, attempt) {
                self.record(call.started(name, attempt), Note::default())
                    .await?;
            }
            let cx = StepContext {
                saga: self.saga(),
                step: Arc::clone(name),
                kind: call.kind(),
                attempt,
                input: Arc::clone(&input),
                outputs: Arc::clone(&outputs),
                codec: Arc::clone(&self.shared.codec),
            };
            let started = Instant::now();
            // A panicking step is an attempt with an unknown outcome.
            let once = async {
                CatchPanic::new(call.invoke(Arc::clone(&self.shared.ctx), cx))
                    .await
                    .unwrap_or_else(|panic| {
                        Err((
                            StepEffect::Unknown,
                            format!("{} panicked: {panic}", call.kind_name()),
                        ))
                    })
            };
            let result = match timeout {
                Some(limit) => tokio::time::timeout(*limit, once)
                    .await
                    .unwrap_or_else(|_| {
                        let timed_out = StepTimedOut {
                            step: name.to_string(),
                            timeout: *limit,
                        };
                        Err((StepEffect::Unknown, timed_out.to_string()))
                    }),
                None => once.await,
            };
            let elapsed = started.elapsed();
            let (effect, error) = match result {
                Ok(output) => {
                    let note = Note {
                        attempt,
                        elapsed,
                        ..Note::default()
                    };
                    let completed = call.completed(name, &output);
                    if call.may_defer_completion() {
                        self.deferred.lock().push(Deferred {
                            kind: completed,
                            attempt,
                            elapsed,
                        });
                    } else {
                        self.record(completed, note).await?;
                    }
                    return Ok(CallEnd::Completed(output));
                }
                Err(failure) => failure,
            };
            failures += 1;
            unknown |= effect == StepEffect::Unknown;
            let delay = backoff.delay(
                failures,
                &RETRYABLE_FAILURE,
                previous_delay,
                &mut rand::rng(),
            );
            let will_retry = call.past_pivot()
                || (failures < *max_attempts && delay.is_some() && !call.stage_has_failed());
            let seq = self
                .record(
                    call.failed(name, attempt, effect, error.clone(), will_retry),
                    Note::default(),
                )
                .await?;
            if !will_retry {
                if let Call::Action { stage_failed, .. } = &call {
                    stage_failed.send_replace(true);
                }
                return Ok(CallEnd::Failed {
                    error,
                    unknown,
                    seq,
                });
            }
            previous_delay = delay;
            let pause = delay.unwrap_or_else(|| backoff.max_interval());
            match &call {
                // Wait before the next attempt, unless another step of the
                // stage fails for good meanwhile: then the saga compensates
                // and this step stops here.
                Call::Action {
                    stage_failed,
                    past_pivot,
                    ..
                } => {
                    let mut failed = stage_failed.subscribe();
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        Ok(_) = failed.wait_for(|failed| *failed), if !*past_pivot => {
                            tracing::debug!(step = %name, attempt, "retry dropped: another step of the stage failed");
                            return Ok(CallEnd::Stopped { unknown });
                        }
                    }
                }
                Call::Compensation(_) => tokio::time::sleep(pause).await,
            }
            attempt += 1;
        }
    }

    /// Compensates, in reverse order, every step that may have had an
    /// effect and is not compensated yet.
    async fn run_backward(&self, progress: &mut Progress) -> Result<SagaOutcome<C>, SagaError> {
        let steps: Vec<&Step<Ctx, C>> = self
            .definition
            .inner
            .stages
            .iter()
            .flat_map(|stage| stage.steps.iter())
            .collect();
        for step in steps.into_iter().rev() {
            let state = progress.step(&step.name);
            if !state.may_have_effect() || state.compensated {
                continue;
            }
            let Some(compensation) = &step.compensation else {
                continue;
            };
            let span = tracing::info_span!("saga_compensation", step = %step.name);
            let result = self
                .run_compensation(step, compensation, progress, &state)
                .instrument(span)
                .await?;
            if let Err(error) = result {
                let stuck = RecordKind::SagaStuck {
                    step: step.name.to_string(),
                    error: error.clone(),
                };
                self.record(stuck, Note::default()).await?;
                if let Err(release) = self.shared.log.release(&self.lease).await {
                    tracing::debug!(%release, "lease of stuck saga not released");
                }
                return Ok(SagaOutcome::Stuck(SagaFailure {
                    step: step.name.to_string(),
                    error,
                }));
            }
            progress.step_mut(&step.name).compensated = true;
        }
        let (step, error) = progress.failure.clone().unwrap_or_default();
        let compensated = RecordKind::SagaFinished {
            outcome: FinishedOutcome::Compensated {
                error: error.clone(),
            },
        };
        let note = Note {
            failed_step: &step,
            ..Note::default()
        };
        self.record(compensated, note).await?;
        Ok(SagaOutcome::Compensated(SagaFailure { step, error }))
    }

    /// Runs one compensation with its retries: `Ok(Err(last error))` when
    /// it ran out of attempts.
    async fn run_compensation(
        &self,
        step: &Step<Ctx, C>,
        compensation: &UndoFn<Ctx, C>,
        progress: &Progress,
        state: &StepProgress,
    ) -> Result<Result<(), String>, SagaError> {
        let resumed = Resumed {
            next_attempt: state.next_undo_attempt(),
            failures: state.undo_failures,
            interrupted: state.undo_in_flight,
        };
        let outputs = Arc::new(progress.outputs.clone());
        let end = self
            .run_attempts(
                step,
                Call::Compensation(compensation),
                resumed,
                Arc::clone(&progress.input),
                outputs,
            )
            .await?;
        Ok(match end {
            CallEnd::Completed(_) => Ok(()),
            CallEnd::Failed { error, .. } => Err(error),
            // Only actions are stopped by their stage.
            CallEnd::Stopped { .. } => Err(String::new()),
        })
    }
}

/// Where a step's action runs in its saga.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// After the pivot: retried until it completes.
    past_pivot: bool,
    /// The only step of its stage still to run.
    alone: bool,
}

/// Where an attempt loop starts: what the log says so far.
#[derive(Debug, Clone, Copy)]
struct Resumed {
    next_attempt: u32,
    failures: u32,
    /// An attempt was interrupted (a crash): it may have had an effect,
    /// whatever its re-run reports.
    interrupted: bool,
}

/// The call an attempt loop makes: a step's action or its compensation.
enum Call<'a, Ctx, C> {
    Action {
        action: &'a ActionFn<Ctx, C>,
        /// Past the pivot, the action is retried until it completes.
        past_pivot: bool,
        /// The only step of its stage still to run: its completion may
        /// wait for the next record ([`Run::record`]).
        alone: bool,
        /// Set when a member of the stage failed for good.
        stage_failed: &'a watch::Sender<bool>,
    },
    Compensation(&'a UndoFn<Ctx, C>),
}

/// One attempt's failure: whether it may have had an effect, and the error
/// as text.
type AttemptFailure = (StepEffect, String);

impl<Ctx, C> Call<'_, Ctx, C> {
    fn kind(&self) -> CallKind {
        match self {
            Call::Action { .. } => CallKind::Action,
            Call::Compensation(_) => CallKind::Compensation,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Call::Action { .. } => "action",
            Call::Compensation(_) => "compensation",
        }
    }

    fn attempts<'s>(&self, step: &'s Step<Ctx, C>) -> &'s Attempts {
        match self {
            Call::Action { .. } => &step.action_attempts,
            Call::Compensation(_) => &step.undo_attempts,
        }
    }

    fn past_pivot(&self) -> bool {
        matches!(
            self,
            Call::Action {
                past_pivot: true,
                ..
            }
        )
    }

    /// Whether the completion may wait for the next record: a step alone
    /// in its stage, or a compensation (they run one at a time).
    fn may_defer_completion(&self) -> bool {
        match self {
            Call::Action { alone, .. } => *alone,
            Call::Compensation(_) => true,
        }
    }

    fn stage_has_failed(&self) -> bool {
        match self {
            Call::Action { stage_failed, .. } => *stage_failed.borrow(),
            Call::Compensation(_) => false,
        }
    }

    /// Runs one attempt; a compensation's output is empty and its failures
    /// are reported as unknown (they are not recorded with an effect).
    async fn invoke(&self, ctx: Arc<Ctx>, cx: StepContext<C>) -> Result<Vec<u8>, AttemptFailure> {
        match self {
            Call::Action { action, .. } => action(ctx, cx).await.map_err(|error| {
                let effect = match error {
                    StepError::NoEffect(_) => StepEffect::NoEffect,
                    StepError::Unknown(_) => StepEffect::Unknown,
                };
                (effect, error.to_string())
            }),
            Call::Compensation(undo) => undo(ctx, cx)
                .await
                .map(|()| Vec::new())
                .map_err(|error| (StepEffect::Unknown, error.to_string())),
        }
    }

    fn started(&self, step: &str, attempt: u32) -> RecordKind {
        let step = step.to_owned();
        match self {
            Call::Action { .. } => RecordKind::StepStarted { step, attempt },
            Call::Compensation(_) => RecordKind::CompensationStarted { step, attempt },
        }
    }

    fn completed(&self, step: &str, output: &[u8]) -> RecordKind {
        let step = step.to_owned();
        match self {
            Call::Action { .. } => RecordKind::StepCompleted {
                step,
                output: output.to_vec(),
            },
            Call::Compensation(_) => RecordKind::CompensationCompleted { step },
        }
    }

    fn failed(
        &self,
        step: &str,
        attempt: u32,
        effect: StepEffect,
        error: String,
        will_retry: bool,
    ) -> RecordKind {
        let step = step.to_owned();
        match self {
            Call::Action { .. } => RecordKind::StepFailed {
                step,
                attempt,
                effect,
                error,
                will_retry,
            },
            Call::Compensation(_) => RecordKind::CompensationFailed {
                step,
                attempt,
                error,
                will_retry,
            },
        }
    }
}
