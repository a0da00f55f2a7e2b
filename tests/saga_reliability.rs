//! Regression tests for the saga executor's reliability defects: panicking
//! steps, operator calls on sagas they do not act on, and which failure a
//! parallel stage reports. Paused time throughout.
#![cfg(feature = "saga")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::backoff::Backoff;
use palisade::saga::{
    FinishedOutcome, MemoryLog, RecordKind, SagaDefinition, SagaError, SagaExecutor, SagaOutcome,
    SagaState, Step, StepContext, StepError,
};
use tokio::sync::Semaphore;

/// The services of these tests: counts calls and holds a gate that
/// blocking steps wait on.
#[derive(Debug)]
struct Services {
    undo_calls: AtomicU32,
    action_calls: AtomicU32,
    gate: Semaphore,
}

impl Services {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            undo_calls: AtomicU32::new(0),
            action_calls: AtomicU32::new(0),
            gate: Semaphore::new(0),
        })
    }

    async fn pass_gate(&self) {
        self.gate.acquire().await.expect("gate open").forget();
    }
}

fn fast_backoff() -> Backoff {
    Backoff::constant(Duration::from_millis(10))
        .build()
        .expect("valid")
}

fn ok_step(name: &'static str) -> Step<Services> {
    Step::new(
        name,
        |svc: Arc<Services>, _cx: StepContext| async move {
            svc.action_calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, StepError>(())
        },
        |svc: Arc<Services>, _cx: StepContext| async move {
            svc.undo_calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        },
    )
}

fn refused_step(name: &'static str) -> Step<Services> {
    Step::without_compensation(name, |_svc: Arc<Services>, _cx: StepContext| async move {
        Err::<(), _>(StepError::no_effect("refused"))
    })
}

/// A step whose action waits at the gate, then completes.
fn gated_step(name: &'static str) -> Step<Services> {
    Step::without_compensation(name, |svc: Arc<Services>, _cx: StepContext| async move {
        svc.pass_gate().await;
        Ok::<_, StepError>(())
    })
}

fn executor(svc: &Arc<Services>, log: &MemoryLog, owner: &str) -> SagaExecutor<Services> {
    SagaExecutor::builder(Arc::clone(svc), log.clone())
        .owner(owner)
        .build()
        .expect("valid executor")
}

fn panic_message(error: &str) -> bool {
    error.contains("panicked") && error.contains("boom")
}

#[tokio::test(start_paused = true)]
async fn a_panicking_compensation_is_a_failed_attempt_and_the_saga_ends_stuck() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let panicking_undo = Step::new(
        "payment",
        |_svc: Arc<Services>, _cx: StepContext| async move { Ok::<_, StepError>(()) },
        |svc: Arc<Services>, _cx: StepContext| async move {
            if svc.undo_calls.fetch_add(1, Ordering::SeqCst) < 100 {
                panic!("boom");
            }
            Ok::<_, std::io::Error>(())
        },
    )
    .compensation_retry(fast_backoff(), 3);
    let definition = SagaDefinition::builder("panics", 1)
        .step(panicking_undo)
        .step(refused_step("inventory"))
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");

    let handle = executor.start(&definition, &()).await.expect("started");
    let id = handle.id();
    match handle
        .outcome()
        .await
        .expect("the driver survives the panic")
    {
        SagaOutcome::Stuck(failure) => {
            assert_eq!(failure.step, "payment");
            assert!(panic_message(&failure.error), "{}", failure.error);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        svc.undo_calls.load(Ordering::SeqCst),
        3,
        "every attempt ran"
    );
    let status = executor.status(id).await.expect("status");
    assert_eq!(status.state, SagaState::Stuck);
    assert_eq!(status.owner, None, "the stuck saga's lease was given back");
    assert_eq!(executor.metrics().in_flight, 0);
    // The saga is not stranded: an operator can retry it.
    svc.undo_calls.store(100, Ordering::SeqCst);
    let retried = executor.retry_stuck(id).await.expect("retried");
    assert!(matches!(
        retried.outcome().await,
        Ok(SagaOutcome::Compensated(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_action_is_an_unknown_outcome_and_the_saga_compensates() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let panicking = Step::new(
        "shipping",
        |_svc: Arc<Services>, _cx: StepContext| async move {
            if true {
                panic!("boom");
            }
            Ok::<_, StepError>(())
        },
        |svc: Arc<Services>, _cx: StepContext| async move {
            svc.undo_calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        },
    );
    let definition = SagaDefinition::builder("panics", 1)
        .step(ok_step("payment"))
        .step(panicking)
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");

    let handle = executor.start(&definition, &()).await.expect("started");
    let id = handle.id();
    match handle
        .outcome()
        .await
        .expect("the driver survives the panic")
    {
        SagaOutcome::Compensated(failure) => {
            assert_eq!(failure.step, "shipping");
            assert!(panic_message(&failure.error), "{}", failure.error);
        }
        other => panic!("{other:?}"),
    }
    // Both compensated: the panicking action's outcome is unknown.
    assert_eq!(svc.undo_calls.load(Ordering::SeqCst), 2);
    let status = executor.status(id).await.expect("status");
    assert_eq!(status.state, SagaState::Compensated);
    assert_eq!(executor.metrics().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_action_is_retried_like_any_failed_attempt() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let flaky =
        Step::without_compensation("flaky", |svc: Arc<Services>, _cx: StepContext| async move {
            if svc.action_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom");
            }
            Ok::<_, StepError>(7_u32)
        })
        .retry(fast_backoff(), 2);
    let definition = SagaDefinition::builder("panics", 1)
        .step(flaky)
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");

    let handle = executor.start(&definition, &()).await.expect("started");
    match handle
        .outcome()
        .await
        .expect("the driver survives the panic")
    {
        SagaOutcome::Completed(output) => assert_eq!(output.get::<u32>("flaky").unwrap(), 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.action_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn abandon_and_retry_stuck_leave_a_saga_driven_by_this_executor_alone() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let definition = SagaDefinition::builder("gated", 1)
        .step(gated_step("wait"))
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");
    let handle = executor.start(&definition, &()).await.expect("started");
    let id = handle.id();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let epoch = executor.status(id).await.expect("status").epoch;

    for result in [
        executor.abandon(id).await.map(drop),
        executor.retry_stuck(id).await.map(drop),
    ] {
        assert!(
            matches!(
                result,
                Err(SagaError::NotStuck {
                    state: SagaState::Running,
                    ..
                })
            ),
            "{result:?}"
        );
    }
    assert_eq!(
        executor.status(id).await.expect("status").epoch,
        epoch,
        "the saga was not claimed"
    );
    svc.gate.add_permits(1);
    assert!(matches!(
        handle.outcome().await,
        Ok(SagaOutcome::Completed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_second_retry_stuck_does_not_kill_the_first() {
    let svc = Services::new();
    let log = MemoryLog::new();
    // The compensation fails once (stuck), then waits at the gate.
    let undo_once_then_gated = Step::new(
        "payment",
        |_svc: Arc<Services>, _cx: StepContext| async move { Ok::<_, StepError>(()) },
        |svc: Arc<Services>, _cx: StepContext| async move {
            if svc.undo_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(std::io::Error::other("refund service down"));
            }
            svc.pass_gate().await;
            Ok(())
        },
    )
    .compensation_retry(fast_backoff(), 1);
    let definition = SagaDefinition::builder("stuck", 1)
        .step(undo_once_then_gated)
        .step(refused_step("inventory"))
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");
    let handle = executor.start(&definition, &()).await.expect("started");
    let id = handle.id();
    assert!(matches!(handle.outcome().await, Ok(SagaOutcome::Stuck(_))));

    let first = executor.retry_stuck(id).await.expect("first retry");
    let second = executor.retry_stuck(id).await.map(drop);
    assert!(
        matches!(second, Err(SagaError::NotStuck { .. })),
        "{second:?}"
    );
    let abandoned = executor.abandon(id).await;
    assert!(
        matches!(abandoned, Err(SagaError::NotStuck { .. })),
        "{abandoned:?}"
    );
    svc.gate.add_permits(1);
    assert!(matches!(
        first.outcome().await,
        Ok(SagaOutcome::Compensated(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn operator_calls_on_finished_or_foreign_sagas_answer_not_stuck() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let done = SagaDefinition::builder("done", 1)
        .step(ok_step("payment"))
        .build()
        .expect("valid");
    let gated = SagaDefinition::builder("gated", 1)
        .step(gated_step("wait"))
        .build()
        .expect("valid");
    let a = executor(&svc, &log, "a");
    let b = executor(&svc, &log, "b");

    let finished = a.start(&done, &()).await.expect("started");
    let finished_id = finished.id();
    finished.outcome().await.expect("completed");
    for result in [
        b.abandon(finished_id).await.map(drop),
        b.retry_stuck(finished_id).await.map(drop),
    ] {
        assert!(
            matches!(
                result,
                Err(SagaError::NotStuck {
                    state: SagaState::Completed,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    let running = a.start(&gated, &()).await.expect("started");
    let running_id = running.id();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for result in [
        b.abandon(running_id).await.map(drop),
        b.retry_stuck(running_id).await.map(drop),
    ] {
        assert!(
            matches!(
                result,
                Err(SagaError::NotStuck {
                    state: SagaState::Running,
                    ..
                })
            ),
            "{result:?}"
        );
    }
    svc.gate.add_permits(1);
    assert!(matches!(
        running.outcome().await,
        Ok(SagaOutcome::Completed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_parallel_stage_reports_its_first_failure_in_time_live_and_in_the_log() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let late =
        Step::without_compensation("late", |_svc: Arc<Services>, _cx: StepContext| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Err::<(), _>(StepError::no_effect("late failure"))
        });
    let early = Step::without_compensation(
        "early",
        |_svc: Arc<Services>, _cx: StepContext| async move {
            Err::<(), _>(StepError::no_effect("early failure"))
        },
    );
    let definition = SagaDefinition::builder("parallel", 1)
        .step(ok_step("payment"))
        .parallel([late, early])
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");

    let handle = executor.start(&definition, &()).await.expect("started");
    let id = handle.id();
    match handle.outcome().await.expect("finished") {
        SagaOutcome::Compensated(failure) => {
            assert_eq!(
                (failure.step.as_str(), failure.error.as_str()),
                ("early", "early failure")
            );
        }
        other => panic!("{other:?}"),
    }
    let history = executor.history(id).await.expect("history");
    let finished = history.last().map(|r| &r.kind);
    assert!(
        matches!(
            finished,
            Some(RecordKind::SagaFinished {
                outcome: FinishedOutcome::Compensated { error }
            }) if error == "early failure"
        ),
        "{finished:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn prune_finished_deletes_finished_sagas_and_keeps_stuck_and_running_ones() {
    let svc = Services::new();
    let log = MemoryLog::new();
    let done = SagaDefinition::builder("done", 1)
        .step(ok_step("payment"))
        .build()
        .expect("valid");
    let gated = SagaDefinition::builder("gated", 1)
        .step(gated_step("wait"))
        .build()
        .expect("valid");
    let executor = executor(&svc, &log, "a");
    let finished = executor.start(&done, &()).await.expect("started");
    let finished_id = finished.id();
    finished.outcome().await.expect("completed");
    let running = executor.start(&gated, &()).await.expect("started");
    let running_id = running.id();

    assert_eq!(
        executor
            .prune_finished(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(executor.prune_finished(Duration::ZERO).await.unwrap(), 1);
    assert!(executor.status(finished_id).await.is_err());
    assert_eq!(
        executor.status(running_id).await.unwrap().state,
        SagaState::Running
    );
    let page = executor
        .list(SagaState::Running, None, 10)
        .await
        .expect("listed");
    assert_eq!(page.len(), 1);
    svc.gate.add_permits(1);
    running.outcome().await.expect("completed");
}

#[test]
fn a_too_short_retention_is_rejected_naming_the_field() {
    let result = SagaExecutor::<Services>::builder(Services::new(), MemoryLog::new())
        .retention(Duration::from_millis(10))
        .build();
    let error = result.expect_err("rejected");
    assert!(error.to_string().contains("retention"), "{error}");
}
