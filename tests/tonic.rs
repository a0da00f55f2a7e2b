//! `palisade::tonic` against real tonic servers on 127.0.0.1: a
//! grpc.health.v1 service (tonic-health) behind a fault-injecting layer
//! that answers chosen statuses, in the headers ("trailers-only") or in
//! the trailers after an HTTP 200.
//!
//! Run with `cargo test --features tonic --test tonic` (or
//! `--all-features`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use palisade::backoff::Backoff;
use palisade::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
use palisade::circuit_breaker::{
    BreakerOpen, CircuitBreaker, CircuitBreakerConfig, CircuitState, SlidingWindow,
};
use palisade::classify::GrpcStatusClassifier;
use palisade::discovery::{
    Balance, BalanceConfig, GrpcCheck, HealthCheck, InMemoryRegistry, Instance, NoHealthyInstance,
    Picker, Registrar, Registration, Registry, make_fn,
};
use palisade::find_cause;
use palisade::pipeline::{BreakerStage, Identity, Pipeline, PipelineError};
use palisade::rate_limit::{RateLimited, RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig};
use palisade::tonic::GrpcRetryPolicy;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as ProtoServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;
use tower::Service;

/// The header that marks the test client's calls.
const CLIENT_TAG: &str = "x-test-client";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What the fault layer does with the next call.
#[derive(Debug, Clone)]
enum Fault {
    /// A trailers-only response: `grpc-status` (and a pushback) in the
    /// headers, no body.
    InHeaders(Code, Option<&'static str>),
    /// HTTP 200, then `grpc-status` in the trailers.
    InTrailers(Code),
    /// Never answers.
    Hang,
    /// HTTP 200 and headers, then a body that never ends.
    HangInBody,
}

/// The faults to answer to the test client's calls, in order (then the
/// real service answers), and the client's calls that reached the server.
#[derive(Clone, Default)]
struct Script {
    faults: Arc<Mutex<VecDeque<Fault>>>,
    calls: Arc<AtomicUsize>,
}

impl Script {
    fn then(&self, fault: Fault, times: usize) -> &Self {
        self.faults.lock().extend(std::iter::repeat_n(fault, times));
        self
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct FaultService<S> {
    inner: S,
    script: Script,
}

impl<S> Service<http::Request<tonic::body::Body>> for FaultService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if !request.headers().contains_key(CLIENT_TAG) {
            // A registry's health check: not counted, no fault.
            return Box::pin(self.inner.call(request));
        }
        self.script.calls.fetch_add(1, Ordering::SeqCst);
        let fault = self.script.faults.lock().pop_front();
        let grpc = || http::Response::builder().header("content-type", "application/grpc");
        match fault {
            None => Box::pin(self.inner.call(request)),
            Some(Fault::InHeaders(code, pushback)) => {
                let mut response = grpc().header("grpc-status", (code as i32).to_string());
                if let Some(pushback) = pushback {
                    response = response.header("grpc-retry-pushback-ms", pushback);
                }
                let response = response
                    .body(tonic::body::Body::empty())
                    .expect("valid response");
                Box::pin(async move { Ok(response) })
            }
            Some(Fault::InTrailers(code)) => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert(
                    "grpc-status",
                    (code as i32).to_string().parse().expect("valid"),
                );
                let body = Empty::<Bytes>::new()
                    .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                let response = grpc()
                    .body(tonic::body::Body::new(body))
                    .expect("valid response");
                Box::pin(async move { Ok(response) })
            }
            Some(Fault::Hang) => Box::pin(std::future::pending()),
            Some(Fault::HangInBody) => {
                let frames = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
                let response = grpc()
                    .body(tonic::body::Body::new(StreamBody::new(frames)))
                    .expect("valid response");
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// A grpc.health.v1 server on 127.0.0.1 behind the fault layer.
struct TestServer {
    addr: SocketAddr,
    script: Script,
    reporter: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (reporter, health) = tonic_health::server::health_reporter();
        let script = Script::default();
        let layer = tower::layer::layer_fn({
            let script = script.clone();
            move |inner| FaultService {
                inner,
                script: script.clone(),
            }
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stop.await;
                    },
                )
                .await
                .expect("server runs");
        });
        Self {
            addr,
            script,
            reporter,
            shutdown: Some(shutdown),
            task,
        }
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("valid URI")
            .connect_lazy()
    }

    /// Stops the server: the listener closes, connections are told to go.
    async fn kill(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

/// A health check from the test's client, tagged so the fault layer
/// tells it from the registry's own checks.
fn request() -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert(CLIENT_TAG, "test".parse().expect("valid metadata"));
    request
}

/// A breaker that opens after two calls of which one failed.
fn breaker(name: &str) -> CircuitBreaker {
    CircuitBreaker::new(
        name,
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(2))
            .minimum_number_of_calls(2)
            .build()
            .expect("valid breaker config"),
    )
}

/// A retry of up to three attempts, 1 ms apart (then 2 ms).
fn retry(name: &str) -> Retry {
    Retry::new(
        name,
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(
                Backoff::exponential(Duration::from_millis(1), 2.0)
                    .build()
                    .expect("valid backoff"),
            )
            .build()
            .expect("valid retry config"),
    )
}

fn breaker_pipeline(
    breaker: &CircuitBreaker,
) -> Pipeline<Identity, BreakerStage<GrpcStatusClassifier>> {
    Pipeline::builder("health")
        .circuit_breaker(breaker.layer().with_classifier(GrpcStatusClassifier::new()))
        .build()
        .expect("valid pipeline")
}

#[tokio::test]
async fn unavailable_in_the_headers_opens_the_breaker() {
    let server = TestServer::start().await;
    server
        .script
        .then(Fault::InHeaders(Code::Unavailable, None), 2);
    let breaker = breaker("headers");
    let mut client = HealthClient::new(palisade::tonic::channel(
        server.channel(),
        breaker_pipeline(&breaker),
    ));

    for _ in 0..2 {
        let status = client.check(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(find_cause::<BreakerOpen>(&status).is_some(), "{status:?}");
    assert_eq!(server.script.calls(), 2, "the open breaker sent nothing");
    server.kill().await;
}

#[tokio::test]
async fn unavailable_in_the_trailers_opens_the_breaker() {
    let server = TestServer::start().await;
    server.script.then(Fault::InTrailers(Code::Unavailable), 2);
    let breaker = breaker("trailers");
    let mut client = HealthClient::new(palisade::tonic::channel(
        server.channel(),
        breaker_pipeline(&breaker),
    ));

    for _ in 0..2 {
        let status = client.check(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(breaker.metrics().failed_calls, 2);
    assert_eq!(breaker.state(), CircuitState::Open);
    let status = client.check(request()).await.unwrap_err();
    assert!(find_cause::<BreakerOpen>(&status).is_some(), "{status:?}");
    server.kill().await;
}

#[tokio::test]
async fn ok_in_the_trailers_is_recorded_as_a_success_when_the_body_ends() {
    let server = TestServer::start().await;
    let breaker = breaker("ok");
    let mut client = HealthClient::new(palisade::tonic::channel(
        server.channel(),
        breaker_pipeline(&breaker),
    ));
    let reply = client.check(request()).await.expect("serving");
    assert_eq!(reply.get_ref().status(), ProtoServingStatus::Serving);
    let metrics = breaker.metrics();
    assert_eq!((metrics.successful_calls, metrics.failed_calls), (1, 0));
    server.kill().await;
}

#[tokio::test]
async fn two_unavailable_then_ok_succeeds_on_the_third_attempt() {
    let server = TestServer::start().await;
    server
        .script
        .then(Fault::InHeaders(Code::Unavailable, None), 2);
    let retry = retry("health");
    let pipeline = Pipeline::builder("health")
        .retry(GrpcRetryPolicy::new().layer(retry.clone()))
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    let reply = client.check(request()).await.expect("the third attempt");
    assert_eq!(reply.get_ref().status(), ProtoServingStatus::Serving);
    assert_eq!(server.script.calls(), 3);
    assert_eq!(retry.metrics().succeeded_after_retry, 1);
    server.kill().await;
}

#[tokio::test]
async fn a_method_not_on_the_allow_list_is_not_retried() {
    let server = TestServer::start().await;
    server
        .script
        .then(Fault::InHeaders(Code::Unavailable, None), 2);
    let policy = GrpcRetryPolicy::builder()
        .methods(["/grpc.health.v1.Health/Watch"])
        .build()
        .expect("valid policy");
    let pipeline = Pipeline::builder("health")
        .retry(policy.layer(retry("health")))
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.script.calls(), 1);
    server.kill().await;
}

#[tokio::test]
async fn a_code_not_retryable_is_not_retried() {
    let server = TestServer::start().await;
    server
        .script
        .then(Fault::InHeaders(Code::ResourceExhausted, None), 2);
    let pipeline = Pipeline::builder("health")
        .retry(GrpcRetryPolicy::new().layer(retry("health")))
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(server.script.calls(), 1, "only UNAVAILABLE is retried");
    server.kill().await;
}

#[tokio::test]
async fn a_status_in_the_trailers_is_not_retried() {
    let server = TestServer::start().await;
    server.script.then(Fault::InTrailers(Code::Unavailable), 2);
    let pipeline = Pipeline::builder("health")
        .retry(GrpcRetryPolicy::new().layer(retry("health")))
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.script.calls(), 1, "A6: committed once headers came");
    server.kill().await;
}

#[tokio::test]
async fn negative_or_unreadable_pushback_is_not_retried() {
    for pushback in ["-1", "soon"] {
        let server = TestServer::start().await;
        server
            .script
            .then(Fault::InHeaders(Code::Unavailable, Some(pushback)), 2);
        let pipeline = Pipeline::builder("health")
            .retry(GrpcRetryPolicy::new().layer(retry("health")))
            .build()
            .expect("valid pipeline");
        let mut client = HealthClient::new(pipeline.tonic(server.channel()));

        let status = client.check(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "pushback {pushback}");
        assert_eq!(server.script.calls(), 1, "pushback {pushback}");
        server.kill().await;
    }
}

#[tokio::test]
async fn a_pushback_delay_is_waited_before_the_retry() {
    let server = TestServer::start().await;
    server
        .script
        .then(Fault::InHeaders(Code::Unavailable, Some("80")), 1);
    let pipeline = Pipeline::builder("health")
        .retry(GrpcRetryPolicy::new().layer(retry("health")))
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    let started = Instant::now();
    client.check(request()).await.expect("the second attempt");
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert_eq!(server.script.calls(), 2);
    server.kill().await;
}

/// The status's source is the pipeline's error, and the stage's own error
/// is in its chain.
fn assert_source<E: std::error::Error + 'static>(status: &tonic::Status) {
    let source = std::error::Error::source(status).expect("a source");
    assert!(
        source.downcast_ref::<PipelineError>().is_some(),
        "source {source:?}"
    );
    assert!(find_cause::<E>(status).is_some(), "{status:?}");
}

#[tokio::test]
async fn an_open_breaker_is_unavailable() {
    let server = TestServer::start().await;
    let breaker = breaker("forced");
    breaker.transition_to_forced_open();
    let mut client = HealthClient::new(palisade::tonic::channel(
        server.channel(),
        breaker_pipeline(&breaker),
    ));
    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_source::<BreakerOpen>(&status);
    server.kill().await;
}

#[tokio::test]
async fn a_full_bulkhead_is_resource_exhausted() {
    let server = TestServer::start().await;
    let bulkhead = Bulkhead::new(
        "health",
        BulkheadConfig::builder()
            .max_concurrent_calls(1)
            .max_wait_duration(Duration::ZERO)
            .build()
            .expect("valid bulkhead config"),
    );
    let pipeline = Pipeline::builder("health")
        .bulkhead(bulkhead.clone())
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));
    let _busy = bulkhead.try_acquire().expect("the only permit");

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_source::<BulkheadFull>(&status);
    server.kill().await;
}

#[tokio::test]
async fn a_rate_limited_call_is_resource_exhausted() {
    let server = TestServer::start().await;
    let limiter = RateLimiter::new(
        "health",
        RateLimiterConfig::builder()
            .limit_for_period(1)
            .limit_refresh_period(Duration::from_secs(3600))
            .build()
            .expect("valid limiter config"),
    );
    let pipeline = Pipeline::builder("health")
        .rate_limiter(limiter)
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    client.check(request()).await.expect("the one permit");
    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_source::<RateLimited>(&status);
    server.kill().await;
}

#[tokio::test]
async fn a_timeout_is_deadline_exceeded() {
    let server = TestServer::start().await;
    server.script.then(Fault::Hang, 1);
    let pipeline = Pipeline::builder("health")
        .timeout(Duration::from_millis(50))
        .build()
        .expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(server.channel()));

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let source = std::error::Error::source(&status).expect("a source");
    assert!(matches!(
        source.downcast_ref::<PipelineError>(),
        Some(PipelineError::TimedOut(_))
    ));
    server.kill().await;
}

fn channel_to(instance: &Instance) -> Result<Channel, palisade::BoxError> {
    Ok(Endpoint::from_shared(format!("http://{}", instance.address()))?.connect_lazy())
}

#[tokio::test]
async fn no_healthy_instance_is_unavailable() {
    let registry = InMemoryRegistry::new();
    let balance = Balance::new(
        "health",
        &registry,
        make_fn(channel_to),
        BalanceConfig::default(),
    )
    .expect("valid balancer");
    let pipeline = Pipeline::builder("health").build().expect("valid pipeline");
    let mut client = HealthClient::new(pipeline.tonic(balance));

    let status = client.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_source::<NoHealthyInstance>(&status);
}

/// A gRPC check every 200 ms; a loaded machine may take a while to
/// answer, so the timeout is the whole interval.
fn grpc_check() -> HealthCheck {
    HealthCheck::Grpc(
        GrpcCheck::builder()
            .interval(Duration::from_millis(200))
            .timeout(Duration::from_millis(200))
            .build()
            .expect("valid check"),
    )
}

/// Waits (at most 10 s) until `registry` lists `count` healthy instances
/// of "health".
async fn until_healthy(registry: &InMemoryRegistry, count: usize) {
    let mut watch = registry.watch("health");
    let wait = async {
        while let Some(snapshot) = watch.next().await {
            if snapshot.expect("a snapshot").len() == count {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("never {count} healthy instances"));
}

#[tokio::test]
async fn not_serving_health_makes_discovery_drop_the_instance() {
    let server = TestServer::start().await;
    let registry = InMemoryRegistry::new();
    let instance = Instance::builder("health", "health-a", server.addr.to_string())
        .build()
        .expect("valid instance");
    let _guard = registry
        .register(Registration::new(instance, grpc_check()))
        .await
        .expect("registered");
    until_healthy(&registry, 1).await;

    server
        .reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    until_healthy(&registry, 0).await;

    server
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    until_healthy(&registry, 1).await;
    server.kill().await;
}

#[tokio::test]
async fn a_killed_instance_leaves_the_balancer() {
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let registry = InMemoryRegistry::new();
    let mut guards = Vec::new();
    for (id, server) in [("health-a", &a), ("health-b", &b)] {
        let instance = Instance::builder("health", id, server.addr.to_string())
            .build()
            .expect("valid instance");
        guards.push(
            registry
                .register(Registration::new(instance, grpc_check()))
                .await
                .expect("registered"),
        );
    }
    until_healthy(&registry, 2).await;
    let balance = Balance::new(
        "health",
        &registry,
        make_fn(channel_to),
        BalanceConfig::builder()
            .picker(Picker::RoundRobin)
            .build()
            .expect("valid balancer config"),
    )
    .expect("valid balancer");
    let mut client = HealthClient::new(
        Pipeline::builder("health")
            .build()
            .expect("valid pipeline")
            .tonic(balance.clone()),
    );
    for _ in 0..4 {
        client.check(request()).await.expect("serving");
    }
    assert_eq!((a.script.calls(), b.script.calls()), (2, 2));
    assert_eq!(balance.metrics().instances, 2);

    let mut events = balance.subscribe();
    a.kill().await;
    until_healthy(&registry, 1).await;
    let removed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.recv().await.expect("an event");
            if matches!(event.kind, palisade::discovery::BalanceEventKind::Removed) {
                return event.id;
            }
        }
    })
    .await
    .expect("the balancer dropped an instance");
    assert_eq!(removed.as_str(), "health-a");
    assert_eq!(balance.metrics().instances, 1);

    let before = b.script.calls();
    for _ in 0..3 {
        client.check(request()).await.expect("b serves");
    }
    assert_eq!(b.script.calls(), before + 3);
    b.kill().await;
}

#[tokio::test]
async fn cancelled_calls_give_the_half_open_trial_back() {
    let server = TestServer::start().await;
    let breaker = CircuitBreaker::new(
        "cancelled",
        CircuitBreakerConfig::builder()
            .permitted_number_of_calls_in_half_open_state(1)
            .build()
            .expect("valid breaker config"),
    );
    breaker.transition_to_open().expect("from closed");
    breaker.transition_to_half_open().expect("from open");
    let client = HealthClient::new(palisade::tonic::channel(
        server.channel(),
        breaker_pipeline(&breaker),
    ));

    for round in 1..=10 {
        // The trial call gets its headers, then waits for a body that
        // never ends: the permit is held by the body.
        server.script.then(Fault::HangInBody, 1);
        let mut caller = client.clone();
        let call = tokio::spawn(async move { caller.check(request()).await });
        tokio::time::timeout(Duration::from_secs(5), async {
            while server.script.calls() < round {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the call reached the server");
        assert_eq!(breaker.metrics().trial_permits_available, Some(0));

        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(
            breaker.metrics().trial_permits_available,
            Some(1),
            "round {round}: the dropped call gave its trial back, unrecorded"
        );
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
    }

    let mut client = client;
    client.check(request()).await.expect("the trial succeeds");
    assert_eq!(breaker.state(), CircuitState::Closed);
    server.kill().await;
}

/// A6 through the policy, on paused time: a pushback is waited, and the
/// backoff then starts again from its first delay.
#[tokio::test(start_paused = true)]
async fn after_a_pushback_the_backoff_restarts_from_its_first_delay() {
    use palisade::retry::RetryBody;
    use tokio::time::Instant as TokioInstant;

    let retry = Retry::new(
        "pushback",
        RetryConfig::builder()
            .max_attempts(4)
            .backoff(
                Backoff::exponential(Duration::from_millis(100), 2.0)
                    .build()
                    .expect("valid backoff"),
            )
            .no_budget()
            .build()
            .expect("valid retry config"),
    );
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let server = tower::service_fn({
        let attempts = attempts.clone();
        move |_request: http::Request<RetryBody<Empty<Bytes>>>| {
            let attempt = {
                let mut attempts = attempts.lock();
                attempts.push(TokioInstant::now());
                attempts.len()
            };
            let response = http::Response::builder();
            let response = match attempt {
                1 | 3 => response.header("grpc-status", "14"),
                2 => response
                    .header("grpc-status", "14")
                    .header("grpc-retry-pushback-ms", "50"),
                _ => response.header("grpc-status", "0"),
            };
            async move { Ok::<_, Infallible>(response.body(()).expect("valid response")) }
        }
    });
    let mut service = tower::ServiceBuilder::new()
        .layer(GrpcRetryPolicy::new().layer(retry))
        .service(server);

    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .body(RetryBody::buffered(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("valid request");
    let response = tower::ServiceExt::ready(&mut service)
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("the fourth attempt");
    assert_eq!(response.headers()["grpc-status"], "0");

    let attempts = attempts.lock();
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 50, 100], "A6: 100, pushback 50, then 100 again");
}
