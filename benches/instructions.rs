//! Instruction counts per call, for `valgrind --tool=callgrind`: robust
//! where wall-clock figures are not (a shared or busy machine).
//!
//! `cargo bench --bench instructions --no-run` builds it; then
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*measured_calls*' \
//!     target/release/deps/instructions-<hash> <case>
//! ```
//!
//! runs 100,000 calls of `<case>` (after 100 unmeasured ones) and counts
//! only the instructions of those calls: divide callgrind's total by
//! 100,000. Without a case it lists them. Calls are driven by hand as in
//! the criterion benches (`poll_ready`, `call`, one poll with a no-op
//! waker), with no runtime. Instruction counts do not see what an atomic
//! read-modify-write or a cache miss costs: use them to compare code
//! paths, and criterion for time.
//!
//! Built with `--features metrics`, the layers report to no-op handles;
//! with `PALISADE_BENCH_RECORDER=prometheus` in the environment they report
//! to a `metrics-exporter-prometheus` recorder installed first.

use std::hint::black_box;
use std::time::Duration;

use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use tower::{Layer, Service};

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::{Echo, call_now};

const CALLS: u64 = 100_000;

/// tower's `Retry` with the least policy one can write (as in `benches/retry.rs`).
#[derive(Clone)]
struct Attempts(usize);

impl<E> tower::retry::Policy<u64, u64, E> for Attempts {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

fn breaker_config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .sliding_window(SlidingWindow::count(100))
        .wait_duration_in_open_state(Duration::from_secs(3600))
        .build()
        .expect("valid config")
}

#[inline(never)]
fn measured_calls<S: Service<u64>>(service: &mut S) {
    for request in 0..CALLS {
        let _ = black_box(call_now(service, black_box(request)));
    }
}

fn run<S: Service<u64>>(mut service: S) {
    for request in 0..100 {
        let _ = call_now(&mut service, request);
    }
    measured_calls(&mut service);
}

/// An echo service that first takes every event its breaker's subscriber
/// holds (the previous call's), as a subscriber that keeps up does. Its
/// future's type is not [`Echo`]'s, so that the breaker's service and
/// future types of the other cases keep one caller each and are inlined
/// as they were.
struct DrainingEcho {
    events: palisade::events::EventStream<palisade::circuit_breaker::CircuitBreakerEvent>,
}

impl Service<u64> for DrainingEcho {
    type Response = u64;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u64, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        while black_box(self.events.try_recv()).is_ok() {}
        std::future::ready(Ok(request))
    }
}

const CASES: [&str; 36] = [
    "bare",
    "breaker/count",
    "breaker/count/static",
    "breaker/count/subscribed",
    "breaker/count/subscribed-all",
    "breaker/count/subscribed-all/draining",
    "breaker/forced_open",
    "breaker/open",
    "breaker/open/no-runtime",
    "breaker/open/static",
    "retry/default-budget",
    "retry/no-budget",
    "retry/attempt-timeout",
    "tower/retry",
    "bulkhead",
    "tower/concurrency-limit",
    "rate-limiter",
    "adaptive-concurrency",
    "fallback/value",
    "pipeline/empty",
    "pipeline/all-stages",
    "pipeline/by-hand",
    "pipeline/sizes",
    "balance/round-robin/3",
    "balance/round-robin/3000",
    "balance/weighted/3",
    "balance/weighted/3000",
    "balance/least-loaded/3",
    "balance/least-loaded/3000",
    "balance/peak-ewma/3",
    "balance/peak-ewma/3000",
    "balance/peak-ewma-coarse/3",
    "balance/peak-ewma-tokio/3",
    "balance/random/3",
    "coalesce/unshared",
    "coalesce/unshared/tower-resilience",
];

fn main() {
    // `cargo bench` passes `--bench` (and criterion's options given to a
    // whole `cargo bench -- ...` run, with their values); the case is the
    // first argument that names one. Run by `cargo bench` without a case,
    // it lists them and succeeds, so that a whole run goes on.
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let case = arguments
        .iter()
        .find(|argument| CASES.contains(&argument.as_str()))
        .or_else(|| {
            let by_cargo_bench = arguments.iter().any(|argument| argument == "--bench");
            (!by_cargo_bench)
                .then(|| {
                    arguments
                        .iter()
                        .find(|argument| !argument.starts_with("--"))
                })
                .flatten()
        })
        .cloned();
    let Some(case) = case else {
        println!("cases: {}", CASES.join(" "));
        return;
    };
    #[cfg(feature = "metrics")]
    if std::env::var("PALISADE_BENCH_RECORDER").as_deref() == Ok("prometheus") {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder");
    }
    match case.as_str() {
        "bare" => run(Echo),
        "breaker/count" => run(CircuitBreaker::new("bench", breaker_config())
            .layer()
            .layer(Echo)),
        "breaker/count/static" => run(CircuitBreaker::new_static("bench", breaker_config())
            .layer()
            .layer(Echo)),
        // One subscriber that never drains: `subscribe()` (transitions and
        // rejections), `subscribe_all()` (also every call's outcome).
        "breaker/count/subscribed" => {
            let breaker = CircuitBreaker::new("bench", breaker_config());
            let _idle_subscriber = breaker.subscribe();
            run(breaker.layer().layer(Echo))
        }
        "breaker/count/subscribed-all" => {
            let breaker = CircuitBreaker::new("bench", breaker_config());
            let _idle_subscriber = breaker.subscribe_all();
            let mut service = breaker.layer().layer(Echo);
            // Its buffer (`event_capacity`, 256) fills first: the measured
            // calls find it full and count the events it misses.
            for request in 0..breaker.config().event_capacity() as u64 {
                let _ = call_now(&mut service, request);
            }
            run(service)
        }
        // A subscriber that takes each call's event: a send and a receive
        // per call.
        "breaker/count/subscribed-all/draining" => {
            let breaker = CircuitBreaker::new("bench", breaker_config());
            let events = breaker.subscribe_all();
            run(breaker.layer().layer(DrainingEcho { events }))
        }
        "breaker/forced_open" => {
            let breaker = CircuitBreaker::new("bench", breaker_config());
            breaker.transition_to_forced_open();
            run(breaker.layer().layer(Echo))
        }
        // Opened in a runtime (kept, not driven), as a service's breaker
        // is: the wait is armed and rejections read the coarse clock.
        "breaker/open" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime");
            let breaker = CircuitBreaker::new("bench", breaker_config());
            {
                let _entered = runtime.enter();
                breaker.transition_to_open().expect("CLOSED -> OPEN");
            }
            run(breaker.layer().layer(Echo))
        }
        // As `breaker/open`, of a breaker that is never freed: the error
        // holds it without counting a reference.
        "breaker/open/static" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime");
            let breaker = CircuitBreaker::new_static("bench", breaker_config());
            {
                let _entered = runtime.enter();
                breaker.transition_to_open().expect("CLOSED -> OPEN");
            }
            run(breaker.layer().layer(Echo))
        }
        // Opened with no runtime: every rejection reads tokio's clock.
        "breaker/open/no-runtime" => {
            let breaker = CircuitBreaker::new("bench", breaker_config());
            breaker.transition_to_open().expect("CLOSED -> OPEN");
            run(breaker.layer().layer(Echo))
        }
        "retry/default-budget" => run(palisade::retry::Retry::new(
            "bench",
            palisade::retry::RetryConfig::default(),
        )
        .layer()
        .layer(Echo)),
        "retry/no-budget" => run(palisade::retry::Retry::new(
            "bench",
            palisade::retry::RetryConfig::builder()
                .no_budget()
                .build()
                .expect("valid config"),
        )
        .layer()
        .layer(Echo)),
        // A call answered at once starts no timer, so it needs no runtime.
        "retry/attempt-timeout" => run(palisade::retry::Retry::new(
            "bench",
            palisade::retry::RetryConfig::builder()
                .attempt_timeout(Duration::from_secs(5))
                .build()
                .expect("valid config"),
        )
        .layer()
        .layer(Echo)),
        "tower/retry" => run(tower::retry::RetryLayer::new(Attempts(2)).layer(Echo)),
        "bulkhead" => run(palisade::bulkhead::Bulkhead::new(
            "bench",
            palisade::bulkhead::BulkheadConfig::builder()
                .max_concurrent_calls(64)
                .build()
                .expect("valid config"),
        )
        .layer()
        .layer(Echo)),
        "tower/concurrency-limit" => run(tower::limit::ConcurrencyLimitLayer::new(64).layer(Echo)),
        "rate-limiter" => run(palisade::rate_limit::RateLimiter::new(
            "bench",
            palisade::rate_limit::RateLimiterConfig::builder()
                .limit_for_period(1_000_000_000)
                .limit_refresh_period(Duration::from_secs(1))
                .build()
                .expect("valid config"),
        )
        .layer()
        .layer(Echo)),
        "adaptive-concurrency" => run(palisade::adaptive_concurrency::AdaptiveConcurrency::new(
            "bench",
            palisade::adaptive_concurrency::AdaptiveConcurrencyConfig::builder()
                .initial_limit(64)
                .build()
                .expect("valid config"),
        )
        .layer()
        .layer(Echo)),
        "fallback/value" => run(palisade::fallback::Fallback::new(
            "bench",
            palisade::fallback::FallbackConfig::builder()
                .value(0)
                .build()
                .expect("valid config"),
        )
        .layer()
        .layer(Echo)),
        "pipeline/empty" | "pipeline/all-stages" | "pipeline/by-hand" | "pipeline/sizes" => {
            pipeline_case(&case)
        }
        balance if balance.starts_with("balance/") => balance_case(balance),
        // Every call has a key of its own (the request): it starts and
        // finishes a shared call that nobody joins.
        "coalesce/unshared" => run(palisade::coalesce::Coalesce::with_defaults("bench")
            .layer(|request: &u64| *request)
            .layer(Echo)),
        "coalesce/unshared/tower-resilience" => {
            run(tower_resilience_coalesce::CoalesceLayer::new(|request: &u64| *request).layer(Echo))
        }
        other => {
            eprintln!("unknown case {other:?}; cases: {}", CASES.join(" "));
            std::process::exit(2);
        }
    }
}

/// The pipeline cases: tower's `Timeout` and the rate limiter read tokio's
/// clock, so they run inside a runtime (entered, not driven).
fn pipeline_case(case: &str) {
    use palisade::bulkhead::{Bulkhead, BulkheadConfig};
    use palisade::pipeline::Pipeline;
    use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
    use palisade::retry::{Retry, RetryConfig};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let limiter = || {
        RateLimiter::new(
            "bench",
            RateLimiterConfig::builder()
                .limit_for_period(1_000_000_000)
                .limit_refresh_period(Duration::from_secs(1))
                .build()
                .expect("valid config"),
        )
    };
    let bulkhead = || {
        Bulkhead::new(
            "bench",
            BulkheadConfig::builder()
                .max_concurrent_calls(64)
                .build()
                .expect("valid config"),
        )
    };
    let retry = || {
        Retry::new(
            "bench",
            RetryConfig::builder()
                .max_attempts(3)
                .build()
                .expect("valid config"),
        )
    };
    let empty = || {
        Pipeline::builder("bench")
            .build()
            .expect("valid pipeline")
            .layer(Echo)
    };
    let full = || {
        Pipeline::builder("bench")
            .retry(retry())
            .circuit_breaker(CircuitBreaker::with_defaults("bench"))
            .rate_limiter(limiter())
            .timeout(Duration::from_secs(5))
            .bulkhead(bulkhead())
            .build()
            .expect("valid pipeline")
            .layer(Echo)
    };
    let by_hand = || {
        tower::ServiceBuilder::new()
            .layer(retry().layer())
            .layer(CircuitBreaker::with_defaults("bench").layer())
            .layer(limiter().layer())
            .timeout(Duration::from_secs(5))
            .layer(bulkhead().layer())
            .service(Echo)
    };
    fn sizes<S: Service<u64>>(name: &str, service: &S) {
        println!(
            "{name}: service {} bytes, response future {} bytes",
            std::mem::size_of_val(service),
            std::mem::size_of::<S::Future>()
        );
    }
    match case {
        "pipeline/sizes" => {
            sizes("bare", &Echo);
            sizes("pipeline, empty", &empty());
            sizes("pipeline, five stages", &full());
            sizes("five layers by hand", &by_hand());
        }
        "pipeline/empty" => run(empty()),
        "pipeline/all-stages" => run(full()),
        _ => run(by_hand()),
    }
}

/// `balance/<picker>/<instances>`: a pick and a call of a balancer over a
/// static registry of that many instances (weights 1 to 3);
/// `balance/peak-ewma-coarse/<instances>` and
/// `balance/peak-ewma-tokio/<instances>` time calls by the coarse clock
/// and by tokio's instead of the default TSC clock.
fn balance_case(case: &str) {
    use palisade::discovery::{Balance, BalanceConfig, Instance, Picker, StaticRegistry, make_fn};

    let mut parts = case.split('/').skip(1);
    let picker = match parts.next() {
        Some("round-robin") => Picker::RoundRobin,
        Some("random") => Picker::Random,
        Some("weighted") => Picker::Weighted,
        Some("least-loaded") => Picker::LeastLoaded,
        Some("peak-ewma" | "peak-ewma-coarse" | "peak-ewma-tokio") => Picker::peak_ewma(),
        _ => {
            eprintln!("unknown case {case:?}; cases: {}", CASES.join(" "));
            std::process::exit(2);
        }
    };
    let instances: usize = parts
        .next()
        .and_then(|n| n.parse().ok())
        .expect("balance/<picker>/<instances>");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let registry = StaticRegistry::new((0..instances).map(|i| {
        Instance::builder(
            "bench",
            format!("i{i}"),
            format!("10.0.{}.{}:80", i / 250, i % 250),
        )
        .weight(1 + (i % 3) as u32)
        .build()
        .expect("valid instance")
    }));
    // `peak-ewma-coarse`, `peak-ewma-tokio`: calls timed by the coarse
    // clock, by tokio's; else the default (the TSC).
    let mut config = BalanceConfig::builder().picker(picker).rng_seed(7);
    if case.contains("coarse") {
        config = config.call_clock(palisade::clock::CallClock::Coarse);
    } else if case.contains("tokio") {
        config = config.call_clock(palisade::clock::CallClock::Tokio);
    }
    let config = config.build().expect("valid config");
    let mut balance = Balance::new(
        "bench",
        &registry,
        make_fn(|_: &Instance| Ok::<_, std::convert::Infallible>(Echo)),
        config,
    )
    .expect("valid name");
    // Let the watch task deliver the instances.
    runtime.block_on(async {
        use tower::ServiceExt;
        let _ = ServiceExt::<u64>::ready(&mut balance).await;
    });
    assert_eq!(balance.metrics().instances, instances);
    run(balance)
}
