//! Model check of the balancer's outlier ejection: random sequences of
//! calls (that succeed or fail on command, at once or held in flight and
//! finished later or dropped) and clock advances are driven through a real
//! [`Balance`] over a [`StaticRegistry`] with [`Picker::RoundRobin`], and
//! through a small reference model written here from the documented
//! semantics of [`OutlierDetection`]. After every step both must agree on
//! which instance each call reached, on the metrics snapshot (ejected,
//! available, and per instance the consecutive failures, ejection state and
//! count, picks and calls in flight) and on the events published.
//!
//! Semantics the model follows, from the docs and the implementation:
//! * A success resets the instance's consecutive failures; a failure adds
//!   one. When the count reaches `consecutive_failures` and the instance is
//!   not ejected, it is ejected unless one more ejection would leave more
//!   than `max_ejection_percent` of the instances ejected (strict, rounded
//!   down). A skipped ejection resets the count, so that a fresh run of
//!   failures is needed before trying again (`EjectionSkipped`).
//! * An ejection with ejection count `n` (this one included) lasts
//!   `base_ejection_time × n`, capped at `max_ejection_time`, counted from
//!   the ejection. The ejection count goes up by one per ejection and down
//!   by one for every full `base_ejection_time` since the instance last
//!   returned (counted from when its ejection was due to end); the metrics
//!   show it decayed to the snapshot's time. The consecutive count is not reset
//!   by the ejection itself (the snapshot shows the failures that ejected
//!   it) but when the instance returns.
//! * Calls in flight on an instance when it is ejected still complete and
//!   are recorded: a failure adds to the count (with no further ejection
//!   while ejected), a success resets it; either way the return resets it.
//! * Round robin walks the available (not ejected) instances in id order
//!   with one shared position, advanced only when there are two or more to
//!   choose from; with none, the call fails with `NoHealthyInstance`
//!   without reaching any instance.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{
    Balance, BalanceConfig, BalanceEventKind, Instance, NoHealthyInstance, OutlierDetection,
    Picker, StaticRegistry, make_fn,
};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tower::{Service, ServiceExt, service_fn};

#[derive(Debug, Clone)]
struct Setup {
    instances: usize,
    consecutive_failures: u32,
    base_ms: u64,
    max_ms: u64,
    max_ejection_percent: u8,
}

impl Setup {
    fn outliers(&self) -> OutlierDetection {
        OutlierDetection::builder()
            .consecutive_failures(self.consecutive_failures)
            .base_ejection_time(Duration::from_millis(self.base_ms))
            .max_ejection_time(Duration::from_millis(self.max_ms))
            .max_ejection_percent(self.max_ejection_percent)
            .build()
            .expect("generated outlier detection is valid")
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A call that completes at once, failing or not.
    Call {
        fail: bool,
    },
    /// A call held in flight until finished or dropped.
    Start,
    /// Finish the held call at this index (modulo their number).
    Finish(usize, bool),
    /// Drop the held call at this index (modulo their number).
    Drop(usize),
    AdvanceMs(u64),
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..=6,
        1u32..=4,
        prop::sample::select(vec![10u64, 50, 100, 250]),
        prop::sample::select(vec![1u64, 2, 3, 4]),
        prop::sample::select(vec![0u64, 30]),
        prop_oneof![
            1u8..=100,
            prop::sample::select(vec![1u8, 16, 17, 20, 25, 33, 34, 50, 66, 67, 100]),
        ],
    )
        .prop_map(|(instances, k, base_ms, times, extra, percent)| Setup {
            instances,
            consecutive_failures: k,
            base_ms,
            max_ms: base_ms * times + extra,
            max_ejection_percent: percent,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => any::<bool>().prop_map(|fail| Op::Call { fail }),
        2 => Just(Op::Start),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, fail)| Op::Finish(i, fail)),
        1 => any::<usize>().prop_map(Op::Drop),
        3 => prop::sample::select(vec![1u64, 5, 10, 29, 30, 50, 99, 100, 101, 250, 500, 1000])
            .prop_map(Op::AdvanceMs),
    ]
}

// ---- the reference model ----------------------------------------------------

#[derive(Debug, Clone, Default)]
struct ModelInstance {
    consecutive: u32,
    /// When the ejection ends, in ms since the start.
    ejected_until: Option<u64>,
    /// The ejection count when the last ejection started.
    ejections: u32,
    /// When the last ejection ended, in ms since the start.
    returned_at: Option<u64>,
    picks: u64,
    in_flight: usize,
}

#[derive(Debug)]
struct Model {
    s: Setup,
    now_ms: u64,
    /// The shared round-robin position.
    next: usize,
    instances: Vec<ModelInstance>,
    /// Events of the current step, as `"<id> <kind:?>"`.
    events: Vec<String>,
}

fn id(index: usize) -> String {
    format!("i{index}")
}

impl Model {
    fn new(s: Setup) -> Self {
        Self {
            instances: vec![ModelInstance::default(); s.instances],
            s,
            now_ms: 0,
            next: 0,
            events: Vec::new(),
        }
    }

    fn ejected(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.ejected_until.is_some())
            .count()
    }

    /// The instance a call goes to, counted as picked and in flight.
    fn pick(&mut self) -> Option<usize> {
        let available: Vec<usize> = (0..self.instances.len())
            .filter(|&i| self.instances[i].ejected_until.is_none())
            .collect();
        let index = match available.len() {
            0 => return None,
            1 => available[0],
            n => {
                let at = self.next % n;
                self.next = self.next.wrapping_add(1);
                available[at]
            }
        };
        self.instances[index].picks += 1;
        self.instances[index].in_flight += 1;
        Some(index)
    }

    /// Instance `index`'s ejection count now, decayed.
    fn ejections(&self, index: usize) -> u32 {
        let i = &self.instances[index];
        match i.returned_at {
            None => i.ejections,
            Some(at) => {
                let decayed = (self.now_ms - at) / self.s.base_ms;
                i.ejections
                    .saturating_sub(u32::try_from(decayed).unwrap_or(u32::MAX))
            }
        }
    }

    fn drop_call(&mut self, index: usize) {
        self.instances[index].in_flight -= 1;
    }

    fn complete(&mut self, index: usize, failed: bool) {
        self.drop_call(index);
        if !failed {
            self.instances[index].consecutive = 0;
            return;
        }
        self.instances[index].consecutive += 1;
        let i = &self.instances[index];
        if i.consecutive < self.s.consecutive_failures || i.ejected_until.is_some() {
            return;
        }
        let ejected = self.ejected();
        let n = self.instances.len();
        if (ejected + 1) * 100 > usize::from(self.s.max_ejection_percent) * n {
            self.instances[index].consecutive = 0;
            self.events.push(format!(
                "{} {:?}",
                id(index),
                BalanceEventKind::EjectionSkipped {
                    ejected,
                    instances: n
                }
            ));
            return;
        }
        let ejections = self.ejections(index) + 1;
        let i = &mut self.instances[index];
        i.ejections = ejections;
        i.returned_at = None;
        let ms = (self.s.base_ms * u64::from(i.ejections)).min(self.s.max_ms);
        i.ejected_until = Some(self.now_ms + ms);
        self.events.push(format!(
            "{} {:?}",
            id(index),
            BalanceEventKind::Ejected {
                duration: Duration::from_millis(ms),
                ejections: i.ejections
            }
        ));
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for (index, i) in self.instances.iter_mut().enumerate() {
            if let Some(until) = i.ejected_until.filter(|&until| until <= self.now_ms) {
                i.ejected_until = None;
                i.returned_at = Some(until);
                i.consecutive = 0;
                self.events
                    .push(format!("{} {:?}", id(index), BalanceEventKind::Returned));
            }
        }
    }
}

// ---- the system under test --------------------------------------------------

/// A request: fail or not at once, or when told through the channel.
enum Cmd {
    Now(bool),
    Held(oneshot::Receiver<bool>),
}

type Held = (
    Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>,
    oneshot::Sender<bool>,
    usize,
);

/// Which instance answered: its id, from the response or the error.
fn answered_by(result: &Result<String, BoxError>) -> Result<(String, bool), String> {
    match result {
        Ok(id) => Ok((id.clone(), false)),
        Err(e) if e.downcast_ref::<NoHealthyInstance>().is_some() => {
            Err("NoHealthyInstance".into())
        }
        Err(e) => match e.to_string().strip_prefix("fail:") {
            Some(id) => Ok((id.to_owned(), true)),
            None => Err(format!("unexpected error {e}")),
        },
    }
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let registry = StaticRegistry::new((0..setup.instances).map(|i| {
        Instance::builder("model", id(i), format!("10.0.0.{}:80", i + 1))
            .build()
            .expect("valid instance")
    }));
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(service_fn(move |cmd: Cmd| {
            let id = id.clone();
            async move {
                let fail = match cmd {
                    Cmd::Now(fail) => fail,
                    Cmd::Held(told) => told.await.unwrap_or(true),
                };
                if fail {
                    Err::<String, BoxError>(format!("fail:{id}").into())
                } else {
                    Ok(id)
                }
            }
        }))
    });
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(setup.outliers())
        .build()
        .expect("valid balancer configuration");
    let mut balance = Balance::new("model", &registry, make, config).expect("valid service name");
    let mut events = balance.subscribe();
    // Let the watch task add every instance.
    for _ in 0..100 {
        if balance.metrics().instances == setup.instances {
            break;
        }
        tokio::task::yield_now().await;
    }
    prop_assert_eq!(balance.metrics().instances, setup.instances);
    events.drain();

    let percent = usize::from(setup.max_ejection_percent);
    let mut model = Model::new(setup);
    let mut held: Vec<Held> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Call { fail } => {
                let expected = model.pick();
                let result = balance
                    .ready()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .call(Cmd::Now(fail))
                    .await;
                let reached = answered_by(&result);
                match expected {
                    Some(index) => {
                        prop_assert_eq!(reached, Ok((id(index), fail)), "step {}", step);
                        model.complete(index, fail);
                    }
                    None => {
                        prop_assert_eq!(reached, Err("NoHealthyInstance".into()), "step {}", step);
                    }
                }
            }
            Op::Start => {
                let expected = model.pick();
                let (tell, told) = oneshot::channel();
                let future = balance
                    .ready()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .call(Cmd::Held(told));
                match expected {
                    Some(index) => held.push((Box::pin(future), tell, index)),
                    None => {
                        let reached = answered_by(&future.await);
                        prop_assert_eq!(reached, Err("NoHealthyInstance".into()), "step {}", step);
                    }
                }
            }
            Op::Finish(at, fail) if !held.is_empty() => {
                let (future, tell, index) = held.remove(at % held.len());
                tell.send(fail).expect("the call is waiting");
                let reached = answered_by(&future.await);
                prop_assert_eq!(reached, Ok((id(index), fail)), "step {}", step);
                model.complete(index, fail);
            }
            Op::Drop(at) if !held.is_empty() => {
                let (future, _, index) = held.remove(at % held.len());
                drop(future);
                model.drop_call(index);
            }
            Op::Finish(..) | Op::Drop(_) => {}
            Op::AdvanceMs(ms) => {
                // No yield between the last call and the advance: an
                // ejection lasts from when it happened, not from when its
                // timer task first ran.
                tokio::time::advance(Duration::from_millis(ms)).await;
                settle().await;
                model.advance(ms);
            }
        }

        let m = balance.metrics();
        prop_assert!(
            m.ejected * 100 <= percent * m.instances,
            "step {}: {} of {} ejected, max {}%",
            step,
            m.ejected,
            m.instances,
            percent
        );
        prop_assert_eq!(m.instances, model.instances.len(), "step {}", step);
        prop_assert_eq!(m.ejected, model.ejected(), "step {}: ejected", step);
        prop_assert_eq!(
            m.available,
            model.instances.len() - model.ejected(),
            "step {}: available",
            step
        );
        for (index, (real, expected)) in m.endpoints.iter().zip(&model.instances).enumerate() {
            prop_assert_eq!(real.id.to_string(), id(index));
            prop_assert_eq!(
                (
                    real.consecutive_failures,
                    real.ejected,
                    real.ejections,
                    real.picks,
                    real.in_flight
                ),
                (
                    expected.consecutive,
                    expected.ejected_until.is_some(),
                    model.ejections(index),
                    expected.picks,
                    expected.in_flight
                ),
                "step {}: instance {} (consecutive, ejected, ejections, picks, in flight)",
                step,
                index
            );
        }
        let mut real: Vec<String> = events
            .drain()
            .into_iter()
            .map(|e| format!("{} {:?}", e.id, e.kind))
            .collect();
        let mut expected = std::mem::take(&mut model.events);
        real.sort();
        expected.sort();
        prop_assert_eq!(real, expected, "step {}: events", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn outlier_ejection_agrees_with_reference_model(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run(setup, ops))?;
    }
}

/// Regression: the ejection timer used to start counting when its task
/// first ran, so an ejection followed by a clock advance before the
/// caller yielded lasted that much longer than `base_ejection_time`.
#[tokio::test(start_paused = true)]
async fn an_ejection_lasts_from_the_failure_that_caused_it_not_from_when_its_timer_first_runs() {
    let registry = StaticRegistry::new([Instance::builder("model", "i0", "10.0.0.1:80")
        .build()
        .expect("valid instance")]);
    let make = make_fn(|_: &Instance| {
        Ok::<_, BoxError>(service_fn(|()| async {
            Err::<String, BoxError>("down".into())
        }))
    });
    let outliers = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_percent(100)
        .build()
        .unwrap();
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(outliers)
        .build()
        .unwrap();
    let mut balance = Balance::new("model", &registry, make, config).unwrap();
    assert!(balance.ready().await.unwrap().call(()).await.is_err());
    assert_eq!(balance.metrics().ejected, 1);
    // Straight on, before this task yields to the ejection's timer task.
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(
        balance.metrics().ejected,
        0,
        "returned after base_ejection_time"
    );
}
