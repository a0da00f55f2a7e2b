//! The saga executor with the in-memory log: forward, backward, retries,
//! parallel stages, pivots, operators, leases and configuration errors.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/faulty_log.rs"]
mod faulty_log;

use faulty_log::{Faults, FaultyLog};
use palisade::backoff::{Backoff, Jitter};
use palisade::saga::{
    BoxFuture, ClaimedSaga, FinishedOutcome, Lease, LogError, LoggedRecord, MemoryLog, OwnerId,
    RecordKind, SagaDefinition, SagaError, SagaEventKind, SagaExecutor, SagaId, SagaLog,
    SagaOutcome, SagaState, Step, StepContext, StepEffect, StepError,
};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a fake service call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Fail(StepEffect),
    /// Sleeps for an hour (paused time), so a step timeout fires.
    Slow,
    /// Waits until `Shop::release` is notified.
    Block,
}

/// A fake shop recording every call, in order, as `do:<step>` or
/// `undo:<step>`; behaviours are queued per call name (default: succeed).
#[derive(Debug, Default)]
struct Shop {
    calls: Mutex<Vec<String>>,
    plan: Mutex<HashMap<String, VecDeque<Act>>>,
    keys: Mutex<Vec<String>>,
    release: Notify,
}

impl Shop {
    fn plan(&self, call: &str, acts: impl IntoIterator<Item = Act>) {
        self.plan
            .lock()
            .entry(call.to_owned())
            .or_default()
            .extend(acts);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }

    async fn call(&self, call: String, key: String) -> Result<(), Act> {
        self.calls.lock().push(call.clone());
        self.keys.lock().push(key);
        let act = self
            .plan
            .lock()
            .get_mut(&call)
            .and_then(VecDeque::pop_front);
        match act {
            None => Ok(()),
            Some(Act::Slow) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            Some(Act::Block) => {
                self.release.notified().await;
                Ok(())
            }
            Some(act) => Err(act),
        }
    }
}

fn step(name: &'static str) -> Step<Shop> {
    Step::new(
        name,
        move |shop: Arc<Shop>, cx: StepContext| async move {
            match shop.call(format!("do:{name}"), cx.idempotency_key()).await {
                Ok(()) => Ok(format!("{name}-out")),
                Err(Act::Fail(StepEffect::NoEffect)) => Err(StepError::no_effect("refused")),
                Err(_) => Err(StepError::unknown("connection reset")),
            }
        },
        move |shop: Arc<Shop>, cx: StepContext| async move {
            match shop
                .call(format!("undo:{name}"), cx.idempotency_key())
                .await
            {
                Ok(()) => Ok(()),
                Err(_) => Err(std::io::Error::other("undo failed")),
            }
        },
    )
}

fn fast_backoff() -> Backoff {
    Backoff::constant(Duration::from_millis(10))
        .build()
        .expect("valid")
}

fn saga(steps: &[&'static str]) -> SagaDefinition<Shop> {
    steps
        .iter()
        .fold(SagaDefinition::builder("test", 1), |b, name| {
            b.step(step(name).compensation_retry(fast_backoff(), 3))
        })
        .build()
        .expect("valid definition")
}

fn executor(shop: &Arc<Shop>, log: &MemoryLog) -> SagaExecutor<Shop> {
    SagaExecutor::builder(Arc::clone(shop), log.clone())
        .owner("test-executor")
        .build()
        .expect("valid executor")
}

fn kinds(history: &[LoggedRecord]) -> Vec<String> {
    history
        .iter()
        .map(|r| match r.kind.step() {
            Some(step) => format!("{}:{step}", r.kind.name()),
            None => r.kind.name().to_owned(),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn happy_path_runs_every_step_in_order_and_completes() {
    let shop = Arc::new(Shop::default());
    let log = MemoryLog::new();
    let exec = executor(&shop, &log);
    let reads_earlier =
        Step::without_compensation("confirm", |_shop: Arc<Shop>, cx: StepContext| async move {
            let input: u32 = cx.input()?;
            let paid: String = cx.output("payment")?;
            Ok::<_, StepError>(format!("{input} {paid}"))
        });
    let def = SagaDefinition::builder("order", 1)
        .step(step("payment"))
        .step(step("inventory"))
        .step(reads_earlier)
        .build()
        .unwrap();
    let mut events = exec.subscribe();
    let handle = exec.start(&def, &42u32).await.unwrap();
    let id = handle.id();
    let SagaOutcome::Completed(output) = handle.outcome().await.unwrap() else {
        panic!("not completed")
    };
    assert_eq!(output.get::<String>("confirm").unwrap(), "42 payment-out");
    assert_eq!(output.get::<String>("inventory").unwrap(), "inventory-out");
    assert_eq!(shop.calls(), ["do:payment", "do:inventory"]);
    assert_eq!(
        kinds(&exec.history(id).await.unwrap()),
        [
            "saga_created",
            "step_started:payment",
            "step_completed:payment",
            "step_started:inventory",
            "step_completed:inventory",
            "step_started:confirm",
            "step_completed:confirm",
            "saga_finished"
        ]
    );
    assert_eq!(exec.status(id).await.unwrap().state, SagaState::Completed);
    assert_eq!(
        exec.list(SagaState::Completed, None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    let metrics = exec.metrics();
    assert_eq!(
        (metrics.started, metrics.completed, metrics.steps_completed),
        (1, 1, 3)
    );
    assert_eq!(metrics.in_flight, 0);
    assert_eq!(metrics.step_latency["payment"].count, 1);
    let kinds: Vec<SagaEventKind> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.first(), Some(&SagaEventKind::Started));
    assert_eq!(kinds.last(), Some(&SagaEventKind::Completed));
    assert_eq!(shop.keys.lock()[0], format!("{id}:payment:action"));
}

#[tokio::test(start_paused = true)]
async fn failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse_order() {
    let names = ["a", "b", "c", "d"];
    for failing in 0..names.len() {
        let shop = Arc::new(Shop::default());
        let exec = executor(&shop, &MemoryLog::new());
        shop.plan(
            &format!("do:{}", names[failing]),
            [Act::Fail(StepEffect::NoEffect)],
        );
        let handle = exec.start(&saga(&names), &()).await.unwrap();
        let id = handle.id();
        let SagaOutcome::Compensated(failure) = handle.outcome().await.unwrap() else {
            panic!("not compensated")
        };
        assert_eq!(failure.step, names[failing]);
        assert_eq!(failure.error, "refused");
        let mut expected: Vec<String> = names[..=failing]
            .iter()
            .map(|n| format!("do:{n}"))
            .collect();
        expected.extend(names[..failing].iter().rev().map(|n| format!("undo:{n}")));
        assert_eq!(shop.calls(), expected, "failing at {}", names[failing]);
        assert_eq!(exec.status(id).await.unwrap().state, SagaState::Compensated);
        assert_eq!(exec.metrics().compensated, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_is_compensated_and_no_effect_is_not() {
    for (effect, undone) in [(StepEffect::Unknown, true), (StepEffect::NoEffect, false)] {
        let shop = Arc::new(Shop::default());
        let exec = executor(&shop, &MemoryLog::new());
        shop.plan("do:b", [Act::Fail(effect)]);
        let handle = exec.start(&saga(&["a", "b"]), &()).await.unwrap();
        assert!(matches!(
            handle.outcome().await.unwrap(),
            SagaOutcome::Compensated(_)
        ));
        let mut expected = vec!["do:a", "do:b"];
        if undone {
            expected.push("undo:b");
        }
        expected.push("undo:a");
        assert_eq!(shop.calls(), expected, "{effect:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_action_is_an_unknown_outcome_and_compensated() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:b", [Act::Slow]);
    let def = SagaDefinition::builder("t", 1)
        .step(step("a"))
        .step(step("b").timeout(Duration::from_secs(2)))
        .build()
        .unwrap();
    let handle = exec.start(&def, &()).await.unwrap();
    let id = handle.id();
    let SagaOutcome::Compensated(failure) = handle.outcome().await.unwrap() else {
        panic!("not compensated")
    };
    assert!(
        failure.error.contains("timed out after 2s"),
        "{}",
        failure.error
    );
    assert_eq!(shop.calls(), ["do:a", "do:b", "undo:b", "undo:a"]);
    let history = exec.history(id).await.unwrap();
    assert!(history.iter().any(|r| matches!(
        &r.kind,
        RecordKind::StepFailed {
            effect: StepEffect::Unknown,
            will_retry: false,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn a_step_is_retried_with_backoff_and_keeps_its_idempotency_key() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan(
        "do:a",
        [
            Act::Fail(StepEffect::Unknown),
            Act::Fail(StepEffect::NoEffect),
        ],
    );
    let def = SagaDefinition::builder("t", 1)
        .step(step("a").retry(
            Backoff::constant(Duration::from_secs(5)).build().unwrap(),
            3,
        ))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let handle = exec.start(&def, &()).await.unwrap();
    let id = handle.id();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "two waits of 5s"
    );
    assert_eq!(shop.calls(), ["do:a", "do:a", "do:a"]);
    let keys = shop.keys.lock().clone();
    assert!(
        keys.iter().all(|k| *k == format!("{id}:a:action")),
        "{keys:?}"
    );
    assert_eq!(exec.metrics().step_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_unknown_attempt_is_compensated_even_if_the_last_had_no_effect() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan(
        "do:b",
        [
            Act::Fail(StepEffect::Unknown),
            Act::Fail(StepEffect::NoEffect),
        ],
    );
    let def = SagaDefinition::builder("t", 1)
        .step(step("a"))
        .step(step("b").retry(fast_backoff(), 2))
        .build()
        .unwrap();
    let handle = exec.start(&def, &()).await.unwrap();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        SagaOutcome::Compensated(_)
    ));
    assert_eq!(shop.calls(), ["do:a", "do:b", "do:b", "undo:b", "undo:a"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_compensation_is_retried_then_stuck_then_retry_stuck_finishes_it() {
    let shop = Arc::new(Shop::default());
    let log = MemoryLog::new();
    let exec = executor(&shop, &log);
    shop.plan("do:c", [Act::Fail(StepEffect::NoEffect)]);
    shop.plan("undo:b", [Act::Fail(StepEffect::Unknown); 3]);
    let def = saga(&["a", "b", "c"]);
    let handle = exec.start(&def, &()).await.unwrap();
    let id = handle.id();
    let SagaOutcome::Stuck(stuck) = handle.outcome().await.unwrap() else {
        panic!("not stuck")
    };
    assert_eq!(stuck.step, "b");
    assert_eq!(
        shop.calls(),
        ["do:a", "do:b", "do:c", "undo:b", "undo:b", "undo:b"]
    );
    assert_eq!(exec.status(id).await.unwrap().state, SagaState::Stuck);
    assert_eq!(exec.status(id).await.unwrap().owner, None, "lease released");
    assert_eq!(
        exec.list(SagaState::Stuck, None, 100).await.unwrap()[0].id,
        id
    );
    assert_eq!(exec.metrics().stuck, 1);
    assert_eq!(exec.metrics().compensation_failures, 3);

    // Recovery leaves stuck sagas to operators.
    assert!(exec.recover().await.unwrap().resumed.is_empty());

    let handle = exec.retry_stuck(id).await.unwrap();
    let SagaOutcome::Compensated(failure) = handle.outcome().await.unwrap() else {
        panic!("not compensated")
    };
    assert_eq!(failure.step, "c");
    assert_eq!(
        shop.calls(),
        [
            "do:a", "do:b", "do:c", "undo:b", "undo:b", "undo:b", "undo:b", "undo:a"
        ]
    );
    let undo_keys: Vec<String> = shop.keys.lock()[3..7].to_vec();
    assert!(undo_keys.iter().all(|k| *k == format!("{id}:b:undo")));
    assert!(matches!(
        exec.retry_stuck(id).await,
        Err(SagaError::NotStuck {
            state: SagaState::Compensated,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn abandon_finishes_a_stuck_saga_and_refuses_others() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:b", [Act::Fail(StepEffect::NoEffect)]);
    shop.plan("undo:a", [Act::Fail(StepEffect::Unknown); 3]);
    let handle = exec.start(&saga(&["a", "b"]), &()).await.unwrap();
    let id = handle.id();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        SagaOutcome::Stuck(_)
    ));
    exec.abandon(id).await.unwrap();
    assert_eq!(exec.status(id).await.unwrap().state, SagaState::Abandoned);
    let last = exec.history(id).await.unwrap().pop().unwrap();
    assert_eq!(
        last.kind,
        RecordKind::SagaFinished {
            outcome: FinishedOutcome::Abandoned
        }
    );
    assert_eq!(exec.metrics().abandoned, 1);

    let done = exec.start(&saga(&["a"]), &()).await.unwrap();
    let done_id = done.id();
    done.outcome().await.unwrap();
    assert!(matches!(
        exec.abandon(done_id).await,
        Err(SagaError::NotStuck {
            state: SagaState::Completed,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_parallel_stage_failure_compensates_its_completed_members_and_earlier_steps() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:p2", [Act::Fail(StepEffect::NoEffect)]);
    let def = SagaDefinition::builder("par", 1)
        .step(step("first"))
        .parallel([step("p1"), step("p2"), step("p3")])
        .step(step("never"))
        .build()
        .unwrap();
    let handle = exec.start(&def, &()).await.unwrap();
    let SagaOutcome::Compensated(failure) = handle.outcome().await.unwrap() else {
        panic!("not compensated")
    };
    assert_eq!(failure.step, "p2");
    let calls = shop.calls();
    let mut forward: Vec<&String> = calls[1..4].iter().collect();
    forward.sort();
    assert_eq!(forward, ["do:p1", "do:p2", "do:p3"]);
    assert_eq!(calls[0], "do:first");
    assert_eq!(calls[4..], ["undo:p3", "undo:p1", "undo:first"]);
}

#[tokio::test(start_paused = true)]
async fn parallel_members_run_concurrently() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:p1", [Act::Slow]);
    shop.plan("do:p2", [Act::Slow]);
    let def = SagaDefinition::builder("par", 1)
        .parallel([step("p1"), step("p2")])
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let handle = exec.start(&def, &()).await.unwrap();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3600),
        "one hour, not two"
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_pivot_steps_are_retried_until_they_complete() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:ship", [Act::Fail(StepEffect::NoEffect); 7]);
    let def = SagaDefinition::builder("pivot", 1)
        .step(step("reserve"))
        .pivot(step("charge"))
        .step(step("ship").retry(fast_backoff(), 2))
        .build()
        .unwrap();
    let handle = exec.start(&def, &()).await.unwrap();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));
    let calls = shop.calls();
    assert_eq!(calls.iter().filter(|c| *c == "do:ship").count(), 8);
    assert!(calls.iter().all(|c| !c.starts_with("undo:")));
}

#[tokio::test(start_paused = true)]
async fn a_failing_pivot_compensates_the_steps_before_it() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:charge", [Act::Fail(StepEffect::NoEffect)]);
    let def = SagaDefinition::builder("pivot", 1)
        .step(step("reserve"))
        .pivot(step("charge"))
        .step(step("ship"))
        .build()
        .unwrap();
    let handle = exec.start(&def, &()).await.unwrap();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        SagaOutcome::Compensated(_)
    ));
    assert_eq!(shop.calls(), ["do:reserve", "do:charge", "undo:reserve"]);
}

#[test]
fn invalid_definitions_are_rejected_naming_the_field() {
    let field = |b: palisade::saga::SagaDefinitionBuilder<Shop>| b.build().unwrap_err().field();
    assert_eq!(field(SagaDefinition::builder("empty", 1)), "steps");
    assert_eq!(
        field(SagaDefinition::builder("", 1).step(step("a"))),
        "name"
    );
    let dup = field(
        SagaDefinition::builder("dup", 1)
            .step(step("a"))
            .parallel([step("b"), step("a")]),
    );
    assert_eq!(dup, "step");
    assert_eq!(
        field(SagaDefinition::builder("p", 1).parallel([])),
        "parallel"
    );
    assert_eq!(
        field(
            SagaDefinition::builder("p", 1)
                .pivot(step("a"))
                .pivot(step("b"))
        ),
        "pivot"
    );
    assert_eq!(
        field(SagaDefinition::builder("r", 1).step(step("a").retry(fast_backoff(), 0))),
        "max_attempts"
    );
    assert_eq!(
        field(
            SagaDefinition::builder("r", 1).step(step("a").compensation_retry(fast_backoff(), 0))
        ),
        "compensation_max_attempts"
    );
    assert_eq!(
        field(SagaDefinition::builder("t", 1).step(step("a").timeout(Duration::ZERO))),
        "timeout"
    );
    let err = SagaDefinition::builder("dup", 1)
        .step(step("a"))
        .step(step("a"))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid saga definition configuration: `step` name `a` is used twice in saga `dup`"
    );
}

#[test]
fn invalid_executor_settings_are_rejected_naming_the_field() {
    let shop = Arc::new(Shop::default());
    let build = |f: fn(
        palisade::saga::SagaExecutorBuilder<Shop>,
    ) -> palisade::saga::SagaExecutorBuilder<Shop>| {
        f(SagaExecutor::builder(Arc::clone(&shop), MemoryLog::new()))
            .build()
            .unwrap_err()
            .field()
    };
    assert_eq!(build(|b| b.owner("has space")), "owner");
    assert_eq!(
        build(|b| b.lease_ttl(Duration::from_millis(1))),
        "lease_ttl"
    );
    // A lease too long for the clock (it panicked in the renewal timer).
    assert_eq!(build(|b| b.lease_ttl(Duration::MAX)), "lease_ttl");
    assert_eq!(build(|b| b.event_capacity(0)), "event_capacity");
}

#[tokio::test(start_paused = true)]
async fn a_log_written_by_another_version_is_rejected_on_recovery() {
    let shop = Arc::new(Shop::default());
    let log = MemoryLog::new();
    shop.plan("do:b", [Act::Block]);
    let first = executor(&shop, &log);
    let handle = first.start(&saga(&["a", "b"]), &()).await.unwrap();
    let id = handle.id();
    tokio::task::yield_now().await;
    while shop.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(first); // crash mid-step
    assert!(matches!(
        handle.outcome().await,
        Err(SagaError::Interrupted { .. })
    ));

    let second = executor(&shop, &log);
    let v2 = SagaDefinition::builder("test", 2)
        .step(step("a"))
        .step(step("b"))
        .build()
        .unwrap();
    second.register(&v2);
    let recovery = second.recover().await.unwrap();
    assert!(recovery.resumed.is_empty());
    assert_eq!(recovery.failed.len(), 1);
    let (failed_id, error) = &recovery.failed[0];
    assert_eq!(*failed_id, id);
    assert!(
        matches!(
            error,
            SagaError::VersionMismatch {
                logged: 1,
                registered: 2,
                ..
            }
        ),
        "{error:?}"
    );
    // The saga is left in the log as it was.
    assert_eq!(second.status(id).await.unwrap().state, SagaState::Running);

    let unknown = executor(&shop, &log);
    let recovery = unknown.recover().await.unwrap();
    assert!(matches!(
        recovery.failed[0].1,
        SagaError::UnknownDefinition { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn recovery_reruns_the_interrupted_step_with_the_same_key_and_finishes() {
    let shop = Arc::new(Shop::default());
    let log = MemoryLog::new();
    shop.plan("do:b", [Act::Block]);
    let first = executor(&shop, &log);
    let def = saga(&["a", "b", "c"]);
    let handle = first.start(&def, &()).await.unwrap();
    let id = handle.id();
    while shop.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(first);

    let second = executor(&shop, &log);
    second.register(&def);
    let mut recovery = second.recover().await.unwrap();
    assert_eq!(recovery.resumed.len(), 1);
    let resumed = recovery.resumed.pop().unwrap();
    assert_eq!(resumed.id(), id);
    assert!(matches!(
        resumed.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));
    assert_eq!(shop.calls(), ["do:a", "do:b", "do:b", "do:c"]);
    let keys = shop.keys.lock().clone();
    assert_eq!(keys[1], keys[2]);
    let history = second.history(id).await.unwrap();
    let b_starts: Vec<(u64, u32)> = history
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::StepStarted { step, attempt } if step == "b" => Some((r.epoch, *attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(b_starts, [(1, 1), (2, 1)], "same attempt, new epoch");
    assert_eq!(second.metrics().resumed, 1);
}

/// The attempts of one call (action or compensation) with when each began.
type Attempts = Arc<Mutex<Vec<(u32, Instant)>>>;

/// A call whose 1st, 2nd and 4th tries fail, whose 3rd hangs (the process
/// dies during it) and whose 5th succeeds.
fn fails_hangs_then_succeeds(
    seen: &Attempts,
    cx: &StepContext,
) -> impl std::future::Future<Output = Result<(), &'static str>> + use<> {
    let call = {
        let mut seen = seen.lock();
        seen.push((cx.attempt(), Instant::now()));
        seen.len()
    };
    async move {
        match call {
            3 => std::future::pending().await,
            5 => Ok(()),
            _ => Err("declined"),
        }
    }
}

fn doubling_from_100ms() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), 2.0)
        .jitter(Jitter::None)
        .build()
        .expect("valid")
}

/// Starts `definition`, lets it reach the hanging third try of `seen`,
/// drops the executor as in a crash, recovers the log with a new one and
/// returns the saga's outcome.
async fn crash_during_third_try_and_recover(
    definition: &SagaDefinition<Shop>,
    seen: &Attempts,
) -> SagaOutcome {
    let shop = Arc::new(Shop::default());
    let log = MemoryLog::new();
    let first = executor(&shop, &log);
    let _abandoned = first.start(definition, &()).await.unwrap();
    while seen.lock().len() < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(first);
    let second = executor(&shop, &log);
    second.register(definition);
    let mut recovery = second.recover().await.unwrap();
    assert_eq!(recovery.resumed.len(), 1);
    recovery.resumed.pop().unwrap().outcome().await.unwrap()
}

/// The waits before each retry, and the attempt numbers of the tries.
fn waits_and_attempts(seen: &Attempts) -> (Vec<Duration>, Vec<u32>) {
    let seen = seen.lock();
    let waits = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    (waits, seen.iter().map(|(attempt, _)| *attempt).collect())
}

#[tokio::test(start_paused = true)]
async fn a_resumed_action_waits_the_delay_of_its_next_retry_not_the_first_delay() {
    let seen: Attempts = Arc::default();
    let pay = {
        let seen = Arc::clone(&seen);
        Step::without_compensation("pay", move |_shop: Arc<Shop>, cx: StepContext| {
            let attempt = fails_hangs_then_succeeds(&seen, &cx);
            async move { attempt.await.map_err(StepError::no_effect) }
        })
        .retry(doubling_from_100ms(), 10)
    };
    let definition = SagaDefinition::builder("pay", 1).step(pay).build().unwrap();
    let outcome = crash_during_third_try_and_recover(&definition, &seen).await;
    assert!(matches!(outcome, SagaOutcome::Completed(_)), "{outcome:?}");
    let (waits, attempts) = waits_and_attempts(&seen);
    // Attempt 3 is run again after the crash; its failure is the third, so
    // the wait before attempt 4 is the third retry's delay: 400 ms.
    assert_eq!(attempts, [1, 2, 3, 3, 4]);
    let ms = Duration::from_millis;
    assert_eq!((waits[0], waits[1], waits[3]), (ms(100), ms(200), ms(400)));
}

#[tokio::test(start_paused = true)]
async fn a_resumed_compensation_waits_the_delay_of_its_next_retry_not_the_first_delay() {
    let seen: Attempts = Arc::default();
    let refund = {
        let seen = Arc::clone(&seen);
        Step::new(
            "pay",
            |_shop: Arc<Shop>, _cx: StepContext| async { Ok::<_, StepError>(()) },
            move |_shop: Arc<Shop>, cx: StepContext| {
                let attempt = fails_hangs_then_succeeds(&seen, &cx);
                async move { attempt.await.map_err(palisade::BoxError::from) }
            },
        )
        .compensation_retry(doubling_from_100ms(), 10)
    };
    let refused = Step::without_compensation("ship", |_shop: Arc<Shop>, _cx: StepContext| async {
        Err::<(), _>(StepError::no_effect("no courier"))
    });
    let definition = SagaDefinition::builder("refund", 1)
        .step(refund)
        .step(refused)
        .build()
        .unwrap();
    let outcome = crash_during_third_try_and_recover(&definition, &seen).await;
    assert!(
        matches!(outcome, SagaOutcome::Compensated(_)),
        "{outcome:?}"
    );
    let (waits, attempts) = waits_and_attempts(&seen);
    assert_eq!(attempts, [1, 2, 3, 3, 4]);
    let ms = Duration::from_millis;
    assert_eq!((waits[0], waits[1], waits[3]), (ms(100), ms(200), ms(400)));
}

/// A log whose lease renewals can be cut off, as for a partitioned executor.
#[derive(Debug, Clone)]
struct Partitionable {
    inner: MemoryLog,
    cut: Arc<Mutex<bool>>,
    /// Appends to refuse with `Unavailable` (without writing), counted down,
    /// once `appends_before_failing` more appends have been let through.
    failing_appends: Arc<Mutex<u32>>,
    appends_before_failing: Arc<Mutex<u32>>,
}

impl Faults for Partitionable {
    type Inner = MemoryLog;

    fn inner(&self) -> &MemoryLog {
        &self.inner
    }
    fn backend(&self) -> &'static str {
        "partitionable"
    }
    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        let mut failing = self.failing_appends.lock();
        let mut before = self.appends_before_failing.lock();
        if *failing > 0 && *before > 0 {
            *before -= 1;
        } else if *failing > 0 {
            *failing -= 1;
            return Box::pin(async { Err(LogError::unavailable("partitionable", "disk full")) });
        }
        self.inner.append(lease, record)
    }
    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, Result<(), LogError>> {
        if *self.cut.lock() {
            return Box::pin(async { Err(LogError::unavailable("partitionable", "partitioned")) });
        }
        self.inner.renew(lease, ttl)
    }
    fn claim<'a>(
        &'a self,
        saga: SagaId,
        owner: &'a OwnerId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimedSaga, LogError>> {
        if *self.cut.lock() {
            return Box::pin(async { Err(LogError::unavailable("partitionable", "partitioned")) });
        }
        self.inner.claim(saga, owner, ttl)
    }
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_executor_is_fenced_off_after_another_takes_its_saga_over() {
    let shop = Arc::new(Shop::default());
    let memory = MemoryLog::new();
    let log = FaultyLog(Partitionable {
        inner: memory.clone(),
        cut: Arc::default(),
        failing_appends: Arc::default(),
        appends_before_failing: Arc::default(),
    });
    shop.plan("do:b", [Act::Block]);
    let def = saga(&["a", "b", "c"]);
    let a = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("a")
        .lease_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = a.start(&def, &()).await.unwrap();
    let id = handle.id();
    while shop.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let b = SagaExecutor::builder(Arc::clone(&shop), memory.clone())
        .owner("b")
        .build()
        .unwrap();
    b.register(&def);
    // a's lease is live and renewed: b cannot take the saga.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(b.recover().await.unwrap().resumed.is_empty());
    assert_eq!(
        b.status(id).await.unwrap().owner,
        Some(OwnerId::new("a").unwrap())
    );

    *log.cut.lock() = true;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let mut recovery = b.recover().await.unwrap();
    let taken = recovery.resumed.pop().expect("b took the saga over");
    // b re-runs `b` (its call does not block: the plan is used up) and finishes.
    assert!(matches!(
        taken.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));

    // a's blocked call returns now; its append is refused.
    shop.release.notify_waiters();
    let error = handle.outcome().await.unwrap_err();
    assert!(
        matches!(
            &error,
            SagaError::LeaseLost {
                source: LogError::Fenced {
                    epoch: 1,
                    current: 2,
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(a.metrics().lease_lost, 1);
    assert_eq!(shop.calls().iter().filter(|c| *c == "do:c").count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_takeover_loop_adopts_sagas_whose_lease_expired_and_leaves_live_ones_alone() {
    let shop = Arc::new(Shop::default());
    let memory = MemoryLog::new();
    let log = FaultyLog(Partitionable {
        inner: memory.clone(),
        cut: Arc::default(),
        failing_appends: Arc::default(),
        appends_before_failing: Arc::default(),
    });
    shop.plan("do:b", [Act::Block]);
    let def = saga(&["a", "b", "c"]);
    let a = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("a")
        .lease_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = a.start(&def, &()).await.unwrap();
    let id = handle.id();
    while shop.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let b = SagaExecutor::builder(Arc::clone(&shop), memory.clone())
        .owner("b")
        .takeover_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    b.register(&def);
    let mut events = b.subscribe();
    assert!(b.recover().await.unwrap().resumed.is_empty());
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(b.metrics().resumed, 0, "a's lease is renewed");

    *log.cut.lock() = true;
    let event = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.kind == SagaEventKind::Completed {
                return event;
            }
        }
    })
    .await
    .expect("b finishes the saga");
    assert_eq!(event.saga, id);
    assert_eq!(b.metrics().resumed, 1);
    assert_eq!(b.status(id).await.unwrap().state, SagaState::Completed);
    shop.release.notify_waiters();
    assert!(matches!(
        handle.outcome().await,
        Err(SagaError::LeaseLost { .. })
    ));
}

#[test]
fn a_too_short_takeover_interval_is_rejected() {
    let err = SagaExecutor::<Shop>::builder(Shop::default(), MemoryLog::new())
        .takeover_interval(Duration::from_millis(1))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "takeover_interval");
}

fn failing_log() -> FaultyLog<Partitionable> {
    FaultyLog(Partitionable {
        inner: MemoryLog::new(),
        cut: Arc::default(),
        failing_appends: Arc::default(),
        appends_before_failing: Arc::default(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_saga_whose_log_is_unavailable_for_a_while_is_resumed_by_its_driver() {
    let shop = Arc::new(Shop::default());
    let log = failing_log();
    let exec = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("a")
        .build()
        .unwrap();
    let def = saga(&["a", "b"]);
    exec.register(&def);
    let mut events = exec.subscribe();
    // The first three appends (each `step_started` of `a`) fail.
    *log.failing_appends.lock() = 3;
    let handle = exec.start(&def, &()).await.unwrap();
    let id = handle.id();
    assert!(matches!(
        handle.outcome().await,
        Ok(SagaOutcome::Completed(_))
    ));
    assert_eq!(
        shop.calls(),
        ["do:a", "do:b"],
        "no action ran before its record"
    );
    assert_eq!(exec.metrics().resumed, 3, "taken back after each failure");
    let resumed = events
        .drain()
        .into_iter()
        .filter(|e| e.saga == id && matches!(e.kind, SagaEventKind::Resumed { .. }))
        .count();
    assert_eq!(resumed, 3);
    assert_eq!(exec.status(id).await.unwrap().state, SagaState::Completed);
}

#[tokio::test(start_paused = true)]
async fn an_action_whose_completion_was_not_logged_runs_again_with_the_same_key() {
    let shop = Arc::new(Shop::default());
    let log = failing_log();
    let exec = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("a")
        .build()
        .unwrap();
    let def = saga(&["a", "b"]);
    exec.register(&def);
    // `step_started` of `a` is written; its `step_completed` fails.
    *log.appends_before_failing.lock() = 1;
    *log.failing_appends.lock() = 1;
    let handle = exec.start(&def, &()).await.unwrap();
    assert!(matches!(
        handle.outcome().await,
        Ok(SagaOutcome::Completed(_))
    ));
    assert_eq!(shop.calls(), ["do:a", "do:a", "do:b"]);
    let keys = shop.keys.lock().clone();
    assert_eq!(
        keys[0], keys[1],
        "the re-run carries the same idempotency key"
    );
}

#[tokio::test(start_paused = true)]
async fn a_saga_stopped_by_a_log_failure_can_be_taken_over_by_another_executor() {
    let shop = Arc::new(Shop::default());
    let log = failing_log();
    let a = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("a")
        .build()
        .unwrap();
    let b = SagaExecutor::builder(Arc::clone(&shop), log.inner.clone())
        .owner("b")
        .takeover_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let def = saga(&["a", "b"]);
    a.register(&def);
    b.register(&def);
    b.recover().await.unwrap();
    let mut events = b.subscribe();
    *log.failing_appends.lock() = 1;
    let handle = a.start(&def, &()).await.unwrap();
    let id = handle.id();
    // a's first append fails and a's driver gives the lease back; a is then
    // cut off from the log, so its attempts to take the saga back fail, and
    // b's takeover loop (every 10 ms) takes the saga and finishes it.
    *log.cut.lock() = true;
    let completed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.kind == SagaEventKind::Completed {
                return event.saga;
            }
        }
    })
    .await
    .expect("taken over within a few rounds");
    assert_eq!(completed, id);
    *log.cut.lock() = false;
    let outcome = handle.outcome().await;
    assert!(
        matches!(outcome, Err(SagaError::LeaseLost { .. })),
        "a learns that b drives the saga now: {outcome:?}"
    );
    assert_eq!(shop.calls(), ["do:a", "do:b"]);
}

#[tokio::test(start_paused = true)]
async fn recovering_a_saga_this_executor_drives_restarts_its_driver() {
    let shop = Arc::new(Shop::default());
    shop.plan("do:b", [Act::Block]);
    let exec = executor(&shop, &MemoryLog::new());
    let def = saga(&["a", "b"]);
    let old = exec.start(&def, &()).await.unwrap();
    while shop.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut recovery = exec.recover().await.unwrap();
    let new = recovery.resumed.pop().expect("taken back");
    assert_eq!(new.id(), old.id());
    assert!(matches!(
        old.outcome().await,
        Err(SagaError::Interrupted { .. })
    ));
    assert!(matches!(
        new.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));
    assert_eq!(shop.calls(), ["do:a", "do:b", "do:b"]);
    assert_eq!(exec.metrics().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_stage_member_stops_retrying_once_another_member_failed_for_good() {
    let shop = Arc::new(Shop::default());
    let exec = executor(&shop, &MemoryLog::new());
    shop.plan("do:slow-retry", [Act::Fail(StepEffect::Unknown); 5]);
    shop.plan("do:refused", [Act::Fail(StepEffect::NoEffect); 2]);
    let hourly = Backoff::constant(Duration::from_secs(3600))
        .max_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let def = SagaDefinition::builder("par", 1)
        .parallel([
            step("slow-retry").retry(hourly.clone(), 5),
            // Fails for good after 10 ms: during slow-retry's hour of waiting.
            step("refused").retry(fast_backoff(), 2),
        ])
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let handle = exec.start(&def, &()).await.unwrap();
    let SagaOutcome::Compensated(failure) = handle.outcome().await.unwrap() else {
        panic!("not compensated")
    };
    assert_eq!(failure.step, "refused");
    assert!(
        started.elapsed() < Duration::from_secs(7200),
        "{:?}",
        started.elapsed()
    );
    // slow-retry tried once (unknown outcome) and is compensated.
    assert_eq!(
        shop.calls(),
        [
            "do:slow-retry",
            "do:refused",
            "do:refused",
            "undo:slow-retry"
        ]
    );
}

/// JSON behind a one-byte tag: a codec of the user's own.
#[derive(Debug, Clone, Copy, Default)]
struct TaggedJson;

impl palisade::saga::Codec for TaggedJson {
    fn encode<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<Vec<u8>, palisade::saga::CodecError> {
        let mut bytes = vec![b'T'];
        bytes.extend(palisade::saga::JsonCodec.encode(value)?);
        Ok(bytes)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<T, palisade::saga::CodecError> {
        match bytes.split_first() {
            Some((b'T', rest)) => palisade::saga::JsonCodec.decode(rest),
            _ => Err(palisade::saga::CodecError::msg("untagged value")),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn inputs_and_outputs_go_through_the_executors_codec() {
    let log = MemoryLog::new();
    let def = SagaDefinition::<Shop, TaggedJson>::builder_with_codec("tagged", 1)
        .step(Step::without_compensation(
            "double",
            |_shop: Arc<Shop>, cx: StepContext<TaggedJson>| async move {
                Ok::<_, StepError>(cx.input::<u32>()? * 2)
            },
        ))
        .build()
        .unwrap();
    let exec = SagaExecutor::builder(Arc::new(Shop::default()), log.clone())
        .codec(TaggedJson)
        .build()
        .unwrap();
    let handle = exec.start(&def, &21u32).await.unwrap();
    let id = handle.id();
    let SagaOutcome::Completed(output) = handle.outcome().await.unwrap() else {
        panic!("not completed")
    };
    assert_eq!(output.get::<u32>("double").unwrap(), 42);
    assert_eq!(output.raw("double"), Some(&b"T42"[..]));
    let history = exec.history(id).await.unwrap();
    assert!(matches!(&history[0].kind, RecordKind::SagaCreated { input, .. } if input == b"T21"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_leases_so_another_executor_takes_over_at_once() {
    let shop = Arc::new(Shop::default());
    let log = MemoryLog::new();
    shop.plan("do:b", [Act::Block]);
    let def = saga(&["a", "b"]);
    let first = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("first")
        .build()
        .unwrap();
    let handle = first.start(&def, &()).await.unwrap();
    let id = handle.id();
    while shop.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.shutdown().await;
    assert!(matches!(
        handle.outcome().await,
        Err(SagaError::Interrupted { .. })
    ));
    assert_eq!(first.metrics().in_flight, 0);
    assert_eq!(first.status(id).await.unwrap().owner, None);

    let second = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("second")
        .build()
        .unwrap();
    second.register(&def);
    let mut recovery = second.recover().await.unwrap();
    let resumed = recovery.resumed.pop().expect("no wait for lease expiry");
    assert!(matches!(
        resumed.outcome().await.unwrap(),
        SagaOutcome::Completed(_)
    ));
}

/// A step whose first run took effect and was cut off by a crash, and
/// whose re-run by the executor that took over failed with no effect, is
/// compensated all the same: the re-run says nothing about the first run.
#[tokio::test(start_paused = true)]
async fn a_step_cut_off_by_a_crash_is_compensated_even_if_its_rerun_had_no_effect() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};

    #[derive(Default)]
    struct Card {
        runs: AtomicU32,
        charged: AtomicBool,
        refunds: AtomicU32,
    }
    let card = Arc::new(Card::default());
    let def = SagaDefinition::builder("pay", 1)
        .step(Step::new(
            "charge",
            |card: Arc<Card>, _cx: StepContext| async move {
                if card.runs.fetch_add(1, SeqCst) == 0 {
                    card.charged.store(true, SeqCst);
                    // The reply never comes: the executor crashes here.
                    std::future::pending::<()>().await;
                }
                Err::<(), _>(StepError::no_effect("the card is blocked now"))
            },
            |card: Arc<Card>, _cx: StepContext| async move {
                card.charged.store(false, SeqCst);
                card.refunds.fetch_add(1, SeqCst);
                Ok::<_, palisade::BoxError>(())
            },
        ))
        .build()
        .unwrap();
    let log = MemoryLog::new();
    let a = SagaExecutor::builder(Arc::clone(&card), log.clone())
        .owner("a")
        .lease_ttl(Duration::from_secs(3))
        .build()
        .unwrap();
    let crashed = a.start(&def, &()).await.unwrap();
    while card.runs.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(a);
    assert!(crashed.outcome().await.is_err(), "a is gone");

    let b = SagaExecutor::builder(Arc::clone(&card), log)
        .owner("b")
        .lease_ttl(Duration::from_secs(3))
        .build()
        .unwrap();
    b.register(&def);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let resumed = b.take_over_expired().await.unwrap();
    assert_eq!(resumed.len(), 1);
    let outcome = resumed.into_iter().next().unwrap().outcome().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Compensated(_)),
        "{outcome:?}"
    );
    assert_eq!(card.runs.load(SeqCst), 2, "b re-ran the cut-off attempt");
    assert_eq!(
        card.refunds.load(SeqCst),
        1,
        "the first run's charge is refunded"
    );
    assert!(!card.charged.load(SeqCst));
}

/// A memory log that counts the records appended after creation.
#[derive(Debug, Clone, Default)]
struct CountingAppends {
    inner: MemoryLog,
    appended: Arc<Mutex<Vec<RecordKind>>>,
}

impl Faults for CountingAppends {
    type Inner = MemoryLog;

    fn inner(&self) -> &MemoryLog {
        &self.inner
    }
    fn creates_atomically(&self) -> bool {
        true
    }
    fn append<'a>(
        &'a self,
        lease: &'a Lease,
        record: RecordKind,
    ) -> BoxFuture<'a, Result<u64, LogError>> {
        self.appended.lock().push(record.clone());
        self.inner.append(lease, record)
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_step_starts_in_the_creation_s_commit_and_is_not_recorded_twice() {
    let shop = Arc::new(Shop::default());
    let log = FaultyLog(CountingAppends::default());
    let exec = SagaExecutor::builder(Arc::clone(&shop), log.clone())
        .owner("a")
        .build()
        .unwrap();
    let handle = exec.start(&saga(&["a", "b"]), &()).await.unwrap();
    let id = handle.id();
    assert!(matches!(
        handle.outcome().await,
        Ok(SagaOutcome::Completed(_))
    ));
    assert_eq!(shop.calls(), ["do:a", "do:b"]);
    let history = log.inner.history(id).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|r| r.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "saga_created",
            "step_started",
            "step_completed",
            "step_started",
            "step_completed",
            "saga_finished"
        ]
    );
    assert_eq!(
        history[1].kind,
        RecordKind::StepStarted {
            step: "a".into(),
            attempt: 1
        }
    );
    // Everything after `a`'s start was appended; `a`'s start was not.
    let appended = log.appended.lock().clone();
    assert_eq!(appended.len(), 4, "{appended:?}");
    assert!(
        !appended
            .iter()
            .any(|r| matches!(r, RecordKind::StepStarted { step, .. } if step == "a")),
        "{appended:?}"
    );
}
