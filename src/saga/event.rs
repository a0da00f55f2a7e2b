//! What a saga executor reports: events and a metrics snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::id::SagaId;
use super::record::{SagaState, StepEffect};

/// One thing that happened to a saga; delivered by
/// [`SagaExecutor::subscribe`](super::SagaExecutor::subscribe).
#[derive(Debug, Clone, PartialEq)]
pub struct SagaEvent {
    /// The saga.
    pub saga: SagaId,
    /// Its definition's name.
    pub definition: Arc<str>,
    /// What happened.
    pub kind: SagaEventKind,
}

/// The kinds of [`SagaEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SagaEventKind {
    /// The saga was started.
    Started,
    /// The saga was taken over from the log (recovery, `retry_stuck`) and
    /// is being driven again from `state`.
    Resumed {
        /// The state it was in.
        state: SagaState,
    },
    /// A step's action attempt started.
    StepStarted {
        /// The step.
        step: Arc<str>,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// A step's action succeeded.
    StepCompleted {
        /// The step.
        step: Arc<str>,
        /// How long the successful attempt took.
        elapsed: Duration,
    },
    /// A step's action attempt failed.
    StepFailed {
        /// The step.
        step: Arc<str>,
        /// The attempt.
        attempt: u32,
        /// Whether it may have had an effect.
        effect: StepEffect,
        /// Whether it will be tried again.
        will_retry: bool,
    },
    /// A compensation attempt started.
    CompensationStarted {
        /// The step.
        step: Arc<str>,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// A compensation succeeded.
    CompensationCompleted {
        /// The step.
        step: Arc<str>,
        /// How long the successful attempt took.
        elapsed: Duration,
    },
    /// A compensation attempt failed.
    CompensationFailed {
        /// The step.
        step: Arc<str>,
        /// The attempt.
        attempt: u32,
        /// Whether it will be tried again.
        will_retry: bool,
    },
    /// Every step completed.
    Completed,
    /// The saga was compensated.
    Compensated,
    /// A compensation ran out of attempts.
    Stuck {
        /// The step whose compensation failed.
        step: Arc<str>,
    },
    /// An operator abandoned the stuck saga.
    Abandoned,
    /// Another executor took the saga over (or the log refused this
    /// executor's lease): this executor stopped driving it.
    LeaseLost,
}

/// Latency of one step's successful actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepLatency {
    /// Successful actions timed.
    pub count: u64,
    /// Their total duration.
    pub total: Duration,
    /// The longest.
    pub max: Duration,
}

impl StepLatency {
    /// The mean duration, `None` before the first.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| self.total / u32::try_from(self.count).unwrap_or(u32::MAX))
    }
}

/// A point-in-time view of an executor, from
/// [`SagaExecutor::metrics`](super::SagaExecutor::metrics). Counters
/// count since the executor was built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaMetrics {
    /// Sagas started.
    pub started: u64,
    /// Sagas taken over from the log (recovery and `retry_stuck`).
    pub resumed: u64,
    /// Sagas completed.
    pub completed: u64,
    /// Sagas compensated.
    pub compensated: u64,
    /// Sagas that got stuck.
    pub stuck: u64,
    /// Stuck sagas abandoned.
    pub abandoned: u64,
    /// Sagas this executor stopped driving because its lease was lost.
    pub lease_lost: u64,
    /// Sagas being driven now.
    pub in_flight: u64,
    /// Step actions that succeeded.
    pub steps_completed: u64,
    /// Step action attempts that failed.
    pub step_failures: u64,
    /// Compensations that succeeded.
    pub compensations_completed: u64,
    /// Compensation attempts that failed.
    pub compensation_failures: u64,
    /// Latency of successful actions, per step name.
    pub step_latency: BTreeMap<String, StepLatency>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) started: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) compensated: AtomicU64,
    pub(crate) stuck: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) steps_completed: AtomicU64,
    pub(crate) step_failures: AtomicU64,
    pub(crate) compensations_completed: AtomicU64,
    pub(crate) compensation_failures: AtomicU64,
    pub(crate) latency: Mutex<BTreeMap<String, StepLatency>>,
    pub(crate) exported: super::metrics::Exported,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn record_latency(&self, step: &str, elapsed: Duration) {
        let mut latency = self.latency.lock();
        let entry = match latency.get_mut(step) {
            Some(entry) => entry,
            None => latency.entry(step.to_owned()).or_default(),
        };
        entry.count += 1;
        entry.total = entry.total.saturating_add(elapsed);
        entry.max = entry.max.max(elapsed);
    }

    pub(crate) fn snapshot(&self) -> SagaMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SagaMetrics {
            started: get(&self.started),
            resumed: get(&self.resumed),
            completed: get(&self.completed),
            compensated: get(&self.compensated),
            stuck: get(&self.stuck),
            abandoned: get(&self.abandoned),
            lease_lost: get(&self.lease_lost),
            in_flight: get(&self.in_flight),
            steps_completed: get(&self.steps_completed),
            step_failures: get(&self.step_failures),
            compensations_completed: get(&self.compensations_completed),
            compensation_failures: get(&self.compensation_failures),
            step_latency: self.latency.lock().clone(),
        }
    }
}
