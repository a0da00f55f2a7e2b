//! What a saga log holds: one [`RecordKind`] per thing that happened, and
//! the [`SagaState`] the records add up to.
//!
//! Records are written before and after each action and compensation, so
//! that a saga can be resumed from its records alone. Inputs and outputs
//! are stored as bytes encoded by the executor's
//! [`Codec`](super::Codec); the log never looks inside them.
//!
//! SQL backends store a record as three columns with
//! [`RecordKind::to_parts`] (`kind` text, `body` JSON text, `payload`
//! bytes) and read it back with [`RecordKind::from_parts`], which rejects
//! anything it cannot read instead of guessing.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Whether a failed action may have changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepEffect {
    /// The action is known to have changed nothing (a validation error, a
    /// refusal): it is not compensated.
    NoEffect,
    /// The action may or may not have taken effect (a timeout, a lost
    /// connection): it is compensated if the saga compensates.
    Unknown,
}

/// How a finished saga ended, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FinishedOutcome {
    /// Every step completed.
    Completed,
    /// A step failed and every step that may have had an effect was
    /// compensated. `error` is the failure that started compensation.
    Compensated {
        /// The step failure that caused compensation.
        error: String,
    },
    /// An operator abandoned the stuck saga; its compensation did not finish.
    Abandoned,
}

/// One thing that happened to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// The saga was started: always the first record (sequence number 0).
    SagaCreated {
        /// The definition's name.
        definition: String,
        /// The definition's version.
        version: u32,
        /// The saga's input, encoded.
        input: Vec<u8>,
    },
    /// An attempt of a step's action is about to run.
    StepStarted {
        /// The step.
        step: String,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A step's action succeeded.
    StepCompleted {
        /// The step.
        step: String,
        /// The action's output, encoded.
        output: Vec<u8>,
    },
    /// An attempt of a step's action failed.
    StepFailed {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Whether the attempt may have had an effect.
        effect: StepEffect,
        /// The error, as text.
        error: String,
        /// Whether the step will be tried again; `false` means the saga
        /// compensates from here.
        will_retry: bool,
    },
    /// An attempt of a step's compensation is about to run.
    CompensationStarted {
        /// The step.
        step: String,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A step's compensation succeeded.
    CompensationCompleted {
        /// The step.
        step: String,
    },
    /// An attempt of a step's compensation failed.
    CompensationFailed {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// The error, as text.
        error: String,
        /// Whether the compensation will be tried again; `false` is followed
        /// by [`RecordKind::SagaStuck`].
        will_retry: bool,
    },
    /// A compensation ran out of attempts: the saga waits for an operator.
    SagaStuck {
        /// The step whose compensation failed.
        step: String,
        /// The last error, as text.
        error: String,
    },
    /// An operator asked to try a stuck saga's compensation again.
    StuckRetried,
    /// The saga ended; no record follows.
    SagaFinished {
        /// How it ended.
        outcome: FinishedOutcome,
    },
}

/// A record as read back from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRecord {
    /// Position in the saga's log: 0 for [`RecordKind::SagaCreated`], then
    /// 1, 2, ... with no gaps.
    pub seq: u64,
    /// The lease epoch of the writer (see [`Lease`](super::Lease)).
    pub epoch: u64,
    /// When the log stored it (the backend's clock).
    pub at: SystemTime,
    /// What happened.
    pub kind: RecordKind,
}

/// Where a saga is, as its records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SagaState {
    /// Running its steps forward.
    Running,
    /// Running compensations, in reverse order.
    Compensating,
    /// A compensation ran out of attempts; needs an operator.
    Stuck,
    /// Finished: every step completed.
    Completed,
    /// Finished: compensated.
    Compensated,
    /// Finished: abandoned by an operator while stuck.
    Abandoned,
}

impl SagaState {
    /// Every state, in declaration order.
    pub const ALL: [SagaState; 6] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Stuck,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Abandoned,
    ];

    /// The state a saga is in after `record`, starting from `self`.
    ///
    /// Backends that keep a saga's state in a column update it with this
    /// function on every append, so that every backend agrees.
    pub fn after(self, record: &RecordKind) -> SagaState {
        match record {
            RecordKind::SagaCreated { .. } => SagaState::Running,
            RecordKind::StepFailed {
                will_retry: false, ..
            } => SagaState::Compensating,
            RecordKind::SagaStuck { .. } => SagaState::Stuck,
            RecordKind::StuckRetried => SagaState::Compensating,
            RecordKind::SagaFinished { outcome } => match outcome {
                FinishedOutcome::Completed => SagaState::Completed,
                FinishedOutcome::Compensated { .. } => SagaState::Compensated,
                FinishedOutcome::Abandoned => SagaState::Abandoned,
            },
            _ => self,
        }
    }

    /// `Completed`, `Compensated` or `Abandoned`: nothing more will happen.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Abandoned
        )
    }

    /// `Running` or `Compensating`: an executor should be driving it, so
    /// recovery claims it.
    pub fn is_active(self) -> bool {
        matches!(self, SagaState::Running | SagaState::Compensating)
    }

    /// The state's name as stored by SQL backends (`"running"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Stuck => "stuck",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Abandoned => "abandoned",
        }
    }

    /// The state named by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<SagaState> {
        SagaState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record split for a SQL table; see [`RecordKind::to_parts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordParts<'a> {
    /// The record's kind, e.g. `"step_completed"`.
    pub kind: &'static str,
    /// The other fields as a JSON object.
    pub body: String,
    /// The encoded input or output, for `saga_created` and `step_completed`.
    pub payload: Option<&'a [u8]>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    effect: Option<StepEffect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    will_retry: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
}

fn need<T>(value: Option<T>, kind: &str, field: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("`{kind}` record without `{field}`"))
}

impl RecordKind {
    /// The record's kind as stored: `"saga_created"`, `"step_started"`, ...
    pub fn name(&self) -> &'static str {
        match self {
            RecordKind::SagaCreated { .. } => "saga_created",
            RecordKind::StepStarted { .. } => "step_started",
            RecordKind::StepCompleted { .. } => "step_completed",
            RecordKind::StepFailed { .. } => "step_failed",
            RecordKind::CompensationStarted { .. } => "compensation_started",
            RecordKind::CompensationCompleted { .. } => "compensation_completed",
            RecordKind::CompensationFailed { .. } => "compensation_failed",
            RecordKind::SagaStuck { .. } => "saga_stuck",
            RecordKind::StuckRetried => "stuck_retried",
            RecordKind::SagaFinished { .. } => "saga_finished",
        }
    }

    /// The step the record is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            RecordKind::StepStarted { step, .. }
            | RecordKind::StepCompleted { step, .. }
            | RecordKind::StepFailed { step, .. }
            | RecordKind::CompensationStarted { step, .. }
            | RecordKind::CompensationCompleted { step }
            | RecordKind::CompensationFailed { step, .. }
            | RecordKind::SagaStuck { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Splits the record into a kind, a JSON body and a payload.
    pub fn to_parts(&self) -> RecordParts<'_> {
        let mut body = Body::default();
        let mut payload = None;
        match self {
            RecordKind::SagaCreated {
                definition,
                version,
                input,
            } => {
                body.definition = Some(definition.clone());
                body.version = Some(*version);
                payload = Some(input.as_slice());
            }
            RecordKind::StepStarted { step, attempt }
            | RecordKind::CompensationStarted { step, attempt } => {
                body.step = Some(step.clone());
                body.attempt = Some(*attempt);
            }
            RecordKind::StepCompleted { step, output } => {
                body.step = Some(step.clone());
                payload = Some(output.as_slice());
            }
            RecordKind::StepFailed {
                step,
                attempt,
                effect,
                error,
                will_retry,
            } => {
                body.step = Some(step.clone());
                body.attempt = Some(*attempt);
                body.effect = Some(*effect);
                body.error = Some(error.clone());
                body.will_retry = Some(*will_retry);
            }
            RecordKind::CompensationCompleted { step } => body.step = Some(step.clone()),
            RecordKind::CompensationFailed {
                step,
                attempt,
                error,
                will_retry,
            } => {
                body.step = Some(step.clone());
                body.attempt = Some(*attempt);
                body.error = Some(error.clone());
                body.will_retry = Some(*will_retry);
            }
            RecordKind::SagaStuck { step, error } => {
                body.step = Some(step.clone());
                body.error = Some(error.clone());
            }
            RecordKind::StuckRetried => {}
            RecordKind::SagaFinished { outcome } => match outcome {
                FinishedOutcome::Completed => body.outcome = Some("completed".into()),
                FinishedOutcome::Compensated { error } => {
                    body.outcome = Some("compensated".into());
                    body.error = Some(error.clone());
                }
                FinishedOutcome::Abandoned => body.outcome = Some("abandoned".into()),
            },
        }
        RecordParts {
            kind: self.name(),
            // A struct of strings, numbers and booleans always serializes.
            body: serde_json::to_string(&body).unwrap_or_default(),
            payload,
        }
    }

    /// Reads back a record split by [`to_parts`](Self::to_parts).
    ///
    /// Fails, with a sentence saying what is wrong, on an unknown kind, a
    /// body that is not the expected JSON, or a missing field or payload.
    pub fn from_parts(kind: &str, body: &str, payload: Option<Vec<u8>>) -> Result<Self, String> {
        let body: Body = serde_json::from_str(body)
            .map_err(|e| format!("`{kind}` record with an unreadable body: {e}"))?;
        let payload = |field: &str| need(payload.clone(), kind, field);
        Ok(match kind {
            "saga_created" => RecordKind::SagaCreated {
                definition: need(body.definition, kind, "definition")?,
                version: need(body.version, kind, "version")?,
                input: payload("input")?,
            },
            "step_started" => RecordKind::StepStarted {
                step: need(body.step, kind, "step")?,
                attempt: need(body.attempt, kind, "attempt")?,
            },
            "step_completed" => RecordKind::StepCompleted {
                step: need(body.step, kind, "step")?,
                output: payload("output")?,
            },
            "step_failed" => RecordKind::StepFailed {
                step: need(body.step, kind, "step")?,
                attempt: need(body.attempt, kind, "attempt")?,
                effect: need(body.effect, kind, "effect")?,
                error: need(body.error, kind, "error")?,
                will_retry: need(body.will_retry, kind, "will_retry")?,
            },
            "compensation_started" => RecordKind::CompensationStarted {
                step: need(body.step, kind, "step")?,
                attempt: need(body.attempt, kind, "attempt")?,
            },
            "compensation_completed" => RecordKind::CompensationCompleted {
                step: need(body.step, kind, "step")?,
            },
            "compensation_failed" => RecordKind::CompensationFailed {
                step: need(body.step, kind, "step")?,
                attempt: need(body.attempt, kind, "attempt")?,
                error: need(body.error, kind, "error")?,
                will_retry: need(body.will_retry, kind, "will_retry")?,
            },
            "saga_stuck" => RecordKind::SagaStuck {
                step: need(body.step, kind, "step")?,
                error: need(body.error, kind, "error")?,
            },
            "stuck_retried" => RecordKind::StuckRetried,
            "saga_finished" => {
                let outcome = match need(body.outcome, kind, "outcome")?.as_str() {
                    "completed" => FinishedOutcome::Completed,
                    "compensated" => FinishedOutcome::Compensated {
                        error: need(body.error, kind, "error")?,
                    },
                    "abandoned" => FinishedOutcome::Abandoned,
                    other => return Err(format!("`saga_finished` with unknown outcome {other:?}")),
                };
                RecordKind::SagaFinished { outcome }
            }
            other => return Err(format!("unknown record kind {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<RecordKind> {
        vec![
            RecordKind::SagaCreated {
                definition: "order".into(),
                version: 3,
                input: b"{}".to_vec(),
            },
            RecordKind::StepStarted {
                step: "pay".into(),
                attempt: 1,
            },
            RecordKind::StepCompleted {
                step: "pay".into(),
                output: vec![0, 255],
            },
            RecordKind::StepFailed {
                step: "ship".into(),
                attempt: 2,
                effect: StepEffect::Unknown,
                error: "timed out".into(),
                will_retry: false,
            },
            RecordKind::CompensationStarted {
                step: "pay".into(),
                attempt: 1,
            },
            RecordKind::CompensationCompleted { step: "pay".into() },
            RecordKind::CompensationFailed {
                step: "pay".into(),
                attempt: 4,
                error: "down".into(),
                will_retry: true,
            },
            RecordKind::SagaStuck {
                step: "pay".into(),
                error: "down".into(),
            },
            RecordKind::StuckRetried,
            RecordKind::SagaFinished {
                outcome: FinishedOutcome::Completed,
            },
            RecordKind::SagaFinished {
                outcome: FinishedOutcome::Compensated {
                    error: "no stock".into(),
                },
            },
            RecordKind::SagaFinished {
                outcome: FinishedOutcome::Abandoned,
            },
        ]
    }

    #[test]
    fn every_record_kind_round_trips_through_parts() {
        for record in every_kind() {
            let parts = record.to_parts();
            let back =
                RecordKind::from_parts(parts.kind, &parts.body, parts.payload.map(<[u8]>::to_vec));
            assert_eq!(back.as_ref(), Ok(&record), "{parts:?}");
        }
    }

    #[test]
    fn unreadable_parts_are_errors_not_guesses() {
        assert!(RecordKind::from_parts("step_started", "{\"step\":\"a\"}", None).is_err());
        assert!(RecordKind::from_parts("nonsense", "{}", None).is_err());
        assert!(RecordKind::from_parts("step_started", "not json", None).is_err());
        assert!(
            RecordKind::from_parts("saga_created", "{\"definition\":\"a\",\"version\":1}", None)
                .is_err()
        );
        assert!(RecordKind::from_parts("stuck_retried", "{\"surprise\":1}", None).is_err());
    }

    #[test]
    fn states_follow_the_records() {
        let mut state = SagaState::Running;
        for record in every_kind() {
            state = state.after(&record);
        }
        assert_eq!(state, SagaState::Abandoned);
        let failed_for_good = RecordKind::StepFailed {
            step: "a".into(),
            attempt: 1,
            effect: StepEffect::NoEffect,
            error: "no".into(),
            will_retry: false,
        };
        assert_eq!(
            SagaState::Running.after(&failed_for_good),
            SagaState::Compensating
        );
        for state in SagaState::ALL {
            assert_eq!(SagaState::from_name(state.as_str()), Some(state));
        }
    }
}
