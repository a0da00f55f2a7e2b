//! The palisade e-commerce example.
//!
//! Today it shows a resilience pipeline guarding the payments service of the
//! order flow: a retry, a circuit breaker, a timeout and a bulkhead of five
//! calls (the seed's separate pool for payments), stacked in the right order
//! by `Pipeline`. Payments go down, each charge is tried twice, the breaker
//! trips and fails orders fast without calling payments (and without
//! retrying), then lets trial calls through and closes once payments
//! recover. The gateway, users (gRPC), products, orders, inventory
//! and notifications services join as their layers are built.
//!
//! Run it with `cargo run --example ecommerce`. It needs no external server
//! and finishes in about two seconds.

mod payments;

use std::time::Duration;

use palisade::BoxError;
use palisade::bulkhead::{BulkheadConfig, BulkheadRegistry};
use palisade::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerRegistry, EventKind, SlidingWindow,
};
use palisade::pipeline::{Pipeline, PipelineError};
use palisade::retry::{Backoff, RetryConfig, RetryLayer};
use payments::{Charge, Payments};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "palisade=info".into()),
        )
        .init();

    // One breaker per downstream service, all from one default configuration.
    let breakers = CircuitBreakerRegistry::new(
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(10))
            .minimum_number_of_calls(5)
            .failure_rate_threshold(50.0)
            .wait_duration_in_open_state(Duration::from_millis(300))
            .permitted_number_of_calls_in_half_open_state(2)
            .build()?,
    );
    let breaker = breakers.breaker("payments");
    let mut events = breaker.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let EventKind::StateTransition { from, to, reason } = event.kind {
                println!(
                    "  [event] breaker '{}': {from} -> {to} ({reason:?})",
                    event.breaker
                );
            }
        }
    });

    // One bulkhead per downstream service: payments get five calls at once.
    let bulkheads =
        BulkheadRegistry::new(BulkheadConfig::builder().max_concurrent_calls(10).build()?);
    let payments_pool = BulkheadConfig::builder().max_concurrent_calls(5).build()?;
    let bulkhead = bulkheads.bulkhead_with("payments", || payments_pool);

    // The pipeline puts the retry outside the breaker (each retry goes
    // through the breaker and takes a bulkhead permit again) and returns a
    // breaker's rejection at once instead of retrying it. (Charges are keyed
    // by order id, so the provider de-duplicates them.)
    let retry = RetryLayer::new(
        "payments",
        RetryConfig::builder()
            .max_attempts(2)
            .backoff(Backoff::constant(Duration::from_millis(5)).build()?)
            .build()?,
    );
    let pipeline = Pipeline::builder("payments")
        .retry(retry.clone())
        .circuit_breaker(breaker.clone())
        .timeout(Duration::from_millis(200))
        .bulkhead(bulkhead.clone())
        .build()?;

    let provider = Payments::default();
    let mut payments = ServiceBuilder::new()
        .layer(pipeline)
        .service(provider.clone());

    println!("1. payments healthy");
    place_orders(&mut payments, 1..=5).await;

    println!(
        "2. payments go down: the breaker trips at 50 % failures in its window, then fails fast"
    );
    provider.set_down(true);
    let before = provider.calls_received();
    place_orders(&mut payments, 6..=15).await;
    println!(
        "   10 orders, {} reached payments; breaker metrics: {:?}",
        provider.calls_received() - before,
        breaker.metrics()
    );

    println!("3. payments recover; after the open wait, trial calls close the breaker");
    provider.set_down(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    place_orders(&mut payments, 16..=20).await;

    println!("4. retries: {:?}", retry.metrics());
    println!("   payments bulkhead: {:?}", bulkhead.metrics());
    println!("5. all breakers:");
    for (name, metrics) in breakers.metrics() {
        println!(
            "   {name}: {} (failure rate {:?}, rejected {})",
            metrics.state, metrics.failure_rate, metrics.not_permitted_calls
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await; // let the event printer catch up
    Ok(())
}

async fn place_orders<S>(payments: &mut S, orders: std::ops::RangeInclusive<u64>)
where
    S: Service<Charge, Response = payments::Receipt, Error = PipelineError>,
{
    for order_id in orders {
        let charge = Charge {
            order_id,
            amount_cents: 1999,
        };
        let started = tokio::time::Instant::now();
        let result = payments.ready().await.map(|svc| svc.call(charge));
        let result = match result {
            Ok(future) => future.await,
            Err(err) => Err(err),
        };
        let took = started.elapsed();
        match result {
            Ok(receipt) => println!(
                "   order {}: paid (payment {}) in {took:.1?}",
                receipt.order_id, receipt.payment_id
            ),
            Err(err) if err.is_rejection() => println!(
                "   order {order_id}: rejected fast by the {} in {took:.1?}: {err}",
                err.stage()
            ),
            Err(err) => println!("   order {order_id}: failed in {took:.1?}: {err}"),
        }
    }
}
