//! A `reqwest::Client` behind a pipeline (retry and circuit breaker) in one
//! line, against a local server that fails on purpose: the breaker opens,
//! retries back off, and the client recovers.
//!
//! `cargo run --example reqwest_client --features reqwest`

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade::BoxError;
use palisade::backoff::{Backoff, Jitter};
use palisade::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerEventKind, SlidingWindow,
};
use palisade::pipeline::{Pipeline, PipelineError, Stage};
use palisade::retry::{Retry, RetryConfig, RetryEventKind};
use tower::{Service, ServiceExt};

/// Answers each request with the next status of `script`, 200 once it is empty.
async fn serve(listener: tokio::net::TcpListener, script: Arc<Mutex<VecDeque<u16>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let script = Arc::clone(&script);
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let status = script
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                *response.status_mut() =
                    hyper::StatusCode::from_u16(status.unwrap_or(200)).expect("valid");
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders/17", listener.local_addr()?);
    let script = Arc::new(Mutex::new(VecDeque::from([503; 4])));
    tokio::spawn(serve(listener, Arc::clone(&script)));

    let retry = Retry::new(
        "orders",
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(
                Backoff::exponential(Duration::from_millis(50), 2.0)
                    .jitter(Jitter::None)
                    .build()?,
            )
            .build()?,
    );
    let breaker = CircuitBreaker::new(
        "orders",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_number_of_calls(4)
            .failure_rate_threshold(50.0)
            .wait_duration_in_open_state(Duration::from_millis(300))
            .permitted_number_of_calls_in_half_open_state(1)
            .build()?,
    );
    let (mut retries, mut transitions) = (retry.subscribe(), breaker.subscribe());
    let pipeline = Pipeline::builder("orders")
        .retry(retry)
        .circuit_breaker(breaker)
        .build()?;

    // The one line: the client, classified and retried as HTTP.
    let mut orders = palisade::reqwest::client(reqwest::Client::new(), pipeline);

    let mut line = 0;
    let mut say = |text: String| {
        line += 1;
        println!("{line}. {text}");
    };
    say("the server answers 503 to the next 4 requests, then 200".into());
    for call in 1..=5 {
        if call == 4 {
            say("the server has recovered; waiting out the breaker's 300 ms open state".into());
            tokio::time::sleep(Duration::from_millis(350)).await;
        }
        if call == 5 {
            say("the server fails once more: one 503, then 200".into());
            script
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(503);
        }
        let request = reqwest::Request::new(reqwest::Method::GET, url.parse()?);
        let result = orders.ready().await?.call(request).await;
        for event in transitions.drain() {
            if let CircuitBreakerEventKind::StateTransition { from, to, .. } = event.kind {
                say(format!("call {call}: circuit breaker {from} -> {to}"));
            }
        }
        for event in retries.drain() {
            if let RetryEventKind::Retrying { attempt, delay, .. } = event.kind {
                say(format!(
                    "call {call}: attempt {attempt} failed, retrying in {} ms",
                    delay.as_millis()
                ));
            }
        }
        match result {
            Ok(response) => say(format!("call {call}: {}", response.status())),
            Err(PipelineError::Rejected(r)) if r.stage() == Stage::CircuitBreaker => say(format!(
                "call {call}: the open breaker rejected the attempt; nothing was sent"
            )),
            Err(error) => say(format!("call {call}: {error}")),
        }
    }
    Ok(())
}
