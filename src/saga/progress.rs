//! A saga's progress, rebuilt from its records.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::SagaError;
use super::id::SagaId;
use super::log::LogError;
use super::record::{FinishedOutcome, LoggedRecord, RecordKind, SagaState, StepEffect};

/// What the log says about one step.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepProgress {
    pub(crate) completed: bool,
    /// An attempt ended with an unknown outcome.
    pub(crate) unknown: bool,
    /// An attempt started and has no end record (yet, or ever: a crash).
    pub(crate) in_flight: bool,
    pub(crate) last_attempt: u32,
    pub(crate) failures: u32,
    pub(crate) compensated: bool,
    pub(crate) undo_in_flight: bool,
    pub(crate) undo_last_attempt: u32,
    pub(crate) undo_failures: u32,
}

impl StepProgress {
    /// Whether the action may have had an effect, so needs compensating.
    pub(crate) fn may_have_effect(&self) -> bool {
        self.completed || self.unknown || self.in_flight
    }

    /// The attempt number to run next: an attempt interrupted by a crash
    /// is re-run under its own number.
    pub(crate) fn next_attempt(&self) -> u32 {
        if self.in_flight {
            self.last_attempt.max(1)
        } else {
            self.last_attempt + 1
        }
    }

    pub(crate) fn next_undo_attempt(&self) -> u32 {
        if self.undo_in_flight {
            self.undo_last_attempt.max(1)
        } else {
            self.undo_last_attempt + 1
        }
    }
}

/// A saga's progress.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) state: SagaState,
    pub(crate) input: Arc<[u8]>,
    pub(crate) outputs: HashMap<String, Vec<u8>>,
    pub(crate) steps: HashMap<String, StepProgress>,
    /// The failure that made the saga compensate.
    pub(crate) failure: Option<(String, String)>,
    /// The step and error that made it stuck.
    pub(crate) stuck: Option<(String, String)>,
}

impl Progress {
    pub(crate) fn new(input: Arc<[u8]>) -> Self {
        Self {
            state: SagaState::Running,
            input,
            outputs: HashMap::new(),
            steps: HashMap::new(),
            failure: None,
            stuck: None,
        }
    }

    pub(crate) fn step(&self, name: &str) -> StepProgress {
        self.steps.get(name).cloned().unwrap_or_default()
    }

    pub(crate) fn step_mut(&mut self, name: &str) -> &mut StepProgress {
        if !self.steps.contains_key(name) {
            self.steps.insert(name.to_owned(), StepProgress::default());
        }
        self.steps.get_mut(name).expect("inserted above")
    }

    /// Applies one record.
    pub(crate) fn apply(&mut self, record: &RecordKind) {
        self.state = self.state.after(record);
        match record {
            RecordKind::SagaCreated { .. } => {}
            RecordKind::StepStarted { step, attempt } => {
                let s = self.step_mut(step);
                // A start while an attempt is in flight is the re-run of an
                // attempt a crash cut off: that one's outcome is unknown.
                s.unknown |= s.in_flight;
                s.in_flight = true;
                s.last_attempt = *attempt;
            }
            RecordKind::StepCompleted { step, output } => {
                let s = self.step_mut(step);
                s.in_flight = false;
                s.completed = true;
                self.outputs.insert(step.clone(), output.clone());
            }
            RecordKind::StepFailed {
                step,
                effect,
                error,
                will_retry,
                ..
            } => {
                let s = self.step_mut(step);
                s.in_flight = false;
                s.failures += 1;
                if *effect == StepEffect::Unknown {
                    s.unknown = true;
                }
                if !will_retry && self.failure.is_none() {
                    self.failure = Some((step.clone(), error.clone()));
                }
            }
            RecordKind::CompensationStarted { step, attempt } => {
                let s = self.step_mut(step);
                s.undo_in_flight = true;
                s.undo_last_attempt = *attempt;
            }
            RecordKind::CompensationCompleted { step } => {
                let s = self.step_mut(step);
                s.undo_in_flight = false;
                s.compensated = true;
            }
            RecordKind::CompensationFailed { step, .. } => {
                let s = self.step_mut(step);
                s.undo_in_flight = false;
                s.undo_failures += 1;
            }
            RecordKind::SagaStuck { step, error } => {
                self.stuck = Some((step.clone(), error.clone()));
            }
            RecordKind::StuckRetried => {
                if let Some((step, _)) = self.stuck.take() {
                    self.step_mut(&step).undo_failures = 0;
                }
            }
            RecordKind::SagaFinished { outcome } => {
                if let FinishedOutcome::Compensated { error } = outcome {
                    if self.failure.is_none() {
                        self.failure = Some((String::new(), error.clone()));
                    }
                }
            }
        }
    }

    /// Rebuilds a saga's progress from its records, checking that they
    /// start with its creation, have no gaps, and name only known steps.
    pub(crate) fn replay(
        saga: SagaId,
        records: &[LoggedRecord],
        knows_step: impl Fn(&str) -> bool,
    ) -> Result<Self, SagaError> {
        let corrupt = |seq: Option<u64>, detail: String| {
            SagaError::Log(LogError::Corrupt { saga, seq, detail })
        };
        let Some(first) = records.first() else {
            return Err(corrupt(None, "the saga has no records".into()));
        };
        let RecordKind::SagaCreated { input, .. } = &first.kind else {
            return Err(corrupt(
                Some(first.seq),
                format!(
                    "first record is `{}`, not `saga_created`",
                    first.kind.name()
                ),
            ));
        };
        let mut progress = Progress::new(Arc::from(&input[..]));
        for (expected, record) in records.iter().enumerate() {
            if record.seq != expected as u64 {
                return Err(corrupt(
                    Some(expected as u64),
                    format!(
                        "record {expected} is missing (found {} instead)",
                        record.seq
                    ),
                ));
            }
            if expected > 0 && matches!(record.kind, RecordKind::SagaCreated { .. }) {
                return Err(corrupt(Some(record.seq), "a second `saga_created`".into()));
            }
            if let Some(step) = record.kind.step() {
                if !knows_step(step) {
                    return Err(SagaError::InconsistentLog {
                        saga,
                        detail: format!(
                            "record {} names step `{step}`, which the definition does not have",
                            record.seq
                        ),
                    });
                }
            }
            progress.apply(&record.kind);
        }
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn record(seq: u64, kind: RecordKind) -> LoggedRecord {
        LoggedRecord {
            seq,
            epoch: 1,
            at: SystemTime::UNIX_EPOCH,
            kind,
        }
    }

    fn created() -> RecordKind {
        RecordKind::SagaCreated {
            definition: "d".into(),
            version: 1,
            input: b"7".to_vec(),
        }
    }

    fn started(step: &str, attempt: u32) -> RecordKind {
        RecordKind::StepStarted {
            step: step.into(),
            attempt,
        }
    }

    fn replay(records: &[LoggedRecord]) -> Result<Progress, SagaError> {
        Progress::replay(SagaId::from_u128(1), records, |s| s != "unknown")
    }

    #[test]
    fn a_missing_record_is_corrupt_not_skipped() {
        let records = [record(0, created()), record(2, started("a", 1))];
        let err = replay(&records).unwrap_err();
        assert!(
            matches!(err, SagaError::Log(LogError::Corrupt { seq: Some(1), .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_log_must_start_with_its_creation_exactly_once() {
        assert!(matches!(
            replay(&[record(0, started("a", 1))]),
            Err(SagaError::Log(LogError::Corrupt { seq: Some(0), .. }))
        ));
        assert!(matches!(
            replay(&[record(0, created()), record(1, created())]),
            Err(SagaError::Log(LogError::Corrupt { seq: Some(1), .. }))
        ));
        assert!(matches!(
            replay(&[]),
            Err(SagaError::Log(LogError::Corrupt { seq: None, .. }))
        ));
    }

    #[test]
    fn a_step_the_definition_lacks_is_an_inconsistent_log() {
        let records = [record(0, created()), record(1, started("unknown", 1))];
        assert!(matches!(
            replay(&records),
            Err(SagaError::InconsistentLog { .. })
        ));
    }

    #[test]
    fn an_attempt_cut_off_by_a_crash_may_have_had_an_effect_even_if_its_rerun_had_none() {
        // Attempt 1 started, the executor crashed; another re-ran attempt 1,
        // which failed for good with no effect: the first run may still
        // have had one, so the step is compensated.
        let records = [
            record(0, created()),
            record(1, started("a", 1)),
            record(2, started("a", 1)),
            record(
                3,
                RecordKind::StepFailed {
                    step: "a".into(),
                    attempt: 1,
                    effect: StepEffect::NoEffect,
                    error: "no".into(),
                    will_retry: false,
                },
            ),
        ];
        let progress = replay(&records).unwrap();
        let a = progress.step("a");
        assert!(!a.in_flight);
        assert!(a.unknown);
        assert!(a.may_have_effect());
    }

    #[test]
    fn an_interrupted_attempt_is_rerun_under_its_own_number_and_may_have_had_an_effect() {
        let records = [
            record(0, created()),
            record(1, started("a", 1)),
            record(
                2,
                RecordKind::StepFailed {
                    step: "a".into(),
                    attempt: 1,
                    effect: StepEffect::NoEffect,
                    error: "no".into(),
                    will_retry: true,
                },
            ),
            record(3, started("a", 2)),
        ];
        let progress = replay(&records).unwrap();
        let a = progress.step("a");
        assert_eq!((a.next_attempt(), a.failures), (2, 1));
        assert!(a.may_have_effect());
        assert_eq!(progress.state, SagaState::Running);
        assert_eq!(&*progress.input, b"7");
    }
}
