//! The order saga of the e-commerce system: create order -> payment ->
//! reserve inventory -> confirm, orchestrated by palisade's saga executor
//! with its log in an embedded SQLite file.
//!
//! The payment step calls the payments cluster through the same pipeline
//! and balancer as the rest of the example. Shows a completed order, an
//! order compensated because the stock ran out (the payment is refunded,
//! the order cancelled), and a crash: the executor is dropped while the
//! inventory call hangs, and a new executor on the same file finishes the
//! saga.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use palisade::BoxError;
use palisade::retry::Backoff;
use palisade::saga::{
    SagaDefinition, SagaExecutor, SagaOutcome, SagaState, SqliteLog, Step, StepContext, StepError,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use palisade::pipeline::PipelineError;
use tower::util::BoxCloneSyncService;

use crate::payments::{Charge, Receipt};

/// The payments client: the resilience pipeline over the balanced cluster.
pub type PaymentsClient = BoxCloneSyncService<Charge, Receipt, PipelineError>;

/// The saga's input.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub user_id: u64,
    pub item: String,
    pub amount_cents: u64,
}

/// The orders service: orders by id, each pending, confirmed or cancelled.
#[derive(Default)]
pub struct Orders {
    orders: Mutex<HashMap<String, (u64, &'static str)>>,
}

impl Orders {
    /// Creates a pending order under an idempotency key (a repeat returns
    /// the same order).
    fn create(&self, key: &str) -> u64 {
        let mut orders = self.orders.lock();
        let next = orders.len() as u64 + 1;
        orders.entry(key.to_owned()).or_insert((next, "pending")).0
    }
    fn set(&self, key: &str, state: &'static str) {
        if let Some(order) = self.orders.lock().get_mut(key) {
            order.1 = state;
        }
    }
}

/// The inventory service: stock per item, reservations by key.
pub struct Inventory {
    stock: Mutex<HashMap<String, u32>>,
    reserved: Mutex<HashSet<String>>,
    hang: Mutex<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is out of stock")]
pub struct OutOfStock(String);

impl Inventory {
    async fn reserve(&self, key: &str, item: &str) -> Result<(), OutOfStock> {
        if *self.hang.lock() {
            std::future::pending::<()>().await; // a call that never returns
        }
        if self.reserved.lock().contains(key) {
            return Ok(());
        }
        let mut stock = self.stock.lock();
        match stock.get_mut(item) {
            Some(n) if *n > 0 => {
                *n -= 1;
                self.reserved.lock().insert(key.to_owned());
                Ok(())
            }
            _ => Err(OutOfStock(item.to_owned())),
        }
    }
    fn release(&self, key: &str, item: &str) {
        if self.reserved.lock().remove(key) {
            *self.stock.lock().entry(item.to_owned()).or_default() += 1;
        }
    }
}

/// The clients the saga's steps call.
pub struct Services {
    pub orders: Orders,
    pub payments: PaymentsClient,
    pub inventory: Inventory,
    refunds: Mutex<Vec<u64>>,
}

/// The order saga, version 1.
pub fn definition() -> Result<SagaDefinition<Services>, BoxError> {
    let quick = Backoff::exponential(Duration::from_millis(5), 2.0).build()?;
    let order_key = |cx: &StepContext| format!("{}:create-order:action", cx.saga_id());
    Ok(SagaDefinition::builder("create-order", 1)
        .step(Step::new(
            "create-order",
            |svc: Arc<Services>, cx: StepContext| async move {
                Ok::<_, StepError>(svc.orders.create(&cx.idempotency_key()))
            },
            move |svc: Arc<Services>, cx: StepContext| async move {
                svc.orders.set(&order_key(&cx), "cancelled");
                Ok::<_, BoxError>(())
            },
        ))
        .step(
            Step::new(
                "payment",
                |svc: Arc<Services>, cx: StepContext| async move {
                    let input: PlaceOrder = cx.input()?;
                    let order_id: u64 = cx.output("create-order")?;
                    let charge = Charge {
                        order_id,
                        amount_cents: input.amount_cents,
                    };
                    let receipt = svc
                        .payments
                        .clone()
                        .oneshot(charge)
                        .await
                        .map_err(|error| {
                            if error.is_rejection() {
                                // The breaker, limiter or bulkhead turned the
                                // call away: payments never saw it.
                                StepError::no_effect(error)
                            } else {
                                StepError::unknown(error) // a failed call may have charged
                            }
                        })?;
                    Ok::<_, StepError>(receipt.payment_id)
                },
                |svc: Arc<Services>, cx: StepContext| async move {
                    if let Some(payment_id) = cx.own_output::<u64>()? {
                        svc.refunds.lock().push(payment_id);
                    }
                    Ok::<_, BoxError>(())
                },
            )
            .retry(quick.clone(), 3)
            .timeout(Duration::from_millis(500)),
        )
        .step(Step::new(
            "reserve-inventory",
            |svc: Arc<Services>, cx: StepContext| async move {
                let input: PlaceOrder = cx.input()?;
                svc.inventory
                    .reserve(&cx.idempotency_key(), &input.item)
                    .await
                    .map_err(StepError::no_effect) // out of stock changed nothing
            },
            |svc: Arc<Services>, cx: StepContext| async move {
                let input: PlaceOrder = cx.input()?;
                let key = format!("{}:reserve-inventory:action", cx.saga_id());
                svc.inventory.release(&key, &input.item);
                Ok::<_, BoxError>(())
            },
        ))
        .pivot(Step::without_compensation(
            "confirm",
            move |svc: Arc<Services>, cx: StepContext| async move {
                svc.orders.set(
                    &format!("{}:create-order:action", cx.saga_id()),
                    "confirmed",
                );
                Ok::<_, StepError>(())
            },
        ))
        .build()?)
}

/// Runs the demonstration.
pub async fn run(payments: PaymentsClient) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?; // the embedded log; a real service keeps it
    let db = dir.path().join("sagas.db");
    let services = Arc::new(Services {
        orders: Orders::default(),
        payments,
        inventory: Inventory {
            stock: Mutex::new(HashMap::from([("book".to_owned(), 2)])),
            reserved: Mutex::default(),
            hang: Mutex::new(false),
        },
        refunds: Mutex::default(),
    });
    let order_saga = definition()?;
    let executor = SagaExecutor::builder(Arc::clone(&services), SqliteLog::open(&db)?)
        .owner("orders-1")
        .build()?;
    executor.register(&order_saga);
    executor.recover().await?;

    println!("7. order saga: create order -> payment -> reserve inventory -> confirm");
    for (user_id, item) in [(1, "book"), (2, "lamp")] {
        let order = PlaceOrder {
            user_id,
            item: item.into(),
            amount_cents: 1999,
        };
        let handle = executor.start(&order_saga, &order).await?;
        match handle.outcome().await? {
            SagaOutcome::Completed(out) => println!(
                "   user {user_id}: order {} confirmed, payment {}",
                out.get::<u64>("create-order")?,
                out.get::<u64>("payment")?
            ),
            SagaOutcome::Compensated(failure) => println!(
                "   user {user_id}: rolled back ({} failed: {}); refunds so far {:?}",
                failure.step,
                failure.error,
                services.refunds.lock()
            ),
            other => println!("   user {user_id}: {other:?}"),
        }
    }

    println!("8. crash: the executor is dropped while the inventory call hangs");
    *services.inventory.hang.lock() = true;
    let order = PlaceOrder {
        user_id: 3,
        item: "book".into(),
        amount_cents: 500,
    };
    let handle = executor.start(&order_saga, &order).await?;
    let id = handle.id();
    while executor.status(id).await?.records < 6 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(executor);
    *services.inventory.hang.lock() = false;
    let restarted = SagaExecutor::builder(Arc::clone(&services), SqliteLog::open(&db)?)
        .owner("orders-1")
        .build()?;
    restarted.register(&order_saga);
    let recovery = restarted.recover().await?;
    for handle in recovery.resumed {
        let outcome = handle.outcome().await?;
        println!("   recovered saga {}: {:?}", id, outcome.state());
    }
    let history = restarted.history(id).await?;
    println!(
        "   its log: {} records; state {:?}",
        history.len(),
        restarted.status(id).await?.state
    );
    assert_eq!(restarted.status(id).await?.state, SagaState::Completed);
    Ok(())
}
