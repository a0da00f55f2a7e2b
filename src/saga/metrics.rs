//! The executor's handles into the `metrics` facade (see
//! [`crate::metrics`]), taken once when the executor is built. Without the
//! `metrics` feature the type is zero-sized and its methods are empty.

use std::time::Duration;

#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    started: ::metrics::Counter,
    resumed: ::metrics::Counter,
    running: ::metrics::Gauge,
    completed: ::metrics::Counter,
    compensated: ::metrics::Counter,
    abandoned: ::metrics::Counter,
    stuck: ::metrics::Counter,
    step_failures: ::metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Default for Exported {
    fn default() -> Self {
        let finished = |outcome: &'static str| ::metrics::counter!("palisade_saga_finished_total", "outcome" => outcome);
        let exported = Self {
            started: ::metrics::counter!("palisade_saga_started_total"),
            resumed: ::metrics::counter!("palisade_saga_resumed_total"),
            running: ::metrics::gauge!("palisade_saga_running"),
            completed: finished("completed"),
            compensated: finished("compensated"),
            abandoned: finished("abandoned"),
            stuck: ::metrics::counter!("palisade_saga_stuck_total"),
            step_failures: ::metrics::counter!("palisade_saga_step_failures_total"),
        };
        exported.running.set(0.0);
        exported
    }
}

#[cfg(feature = "metrics")]
impl Exported {
    pub(crate) fn on_started(&self) {
        self.started.increment(1);
    }

    pub(crate) fn on_resumed(&self) {
        self.resumed.increment(1);
    }

    /// A driver starts (`+1`) or stops (`-1`).
    pub(crate) fn on_running(&self, change: i8) {
        self.running.increment(f64::from(change));
    }

    /// A step's action succeeded after `elapsed` (the step name is a label:
    /// the handle is looked up per step, which costs far less than a step).
    pub(crate) fn on_step_completed(&self, step: &str, elapsed: Duration) {
        ::metrics::histogram!("palisade_saga_step_duration_seconds", "step" => step.to_owned())
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn on_step_failed(&self) {
        self.step_failures.increment(1);
    }

    pub(crate) fn on_stuck(&self) {
        self.stuck.increment(1);
    }

    pub(crate) fn on_completed(&self) {
        self.completed.increment(1);
    }

    pub(crate) fn on_compensated(&self) {
        self.compensated.increment(1);
    }

    pub(crate) fn on_abandoned(&self) {
        self.abandoned.increment(1);
    }
}

#[cfg(feature = "metrics")]
impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exported")
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Default)]
pub(crate) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(crate) fn on_started(&self) {}
    #[inline(always)]
    pub(crate) fn on_resumed(&self) {}
    #[inline(always)]
    pub(crate) fn on_running(&self, _change: i8) {}
    #[inline(always)]
    pub(crate) fn on_step_completed(&self, _step: &str, _elapsed: Duration) {}
    #[inline(always)]
    pub(crate) fn on_step_failed(&self) {}
    #[inline(always)]
    pub(crate) fn on_stuck(&self) {}
    #[inline(always)]
    pub(crate) fn on_completed(&self) {}
    #[inline(always)]
    pub(crate) fn on_compensated(&self) {}
    #[inline(always)]
    pub(crate) fn on_abandoned(&self) {}
}
