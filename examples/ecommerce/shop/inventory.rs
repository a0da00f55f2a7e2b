//! The inventory service: stock per product in its own database; reserve
//! and release stock for an order, idempotently by the saga step's key.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::db::{self, Db};
use super::http_json::ApiError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (
    product_id INTEGER PRIMARY KEY,
    on_hand INTEGER NOT NULL,
    reserved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    key TEXT PRIMARY KEY,
    -- held, released, or void (released before any reservation arrived)
    state TEXT NOT NULL,
    items TEXT NOT NULL
);";

/// One order line.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub product_id: i64,
    /// How many.
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
struct ReserveRequest {
    key: String,
    items: Vec<Line>,
}

#[derive(Debug, Deserialize)]
struct ReleaseRequest {
    key: String,
}

/// The running service.
pub struct Inventory {
    db: Db,
}

impl Inventory {
    /// Opens the database at `path` and stocks it with `stock` (product id,
    /// units) if it is new.
    pub fn open(
        path: &std::path::Path,
        stock: &[(i64, i64)],
    ) -> Result<Arc<Self>, rusqlite::Error> {
        let db = db::open(path, SCHEMA)?;
        {
            let connection = db.lock();
            for (product_id, units) in stock {
                connection.execute(
                    "INSERT INTO stock (product_id, on_hand) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    [product_id, units],
                )?;
            }
        }
        Ok(Arc::new(Self { db }))
    }

    /// The service's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/stock", get(stock))
            .route("/reserve", post(reserve))
            .route("/release", post(release))
            .with_state(Arc::clone(self))
    }
}

async fn stock(State(this): State<Arc<Inventory>>) -> Result<Json<Value>, ApiError> {
    let db = this.db.lock();
    let mut statement =
        db.prepare("SELECT product_id, on_hand, reserved FROM stock ORDER BY product_id")?;
    let rows = statement
        .query_map([], |row| {
            Ok(json!({
                "product_id": row.get::<_, i64>(0)?,
                "on_hand": row.get::<_, i64>(1)?,
                "reserved": row.get::<_, i64>(2)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Value::Array(rows)))
}

async fn reserve(
    State(this): State<Arc<Inventory>>,
    Json(request): Json<ReserveRequest>,
) -> Result<Json<Value>, ApiError> {
    let mut db = this.db.lock();
    let tx = db.transaction()?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT state FROM reservations WHERE key = ?1",
            [&request.key],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|error| match error {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            error => Err(error),
        })?;
    match existing.as_deref() {
        Some("held") => {
            return Ok(Json(
                json!({"key": request.key, "state": "held", "replayed": true}),
            ));
        }
        Some(_) => {
            return Err(ApiError::conflict(
                "this reservation was released before it arrived",
            ));
        }
        None => {}
    }
    for line in &request.items {
        if line.quantity <= 0 {
            return Err(ApiError::bad_request("quantity must be positive"));
        }
        let taken = tx.execute(
            "UPDATE stock SET on_hand = on_hand - ?2, reserved = reserved + ?2
             WHERE product_id = ?1 AND on_hand >= ?2",
            [line.product_id, line.quantity],
        )?;
        if taken == 0 {
            // Dropping the transaction rolls back the lines already taken.
            return Err(ApiError::conflict(format!(
                "product {} is out of stock",
                line.product_id
            )));
        }
    }
    let items = serde_json::to_string(&request.items).map_err(ApiError::internal)?;
    tx.execute(
        "INSERT INTO reservations (key, state, items) VALUES (?1, 'held', ?2)",
        [&request.key, &items],
    )?;
    tx.commit()?;
    tracing::info!(key = %request.key, "stock reserved");
    Ok(Json(
        json!({"key": request.key, "state": "held", "replayed": false}),
    ))
}

async fn release(
    State(this): State<Arc<Inventory>>,
    Json(request): Json<ReleaseRequest>,
) -> Result<Json<Value>, ApiError> {
    let mut db = this.db.lock();
    let tx = db.transaction()?;
    tx.execute(
        "INSERT INTO reservations (key, state, items) VALUES (?1, 'void', '[]')
         ON CONFLICT (key) DO NOTHING",
        [&request.key],
    )?;
    let (state, items): (String, String) = tx.query_row(
        "SELECT state, items FROM reservations WHERE key = ?1",
        [&request.key],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if state == "held" {
        let lines: Vec<Line> = serde_json::from_str(&items).map_err(ApiError::internal)?;
        for line in lines {
            tx.execute(
                "UPDATE stock SET on_hand = on_hand + ?2, reserved = reserved - ?2 WHERE product_id = ?1",
                [line.product_id, line.quantity],
            )?;
        }
        tx.execute(
            "UPDATE reservations SET state = 'released' WHERE key = ?1",
            [&request.key],
        )?;
    }
    tx.commit()?;
    tracing::info!(key = %request.key, was = %state, "stock released");
    Ok(Json(
        json!({"key": request.key, "state": if state == "held" { "released" } else { state.as_str() }}),
    ))
}
