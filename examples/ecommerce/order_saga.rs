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

use std::sync::Arc;
use std::time::Duration;

use palisade::BoxError;
use palisade::backoff::Backoff;
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

/// The orders service, with its own database (an embedded SQLite one):
/// orders by idempotency key, each pending, confirmed or cancelled.
pub struct Orders {
    db: Mutex<rusqlite::Connection>,
}

impl Orders {
    fn open() -> Result<Self, BoxError> {
        let db = rusqlite::Connection::open_in_memory()?;
        db.execute_batch(
            "CREATE TABLE orders (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 key TEXT NOT NULL UNIQUE,
                 state TEXT NOT NULL
             );",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    /// Creates a pending order under an idempotency key (a repeat returns
    /// the same order).
    fn create(&self, key: &str) -> Result<u64, rusqlite::Error> {
        let db = self.db.lock();
        db.execute(
            "INSERT INTO orders (key, state) VALUES (?1, 'pending') ON CONFLICT (key) DO NOTHING",
            [key],
        )?;
        db.query_row("SELECT id FROM orders WHERE key = ?1", [key], |row| {
            row.get(0)
        })
    }

    fn set(&self, key: &str, state: &str) -> Result<(), rusqlite::Error> {
        self.db
            .lock()
            .execute("UPDATE orders SET state = ?2 WHERE key = ?1", [key, state])?;
        Ok(())
    }

    fn state_by_key(&self, key: &str) -> Result<String, rusqlite::Error> {
        self.db
            .lock()
            .query_row("SELECT state FROM orders WHERE key = ?1", [key], |row| {
                row.get(0)
            })
    }

    fn state(&self, id: u64) -> Result<String, rusqlite::Error> {
        self.db
            .lock()
            .query_row("SELECT state FROM orders WHERE id = ?1", [id], |row| {
                row.get(0)
            })
    }
}

/// The inventory service, with its own database: stock per item and
/// reservations by idempotency key.
pub struct Inventory {
    db: Mutex<rusqlite::Connection>,
    hang: Mutex<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{0} is out of stock")]
    OutOfStock(String),
    #[error("inventory database: {0}")]
    Database(#[from] rusqlite::Error),
}

impl Inventory {
    fn open(stock: &[(&str, u32)]) -> Result<Self, BoxError> {
        let db = rusqlite::Connection::open_in_memory()?;
        db.execute_batch(
            "CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER NOT NULL);
             CREATE TABLE reservations (key TEXT PRIMARY KEY, item TEXT NOT NULL);",
        )?;
        for (item, available) in stock {
            db.execute(
                "INSERT INTO stock (item, available) VALUES (?1, ?2)",
                rusqlite::params![item, available],
            )?;
        }
        Ok(Self {
            db: Mutex::new(db),
            hang: Mutex::new(false),
        })
    }

    /// Reserves one `item` under an idempotency key, in one transaction.
    async fn reserve(&self, key: &str, item: &str) -> Result<(), InventoryError> {
        if *self.hang.lock() {
            std::future::pending::<()>().await; // a call that never returns
        }
        let mut db = self.db.lock();
        let tx = db.transaction()?;
        let already: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM reservations WHERE key = ?1)",
            [key],
            |row| row.get(0),
        )?;
        if already {
            return Ok(());
        }
        let taken = tx.execute(
            "UPDATE stock SET available = available - 1 WHERE item = ?1 AND available > 0",
            [item],
        )?;
        if taken == 0 {
            return Err(InventoryError::OutOfStock(item.to_owned()));
        }
        tx.execute(
            "INSERT INTO reservations (key, item) VALUES (?1, ?2)",
            [key, item],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Releases the reservation made under `key`, if there is one.
    fn release(&self, key: &str) -> Result<(), rusqlite::Error> {
        let mut db = self.db.lock();
        let tx = db.transaction()?;
        let item: Option<String> = match tx.query_row(
            "DELETE FROM reservations WHERE key = ?1 RETURNING item",
            [key],
            |row| row.get(0),
        ) {
            Ok(item) => Some(item),
            // Nothing was reserved under this key (the action never ran).
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(error) => return Err(error),
        };
        if let Some(item) = item {
            tx.execute(
                "UPDATE stock SET available = available + 1 WHERE item = ?1",
                [item],
            )?;
        }
        tx.commit()
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
                // A database error may or may not have created the order.
                svc.orders
                    .create(&cx.idempotency_key())
                    .map_err(StepError::unknown)
            },
            move |svc: Arc<Services>, cx: StepContext| async move {
                svc.orders.set(&order_key(&cx), "cancelled")?;
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
                    .map_err(|error| match error {
                        // Out of stock changed nothing; the transaction
                        // rolled back on any other error too.
                        InventoryError::OutOfStock(_) | InventoryError::Database(_) => {
                            StepError::no_effect(error)
                        }
                    })
            },
            |svc: Arc<Services>, cx: StepContext| async move {
                let key = format!("{}:reserve-inventory:action", cx.saga_id());
                svc.inventory.release(&key)?;
                Ok::<_, BoxError>(())
            },
        ))
        .pivot(Step::without_compensation(
            "confirm",
            move |svc: Arc<Services>, cx: StepContext| async move {
                svc.orders
                    .set(
                        &format!("{}:create-order:action", cx.saga_id()),
                        "confirmed",
                    )
                    .map_err(StepError::unknown)
            },
        ))
        .build()?)
}

/// Runs the demonstration.
pub async fn run(payments: PaymentsClient) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?; // the embedded log; a real service keeps it
    let db = dir.path().join("sagas.db");
    let services = Arc::new(Services {
        orders: Orders::open()?,
        payments,
        inventory: Inventory::open(&[("book", 2), ("lamp", 0)])?,
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
        let saga = handle.id();
        match handle.outcome().await? {
            SagaOutcome::Completed(out) => {
                let order_id = out.get::<u64>("create-order")?;
                println!(
                    "   user {user_id}: order {order_id} {} (orders database), payment {}",
                    services.orders.state(order_id)?,
                    out.get::<u64>("payment")?
                )
            }
            SagaOutcome::Compensated(failure) => println!(
                "   user {user_id}: rolled back ({} failed: {}); order {}; refunds so far {:?}",
                failure.step,
                failure.error,
                services
                    .orders
                    .state_by_key(&format!("{saga}:create-order:action"))?,
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
