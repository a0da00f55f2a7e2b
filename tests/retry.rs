//! The retry layer, driven through its tower service with paused time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::backoff::{Backoff, Jitter};
use palisade::classify::{ClassifyExt, DefaultClassifier, Outcome, classify_fn};
use palisade::retry::{
    AttemptTimedOut, GiveUpReason, Retry, RetryBudget, RetryConfig, RetryConfigBuilder,
    RetryEventKind, RetryLayer, RetryPolicy, RetryTimedOut,
};
use palisade::{BoxError, find_cause};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// What the scripted backend does with one call.
#[derive(Clone, Debug)]
enum Step {
    Ok,
    Fail,
    /// Never answers (until cancelled).
    Hang,
}

/// A backend that follows a script (then repeats its last step) and notes
/// when each call arrived.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Step>>>,
    last: Arc<Mutex<Step>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(steps: &[Step]) -> Self {
        Self {
            script: Arc::new(Mutex::new(steps.iter().cloned().collect())),
            last: Arc::new(Mutex::new(steps.last().cloned().unwrap_or(Step::Ok))),
            arrivals: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.arrivals.lock().expect("arrivals").len()
    }

    /// Time between consecutive calls.
    fn gaps(&self) -> Vec<Duration> {
        let arrivals = self.arrivals.lock().expect("arrivals");
        arrivals.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Service<u32> for Scripted {
    type Response = u32;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.arrivals.lock().expect("arrivals").push(Instant::now());
        let step = {
            let mut script = self.script.lock().expect("script");
            match script.pop_front() {
                Some(step) => step,
                None => self.last.lock().expect("last").clone(),
            }
        };
        Box::pin(async move {
            match step {
                Step::Ok => Ok(request),
                Step::Fail => Err("backend unavailable".into()),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}

fn constant(delay: Duration) -> Backoff {
    Backoff::constant(delay).build().expect("valid backoff")
}

fn config() -> RetryConfigBuilder {
    RetryConfig::builder().backoff(constant(SECOND)).no_budget()
}

fn layer(builder: RetryConfigBuilder) -> RetryLayer {
    Retry::new("backend", builder.build().expect("valid config")).layer()
}

async fn call<S>(service: &mut S, request: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    service.ready().await?.call(request).await
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_after_the_backoff() {
    let backend = Scripted::new(&[Step::Fail, Step::Fail, Step::Ok]);
    let retry = layer(config().max_attempts(3));
    let mut service = retry.layer(backend.clone());
    let started = Instant::now();
    assert_eq!(call(&mut service, 7).await.expect("third attempt"), 7);
    assert_eq!(backend.calls(), 3);
    assert_eq!(backend.gaps(), [SECOND, SECOND]);
    assert_eq!(started.elapsed(), 2 * SECOND);
    let m = retry.retry().metrics();
    assert_eq!((m.succeeded_after_retry, m.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_without_jitter_doubles_each_wait() {
    let backend = Scripted::new(&[Step::Fail]);
    let backoff = Backoff::exponential(100 * MS, 2.0)
        .max_interval(SECOND)
        .build()
        .expect("valid");
    let mut service = layer(config().backoff(backoff).max_attempts(6)).layer(backend.clone());
    let _ = call(&mut service, 1).await;
    assert_eq!(
        backend.gaps(),
        [100 * MS, 200 * MS, 400 * MS, 800 * MS, SECOND]
    );
}

#[tokio::test(start_paused = true)]
async fn full_jitter_waits_stay_within_the_exponential_envelope() {
    let backend = Scripted::new(&[Step::Fail]);
    let backoff = Backoff::exponential(100 * MS, 2.0)
        .max_interval(SECOND)
        .jitter(Jitter::Full)
        .build()
        .expect("valid");
    let mut service = layer(config().backoff(backoff).max_attempts(6)).layer(backend.clone());
    let _ = call(&mut service, 1).await;
    let caps = [100 * MS, 200 * MS, 400 * MS, 800 * MS, SECOND];
    assert_eq!(backend.gaps().len(), caps.len(), "five retries");
    for (gap, cap) in backend.gaps().into_iter().zip(caps) {
        assert!(gap <= cap, "{gap:?} > {cap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let backend = Scripted::new(&[Step::Fail]);
    let retry = layer(config().max_attempts(4));
    let mut service = retry.layer(backend.clone());
    let mut events = retry.retry().subscribe();
    let err = call(&mut service, 1).await.unwrap_err();
    assert_eq!(err.to_string(), "backend unavailable");
    assert_eq!(backend.calls(), 4);
    assert_eq!(retry.retry().metrics().failed_after_retries, 1);
    let last = events.drain().pop().expect("events").kind;
    assert_eq!(
        last,
        RetryEventKind::Failed {
            attempts: 4,
            reason: GiveUpReason::AttemptsExhausted
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_the_classifier_calls_permanent_is_not_retried() {
    let backend = Scripted::new(&[Step::Fail, Step::Ok]);
    let retry =
        layer(config()).with_classifier(classify_fn(|r: Result<&u32, &BoxError>| match r {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure { retryable: false },
        }));
    let mut service = retry.layer(backend.clone());
    assert!(call(&mut service, 1).await.is_err());
    assert_eq!(backend.calls(), 1);
    assert_eq!(retry.retry().metrics().failed_without_retry, 1);
}

#[tokio::test(start_paused = true)]
async fn an_ok_response_classified_as_retryable_is_retried() {
    let backend = Scripted::new(&[Step::Ok]);
    let retry = layer(config().max_attempts(2))
        .with_classifier(DefaultClassifier.fail_responses(|r: &u32| *r == 13, true));
    let mut service = retry.layer(backend.clone());
    assert_eq!(
        call(&mut service, 13)
            .await
            .expect("last response returned"),
        13
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_cancelled_and_retried() {
    let backend = Scripted::new(&[Step::Hang, Step::Ok]);
    let retry = layer(config().attempt_timeout(2 * SECOND).max_attempts(2));
    let mut service = retry.layer(backend.clone());
    let started = Instant::now();
    assert_eq!(call(&mut service, 5).await.expect("second attempt"), 5);
    assert_eq!(started.elapsed(), 3 * SECOND, "2 s timeout + 1 s backoff");
    assert_eq!(retry.retry().metrics().attempt_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_timing_out_fails_with_attempt_timed_out() {
    let backend = Scripted::new(&[Step::Hang]);
    let mut service = layer(config().attempt_timeout(SECOND).max_attempts(2)).layer(backend);
    let err = call(&mut service, 5).await.unwrap_err();
    let timed_out = find_cause::<AttemptTimedOut>(&*err).expect("AttemptTimedOut");
    assert_eq!((timed_out.attempt(), timed_out.timeout()), (2, SECOND));
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_that_could_not_finish_before_max_elapsed() {
    let backend = Scripted::new(&[Step::Fail]);
    let retry = layer(
        config()
            .max_attempts(100)
            .attempt_timeout(SECOND)
            .max_elapsed(5 * SECOND),
    );
    let mut service = retry.layer(backend.clone());
    let mut events = retry.retry().subscribe();
    let started = Instant::now();
    assert!(call(&mut service, 1).await.is_err());
    // Attempts start at 0, 1, 2, 3 and 4 s; one at 5 s could end at 6 s.
    assert_eq!(backend.calls(), 5);
    assert!(started.elapsed() <= 5 * SECOND);
    assert!(matches!(
        events.drain().pop().map(|e| e.kind),
        Some(RetryEventKind::Failed {
            reason: GiveUpReason::DeadlineReached,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn overall_timeout_cancels_the_call() {
    let backend = Scripted::new(&[Step::Fail, Step::Hang]);
    let mut service = layer(config().overall_timeout(3 * SECOND).max_attempts(5)).layer(backend);
    let started = Instant::now();
    let err = call(&mut service, 1).await.unwrap_err();
    assert_eq!(started.elapsed(), 3 * SECOND);
    let timed_out = find_cause::<RetryTimedOut>(&*err).expect("RetryTimedOut");
    assert_eq!(timed_out.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_budget_stops_a_retry_storm() {
    let backend = Scripted::new(&[Step::Fail]);
    let budget = RetryBudget::builder()
        .min_retries_per_second(0)
        .retry_ratio(0.2)
        .build()
        .expect("valid budget");
    let retry = layer(
        config()
            .budget(budget)
            .max_attempts(4)
            .backoff(constant(Duration::ZERO)),
    );
    let service = retry.layer(backend.clone());
    let mut calls = Vec::new();
    for request in 0..1000 {
        let mut service = service.clone();
        calls.push(tokio::spawn(
            async move { call(&mut service, request).await },
        ));
    }
    for task in calls {
        let err = task.await.expect("task").unwrap_err();
        assert_eq!(
            err.to_string(),
            "backend unavailable",
            "the last failure, not a new error"
        );
    }
    // 1000 first attempts deposit 200 retries; without a budget it would be 3000.
    let retries = backend.calls() - 1000;
    assert!(retries <= 200, "{retries} retries");
    assert!(retry.retry().metrics().budget_exhaustions > 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_during_a_backoff_wait_makes_no_further_attempt() {
    let backend = Scripted::new(&[Step::Fail]);
    let mut service = layer(config().max_attempts(5)).layer(backend.clone());
    let future = service.ready().await.expect("ready").call(1);
    let mut future = Box::pin(future);
    assert!(
        futures::poll!(&mut future).is_pending(),
        "waiting after attempt 1"
    );
    assert_eq!(backend.calls(), 1);
    drop(future);
    tokio::time::sleep(10 * SECOND).await;
    assert_eq!(backend.calls(), 1);
}

#[derive(Clone)]
struct SendOnce;

impl RetryPolicy<u32, u32, BoxError> for SendOnce {
    fn clone_request(&self, _: &u32) -> Option<u32> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_copied_is_sent_once() {
    let backend = Scripted::new(&[Step::Fail, Step::Ok]);
    let retry = layer(config()).with_policy(SendOnce);
    let mut service = retry.layer(backend.clone());
    let mut events = retry.retry().subscribe();
    assert!(call(&mut service, 1).await.is_err());
    assert_eq!(backend.calls(), 1);
    assert!(matches!(
        events.drain().pop().map(|e| e.kind),
        Some(RetryEventKind::Failed {
            reason: GiveUpReason::RequestNotRetryable,
            ..
        })
    ));
}

/// Copies requests and counts the responses whose server delay it was
/// asked to read.
#[derive(Clone, Default)]
struct CountsServerDelays(Arc<Mutex<usize>>);

impl RetryPolicy<u32, u32, BoxError> for CountsServerDelays {
    fn clone_request(&self, request: &u32) -> Option<u32> {
        Some(*request)
    }

    fn server_delay(&self, _: Result<&u32, &BoxError>) -> palisade::retry::ServerDelay {
        *self.0.lock().expect("count") += 1;
        palisade::retry::ServerDelay::None
    }
}

#[tokio::test(start_paused = true)]
async fn the_server_delay_is_read_only_when_a_retry_could_follow() {
    let policy = CountsServerDelays::default();
    let backend = Scripted::new(&[Step::Ok, Step::Fail, Step::Ok, Step::Fail, Step::Fail]);
    let mut service = layer(config().max_attempts(2))
        .with_policy(policy.clone())
        .layer(backend.clone());
    assert_eq!(call(&mut service, 1).await.expect("succeeds"), 1);
    assert_eq!(*policy.0.lock().expect("count"), 0, "a success is not read");
    assert_eq!(call(&mut service, 2).await.expect("the retry succeeds"), 2);
    assert_eq!(*policy.0.lock().expect("count"), 1, "the retried failure");
    assert!(call(&mut service, 3).await.is_err());
    assert_eq!(
        *policy.0.lock().expect("count"),
        2,
        "the last attempt's failure is not read: no attempt is left"
    );
    assert_eq!(backend.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_custom_backoff_can_stop_retrying() {
    let backend = Scripted::new(&[Step::Fail]);
    let backoff = Backoff::custom(|retry, _| (retry < 2).then_some(SECOND))
        .build()
        .expect("valid");
    let mut service = layer(config().backoff(backoff).max_attempts(10)).layer(backend.clone());
    assert!(call(&mut service, 1).await.is_err());
    assert_eq!(backend.calls(), 2, "one retry, then the backoff said stop");
}

#[tokio::test(start_paused = true)]
async fn events_report_each_retry_and_the_success() {
    let backend = Scripted::new(&[Step::Fail, Step::Ok]);
    let retry = layer(config());
    let mut events = retry.retry().subscribe();
    let mut service = retry.layer(backend);
    call(&mut service, 1).await.expect("second attempt");
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            RetryEventKind::Retrying {
                attempt: 1,
                delay: SECOND,
                outcome: Outcome::Failure { retryable: true },
                server_delay: false,
            },
            RetryEventKind::Succeeded { attempts: 2 },
        ]
    );
}

#[test]
fn config_rejects_invalid_values_naming_the_field() {
    let check = |builder: RetryConfigBuilder, field: &str| {
        let err = builder.build().expect_err(field);
        assert_eq!((err.component(), err.field()), ("retry", field), "{err}");
    };
    check(RetryConfig::builder().max_attempts(0), "max_attempts");
    check(RetryConfig::builder().max_attempts(101), "max_attempts");
    check(
        RetryConfig::builder().max_elapsed(Duration::ZERO),
        "max_elapsed",
    );
    check(
        RetryConfig::builder().attempt_timeout(Duration::ZERO),
        "attempt_timeout",
    );
    check(
        RetryConfig::builder().overall_timeout(Duration::ZERO),
        "overall_timeout",
    );
    check(
        RetryConfig::builder()
            .attempt_timeout(10 * SECOND)
            .max_elapsed(SECOND),
        "attempt_timeout",
    );
    check(RetryConfig::builder().event_capacity(0), "event_capacity");
}

#[cfg(feature = "http")]
mod http_requests {
    use super::*;
    use palisade::classify::HttpStatusClassifier;
    use palisade::retry::{HttpRetryPolicy, Idempotent};

    type Request = http::Request<String>;
    type Response = http::Response<()>;

    /// Answers each call with the next (status, headers) of the script.
    fn scripted(
        replies: Vec<(u16, Vec<(&'static str, &'static str)>)>,
    ) -> (
        impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone,
        Arc<Mutex<Vec<Instant>>>,
    ) {
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let seen = arrivals.clone();
        let service = tower::service_fn(move |_: Request| {
            seen.lock().expect("arrivals").push(Instant::now());
            let (status, headers) = replies
                .lock()
                .expect("replies")
                .pop_front()
                .unwrap_or((200, vec![]));
            async move {
                let mut response = http::Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                Ok::<_, BoxError>(response.body(()).expect("valid response"))
            }
        });
        (service, arrivals)
    }

    fn http_layer() -> RetryLayer<HttpStatusClassifier, HttpRetryPolicy> {
        let backoff = Backoff::constant(SECOND)
            .max_interval(5 * SECOND)
            .build()
            .expect("valid backoff");
        layer(config().backoff(backoff).max_attempts(3))
            .with_classifier(HttpStatusClassifier::new())
            .with_policy(HttpRetryPolicy)
    }

    async fn send<S>(service: &mut S, request: Request) -> Response
    where
        S: Service<Request, Response = Response, Error = BoxError>,
    {
        service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("a response")
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_seconds_sets_the_delay() {
        let (backend, arrivals) = scripted(vec![(503, vec![("retry-after", "3")]), (200, vec![])]);
        let mut service = http_layer().layer(backend);
        let response = send(
            &mut service,
            http::Request::get("http://x/")
                .body(String::new())
                .expect("request"),
        )
        .await;
        assert_eq!(response.status(), 200);
        let arrivals = arrivals.lock().expect("arrivals");
        assert_eq!(
            arrivals[1] - arrivals[0],
            3 * SECOND,
            "the server's delay, not the backoff's 1 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_pushback_sets_the_delay() {
        let (backend, arrivals) = scripted(vec![
            (503, vec![("grpc-retry-pushback-ms", "250")]),
            (200, vec![]),
        ]);
        let mut service = http_layer().layer(backend);
        send(
            &mut service,
            http::Request::get("http://x/")
                .body(String::new())
                .expect("request"),
        )
        .await;
        let arrivals = arrivals.lock().expect("arrivals");
        assert_eq!(arrivals[1] - arrivals[0], 250 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_negative_unreadable_or_signed_grpc_pushback_means_do_not_retry() {
        for value in ["-5", "abc", "+5", ""] {
            let (backend, arrivals) = scripted(vec![
                (503, vec![("grpc-retry-pushback-ms", value)]),
                (200, vec![]),
            ]);
            let retry = http_layer();
            let mut events = retry.retry().subscribe();
            let mut service = retry.layer(backend);
            let started = Instant::now();
            let request = http::Request::get("http://x/")
                .body(String::new())
                .expect("request");
            let response = send(&mut service, request).await;
            assert_eq!(response.status(), 503, "{value:?}: the server's answer");
            assert_eq!(started.elapsed(), Duration::ZERO, "{value:?}: no wait");
            assert_eq!(arrivals.lock().expect("arrivals").len(), 1, "{value:?}");
            assert_eq!(
                events.drain().pop().map(|event| event.kind),
                Some(RetryEventKind::Failed {
                    attempts: 1,
                    reason: GiveUpReason::ServerDeclinedRetry,
                }),
                "{value:?}"
            );
            assert_eq!(retry.retry().metrics().retries, 0, "{value:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_do_not_retry_pushback_is_ignored_when_server_delays_are_not_honoured() {
        let (backend, arrivals) = scripted(vec![
            (503, vec![("grpc-retry-pushback-ms", "-1")]),
            (200, vec![]),
        ]);
        let backoff = Backoff::constant(SECOND).build().expect("valid backoff");
        let mut service = layer(config().backoff(backoff).honor_server_delay(false))
            .with_classifier(HttpStatusClassifier::new())
            .with_policy(HttpRetryPolicy)
            .layer(backend);
        let request = http::Request::get("http://x/")
            .body(String::new())
            .expect("request");
        assert_eq!(send(&mut service, request).await.status(), 200);
        let arrivals = arrivals.lock().expect("arrivals");
        assert_eq!(arrivals[1] - arrivals[0], SECOND, "the backoff's delay");
    }

    /// The gaps between the attempts of a call whose first three attempts
    /// answer 503 (the second with `header: value`) and whose fourth
    /// answers 200, with an exponential backoff of 100 ms ×2, no jitter.
    async fn gaps_with_exponential_backoff_and(
        header: &'static str,
        value: &'static str,
    ) -> Vec<Duration> {
        let (backend, arrivals) = scripted(vec![
            (503, vec![]),
            (503, vec![(header, value)]),
            (503, vec![]),
            (200, vec![]),
        ]);
        let backoff = Backoff::exponential(100 * MS, 2.0)
            .max_interval(10 * SECOND)
            .build()
            .expect("valid backoff");
        let mut service = layer(config().backoff(backoff).max_attempts(4))
            .with_classifier(HttpStatusClassifier::new())
            .with_policy(HttpRetryPolicy)
            .layer(backend);
        let request = http::Request::get("http://x/")
            .body(String::new())
            .expect("request");
        assert_eq!(send(&mut service, request).await.status(), 200);
        let arrivals = arrivals.lock().expect("arrivals");
        arrivals.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_grpc_pushback_the_backoff_restarts_from_its_first_delay() {
        assert_eq!(
            gaps_with_exponential_backoff_and("grpc-retry-pushback-ms", "50").await,
            [100 * MS, 50 * MS, 100 * MS],
            "gRFC A6: the retry after a pushback waits initial_backoff again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_retry_after_the_backoff_continues_its_sequence() {
        assert_eq!(
            gaps_with_exponential_backoff_and("retry-after", "1").await,
            [100 * MS, SECOND, 400 * MS]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_pushback_too_large_to_count_waits_the_max_interval() {
        let (backend, arrivals) = scripted(vec![
            (
                503,
                vec![("grpc-retry-pushback-ms", "99999999999999999999999")],
            ),
            (200, vec![]),
        ]);
        let mut service = http_layer().layer(backend);
        let request = http::Request::get("http://x/")
            .body(String::new())
            .expect("request");
        assert_eq!(send(&mut service, request).await.status(), 200);
        let arrivals = arrivals.lock().expect("arrivals");
        assert_eq!(arrivals[1] - arrivals[0], 5 * SECOND, "the max_interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_delay_is_capped_by_max_interval() {
        let (backend, arrivals) =
            scripted(vec![(503, vec![("retry-after", "3600")]), (200, vec![])]);
        let mut service = http_layer().layer(backend);
        send(
            &mut service,
            http::Request::get("http://x/")
                .body(String::new())
                .expect("request"),
        )
        .await;
        let arrivals = arrivals.lock().expect("arrivals");
        assert_eq!(
            arrivals[1] - arrivals[0],
            5 * SECOND,
            "the backoff's max_interval"
        );
    }

    /// The gap between the first two attempts when the first answers 503
    /// with `Retry-After: value` (the backoff alone would wait 1 s).
    async fn gap_after_retry_after(value: &'static str) -> Duration {
        let (backend, arrivals) =
            scripted(vec![(503, vec![("retry-after", value)]), (200, vec![])]);
        let mut service = http_layer().layer(backend);
        let request = http::Request::get("http://x/")
            .body(String::new())
            .expect("request");
        assert_eq!(send(&mut service, request).await.status(), 200);
        let arrivals = arrivals.lock().expect("arrivals");
        arrivals[1] - arrivals[0]
    }

    #[tokio::test(start_paused = true)]
    async fn a_signed_retry_after_is_ignored_and_the_backoff_used() {
        assert_eq!(gap_after_retry_after("+5").await, SECOND, "+5");
        assert_eq!(gap_after_retry_after("-5").await, SECOND, "-5");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_too_large_to_count_waits_the_max_interval() {
        assert_eq!(
            gap_after_retry_after("99999999999999999999999").await,
            5 * SECOND,
            "the backoff's max_interval, not its 1 s"
        );
    }

    #[test]
    fn retry_after_delay_seconds_is_digits_only_and_saturates() {
        use palisade::retry::parse_retry_after;
        use std::time::SystemTime;
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("5", now), Some(5 * SECOND));
        assert_eq!(parse_retry_after(" 5 ", now), Some(5 * SECOND));
        for invalid in ["+5", "-5", "", " ", "5s", "0x5", "5.0", "\u{0665}"] {
            assert_eq!(parse_retry_after(invalid, now), None, "{invalid:?}");
        }
        assert_eq!(
            parse_retry_after("18446744073709551616", now),
            Some(Duration::from_secs(u64::MAX)),
            "u64::MAX + 1 seconds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_delay_ending_past_max_elapsed_gives_up_at_once() {
        let (backend, arrivals) = scripted(vec![(503, vec![("retry-after", "3")]), (200, vec![])]);
        let backoff = Backoff::constant(SECOND)
            .max_interval(5 * SECOND)
            .build()
            .expect("valid backoff");
        let retry = layer(config().backoff(backoff).max_elapsed(2 * SECOND));
        let mut events = retry.retry().subscribe();
        let mut service = retry
            .with_classifier(HttpStatusClassifier::new())
            .with_policy(HttpRetryPolicy)
            .layer(backend);
        let started = Instant::now();
        let request = http::Request::get("http://x/")
            .body(String::new())
            .expect("request");
        let response = send(&mut service, request).await;
        assert_eq!(response.status(), 503, "the server's answer, at once");
        assert_eq!(started.elapsed(), Duration::ZERO, "no shortened wait");
        assert_eq!(arrivals.lock().expect("arrivals").len(), 1);
        assert!(matches!(
            events.drain().pop().map(|e| e.kind),
            Some(RetryEventKind::Failed {
                reason: GiveUpReason::DeadlineReached,
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_idempotent_post_is_not_retried() {
        let (backend, arrivals) = scripted(vec![(503, vec![]), (200, vec![])]);
        let mut service = http_layer().layer(backend);
        let response = send(
            &mut service,
            http::Request::post("http://x/")
                .body("order".into())
                .expect("request"),
        )
        .await;
        assert_eq!(response.status(), 503, "the failure is returned as is");
        assert_eq!(arrivals.lock().expect("arrivals").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_marked_idempotent_or_with_an_idempotency_key_is_retried() {
        let (backend, arrivals) = scripted(vec![
            (503, vec![]),
            (200, vec![]),
            (503, vec![]),
            (200, vec![]),
        ]);
        let mut service = http_layer().layer(backend);
        let mut marked = http::Request::post("http://x/")
            .body("order".to_owned())
            .expect("request");
        marked.extensions_mut().insert(Idempotent);
        assert_eq!(send(&mut service, marked).await.status(), 200);
        let keyed = http::Request::post("http://x/")
            .header("idempotency-key", "order-42")
            .body("order".to_owned())
            .expect("request");
        assert_eq!(send(&mut service, keyed).await.status(), 200);
        assert_eq!(arrivals.lock().expect("arrivals").len(), 4);
    }

    mod buffered_bodies {
        use super::*;
        use bytes::Bytes;
        use http_body::Frame;
        use http_body_util::{BodyExt, StreamBody};
        use palisade::retry::{BufferBodyLayer, RetryBody};

        type Chunks = StreamBody<
            futures::stream::Iter<
                std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
            >,
        >;

        /// A streaming (not `Clone`) body of `chunks`, with no size hint.
        fn streaming(chunks: &[&'static str]) -> Chunks {
            let frames: Vec<_> = chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                .collect();
            StreamBody::new(futures::stream::iter(frames))
        }

        /// Replies with the given statuses in turn and notes every body it read.
        #[allow(
            clippy::type_complexity,
            reason = "an impl Service with its bounds, and a log"
        )]
        fn reading_backend(
            statuses: Vec<u16>,
        ) -> (
            impl Service<
                http::Request<RetryBody<Chunks>>,
                Response = Response,
                Error = BoxError,
                Future: Send,
            > + Clone
            + Send
            + 'static,
            Arc<Mutex<Vec<Bytes>>>,
        ) {
            let statuses = Arc::new(Mutex::new(VecDeque::from(statuses)));
            let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
            let seen = bodies.clone();
            let service = tower::service_fn(move |request: http::Request<RetryBody<Chunks>>| {
                let status = statuses
                    .lock()
                    .expect("statuses")
                    .pop_front()
                    .unwrap_or(200);
                let seen = seen.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    seen.lock().expect("bodies").push(body);
                    Ok::<_, BoxError>(
                        http::Response::builder()
                            .status(status)
                            .body(())
                            .expect("valid"),
                    )
                }
            });
            (service, bodies)
        }

        #[tokio::test(start_paused = true)]
        async fn a_streaming_body_within_the_limit_is_buffered_and_sent_again() {
            let (backend, bodies) = reading_backend(vec![503, 200]);
            let mut service = tower::ServiceBuilder::new()
                .layer(BufferBodyLayer::new(64))
                .layer(http_layer())
                .service(backend);
            let request = http::Request::put("http://x/orders/1")
                .body(streaming(&["{\"sku\": ", "42}"]))
                .expect("request");
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("response");
            assert_eq!(response.status(), 200);
            let bodies = bodies.lock().expect("bodies");
            assert_eq!(
                *bodies,
                [
                    Bytes::from_static(b"{\"sku\": 42}"),
                    Bytes::from_static(b"{\"sku\": 42}")
                ]
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_body_over_the_limit_is_sent_once_and_whole() {
            let (backend, bodies) = reading_backend(vec![503, 200]);
            let mut service = tower::ServiceBuilder::new()
                .layer(BufferBodyLayer::new(4))
                .layer(http_layer())
                .service(backend);
            let request = http::Request::put("http://x/orders/1")
                .body(streaming(&["abc", "def", "ghi"]))
                .expect("request");
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("response");
            assert_eq!(
                response.status(),
                503,
                "not retried: the body could not be kept"
            );
            assert_eq!(
                *bodies.lock().expect("bodies"),
                [Bytes::from_static(b"abcdefghi")]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_error_is_not_retried() {
        let (backend, arrivals) = scripted(vec![(400, vec![]), (200, vec![])]);
        let mut service = http_layer().layer(backend);
        let response = send(
            &mut service,
            http::Request::get("http://x/")
                .body(String::new())
                .expect("request"),
        )
        .await;
        assert_eq!(response.status(), 400);
        assert_eq!(arrivals.lock().expect("arrivals").len(), 1);
    }
}

mod deadline {
    use super::*;
    use proptest::prelude::*;

    /// Fails every call after the next latency of its script (then repeats
    /// the last one).
    #[derive(Clone)]
    struct SlowFailures {
        latencies: Arc<Mutex<VecDeque<Duration>>>,
        calls: Arc<Mutex<u32>>,
    }

    impl Service<u32> for SlowFailures {
        type Response = u32;
        type Error = BoxError;
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: u32) -> Self::Future {
            *self.calls.lock().expect("calls") += 1;
            let mut latencies = self.latencies.lock().expect("latencies");
            let latency = if latencies.len() > 1 {
                latencies.pop_front()
            } else {
                latencies.front().copied()
            }
            .unwrap_or_default();
            Box::pin(async move {
                tokio::time::sleep(latency).await;
                Err("slow failure".into())
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// With a per-attempt timeout, a call never outlives `max_elapsed`,
        /// whatever the latencies, the backoff and the attempt limit.
        #[test]
        fn a_call_never_outlives_max_elapsed(
            max_elapsed_ms in 100u64..10_000,
            timeout_share in 1u64..=100,
            backoff_ms in 0u64..3_000,
            max_attempts in 1u32..20,
            latencies_ms in prop::collection::vec(0u64..12_000, 1..20),
        ) {
            let max_elapsed = Duration::from_millis(max_elapsed_ms);
            let attempt_timeout = Duration::from_millis((max_elapsed_ms * timeout_share / 100).max(1));
            let backoff = Backoff::constant(Duration::from_millis(backoff_ms))
                .max_interval(Duration::from_millis(backoff_ms.max(1)))
                .build()
                .expect("valid backoff");
            let retry = layer(
                config()
                    .backoff(backoff)
                    .max_attempts(max_attempts)
                    .attempt_timeout(attempt_timeout)
                    .max_elapsed(max_elapsed),
            );
            let backend = SlowFailures {
                latencies: Arc::new(Mutex::new(latencies_ms.into_iter().map(Duration::from_millis).collect())),
                calls: Arc::default(),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let elapsed = runtime.block_on(async {
                let mut service = retry.layer(backend.clone());
                let started = Instant::now();
                let result = call(&mut service, 1).await;
                assert!(result.is_err());
                started.elapsed()
            });
            prop_assert!(elapsed <= max_elapsed, "{elapsed:?} > {max_elapsed:?}");
            let calls = *backend.calls.lock().expect("calls");
            prop_assert!(calls >= 1 && calls <= max_attempts);
        }
    }

    /// Takes the next readiness delay of its script (then repeats the last
    /// one) to get ready for each call; each call fails after the next
    /// latency of its script, or hangs when the script says `None`.
    struct SlowToReady {
        readiness: Arc<Mutex<VecDeque<Duration>>>,
        latencies: Arc<Mutex<VecDeque<Option<Duration>>>>,
        calls: Arc<Mutex<u32>>,
        getting_ready: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        ready: bool,
    }

    impl SlowToReady {
        fn new(readiness_ms: Vec<u64>, latencies_ms: Vec<Option<u64>>) -> Self {
            Self {
                readiness: Arc::new(Mutex::new(
                    readiness_ms
                        .into_iter()
                        .map(Duration::from_millis)
                        .collect(),
                )),
                latencies: Arc::new(Mutex::new(
                    latencies_ms
                        .into_iter()
                        .map(|ms| ms.map(Duration::from_millis))
                        .collect(),
                )),
                calls: Arc::default(),
                getting_ready: None,
                ready: false,
            }
        }
    }

    /// Clones are not ready: each gets ready on its own.
    impl Clone for SlowToReady {
        fn clone(&self) -> Self {
            Self {
                readiness: self.readiness.clone(),
                latencies: self.latencies.clone(),
                calls: self.calls.clone(),
                getting_ready: None,
                ready: false,
            }
        }
    }

    fn next<T: Copy + Default>(script: &Mutex<VecDeque<T>>) -> T {
        let mut script = script.lock().expect("script");
        if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().copied()
        }
        .unwrap_or_default()
    }

    impl Service<u32> for SlowToReady {
        type Response = u32;
        type Error = BoxError;
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            if !self.ready {
                let readiness = &self.readiness;
                let getting_ready = self
                    .getting_ready
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(next(readiness))));
                std::task::ready!(getting_ready.as_mut().poll(cx));
                self.getting_ready = None;
                self.ready = true;
            }
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: u32) -> Self::Future {
            assert!(self.ready, "called before poll_ready");
            self.ready = false;
            *self.calls.lock().expect("calls") += 1;
            let latency = next(&self.latencies);
            Box::pin(async move {
                match latency {
                    Some(latency) => tokio::time::sleep(latency).await,
                    None => std::future::pending().await,
                }
                Err("slow failure".into())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_readiness_does_not_outlive_max_elapsed() {
        // Attempts hang until their 300 ms timeout, the backoff is 100 ms,
        // and the service takes 500 ms to get ready for each attempt: the
        // second attempt could start at 900 ms and end at 1.2 s.
        let backoff = Backoff::constant(100 * MS).build().expect("valid backoff");
        let retry = layer(
            config()
                .backoff(backoff)
                .max_attempts(5)
                .attempt_timeout(300 * MS)
                .max_elapsed(SECOND),
        );
        let mut events = retry.retry().subscribe();
        let backend = SlowToReady::new(vec![500], vec![None]);
        let mut service = retry.layer(backend.clone());
        let ready = service.ready().await.expect("ready");
        let started = Instant::now();
        let error = ready.call(1).await.expect_err("every attempt hangs");
        let elapsed = started.elapsed();
        assert!(
            elapsed <= SECOND,
            "the call ended {elapsed:?} after it started"
        );
        assert_eq!(
            elapsed,
            700 * MS,
            "it gives up once an attempt could no longer finish in time"
        );
        let timed_out = find_cause::<AttemptTimedOut>(&*error).expect("the last failure");
        assert_eq!(timed_out.attempt(), 1);
        assert_eq!(*backend.calls.lock().expect("calls"), 1);
        assert!(matches!(
            events.drain().pop().map(|e| e.kind),
            Some(RetryEventKind::Failed {
                attempts: 1,
                reason: GiveUpReason::DeadlineReached,
            })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// However long the service takes to get ready for each attempt, no
        /// attempt starts, and no wait lasts, past `max_elapsed`.
        #[test]
        fn a_call_never_outlives_max_elapsed_whatever_the_readiness_delays(
            max_elapsed_ms in 100u64..5_000,
            timeout_share in 1u64..=100,
            backoff_ms in 0u64..1_000,
            max_attempts in 1u32..20,
            readiness_ms in prop::collection::vec(0u64..3_000, 1..20),
            latencies_ms in prop::collection::vec(prop::option::of(0u64..6_000), 1..20),
        ) {
            let max_elapsed = Duration::from_millis(max_elapsed_ms);
            let attempt_timeout = Duration::from_millis((max_elapsed_ms * timeout_share / 100).max(1));
            let backoff = Backoff::constant(Duration::from_millis(backoff_ms))
                .max_interval(Duration::from_millis(backoff_ms.max(1)))
                .build()
                .expect("valid backoff");
            let retry = layer(
                config()
                    .backoff(backoff)
                    .max_attempts(max_attempts)
                    .attempt_timeout(attempt_timeout)
                    .max_elapsed(max_elapsed),
            );
            let backend = SlowToReady::new(readiness_ms, latencies_ms);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let elapsed = runtime.block_on(async {
                let mut service = retry.layer(backend.clone());
                let ready = service.ready().await.expect("ready");
                let started = Instant::now();
                let result = ready.call(1).await;
                assert!(result.is_err());
                started.elapsed()
            });
            prop_assert!(elapsed <= max_elapsed, "{elapsed:?} > {max_elapsed:?}");
            let calls = *backend.calls.lock().expect("calls");
            prop_assert!(calls >= 1 && calls <= max_attempts);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_around_a_breaker_goes_through_it_again_and_stops_at_its_rejection() {
    use palisade::circuit_breaker::{
        BreakerOpen, CircuitBreaker, CircuitBreakerConfig, SlidingWindow,
    };
    use palisade::is_caused_by;
    let breaker = CircuitBreaker::new(
        "backend",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(2))
            .build()
            .expect("valid"),
    );
    let backend = Scripted::new(&[Step::Fail]);
    let retry =
        layer(config().max_attempts(5)).with_classifier(DefaultClassifier.pass_rejections());
    let mut service = tower::ServiceBuilder::new()
        .layer(retry.clone())
        .layer(breaker.layer())
        .service(backend.clone());
    let err = call(&mut service, 1).await.unwrap_err();
    // Two failures trip the breaker; the third attempt is rejected by it,
    // and a rejection is returned at once instead of being retried.
    assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");
    assert_eq!(backend.calls(), 2);
    let m = retry.retry().metrics();
    assert_eq!(
        (m.retries, m.failed_after_retries, m.succeeded_after_retry),
        (2, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn every_layer_of_one_retry_handle_shares_its_metrics_and_events() {
    let retry = Retry::new(
        "shared",
        config().max_attempts(2).build().expect("valid config"),
    );
    let mut events = retry.subscribe();
    let backend = Scripted::new(&[Step::Fail, Step::Ok]);
    let mut plain = retry.layer().layer(backend.clone());
    let mut classified = RetryLayer::from(retry.clone())
        .with_classifier(DefaultClassifier.pass_rejections())
        .layer(backend.clone());
    assert!(
        retry.layer().retry().ptr_eq(&retry),
        "a layer keeps the handle"
    );

    assert_eq!(call(&mut plain, 1).await.expect("retried"), 1);
    assert_eq!(call(&mut classified, 2).await.expect("first attempt"), 2);

    let m = retry.metrics();
    assert_eq!((m.succeeded_after_retry, m.succeeded_without_retry), (1, 1));
    assert_eq!(m.retries, 1);
    let kinds: Vec<_> = events.drain().into_iter().map(|e| e.kind).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                RetryEventKind::Retrying { attempt: 1, .. },
                RetryEventKind::Succeeded { attempts: 2 },
                RetryEventKind::Succeeded { attempts: 1 },
            ]
        ),
        "{kinds:?}"
    );
}
