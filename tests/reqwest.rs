//! `palisade::reqwest` against a real HTTP server on 127.0.0.1 that fails
//! as each test scripts it. Run with `cargo test --features reqwest --test reqwest`.
//!
//! The tests run on paused time: the server and the client share the test's
//! runtime, and waits (backoff, `Retry-After`) pass as soon as nothing else
//! can run, while the server records on tokio's clock when each request
//! arrived.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade::BoxError;
use palisade::backoff::Backoff;
use palisade::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitState, SlidingWindow,
};
use palisade::classify::{Classify, HttpStatusClassifier, Outcome};
use palisade::pipeline::{Pipeline, PipelineError, RetryStage, Stage};
use palisade::reqwest::PipelineClient;
use palisade::reqwest::{ReqwestClassifier, ReqwestRetryPolicy, mark_idempotent};
use palisade::retry::{GiveUpReason, Retry, RetryConfig, RetryEventKind};
use reqwest::{Method, Request};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

/// What the server answers to one request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// 503 with `Retry-After: <seconds>`.
    RetryAfter(u16),
    /// Never answers.
    Hang,
}

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    body: Bytes,
    idempotency_key: Option<String>,
    at: Instant,
}

/// An HTTP/1 server on 127.0.0.1:0 that answers with its script, then 200.
struct FaultServer {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl FaultServer {
    async fn start(script: impl IntoIterator<Item = Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Mutex::new(script.into_iter().collect::<VecDeque<_>>()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (task_script, task_seen) = (Arc::clone(&script), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, seen) = (Arc::clone(&task_script), Arc::clone(&task_seen));
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let (script, seen) = (Arc::clone(&script), Arc::clone(&seen));
                        async move { Ok::<_, Infallible>(answer(request, &script, &seen).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            script,
            seen,
            task,
        }
    }

    fn url(&self) -> reqwest::Url {
        format!("http://{}/orders", self.addr)
            .parse()
            .expect("valid url")
    }

    fn request(&self, method: Method) -> Request {
        Request::new(method, self.url())
    }

    fn post(&self, body: &'static str) -> Request {
        let mut request = self.request(Method::POST);
        *request.body_mut() = Some(body.into());
        request
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(replies);
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    script: &Mutex<VecDeque<Reply>>,
    seen: &Mutex<Vec<Seen>>,
) -> hyper::Response<Full<Bytes>> {
    let method = request.method().clone();
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::from_static(b"<body failed>"),
    };
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            method,
            body,
            idempotency_key,
            at: Instant::now(),
        });
    let reply = script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
        .unwrap_or(Reply::Status(200));
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"done")));
    match reply {
        Reply::Status(status) => {
            *response.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
        }
        Reply::RetryAfter(seconds) => {
            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().expect("digits"));
        }
        Reply::Hang => std::future::pending::<()>().await,
    }
    response
}

/// Three attempts, 10 ms apart at first (no jitter, so delays are exact).
fn retry(name: &str) -> Retry {
    Retry::new(
        name,
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(
                Backoff::exponential(Duration::from_millis(10), 2.0)
                    .jitter(palisade::backoff::Jitter::None)
                    .build()
                    .expect("valid backoff"),
            )
            .build()
            .expect("valid retry"),
    )
}

fn retrying_client(name: &str) -> (PipelineClient<RetryStage>, Retry) {
    let retry = retry(name);
    let pipeline = Pipeline::builder(name)
        .retry(retry.clone())
        .build()
        .expect("valid pipeline");
    (
        palisade::reqwest::client(reqwest::Client::new(), pipeline),
        retry,
    )
}

async fn send<S>(client: &mut S, request: Request) -> Result<reqwest::Response, PipelineError>
where
    S: Service<Request, Response = reqwest::Response, Error = PipelineError>,
{
    client.ready().await?.call(request).await
}

#[tokio::test(start_paused = true)]
async fn service_unavailable_responses_open_the_breaker() -> Result<(), BoxError> {
    let server = FaultServer::start([Reply::Status(503); 4]).await;
    let breaker = CircuitBreaker::new(
        "orders",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4)
            .failure_rate_threshold(50.0)
            .build()?,
    );
    let pipeline = Pipeline::builder("orders")
        .circuit_breaker(breaker.clone())
        .build()?;
    let mut orders = palisade::reqwest::client(reqwest::Client::new(), pipeline);

    for _ in 0..4 {
        let response = send(&mut orders, server.request(Method::GET)).await?;
        assert_eq!(response.status(), 503);
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    match send(&mut orders, server.request(Method::GET)).await {
        Err(PipelineError::Rejected(rejection)) => {
            assert_eq!(rejection.stage(), Stage::CircuitBreaker)
        }
        other => panic!("expected the open breaker's rejection, got {other:?}"),
    }
    assert_eq!(server.seen().len(), 4, "the open breaker sent nothing");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn two_service_unavailable_then_ok_succeeds_on_the_third_attempt() -> Result<(), BoxError> {
    let server = FaultServer::start([Reply::Status(503), Reply::Status(503)]).await;
    let (mut orders, retry) = retrying_client("orders");

    let response = send(&mut orders, server.request(Method::GET)).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "done");
    assert_eq!(server.seen().len(), 3);
    let metrics = retry.metrics();
    assert_eq!((metrics.succeeded_after_retry, metrics.retries), (1, 2));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn retry_after_one_second_is_waited() -> Result<(), BoxError> {
    let server = FaultServer::start([Reply::RetryAfter(1)]).await;
    let (mut orders, retry) = retrying_client("orders");
    let mut events = retry.subscribe();

    let response = send(&mut orders, server.request(Method::GET)).await?;
    assert_eq!(response.status(), 200);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_millis(1100),
        "the server saw the retry {gap:?} after the 503"
    );
    let retrying = events
        .drain()
        .into_iter()
        .find_map(|event| match event.kind {
            RetryEventKind::Retrying {
                delay,
                server_delay,
                ..
            } => Some((delay, server_delay)),
            _ => None,
        });
    assert_eq!(retrying, Some((Duration::from_secs(1), true)));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn post_is_sent_once_unless_marked_idempotent() -> Result<(), BoxError> {
    let server = FaultServer::start([Reply::Status(503)]).await;
    let (mut orders, retry) = retrying_client("orders");
    let mut events = retry.subscribe();

    let response = send(&mut orders, server.post("order 17")).await?;
    assert_eq!(response.status(), 503, "the POST's own answer, not retried");
    assert_eq!(server.seen().len(), 1);
    assert!(events.drain().iter().any(|event| matches!(
        event.kind,
        RetryEventKind::Failed {
            attempts: 1,
            reason: GiveUpReason::RequestNotRetryable
        }
    )));

    server.script([Reply::Status(503), Reply::Status(503)]);
    let mut order = server.post("order 18");
    mark_idempotent(&mut order);
    let response = send(&mut orders, order).await?;
    assert_eq!(response.status(), 200);
    let seen = server.seen();
    let marked = &seen[1..];
    assert_eq!(marked.len(), 3, "the marked POST is retried twice");
    let key = marked[0].idempotency_key.clone();
    assert!(key.is_some());
    for attempt in marked {
        assert_eq!(attempt.method, Method::POST);
        assert_eq!(
            attempt.body, "order 18",
            "the body arrives intact on every attempt"
        );
        assert_eq!(
            attempt.idempotency_key, key,
            "every attempt carries the same key"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn streaming_body_is_sent_once() -> Result<(), BoxError> {
    let server = FaultServer::start([Reply::Status(503)]).await;
    // The ServiceBuilder form, with the module's classifier and policy.
    let retry = retry("uploads");
    let pipeline = Pipeline::builder("uploads")
        .retry(
            retry
                .layer()
                .with_classifier(ReqwestClassifier::new())
                .with_policy(ReqwestRetryPolicy),
        )
        .build()?;
    let mut uploads = ServiceBuilder::new()
        .layer(pipeline)
        .service(reqwest::Client::new());

    let chunks = futures::stream::iter(
        ["part 1, ", "part 2"].map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from(chunk)))),
    );
    let mut upload = server.request(Method::PUT); // idempotent, but the body streams
    *upload.body_mut() = Some(reqwest::Body::wrap(StreamBody::new(chunks)));
    let response = uploads.ready().await?.call(upload).await?;

    assert_eq!(response.status(), 503);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "part 1, part 2");
    assert_eq!(retry.metrics().failed_without_retry, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn connect_errors_and_timeouts_are_retried() -> Result<(), BoxError> {
    // Nothing listens on a port just released.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let (mut orders, retry) = retrying_client("orders");
    let refused = Request::new(Method::GET, format!("http://{closed}/").parse()?);
    let error = send(&mut orders, refused)
        .await
        .expect_err("nothing listens");
    let cause = palisade::find_cause::<reqwest::Error>(&error).expect("reqwest's error");
    assert!(cause.is_connect());
    assert_eq!(retry.metrics().failed_after_retries, 1);

    let server = FaultServer::start([Reply::Hang]).await;
    let mut slow = server.request(Method::GET);
    *slow.timeout_mut() = Some(Duration::from_secs(1));
    let response = send(&mut orders, slow).await?;
    assert_eq!(
        response.status(),
        200,
        "the attempt after the timeout answers"
    );
    assert_eq!(retry.metrics().succeeded_after_retry, 1);
    Ok(())
}

#[tokio::test]
async fn classifier_agrees_with_http_status_classifier_on_every_status() {
    for too_many_requests in [true, false] {
        let ours = ReqwestClassifier::new().count_too_many_requests(too_many_requests);
        let http = HttpStatusClassifier::new().count_too_many_requests(too_many_requests);
        for status in 100..=599u16 {
            let response = || http::Response::builder().status(status).body(Bytes::new());
            let expected = http.classify(Ok::<_, &()>(&response().expect("valid status")));
            let response: reqwest::Response = response().expect("valid status").into();
            assert_eq!(
                ours.classify(Ok::<_, &reqwest::Error>(&response)),
                expected,
                "status {status}"
            );
            assert_eq!(
                ours.classify(Ok::<_, &BoxError>(&response)),
                expected,
                "status {status} inside a pipeline"
            );
        }
    }
    let builder_error = reqwest::Client::new()
        .get("not a url")
        .build()
        .expect_err("a bad url");
    assert_eq!(
        ours_classify(&builder_error),
        Outcome::Ignored,
        "an unsent request says nothing about the server"
    );
    let elapsed: BoxError = "a stage's own error".into();
    assert_eq!(
        ReqwestClassifier::new().classify(Err::<&reqwest::Response, _>(&elapsed)),
        Outcome::Failure { retryable: true }
    );
}

fn ours_classify(error: &reqwest::Error) -> Outcome {
    ReqwestClassifier::new().classify(Err::<&reqwest::Response, _>(error))
}
