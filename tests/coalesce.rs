//! The coalescing (singleflight) layer, driven through its tower service
//! with paused time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::coalesce::{Coalesce, CoalesceConfig, CoalesceEventKind, CoalescedError};
use palisade::{BoxError, find_cause};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::{Layer, Service, ServiceExt};

const CALL_TIME: Duration = Duration::from_millis(100);

/// Counts the calls it receives and the calls still alive (not finished
/// and not dropped); each call takes `delay`, then answers `value <key>` or
/// fails.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    delay: Duration,
    fail: Arc<AtomicBool>,
}

impl Backend {
    fn new(delay: Duration) -> Self {
        Self {
            calls: Arc::default(),
            live: Arc::default(),
            delay,
            fail: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// Counts a call as alive until dropped.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(live))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<u64> for Backend {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let alive = Alive::new(&self.live);
        let (delay, fail) = (self.delay, self.fail.load(Ordering::SeqCst));
        Box::pin(async move {
            let _alive = alive;
            tokio::time::sleep(delay).await;
            if fail {
                Err(std::io::Error::other(format!("backend failed for {key}")))
            } else {
                Ok(format!("value {key}"))
            }
        })
    }
}

fn coalesce(max_in_flight_keys: usize) -> Coalesce {
    Coalesce::new(
        "test",
        CoalesceConfig::builder()
            .max_in_flight_keys(max_in_flight_keys)
            .build()
            .expect("valid config"),
    )
}

type Coalesced = palisade::coalesce::CoalesceService<Backend, u64, u64, fn(&u64) -> u64>;

fn service(coalesce: &Coalesce, backend: &Backend) -> Coalesced {
    coalesce
        .layer(identity as fn(&u64) -> u64)
        .layer(backend.clone())
}

fn identity(key: &u64) -> u64 {
    *key
}

async fn call(service: &Coalesced, key: u64) -> Result<String, BoxError> {
    service.clone().oneshot(key).await
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_for_one_key_share_one_inner_call() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    let results = futures::future::join_all((0..10).map(|_| call(&service, 7))).await;
    for result in results {
        assert_eq!(result.expect("shared response"), "value 7");
    }
    assert_eq!(backend.calls(), 1, "ten requests, one inner call");
    let metrics = coalesce.metrics();
    assert_eq!((metrics.calls, metrics.coalesced), (1, 9));
    assert_eq!(
        (metrics.in_flight_keys, metrics.waiters),
        (0, 0),
        "nothing left in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn different_keys_do_not_share_calls() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    let (a, b) = tokio::join!(call(&service, 1), call(&service, 2));
    assert_eq!(
        (a.unwrap(), b.unwrap()),
        ("value 1".into(), "value 2".into())
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_after_the_call_finished_starts_a_new_call() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    call(&service, 7).await.unwrap();
    call(&service, 7).await.unwrap();
    assert_eq!(
        backend.calls(),
        2,
        "only overlapping requests are coalesced"
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_reaches_every_waiter_with_the_inner_error_as_its_source() {
    let backend = Backend::new(CALL_TIME);
    backend.fail.store(true, Ordering::SeqCst);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    let (a, b) = tokio::join!(call(&service, 3), call(&service, 3));
    for error in [a.unwrap_err(), b.unwrap_err()] {
        assert!(error.downcast_ref::<CoalescedError>().is_some());
        let inner = find_cause::<std::io::Error>(&*error).expect("the inner io::Error");
        assert_eq!(inner.to_string(), "backend failed for 3");
    }
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_first_caller_does_not_cancel_the_call_for_the_others() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    let mut first = Box::pin(call(&service, 5));
    // Poll the first caller once so that it starts the shared call.
    assert!(futures::poll!(first.as_mut()).is_pending());
    let second = tokio::spawn({
        let service = service.clone();
        async move { call(&service, 5).await }
    });
    tokio::time::sleep(CALL_TIME / 2).await;
    assert_eq!(coalesce.metrics().waiters, 2);
    drop(first);
    assert_eq!(backend.live(), 1, "the shared call is still running");
    assert_eq!(second.await.unwrap().unwrap(), "value 5");
    assert_eq!(
        backend.calls(),
        1,
        "the second caller did not start another call"
    );
    assert_eq!(coalesce.metrics().abandoned, 0);
}

#[tokio::test(start_paused = true)]
async fn the_call_is_cancelled_when_every_waiter_leaves() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let mut events = coalesce.subscribe();
    let service = service(&coalesce, &backend);
    let mut first = Box::pin(call(&service, 9));
    let mut second = Box::pin(call(&service, 9));
    assert!(futures::poll!(first.as_mut()).is_pending());
    assert!(futures::poll!(second.as_mut()).is_pending());
    assert_eq!(backend.live(), 1);
    drop(first);
    drop(second);
    assert_eq!(
        backend.live(),
        0,
        "the inner call was dropped with its last waiter"
    );
    let metrics = coalesce.metrics();
    assert_eq!(
        (metrics.in_flight_keys, metrics.waiters, metrics.abandoned),
        (0, 0, 1)
    );
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            CoalesceEventKind::Started,
            CoalesceEventKind::Joined { waiters: 2 },
            CoalesceEventKind::Abandoned
        ]
    );
    assert_eq!(
        call(&service, 9).await.unwrap(),
        "value 9",
        "a new call for the key"
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_finished_call_reports_its_waiters() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let mut events = coalesce.subscribe();
    let service = service(&coalesce, &backend);
    let _ = tokio::join!(call(&service, 1), call(&service, 1), call(&service, 1));
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            CoalesceEventKind::Started,
            CoalesceEventKind::Joined { waiters: 2 },
            CoalesceEventKind::Joined { waiters: 3 },
            CoalesceEventKind::Completed { waiters: 3 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn beyond_max_in_flight_keys_a_request_runs_uncoalesced() {
    let backend = Backend::new(CALL_TIME);
    backend.fail.store(true, Ordering::SeqCst);
    let coalesce = coalesce(1);
    let service = service(&coalesce, &backend);
    let (a, b, c) = tokio::join!(call(&service, 1), call(&service, 2), call(&service, 1));
    assert!(a.unwrap_err().downcast_ref::<CoalescedError>().is_some());
    assert!(c.unwrap_err().downcast_ref::<CoalescedError>().is_some());
    let alone = b.unwrap_err();
    assert!(
        alone.downcast_ref::<std::io::Error>().is_some(),
        "an uncoalesced call's error comes back unwrapped: {alone:?}"
    );
    let metrics = coalesce.metrics();
    assert_eq!(
        (metrics.calls, metrics.coalesced, metrics.uncoalesced),
        (1, 1, 1)
    );
    assert_eq!(backend.calls(), 2, "key 1 once, key 2 on its own");
    assert_eq!(metrics.in_flight_keys, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_joins_reserves_nothing_downstream() {
    let backend = Backend::new(CALL_TIME);
    let bulkhead = Bulkhead::new(
        "downstream",
        BulkheadConfig::builder()
            .max_concurrent_calls(1)
            .build()
            .unwrap(),
    );
    let coalesce = coalesce(100);
    let service = coalesce
        .layer(|key: &u64| *key)
        .layer(bulkhead.layer().layer(backend.clone()));
    let mut calls = Vec::new();
    for _ in 0..5 {
        let mut service = service.clone();
        // Each caller readies its own clone first, as tower callers do.
        service.ready().await.unwrap();
        calls.push(service.call(4));
    }
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.expect("no BulkheadFull"), "value 4");
    }
    assert_eq!(bulkhead.metrics().rejected, 0);
    assert_eq!(bulkhead.metrics().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_leaves_nothing_behind_and_spares_the_other_waiters() {
    let backend = Backend::new(CALL_TIME);
    // 12 keys and room for 10: some requests run uncoalesced.
    let coalesce = coalesce(10);
    let service = service(&coalesce, &backend);
    let mut rng = StdRng::seed_from_u64(15);
    let mut cancelled = Vec::new();
    let mut kept = Vec::new();
    for i in 0..600u64 {
        // Keys 8 to 11 have only callers that give up: their calls are
        // abandoned.
        let key = if i % 5 == 0 {
            rng.random_range(0..8)
        } else {
            rng.random_range(0..12)
        };
        let start = Duration::from_millis(rng.random_range(0..300));
        let service = service.clone();
        if i % 5 == 0 {
            // A caller that waits to the end: it must get its answer.
            kept.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                (key, call(&service, key).await)
            }));
        } else {
            // A caller dropped at a random point (before, during or after
            // joining, maybe as the one that started the call).
            let patience = Duration::from_millis(rng.random_range(0..100));
            cancelled.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                let _ = tokio::time::timeout(patience, call(&service, key)).await;
            }));
        }
    }
    for task in cancelled {
        task.await.unwrap();
    }
    for task in kept {
        let (key, result) = task.await.unwrap();
        assert_eq!(
            result.expect("a kept waiter is answered"),
            format!("value {key}")
        );
    }
    let metrics = coalesce.metrics();
    assert_eq!(
        metrics.in_flight_keys, 0,
        "no key left in the map: {metrics:?}"
    );
    assert_eq!(metrics.waiters, 0, "no waiter left: {metrics:?}");
    assert_eq!(backend.live(), 0, "no inner call left running");
    assert!(
        metrics.abandoned > 0,
        "the storm cancelled some shared calls: {metrics:?}"
    );
    assert!(metrics.coalesced > 0, "and coalesced others: {metrics:?}");
    assert!(
        metrics.uncoalesced > 0,
        "and ran some uncoalesced: {metrics:?}"
    );
}

#[test]
fn max_in_flight_keys_must_be_at_least_one() {
    let error = CoalesceConfig::builder()
        .max_in_flight_keys(0)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "max_in_flight_keys");
    assert!(error.to_string().contains("must be 1 to"), "{error}");
}

/// Every call it receives panics after `CALL_TIME`.
#[derive(Clone, Default)]
struct Panics {
    calls: Arc<AtomicUsize>,
}

impl Service<u64> for Panics {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(CALL_TIME).await;
            panic!("the inner service panicked for {key}")
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_panics_its_poller_fails_the_other_waiters_and_leaves_nothing_behind() {
    let backend = Panics::default();
    let coalesce = coalesce(100);
    let mut events = coalesce.subscribe();
    let service = coalesce.layer(|key: &u64| *key).layer(backend.clone());
    let first = tokio::spawn(service.clone().oneshot(1));
    let second = tokio::spawn(service.clone().oneshot(1));
    let (first, second) = (first.await, second.await);
    // Whichever waiter polled the call when it panicked panics; the other
    // gets an error.
    let (panicked, answered) = match (first, second) {
        (Err(panic), Ok(answer)) | (Ok(answer), Err(panic)) => (panic, answer),
        other => panic!("one waiter panics, the other is answered: {other:?}"),
    };
    assert!(panicked.is_panic());
    let error = answered.expect_err("the call panicked");
    assert!(
        error.downcast_ref::<CoalescedError>().is_some(),
        "{error:?}"
    );
    assert!(error.to_string().contains("panicked"), "{error}");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
    let metrics = coalesce.metrics();
    assert_eq!(
        (metrics.in_flight_keys, metrics.waiters, metrics.abandoned),
        (0, 0, 0),
        "nothing left in flight: {metrics:?}"
    );
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            CoalesceEventKind::Started,
            CoalesceEventKind::Joined { waiters: 2 },
            CoalesceEventKind::Completed { waiters: 2 },
        ]
    );
    // The key is free: the next request makes a new call.
    let third = tokio::spawn(service.clone().oneshot(1)).await;
    assert!(third.expect_err("it panics too").is_panic());
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
    assert_eq!(coalesce.metrics().in_flight_keys, 0);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_polled_alone_and_left_hands_the_call_to_the_followers() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    // The leader polls the call alone (with its own waker), then two
    // followers join and wait; then the leader goes.
    let mut leader = Box::pin(call(&service, 6));
    assert!(futures::poll!(leader.as_mut()).is_pending());
    tokio::time::sleep(CALL_TIME / 4).await;
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { call(&service, 6).await })
        })
        .collect();
    tokio::time::sleep(CALL_TIME / 4).await;
    assert_eq!(coalesce.metrics().waiters, 3);
    drop(leader);
    assert_eq!(backend.live(), 1, "the call goes on for the followers");
    for follower in followers {
        assert_eq!(follower.await.unwrap().unwrap(), "value 6");
    }
    assert_eq!(backend.calls(), 1, "one inner call answered them");
    let metrics = coalesce.metrics();
    assert_eq!(
        (metrics.in_flight_keys, metrics.waiters, metrics.abandoned),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn followers_that_leave_one_by_one_cancel_the_call_with_the_last() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(call(&service, 2))).collect();
    for waiter in &mut waiters {
        assert!(futures::poll!(waiter.as_mut()).is_pending());
    }
    tokio::time::sleep(CALL_TIME / 2).await;
    while waiters.len() > 1 {
        drop(waiters.remove(0));
        assert_eq!(backend.live(), 1, "the others still wait: the call goes on");
    }
    assert_eq!(coalesce.metrics().abandoned, 0);
    waiters.clear();
    assert_eq!(backend.live(), 0, "the last one to leave dropped the call");
    assert_eq!(backend.calls(), 1);
    let metrics = coalesce.metrics();
    assert_eq!(
        (metrics.in_flight_keys, metrics.waiters, metrics.abandoned),
        (0, 0, 1)
    );
}

/// Answers after yielding to the scheduler `yields` times; counts the
/// calls alive.
#[derive(Clone)]
struct Yields {
    live: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    yields: usize,
}

impl Service<u64> for Yields {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let alive = Alive::new(&self.live);
        let yields = self.yields;
        Box::pin(async move {
            let _alive = alive;
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            Ok(format!("value {key}"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_two_threads_polling_and_leaving_at_once_leave_nothing_behind() {
    let backend = Yields {
        live: Arc::default(),
        calls: Arc::default(),
        yields: 20,
    };
    let coalesce = coalesce(100);
    let service = coalesce.layer(|key: &u64| *key).layer(backend.clone());
    let mut rng = StdRng::seed_from_u64(23);
    let mut kept = Vec::new();
    let mut cancelled = Vec::new();
    for i in 0..2_000u64 {
        let key = rng.random_range(0..4);
        let service = service.clone();
        if i % 3 == 0 {
            kept.push(tokio::spawn(
                async move { (key, service.oneshot(key).await) },
            ));
        } else {
            let polls = rng.random_range(0..30);
            cancelled.push(tokio::spawn(async move {
                let mut call = std::pin::pin!(service.oneshot(key));
                for _ in 0..polls {
                    if futures::poll!(call.as_mut()).is_ready() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for task in cancelled {
        task.await.unwrap();
    }
    for task in kept {
        let (key, result) = task.await.unwrap();
        assert_eq!(
            result.expect("a kept waiter is answered"),
            format!("value {key}")
        );
    }
    let metrics = coalesce.metrics();
    assert_eq!(
        (metrics.in_flight_keys, metrics.waiters),
        (0, 0),
        "{metrics:?}"
    );
    assert_eq!(backend.live.load(Ordering::SeqCst), 0, "no inner call left");
    assert!(metrics.coalesced > 0, "{metrics:?}");
    assert!(
        (backend.calls.load(Ordering::SeqCst) as u64) < 2_000,
        "calls were shared: {metrics:?}"
    );
}

/// Counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Outer = palisade::coalesce::CoalesceService<Reentrant, u64, u64, fn(&u64) -> u64>;
type OuterFuture = <Outer as Service<u64>>::Future;

/// A backend whose call, on its first poll, asks the coalescing service
/// around it for the same key (so that a follower joins while the call is
/// being polled) and polls that follower once with `follower_waker`; then
/// it answers when `finish` fires.
#[derive(Clone)]
struct Reentrant {
    outer: Arc<std::sync::Mutex<Option<Outer>>>,
    follower: Arc<std::sync::Mutex<Option<Pin<Box<OuterFuture>>>>>,
    follower_waker: std::task::Waker,
    finish: Arc<std::sync::Mutex<Option<futures::channel::oneshot::Receiver<()>>>>,
    calls: Arc<AtomicUsize>,
}

impl Service<u64> for Reentrant {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        Box::pin(async move {
            let mut outer = this
                .outer
                .lock()
                .unwrap()
                .clone()
                .expect("the outer service");
            let mut follower = Box::pin(outer.call(key));
            let mut cx = Context::from_waker(&this.follower_waker);
            assert!(
                follower.as_mut().poll(&mut cx).is_pending(),
                "the call is being polled: the follower waits"
            );
            *this.follower.lock().unwrap() = Some(follower);
            let finish = this.finish.lock().unwrap().take().expect("one call");
            finish.await.expect("the test finishes the call");
            Ok(format!("value {key}"))
        })
    }
}

#[test]
fn a_follower_that_joined_while_the_leader_polled_alone_is_woken_to_drive_the_call() {
    let (finish, finished) = futures::channel::oneshot::channel();
    let follower_waker = Arc::new(CountingWaker::default());
    let backend = Reentrant {
        outer: Arc::default(),
        follower: Arc::default(),
        follower_waker: std::task::Waker::from(Arc::clone(&follower_waker)),
        finish: Arc::new(std::sync::Mutex::new(Some(finished))),
        calls: Arc::default(),
    };
    let coalesce = coalesce(100);
    let service: Outer = coalesce
        .layer(identity as fn(&u64) -> u64)
        .layer(backend.clone());
    *backend.outer.lock().unwrap() = Some(service.clone());

    // The leader polls the call alone, with its own waker; the follower
    // joins during that poll.
    let leader_waker = Arc::new(CountingWaker::default());
    let leader_waker_ref = std::task::Waker::from(Arc::clone(&leader_waker));
    let mut leader_cx = Context::from_waker(&leader_waker_ref);
    let mut leader = Box::pin(service.clone().call(1));
    assert!(leader.as_mut().poll(&mut leader_cx).is_pending());
    assert_eq!(coalesce.metrics().waiters, 2);
    let woken = follower_waker.0.load(Ordering::SeqCst);
    assert!(
        woken >= 1,
        "the follower is woken to poll the call again with a waker that reaches it"
    );

    // The leader is never polled again: the follower drives the call.
    let mut follower = backend
        .follower
        .lock()
        .unwrap()
        .take()
        .expect("the follower");
    let follower_waker_ref = std::task::Waker::from(Arc::clone(&follower_waker));
    let mut follower_cx = Context::from_waker(&follower_waker_ref);
    assert!(follower.as_mut().poll(&mut follower_cx).is_pending());
    finish.send(()).unwrap();
    assert!(
        follower_waker.0.load(Ordering::SeqCst) > woken,
        "the call's wake reaches the follower"
    );
    match follower.as_mut().poll(&mut follower_cx) {
        Poll::Ready(answer) => assert_eq!(answer.unwrap(), "value 1"),
        Poll::Pending => panic!("the follower drove the call to its answer"),
    }
    match leader.as_mut().poll(&mut leader_cx) {
        Poll::Ready(answer) => assert_eq!(answer.unwrap(), "value 1", "a clone for the leader"),
        Poll::Pending => panic!("the answer waits for the leader"),
    }
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
    let metrics = coalesce.metrics();
    assert_eq!((metrics.in_flight_keys, metrics.waiters), (0, 0));
    backend.outer.lock().unwrap().take();
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_leaves_hands_the_call_back_to_a_leader_that_polled_alone() {
    let backend = Backend::new(CALL_TIME);
    let coalesce = coalesce(100);
    let service = service(&coalesce, &backend);
    // The leader polls the call alone (with its own waker) ...
    let leader = tokio::spawn({
        let service = service.clone();
        async move { call(&service, 8).await }
    });
    tokio::time::sleep(CALL_TIME / 4).await;
    // ... then a follower polls it with the waker that wakes every waiter,
    // and goes.
    let mut follower = Box::pin(call(&service, 8));
    assert!(futures::poll!(follower.as_mut()).is_pending());
    drop(follower);
    assert_eq!(coalesce.metrics().waiters, 1);
    // Paused time: a leader that is never woken again would make the
    // timeout fire, not hang the test.
    let answer = tokio::time::timeout(CALL_TIME * 10, leader)
        .await
        .expect("the leader is woken when the call answers");
    assert_eq!(answer.unwrap().unwrap(), "value 8");
    assert_eq!(backend.calls(), 1);
    assert_eq!(coalesce.metrics().in_flight_keys, 0);
}

#[test]
fn the_response_future_is_send_for_a_key_that_is_send_but_not_sync() {
    #[derive(Clone, PartialEq, Eq)]
    struct Key(std::cell::Cell<u64>);
    impl std::hash::Hash for Key {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.get().hash(state);
        }
    }
    fn send<T: Send>() {}
    send::<palisade::coalesce::ResponseFuture<Backend, u64, Key>>();
}
