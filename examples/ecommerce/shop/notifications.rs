//! The notifications service: receives order events (delivered at least
//! once by the orders service's outbox relay, over HTTP or through
//! RabbitMQ) and records one "email" per event, de-duplicated by event id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::db::{self, Db};
use super::http_json::ApiError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS emails (
    event_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    transport TEXT NOT NULL
);";

/// An order event, as the outbox relay sends it.
#[derive(Debug, Deserialize)]
pub struct OrderEvent {
    /// `order id:kind`, unique.
    pub event_id: String,
    /// The order.
    pub order_id: String,
    /// `OrderCreated`, `OrderConfirmed` or `OrderCancelled`.
    pub kind: String,
    /// Who ordered.
    pub user_id: i64,
}

#[derive(Debug, Deserialize)]
struct Faults {
    /// The next this many deliveries are recorded, then answered with a
    /// 503 (through the broker: not acknowledged), as if the reply were
    /// lost: the sender delivers them again.
    lose_next_replies: u32,
}

/// The running service.
pub struct Notifications {
    db: Db,
    lose_next_replies: AtomicU32,
}

impl Notifications {
    /// Opens the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Arc<Self>, rusqlite::Error> {
        Ok(Arc::new(Self {
            db: db::open(path, SCHEMA)?,
            lose_next_replies: AtomicU32::new(0),
        }))
    }

    /// The service's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/events", post(receive))
            .route("/emails", get(emails))
            .route("/admin/faults", post(set_faults))
            .with_state(Arc::clone(self))
    }
}

impl Notifications {
    /// Records the email of `event`, first delivered by `transport`
    /// (`http` or `amqp`), once however often it is delivered;
    /// `Ok(false)` when the fault switch "loses" this delivery's reply
    /// (recorded all the same).
    pub fn record(&self, event: &OrderEvent, transport: &str) -> Result<bool, rusqlite::Error> {
        let failing = self
            .lose_next_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let db = self.db.lock();
        db.execute(
            "INSERT INTO emails (event_id, order_id, kind, user_id, transport)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (event_id) DO UPDATE SET deliveries = deliveries + 1",
            rusqlite::params![
                event.event_id,
                event.order_id,
                event.kind,
                event.user_id,
                transport
            ],
        )?;
        let deliveries: i64 = db.query_row(
            "SELECT deliveries FROM emails WHERE event_id = ?1",
            [&event.event_id],
            |row| row.get(0),
        )?;
        tracing::info!(event = %event.event_id, kind = %event.kind, deliveries, "email recorded");
        Ok(!failing)
    }
}

async fn receive(
    State(this): State<Arc<Notifications>>,
    Json(event): Json<OrderEvent>,
) -> Result<Json<Value>, ApiError> {
    if !this.record(&event, "http")? {
        return Err(ApiError::unavailable("notifications: the reply was lost"));
    }
    Ok(Json(json!({"event_id": event.event_id})))
}

async fn emails(State(this): State<Arc<Notifications>>) -> Result<Json<Value>, ApiError> {
    let db = this.db.lock();
    let mut statement = db.prepare(
        "SELECT event_id, order_id, kind, user_id, deliveries, transport FROM emails ORDER BY rowid",
    )?;
    let rows = statement
        .query_map([], |row| {
            Ok(json!({
                "event_id": row.get::<_, String>(0)?,
                "order_id": row.get::<_, String>(1)?,
                "kind": row.get::<_, String>(2)?,
                "user_id": row.get::<_, i64>(3)?,
                "deliveries": row.get::<_, i64>(4)?,
                "transport": row.get::<_, String>(5)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Value::Array(rows)))
}

async fn set_faults(
    State(this): State<Arc<Notifications>>,
    Json(faults): Json<Faults>,
) -> Json<Value> {
    this.lose_next_replies
        .store(faults.lose_next_replies, Ordering::SeqCst);
    Json(json!({"lose_next_replies": faults.lose_next_replies}))
}
