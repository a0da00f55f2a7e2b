//! What a step's action and compensation are told.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::codec::{Codec, CodecError, JsonCodec};
use super::id::SagaId;

/// Whether a call is a step's action or its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl CallKind {
    /// `"action"` or `"undo"`, as used in idempotency keys.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Action => "action",
            CallKind::Compensation => "undo",
        }
    }
}

/// The saga's data as seen by one action or compensation call.
pub struct StepContext<C = JsonCodec> {
    pub(crate) saga: SagaId,
    pub(crate) step: Arc<str>,
    pub(crate) kind: CallKind,
    pub(crate) attempt: u32,
    pub(crate) input: Arc<[u8]>,
    pub(crate) outputs: Arc<HashMap<String, Vec<u8>>>,
    pub(crate) codec: Arc<C>,
}

impl<C> fmt::Debug for StepContext<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("saga", &self.saga)
            .field("step", &self.step)
            .field("kind", &self.kind)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<C: Codec> StepContext<C> {
    /// The saga's input.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        self.codec.decode(&self.input)
    }

    /// The output of step `step`, which must have completed earlier in this
    /// saga (for a compensation: the output of any completed step, including
    /// its own if its action completed).
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, CodecError> {
        match self.outputs.get(step) {
            Some(bytes) => self.codec.decode(bytes),
            None => Err(CodecError::msg(format!(
                "step `{step}` has no output in saga {}",
                self.saga
            ))),
        }
    }

    /// This step's own output, if its action completed: `None` in the
    /// compensation of an action whose outcome is unknown.
    pub fn own_output<T: DeserializeOwned>(&self) -> Result<Option<T>, CodecError> {
        self.outputs
            .get(&*self.step)
            .map(|bytes| self.codec.decode(bytes))
            .transpose()
    }

    pub(crate) fn codec_handle(&self) -> Arc<C> {
        Arc::clone(&self.codec)
    }
}

impl<C> StepContext<C> {
    /// The saga's id.
    pub fn saga_id(&self) -> SagaId {
        self.saga
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// Whether this is the action or the compensation.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// The attempt, from 1. A call re-run after a crash keeps its attempt
    /// number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The key to de-duplicate this call with: `"<saga id>:<step>:action"`
    /// or `"<saga id>:<step>:undo"`. It is the same for every attempt and
    /// after recovery, so a service that remembers keys applies each action
    /// and each compensation at most once.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.saga, self.step, self.kind.as_str())
    }
}
