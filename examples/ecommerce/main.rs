//! The palisade e-commerce example.
//!
//! Today it shows a retry layer and a circuit breaker guarding the payments
//! service of the order flow: payments go down, each charge is tried twice,
//! the breaker trips and fails orders fast without calling payments (and
//! without retrying), then lets trial calls through and closes once payments
//! recover. The gateway, users (gRPC), products, orders, inventory
//! and notifications services join as their layers are built.
//!
//! Run it with `cargo run --example ecommerce`. It needs no external server
//! and finishes in about two seconds.

mod payments;

use std::time::Duration;

use palisade::BoxError;
use palisade::circuit_breaker::{
    BreakerOpen, CircuitBreakerConfig, CircuitBreakerRegistry, EventKind, SlidingWindow,
};
use palisade::classify::{ClassifyExt, DefaultClassifier};
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

    // Retry outside the breaker: each retry goes through the breaker again,
    // and a breaker's rejection is returned at once instead of retried.
    // (Charges are keyed by order id, so the provider de-duplicates them.)
    let retry = RetryLayer::new(
        "payments",
        RetryConfig::builder()
            .max_attempts(2)
            .backoff(Backoff::constant(Duration::from_millis(5)).build()?)
            .attempt_timeout(Duration::from_millis(200))
            .build()?,
    )
    .with_classifier(DefaultClassifier.pass_rejections());

    let provider = Payments::default();
    let mut payments = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(breaker.layer())
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
    S: Service<Charge, Response = payments::Receipt, Error = BoxError>,
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
            Err(err) => match err.downcast_ref::<BreakerOpen>() {
                Some(open) => println!("   order {order_id}: rejected fast in {took:.1?}: {open}"),
                None => println!("   order {order_id}: failed in {took:.1?}: {err}"),
            },
        }
    }
}
