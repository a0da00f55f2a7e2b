//! What must hold after any run, read from each service's own API.

use std::collections::{BTreeMap, BTreeSet};

use palisade::BoxError;
use serde_json::Value;

use super::http_json::{ApiCall, JsonReply};
use super::system::{INITIAL_STOCK, System};

/// The figures the checks and the summary read.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Orders by status.
    pub orders_by_status: BTreeMap<String, u64>,
    /// Per product: (initial, on hand, reserved).
    pub stock: BTreeMap<i64, (i64, i64, i64)>,
    /// Net charges per order id (charged and not refunded), in cents.
    pub net_charges: BTreeMap<String, i64>,
    /// Charges refunded.
    pub refunds: u64,
    /// Events in the outbox, and how many are delivered.
    pub events: u64,
    /// Events delivered.
    pub delivered: u64,
    /// Emails recorded (one per event id), and the deliveries they took.
    pub emails: u64,
    /// Deliveries in all (a redelivery counts again).
    pub deliveries: u64,
}

/// `GET path` on instance `instance` (not through the gateway): the JSON
/// body of a 2xx reply, an error otherwise.
pub async fn get(system: &System, instance: &str, path: &str) -> Result<Value, BoxError> {
    let reply: JsonReply = system
        .client
        .send(&system.instance(instance)?.to_string(), ApiCall::get(path))
        .await?;
    if !reply.status.is_success() {
        return Err(format!("{instance} {path}: {} {}", reply.status, reply.body).into());
    }
    Ok(reply.body)
}

fn rows(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

impl Ledger {
    /// Reads the figures from the services.
    pub async fn read(system: &System) -> Result<Self, BoxError> {
        let mut ledger = Ledger::default();
        let orders = get(system, "orders-1", "/orders").await?;
        for order in rows(&orders) {
            let status = order["status"].as_str().unwrap_or("?").to_owned();
            *ledger.orders_by_status.entry(status).or_default() += 1;
        }
        let stock = get(system, "inventory-1", "/stock").await?;
        for row in rows(&stock) {
            let id = row["product_id"].as_i64().unwrap_or_default();
            let initial = INITIAL_STOCK
                .iter()
                .find(|(product, _)| *product == id)
                .map_or(0, |(_, units)| *units);
            ledger.stock.insert(
                id,
                (
                    initial,
                    row["on_hand"].as_i64().unwrap_or_default(),
                    row["reserved"].as_i64().unwrap_or_default(),
                ),
            );
        }
        let payments = get(system, "payments-1", "/ledger").await?;
        for payment in rows(&payments) {
            let order = payment["order_id"].as_str().unwrap_or_default().to_owned();
            let net = ledger.net_charges.entry(order).or_default();
            match payment["state"].as_str() {
                Some("charged") => *net += payment["amount_cents"].as_i64().unwrap_or_default(),
                Some("refunded") => ledger.refunds += 1,
                _ => {}
            }
        }
        let outbox = get(system, "orders-1", "/outbox").await?;
        ledger.events = rows(&outbox).len() as u64;
        ledger.delivered = rows(&outbox)
            .iter()
            .filter(|event| event["delivered"] == true)
            .count() as u64;
        let emails = get(system, "notifications-1", "/emails").await?;
        ledger.emails = rows(&emails).len() as u64;
        ledger.deliveries = rows(&emails)
            .iter()
            .map(|email| email["deliveries"].as_u64().unwrap_or_default())
            .sum();
        Ok(ledger)
    }
}

/// Waits until every outbox event is delivered and has its email (at
/// most 10 s; through a broker, the email comes after the confirm).
pub async fn wait_for_outbox(system: &System) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let outbox = get(system, "orders-1", "/outbox").await?;
        if rows(&outbox).iter().all(|event| event["delivered"] == true) {
            let emails = get(system, "notifications-1", "/emails").await?;
            let emailed: BTreeSet<&str> = rows(&emails)
                .iter()
                .filter_map(|email| email["event_id"].as_str())
                .collect();
            if rows(&outbox)
                .iter()
                .filter_map(|event| event["event_id"].as_str())
                .all(|id| emailed.contains(id))
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the outbox was not delivered within 10 s".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Checks the invariants once the system is quiet (every saga finished,
/// the outbox delivered); returns each broken one.
pub async fn check(system: &System) -> Result<Vec<String>, BoxError> {
    let mut broken = Vec::new();
    let ledger = Ledger::read(system).await?;
    for (product, (initial, on_hand, reserved)) in &ledger.stock {
        if on_hand + reserved != *initial {
            broken.push(format!(
                "product {product}: on hand {on_hand} + reserved {reserved} != initial {initial}"
            ));
        }
    }
    let orders = get(system, "orders-1", "/orders").await?;
    let mut order_ids = BTreeSet::new();
    for order in rows(&orders) {
        let id = order["id"].as_str().unwrap_or_default();
        order_ids.insert(id.to_owned());
        let net = ledger.net_charges.get(id).copied().unwrap_or(0);
        let total = order["total_cents"].as_i64().unwrap_or_default();
        match order["status"].as_str() {
            Some("CONFIRMED") if net != total => broken.push(format!(
                "confirmed order {id}: net charge {net}, expected {total}"
            )),
            Some("CANCELLED") if net != 0 => broken.push(format!(
                "cancelled order {id}: net charge {net}, expected 0"
            )),
            Some("CONFIRMED" | "CANCELLED") => {}
            other => broken.push(format!("order {id} is not finished: {other:?}")),
        }
    }
    for order in ledger.net_charges.keys() {
        if !order_ids.contains(order) {
            broken.push(format!("a payment for an unknown order {order}"));
        }
    }
    // Every event exactly one email: each event id recorded once, and no
    // email without its event.
    let outbox = get(system, "orders-1", "/outbox").await?;
    let events: BTreeSet<&str> = rows(&outbox)
        .iter()
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    let emails = get(system, "notifications-1", "/emails").await?;
    let emailed: Vec<&str> = rows(&emails)
        .iter()
        .filter_map(|email| email["event_id"].as_str())
        .collect();
    let emailed_set: BTreeSet<&str> = emailed.iter().copied().collect();
    if emailed.len() != emailed_set.len() {
        broken.push("an event was emailed twice".to_owned());
    }
    if events != emailed_set {
        broken.push(format!(
            "events without an email: {:?}; emails without an event: {:?}",
            events.difference(&emailed_set).collect::<Vec<_>>(),
            emailed_set.difference(&events).collect::<Vec<_>>()
        ));
    }
    // No call reached payments past its open breaker: every charge or
    // refund payments received was sent by a call the breaker permitted.
    let audit = system.payments_audit();
    if audit.received > audit.permitted_outcomes + audit.cancelled + audit.events_lost {
        broken.push(format!(
            "payments received {} calls, more than its breaker permitted: {audit:?}",
            audit.received
        ));
    }
    if audit.received > audit.sent {
        broken.push(format!(
            "payments received {} calls, more than were sent through its breaker: {audit:?}",
            audit.received
        ));
    }
    Ok(broken)
}
