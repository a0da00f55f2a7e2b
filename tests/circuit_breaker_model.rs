//! Model check: random sequences of calls, outcomes, clock advances and
//! operator actions are driven through the real breaker and through a small
//! reference model written here from resilience4j's documented semantics.
//! After every step both must agree on the state, on admission, and on the
//! figures of the metrics snapshot.

use std::collections::VecDeque;
use std::time::Duration;

use palisade::circuit_breaker::{
    BreakDuration, CallPermit, CircuitBreaker, CircuitBreakerConfig, CircuitState, SlidingWindow,
};
use palisade::classify::Outcome;
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
struct Setup {
    window: SlidingWindow,
    minimum_calls: u32,
    failure_rate: f32,
    /// (threshold in ms, rate)
    slow: Option<(u64, f32)>,
    permitted: u32,
    wait_ms: u64,
    exponential: bool,
    max_wait_ms: Option<u64>,
    automatic: bool,
    leaked: bool,
    closed_after_max_wait: bool,
}

impl Setup {
    fn config(&self) -> CircuitBreakerConfig {
        let mut b = CircuitBreakerConfig::builder()
            .sliding_window(self.window)
            .minimum_number_of_calls(self.minimum_calls)
            .failure_rate_threshold(self.failure_rate)
            .permitted_number_of_calls_in_half_open_state(self.permitted)
            .wait_duration_in_open_state(Duration::from_millis(self.wait_ms))
            .automatic_transition_from_open_to_half_open(self.automatic);
        if let Some((threshold, rate)) = self.slow {
            b = b
                .slow_call_duration_threshold(Duration::from_millis(threshold))
                .slow_call_rate_threshold(rate);
        }
        if self.exponential {
            b = b.break_duration(BreakDuration::exponential(2.0, Duration::from_secs(10)));
        }
        if let Some(max_wait) = self.max_wait_ms {
            b = b.max_wait_duration_in_half_open_state(Duration::from_millis(max_wait));
        }
        if self.closed_after_max_wait {
            b = b.transition_to_state_after_wait_duration(CircuitState::Closed);
        }
        b.build().expect("generated configs are valid")
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Complete the in-flight call at this index (modulo their number).
    Complete(usize, u8),
    Cancel(usize),
    AdvanceMs(u64),
    Manual(u8),
}

fn setup() -> impl Strategy<Value = Setup> {
    let window = prop_oneof![
        (1u32..=6).prop_map(SlidingWindow::count),
        (1u32..=4).prop_map(SlidingWindow::time),
        (1u32..=4).prop_map(SlidingWindow::consecutive_failures),
    ];
    (
        window,
        1u32..=6,
        prop::sample::select(vec![25.0f32, 50.0, 60.0, 100.0]),
        prop::option::of((
            prop::sample::select(vec![500u64, 1000]),
            prop::sample::select(vec![50.0f32, 100.0]),
        )),
        1u32..=3,
        prop::sample::select(vec![1000u64, 3000]),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![2000u64, 4000])),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                window,
                minimum_calls,
                failure_rate,
                slow,
                permitted,
                wait_ms,
                exponential,
                max_wait_ms,
                automatic,
                leaked,
                closed_after_max_wait,
            )| {
                Setup {
                    window,
                    minimum_calls,
                    failure_rate,
                    slow,
                    permitted,
                    wait_ms,
                    exponential,
                    max_wait_ms,
                    automatic,
                    leaked,
                    closed_after_max_wait,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), 0u8..3).prop_map(|(i, o)| Op::Complete(i, o)),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => prop::sample::select(vec![0u64, 1, 250, 499, 500, 501, 999, 1000, 1001, 2000, 3500])
            .prop_map(Op::AdvanceMs),
        1 => (0u8..7).prop_map(Op::Manual),
    ]
}

fn outcome(code: u8) -> Outcome {
    match code {
        0 => Outcome::Success,
        1 => Outcome::Failure { retryable: true },
        _ => Outcome::Ignored,
    }
}

// ---- the reference model ----------------------------------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    total: u64,
    failed: u64,
    slow: u64,
}

#[derive(Debug)]
struct ModelCall {
    epoch: u64,
    state: CircuitState,
    trial: bool,
    started: u64,
}

#[derive(Debug)]
struct Model {
    s: Setup,
    now: u64,
    state: CircuitState,
    epoch: u64,
    /// Count window: the last N (failed, slow).
    count_window: VecDeque<(bool, bool)>,
    /// Time window: (second, failed, slow) of every call since the last reset.
    time_window: Vec<(u64, bool, bool)>,
    consecutive: u32,
    trial: Counts,
    trial_permits: u32,
    open_until: u64,
    half_open_deadline: Option<u64>,
    trips: u32,
    not_permitted: u64,
    /// While OPEN: the figures of the window that sent it there.
    tripped_by: Counts,
}

impl Model {
    fn new(s: Setup) -> Self {
        Self {
            s,
            now: 0,
            state: CircuitState::Closed,
            epoch: 0,
            count_window: VecDeque::new(),
            time_window: Vec::new(),
            consecutive: 0,
            trial: Counts::default(),
            trial_permits: 0,
            open_until: 0,
            half_open_deadline: None,
            trips: 0,
            not_permitted: 0,
            tripped_by: Counts::default(),
        }
    }

    fn transition(&mut self, to: CircuitState) {
        self.epoch += 1;
        // resilience4j counts rejections per state; OPEN shares the metrics
        // of the state that sent it there.
        if to != CircuitState::Open {
            self.not_permitted = 0;
        }
        match to {
            CircuitState::Closed | CircuitState::MetricsOnly => {
                self.count_window.clear();
                self.time_window.clear();
                self.consecutive = 0;
                if to == CircuitState::Closed {
                    self.trips = 0;
                }
            }
            CircuitState::Open => {
                // As resilience4j's OpenState, which keeps the metrics of
                // the state it came from: the CLOSED (or METRICS_ONLY)
                // window, or the HALF_OPEN trial.
                self.tripped_by = match self.state {
                    CircuitState::HalfOpen => self.trial,
                    CircuitState::Closed | CircuitState::MetricsOnly => self.window_counts(),
                    CircuitState::Open => self.tripped_by,
                    CircuitState::Disabled | CircuitState::ForcedOpen => Counts::default(),
                };
                self.trips += 1;
                let base = self.s.wait_ms * MS;
                let wait = if self.s.exponential {
                    (base << (self.trips - 1).min(20)).min(10 * SEC)
                } else {
                    base
                };
                self.open_until = self.now + wait;
            }
            CircuitState::HalfOpen => {
                self.trial = Counts::default();
                self.trial_permits = self.s.permitted;
                self.half_open_deadline = self.s.max_wait_ms.map(|m| self.now + m * MS);
            }
            CircuitState::Disabled | CircuitState::ForcedOpen => {}
        }
        self.state = to;
    }

    /// Timers that are due fire (the real breaker runs them on the runtime).
    fn fire_timers(&mut self) {
        loop {
            if self.s.automatic && self.state == CircuitState::Open && self.now >= self.open_until {
                self.transition(CircuitState::HalfOpen);
            } else if self.state == CircuitState::HalfOpen
                && self.half_open_deadline.is_some_and(|d| self.now >= d)
            {
                self.transition(self.after_max_wait());
            } else {
                return;
            }
        }
    }

    fn acquire(&mut self) -> Option<ModelCall> {
        loop {
            match self.state {
                CircuitState::Closed | CircuitState::MetricsOnly | CircuitState::Disabled => {
                    return Some(self.call(false));
                }
                CircuitState::ForcedOpen => break,
                CircuitState::Open => {
                    if self.now < self.open_until {
                        break;
                    }
                    self.transition(CircuitState::HalfOpen);
                }
                CircuitState::HalfOpen => {
                    if self.half_open_deadline.is_some_and(|d| self.now >= d) {
                        self.transition(self.after_max_wait());
                    } else if self.trial_permits > 0 {
                        self.trial_permits -= 1;
                        return Some(self.call(true));
                    } else {
                        break;
                    }
                }
            }
        }
        self.not_permitted += 1;
        None
    }

    fn after_max_wait(&self) -> CircuitState {
        if self.s.closed_after_max_wait {
            CircuitState::Closed
        } else {
            CircuitState::Open
        }
    }

    fn call(&self, trial: bool) -> ModelCall {
        ModelCall {
            epoch: self.epoch,
            state: self.state,
            trial,
            started: self.now,
        }
    }

    fn release(&mut self, call: &ModelCall) {
        if call.trial && call.epoch == self.epoch {
            self.trial_permits += 1;
        }
    }

    fn complete(&mut self, call: ModelCall, outcome: Outcome) {
        if call.state == CircuitState::Disabled {
            return;
        }
        let failed = match outcome {
            Outcome::Ignored => return self.release(&call),
            other => other.is_failure(),
        };
        let slow = self
            .s
            .slow
            .is_some_and(|(threshold, _)| self.now - call.started > threshold * MS);
        if call.epoch != self.epoch {
            return;
        }
        if call.trial {
            self.trial.total += 1;
            self.trial.failed += u64::from(failed);
            self.trial.slow += u64::from(slow);
            if self.trial.total >= u64::from(self.s.permitted) {
                let to = if self.trips_on(self.trial, u64::from(self.s.permitted)) {
                    CircuitState::Open
                } else {
                    CircuitState::Closed
                };
                self.transition(to);
            }
            return;
        }
        let trip = match self.s.window {
            SlidingWindow::Count { size } => {
                if self.count_window.len() == size as usize {
                    self.count_window.pop_front();
                }
                self.count_window.push_back((failed, slow));
                let minimum = u64::from(self.s.minimum_calls.min(size));
                self.trips_on(self.window_counts(), minimum)
            }
            SlidingWindow::Time { .. } => {
                self.time_window.push((self.now / SEC, failed, slow));
                self.trips_on(self.window_counts(), u64::from(self.s.minimum_calls))
            }
            SlidingWindow::ConsecutiveFailures { threshold } => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                self.consecutive >= threshold
            }
        };
        if trip && self.state == CircuitState::Closed {
            self.transition(CircuitState::Open);
        }
    }

    fn trips_on(&self, c: Counts, minimum: u64) -> bool {
        if c.total == 0 || c.total < minimum {
            return false;
        }
        let rate = |part: u64| part as f32 * 100.0 / c.total as f32;
        (c.failed > 0 && rate(c.failed) >= self.s.failure_rate)
            || self
                .s
                .slow
                .is_some_and(|(_, threshold)| c.slow > 0 && rate(c.slow) >= threshold)
    }

    fn window_counts(&self) -> Counts {
        let mut c = Counts::default();
        let mut add = |failed: bool, slow: bool| {
            c.total += 1;
            c.failed += u64::from(failed);
            c.slow += u64::from(slow);
        };
        match self.s.window {
            SlidingWindow::Count { .. } => {
                self.count_window.iter().for_each(|&(f, s)| add(f, s));
            }
            SlidingWindow::Time { seconds } => {
                let now = self.now / SEC;
                for &(second, f, s) in &self.time_window {
                    if second + u64::from(seconds) > now {
                        add(f, s);
                    }
                }
            }
            SlidingWindow::ConsecutiveFailures { .. } => {
                c.total = u64::from(self.consecutive);
                c.failed = u64::from(self.consecutive);
            }
        }
        c
    }

    /// Returns whether the move is accepted: resilience4j refuses CLOSED to
    /// HALF_OPEN and METRICS_ONLY to OPEN or HALF_OPEN.
    fn manual(&mut self, code: u8) -> bool {
        let to = match code {
            0 => {
                self.transition(CircuitState::Closed); // reset
                return true;
            }
            1 => CircuitState::Closed,
            2 => CircuitState::Open,
            3 => CircuitState::HalfOpen,
            4 => CircuitState::Disabled,
            5 => CircuitState::ForcedOpen,
            _ => CircuitState::MetricsOnly,
        };
        let refused = matches!(
            (self.state, to),
            (CircuitState::Closed, CircuitState::HalfOpen)
                | (
                    CircuitState::MetricsOnly,
                    CircuitState::Open | CircuitState::HalfOpen
                )
        );
        if refused {
            return false;
        }
        if self.state != to {
            self.transition(to);
        }
        true
    }
}

/// Returns whether the breaker accepted the move.
fn apply_manual(breaker: &CircuitBreaker, code: u8) -> bool {
    match code {
        0 => breaker.reset(),
        1 => breaker.transition_to_closed(),
        2 => return breaker.transition_to_open().is_ok(),
        3 => return breaker.transition_to_half_open().is_ok(),
        4 => breaker.transition_to_disabled(),
        5 => breaker.transition_to_forced_open(),
        _ => breaker.transition_to_metrics_only(),
    }
    true
}

async fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Half the cases use a leaked breaker, which must behave identically.
    let breaker = if setup.leaked {
        CircuitBreaker::new_static("model", setup.config())
    } else {
        CircuitBreaker::new("model", setup.config())
    };
    let mut model = Model::new(setup);
    let mut in_flight: Vec<(CallPermit, ModelCall)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op.clone() {
            Op::Acquire => {
                let real = breaker.try_acquire();
                let expected = model.acquire();
                prop_assert_eq!(
                    real.is_ok(),
                    expected.is_some(),
                    "step {}: admission of {:?}",
                    step,
                    op
                );
                if let (Ok(permit), Some(call)) = (real, expected) {
                    prop_assert_eq!(permit.admitted_in(), call.state);
                    in_flight.push((permit, call));
                }
            }
            Op::Complete(index, code) if !in_flight.is_empty() => {
                let (permit, call) = in_flight.remove(index % in_flight.len());
                permit.record(outcome(code));
                model.complete(call, outcome(code));
            }
            Op::Cancel(index) if !in_flight.is_empty() => {
                let (permit, call) = in_flight.remove(index % in_flight.len());
                drop(permit);
                model.release(&call);
            }
            Op::Complete(..) | Op::Cancel(_) => {}
            Op::AdvanceMs(ms) => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
                model.now += ms * MS;
                model.fire_timers();
            }
            Op::Manual(code) => {
                let accepted = apply_manual(&breaker, code);
                prop_assert_eq!(accepted, model.manual(code), "step {}: {:?}", step, op);
            }
        }
        let m = breaker.metrics();
        prop_assert_eq!(m.state, model.state, "step {}: state after {:?}", step, op);
        let expected = match model.state {
            CircuitState::HalfOpen => model.trial,
            CircuitState::Open => model.tripped_by,
            _ => model.window_counts(),
        };
        let actual = Counts {
            total: m.buffered_calls,
            failed: m.failed_calls,
            slow: m.slow_calls,
        };
        prop_assert_eq!(actual, expected, "step {}: window after {:?}", step, op);
        prop_assert_eq!(
            m.not_permitted_calls,
            model.not_permitted,
            "step {}: rejections",
            step
        );
        if model.state == CircuitState::HalfOpen {
            prop_assert_eq!(
                m.trial_permits_available,
                Some(model.trial_permits),
                "step {}",
                step
            );
        }
        if model.state == CircuitState::Open {
            let left = Duration::from_nanos(model.open_until.saturating_sub(model.now));
            prop_assert_eq!(m.retry_in, Some(left), "step {}: open wait", step);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn breaker_agrees_with_reference_model(setup in setup(), ops in prop::collection::vec(op(), 1..120)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run(setup, ops))?;
    }
}
