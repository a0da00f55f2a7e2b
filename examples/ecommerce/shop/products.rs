//! The product catalogue: products and prices in its own database.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::db::{self, Db};
use super::http_json::ApiError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);";

/// The running service.
pub struct Products {
    db: Db,
}

impl Products {
    /// Opens the database at `path` with `catalogue` (id, name, price).
    pub fn open(
        path: &std::path::Path,
        catalogue: &[(i64, &str, i64)],
    ) -> Result<Arc<Self>, rusqlite::Error> {
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
        Ok(Arc::new(Self { db }))
    }

    /// The service's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/products", get(list))
            .route("/products/{id}", get(one))
            .with_state(Arc::clone(self))
    }
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
