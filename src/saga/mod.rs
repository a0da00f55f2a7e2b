//! Orchestrated sagas with a durable log and crash recovery.
//!
//! A saga is a business transaction spread over several services, each
//! with its own database: create an order, take the payment, reserve the
//! stock, confirm. There is no distributed transaction to roll back, so
//! each step has a *compensation* that undoes it, and when a step fails
//! the executor runs the compensations of the steps that may have taken
//! effect, in reverse order. A started saga always ends **completed** or
//! **compensated** — or, when a compensation keeps failing, **stuck**
//! and waiting for an operator — even if the process crashes in between:
//! every move is written to a [`SagaLog`] before and after it is made,
//! and [`SagaExecutor::recover`] resumes unfinished sagas from the log.
//!
//! ```
//! use std::sync::Arc;
//! use palisade::saga::{
//!     MemoryLog, SagaDefinition, SagaExecutor, SagaOutcome, Step, StepContext, StepError,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64, item: String, cents: u64 }
//!
//! /// Your service clients (gRPC channels, HTTP clients, ...).
//! struct Services;
//! impl Services {
//!     async fn charge(&self, key: &str, cents: u64) -> Result<String, std::io::Error> {
//!         Ok(format!("payment-{key}-{cents}"))
//!     }
//!     async fn refund(&self, _payment: &str) -> Result<(), std::io::Error> { Ok(()) }
//!     async fn reserve(&self, _key: &str, item: &str) -> Result<(), String> {
//!         if item == "unobtainium" { Err("out of stock".into()) } else { Ok(()) }
//!     }
//!     async fn release(&self, _key: &str) -> Result<(), std::io::Error> { Ok(()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let create_order = SagaDefinition::<Services>::builder("create-order", 1)
//!     .step(Step::new(
//!         "payment",
//!         |svc: Arc<Services>, cx: StepContext| async move {
//!             let order: Order = cx.input()?;
//!             // A timeout or a lost connection may have charged the card:
//!             // `Unknown` makes the saga refund it if it compensates.
//!             svc.charge(&cx.idempotency_key(), order.cents).await.map_err(StepError::unknown)
//!         },
//!         |svc, cx| async move {
//!             // Runs for an unknown outcome too: then there is no output.
//!             match cx.own_output::<String>()? {
//!                 Some(payment) => svc.refund(&payment).await.map_err(Into::into),
//!                 None => Ok::<_, palisade::BoxError>(()),
//!             }
//!         },
//!     ))
//!     .step(Step::new(
//!         "inventory",
//!         |svc: Arc<Services>, cx: StepContext| async move {
//!             let order: Order = cx.input()?;
//!             // "Out of stock" changed nothing: `NoEffect` is not compensated.
//!             svc.reserve(&cx.idempotency_key(), &order.item).await.map_err(StepError::no_effect)
//!         },
//!         |svc, cx| async move { svc.release(&cx.idempotency_key()).await },
//!     ))
//!     .build()?;
//!
//! let executor = SagaExecutor::builder(Services, MemoryLog::new()).build()?;
//! executor.register(&create_order);
//! executor.recover().await?; // resume what a previous process left unfinished
//!
//! let order = Order { id: 1, item: "book".into(), cents: 1200 };
//! let handle = executor.start(&create_order, &order).await?;
//! match handle.outcome().await? {
//!     SagaOutcome::Completed(output) => {
//!         assert!(output.get::<String>("payment")?.starts_with("payment-"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//!
//! let order = Order { id: 2, item: "unobtainium".into(), cents: 99 };
//! let handle = executor.start(&create_order, &order).await?;
//! match handle.outcome().await? {
//!     SagaOutcome::Compensated(failure) => {
//!         // The payment was refunded.
//!         assert_eq!((failure.step.as_str(), failure.error.as_str()), ("inventory", "out of stock"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Steps
//!
//! A step's action and compensation are async functions of your services
//! (`Arc<Ctx>`) and a [`StepContext`]: the saga's input, earlier steps'
//! outputs (serde types, encoded by the executor's [`Codec`], JSON by
//! default) and an idempotency key, `"<saga id>:<step>:action"` or
//! `"…:undo"`, the same on every attempt and after recovery — pass it to
//! your services so that a call repeated after a crash takes effect once.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | [`Step::retry`]`(backoff, n)` | 1 attempt | action attempts and the wait between them ([`Backoff`](crate::backoff::Backoff)) |
//! | [`Step::timeout`] | none | an attempt taking longer fails with an unknown outcome |
//! | [`Step::compensation_retry`]`(backoff, n)` | 5 attempts, default backoff | then the saga is stuck |
//! | [`Step::compensation_timeout`] | none | per compensation attempt |
//! | [`SagaDefinitionBuilder::parallel`] | — | a stage whose steps run concurrently |
//! | [`SagaDefinitionBuilder::pivot`] | — | after it completes, the saga only goes forward, retrying each later step until it succeeds |
//!
//! An action fails with [`StepError::NoEffect`] when it is known to have
//! changed nothing (not compensated) or [`StepError::Unknown`] when it may
//! have (compensated; timeouts and panics are unknown). Compensations must
//! therefore tolerate undoing what never happened.
//!
//! A step that panics has failed that attempt with an unknown outcome, as
//! a panicking activity does in Temporal: the attempt is retried per its
//! policy, then the saga compensates (a panicking action) or becomes stuck
//! (a panicking compensation). Should a driver itself die, it releases its
//! saga's lease so that recovery or a takeover resumes it, and its handle
//! returns [`SagaError::DriverPanicked`].
//!
//! # The executor
//!
//! | option | default | meaning |
//! |---|---|---|
//! | [`owner`](SagaExecutorBuilder::owner) | `palisade-<pid>` | lease owner name; a restart under the same name takes its sagas back at once |
//! | [`lease_ttl`](SagaExecutorBuilder::lease_ttl) | 30 s | lease length, renewed every third of it |
//! | [`takeover_interval`](SagaExecutorBuilder::takeover_interval) | off | adopt sagas whose lease expired (shared logs) |
//! | [`event_capacity`](SagaExecutorBuilder::event_capacity) | 1024 | events buffered per subscriber |
//! | [`codec`](SagaExecutorBuilder::codec) | [`JsonCodec`] | how inputs and outputs are stored |
//! | [`retention`](SagaExecutorBuilder::retention) | keep forever | delete finished sagas this long after they finished (checked every quarter of it, at most hourly) |
//!
//! When the log is unavailable (a database restart, a lost connection), the
//! saga's driver stops, gives its lease back, and takes the saga back after
//! a backoff (100 ms doubling to 10 s, with jitter), replaying what the log
//! recorded: an action whose completion was not recorded runs again, with
//! the same idempotency key. It keeps trying while the executor lives, so a
//! saga is never stranded by a transient failure; another executor may
//! take the saga over meanwhile, and the first then learns so
//! ([`SagaError::LeaseLost`]).
//!
//! Operators use [`SagaExecutor::status`], [`history`](SagaExecutor::history),
//! [`list`](SagaExecutor::list) (paged with a [`ListCursor`]),
//! [`retry_stuck`](SagaExecutor::retry_stuck),
//! [`abandon`](SagaExecutor::abandon) and
//! [`prune_finished`](SagaExecutor::prune_finished). `retry_stuck` and
//! `abandon` act on stuck sagas only: on any other (running here or
//! elsewhere, finished, or already being retried) they return
//! [`SagaError::NotStuck`] and leave it untouched. Every state change is a
//! `tracing` event inside `saga` and `saga_step` spans, a [`SagaEvent`]
//! ([`SagaExecutor::subscribe`]) and a counter in [`SagaMetrics`].
//!
//! # Logs
//!
//! [`MemoryLog`] keeps records in memory (tests, nothing durable);
//! `SqliteLog` (feature `sqlite`, on by default) keeps them in a SQLite
//! file in WAL mode, grouping concurrent appends into one transaction and
//! acknowledging each only after its commit; `PostgresLog` (feature
//! `postgres`) keeps them in PostgreSQL, where several executor processes
//! share them and take over each other's sagas when a lease expires. Each saga is owned through a
//! lease whose epoch every append carries, so an executor whose saga was
//! taken over can no longer write to it ([`LogError::Fenced`]). A log
//! written by another version of a definition
//! ([`SagaError::VersionMismatch`]) and a corrupt record
//! ([`LogError::Corrupt`], with the saga's id) are reported by
//! [`recover`](SagaExecutor::recover), never skipped.
//!
//! # Where palisade differs from the saga literature
//!
//! * **After the pivot, steps retry forever.** A step after a
//!   [pivot](SagaDefinitionBuilder::pivot) is retried until it completes,
//!   with its backoff capped at its `max_interval`; it never fails for
//!   good and the saga never becomes stuck there. A step that can never
//!   succeed keeps the saga running: watch
//!   [`SagaEventKind::StepFailed`] and [`SagaMetrics::step_failures`].
//! * **A pivot with an unknown outcome and no compensation is skipped.**
//!   When the pivot fails, the steps before it are compensated; the pivot
//!   itself is compensated only if it has a compensation. If it failed
//!   with [`StepError::Unknown`] (or timed out, or panicked) and has none,
//!   whatever it may have done stays done while earlier steps are undone.
//!   Give the pivot a compensation, or make its failures
//!   [`StepError::NoEffect`] when it is known to have changed nothing.
//! * **Parallel members are compensated one after another**, in reverse
//!   order of their declaration, not concurrently.
//! * **One version of a definition per name per executor.**
//!   [`register`](SagaExecutor::register) replaces a definition of the
//!   same name, so an executor cannot finish version 1 sagas while
//!   starting version 2 ones: recovery reports the old ones as
//!   [`SagaError::VersionMismatch`] and leaves them in the log. To
//!   migrate, register the new version under a new name (for example
//!   `create-order-v2`) next to the old one, start new sagas with it, and
//!   drop the old definition once [`list`](SagaExecutor::list) shows none
//!   of its sagas unfinished.
//! * **Backoff after recovery.** A resumed saga continues each attempt
//!   loop where its records left off: an attempt interrupted by the crash
//!   runs again at once under its own number (and idempotency key); the
//!   attempt count and failure count come from the log, so the delay
//!   after its next failure is the one that failure count calls for, not
//!   the first. A crash during the wait between two attempts skips the
//!   rest of that wait: the next attempt starts at once. Decorrelated
//!   jitter, which grows from the previous delay, starts its growth over.
//!   Independently, a driver stopped by an unavailable log takes its saga
//!   back after 100 ms, doubling to 10 s with full jitter
//!   ([`Backoff::default`](crate::backoff::Backoff)); that schedule is not
//!   reset while the driver lives.

mod codec;
mod context;
mod definition;
mod driver;
mod error;
mod event;
mod executor;
mod id;
pub mod log;
mod metrics;
mod outcome;
mod progress;
mod record;
mod recording;
mod unwind;

pub use self::codec::{Codec, CodecError, JsonCodec};
pub use self::context::{CallKind, StepContext};
pub use self::definition::{
    MAX_STEP_ATTEMPTS, SagaDefinition, SagaDefinitionBuilder, Step, StepError, StepTimedOut,
};
pub use self::error::SagaError;
pub use self::event::{SagaEvent, SagaEventKind, SagaMetrics, StepLatency};
pub use self::executor::{SagaExecutor, SagaExecutorBuilder};
pub use self::id::{InvalidSagaId, OwnerId, SagaId};
pub use self::log::{
    BoxFuture, ClaimedSaga, Lease, ListCursor, LogError, MemoryLog, NewSaga, SagaLog, SagaSummary,
};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::log::{
    MAX_SQLITE_BATCH, SqliteLog, SqliteLogConfig, SqliteLogConfigBuilder, SqliteSync,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::log::{
    POSTGRES_SCHEMA_VERSION, PostgresConnectError, PostgresLog, PostgresLogConfig,
    PostgresLogConfigBuilder, PostgresPoolStatus, PostgresSslMode,
};
pub use self::outcome::{Recovery, SagaFailure, SagaHandle, SagaOutcome, SagaOutput};
pub use self::record::{
    FinishedOutcome, LoggedRecord, RecordKind, RecordParts, SagaState, StepEffect,
};
