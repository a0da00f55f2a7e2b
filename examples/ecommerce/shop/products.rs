//! The product catalogue: products and prices in its own database. Each
//! instance has a latency switch on `POST /admin/faults`
//! (`{"latency_ms": N}`), palisade's chaos layer in front of its reads.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade::BoxError;
use palisade::chaos::{Chaos, ChaosConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceBuilder;

use super::db::{self, Db};
use super::http_json::ApiError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);";

/// The running service (one value per instance: instances share the
/// database file).
pub struct Products {
    db: Db,
    chaos: Chaos<Response>,
}

/// The fault switches of a products instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProductFaults {
    /// Added to every read.
    pub latency_ms: u64,
}

impl Products {
    /// Opens the database at `path` with `catalogue` (id, name, price).
    pub fn open(
        path: &std::path::Path,
        catalogue: &[(i64, &str, i64)],
    ) -> Result<Arc<Self>, BoxError> {
        let db = db::open(path, SCHEMA)?;
        {
            let connection = db.lock();
            for (id, name, price) in catalogue {
                connection.execute(
                    "INSERT INTO products (id, name, price_cents) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    rusqlite::params![id, name, price],
                )?;
            }
        }
        let chaos = Chaos::new("products-faults", ChaosConfig::builder().build()?);
        Ok(Arc::new(Self { db, chaos }))
    }

    /// The service's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let reads = Router::new()
            .route("/products", get(list))
            .route("/products/{id}", get(one))
            .route_layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|error: BoxError| async move {
                        ApiError::unavailable(error.to_string())
                    }))
                    .layer(self.chaos.layer()),
            );
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .merge(reads)
            .route("/admin/faults", post(set_faults))
            .with_state(Arc::clone(self))
    }
}

async fn set_faults(
    State(this): State<Arc<Products>>,
    Json(faults): Json<ProductFaults>,
) -> Result<Json<ProductFaults>, ApiError> {
    let mut config = ChaosConfig::builder();
    if faults.latency_ms > 0 {
        config = config.latency(1.0, Duration::from_millis(faults.latency_ms));
    }
    let config = config
        .build()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    tracing::warn!(?faults, "catalogue faults set");
    this.chaos.reconfigure(config);
    Ok(Json(faults))
}

fn product_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": row.get::<_, i64>(0)?,
        "name": row.get::<_, String>(1)?,
        "price_cents": row.get::<_, i64>(2)?,
    }))
}

async fn list(State(this): State<Arc<Products>>) -> Result<Json<Value>, ApiError> {
    let db = this.db.lock();
    let mut statement = db.prepare("SELECT id, name, price_cents FROM products ORDER BY id")?;
    let rows = statement
        .query_map([], product_json)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Value::Array(rows)))
}

async fn one(
    State(this): State<Arc<Products>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("product id must be a number, got {id:?}")))?;
    let db = this.db.lock();
    match db.query_row(
        "SELECT id, name, price_cents FROM products WHERE id = ?1",
        [id],
        product_json,
    ) {
        Ok(product) => Ok(Json(product)),
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            Err(ApiError::not_found(format!("no product {id}")))
        }
        Err(error) => Err(error.into()),
    }
}
