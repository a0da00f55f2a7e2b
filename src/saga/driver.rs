//! Drives one saga: forward through its stages, backward through its
//! compensations, recording each move in the log before and after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::codec::Codec;
use super::context::{CallKind, StepContext};
use super::definition::{Attempts, SagaDefinition, Step, StepError, StepTimedOut, UndoFn};
use super::error::SagaError;
use super::event::{Counters, SagaEvent, SagaEventKind, bump};
use super::executor::Shared;
use super::id::SagaId;
use super::log::{Lease, LogError};
use super::outcome::{SagaFailure, SagaOutcome, SagaOutput};
use super::progress::{Progress, StepProgress};
use super::record::{FinishedOutcome, RecordKind, SagaState, StepEffect};
use crate::error::BoxError;

pub(crate) struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    pub(crate) fn new(counters: &'a Counters) -> Self {
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One saga being driven.
pub(crate) struct Run<Ctx, C> {
    pub(crate) shared: Arc<Shared<Ctx, C>>,
    pub(crate) definition: SagaDefinition<Ctx, C>,
    pub(crate) lease: Lease,
}

/// How one step's action ended, after its retries.
enum ActionEnd {
    Completed(Vec<u8>),
    Failed {
        error: String,
        /// Whether any attempt ended with an unknown outcome.
        unknown: bool,
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

    async fn append(&self, record: RecordKind) -> Result<u64, SagaError> {
        match self.shared.log.append(&self.lease, record).await {
            Ok(seq) => Ok(seq),
            Err(error @ LogError::Fenced { .. }) => Err(self.lease_lost(error)),
            Err(error) => Err(error.into()),
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
        let mut next_renewal = Instant::now() + period;
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                () = tokio::time::sleep_until(next_renewal) => {
                    next_renewal = Instant::now() + period;
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
            self.append(RecordKind::SagaFinished {
                outcome: FinishedOutcome::Completed,
            })
            .await?;
            bump(&self.shared.counters.completed);
            tracing::info!("saga completed");
            self.publish(SagaEventKind::Completed);
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
                let (stage_failed, _) = tokio::sync::watch::channel(false);
                let stage_failed = Arc::new(stage_failed);
                let mut members = JoinSet::new();
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
                                    past_pivot,
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
                let mut ends: Vec<Option<ActionEnd>> = pending.iter().map(|_| None).collect();
                let mut first_error = None;
                while let Some(joined) = members.join_next().await {
                    match joined {
                        Ok((index, Ok(end))) => ends[index] = Some(end),
                        Ok((_, Err(error))) => {
                            first_error.get_or_insert(error);
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
                for (step, end) in pending.iter().zip(ends) {
                    let name = &*step.name;
                    match end {
                        Some(ActionEnd::Completed(output)) => {
                            let s = progress.step_mut(name);
                            s.completed = true;
                            s.in_flight = false;
                            progress.outputs.insert(name.to_owned(), output);
                        }
                        Some(ActionEnd::Stopped { unknown }) => {
                            let s = progress.step_mut(name);
                            s.in_flight = false;
                            s.unknown |= unknown;
                        }
                        Some(ActionEnd::Failed { error, unknown }) => {
                            let s = progress.step_mut(name);
                            s.in_flight = false;
                            s.unknown |= unknown;
                            progress.state = SagaState::Compensating;
                            if progress.failure.is_none() {
                                progress.failure = Some((name.to_owned(), error));
                            }
                        }
                        None => {}
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

    async fn run_action(
        &self,
        step: &Step<Ctx, C>,
        so_far: &StepProgress,
        past_pivot: bool,
        input: Arc<[u8]>,
        outputs: Arc<HashMap<String, Vec<u8>>>,
        stage_failed: &tokio::sync::watch::Sender<bool>,
    ) -> Result<ActionEnd, SagaError> {
        let Attempts {
            backoff,
            max_attempts,
            timeout,
        } = &step.action_attempts;
        let mut delays = backoff.delays();
        let mut attempt = so_far.next_attempt();
        let mut failures = so_far.failures;
        let mut unknown = false;
        loop {
            self.append(RecordKind::StepStarted {
                step: step.name.to_string(),
                attempt,
            })
            .await?;
            tracing::debug!(step = %step.name, attempt, "step started");
            self.publish(SagaEventKind::StepStarted {
                step: Arc::clone(&step.name),
                attempt,
            });
            let call = StepContext {
                saga: self.saga(),
                step: Arc::clone(&step.name),
                kind: CallKind::Action,
                attempt,
                input: Arc::clone(&input),
                outputs: Arc::clone(&outputs),
                codec: Arc::clone(&self.shared.codec),
            };
            let started = Instant::now();
            let action = (step.action)(Arc::clone(&self.shared.ctx), call);
            let result = match timeout {
                Some(limit) => match tokio::time::timeout(*limit, action).await {
                    Ok(result) => result,
                    Err(_) => Err(StepError::unknown(StepTimedOut {
                        step: step.name.to_string(),
                        timeout: *limit,
                    })),
                },
                None => action.await,
            };
            let elapsed = started.elapsed();
            match result {
                Ok(output) => {
                    self.append(RecordKind::StepCompleted {
                        step: step.name.to_string(),
                        output: output.clone(),
                    })
                    .await?;
                    bump(&self.shared.counters.steps_completed);
                    self.shared.counters.record_latency(&step.name, elapsed);
                    tracing::debug!(step = %step.name, attempt, ?elapsed, "step completed");
                    self.publish(SagaEventKind::StepCompleted {
                        step: Arc::clone(&step.name),
                        elapsed,
                    });
                    return Ok(ActionEnd::Completed(output));
                }
                Err(error) => {
                    failures += 1;
                    let effect = match error {
                        StepError::NoEffect(_) => StepEffect::NoEffect,
                        StepError::Unknown(_) => StepEffect::Unknown,
                    };
                    unknown |= effect == StepEffect::Unknown;
                    let delay = delays.next();
                    let will_retry = past_pivot
                        || (failures < *max_attempts && delay.is_some() && !*stage_failed.borrow());
                    let text = error.to_string();
                    self.append(RecordKind::StepFailed {
                        step: step.name.to_string(),
                        attempt,
                        effect,
                        error: text.clone(),
                        will_retry,
                    })
                    .await?;
                    bump(&self.shared.counters.step_failures);
                    tracing::warn!(step = %step.name, attempt, ?effect, will_retry, error = %text, "step failed");
                    self.publish(SagaEventKind::StepFailed {
                        step: Arc::clone(&step.name),
                        attempt,
                        effect,
                        will_retry,
                    });
                    if !will_retry {
                        stage_failed.send_replace(true);
                        return Ok(ActionEnd::Failed {
                            error: text,
                            unknown,
                        });
                    }
                    // Wait before the next attempt, unless another step of
                    // the stage fails for good meanwhile: then the saga
                    // compensates and this step stops here.
                    let mut failed = stage_failed.subscribe();
                    let pause = delay.unwrap_or_else(|| backoff.max_interval());
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        Ok(_) = failed.wait_for(|failed| *failed), if !past_pivot => {
                            tracing::debug!(step = %step.name, attempt, "retry dropped: another step of the stage failed");
                            return Ok(ActionEnd::Stopped { unknown });
                        }
                    }
                    attempt += 1;
                }
            }
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
                self.append(RecordKind::SagaStuck {
                    step: step.name.to_string(),
                    error: error.clone(),
                })
                .await?;
                bump(&self.shared.counters.stuck);
                tracing::error!(step = %step.name, %error, "saga stuck: compensation failed");
                self.publish(SagaEventKind::Stuck {
                    step: Arc::clone(&step.name),
                });
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
        self.append(RecordKind::SagaFinished {
            outcome: FinishedOutcome::Compensated {
                error: error.clone(),
            },
        })
        .await?;
        bump(&self.shared.counters.compensated);
        tracing::info!(failed_step = %step, %error, "saga compensated");
        self.publish(SagaEventKind::Compensated);
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
        let Attempts {
            backoff,
            max_attempts,
            timeout,
        } = &step.undo_attempts;
        let mut delays = backoff.delays();
        let mut attempt = state.next_undo_attempt();
        let mut failures = state.undo_failures;
        let outputs = Arc::new(progress.outputs.clone());
        loop {
            self.append(RecordKind::CompensationStarted {
                step: step.name.to_string(),
                attempt,
            })
            .await?;
            self.publish(SagaEventKind::CompensationStarted {
                step: Arc::clone(&step.name),
                attempt,
            });
            let call = StepContext {
                saga: self.saga(),
                step: Arc::clone(&step.name),
                kind: CallKind::Compensation,
                attempt,
                input: Arc::clone(&progress.input),
                outputs: Arc::clone(&outputs),
                codec: Arc::clone(&self.shared.codec),
            };
            let started = Instant::now();
            let undo = compensation(Arc::clone(&self.shared.ctx), call);
            let result: Result<(), BoxError> = match timeout {
                Some(limit) => match tokio::time::timeout(*limit, undo).await {
                    Ok(result) => result,
                    Err(_) => Err(Box::new(StepTimedOut {
                        step: step.name.to_string(),
                        timeout: *limit,
                    })),
                },
                None => undo.await,
            };
            match result {
                Ok(()) => {
                    self.append(RecordKind::CompensationCompleted {
                        step: step.name.to_string(),
                    })
                    .await?;
                    bump(&self.shared.counters.compensations_completed);
                    let elapsed = started.elapsed();
                    tracing::info!(step = %step.name, attempt, ?elapsed, "step compensated");
                    self.publish(SagaEventKind::CompensationCompleted {
                        step: Arc::clone(&step.name),
                        elapsed,
                    });
                    return Ok(Ok(()));
                }
                Err(error) => {
                    failures += 1;
                    let delay = delays.next();
                    let will_retry = failures < *max_attempts && delay.is_some();
                    let text = error.to_string();
                    self.append(RecordKind::CompensationFailed {
                        step: step.name.to_string(),
                        attempt,
                        error: text.clone(),
                        will_retry,
                    })
                    .await?;
                    bump(&self.shared.counters.compensation_failures);
                    tracing::warn!(step = %step.name, attempt, will_retry, error = %text, "compensation failed");
                    self.publish(SagaEventKind::CompensationFailed {
                        step: Arc::clone(&step.name),
                        attempt,
                        will_retry,
                    });
                    if !will_retry {
                        return Ok(Err(text));
                    }
                    tokio::time::sleep(delay.unwrap_or_else(|| backoff.max_interval())).await;
                    attempt += 1;
                }
            }
        }
    }
}
