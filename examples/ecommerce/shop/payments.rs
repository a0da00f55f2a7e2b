//! The payments service: two instances under the name `payments`, sharing
//! the service's database. Charges and refunds are idempotent by the
//! saga step's key; a refund by the charge's key works even when the
//! charge's reply was lost (and a charge that arrives after its refund is
//! refused). Fault switches on `POST /admin/faults`: the error rate, the
//! added latency and "down" are palisade's chaos layer in front of the
//! charge and refund handlers; lost replies are the handler's own.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade::BoxError;
use palisade::chaos::{Chaos, ChaosConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceBuilder;

use super::db::{self, Db};
use super::http_json::ApiError;

/// A charge above this is declined by the card issuer.
pub const CARD_LIMIT_CENTS: i64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_key TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    -- charged, refunded, or void (refunded before any charge arrived)
    state TEXT NOT NULL,
    instance TEXT NOT NULL
);";

/// The fault switches of one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Every charge and refund answers 503 (the process is up and its
    /// health check passes: only outlier detection notices): the chaos
    /// layer's error rate 1.
    pub down: bool,
    /// The share of calls, 0 to 1, that answer 503 (the chaos layer's
    /// error rate; its draws are seeded, so a run replays).
    pub error_rate: f64,
    /// Added to every call (the chaos layer's latency).
    pub latency_ms: u64,
    /// Charges are applied but their replies come 3 s late, after the
    /// caller gave up: the reply is lost.
    pub lose_replies: bool,
}

/// One running instance.
pub struct PaymentsInstance {
    name: String,
    db: Db,
    faults: Mutex<Faults>,
    chaos: Chaos<Response>,
    seed: u64,
}

/// The charge request.
#[derive(Debug, Deserialize)]
pub struct ChargeRequest {
    /// The saga step's idempotency key.
    pub key: String,
    /// The order paid for.
    pub order_id: String,
    /// The amount.
    pub amount_cents: i64,
}

/// The refund request: the key of the charge to refund.
#[derive(Debug, Deserialize)]
pub struct RefundRequest {
    /// The charge's idempotency key.
    pub charge_key: String,
    /// The order (recorded on a void entry).
    pub order_id: String,
}

impl PaymentsInstance {
    /// Instance `name` on the service's database at `path`.
    pub fn open(name: &str, path: &std::path::Path, seed: u64) -> Result<Arc<Self>, BoxError> {
        let chaos = Chaos::new(
            format!("{name}-faults"),
            chaos_config(name, &Faults::default(), seed)?,
        );
        Ok(Arc::new(Self {
            name: name.to_owned(),
            db: db::open(path, SCHEMA)?,
            faults: Mutex::default(),
            chaos,
            seed,
        }))
    }

    /// The instance's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        // The chaos layer stands in front of the handlers it breaks.
        let faulty = Router::new()
            .route("/charge", post(charge))
            .route("/refund", post(refund))
            .route_layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|error: BoxError| async move {
                        ApiError::unavailable(error.to_string())
                    }))
                    .layer(self.chaos.layer()),
            );
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .merge(faulty)
            .route("/ledger", get(ledger))
            .route("/admin/faults", get(faults).post(set_faults))
            .with_state(Arc::clone(self))
    }
}

/// The chaos configuration of `faults`: "down" and the error rate answer
/// 503 without calling the handler, the latency delays every call.
fn chaos_config(
    name: &str,
    faults: &Faults,
    seed: u64,
) -> Result<ChaosConfig<Response>, palisade::ConfigError> {
    let rate = if faults.down { 1.0 } else { faults.error_rate };
    let failing = format!("{name} is failing");
    let mut config = ChaosConfig::builder()
        .seed(seed)
        .error_rate(rate)
        .error_with(move || BoxError::from(failing.clone()));
    if faults.latency_ms > 0 {
        config = config.latency(1.0, Duration::from_millis(faults.latency_ms));
    }
    config.build()
}

fn payment_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let id: i64 = row.get(0)?;
    Ok(json!({
        "payment_id": format!("pay-{id}"),
        "charge_key": row.get::<_, String>(1)?,
        "order_id": row.get::<_, String>(2)?,
        "amount_cents": row.get::<_, i64>(3)?,
        "state": row.get::<_, String>(4)?,
        "instance": row.get::<_, String>(5)?,
    }))
}

const COLUMNS: &str = "payment_id, charge_key, order_id, amount_cents, state, instance";

async fn charge(
    State(this): State<Arc<PaymentsInstance>>,
    Json(request): Json<ChargeRequest>,
) -> Result<Json<Value>, ApiError> {
    let faults = this.faults.lock().clone();
    if request.amount_cents <= 0 {
        return Err(ApiError::bad_request("amount_cents must be positive"));
    }
    if request.amount_cents > CARD_LIMIT_CENTS {
        return Err(ApiError::new(StatusCode::PAYMENT_REQUIRED, "card declined"));
    }
    let payment = {
        let mut db = this.db.lock();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO payments (charge_key, order_id, amount_cents, state, instance)
             VALUES (?1, ?2, ?3, 'charged', ?4) ON CONFLICT (charge_key) DO NOTHING",
            rusqlite::params![
                request.key,
                request.order_id,
                request.amount_cents,
                this.name
            ],
        )?;
        let payment = tx.query_row(
            &format!("SELECT {COLUMNS} FROM payments WHERE charge_key = ?1"),
            [&request.key],
            payment_json,
        )?;
        tx.commit()?;
        payment
    };
    if payment["state"] == "void" {
        return Err(ApiError::conflict(
            "this charge was refunded before it arrived",
        ));
    }
    tracing::info!(instance = %this.name, key = %request.key, payment = %payment["payment_id"], "charged");
    if faults.lose_replies {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(Json(payment))
}

async fn refund(
    State(this): State<Arc<PaymentsInstance>>,
    Json(request): Json<RefundRequest>,
) -> Result<Json<Value>, ApiError> {
    let payment = {
        let mut db = this.db.lock();
        let tx = db.transaction()?;
        // No charge under the key yet: a void entry, so that a late charge
        // is refused instead of taking money for a cancelled order.
        tx.execute(
            "INSERT INTO payments (charge_key, order_id, amount_cents, state, instance)
             VALUES (?1, ?2, 0, 'void', ?3) ON CONFLICT (charge_key) DO NOTHING",
            rusqlite::params![request.charge_key, request.order_id, this.name],
        )?;
        tx.execute(
            "UPDATE payments SET state = 'refunded' WHERE charge_key = ?1 AND state = 'charged'",
            [&request.charge_key],
        )?;
        let payment = tx.query_row(
            &format!("SELECT {COLUMNS} FROM payments WHERE charge_key = ?1"),
            [&request.charge_key],
            payment_json,
        )?;
        tx.commit()?;
        payment
    };
    tracing::info!(instance = %this.name, key = %request.charge_key, state = %payment["state"], "refund");
    Ok(Json(payment))
}

async fn ledger(State(this): State<Arc<PaymentsInstance>>) -> Result<Json<Value>, ApiError> {
    let db = this.db.lock();
    let mut statement = db.prepare(&format!(
        "SELECT {COLUMNS} FROM payments ORDER BY payment_id"
    ))?;
    let rows = statement
        .query_map([], payment_json)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Value::Array(rows)))
}

async fn faults(State(this): State<Arc<PaymentsInstance>>) -> Json<Faults> {
    Json(this.faults.lock().clone())
}

async fn set_faults(
    State(this): State<Arc<PaymentsInstance>>,
    Json(faults): Json<Faults>,
) -> Result<Json<Faults>, ApiError> {
    let config = chaos_config(&this.name, &faults, this.seed)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    tracing::warn!(instance = %this.name, ?faults, "faults set");
    this.chaos.reconfigure(config);
    *this.faults.lock() = faults.clone();
    Ok(Json(faults))
}
