//! The palisade e-commerce example.
//!
//! Today it shows the orders service paying through a cluster of two
//! payments instances:
//!
//! * the instances register in the embedded service registry with a TTL
//!   health check and heartbeat; a balancer spreads charges over the healthy
//!   ones and ejects an instance that keeps failing (outlier detection);
//! * a resilience pipeline around the balancer retries a failed charge (on
//!   another instance), trips a circuit breaker when the whole cluster fails,
//!   bounds each attempt with a timeout and caps concurrent charges with a
//!   bulkhead of five (the seed's separate pool for payments).
//!
//! Then the order saga (create order → payment → reserve inventory →
//! confirm) runs on the saga executor with its log in an embedded SQLite
//! file; the orders and inventory services each keep their own (embedded
//! SQLite) database: an order completes, an out-of-stock order is compensated (the
//! payment refunded, the order cancelled), and an executor that crashes
//! mid-saga is replaced by one that finishes the saga from the log.
//!
//! The gateway, users (gRPC), products and notifications services join as
//! their layers are built.
//!
//! Run it with `cargo run --example ecommerce`. It needs no external server
//! and finishes in about three seconds.

mod order_saga;
mod payments;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use palisade::BoxError;
use palisade::backoff::Backoff;
use palisade::bulkhead::{BulkheadConfig, BulkheadRegistry};
use palisade::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerEventKind, CircuitBreakerRegistry, SlidingWindow,
};
use palisade::discovery::{
    Balance, BalanceConfig, BalanceEventKind, HealthCheck, InMemoryRegistry, Instance,
    OutlierDetection, Picker, Registrar, Registration, make_fn,
};
use palisade::pipeline::{Pipeline, PipelineError};
use palisade::retry::{Retry, RetryConfig};
use payments::{Charge, Payments};
use tower::{Service, ServiceBuilder, ServiceExt};

const HEARTBEAT: Duration = Duration::from_millis(100);
const TTL: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "palisade=info".into()),
        )
        .init();

    // The payments cluster: two instances register with a TTL check and
    // send heartbeats, as their processes would.
    let registry = InMemoryRegistry::new();
    let mut cluster = HashMap::new();
    let mut heartbeats = HashMap::new();
    for (id, address) in [
        ("payments-1", "127.0.0.1:7001"),
        ("payments-2", "127.0.0.1:7002"),
    ] {
        let instance = Instance::builder("payments", id, address).build()?;
        let registration = registry
            .register(Registration::new(instance, HealthCheck::ttl(TTL)?))
            .await?;
        cluster.insert(id.to_owned(), Payments::new(id));
        heartbeats.insert(
            id,
            tokio::spawn(heartbeat(registry.clone(), id, registration)),
        );
    }
    let cluster = Arc::new(cluster);

    // The orders service's client: one connection per healthy instance
    // ("connecting" looks the instance up here), round robin, and an
    // instance that fails three times in a row is ejected for a while.
    let connect = make_fn({
        let cluster = Arc::clone(&cluster);
        move |instance: &Instance| {
            cluster
                .get(instance.id().as_ref())
                .cloned()
                .ok_or_else(|| BoxError::from(format!("no process at {}", instance.address())))
        }
    });
    let balance = Balance::new(
        "payments",
        &registry,
        connect,
        BalanceConfig::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(
                OutlierDetection::builder()
                    .consecutive_failures(3)
                    .base_ejection_time(Duration::from_secs(10))
                    .build()?,
            )
            .build()?,
    )?;
    print_balance_events(&balance);

    // One breaker and one bulkhead per downstream service.
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
    print_breaker_transitions(&breaker);
    let bulkheads =
        BulkheadRegistry::new(BulkheadConfig::builder().max_concurrent_calls(10).build()?);
    let payments_pool = BulkheadConfig::builder().max_concurrent_calls(5).build()?;
    let bulkhead = bulkheads.bulkhead_with("payments", || payments_pool);

    // The pipeline puts the retry outside the breaker (each retry goes
    // through the breaker, takes a bulkhead permit and is balanced again)
    // and returns a breaker's rejection at once instead of retrying it.
    // (Charges are keyed by order id, so the provider de-duplicates them.)
    let retry = Retry::new(
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
    let mut payments = ServiceBuilder::new()
        .layer(pipeline)
        .service(balance.clone());

    println!("1. both payments instances healthy: charges alternate between them");
    place_orders(&mut payments, 1..=4).await;

    println!(
        "2. payments-2 starts failing: retries land on payments-1, then payments-2 is ejected"
    );
    cluster["payments-2"].set_down(true);
    place_orders(&mut payments, 5..=10).await;
    let metrics = balance.metrics();
    println!(
        "   balancer: {} instances, {} available, {} ejected",
        metrics.instances, metrics.available, metrics.ejected
    );

    println!("3. payments-2's process dies: its heartbeats stop and its TTL lapses");
    heartbeats["payments-2"].abort();
    tokio::time::sleep(TTL + HEARTBEAT).await;
    let metrics = balance.metrics();
    println!(
        "   balancer: {} instance(s): {:?}",
        metrics.instances,
        metrics
            .endpoints
            .iter()
            .map(|e| e.id.to_string())
            .collect::<Vec<_>>()
    );

    println!("4. payments-1 goes down too: the breaker trips at 50 % failures, then fails fast");
    cluster["payments-1"].set_down(true);
    place_orders(&mut payments, 11..=20).await;
    println!("   breaker: {:?}", breaker.metrics().state);

    println!("5. payments-1 recovers; after the open wait, trial calls close the breaker");
    cluster["payments-1"].set_down(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    place_orders(&mut payments, 21..=24).await;

    println!("6. metrics");
    println!("   retries: {:?}", retry.metrics());
    println!("   payments bulkhead: {:?}", bulkhead.metrics());
    for (name, metrics) in breakers.metrics() {
        println!(
            "   breaker {name}: {} (failure rate {:?}, rejected {})",
            metrics.state, metrics.failure_rate, metrics.not_permitted_calls
        );
    }

    // The order saga pays through the same pipeline and balancer.
    order_saga::run(order_saga::PaymentsClient::new(payments)).await?;
    tokio::time::sleep(Duration::from_millis(10)).await; // let the event printers catch up
    Ok(())
}

/// What an instance's process does while it lives: renew its TTL check.
/// When the task ends (the process dies) the guard is dropped without
/// running, so only the lapsed TTL removes the instance.
async fn heartbeat(
    registry: InMemoryRegistry,
    id: &'static str,
    registration: palisade::discovery::RegistrationGuard,
) {
    let _registration = registration.keep();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        if let Err(error) = registry.pass_ttl("payments", id).await {
            println!("   heartbeat of {id} failed: {error}");
        }
    }
}

fn print_balance_events<S: Clone + Send + Sync + 'static, C>(balance: &Balance<S, C>) {
    let mut events = balance.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event.kind {
                BalanceEventKind::Added { .. } => {
                    println!("  [event] balancer: {} joined", event.id)
                }
                BalanceEventKind::Removed => println!("  [event] balancer: {} left", event.id),
                BalanceEventKind::Ejected { .. } => {
                    println!("  [event] balancer: {} ejected", event.id)
                }
                _ => {}
            }
        }
    });
}

fn print_breaker_transitions(breaker: &palisade::circuit_breaker::CircuitBreaker) {
    let mut events = breaker.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let CircuitBreakerEventKind::StateTransition { from, to, reason } = event.kind {
                println!(
                    "  [event] breaker '{}': {from} -> {to} ({reason:?})",
                    event.breaker
                );
            }
        }
    });
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
        let result = match payments.ready().await {
            Ok(service) => service.call(charge).await,
            Err(error) => Err(error),
        };
        let took = started.elapsed();
        match result {
            Ok(receipt) => println!(
                "   order {}: paid by {} (payment {}) in {took:.1?}",
                receipt.order_id, receipt.instance, receipt.payment_id
            ),
            Err(err) if err.is_rejection() => println!(
                "   order {order_id}: rejected fast by the {} in {took:.1?}: {err}",
                err.stage()
            ),
            Err(err) => println!("   order {order_id}: failed in {took:.1?}: {err}"),
        }
    }
}
