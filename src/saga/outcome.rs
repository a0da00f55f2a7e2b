//! How a saga ended, and the handle to wait for it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::codec::{Codec, CodecError, JsonCodec};
use super::error::SagaError;
use super::id::SagaId;
use super::record::SagaState;

/// How a saga ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum SagaOutcome<C = JsonCodec> {
    /// Every step completed; their outputs.
    Completed(SagaOutput<C>),
    /// A step failed and every step that may have had an effect was
    /// compensated.
    Compensated(SagaFailure),
    /// A compensation ran out of attempts; an operator must
    /// [`retry_stuck`](super::SagaExecutor::retry_stuck) or
    /// [`abandon`](super::SagaExecutor::abandon) the saga.
    Stuck(SagaFailure),
}

impl<C> SagaOutcome<C> {
    /// The saga's state for this outcome.
    pub fn state(&self) -> SagaState {
        match self {
            SagaOutcome::Completed(_) => SagaState::Completed,
            SagaOutcome::Compensated(_) => SagaState::Compensated,
            SagaOutcome::Stuck(_) => SagaState::Stuck,
        }
    }
}

/// The step and error behind a compensated or stuck saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaFailure {
    /// The step whose action (compensated) or compensation (stuck) failed.
    pub step: String,
    /// Its error, as text.
    pub error: String,
}

/// The outputs of a completed saga's steps.
pub struct SagaOutput<C = JsonCodec> {
    pub(crate) outputs: HashMap<String, Vec<u8>>,
    pub(crate) codec: Arc<C>,
}

impl<C> fmt::Debug for SagaOutput<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<&String> = self.outputs.keys().collect();
        steps.sort();
        f.debug_struct("SagaOutput").field("steps", &steps).finish()
    }
}

impl<C: Codec> SagaOutput<C> {
    /// The output of `step`, decoded.
    pub fn get<T: serde::de::DeserializeOwned>(&self, step: &str) -> Result<T, CodecError> {
        match self.outputs.get(step) {
            Some(bytes) => self.codec.decode(bytes),
            None => Err(CodecError::msg(format!("step `{step}` has no output"))),
        }
    }

    /// The encoded output of `step`.
    pub fn raw(&self, step: &str) -> Option<&[u8]> {
        self.outputs.get(step).map(Vec::as_slice)
    }
}

/// A running saga; await its outcome with [`outcome`](Self::outcome).
///
/// Dropping the handle does not stop the saga.
pub struct SagaHandle<C = JsonCodec> {
    pub(crate) id: SagaId,
    pub(crate) result: oneshot::Receiver<Result<SagaOutcome<C>, SagaError>>,
}

impl<C> fmt::Debug for SagaHandle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaHandle").field("id", &self.id).finish()
    }
}

impl<C> SagaHandle<C> {
    /// The saga's id.
    pub fn id(&self) -> SagaId {
        self.id
    }

    /// Waits for the saga to end. [`SagaError::Interrupted`] if the
    /// executor was shut down first, [`SagaError::LeaseLost`] if another
    /// executor took it over, [`SagaError::Log`] if the log failed (the
    /// saga is resumed by the next recovery).
    pub async fn outcome(self) -> Result<SagaOutcome<C>, SagaError> {
        let id = self.id;
        self.result
            .await
            .unwrap_or(Err(SagaError::Interrupted { saga: id }))
    }
}

/// What [`SagaExecutor::recover`](super::SagaExecutor::recover) found.
#[derive(Debug)]
pub struct Recovery<C = JsonCodec> {
    /// The sagas taken over and being driven again.
    pub resumed: Vec<SagaHandle<C>>,
    /// The sagas that could not be resumed, with why (a corrupt record, a
    /// version mismatch, an unknown definition). They stay in the log.
    pub failed: Vec<(SagaId, SagaError)>,
}
