//! The order saga, orchestrated by palisade's executor with its log in the
//! orders service's SQLite file: create the order PENDING → charge →
//! reserve stock → confirm. A failed step undoes the ones before it in
//! reverse: release the stock, refund the charge (by the charge's key, so a
//! charge whose reply was lost is refunded too), cancel the order. Every
//! change of the order writes its event to the outbox in the same
//! transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade::BoxError;
use palisade::backoff::Backoff;
use palisade::pipeline::PipelineError;
use palisade::saga::{SagaDefinition, SagaId, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use super::db::Db;
use super::http_json::{ApiCall, JsonReply};
use super::inventory::Line;

/// A JSON client through a resilience pipeline.
pub type PipelinedClient = BoxCloneSyncService<ApiCall, JsonReply, PipelineError>;

/// The saga's input, fixed when the order is placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The order's id (the saga's id).
    pub order_id: String,
    /// Who ordered.
    pub user_id: i64,
    /// What.
    pub items: Vec<Line>,
    /// The price, from the catalogue.
    pub total_cents: i64,
    /// The W3C trace context of the request that placed the order: the
    /// steps' calls carry it, whichever executor runs them.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Makes the executor running a saga "crash" when the saga reaches its
/// reserve-stock step: the step tells the orders service, which drops that
/// executor, and never returns.
#[derive(Default)]
pub struct CrashSwitch {
    armed: AtomicBool,
    /// Woken when a step trips the switch.
    pub tripped: Notify,
}

impl CrashSwitch {
    /// Arms the switch for the next saga that reaches reserve-stock.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// What the steps call.
pub struct SagaServices {
    /// The orders database (orders and outbox).
    pub db: Db,
    /// Payments: retry, breaker, timeout, bulkhead over the balancer.
    pub payments: PipelinedClient,
    /// Inventory: breaker and timeout over the balancer.
    pub inventory: PipelinedClient,
    /// The crash switch.
    pub crash: Arc<CrashSwitch>,
}

/// Writes an order event to the outbox, in the caller's transaction, with
/// the order's W3C trace context: the relay sends the event on in that
/// trace.
pub fn outbox(
    tx: &rusqlite::Transaction<'_>,
    order: &PlaceOrder,
    kind: &str,
) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO outbox (event_id, order_id, user_id, kind, traceparent)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            format!("{}:{kind}", order.order_id),
            order.order_id,
            order.user_id,
            kind,
            order.traceparent
        ],
    )?;
    Ok(())
}

/// Moves `order` from PENDING to `status`, with its outbox event; `false`
/// if it was not PENDING (a repeat changes nothing).
fn settle(db: &Db, order: &PlaceOrder, status: &str, event: &str) -> Result<bool, rusqlite::Error> {
    let mut db = db.lock();
    let tx = db.transaction()?;
    let changed = tx.execute(
        "UPDATE orders SET status = ?2 WHERE id = ?1 AND status = 'PENDING'",
        [&order.order_id, status],
    )?;
    if changed == 1 {
        outbox(&tx, order, event)?;
    }
    tx.commit()?;
    Ok(changed == 1)
}

/// Why a step failed, as the first word of the saga's failure text: the
/// orders service turns it into the reply's status.
pub const DECLINED: &str = "declined:";
/// See [`DECLINED`].
pub const OUT_OF_STOCK: &str = "out-of-stock:";

fn classify_call(
    result: Result<JsonReply, PipelineError>,
    call: &ApiCall,
    refused: &str,
) -> Result<JsonReply, StepError> {
    match result {
        Ok(reply) if reply.status.is_success() => Ok(reply),
        // A 4xx answer changed nothing.
        Ok(reply) => Err(StepError::no_effect(format!(
            "{refused} {}",
            reply.body["error"].as_str().unwrap_or("refused")
        ))),
        // Every attempt was turned away before it was sent (an open
        // breaker, a full bulkhead, no instance) or answered 503.
        Err(error) if !call.may_have_been_applied() => {
            Err(StepError::no_effect(format!("unavailable: {error}")))
        }
        // An attempt timed out or was cut off: it may have been applied,
        // even when a later one was rejected.
        Err(error) => Err(StepError::unknown(format!("unavailable: {error}"))),
    }
}

fn charge_key(saga: SagaId) -> String {
    format!("{saga}:charge:action")
}

fn reservation_key(saga: SagaId) -> String {
    format!("{saga}:reserve-stock:action")
}

async fn call(
    client: &PipelinedClient,
    call: &ApiCall,
    cx: &StepContext,
) -> Result<JsonReply, PipelineError> {
    let trace = cx
        .input::<PlaceOrder>()
        .ok()
        .and_then(|order| order.traceparent)
        .and_then(|header| super::edge::TraceParent::parse(&header));
    super::edge::within(trace, client.clone().oneshot(call.clone())).await
}

/// The order saga, version 1.
pub fn definition() -> Result<SagaDefinition<SagaServices>, BoxError> {
    let undo_backoff = Backoff::exponential(Duration::from_millis(50), 2.0)
        .max_interval(Duration::from_millis(800))
        .build()?;
    Ok(SagaDefinition::builder("place-order", 1)
        .step(Step::new(
            "create-order",
            |svc: Arc<SagaServices>, cx: StepContext| async move {
                let order: PlaceOrder = cx.input()?;
                let mut db = svc.db.lock();
                let tx = db.transaction().map_err(StepError::no_effect)?;
                let items = serde_json::to_string(&order.items).map_err(StepError::no_effect)?;
                let created = tx
                    .execute(
                        "INSERT INTO orders (id, user_id, items, total_cents, status)
                         VALUES (?1, ?2, ?3, ?4, 'PENDING') ON CONFLICT (id) DO NOTHING",
                        rusqlite::params![order.order_id, order.user_id, items, order.total_cents],
                    )
                    .map_err(StepError::no_effect)?;
                if created == 1 {
                    outbox(&tx, &order, "OrderCreated").map_err(StepError::no_effect)?;
                }
                // A failed commit may still have committed.
                tx.commit().map_err(StepError::unknown)?;
                Ok(order.order_id)
            },
            |svc: Arc<SagaServices>, cx: StepContext| async move {
                let order: PlaceOrder = cx.input()?;
                settle(&svc.db, &order, "CANCELLED", "OrderCancelled")?;
                Ok::<_, BoxError>(())
            },
        ))
        .step(
            Step::new(
                "charge",
                |svc: Arc<SagaServices>, cx: StepContext| async move {
                    let order: PlaceOrder = cx.input()?;
                    let body = json!({
                        "key": cx.idempotency_key(),
                        "order_id": order.order_id,
                        "amount_cents": order.total_cents,
                    });
                    let charge = ApiCall::post("/charge", body);
                    let reply =
                        classify_call(call(&svc.payments, &charge, &cx).await, &charge, DECLINED)?;
                    Ok(reply.body["payment_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned())
                },
                // By the charge's key, not by its output: the reply may
                // have been lost after the charge was taken.
                |svc: Arc<SagaServices>, cx: StepContext| async move {
                    let order: PlaceOrder = cx.input()?;
                    let body =
                        json!({"charge_key": charge_key(cx.saga_id()), "order_id": order.order_id});
                    let reply = call(&svc.payments, &ApiCall::post("/refund", body), &cx).await?;
                    if !reply.status.is_success() {
                        return Err(BoxError::from(format!("refund refused: {}", reply.body)));
                    }
                    Ok::<_, BoxError>(())
                },
            )
            .compensation_retry(undo_backoff.clone(), 10),
        )
        .step(
            Step::new(
                "reserve-stock",
                |svc: Arc<SagaServices>, cx: StepContext| async move {
                    if svc.crash.armed.swap(false, Ordering::SeqCst) {
                        svc.crash.tripped.notify_one();
                        std::future::pending::<()>().await;
                    }
                    let order: PlaceOrder = cx.input()?;
                    let body = json!({"key": cx.idempotency_key(), "items": order.items});
                    let reserve = ApiCall::post("/reserve", body);
                    classify_call(
                        call(&svc.inventory, &reserve, &cx).await,
                        &reserve,
                        OUT_OF_STOCK,
                    )?;
                    Ok(())
                },
                |svc: Arc<SagaServices>, cx: StepContext| async move {
                    let body = json!({"key": reservation_key(cx.saga_id())});
                    let reply = call(&svc.inventory, &ApiCall::post("/release", body), &cx).await?;
                    if !reply.status.is_success() {
                        return Err(BoxError::from(format!("release refused: {}", reply.body)));
                    }
                    Ok::<_, BoxError>(())
                },
            )
            .compensation_retry(undo_backoff, 10),
        )
        .pivot(Step::without_compensation(
            "confirm",
            |svc: Arc<SagaServices>, cx: StepContext| async move {
                let order: PlaceOrder = cx.input()?;
                settle(&svc.db, &order, "CONFIRMED", "OrderConfirmed")
                    .map_err(StepError::unknown)?;
                Ok(())
            },
        ))
        .build()?)
}
