//! Regression tests for the balancer's semantics (issue 12, items 7 and 9):
//! outlier-detection limits, peak-EWMA decay, ejection state across weight
//! updates, event order, ejection-count decay and seeded picks. Every test
//! runs on paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::clock::CallClock;
use palisade::discovery::{
    Balance, BalanceConfig, BalanceEventKind, Instance, OutlierDetection, Picker, StaticRegistry,
    make_fn,
};
use tower::{Service, ServiceExt, service_fn};

fn instance(id: &str, address: &str, weight: u32) -> Instance {
    Instance::builder("users", id, address)
        .weight(weight)
        .build()
        .expect("valid instance")
}

async fn call<S>(balance: &mut S) -> Result<String, BoxError>
where
    S: Service<(), Response = String, Error = BoxError>,
{
    balance.ready().await?.call(()).await
}

/// Lets the balancer's watch task and timers run.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// The per-instance snapshot of `id`.
fn endpoint<S: Clone + Send + Sync + 'static>(
    balance: &Balance<S>,
    id: &str,
) -> palisade::discovery::EndpointMetrics {
    balance
        .metrics()
        .endpoints
        .into_iter()
        .find(|e| e.id.as_str() == id)
        .expect("the instance is known")
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

#[test]
fn ejection_times_past_a_year_are_rejected_naming_the_field() {
    let base = OutlierDetection::builder()
        .base_ejection_time(Duration::MAX)
        .max_ejection_time(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(base.field(), "base_ejection_time");
    let max = OutlierDetection::builder()
        .max_ejection_time(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(max.field(), "max_ejection_time");
    let over = OutlierDetection::builder()
        .max_ejection_time(YEAR + Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert_eq!(over.field(), "max_ejection_time");
    let longest = YEAR;
    OutlierDetection::builder()
        .base_ejection_time(longest)
        .max_ejection_time(longest)
        .build()
        .expect("a year is accepted");
}

#[tokio::test(start_paused = true)]
async fn the_longest_accepted_ejection_time_ejects_without_panicking() {
    let registry = StaticRegistry::new([
        instance("a", "10.0.0.1:80", 1),
        instance("b", "10.0.0.2:80", 1),
    ]);
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(service_fn(move |()| {
            let id = id.clone();
            async move {
                match id.as_str() {
                    "a" => Err::<String, BoxError>("a is down".into()),
                    _ => Ok(id),
                }
            }
        }))
    });
    let longest = YEAR;
    let outliers = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(longest)
        .max_ejection_time(longest)
        .build()
        .unwrap();
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(outliers)
        .build()
        .unwrap();
    let mut balance = Balance::new("users", &registry, make, config).unwrap();
    for _ in 0..4 {
        let _ = call(&mut balance).await;
    }
    assert!(endpoint(&balance, "a").ejected);
}

/// One instance "x" whose calls take `latency_ms` (read at each call), with
/// the peak-EWMA picker (decay 10 s).
fn timed_balancer(
    latency_ms: &Arc<AtomicU64>,
) -> Balance<
    impl Service<(), Response = String, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    timed_balancer_on(latency_ms, CallClock::Tokio)
}

/// [`timed_balancer`] timing calls by `clock`.
fn timed_balancer_on(
    latency_ms: &Arc<AtomicU64>,
    clock: CallClock,
) -> Balance<
    impl Service<(), Response = String, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    let registry = StaticRegistry::new([instance("x", "10.0.0.1:80", 1)]);
    let latency_ms = Arc::clone(latency_ms);
    let make = make_fn(move |instance: &Instance| {
        let id = instance.id().to_string();
        let latency_ms = Arc::clone(&latency_ms);
        Ok::<_, BoxError>(service_fn(move |()| {
            let id = id.clone();
            let latency = Duration::from_millis(latency_ms.load(Ordering::Relaxed));
            async move {
                tokio::time::sleep(latency).await;
                Ok::<_, BoxError>(id)
            }
        }))
    });
    let config = BalanceConfig::builder()
        .picker(Picker::PeakEwma {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        })
        .call_clock(clock)
        .build()
        .unwrap();
    assert_eq!(config.call_clock(), clock);
    Balance::new("users", &registry, make, config).unwrap()
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_times_calls_by_the_configured_call_clock() {
    // A call that waits 100 ms of paused tokio time: tokio's clock (the
    // default) measures 100 ms; the coarse clock, real time only, sees
    // the real time the call took (microseconds, a fast answer that leaves
    // the 30 ms default estimate as it is, unless the machine stalls: the
    // bound leaves room for that).
    let latency_ms = Arc::new(AtomicU64::new(100));
    let mut tokio_timed = timed_balancer_on(&latency_ms, CallClock::Tokio);
    call(&mut tokio_timed).await.unwrap();
    let measured = ms(endpoint(&tokio_timed, "x").ewma_latency);
    assert!((measured - 100.0).abs() < 0.01, "tokio's clock: {measured}");

    let mut coarse_timed = timed_balancer_on(&latency_ms, CallClock::Coarse);
    call(&mut coarse_timed).await.unwrap();
    let measured = ms(endpoint(&coarse_timed, "x").ewma_latency);
    assert!(measured < 90.0, "the coarse clock: {measured}");

    // The TSC clock (the default), real time only, likewise.
    assert_eq!(BalanceConfig::default().call_clock(), CallClock::Tsc);
    let mut tsc_timed = timed_balancer_on(&latency_ms, CallClock::Tsc);
    call(&mut tsc_timed).await.unwrap();
    let measured = ms(endpoint(&tsc_timed, "x").ewma_latency);
    assert!(measured < 90.0, "the TSC clock: {measured}");
}

#[tokio::test]
async fn the_default_tsc_clock_times_calls_in_real_time() {
    // A call that takes 30 ms of real time (a real timer: this test does
    // not pause tokio's clock, so that its calls take real time) raises
    // the 1 ms default estimate to about 30 ms.
    let registry = StaticRegistry::new([instance("x", "10.0.0.1:80", 1)]);
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(service_fn(move |()| {
            let id = id.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, BoxError>(id)
            }
        }))
    });
    let config = BalanceConfig::builder()
        .picker(Picker::PeakEwma {
            default_rtt: Duration::from_millis(1),
            decay: Duration::from_secs(10),
        })
        .build()
        .unwrap();
    let mut balance = Balance::new("users", &registry, make, config).unwrap();
    let started = std::time::Instant::now();
    call(&mut balance).await.unwrap();
    let took = ms(started.elapsed());
    let measured = ms(endpoint(&balance, "x").ewma_latency);
    assert!(
        (29.0..=took + 1.0).contains(&measured),
        "the TSC clock measured {measured} ms of a call that took {took} ms"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

#[tokio::test(start_paused = true)]
async fn a_fast_answer_after_idle_time_never_raises_the_decayed_estimate() {
    let latency_ms = Arc::new(AtomicU64::new(100));
    let mut balance = timed_balancer(&latency_ms);
    call(&mut balance).await.unwrap();
    assert!((ms(endpoint(&balance, "x").ewma_latency) - 100.0).abs() < 0.01);

    tokio::time::advance(Duration::from_secs(10)).await;
    let idle = ms(endpoint(&balance, "x").ewma_latency);
    assert!(
        (idle - 36.79).abs() < 0.05,
        "decayed by e after 10 s: {idle}"
    );

    latency_ms.store(20, Ordering::Relaxed);
    call(&mut balance).await.unwrap();
    let after = ms(endpoint(&balance, "x").ewma_latency);
    assert!(
        after <= idle,
        "a 20 ms answer raised the estimate from {idle} ms to {after} ms"
    );
    assert!(after > 36.0, "blended over the call's 20 ms only: {after}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_above_the_decayed_estimate_replaces_it() {
    let latency_ms = Arc::new(AtomicU64::new(100));
    let mut balance = timed_balancer(&latency_ms);
    call(&mut balance).await.unwrap();

    tokio::time::advance(Duration::from_secs(30)).await;
    latency_ms.store(20, Ordering::Relaxed);
    call(&mut balance).await.unwrap();
    let after = ms(endpoint(&balance, "x").ewma_latency);
    assert!(
        (after - 20.0).abs() < 0.01,
        "100 ms decayed for 30 s is 5 ms, below the 20 ms answer: {after}"
    );
}

/// Each instance's client answers its id at once.
fn echo_balancer(
    registry: &StaticRegistry,
    picker: Picker,
) -> Balance<
    impl Service<(), Response = String, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(service_fn(move |()| {
            let id = id.clone();
            async move { Ok::<_, BoxError>(id) }
        }))
    });
    let config = BalanceConfig::builder().picker(picker).build().unwrap();
    Balance::new("users", registry, make, config).unwrap()
}

/// A waker that, when an event wakes the subscriber, makes `calls` calls
/// through `balance` right there, inside the balancer's publish, and
/// records which instances answered.
struct CallOnWake<B> {
    balance: std::sync::Mutex<B>,
    calls: usize,
    answered: std::sync::Mutex<Vec<String>>,
}

impl<B> std::task::Wake for CallOnWake<B>
where
    B: Service<(), Response = String, Error = BoxError> + Send,
{
    fn wake(self: Arc<Self>) {
        use std::task::{Context, Poll};
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut balance = self.balance.lock().unwrap();
        for _ in 0..self.calls {
            assert!(matches!(balance.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let mut future = std::pin::pin!(balance.call(()));
            let Poll::Ready(answer) = future.as_mut().poll(&mut cx) else {
                panic!("echo answers at once");
            };
            let answer = answer.unwrap_or_else(|e| e.to_string());
            self.answered.lock().unwrap().push(answer);
        }
    }
}

/// Polls `events.recv()` once with `waker` (registering it), lets `change`
/// happen and the balancer react, then returns the event received.
async fn event_seen_by<W: std::task::Wake + Send + Sync + 'static>(
    events: &mut palisade::events::EventStream<palisade::discovery::BalanceEvent>,
    waker: &Arc<W>,
    change: impl FnOnce(),
) -> (String, BalanceEventKind) {
    use std::future::Future;
    let waker = std::task::Waker::from(Arc::clone(waker));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut recv = Box::pin(events.recv());
    assert!(recv.as_mut().poll(&mut cx).is_pending(), "no event yet");
    change();
    settle().await;
    let std::task::Poll::Ready(event) = recv.as_mut().poll(&mut cx) else {
        panic!("the change was announced");
    };
    let event = event.expect("open stream");
    (event.id.to_string(), event.kind)
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_woken_by_removed_or_added_already_sees_the_new_set() {
    let registry = StaticRegistry::new([
        instance("a", "10.0.0.1:80", 1),
        instance("b", "10.0.0.2:80", 1),
    ]);
    let mut balance = echo_balancer(&registry, Picker::RoundRobin);
    call(&mut balance).await.unwrap();
    let mut events = balance.subscribe();

    let waker = Arc::new(CallOnWake {
        balance: std::sync::Mutex::new(balance.clone()),
        calls: 4,
        answered: std::sync::Mutex::new(Vec::new()),
    });
    let event = event_seen_by(&mut events, &waker, || {
        registry.replace([instance("b", "10.0.0.2:80", 1)]);
    })
    .await;
    assert_eq!(event, ("a".into(), BalanceEventKind::Removed));
    assert_eq!(
        *waker.answered.lock().unwrap(),
        ["b", "b", "b", "b"],
        "calls made on Removed(a) reached a"
    );

    let waker = Arc::new(CallOnWake {
        balance: std::sync::Mutex::new(balance.clone()),
        calls: 4,
        answered: std::sync::Mutex::new(Vec::new()),
    });
    let event = event_seen_by(&mut events, &waker, || {
        registry.replace([
            instance("b", "10.0.0.2:80", 1),
            instance("c", "10.0.0.3:80", 1),
        ]);
    })
    .await;
    assert!(matches!(event, (id, BalanceEventKind::Added { .. }) if id == "c"));
    let mut answered = waker.answered.lock().unwrap().clone();
    answered.sort();
    assert_eq!(
        answered,
        ["b", "b", "c", "c"],
        "calls made on Added(c) missed c"
    );
}

/// "a" always fails, "b" always answers; outlier detection ejects after one
/// failure for 10 s × the ejection count, at most half the instances.
fn failing_a_balancer(
    registry: &StaticRegistry,
    picker: Picker,
) -> Balance<
    impl Service<(), Response = String, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    let make = make_fn(|instance: &Instance| {
        let id = instance.id().to_string();
        Ok::<_, BoxError>(service_fn(move |()| {
            let id = id.clone();
            async move {
                match id.as_str() {
                    "a" => Err::<String, BoxError>("a is down".into()),
                    _ => Ok(id),
                }
            }
        }))
    });
    let outliers = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_time(Duration::from_secs(300))
        .max_ejection_percent(50)
        .build()
        .unwrap();
    let config = BalanceConfig::builder()
        .picker(picker)
        .outlier_detection(outliers)
        .build()
        .unwrap();
    Balance::new("users", registry, make, config).unwrap()
}

/// Calls until "a" is ejected (it fails every call it gets).
async fn eject_a<S>(balance: &mut Balance<S>)
where
    S: Service<(), Response = String, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    for _ in 0..10 {
        let _ = call(balance).await;
        if endpoint(balance, "a").ejected {
            return;
        }
    }
    panic!("a was never ejected");
}

#[tokio::test(start_paused = true)]
async fn a_weight_only_update_keeps_the_instances_ejection_and_its_count() {
    let registry = StaticRegistry::new([
        instance("a", "10.0.0.1:80", 1),
        instance("b", "10.0.0.2:80", 1),
    ]);
    let mut balance = failing_a_balancer(&registry, Picker::RoundRobin);
    let mut events = balance.subscribe();
    eject_a(&mut balance).await;
    assert_eq!(endpoint(&balance, "a").ejections, 1);

    registry.replace([
        instance("a", "10.0.0.1:80", 5),
        instance("b", "10.0.0.2:80", 1),
    ]);
    settle().await;
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, BalanceEventKind::Updated { .. })),
        "{kinds:?}"
    );
    let a = endpoint(&balance, "a");
    assert!(a.ejected, "the update ended a's ejection");
    assert_eq!(a.ejections, 1, "the update reset a's ejection count");
    for _ in 0..10 {
        assert_eq!(call(&mut balance).await.unwrap(), "b");
    }

    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert!(
        !endpoint(&balance, "a").ejected,
        "the ejection still ends on time"
    );
    eject_a(&mut balance).await;
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&BalanceEventKind::Ejected {
            duration: Duration::from_secs(20),
            ejections: 2
        }),
        "{kinds:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_ejection_count_falls_by_one_per_base_ejection_time_back_in_the_picks() {
    let registry = StaticRegistry::new([
        instance("a", "10.0.0.1:80", 1),
        instance("b", "10.0.0.2:80", 1),
    ]);
    let mut balance = failing_a_balancer(&registry, Picker::RoundRobin);
    let mut events = balance.subscribe();
    let ejected = |events: &mut palisade::events::EventStream<_>| {
        events
            .drain()
            .into_iter()
            .map(|e: palisade::discovery::BalanceEvent| e.kind)
            .filter(|k| matches!(k, BalanceEventKind::Ejected { .. }))
            .collect::<Vec<_>>()
    };
    let ejection = |seconds, ejections| BalanceEventKind::Ejected {
        duration: Duration::from_secs(seconds),
        ejections,
    };

    // Ejected at once after each return: 10 s, 20 s, 30 s.
    for n in 1..=3u32 {
        eject_a(&mut balance).await;
        assert_eq!(ejected(&mut events), [ejection(u64::from(n) * 10, n)]);
        tokio::time::advance(Duration::from_secs(u64::from(n) * 10)).await;
        settle().await;
    }
    assert_eq!(endpoint(&balance, "a").ejections, 3);

    // 25 s back in the picks without a failure: two base times, 3 - 2 = 1.
    tokio::time::advance(Duration::from_secs(25)).await;
    assert_eq!(endpoint(&balance, "a").ejections, 1);
    eject_a(&mut balance).await;
    assert_eq!(ejected(&mut events), [ejection(20, 2)]);

    // Long healthy: back to the base time.
    tokio::time::advance(Duration::from_secs(20)).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(3_600)).await;
    assert_eq!(endpoint(&balance, "a").ejections, 0);
    eject_a(&mut balance).await;
    assert_eq!(ejected(&mut events), [ejection(10, 1)]);
}

/// The ids of 64 calls through `balance` and then 64 through a clone of it.
async fn picks<S>(balance: &mut Balance<S>) -> Vec<String>
where
    S: Service<(), Response = String, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(call(balance).await.unwrap());
    }
    let mut clone = balance.clone();
    for _ in 0..64 {
        ids.push(call(&mut clone).await.unwrap());
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn a_seeded_balancer_and_its_clones_replay_the_same_picks() {
    let registry = StaticRegistry::new([
        instance("a", "10.0.0.1:80", 1),
        instance("b", "10.0.0.2:80", 3),
        instance("c", "10.0.0.3:80", 6),
    ]);
    for picker in [
        Picker::Random,
        Picker::Weighted,
        Picker::LeastLoaded,
        Picker::peak_ewma(),
    ] {
        let seeded = |seed| {
            let make = make_fn(|instance: &Instance| {
                let id = instance.id().to_string();
                Ok::<_, BoxError>(service_fn(move |()| {
                    let id = id.clone();
                    async move { Ok::<_, BoxError>(id) }
                }))
            });
            // Peak-EWMA's picks replay only if the latencies do: tokio's
            // paused clock times every call at 0 (the default TSC clock
            // measures real, varying, microseconds).
            let config = BalanceConfig::builder()
                .picker(picker)
                .rng_seed(seed)
                .call_clock(CallClock::Tokio)
                .build()
                .unwrap();
            assert_eq!(config.rng_seed(), Some(seed));
            Balance::new("users", &registry, make, config).unwrap()
        };
        let first = picks(&mut seeded(7)).await;
        let again = picks(&mut seeded(7)).await;
        let other = picks(&mut seeded(8)).await;
        assert_eq!(first, again, "{picker:?}: same seed, same picks");
        assert_ne!(first, other, "{picker:?}: another seed, other picks");
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 3, "{picker:?}: every instance picked");
    }
}
