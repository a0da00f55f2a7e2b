//! A tonic client behind palisade, in one line, against a local gRPC
//! server that fails on cue.
//!
//! The server is tonic-health's grpc.health.v1 service on 127.0.0.1,
//! behind a small layer that answers the next calls with chosen statuses:
//! `UNAVAILABLE` in the response headers (a "trailers-only" answer, which
//! gRFC A6 lets a client retry) or in the trailers after an HTTP 200 (how
//! most servers send errors; the call is committed, the breaker still
//! counts it). The client narrates:
//!
//! 1. two `UNAVAILABLE`s retried with backoff, then the answer;
//! 2. failures in the trailers opening the circuit breaker;
//! 3. the open breaker answering `UNAVAILABLE` itself;
//! 4. the breaker's trial call, after its wait, closing it again.
//!
//! Run with `cargo run --example tonic_client --features tonic`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use palisade::BoxError;
use palisade::backoff::Backoff;
use palisade::circuit_breaker::{
    BreakerOpen, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerEventKind, SlidingWindow,
};
use palisade::classify::GrpcStatusClassifier;
use palisade::events::EventStream;
use palisade::pipeline::Pipeline;
use palisade::retry::{Retry, RetryConfig, RetryEvent, RetryEventKind};
use palisade::tonic::GrpcRetryPolicy;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Service;

/// Where the server puts `UNAVAILABLE` for the next calls.
#[derive(Debug, Clone, Copy)]
enum Fault {
    InHeaders,
    InTrailers,
}

type Faults = Arc<Mutex<VecDeque<Fault>>>;

#[derive(Clone)]
struct FaultInjection<S> {
    inner: S,
    faults: Faults,
    calls: Arc<AtomicUsize>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<http::Request<tonic::body::Body>> for FaultInjection<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = self.faults.lock().expect("not poisoned").pop_front();
        let response = http::Response::builder().header("content-type", "application/grpc");
        let unavailable = || "14".parse::<http::HeaderValue>().expect("valid header");
        let response = match fault {
            None => return Box::pin(self.inner.call(request)),
            Some(Fault::InHeaders) => response
                .header("grpc-status", unavailable())
                .body(tonic::body::Body::empty()),
            Some(Fault::InTrailers) => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", unavailable());
                let body = Empty::<Bytes>::new()
                    .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                response.body(tonic::body::Body::new(body))
            }
        };
        let response = response.expect("valid response");
        Box::pin(async move { Ok(response) })
    }
}

/// Numbered lines on stdout.
struct Narrator(u32);

impl Narrator {
    fn say(&mut self, line: impl std::fmt::Display) {
        self.0 += 1;
        println!("{:2}. {line}", self.0);
    }
}

fn breaker_transitions(
    events: &mut EventStream<palisade::circuit_breaker::CircuitBreakerEvent>,
    say: &mut Narrator,
) {
    for event in events.drain() {
        if let CircuitBreakerEventKind::StateTransition { from, to, .. } = event.kind {
            say.say(format!("breaker '{}': {from:?} -> {to:?}", event.breaker));
        }
    }
}

fn retries(events: &mut EventStream<RetryEvent>, say: &mut Narrator) {
    for event in events.drain() {
        match event.kind {
            RetryEventKind::Retrying { attempt, delay, .. } => say.say(format!(
                "attempt {attempt} failed with UNAVAILABLE: retrying in {} ms",
                delay.as_millis()
            )),
            RetryEventKind::Succeeded { attempts } if attempts > 1 => {
                say.say(format!("succeeded on attempt {attempts}"))
            }
            _ => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut say = Narrator(0);

    // The server: grpc.health.v1, with faults on cue.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let faults = Faults::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = tower::layer::layer_fn({
        let (faults, calls) = (faults.clone(), calls.clone());
        move |inner| FaultInjection {
            inner,
            faults: faults.clone(),
            calls: calls.clone(),
        }
    });
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    say.say("server: grpc.health.v1 on 127.0.0.1, answering UNAVAILABLE on cue");

    // The client: retry (gRFC A6) and a circuit breaker, in one line.
    let retry = Retry::new(
        "health",
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(Backoff::exponential(Duration::from_millis(20), 2.0).build()?)
            .build()?,
    );
    let breaker = CircuitBreaker::new(
        "health",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4)
            .failure_rate_threshold(50.0)
            .wait_duration_in_open_state(Duration::from_millis(300))
            .permitted_number_of_calls_in_half_open_state(1)
            .build()?,
    );
    let pipeline = Pipeline::builder("health")
        .retry(GrpcRetryPolicy::new().layer(retry.clone()))
        .circuit_breaker(breaker.layer().with_classifier(GrpcStatusClassifier::new()))
        .build()?;
    let channel = Endpoint::from_shared(format!("http://{address}"))?.connect_lazy();
    let mut client = HealthClient::new(palisade::tonic::channel(channel, pipeline));
    let mut retry_events = retry.subscribe();
    let mut breaker_events = breaker.subscribe();
    say.say("client: HealthClient::new(palisade::tonic::channel(channel, pipeline))");

    // 1. Retries with backoff.
    say.say("the server will answer UNAVAILABLE (in its headers) twice");
    {
        let mut faults = faults.lock().expect("not poisoned");
        faults.extend([Fault::InHeaders, Fault::InHeaders]);
    }
    let reply = client.check(HealthCheckRequest::default()).await?;
    retries(&mut retry_events, &mut say);
    say.say(format!("health: {:?}", reply.get_ref().status()));

    // 2. Failures in the trailers open the breaker (not retried: the call
    //    was committed when the headers came).
    say.say("the server will answer UNAVAILABLE in its trailers");
    faults
        .lock()
        .expect("not poisoned")
        .push_back(Fault::InTrailers);
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("UNAVAILABLE");
    say.say(format!("call failed: {:?} (sent once)", status.code()));
    breaker_transitions(&mut breaker_events, &mut say);

    // 3. The open breaker answers for the server.
    let calls_before = calls.load(Ordering::SeqCst);
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("the breaker is open");
    let open = palisade::find_cause::<BreakerOpen>(&status).ok_or("not the breaker")?;
    if calls.load(Ordering::SeqCst) != calls_before {
        return Err("the open breaker let a call through".into());
    }
    say.say(format!(
        "call rejected: {:?} from breaker '{}', the server was not called",
        status.code(),
        open.breaker()
    ));

    // 4. After its wait, the breaker lets a trial call through.
    say.say("waiting out the breaker's 300 ms in OPEN");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let reply = client.check(HealthCheckRequest::default()).await?;
    say.say(format!("trial call: {:?}", reply.get_ref().status()));
    breaker_transitions(&mut breaker_events, &mut say);
    retries(&mut retry_events, &mut say);
    say.say("recovered");
    Ok(())
}
