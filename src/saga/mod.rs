//! Orchestrated sagas with a durable log and crash recovery.
//!
//! (Work in progress: the log trait and records come first.)

mod id;
pub mod log;
mod record;

pub use self::id::{InvalidSagaId, OwnerId, SagaId};
pub use self::log::{
    BoxFuture, ClaimedSaga, Lease, LogError, MemoryLog, NewSaga, SagaLog, SagaSummary,
};
pub use self::record::{
    FinishedOutcome, LoggedRecord, RecordKind, RecordParts, SagaState, StepEffect,
};
