//! Recording a move: the one place where a [`RecordKind`] becomes its log
//! append, its counter, its trace and its event, so that the four never
//! drift apart.

use std::sync::Arc;
use std::time::Duration;

use super::event::{SagaEvent, SagaEventKind, bump};
use super::executor::Shared;
use super::log::{Lease, LogError};
use super::record::{FinishedOutcome, RecordKind};

/// What a trace or an event reports that the record itself does not hold.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Note<'a> {
    /// The attempt that ended (for completions, whose records carry no
    /// attempt number).
    pub(crate) attempt: u32,
    /// How long the attempt that ended took.
    pub(crate) elapsed: Duration,
    /// The step whose failure made the saga compensate.
    pub(crate) failed_step: &'a str,
}

impl<Ctx, C> Shared<Ctx, C> {
    /// Appends `kind` to the lease's saga; once the log has it, counts it,
    /// traces it and publishes its event. Nothing is reported for a record
    /// the log refused.
    pub(crate) async fn record(
        &self,
        lease: &Lease,
        definition: &Arc<str>,
        kind: RecordKind,
        note: Note<'_>,
    ) -> Result<u64, LogError> {
        let reported = without_payload(&kind);
        let seq = self.log.append(lease, kind).await?;
        self.report(lease, definition, &reported, note);
        Ok(seq)
    }

    /// Appends `earlier` (completions held back by the driver) and then
    /// `kind` in one [`append_batch`](super::log::SagaLog::append_batch),
    /// and reports each as [`record`](Self::record) does, once the log
    /// has them all. Returns the sequence number of `kind`.
    pub(crate) async fn record_after(
        &self,
        lease: &Lease,
        definition: &Arc<str>,
        earlier: Vec<Deferred>,
        kind: RecordKind,
        note: Note<'_>,
    ) -> Result<u64, LogError> {
        let mut reported = Vec::with_capacity(earlier.len());
        let mut records = Vec::with_capacity(earlier.len() + 1);
        for deferred in earlier {
            reported.push((without_payload(&deferred.kind), deferred.note()));
            records.push(deferred.kind);
        }
        let own = without_payload(&kind);
        records.push(kind);
        let seq = self.log.append_batch(lease, records).await?;
        for (kind, earlier_note) in &reported {
            self.report(lease, definition, kind, *earlier_note);
        }
        self.report(lease, definition, &own, note);
        // Never `None`: the batch holds at least `kind`.
        Ok(seq.unwrap_or_default())
    }

    pub(crate) fn report(
        &self,
        lease: &Lease,
        definition: &Arc<str>,
        kind: &RecordKind,
        note: Note<'_>,
    ) {
        self.count_and_trace(lease, kind, note);
        if !self.events.is_observed() {
            return;
        }
        if let Some(kind) = event_of(kind, note) {
            self.events.publish_with(|| SagaEvent {
                saga: lease.saga,
                definition: Arc::clone(definition),
                kind,
            });
        }
    }

    fn count_and_trace(&self, lease: &Lease, kind: &RecordKind, note: Note<'_>) {
        let counters = &self.counters;
        match kind {
            RecordKind::SagaCreated { .. }
            | RecordKind::StuckRetried
            | RecordKind::CompensationStarted { .. } => {}
            RecordKind::StepStarted { step, attempt } => {
                tracing::debug!(%step, attempt, "step started");
            }
            RecordKind::StepCompleted { step, .. } => {
                bump(&counters.steps_completed);
                counters.record_latency(step, note.elapsed);
                counters.exported.on_step_completed(step, note.elapsed);
                tracing::debug!(%step, attempt = note.attempt, elapsed = ?note.elapsed, "step completed");
            }
            RecordKind::StepFailed {
                step,
                attempt,
                effect,
                error,
                will_retry,
            } => {
                bump(&counters.step_failures);
                counters.exported.on_step_failed();
                tracing::warn!(%step, attempt, ?effect, will_retry, %error, "step failed");
            }
            RecordKind::CompensationCompleted { step } => {
                bump(&counters.compensations_completed);
                tracing::info!(%step, attempt = note.attempt, elapsed = ?note.elapsed, "step compensated");
            }
            RecordKind::CompensationFailed {
                step,
                attempt,
                error,
                will_retry,
            } => {
                bump(&counters.compensation_failures);
                tracing::warn!(%step, attempt, will_retry, %error, "compensation failed");
            }
            RecordKind::SagaStuck { step, error } => {
                bump(&counters.stuck);
                counters.exported.on_stuck();
                tracing::error!(%step, %error, "saga stuck: compensation failed");
            }
            RecordKind::SagaFinished { outcome } => match outcome {
                FinishedOutcome::Completed => {
                    bump(&counters.completed);
                    counters.exported.on_completed();
                    tracing::info!("saga completed");
                }
                FinishedOutcome::Compensated { error } => {
                    bump(&counters.compensated);
                    counters.exported.on_compensated();
                    tracing::info!(failed_step = %note.failed_step, %error, "saga compensated");
                }
                FinishedOutcome::Abandoned => {
                    bump(&counters.abandoned);
                    counters.exported.on_abandoned();
                    tracing::warn!(saga = %lease.saga, "stuck saga abandoned by an operator");
                }
            },
        }
    }
}

/// A completion the driver has not written yet: it goes to the log in the
/// same [`append_batch`](super::log::SagaLog::append_batch) as the record
/// that follows it.
#[derive(Debug)]
pub(crate) struct Deferred {
    /// The `StepCompleted` or `CompensationCompleted` record.
    pub(crate) kind: RecordKind,
    /// The attempt that completed.
    pub(crate) attempt: u32,
    /// How long it took.
    pub(crate) elapsed: Duration,
}

impl Deferred {
    fn note(&self) -> Note<'static> {
        Note {
            attempt: self.attempt,
            elapsed: self.elapsed,
            failed_step: "",
        }
    }
}

/// The event a record is published as, if any.
fn event_of(kind: &RecordKind, note: Note<'_>) -> Option<SagaEventKind> {
    let step = |step: &String| Arc::<str>::from(step.as_str());
    Some(match kind {
        RecordKind::SagaCreated { .. } | RecordKind::StuckRetried => return None,
        RecordKind::StepStarted {
            step: name,
            attempt,
        } => SagaEventKind::StepStarted {
            step: step(name),
            attempt: *attempt,
        },
        RecordKind::StepCompleted { step: name, .. } => SagaEventKind::StepCompleted {
            step: step(name),
            elapsed: note.elapsed,
        },
        RecordKind::StepFailed {
            step: name,
            attempt,
            effect,
            will_retry,
            ..
        } => SagaEventKind::StepFailed {
            step: step(name),
            attempt: *attempt,
            effect: *effect,
            will_retry: *will_retry,
        },
        RecordKind::CompensationStarted {
            step: name,
            attempt,
        } => SagaEventKind::CompensationStarted {
            step: step(name),
            attempt: *attempt,
        },
        RecordKind::CompensationCompleted { step: name } => SagaEventKind::CompensationCompleted {
            step: step(name),
            elapsed: note.elapsed,
        },
        RecordKind::CompensationFailed {
            step: name,
            attempt,
            will_retry,
            ..
        } => SagaEventKind::CompensationFailed {
            step: step(name),
            attempt: *attempt,
            will_retry: *will_retry,
        },
        RecordKind::SagaStuck { step: name, .. } => SagaEventKind::Stuck { step: step(name) },
        RecordKind::SagaFinished { outcome } => match outcome {
            FinishedOutcome::Completed => SagaEventKind::Completed,
            FinishedOutcome::Compensated { .. } => SagaEventKind::Compensated,
            FinishedOutcome::Abandoned => SagaEventKind::Abandoned,
        },
    })
}

/// The record without its encoded input or output, which nothing but the
/// log needs: what [`Shared::report`] looks at.
fn without_payload(kind: &RecordKind) -> RecordKind {
    match kind {
        RecordKind::SagaCreated {
            definition,
            version,
            ..
        } => RecordKind::SagaCreated {
            definition: definition.clone(),
            version: *version,
            input: Vec::new(),
        },
        RecordKind::StepCompleted { step, .. } => RecordKind::StepCompleted {
            step: step.clone(),
            output: Vec::new(),
        },
        other => other.clone(),
    }
}
