//! The seeded randomized fault run (`--faults --seed N`): rounds of orders
//! placed concurrently through the gateway while, before each round, a
//! random plan sets each payments instance's fault switches (down, an
//! error rate, added latency, lost replies), has the notifications service
//! lose some replies, once takes both payments instances down (an outage
//! that opens the payments breaker) and once arms the orders executor's
//! crash. Then the faults are cleared, the system settles, and the
//! invariants are checked.
//!
//! The seed fixes the plan (the faults, the orders and who places them);
//! which order meets which fault depends on timing, so the outcomes may
//! differ from run to run, and the invariants must hold for all of them.

use std::collections::BTreeMap;
use std::time::Duration;

use palisade::BoxError;
use palisade::circuit_breaker::CircuitState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::http_json::ApiCall;
use super::invariants;
use super::scenario::{Narrator, Shopper, payments_faults};
use super::system::System;

/// The size of a fault run.
#[derive(Debug, Clone, Copy)]
pub struct FaultRunConfig {
    /// Fixes the plan.
    pub seed: u64,
    /// Rounds of concurrent orders (the fault plan changes between them).
    pub rounds: u32,
    /// Orders placed at once in each round.
    pub orders_per_round: u32,
}

impl FaultRunConfig {
    /// A run of 5 rounds of 8 orders with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rounds: 5,
            orders_per_round: 8,
        }
    }
}

/// What a fault run did.
#[derive(Debug, Default)]
pub struct FaultRunReport {
    /// Orders placed, by the gateway's status code.
    pub replies: BTreeMap<u16, u64>,
    /// The latencies of the successful calls.
    pub latencies: Vec<Duration>,
    /// The invariants that broke (empty when all hold).
    pub broken: Vec<String>,
}

/// One payments instance's faults for a round, and their description.
fn payments_plan(rng: &mut StdRng) -> (Value, String) {
    match rng.random_range(0..10) {
        0..4 => (json!({}), "healthy".to_owned()),
        4 => (json!({"down": true}), "down".to_owned()),
        5 | 6 => {
            let rate = f64::from(rng.random_range(3..=8_u8)) / 10.0;
            (
                json!({"error_rate": rate}),
                format!("{:.0}% errors", rate * 100.0),
            )
        }
        7 | 8 => {
            let ms = rng.random_range(50..=400_u64);
            (json!({"latency_ms": ms}), format!("+{ms} ms"))
        }
        _ => (json!({"lose_replies": true}), "loses replies".to_owned()),
    }
}

async fn admin(system: &System, instance: &str, path: &str, body: Value) -> Result<(), BoxError> {
    let reply = system
        .client
        .send(
            &system.instance(instance)?.to_string(),
            ApiCall::post(path, body),
        )
        .await?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("{instance} {path}: {} {}", reply.status, reply.body).into())
    }
}

/// Waits until no order is PENDING (at most 30 s: a crashed executor's
/// sagas wait for their lease to lapse).
async fn wait_settled(system: &System) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let orders = super::invariants::get(system, "orders-1", "/orders").await?;
        let pending = orders.as_array().map_or(0, |orders| {
            orders.iter().filter(|o| o["status"] == "PENDING").count()
        });
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{pending} orders still PENDING after 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Between rounds: waits (at most 5 s) until the payments breaker is not
/// OPEN and outlier detection has let an instance back, so that each
/// round meets its own faults rather than the last round's ejections.
async fn wait_recovered(system: &System) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline
        && (system.payments_breaker.state() == CircuitState::Open
            || system.payments_balance.metrics().available == 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the fault run against a started system and checks the invariants.
pub async fn run(
    system: &System,
    config: FaultRunConfig,
    say: &mut Narrator,
) -> Result<FaultRunReport, BoxError> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut shop = Shopper::new(system);
    let mut tokens = Vec::new();
    for name in ["ann", "ben", "cid", "dee"] {
        tokens.push(
            shop.sign_up_and_log_in(&format!("{name}@example.com"), name)
                .await?,
        );
    }
    say.say(format!(
        "fault run, seed {}: {} rounds of {} orders placed at once by 4 users; before each round the seed picks the faults",
        config.seed, config.rounds, config.orders_per_round
    ));
    let crash_round = rng.random_range(0..config.rounds);
    let outage_round = rng.random_range(0..config.rounds);
    let mut report = FaultRunReport::default();
    for round in 0..config.rounds {
        if round > 0 {
            wait_recovered(system).await;
        }
        let mut plan = Vec::new();
        for instance in ["payments-1", "payments-2"] {
            let (faults, described) = if round == outage_round {
                (json!({"down": true}), "down (an outage)".to_owned())
            } else {
                payments_plan(&mut rng)
            };
            payments_faults(system, instance, faults).await?;
            plan.push(format!("{instance} {described}"));
        }
        let lost = rng.random_range(0..=2_u32);
        admin(
            system,
            "notifications-1",
            "/admin/faults",
            json!({"lose_next_replies": lost}),
        )
        .await?;
        plan.push(format!("{lost} notification replies lost"));
        if round == crash_round {
            admin(system, "orders-1", "/admin/crash-executor", json!({})).await?;
            plan.push("the orders executor crashes mid-saga".to_owned());
        }
        let mut orders = tokio::task::JoinSet::new();
        for _ in 0..config.orders_per_round {
            let token = tokens[rng.random_range(0..tokens.len())].clone();
            // The piano (declined) less often than the rest.
            let product = [1, 1, 2, 2, 3, 3, 4][rng.random_range(0..7)];
            let quantity = rng.random_range(1..=2_i64);
            let client = system.client.clone();
            let gateway = system.gateway.to_string();
            orders.spawn(async move {
                let started = tokio::time::Instant::now();
                let call = ApiCall::post(
                    "/api/orders",
                    json!({"items": [{"product_id": product, "quantity": quantity}]}),
                )
                .bearer(&token);
                client
                    .send(&gateway, call)
                    .await
                    .map(|reply| (reply.status.as_u16(), started.elapsed()))
            });
        }
        let mut replies: BTreeMap<u16, u64> = BTreeMap::new();
        while let Some(done) = orders.join_next().await {
            let (status, elapsed) = done??;
            *replies.entry(status).or_default() += 1;
            *report.replies.entry(status).or_default() += 1;
            if (200..300).contains(&status) {
                report.latencies.push(elapsed);
            }
        }
        let replies: Vec<String> = replies
            .iter()
            .map(|(status, count)| format!("{count}x {status}"))
            .collect();
        say.say(format!(
            "round {}: {}; orders answered {}",
            round + 1,
            plan.join(", "),
            replies.join(", ")
        ));
    }
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({})).await?;
    }
    wait_settled(system).await?;
    invariants::wait_for_outbox(system).await?;
    let ledger = invariants::Ledger::read(system).await?;
    let audit = system.payments_audit();
    say.say(format!(
        "faults cleared, every saga finished: {} confirmed, {} cancelled; {} events, {} emails from {} deliveries; payments received {} calls, its breaker permitted {} and refused {}",
        ledger.orders_by_status.get("CONFIRMED").copied().unwrap_or(0),
        ledger.orders_by_status.get("CANCELLED").copied().unwrap_or(0),
        ledger.events,
        ledger.emails,
        ledger.deliveries,
        audit.received,
        audit.permitted_outcomes,
        audit.rejected
    ));
    report.broken = invariants::check(system).await?;
    say.say(if report.broken.is_empty() {
        "invariants hold".to_owned()
    } else {
        format!("INVARIANTS BROKEN: {}", report.broken.join("; "))
    });
    Ok(report)
}
