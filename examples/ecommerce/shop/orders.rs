//! The orders service: places an order by checking the user over gRPC,
//! pricing it from the catalogue and running the order saga; relays the
//! outbox's events to the notifications service (at least once, with
//! retries that back off exponentially), or publishes them to RabbitMQ
//! with publisher confirms when the system runs with a broker.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade::BoxError;
use palisade::pipeline::PipelineError;
use palisade::saga::{SagaDefinition, SagaExecutor, SagaId, SagaOutcome, SqliteLog};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::broker::Publisher;
use super::db::{self, Db};
use super::edge::TraceParent;
use super::http_json::{ApiCall, ApiError, JsonReply};
use super::inventory::Line;
use super::order_saga::{
    self, CrashSwitch, DECLINED, OUT_OF_STOCK, PipelinedClient, PlaceOrder, SagaServices,
};
use super::proto::GetUserRequest;
use super::users::UsersGrpc;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    items TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    -- The W3C trace context of the request that placed the order.
    traceparent TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);";

/// How long an executor's lease on a saga lasts without renewal: after a
/// crash, the standby executor takes the saga over this long after the
/// last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// The clients the orders service calls.
pub struct OrdersClients {
    /// Users, over gRPC.
    pub users: UsersGrpc,
    /// The catalogue.
    pub products: PipelinedClient,
    /// Payments (used by the saga).
    pub payments: PipelinedClient,
    /// Inventory (used by the saga).
    pub inventory: PipelinedClient,
    /// Notifications (used by the outbox relay).
    pub notifications: PipelinedClient,
    /// The broker the outbox relay publishes to instead, when there is one.
    pub broker: Option<Publisher>,
}

/// The running service.
pub struct Orders {
    db: Db,
    users: UsersGrpc,
    products: PipelinedClient,
    definition: SagaDefinition<SagaServices>,
    /// The executor that starts sagas, until it crashes.
    primary: Mutex<Option<SagaExecutor<SagaServices>>>,
    /// A second executor on the same log that takes over sagas whose
    /// lease expired; it starts the sagas once the primary is gone.
    standby: SagaExecutor<SagaServices>,
    crash: Arc<CrashSwitch>,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for Orders {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

#[derive(Debug, Deserialize)]
struct OrderRequest {
    user_id: i64,
    items: Vec<Line>,
}

impl Orders {
    /// Opens the orders database and the saga log in `dir`, starts both
    /// executors and the outbox relay.
    pub async fn start(
        dir: &std::path::Path,
        clients: OrdersClients,
    ) -> Result<Arc<Self>, BoxError> {
        let db = db::open(&dir.join("orders.db"), SCHEMA)?;
        let crash = Arc::new(CrashSwitch::default());
        let services = Arc::new(SagaServices {
            db: Arc::clone(&db),
            payments: clients.payments,
            inventory: clients.inventory,
            crash: Arc::clone(&crash),
        });
        let log = SqliteLog::open(dir.join("order-sagas.db"))?;
        let definition = order_saga::definition()?;
        let primary = SagaExecutor::builder(Arc::clone(&services), log.clone())
            .owner("orders-executor-a")
            .lease_ttl(LEASE_TTL)
            .build()?;
        let standby = SagaExecutor::builder(services, log)
            .owner("orders-executor-b")
            .lease_ttl(LEASE_TTL)
            .takeover_interval(Duration::from_millis(100))
            .build()?;
        for executor in [&primary, &standby] {
            executor.register(&definition);
            executor.recover().await?;
        }
        let relay = tokio::spawn(relay_outbox(
            Arc::clone(&db),
            clients.notifications,
            clients.broker,
        ));
        let orders = Arc::new(Self {
            db,
            users: clients.users,
            products: clients.products,
            definition,
            primary: Mutex::new(Some(primary)),
            standby,
            crash,
            relay,
        });
        // The "crash": when a saga trips the switch, its executor is
        // dropped, which stops its sagas where they are.
        let weak = Arc::downgrade(&orders);
        let crash = Arc::clone(&orders.crash);
        tokio::spawn(async move {
            crash.tripped.notified().await;
            if let Some(orders) = weak.upgrade() {
                let crashed = orders.primary.lock().take();
                drop(crashed);
                tracing::warn!("orders executor a crashed");
            }
        });
        Ok(orders)
    }

    /// The service's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/orders", post(place).get(list))
            .route("/orders/{id}", get(one))
            .route("/outbox", get(outbox))
            .route("/admin/crash-executor", post(arm_crash))
            .with_state(Arc::clone(self))
    }

    fn executor(&self) -> SagaExecutor<SagaServices> {
        self.primary
            .lock()
            .clone()
            .unwrap_or_else(|| self.standby.clone())
    }

    fn order(&self, id: &str) -> Result<Option<Value>, rusqlite::Error> {
        let db = self.db.lock();
        match db.query_row(
            "SELECT id, user_id, items, total_cents, status FROM orders WHERE id = ?1",
            [id],
            order_json,
        ) {
            Ok(order) => Ok(Some(order)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

fn order_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let items: String = row.get(2)?;
    Ok(json!({
        "id": row.get::<_, String>(0)?,
        "user_id": row.get::<_, i64>(1)?,
        "items": serde_json::from_str::<Value>(&items).unwrap_or(Value::Null),
        "total_cents": row.get::<_, i64>(3)?,
        "status": row.get::<_, String>(4)?,
    }))
}

fn unavailable(service: &str, error: &PipelineError) -> ApiError {
    ApiError::unavailable(format!("{service} unavailable: {error}"))
}

async fn place(
    State(this): State<Arc<Orders>>,
    Json(request): Json<OrderRequest>,
) -> Result<Response, ApiError> {
    if request.items.is_empty() {
        return Err(ApiError::bad_request("an order needs at least one item"));
    }
    // The user must exist: the users service, over gRPC.
    match this
        .users
        .get_user(GetUserRequest {
            user_id: request.user_id,
        })
        .await
    {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::NotFound => {
            return Err(ApiError::not_found(format!("no user {}", request.user_id)));
        }
        Err(status) => {
            return Err(ApiError::unavailable(format!(
                "users unavailable: {}",
                status.message()
            )));
        }
    }
    // The price: the catalogue.
    let mut total_cents = 0;
    for line in &request.items {
        if line.quantity <= 0 {
            return Err(ApiError::bad_request("quantity must be positive"));
        }
        let reply: JsonReply = this
            .products
            .clone()
            .oneshot(ApiCall::get(format!("/products/{}", line.product_id)))
            .await
            .map_err(|error| unavailable("products", &error))?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(ApiError::not_found(format!(
                "no product {}",
                line.product_id
            )));
        }
        let price = reply.body["price_cents"]
            .as_i64()
            .ok_or_else(|| ApiError::unavailable("products: a product without a price"))?;
        total_cents += price * line.quantity;
    }
    let saga = SagaId::random();
    let order = PlaceOrder {
        order_id: saga.to_string(),
        user_id: request.user_id,
        items: request.items,
        total_cents,
        traceparent: super::edge::current().map(|trace| trace.to_string()),
    };
    let handle = {
        let executor = this.executor();
        executor
            .start_with_id(saga, &this.definition, &order)
            .await
            .map_err(ApiError::internal)?
        // The executor clone is dropped here: a crash drops the last one.
    };
    let outcome = handle.outcome().await;
    let current = this.order(&order.order_id)?;
    let respond = |code: StatusCode, status: &str, error: Option<String>| {
        let mut body = current
            .clone()
            .unwrap_or_else(|| json!({"id": order.order_id}));
        body["status"] = json!(status);
        if let Some(error) = error {
            body["error"] = json!(error);
            body["code"] = json!(code.as_u16());
        }
        (code, Json(body)).into_response()
    };
    Ok(match outcome {
        Ok(SagaOutcome::Completed(_)) => respond(StatusCode::CREATED, "CONFIRMED", None),
        Ok(SagaOutcome::Compensated(failure)) => {
            let code =
                if failure.error.starts_with(DECLINED) || failure.error.starts_with(OUT_OF_STOCK) {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
            let error = format!(
                "order cancelled: {} failed: {}",
                failure.step, failure.error
            );
            respond(code, "CANCELLED", Some(error))
        }
        Ok(other) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "STUCK",
            Some(format!("{:?}", other.state())),
        ),
        // The executor went away mid-saga: the order goes on elsewhere.
        Err(error) => {
            tracing::warn!(order = %order.order_id, %error, "the saga goes on without this request");
            respond(StatusCode::ACCEPTED, "PENDING", None)
        }
    })
}

async fn one(
    State(this): State<Arc<Orders>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match this.order(&id)? {
        Some(order) => Ok(Json(order)),
        None => Err(ApiError::not_found(format!("no order {id}"))),
    }
}

async fn list(State(this): State<Arc<Orders>>) -> Result<Json<Value>, ApiError> {
    let db = this.db.lock();
    let mut statement =
        db.prepare("SELECT id, user_id, items, total_cents, status FROM orders ORDER BY rowid")?;
    let rows = statement
        .query_map([], order_json)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Value::Array(rows)))
}

async fn outbox(State(this): State<Arc<Orders>>) -> Result<Json<Value>, ApiError> {
    let db = this.db.lock();
    let mut statement = db.prepare(
        "SELECT event_id, order_id, user_id, kind, delivered, traceparent FROM outbox ORDER BY seq",
    )?;
    let rows = statement
        .query_map([], |row| {
            Ok(json!({
                "event_id": row.get::<_, String>(0)?,
                "order_id": row.get::<_, String>(1)?,
                "user_id": row.get::<_, i64>(2)?,
                "kind": row.get::<_, String>(3)?,
                "delivered": row.get::<_, bool>(4)?,
                "traceparent": row.get::<_, Option<String>>(5)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Value::Array(rows)))
}

async fn arm_crash(State(this): State<Arc<Orders>>) -> Json<Value> {
    this.crash.arm();
    Json(json!({"armed": true}))
}

/// An outbox row not delivered yet.
struct Pending {
    seq: i64,
    event: Value,
    event_id: String,
    /// The order's trace context, sent with the event.
    traceparent: Option<TraceParent>,
}

fn undelivered(db: &Db) -> Result<Vec<Pending>, rusqlite::Error> {
    let db = db.lock();
    let mut statement = db.prepare(
        "SELECT seq, event_id, order_id, user_id, kind, traceparent
         FROM outbox WHERE delivered = 0 ORDER BY seq LIMIT 50",
    )?;
    statement
        .query_map([], |row| {
            let event_id: String = row.get(1)?;
            Ok(Pending {
                seq: row.get(0)?,
                event: json!({
                    "event_id": event_id,
                    "order_id": row.get::<_, String>(2)?,
                    "user_id": row.get::<_, i64>(3)?,
                    "kind": row.get::<_, String>(4)?,
                }),
                event_id,
                traceparent: row
                    .get::<_, Option<String>>(5)?
                    .and_then(|header| TraceParent::parse(&header)),
            })
        })?
        .collect()
}

/// Delivers the outbox's events in order, each until notifications
/// accepts it (the client retries with exponential backoff) or, with a
/// broker, until the broker confirms it; an event is marked delivered only
/// after its delivery succeeded, so it may be delivered twice, never lost.
/// Each event goes in its order's trace: a `traceparent` HTTP header, or
/// the AMQP message's `traceparent` header.
async fn relay_outbox(db: Db, notifications: PipelinedClient, broker: Option<Publisher>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pending = match undelivered(&db) {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "outbox unreadable");
                continue;
            }
        };
        for Pending {
            seq,
            event,
            event_id,
            traceparent,
        } in pending
        {
            // A new span id of the order's trace, for this hop.
            let traceparent = traceparent.map(|trace| trace.child().to_string());
            let delivered = match &broker {
                Some(broker) => broker
                    .publish(&event_id, &event, traceparent.as_deref())
                    .await
                    .map_err(|error| error.to_string()),
                None => match notifications
                    .clone()
                    .oneshot(ApiCall::post("/events", event).traced(traceparent))
                    .await
                {
                    Ok(reply) if reply.status.is_success() => Ok(()),
                    Ok(reply) => Err(format!("notification refused: {}", reply.status)),
                    Err(error) => Err(error.to_string()),
                },
            };
            match delivered {
                Ok(()) => {
                    if let Err(error) = db
                        .lock()
                        .execute("UPDATE outbox SET delivered = 1 WHERE seq = ?1", [seq])
                    {
                        tracing::warn!(%error, "outbox not updated; the event will be sent again");
                    }
                }
                Err(error) => {
                    tracing::warn!(event = %event_id, %error, "notification not delivered; retrying later");
                    break;
                }
            }
        }
    }
}
