//! Orchestrated sagas with a durable log and crash recovery.

mod codec;
mod context;
mod definition;
mod error;
mod event;
mod executor;
mod id;
pub mod log;
mod progress;
mod record;

pub use self::codec::{Codec, CodecError, JsonCodec};
pub use self::context::{CallKind, StepContext};
pub use self::definition::{
    MAX_STEP_ATTEMPTS, SagaDefinition, SagaDefinitionBuilder, Step, StepError, StepTimedOut,
};
pub use self::error::SagaError;
pub use self::event::{SagaEvent, SagaEventKind, SagaMetrics, StepLatency};
pub use self::executor::{
    Recovery, SagaExecutor, SagaExecutorBuilder, SagaFailure, SagaHandle, SagaOutcome, SagaOutput,
};
pub use self::id::{InvalidSagaId, OwnerId, SagaId};
pub use self::log::{
    BoxFuture, ClaimedSaga, Lease, LogError, MemoryLog, NewSaga, SagaLog, SagaSummary,
};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::log::{
    MAX_SQLITE_BATCH, SqliteLog, SqliteLogConfig, SqliteLogConfigBuilder, SqliteSync,
};
pub use self::record::{
    FinishedOutcome, LoggedRecord, RecordKind, RecordParts, SagaState, StepEffect,
};
