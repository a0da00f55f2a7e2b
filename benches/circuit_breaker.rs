//! What a call through the circuit breaker costs, next to the same call
//! without it and through peer crates.
//!
//! Every call is driven by hand: `poll_ready`, `call`, and one poll of the
//! response future with a no-op waker. No tokio runtime runs, so nothing
//! but the breaker itself (and, where configured, its clock) is measured.
//! The inner service is [`Echo`], which answers at once, so a case's figure
//! minus `bare` is the breaker's own cost per call.
//!
//! Groups (run one with `cargo bench --bench circuit_breaker -- closed/`):
//!
//! | group | what |
//! |---|---|
//! | `closed` | a successful call in CLOSED for each window and clock, with an idle subscriber (and a draining one), and peers |
//! | `open` | a rejected call, FORCED_OPEN and OPEN (entered in a runtime, and without one; of a static breaker), and peers |
//! | `closed-2-threads` | two threads calling clones of one service; time per call on each thread |
//! | `open-2-threads` | the same, rejected by an OPEN breaker, and failsafe's |
//! | `clock-read` | one read of each clock the breaker can time calls with |
//!
//! Built for benches, tokio carries the `test-util` feature (a
//! dev-dependency), so `tokio::time::Instant::now()` first looks for a
//! runtime's paused clock; `clock-read` shows what that adds.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use futures::task::noop_waker_ref;
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use palisade::classify::Outcome;
use palisade::clock::CallClock;
use tower::{Layer, Service};
use tower_resilience_circuitbreaker::CircuitBreakerLayer as PeerLayer;

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

/// Makes one call like [`call_now`], but polls again at once whenever the
/// service or its response is not ready. With two threads, a peer's
/// response future can find its lock held by the other thread; the other
/// thread's release wakes it, but the waker is a no-op, so it is polled
/// again as an executor would once woken.
#[inline]
fn call_until_done<S: Service<u64>>(
    service: &mut S,
    request: u64,
) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(noop_waker_ref());
    loop {
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    let mut response = pin!(service.call(request));
    loop {
        match response.as_mut().poll(&mut cx) {
            Poll::Ready(result) => return result,
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

/// One breaker configuration measured in CLOSED.
struct ClosedCase {
    name: &'static str,
    window: SlidingWindow,
    slow_calls: bool,
    clock: CallClock,
}

const COUNT_WINDOW: SlidingWindow = SlidingWindow::count(100);
const TIME_WINDOW: SlidingWindow = SlidingWindow::time(10);

const CLOSED_CASES: [ClosedCase; 9] = [
    ClosedCase {
        name: "count",
        window: COUNT_WINDOW,
        slow_calls: false,
        clock: CallClock::Tokio,
    },
    ClosedCase {
        name: "count+slow/tokio",
        window: COUNT_WINDOW,
        slow_calls: true,
        clock: CallClock::Tokio,
    },
    ClosedCase {
        name: "count+slow/coarse",
        window: COUNT_WINDOW,
        slow_calls: true,
        clock: CallClock::Coarse,
    },
    ClosedCase {
        name: "time/tokio",
        window: TIME_WINDOW,
        slow_calls: false,
        clock: CallClock::Tokio,
    },
    ClosedCase {
        name: "time/coarse",
        window: TIME_WINDOW,
        slow_calls: false,
        clock: CallClock::Coarse,
    },
    ClosedCase {
        name: "time+slow/tokio",
        window: TIME_WINDOW,
        slow_calls: true,
        clock: CallClock::Tokio,
    },
    ClosedCase {
        name: "time+slow/coarse",
        window: TIME_WINDOW,
        slow_calls: true,
        clock: CallClock::Coarse,
    },
    ClosedCase {
        name: "consecutive",
        window: SlidingWindow::consecutive_failures(5),
        slow_calls: false,
        clock: CallClock::Tokio,
    },
    ClosedCase {
        name: "consecutive+slow/coarse",
        window: SlidingWindow::consecutive_failures(5),
        slow_calls: true,
        clock: CallClock::Coarse,
    },
];

/// The configuration of a breaker that stays CLOSED under successful calls
/// and, once opened, stays OPEN for longer than any benchmark runs.
fn config(window: SlidingWindow, slow_calls: bool, clock: CallClock) -> CircuitBreakerConfig {
    let mut config = CircuitBreakerConfig::builder()
        .sliding_window(window)
        .call_clock(clock)
        .wait_duration_in_open_state(Duration::from_secs(3600));
    if slow_calls {
        // No call here comes near it: every call is timed, none is slow.
        config = config.slow_call_duration_threshold(Duration::from_secs(1));
    }
    config
        .build()
        .expect("benchmark breaker configurations are valid")
}

fn breaker(window: SlidingWindow, slow_calls: bool, clock: CallClock) -> CircuitBreaker {
    CircuitBreaker::new("bench", config(window, slow_calls, clock))
}

fn count_breaker() -> CircuitBreaker {
    breaker(COUNT_WINDOW, false, CallClock::Tokio)
}

/// Like [`count_breaker`], but never freed: calls copy a pointer instead of
/// counting references.
fn static_count_breaker() -> CircuitBreaker {
    CircuitBreaker::new_static("bench", config(COUNT_WINDOW, false, CallClock::Tokio))
}

/// tower-resilience's breaker with a window of the last 100 calls, like `count`.
fn peer_count_layer() -> PeerLayer {
    PeerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .wait_duration_in_open(Duration::from_secs(3600))
        .build()
        .expect("tower-resilience configuration is valid")
}

fn bench_service<S: Service<u64>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut service: S,
) {
    group.bench_function(name, |b| {
        b.iter(|| black_box(call_now(&mut service, black_box(7))))
    });
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed");
    bench_service(&mut group, "bare", Echo);
    for case in &CLOSED_CASES {
        let breaker = breaker(case.window, case.slow_calls, case.clock);
        bench_service(&mut group, case.name, breaker.layer().layer(Echo));
    }
    bench_service(
        &mut group,
        "count/static",
        static_count_breaker().layer().layer(Echo),
    );
    // One subscriber that never drains.
    let observed = count_breaker();
    let _transitions = observed.subscribe();
    bench_service(
        &mut group,
        "count+idle_subscriber",
        observed.layer().layer(Echo),
    );
    // Its buffer fills during the warm-up: then each call only counts the
    // event the subscriber missed.
    let observed = count_breaker();
    let _every_call = observed.subscribe_all();
    bench_service(
        &mut group,
        "count+idle_subscriber_all",
        observed.layer().layer(Echo),
    );
    // One that takes each call's event after the call: a send and a
    // receive per call.
    let observed = count_breaker();
    let mut every_call = observed.subscribe_all();
    let mut service = observed.layer().layer(Echo);
    group.bench_function("count+draining_subscriber_all", |b| {
        b.iter(|| {
            let response = call_now(&mut service, black_box(7));
            black_box(every_call.try_recv().is_ok());
            black_box(response)
        })
    });

    // The state machine without tower: the breaker's counterpart of
    // failsafe's `call(closure)`.
    let breaker = count_breaker();
    group.bench_function("permit/count", |b| {
        b.iter(|| match breaker.try_acquire() {
            Ok(permit) => permit.record(black_box(Outcome::Success)),
            Err(rejected) => panic!("a CLOSED breaker rejected a call: {rejected}"),
        })
    });

    let failsafe_default = failsafe::Config::new().build();
    group.bench_function("failsafe/default", |b| {
        b.iter(|| black_box(failsafe_default.call(|| Ok::<u64, ()>(black_box(7)))))
    });
    let failsafe_consecutive = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(3600)),
        ))
        .build();
    group.bench_function("failsafe/consecutive", |b| {
        b.iter(|| black_box(failsafe_consecutive.call(|| Ok::<u64, ()>(black_box(7)))))
    });

    bench_service(
        &mut group,
        "tower-resilience/count",
        peer_count_layer().layer(Echo),
    );
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");

    let forced = count_breaker();
    forced.transition_to_forced_open();
    bench_service(&mut group, "forced_open", forced.layer().layer(Echo));

    // A real OPEN, entered in a runtime (kept, not driven) as a service's
    // breaker is: the wait is armed, and rejections read the coarse clock.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let opened = count_breaker();
    {
        let _entered = runtime.enter();
        opened.transition_to_open().expect("CLOSED -> OPEN");
    }
    bench_service(&mut group, "open", opened.layer().layer(Echo));

    // The same, for a breaker that is never freed: its rejections hold it
    // without counting a reference.
    let opened_static = static_count_breaker();
    {
        let _entered = runtime.enter();
        opened_static.transition_to_open().expect("CLOSED -> OPEN");
    }
    bench_service(&mut group, "open/static", opened_static.layer().layer(Echo));

    // Entered without a runtime: every rejection reads tokio's clock to see
    // whether the wait is over.
    let opened = count_breaker();
    opened.transition_to_open().expect("CLOSED -> OPEN");
    bench_service(&mut group, "open/no-runtime", opened.layer().layer(Echo));

    // The state machine without tower, as failsafe's `call(closure)` is:
    // the rejection is a `BreakerOpen` value, not boxed into a `BoxError`.
    let opened_in_runtime = count_breaker();
    {
        let _entered = runtime.enter();
        opened_in_runtime
            .transition_to_open()
            .expect("CLOSED -> OPEN");
    }
    group.bench_function("permit/open", |b| {
        b.iter(|| black_box(opened_in_runtime.try_acquire().is_err()))
    });

    let failsafe_open = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            1,
            failsafe::backoff::constant(Duration::from_secs(3600)),
        ))
        .build();
    let tripped = failsafe_open.call(|| Err::<u64, ()>(()));
    assert!(
        tripped.is_err() && !failsafe_open.is_call_permitted(),
        "failsafe did not open"
    );
    group.bench_function("failsafe/open", |b| {
        b.iter(|| black_box(failsafe_open.call(|| Ok::<u64, ()>(black_box(7)))))
    });

    let (layer, handle) = PeerLayer::builder()
        .wait_duration_in_open(Duration::from_secs(3600))
        .build_with_handle()
        .expect("tower-resilience configuration is valid");
    futures::executor::block_on(handle.force_open());
    assert!(handle.is_open(), "tower-resilience did not open");
    bench_service(&mut group, "tower-resilience/open", layer.layer(Echo));
    group.finish();
}

const THREADS: usize = 2;

/// Runs `iters` calls on each of [`THREADS`] threads at once, each with its
/// own worker from `make_worker`, and returns the time one thread took for
/// its `iters` calls (the mean over the threads): criterion then reports the
/// time per call as each thread sees it.
fn time_on_threads<W: FnMut(u64) + Send>(make_worker: &impl Fn() -> W, iters: u64) -> Duration {
    let start_line = Barrier::new(THREADS);
    let total: Duration = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let mut worker = make_worker();
                let start_line = &start_line;
                scope.spawn(move || {
                    start_line.wait();
                    let started = Instant::now();
                    for request in 0..iters {
                        worker(black_box(request));
                    }
                    started.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a benchmark thread panicked"))
            .sum()
    });
    total / THREADS as u32
}

fn bench_service_on_threads<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, service: S)
where
    S: Service<u64> + Clone + Send,
{
    let make_worker = || {
        let mut service = service.clone();
        move |request| {
            let _ = black_box(call_until_done(&mut service, request));
        }
    };
    group.bench_function(name, |b| {
        b.iter_custom(|iters| time_on_threads(&make_worker, iters))
    });
}

fn closed_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed-2-threads");
    bench_service_on_threads(&mut group, "bare", Echo);
    bench_service_on_threads(&mut group, "count", count_breaker().layer().layer(Echo));
    bench_service_on_threads(
        &mut group,
        "count/static",
        static_count_breaker().layer().layer(Echo),
    );

    let failsafe_default = failsafe::Config::new().build();
    let make_worker = || {
        let breaker = failsafe_default.clone();
        move |request| {
            let _ = black_box(breaker.call(|| Ok::<u64, ()>(request)));
        }
    };
    group.bench_function("failsafe/default", |b| {
        b.iter_custom(|iters| time_on_threads(&make_worker, iters))
    });

    bench_service_on_threads(
        &mut group,
        "tower-resilience/count",
        peer_count_layer().layer(Echo),
    );
    group.finish();
}

/// An OPEN breaker (entered in a runtime: the wait is armed) rejecting
/// calls from two threads at once, each through its own clone of one
/// service: what a rejection storm costs each thread.
fn open_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("open-2-threads");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let opened = count_breaker();
    let opened_static = static_count_breaker();
    {
        let _entered = runtime.enter();
        opened.transition_to_open().expect("CLOSED -> OPEN");
        opened_static.transition_to_open().expect("CLOSED -> OPEN");
    }
    bench_service_on_threads(&mut group, "open", opened.layer().layer(Echo));
    bench_service_on_threads(&mut group, "open/static", opened_static.layer().layer(Echo));

    let failsafe_open = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            1,
            failsafe::backoff::constant(Duration::from_secs(3600)),
        ))
        .build();
    let tripped = failsafe_open.call(|| Err::<u64, ()>(()));
    assert!(tripped.is_err(), "failsafe did not open");
    let make_worker = || {
        let breaker = failsafe_open.clone();
        move |request| {
            let _ = black_box(breaker.call(|| Ok::<u64, ()>(request)));
        }
    };
    group.bench_function("failsafe/open", |b| {
        b.iter_custom(|iters| time_on_threads(&make_worker, iters))
    });
    group.finish();
}

fn clock_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock-read");
    group.bench_function("std::time::Instant::now", |b| b.iter(Instant::now));
    group.bench_function("tokio::time::Instant::now", |b| {
        b.iter(tokio::time::Instant::now)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = closed, open, closed_two_threads, open_two_threads, clock_read
}
criterion_main!(benches);
