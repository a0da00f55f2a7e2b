//! The hedging layer, driven through its tower service with paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::BoxError;
use palisade::classify::{Outcome, classify_fn};
use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay, HedgeEventKind};
use palisade::retry::{RetryBudget, RetryPolicy};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// How one attempt behaves: how long it takes and whether it fails.
#[derive(Clone, Copy)]
struct Step {
    takes: Duration,
    fails: bool,
}

fn ok(ms: u32) -> Step {
    Step {
        takes: MS * ms,
        fails: false,
    }
}

fn fail(ms: u32) -> Step {
    Step {
        takes: MS * ms,
        fails: true,
    }
}

/// Plays a script of attempts in the order they are called (then answers
/// at once), counting attempts and the attempt futures alive.
#[derive(Clone, Default)]
struct Backend {
    script: Arc<Mutex<VecDeque<Step>>>,
    attempts: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    fn scripted(steps: impl IntoIterator<Item = Step>) -> Self {
        let backend = Self::default();
        backend.script.lock().unwrap().extend(steps);
        backend
    }

    fn service(
        &self,
    ) -> impl Service<u32, Response = String, Error = BoxError, Future: Send> + Clone + Send + use<>
    {
        let backend = self.clone();
        service_fn(move |id: u32| {
            let attempt = backend.attempts.fetch_add(1, Ordering::SeqCst);
            let step = backend.script.lock().unwrap().pop_front().unwrap_or(ok(0));
            backend.alive.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(Arc::clone(&backend.alive));
            async move {
                tokio::time::sleep(step.takes).await;
                drop(alive);
                if step.fails {
                    Err(format!("attempt {attempt} failed").into())
                } else {
                    Ok(format!("{id} from attempt {attempt}"))
                }
            }
        })
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }
}

fn fixed(delay_ms: u32, copies: u32) -> Hedge {
    Hedge::new(
        "test",
        HedgeConfig::builder()
            .delay(HedgeDelay::Fixed(MS * delay_ms))
            .max_hedged_attempts(copies)
            .no_budget()
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_raced_by_a_copy_that_wins_and_cancels_it() {
    let backend = Backend::scripted([ok(1000), ok(30)]);
    let hedge = fixed(100, 1);
    let mut events = hedge.subscribe();
    let mut service = hedge.layer().layer(backend.service());
    let started = Instant::now();
    let answer = service.ready().await.unwrap().call(7).await.unwrap();
    assert_eq!(answer, "7 from attempt 1");
    assert_eq!(
        started.elapsed(),
        MS * 130,
        "the delay, then the copy's time"
    );
    assert_eq!(backend.alive(), 0, "the slow first attempt was dropped");
    let metrics = hedge.metrics();
    assert_eq!(
        (metrics.calls, metrics.hedges_started, metrics.hedge_wins),
        (1, 1, 1)
    );
    let kinds: Vec<_> = events.drain().into_iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [
            HedgeEventKind::Started {
                attempt: 1,
                after: MS * 100,
                after_failure: false
            },
            HedgeEventKind::Won { attempt: 1 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_delay_starts_no_copy() {
    let backend = Backend::scripted([ok(99)]);
    let hedge = fixed(100, 3);
    let mut service = hedge.layer().layer(backend.service());
    assert_eq!(
        service.ready().await.unwrap().call(1).await.unwrap(),
        "1 from attempt 0"
    );
    tokio::time::sleep(MS * 1000).await;
    assert_eq!(backend.attempts(), 1);
    assert_eq!(hedge.metrics().hedges_started, 0);
}

#[tokio::test(start_paused = true)]
async fn copies_start_a_delay_apart_up_to_max_hedged_attempts() {
    let backend = Backend::scripted([ok(1000), ok(1000), ok(1000), ok(1000)]);
    let hedge = fixed(50, 3);
    let mut events = hedge.subscribe();
    let mut service = hedge.layer().layer(backend.service());
    let started = Instant::now();
    let answer = service.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(
        answer, "1 from attempt 0",
        "the first attempt still answers first"
    );
    assert_eq!(started.elapsed(), MS * 1000);
    assert_eq!(backend.attempts(), 4);
    assert_eq!(backend.alive(), 0, "the copies were dropped");
    let starts: Vec<_> = events
        .drain()
        .into_iter()
        .filter_map(|event| match event.kind {
            HedgeEventKind::Started { attempt, after, .. } => Some((attempt, after)),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [(1, MS * 50), (2, MS * 100), (3, MS * 150)]);
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_starts_the_next_copy_at_once() {
    let backend = Backend::scripted([fail(10), ok(20)]);
    let hedge = fixed(1000, 1);
    let mut events = hedge.subscribe();
    let mut service = hedge.layer().layer(backend.service());
    let started = Instant::now();
    let answer = service.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(answer, "3 from attempt 1");
    assert_eq!(started.elapsed(), MS * 30);
    assert_eq!(
        events.try_recv().unwrap().kind,
        HedgeEventKind::Started {
            attempt: 1,
            after: MS * 10,
            after_failure: true
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_is_not_retryable_is_the_answer() {
    let backend = Backend::scripted([fail(10), ok(20)]);
    let hedge = fixed(1000, 1);
    let not_retryable = classify_fn(|r: Result<&String, &BoxError>| match r {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure { retryable: false },
    });
    let mut service = hedge
        .layer()
        .with_classifier(not_retryable)
        .layer(backend.service());
    let error = service.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(error.to_string(), "attempt 0 failed");
    assert_eq!(backend.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_call_fails_with_the_last_failure() {
    let backend = Backend::scripted([fail(50), fail(10), fail(30)]);
    let hedge = fixed(20, 2);
    let mut service = hedge.layer().layer(backend.service());
    let error = service.ready().await.unwrap().call(3).await.unwrap_err();
    // Attempt 1 starts at 20 ms and fails at 30 ms, starting attempt 2 at
    // once; attempt 0 fails at 50 ms, attempt 2 at 60 ms.
    assert_eq!(error.to_string(), "attempt 2 failed");
    assert_eq!(backend.attempts(), 3);
    assert_eq!(backend.alive(), 0);
}

/// Hedges even requests only: a stand-in for an idempotency rule.
#[derive(Clone)]
struct EvenIsIdempotent;

impl RetryPolicy<u32, String, BoxError> for EvenIsIdempotent {
    fn clone_request(&self, request: &u32) -> Option<u32> {
        Some(*request)
    }

    fn may_retry(&self, request: &u32) -> bool {
        request % 2 == 0
    }
}

#[tokio::test(start_paused = true)]
async fn requests_the_policy_will_not_send_twice_are_sent_once() {
    let backend = Backend::scripted([ok(500), ok(500), ok(0)]);
    let hedge = fixed(100, 1);
    let mut service = hedge
        .layer()
        .with_policy(EvenIsIdempotent)
        .layer(backend.service());
    let answer = service.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(answer, "1 from attempt 0");
    assert_eq!(backend.attempts(), 1, "odd: not hedged");
    let answer = service.ready().await.unwrap().call(2).await.unwrap();
    assert_eq!(answer, "2 from attempt 2", "even: hedged");
    assert_eq!(hedge.metrics().not_hedgeable, 1);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_http_retry_policy_hedges_only_idempotent_methods() {
    use palisade::retry::HttpRetryPolicy;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    let hedge = fixed(10, 1);
    let mut service = hedge.layer().with_policy(HttpRetryPolicy).layer(service_fn(
        move |_: http::Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(MS * 100).await;
                Ok::<_, BoxError>(http::Response::new(()))
            }
        },
    ));
    let post = http::Request::post("http://orders/")
        .body(String::new())
        .unwrap();
    service.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "POST is sent once");
    let get = http::Request::get("http://orders/1")
        .body(String::new())
        .unwrap();
    service.ready().await.unwrap().call(get).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "GET is hedged");
}

#[tokio::test(start_paused = true)]
async fn copies_draw_from_the_budget_so_hedging_cannot_double_the_load() {
    // No reserve; each call deposits a quarter of a token.
    let budget = RetryBudget::builder()
        .min_retries_per_second(0)
        .retry_ratio(0.25)
        .build()
        .unwrap();
    let hedge = Hedge::new(
        "budgeted",
        HedgeConfig::builder()
            .delay(HedgeDelay::Fixed(MS * 10))
            .budget(budget.clone())
            .build()
            .unwrap(),
    );
    let backend = Backend::scripted((0..200).map(|_| ok(100)));
    let mut service = hedge.layer().layer(backend.service());
    for id in 0..100 {
        service.ready().await.unwrap().call(id).await.unwrap();
    }
    let metrics = hedge.metrics();
    assert_eq!(metrics.hedges_started, 25, "a quarter of the calls");
    assert_eq!(metrics.budget_exhaustions, 75);
    assert_eq!(backend.attempts(), 125);
    assert_eq!(budget.exhaustions(), 75);
}

#[tokio::test(start_paused = true)]
async fn the_percentile_delay_is_learned_from_the_previous_window() {
    let hedge = Hedge::new(
        "learning",
        HedgeConfig::builder()
            .delay(HedgeDelay::LatencyPercentile {
                percentile: 0.9,
                min_samples: 10,
                window: MS * 1000,
            })
            .no_budget()
            .build()
            .unwrap(),
    );
    // Calls of 10 to 100 ms: the 90th percentile is about 90 ms.
    let backend = Backend::scripted((1..=100).map(|i| ok(10 * (i % 10 + 1))));
    let mut service = hedge.layer().layer(backend.service());
    let mut id = 0;
    let started = Instant::now();
    while started.elapsed() < MS * 1000 {
        service.ready().await.unwrap().call(id).await.unwrap();
        id += 1;
    }
    assert_eq!(hedge.metrics().hedges_started, 0, "nothing known: no copy");
    // The next call closes the first window.
    service.ready().await.unwrap().call(id).await.unwrap();
    let delay = hedge.metrics().delay.expect("learned");
    assert!((MS * 89..=MS * 91).contains(&delay), "{delay:?}");

    backend.script.lock().unwrap().clear();
    backend.script.lock().unwrap().extend([ok(5000), ok(10)]);
    let started = Instant::now();
    let answer = service.ready().await.unwrap().call(999).await.unwrap();
    assert!(answer.ends_with(&format!("attempt {}", id + 2)), "{answer}");
    // The timer rounds the delay up to the millisecond.
    let elapsed = started.elapsed();
    assert!(
        (delay + MS * 10..=delay + MS * 11).contains(&elapsed),
        "{elapsed:?} after a delay of {delay:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_leaves_no_attempt_alive() {
    let hedge = fixed(20, 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let steps: Vec<Step> = (0..4000)
        .map(|_| {
            let takes = rng.random_range(0..200);
            if rng.random_bool(0.2) {
                fail(takes)
            } else {
                ok(takes)
            }
        })
        .collect();
    let backend = Backend::scripted(steps);
    let service = hedge.layer().layer(backend.service());
    let mut tasks = Vec::new();
    for id in 0..500 {
        let mut service = service.clone();
        let drop_after = MS * rng.random_range(0..150);
        tasks.push(tokio::spawn(async move {
            let call = async move { service.ready().await?.call(id).await };
            tokio::time::timeout(drop_after, call).await
        }));
    }
    let mut dropped = 0;
    for task in tasks {
        if task.await.unwrap().is_err() {
            dropped += 1;
        }
    }
    assert!(dropped > 50, "{dropped} dropped");
    assert_eq!(
        backend.alive(),
        0,
        "every attempt was dropped with its call"
    );
    assert!(hedge.metrics().hedges_started > 100);
}

#[test]
fn the_builder_names_the_field_that_breaks_its_rule() {
    let field = |b: palisade::hedge::HedgeConfigBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(HedgeConfig::builder().max_hedged_attempts(0)),
        "max_hedged_attempts"
    );
    assert_eq!(
        field(HedgeConfig::builder().max_hedged_attempts(11)),
        "max_hedged_attempts"
    );
    assert_eq!(
        field(HedgeConfig::builder().delay(HedgeDelay::percentile(0.0))),
        "delay"
    );
    assert_eq!(
        field(HedgeConfig::builder().delay(HedgeDelay::percentile(f64::NAN))),
        "delay"
    );
    let no_samples = HedgeDelay::LatencyPercentile {
        percentile: 0.9,
        min_samples: 0,
        window: MS * 1000,
    };
    assert_eq!(field(HedgeConfig::builder().delay(no_samples)), "delay");
    assert_eq!(
        field(HedgeConfig::builder().event_capacity(0)),
        "event_capacity"
    );
}
