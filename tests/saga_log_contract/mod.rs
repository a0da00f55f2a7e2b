//! The behaviour every `SagaLog` backend must have, as functions over any
//! log. `tests/saga_log.rs` runs them against the in-memory and SQLite
//! logs; a backend's own tests call them too.
//!
//! Leases given a zero TTL count as expired at once, so no test waits.

#![allow(dead_code)]

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use palisade::saga::{
    FinishedOutcome, ListCursor, LogError, NewSaga, OwnerId, RecordKind, SagaId, SagaLog,
    SagaState, StepEffect,
};

const LONG: Duration = Duration::from_secs(600);

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner")
}

fn new_saga(id: SagaId) -> NewSaga {
    NewSaga {
        id,
        definition: "order".into(),
        version: 7,
        input: br#"{"qty":3}"#.to_vec(),
    }
}

fn started(step: &str) -> RecordKind {
    RecordKind::StepStarted {
        step: step.into(),
        attempt: 1,
    }
}

fn failed_for_good(step: &str) -> RecordKind {
    RecordKind::StepFailed {
        step: step.into(),
        attempt: 1,
        effect: StepEffect::NoEffect,
        error: "no".into(),
        will_retry: false,
    }
}

/// Every function below, in order.
pub async fn all(log: &dyn SagaLog) {
    sequence_numbers_are_gap_free_and_state_follows_records(log).await;
    creating_an_existing_saga_is_refused(log).await;
    a_taken_over_lease_is_fenced_off(log).await;
    a_live_lease_of_another_owner_cannot_be_claimed(log).await;
    released_leases_are_claimable_and_renewals_need_the_current_epoch(log).await;
    finished_sagas_take_no_appends_and_no_claims(log).await;
    claim_unfinished_takes_only_active_unowned_sagas(log).await;
    unknown_sagas_are_not_found(log).await;
    list_is_paged_in_creation_order(log).await;
    prune_deletes_only_finished_sagas_older_than_the_cutoff(log).await;
    a_batch_is_appended_in_order_with_the_checks_of_append(log).await;
    create_with_appends_its_records_after_the_created_one(log).await;
}

pub async fn list_is_paged_in_creation_order(log: &dyn SagaLog) {
    let a = owner("pages");
    let mut created = Vec::new();
    for _ in 0..5 {
        let id = SagaId::random();
        log.create(new_saga(id), &a, LONG).await.unwrap();
        created.push(id);
    }
    let everything = log.list(None, None, usize::MAX).await.unwrap();
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = log.list(None, after, 2).await.unwrap();
        assert!(page.len() <= 2, "a page longer than its limit");
        after = page.last().map(ListCursor::after);
        let last_page = page.len() < 2;
        paged.extend(page);
        if last_page {
            break;
        }
    }
    let ids = |list: &[palisade::saga::SagaSummary]| list.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&paged),
        ids(&everything),
        "pages concatenate to the whole list"
    );
    let unique: HashSet<SagaId> = paged.iter().map(|s| s.id).collect();
    assert_eq!(unique.len(), paged.len(), "no saga is listed twice");
    assert!(created.iter().all(|id| unique.contains(id)));
    assert!(
        paged
            .windows(2)
            .all(|w| (w[0].created_at, w[0].id) < (w[1].created_at, w[1].id)),
        "oldest first, ties by id"
    );
    let running = log
        .list(Some(SagaState::Running), None, usize::MAX)
        .await
        .unwrap();
    assert!(running.iter().all(|s| s.state == SagaState::Running));
}

/// Deletes finished sagas: run it last, as it prunes other tests' too.
pub async fn prune_deletes_only_finished_sagas_older_than_the_cutoff(log: &dyn SagaLog) {
    let a = owner("prune");
    let finish = |outcome| RecordKind::SagaFinished { outcome };
    let completed = SagaId::random();
    let lease = log.create(new_saga(completed), &a, LONG).await.unwrap();
    log.append(&lease, finish(FinishedOutcome::Completed))
        .await
        .unwrap();
    let abandoned = SagaId::random();
    let lease = log.create(new_saga(abandoned), &a, LONG).await.unwrap();
    log.append(&lease, failed_for_good("x")).await.unwrap();
    log.append(
        &lease,
        RecordKind::SagaStuck {
            step: "x".into(),
            error: "e".into(),
        },
    )
    .await
    .unwrap();
    log.append(&lease, finish(FinishedOutcome::Abandoned))
        .await
        .unwrap();
    let stuck = SagaId::random();
    let lease = log.create(new_saga(stuck), &a, LONG).await.unwrap();
    log.append(&lease, failed_for_good("x")).await.unwrap();
    log.append(
        &lease,
        RecordKind::SagaStuck {
            step: "x".into(),
            error: "e".into(),
        },
    )
    .await
    .unwrap();
    let running = SagaId::random();
    log.create(new_saga(running), &a, LONG).await.unwrap();

    // Nothing finished before the Unix epoch.
    assert_eq!(
        log.prune_finished(SystemTime::UNIX_EPOCH, usize::MAX)
            .await
            .unwrap(),
        0
    );
    let cutoff = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(
        log.prune_finished(cutoff, 1).await.unwrap(),
        1,
        "the limit holds"
    );
    assert!(log.prune_finished(cutoff, usize::MAX).await.unwrap() >= 1);
    for gone in [completed, abandoned] {
        assert!(matches!(
            log.summary(gone).await,
            Err(LogError::NotFound { .. })
        ));
        assert!(matches!(
            log.history(gone).await,
            Err(LogError::NotFound { .. })
        ));
    }
    assert_eq!(log.summary(stuck).await.unwrap().state, SagaState::Stuck);
    assert_eq!(
        log.summary(running).await.unwrap().state,
        SagaState::Running
    );
    assert_eq!(log.history(stuck).await.unwrap().len(), 3);
    let finished_left = log.list(None, None, usize::MAX).await.unwrap();
    assert!(finished_left.iter().all(|s| !s.state.is_finished()));
}

pub async fn sequence_numbers_are_gap_free_and_state_follows_records(log: &dyn SagaLog) {
    let a = owner("a");
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &a, LONG).await.unwrap();
    assert_eq!(lease.epoch, 1);
    assert_eq!(log.append(&lease, started("pay")).await.unwrap(), 1);
    let output = RecordKind::StepCompleted {
        step: "pay".into(),
        output: vec![1, 2, 3],
    };
    assert_eq!(log.append(&lease, output.clone()).await.unwrap(), 2);
    assert_eq!(log.summary(id).await.unwrap().state, SagaState::Running);
    assert_eq!(
        log.append(&lease, failed_for_good("ship")).await.unwrap(),
        3
    );
    let history = log.history(id).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(history[0].kind, new_saga(id).created_record());
    assert_eq!(history[2].kind, output);
    assert!(history.iter().all(|r| r.epoch == 1));
    let summary = log.summary(id).await.unwrap();
    assert_eq!(summary.state, SagaState::Compensating);
    assert_eq!((summary.definition.as_str(), summary.version), ("order", 7));
    assert_eq!(summary.records, 4);
    assert_eq!(summary.owner, Some(a));
    assert_eq!(summary.epoch, 1);
}

pub async fn creating_an_existing_saga_is_refused(log: &dyn SagaLog) {
    let id = SagaId::random();
    log.create(new_saga(id), &owner("a"), LONG).await.unwrap();
    let again = log.create(new_saga(id), &owner("b"), LONG).await;
    assert!(matches!(again, Err(LogError::AlreadyExists { saga }) if saga == id));
}

pub async fn a_taken_over_lease_is_fenced_off(log: &dyn SagaLog) {
    let (a, b) = (owner("a"), owner("b"));
    let id = SagaId::random();
    let old = log.create(new_saga(id), &a, Duration::ZERO).await.unwrap();
    // Expired but unclaimed: a may still write (fencing is by epoch).
    log.append(&old, started("pay")).await.unwrap();
    let claimed = log.claim(id, &b, LONG).await.unwrap();
    assert_eq!(claimed.lease.epoch, 2);
    assert_eq!(claimed.state, SagaState::Running);
    assert_eq!(claimed.records.as_ref().unwrap().len(), 2);
    let late = log.append(&old, started("ship")).await;
    assert!(
        matches!(&late, Err(LogError::Fenced { epoch: 1, current: 2, owner, .. }) if *owner == a),
        "{late:?}"
    );
    assert!(matches!(
        log.renew(&old, LONG).await,
        Err(LogError::Fenced { .. })
    ));
    assert!(matches!(
        log.release(&old).await,
        Err(LogError::Fenced { .. })
    ));
    assert_eq!(
        log.append(&claimed.lease, started("ship")).await.unwrap(),
        2
    );
    let history = log.history(id).await.unwrap();
    assert_eq!(history.last().unwrap().epoch, 2);
}

pub async fn a_live_lease_of_another_owner_cannot_be_claimed(log: &dyn SagaLog) {
    let (a, b) = (owner("a"), owner("b"));
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &a, LONG).await.unwrap();
    let refused = log.claim(id, &b, LONG).await;
    assert!(
        matches!(&refused, Err(LogError::LeaseHeld { owner, .. }) if *owner == a),
        "{refused:?}"
    );
    // The same owner (restarted) takes it back at once, with a new epoch.
    let again = log.claim(id, &a, LONG).await.unwrap();
    assert_eq!(again.lease.epoch, lease.epoch + 1);
    assert!(matches!(
        log.append(&lease, started("x")).await,
        Err(LogError::Fenced { .. })
    ));
}

pub async fn released_leases_are_claimable_and_renewals_need_the_current_epoch(log: &dyn SagaLog) {
    let (a, b) = (owner("a"), owner("b"));
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &a, LONG).await.unwrap();
    log.renew(&lease, LONG).await.unwrap();
    log.release(&lease).await.unwrap();
    assert_eq!(log.summary(id).await.unwrap().owner, None);
    let claimed = log.claim(id, &b, LONG).await.unwrap();
    assert_eq!(claimed.lease.owner, b);
    assert_eq!(log.summary(id).await.unwrap().owner, Some(b));
    log.renew(&claimed.lease, LONG).await.unwrap();
}

pub async fn finished_sagas_take_no_appends_and_no_claims(log: &dyn SagaLog) {
    let a = owner("a");
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &a, LONG).await.unwrap();
    let finished = RecordKind::SagaFinished {
        outcome: FinishedOutcome::Compensated {
            error: "no stock".into(),
        },
    };
    log.append(&lease, finished).await.unwrap();
    assert_eq!(log.summary(id).await.unwrap().state, SagaState::Compensated);
    let after = log.append(&lease, RecordKind::StuckRetried).await;
    assert!(matches!(
        after,
        Err(LogError::Finished {
            state: SagaState::Compensated,
            ..
        })
    ));
    let claim = log.claim(id, &owner("b"), LONG).await;
    assert!(matches!(claim, Err(LogError::Finished { .. })));
}

pub async fn claim_unfinished_takes_only_active_unowned_sagas(log: &dyn SagaLog) {
    let (a, b, c) = (owner("cu-a"), owner("cu-b"), owner("cu-c"));
    // Expired running saga of a, expired compensating saga of a, stuck
    // saga of a (expired), finished saga (expired), live saga of a, own
    // live saga of c.
    let expired = SagaId::random();
    log.create(new_saga(expired), &a, Duration::ZERO)
        .await
        .unwrap();
    let compensating = SagaId::random();
    let l = log
        .create(new_saga(compensating), &a, Duration::ZERO)
        .await
        .unwrap();
    log.append(&l, failed_for_good("pay")).await.unwrap();
    let stuck = SagaId::random();
    let l = log
        .create(new_saga(stuck), &a, Duration::ZERO)
        .await
        .unwrap();
    log.append(&l, failed_for_good("pay")).await.unwrap();
    log.append(
        &l,
        RecordKind::SagaStuck {
            step: "pay".into(),
            error: "x".into(),
        },
    )
    .await
    .unwrap();
    let done = SagaId::random();
    let l = log
        .create(new_saga(done), &a, Duration::ZERO)
        .await
        .unwrap();
    log.append(
        &l,
        RecordKind::SagaFinished {
            outcome: FinishedOutcome::Completed,
        },
    )
    .await
    .unwrap();
    let live = SagaId::random();
    log.create(new_saga(live), &a, LONG).await.unwrap();
    let own = SagaId::random();
    log.create(new_saga(own), &c, LONG).await.unwrap();

    let claimed = log.claim_unfinished(&c, LONG, usize::MAX).await.unwrap();
    let mut ids: Vec<SagaId> = claimed.iter().map(|c| c.lease.saga).collect();
    ids.sort();
    let mut expected = vec![expired, compensating, own];
    expected.sort();
    // Other tests may have left claimable sagas in a shared log: only
    // check this test's sagas.
    let mine = [expired, compensating, stuck, done, live, own];
    ids.retain(|id| mine.contains(id));
    assert_eq!(ids, expected);
    for claim in &claimed {
        assert_eq!(claim.lease.owner, c);
        assert!(!claim.records.as_ref().unwrap().is_empty());
    }
    let state_of = |id| claimed.iter().find(|c| c.lease.saga == id).unwrap().state;
    assert_eq!(state_of(compensating), SagaState::Compensating);
    // Now leased to c: b gets none of them.
    let again = log.claim_unfinished(&b, LONG, usize::MAX).await.unwrap();
    assert!(again.iter().all(|c| !mine.contains(&c.lease.saga)));
    // The limit is honoured.
    let x = SagaId::random();
    log.create(new_saga(x), &a, Duration::ZERO).await.unwrap();
    let y = SagaId::random();
    log.create(new_saga(y), &a, Duration::ZERO).await.unwrap();
    assert_eq!(log.claim_unfinished(&b, LONG, 1).await.unwrap().len(), 1);
    // The stuck saga is listed by state and claimable on its own.
    let stuck_list = log
        .list(Some(SagaState::Stuck), None, usize::MAX)
        .await
        .unwrap();
    assert!(stuck_list.iter().any(|s| s.id == stuck));
    log.claim(stuck, &b, LONG).await.unwrap();
}

pub async fn unknown_sagas_are_not_found(log: &dyn SagaLog) {
    let id = SagaId::random();
    assert!(matches!(
        log.history(id).await,
        Err(LogError::NotFound { .. })
    ));
    assert!(matches!(
        log.summary(id).await,
        Err(LogError::NotFound { .. })
    ));
    assert!(matches!(
        log.claim(id, &owner("a"), LONG).await,
        Err(LogError::NotFound { .. })
    ));
    let lease = palisade::saga::Lease {
        saga: id,
        owner: owner("a"),
        epoch: 1,
    };
    assert!(matches!(
        log.append(&lease, started("x")).await,
        Err(LogError::NotFound { .. })
    ));
}

pub async fn a_batch_is_appended_in_order_with_the_checks_of_append(log: &dyn SagaLog) {
    let (a, b) = (owner("a"), owner("b"));
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &a, Duration::ZERO).await.unwrap();
    assert_eq!(log.append_batch(&lease, Vec::new()).await.unwrap(), None);
    let completed = RecordKind::StepCompleted {
        step: "pay".into(),
        output: vec![4],
    };
    let batch = vec![started("pay"), completed.clone(), started("ship")];
    assert_eq!(log.append_batch(&lease, batch).await.unwrap(), Some(3));
    assert_eq!(
        log.append(&lease, failed_for_good("ship")).await.unwrap(),
        4
    );
    let history = log.history(id).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(history[1].kind, started("pay"));
    assert_eq!(history[2].kind, completed);
    assert_eq!(history[3].kind, started("ship"));
    assert_eq!(
        log.summary(id).await.unwrap().state,
        SagaState::Compensating
    );
    // A fenced lease's batch leaves nothing behind.
    let claimed = log.claim(id, &b, LONG).await.unwrap();
    let late = log
        .append_batch(&lease, vec![started("x"), started("y")])
        .await;
    assert!(matches!(late, Err(LogError::Fenced { .. })), "{late:?}");
    assert_eq!(log.summary(id).await.unwrap().records, 5);
    // Nor does a batch for a finished saga.
    let finished = RecordKind::SagaFinished {
        outcome: FinishedOutcome::Compensated { error: "no".into() },
    };
    log.append(&claimed.lease, finished).await.unwrap();
    let after = log.append_batch(&claimed.lease, vec![started("z")]).await;
    assert!(matches!(after, Err(LogError::Finished { .. })), "{after:?}");
    assert_eq!(log.summary(id).await.unwrap().records, 6);
}

pub async fn create_with_appends_its_records_after_the_created_one(log: &dyn SagaLog) {
    let a = owner("a");
    let id = SagaId::random();
    let records = vec![started("pay"), failed_for_good("pay")];
    let lease = log
        .create_with(new_saga(id), &a, LONG, records)
        .await
        .unwrap();
    assert_eq!(lease.epoch, 1);
    let history = log.history(id).await.unwrap();
    assert_eq!(history.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(history[0].kind, new_saga(id).created_record());
    assert_eq!(history[1].kind, started("pay"));
    assert_eq!(history[2].kind, failed_for_good("pay"));
    let summary = log.summary(id).await.unwrap();
    assert_eq!(summary.state, SagaState::Compensating);
    assert_eq!(summary.records, 3);
    assert_eq!(summary.owner, Some(a.clone()));
    // The next append follows them; an existing id is refused.
    assert_eq!(log.append(&lease, started("undo")).await.unwrap(), 3);
    let again = log.create_with(new_saga(id), &a, LONG, Vec::new()).await;
    assert!(matches!(again, Err(LogError::AlreadyExists { saga }) if saga == id));
    // Without records it is `create`.
    let plain = SagaId::random();
    log.create_with(new_saga(plain), &a, LONG, Vec::new())
        .await
        .unwrap();
    assert_eq!(log.summary(plain).await.unwrap().records, 1);
}
