//! Errors of the saga executor.

use super::codec::CodecError;
use super::id::SagaId;
use super::log::LogError;
use super::record::SagaState;

/// A saga could not be started, resumed or operated on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The log failed or refused.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The input could not be encoded.
    #[error("saga input: {0}")]
    Codec(#[from] CodecError),
    /// The log names a definition this executor does not know.
    #[error("saga {saga}: no definition named `{definition}` is registered")]
    UnknownDefinition {
        /// The saga.
        saga: SagaId,
        /// The definition named in its log.
        definition: String,
    },
    /// The log was written by another version of the definition.
    #[error(
        "saga {saga}: its log was written by `{definition}` version {logged}, \
         but version {registered} is registered"
    )]
    VersionMismatch {
        /// The saga.
        saga: SagaId,
        /// The definition.
        definition: String,
        /// The version in the log.
        logged: u32,
        /// The version registered with the executor.
        registered: u32,
    },
    /// The records do not fit the definition (a step it does not have,
    /// records in an impossible order).
    #[error("saga {saga}: log does not fit its definition: {detail}")]
    InconsistentLog {
        /// The saga.
        saga: SagaId,
        /// What does not fit.
        detail: String,
    },
    /// `retry_stuck` or `abandon` on a saga that is not stuck.
    #[error("saga {saga} is {state}, not stuck")]
    NotStuck {
        /// The saga.
        saga: SagaId,
        /// Its state.
        state: SagaState,
    },
    /// This executor lost the saga's lease to another one and stopped
    /// driving it; the new owner finishes it.
    #[error("saga {saga}: lease lost to another executor")]
    LeaseLost {
        /// The saga.
        saga: SagaId,
        /// The log's refusal.
        #[source]
        source: LogError,
    },
    /// The saga's driver panicked (a bug in the executor: a step's panic
    /// is a failed attempt). Its lease was released, so a
    /// [takeover](super::SagaExecutor::take_over_expired) or the next
    /// [recovery](super::SagaExecutor::recover) resumes it from the log.
    #[error("saga {saga}: its driver panicked: {message}")]
    DriverPanicked {
        /// The saga.
        saga: SagaId,
        /// The panic's message.
        message: String,
    },
    /// The executor was shut down (or dropped) before the saga finished;
    /// the saga resumes when an executor recovers it.
    #[error("saga {saga}: executor shut down before it finished")]
    Interrupted {
        /// The saga.
        saga: SagaId,
    },
}
