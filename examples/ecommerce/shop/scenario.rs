//! The scripted story, narrated in numbered lines on stdout. Only this
//! task prints, in order; what the system's parts report is collected and
//! printed at the story's checkpoints.

use std::time::Duration;

use palisade::BoxError;
use serde_json::{Value, json};

use super::http_json::{ApiCall, JsonReply};
use super::invariants::{self, Ledger};
use super::system::System;

/// Prints the numbered lines (and the summary table's), or keeps them.
#[derive(Default)]
pub struct Narrator {
    line: u32,
    /// `Some`: the lines are kept here instead of printed.
    kept: Option<Vec<String>>,
}

impl Narrator {
    /// A narrator that keeps its lines (see [`lines`](Self::lines)) instead
    /// of printing them (tests/ecommerce.rs compares two runs' lines).
    #[allow(dead_code)]
    pub fn keeping() -> Self {
        Self {
            line: 0,
            kept: Some(Vec::new()),
        }
    }

    /// Prints `text` as the next numbered line.
    pub fn say(&mut self, text: impl AsRef<str>) {
        self.line += 1;
        let line = format!("{:>2}. {}", self.line, text.as_ref());
        self.print(line);
    }

    /// Prints `line` as it is (a row of a table).
    pub fn print(&mut self, line: String) {
        match &mut self.kept {
            Some(kept) => kept.push(line),
            None => println!("{line}"),
        }
    }

    /// The lines kept so far (none when printing).
    #[allow(dead_code)]
    pub fn lines(&self) -> &[String] {
        self.kept.as_deref().unwrap_or_default()
    }
}

/// A client of the gateway, as a shop's web front end would be; records
/// the latency of every successful call.
pub struct Shopper<'a> {
    system: &'a System,
    latencies: Vec<Duration>,
}

impl<'a> Shopper<'a> {
    /// A client of `system`'s gateway.
    pub fn new(system: &'a System) -> Self {
        Self {
            system,
            latencies: Vec::new(),
        }
    }

    /// Sends `call` to the gateway.
    pub async fn call(&mut self, call: ApiCall) -> Result<JsonReply, BoxError> {
        let started = tokio::time::Instant::now();
        let reply = self.poll(call).await?;
        if reply.status.is_success() {
            self.latencies.push(started.elapsed());
        }
        Ok(reply)
    }

    /// Sends `call` to the gateway without counting its latency: the
    /// story's waits poll, as often as timing makes them, and the summary
    /// counts only the story's own calls.
    pub async fn poll(&self, call: ApiCall) -> Result<JsonReply, BoxError> {
        self.system
            .client
            .send(&self.system.gateway.to_string(), call)
            .await
    }

    /// Signs up and logs in; returns the token.
    pub async fn sign_up_and_log_in(
        &mut self,
        email: &str,
        name: &str,
    ) -> Result<String, BoxError> {
        let password = format!("{name}-secret-password");
        let reply = self
            .call(ApiCall::post(
                "/api/users",
                json!({"email": email, "name": name, "password": password}),
            ))
            .await?;
        expect(&reply, 201, "sign-up")?;
        let reply = self
            .call(ApiCall::post(
                "/api/users/login",
                json!({"email": email, "password": password}),
            ))
            .await?;
        expect(&reply, 200, "login")?;
        reply.body["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "login answered without a token".into())
    }

    /// Places an order of `quantity` × product `product_id`.
    pub async fn order(
        &mut self,
        token: &str,
        product_id: i64,
        quantity: i64,
    ) -> Result<JsonReply, BoxError> {
        self.call(
            ApiCall::post(
                "/api/orders",
                json!({"items": [{"product_id": product_id, "quantity": quantity}]}),
            )
            .bearer(token),
        )
        .await
    }

    /// The latencies of the successful calls, sorted.
    pub fn latencies(&self) -> Vec<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
    }
}

fn expect(reply: &JsonReply, status: u16, what: &str) -> Result<(), BoxError> {
    if reply.status.as_u16() == status {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {status}, got {} {}",
            reply.status, reply.body
        )
        .into())
    }
}

fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// An order's outcome in a few words.
fn outcome(reply: &JsonReply) -> String {
    let body = &reply.body;
    match body["error"].as_str() {
        Some(error) => format!(
            "{} {} ({})",
            reply.status.as_u16(),
            body["status"].as_str().unwrap_or("?"),
            first_clause(error)
        ),
        None => format!(
            "{} {} {}",
            reply.status.as_u16(),
            body["status"].as_str().unwrap_or("?"),
            dollars(body["total_cents"].as_i64().unwrap_or_default())
        ),
    }
}

/// The error up to its detail, for a stable narration.
fn first_clause(error: &str) -> String {
    let mut words: Vec<&str> = error.split(": ").take(3).collect();
    if let Some(last) = words.last_mut() {
        *last = last.split(" (").next().unwrap_or(last);
    }
    words.join(": ")
}

/// Sets a payments instance's fault switches.
pub async fn payments_faults(
    system: &System,
    instance: &str,
    faults: Value,
) -> Result<(), BoxError> {
    let reply = system
        .client
        .send(
            &system.instance(instance)?.to_string(),
            ApiCall::post("/admin/faults", faults),
        )
        .await?;
    expect(&reply, 200, "faults")
}

async fn admin(system: &System, instance: &str, path: &str, body: Value) -> Result<(), BoxError> {
    let reply = system
        .client
        .send(
            &system.instance(instance)?.to_string(),
            ApiCall::post(path, body),
        )
        .await?;
    expect(&reply, 200, path)
}

/// The first and last transitions, with the count of those between.
fn transitions(all: &[String]) -> String {
    match all {
        [] => "nowhere".to_owned(),
        [one] => one.clone(),
        [first, last] => format!("{first}, {last}"),
        [first, middle @ .., last] => format!("{first}, ({} more), {last}", middle.len()),
    }
}

fn delays(delays: &[Duration]) -> String {
    let shown: Vec<String> = delays
        .iter()
        .map(|d| format!("{} ms", d.as_millis()))
        .collect();
    shown.join(", ")
}

/// Runs the story against a started system; returns the failures of the
/// invariant checks (empty when all hold).
pub async fn run(system: &System, say: &mut Narrator) -> Result<Vec<String>, BoxError> {
    let mut shop = Shopper::new(system);
    let before = Ledger::read(system).await?;
    let registered = match system.registry_backend() {
        "etcd" => "registered in etcd with a lease it keeps alive".to_owned(),
        _ => format!(
            "registered with a health check (users: {}; the others: HTTP /health)",
            super::registry::USERS_CHECK
        ),
    };
    say.say(format!(
        "{} instances up on 127.0.0.1, each {registered}; clients know only the gateway, which finds the rest in the registry and balances over them: the gateway is the chapter's server-side discovery",
        system.instances.len()
    ));

    // Sign up and log in.
    let alice = shop
        .sign_up_and_log_in("alice@example.com", "alice")
        .await?;
    let bob = shop.sign_up_and_log_in("bob@example.com", "bob").await?;
    say.say(
        "alice and bob sign up (users service, gRPC, Argon2id hashes) and log in: each gets a JWT",
    );
    let again = shop
        .call(ApiCall::post(
            "/api/users",
            json!({"email": "alice@example.com", "name": "alice", "password": "another-password"}),
        ))
        .await?;
    let bad = shop
        .call(ApiCall::post(
            "/api/users",
            json!({"email": "nobody", "name": "x", "password": "long-enough"}),
        ))
        .await?;
    let wrong = shop
        .call(ApiCall::post(
            "/api/users/login",
            json!({"email": "alice@example.com", "password": "guess"}),
        ))
        .await?;
    let anonymous = shop
        .call(ApiCall::post(
            "/api/orders",
            json!({"items": [{"product_id": 1, "quantity": 1}]}),
        ))
        .await?;
    let forged = shop
        .call(ApiCall::post("/api/orders", json!({"items": []})).bearer("not.a.token"))
        .await?;
    say.say(format!(
        "refused as they should be: same email again {}, an email without '@' {}, a wrong password {}, an order without a token {}, with a forged token {}",
        again.status.as_u16(),
        bad.status.as_u16(),
        wrong.status.as_u16(),
        anonymous.status.as_u16(),
        forged.status.as_u16()
    ));

    // Browse.
    let catalogue = shop.call(ApiCall::get("/api/products")).await?;
    expect(&catalogue, 200, "catalogue")?;
    let names: Vec<String> = catalogue
        .body
        .as_array()
        .map(|products| {
            products
                .iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["name"].as_str().unwrap_or("?"),
                        dollars(p["price_cents"].as_i64().unwrap_or_default())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let missing = shop.call(ApiCall::get("/api/products/99")).await?;
    say.say(format!(
        "browse the catalogue: {}; product 99: {}",
        names.join(", "),
        missing.status.as_u16()
    ));

    // Orders.
    let first = shop.order(&alice, 1, 2).await?;
    let second = shop.order(&bob, 2, 1).await?;
    say.say(format!(
        "alice orders 2 books: {}; bob orders a keyboard: {} (saga: create PENDING -> charge -> reserve stock -> confirm)",
        outcome(&first),
        outcome(&second)
    ));
    let mine = shop
        .call(
            ApiCall::get(format!(
                "/api/orders/{}",
                first.body["id"].as_str().unwrap_or_default()
            ))
            .bearer(&bob),
        )
        .await?;
    say.say(format!(
        "bob asks for alice's first order by its id: {} (an order is shown to its owner only)",
        mine.status.as_u16()
    ));

    // A payments instance fails; the mail server hiccups.
    payments_faults(system, "payments-2", json!({"down": true})).await?;
    admin(
        system,
        "notifications-1",
        "/admin/faults",
        json!({"lose_next_replies": 2}),
    )
    .await?;
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(
            outcome(&shop.order(&alice, 1, 1).await?)
                .split(' ')
                .nth(1)
                .unwrap_or("?")
                .to_owned(),
        );
    }
    let observed = system.observed.lock().ejections.clone();
    say.say(format!(
        "payments-2 fails every charge (its health check still passes): 4 book orders {}; outlier detection ejected {}; the failed charges were retried on payments-1 after {}",
        outcomes.join(", "),
        observed.join(", "),
        delays(&system.observed.lock().payment_retry_delays)
    ));
    payments_faults(system, "payments-2", json!({})).await?;

    // Both fail: the breaker opens.
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({"down": true})).await?;
    }
    let retried_before = system.observed.lock().payment_retry_delays.len();
    let mut failed = Vec::new();
    for _ in 0..4 {
        let reply = shop.order(&bob, 1, 1).await?;
        let fast = reply.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected by the circuit breaker"));
        failed.push(format!(
            "{}{}",
            reply.status.as_u16(),
            if fast { " (failed fast)" } else { "" }
        ));
    }
    let retried: Vec<Duration> =
        system.observed.lock().payment_retry_delays[retried_before..].to_vec();
    say.say(format!(
        "every payments instance fails: orders {}; the first order's charge was retried after {} (exponential backoff), then the breaker opened: {}",
        failed.join(", "),
        delays(&retried[..retried.len().min(2)]),
        system.payments_breaker.metrics().state
    ));
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({})).await?;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut recovered = Vec::new();
    for _ in 0..2 {
        recovered.push(outcome(&shop.order(&bob, 1, 1).await?));
    }
    say.say(format!(
        "payments recover; after its open wait the breaker lets trial calls through: {}; the breaker went {}",
        recovered.join(", "),
        transitions(&system.observed.lock().breaker_transitions)
    ));

    // Declined, out of stock.
    let piano = shop.order(&alice, 4, 1).await?;
    let emailed = email_of(system, &piano, "OrderCancelled").await?;
    say.say(format!(
        "alice orders the grand piano: {} -> the saga cancels the order, nothing charged, no stock reserved; notifications emails alice: {emailed}",
        outcome(&piano)
    ));
    let lamps = shop.order(&bob, 3, 5).await?;
    let emailed = email_of(system, &lamps, "OrderCancelled").await?;
    say.say(format!(
        "bob orders 5 lamps: {} -> the charge is refunded, the order cancelled; notifications emails bob: {emailed}",
        outcome(&lamps)
    ));

    // A lost reply.
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({"lose_replies": true})).await?;
    }
    let lost = shop.order(&alice, 2, 1).await?;
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({})).await?;
    }
    let ledger = system
        .client
        .send(
            &system.instance("payments-1")?.to_string(),
            ApiCall::get("/ledger"),
        )
        .await?;
    let lost_id = lost.body["id"].as_str().unwrap_or_default();
    let state = ledger
        .body
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["order_id"] == lost_id))
        .map_or("none".to_owned(), |row| {
            row["state"].as_str().unwrap_or("?").to_owned()
        });
    say.say(format!(
        "the charge replies are lost (taken, but answered too late): alice's keyboard order {}; its payment, refunded by the charge's key: {state}",
        outcome(&lost)
    ));

    // A crash mid-saga.
    admin(system, "orders-1", "/admin/crash-executor", json!({})).await?;
    let crashed = shop.order(&bob, 1, 1).await?;
    let id = crashed.body["id"].as_str().unwrap_or_default().to_owned();
    let mut status = crashed.body["status"].as_str().unwrap_or("?").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status == "PENDING" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = shop
            .poll(ApiCall::get(format!("/api/orders/{id}")).bearer(&bob))
            .await?;
        status = reply.body["status"].as_str().unwrap_or("?").to_owned();
    }
    say.say(format!(
        "the orders executor crashes mid-saga (at reserve-stock): the order answers {} {}; the standby executor takes it over from the SQLite log once the lease lapses: {status}",
        crashed.status.as_u16(),
        crashed.body["status"].as_str().unwrap_or("?")
    ));

    // The gateway's guards, metrics and traces.
    let guarded = edge_story(system, say, &mut shop, &alice).await?;

    // Notifications.
    invariants::wait_for_outbox(system).await?;
    let after = Ledger::read(system).await?;
    let redelivered = match &system.broker {
        None => format!(
            "the outbox relay delivered again after {}",
            delays(&system.observed.lock().relay_retry_delays)
        ),
        Some(_) => "RabbitMQ delivered the unacknowledged events again".to_owned(),
    };
    say.say(format!(
        "notifications: {} order events, {} emails from {} deliveries (two replies were lost: {redelivered}, and the duplicates were recognised by event id)",
        after.events, after.emails, after.deliveries,
    ));

    // Summary.
    let broken = invariants::check(system).await?;
    say.say("summary:");
    print_summary(say, system, &before, &after, &guarded, &shop.latencies());
    say.say(if broken.is_empty() {
        "invariants hold: stock on hand + reserved = initial; each confirmed order one net charge, each cancelled none; each event one email; payments received only calls its breaker permitted".to_owned()
    } else {
        format!("INVARIANTS BROKEN: {}", broken.join("; "))
    });
    Ok(broken)
}

/// The latencies' p50 and p99, from an HDR histogram of microseconds
/// (1 µs to an hour, three significant digits).
pub fn p50_p99(latencies: &[Duration]) -> (Duration, Duration) {
    let Ok(mut histogram) = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
    else {
        return (Duration::ZERO, Duration::ZERO);
    };
    for latency in latencies {
        histogram.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }
    let at = |quantile| Duration::from_micros(histogram.value_at_quantile(quantile));
    (at(0.5), at(0.99))
}

fn print_summary(
    say: &mut Narrator,
    system: &System,
    before: &Ledger,
    after: &Ledger,
    guarded: &Guarded,
    latencies: &[Duration],
) {
    let mut lines = Vec::new();
    let mut row =
        |name: &str, value: String| lines.push(format!("    | {name:<34} | {value:<46} |"));
    let rule = format!("    +{}+{}+", "-".repeat(36), "-".repeat(48));
    for status in ["CONFIRMED", "CANCELLED"] {
        row(
            &format!("orders {}", status.to_lowercase()),
            after
                .orders_by_status
                .get(status)
                .copied()
                .unwrap_or(0)
                .to_string(),
        );
    }
    for (product, (initial, on_hand, reserved)) in &after.stock {
        let was = before
            .stock
            .get(product)
            .map_or(0, |(_, on_hand, _)| *on_hand);
        row(
            &format!("stock of product {product}"),
            format!("{was} before; now {on_hand} on hand + {reserved} reserved = {initial}"),
        );
    }
    let net: i64 = after.net_charges.values().sum();
    row(
        "net charges",
        format!("{} ({} refunds)", dollars(net), after.refunds),
    );
    row(
        "notifications",
        format!("{} emails for {} events", after.emails, after.events),
    );
    row(
        "payments breaker transitions",
        system.observed.lock().breaker_transitions.len().to_string(),
    );
    row(
        "calls the open breaker refused",
        system.observed.lock().breaker_rejections.to_string(),
    );
    row(
        "orders the gateway turned away",
        format!(
            "{} rate-limited (429), {} by the bulkhead (503)",
            guarded.rate_limited, guarded.bulkhead_rejected
        ),
    );
    let retries = system.payments_retry.metrics().retries + system.relay_retry.metrics().retries;
    row("retries (payments + outbox relay)", retries.to_string());
    row("healthy gateway calls p50 / p99", {
        let (p50, p99) = p50_p99(latencies);
        format!("{p50:.1?} / {p99:.1?} ({} calls)", latencies.len())
    });
    say.print(rule.clone());
    for line in lines {
        say.print(line);
    }
    say.print(rule);
}

/// Waits (at most 5 s) for the email of `order`'s event `kind`; its
/// description.
async fn email_of(system: &System, order: &JsonReply, kind: &str) -> Result<String, BoxError> {
    let event_id = format!("{}:{kind}", order.body["id"].as_str().unwrap_or_default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let emails = super::invariants::get(system, "notifications-1", "/emails").await?;
        let sent = emails
            .as_array()
            .is_some_and(|emails| emails.iter().any(|email| email["event_id"] == event_id));
        if sent {
            return Ok(format!("{kind} (from the outbox)"));
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(format!("NO {kind} EMAIL within 5 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the gateway's guards turned away in the story's burst.
pub struct Guarded {
    /// Orders answered 429 by the per-user rate limit.
    pub rate_limited: usize,
    /// Orders the bulkhead turned away after waiting.
    pub bulkhead_rejected: usize,
}

// ---------------------------------------------------------------------------
// The gateway's guards (catalogue cache, hedging, fallback; the per-user
// rate limit, bulkhead and adaptive limit on orders), /metrics and the
// W3C trace context.

/// The trace the story's traced order carries.
pub const STORY_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// How many products a catalogue reply lists.
fn listed(reply: &JsonReply) -> usize {
    reply.body.as_array().map_or(0, Vec::len)
}

async fn products_faults(system: &System, instance: &str, faults: Value) -> Result<(), BoxError> {
    admin(system, instance, "/admin/faults", faults).await
}

/// The story's steps for the gateway's guards, metrics and traces.
async fn edge_story(
    system: &System,
    say: &mut Narrator,
    shop: &mut Shopper<'_>,
    alice: &str,
) -> Result<Guarded, BoxError> {
    let guards = &system.guards;
    let limits = guards.config;

    // Hedging: one catalogue instance is slow.
    products_faults(system, "products-1", json!({"latency_ms": 400})).await?;
    let hedges_before = guards.catalogue_hedge.metrics();
    let mut slowest = Duration::ZERO;
    for id in 1..=4 {
        let started = tokio::time::Instant::now();
        let reply = shop
            .call(ApiCall::get(format!("/api/products/{id}")))
            .await?;
        expect(&reply, 200, "product")?;
        slowest = slowest.max(started.elapsed());
    }
    products_faults(system, "products-1", json!({})).await?;
    let hedges = guards.catalogue_hedge.metrics();
    say.say(format!(
        "products-1 answers 400 ms late: 4 product pages through the gateway, {}; hedging sent {} copies to the other instance after 50 ms, {} of them won",
        if slowest < Duration::from_millis(300) {
            "every one in under 300 ms"
        } else {
            "SOME SLOWER THAN 300 ms"
        },
        hedges.hedges_started - hedges_before.hedges_started,
        hedges.hedge_wins - hedges_before.hedge_wins,
    ));

    // The catalogue stops: stale data, then the fallback.
    for instance in ["products-1", "products-2"] {
        system.stop_instance(instance).await?;
    }
    let stale_before = guards.catalogue_cache.metrics().stale_served;
    let stale = shop.call(ApiCall::get("/api/products")).await?;
    let stale_served = guards.catalogue_cache.metrics().stale_served - stale_before;
    guards.catalogue_cache.invalidate(&"/products".to_owned());
    let fallback = shop.call(ApiCall::get("/api/products")).await?;
    say.say(format!(
        "the catalogue service stops (both instances): browsing still answers {} with {} products, the gateway's cached catalogue past its 100 ms freshness (stale answers: {stale_served}); with the cache cleared, the fallback answers {} with an empty catalogue ({} products)",
        stale.status.as_u16(),
        listed(&stale),
        fallback.status.as_u16(),
        listed(&fallback),
    ));
    for instance in ["products-1", "products-2"] {
        system.restart_instance(instance).await?;
    }
    system.wait_healthy("products", 2).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut fresh = shop.call(ApiCall::get("/api/products")).await?;
    while listed(&fresh) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fresh = shop.poll(ApiCall::get("/api/products")).await?;
    }
    say.say(format!(
        "the catalogue restarts on the same ports; its health checks pass again and browsing lists {} products, fresh",
        listed(&fresh)
    ));

    // A burst of orders from one user.
    let carol = shop
        .sign_up_and_log_in("carol@example.com", "carol")
        .await?;
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({"latency_ms": 600})).await?;
    }
    let mut bulkhead = guards.orders_bulkhead.subscribe();
    let adaptive_before = guards.orders_concurrency.metrics().rejected;
    let burst = 12;
    let gateway = system.gateway.to_string();
    let orders = (0..burst).map(|_| {
        system.client.send(
            &gateway,
            ApiCall::post(
                "/api/orders",
                json!({"items": [{"product_id": 5, "quantity": 1}]}),
            )
            .bearer(&carol),
        )
    });
    let replies = futures::future::join_all(orders).await;
    for instance in ["payments-1", "payments-2"] {
        payments_faults(system, instance, json!({})).await?;
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for reply in replies {
        *statuses.entry(reply?.status.as_u16()).or_default() += 1;
    }
    let (mut at_once, mut queued_in, mut turned_away) = (0, 0, 0);
    for event in bulkhead.drain() {
        match event.kind {
            palisade::bulkhead::BulkheadEventKind::Permitted { waited } if waited.is_zero() => {
                at_once += 1
            }
            palisade::bulkhead::BulkheadEventKind::Permitted { .. } => queued_in += 1,
            palisade::bulkhead::BulkheadEventKind::Rejected { waited, .. } if !waited.is_zero() => {
                turned_away += 1
            }
            _ => {}
        }
    }
    let count = |status: u16| statuses.get(&status).copied().unwrap_or(0);
    say.say(format!(
        "carol places {burst} sticker orders at once while payments answer 600 ms late: {} answered 429 by the gateway's per-user rate limit ({} orders per {} s, keyed by the JWT's subject); the orders bulkhead ({} at a time, at most {} ms of waiting) let {at_once} in at once and queued {}: {queued_in} got a turn, {turned_away} were turned away (503); {} orders confirmed; the adaptive concurrency limit behind the bulkhead turned {} away",
        count(429),
        limits.orders_per_user,
        limits.orders_period.as_secs(),
        limits.orders_bulkhead,
        limits.orders_bulkhead_wait.as_millis(),
        queued_in + turned_away,
        count(201) + count(200),
        guards.orders_concurrency.metrics().rejected - adaptive_before,
    ));

    // One order's trace across the services.
    let mut call = ApiCall::post(
        "/api/orders",
        json!({"items": [{"product_id": 5, "quantity": 1}]}),
    )
    .bearer(alice);
    call.headers.push((
        http::HeaderName::from_static(super::edge::TRACEPARENT),
        STORY_TRACEPARENT.to_owned(),
    ));
    let traced = shop.call(call).await?;
    // Its events reach notifications through the outbox, asynchronously.
    invariants::wait_for_outbox(system).await?;
    let trace_id = STORY_TRACEPARENT.split('-').nth(1).unwrap_or_default();
    let mut services: Vec<&str> = system
        .instances
        .keys()
        .filter(|id| guards.traces.of(id).iter().any(|seen| seen == trace_id))
        .map(|id| {
            id.rsplit_once('-')
                .map_or(id.as_str(), |(service, _)| service)
        })
        .collect();
    services.dedup();
    say.say(format!(
        "an order sent with traceparent {STORY_TRACEPARENT}: {}; its trace id reached {} (W3C traceparent on every hop, HTTP and gRPC, also through the saga's executor and, stored with its events in the outbox, to notifications; each service's request span logs it on stderr)",
        outcome(&traced),
        services.join(", ")
    ));

    // /metrics.
    let mut found = Vec::new();
    for instance in ["gateway-1", "payments-1"] {
        let reply = system
            .client
            .send(
                &system.instance(instance)?.to_string(),
                ApiCall::get("/metrics"),
            )
            .await?;
        let text = reply.body.as_str().unwrap_or_default().to_owned();
        found.push(
            METRIC_NAMES
                .iter()
                .filter(|name| text.contains(*name))
                .count(),
        );
    }
    say.say(format!(
        "every instance serves /metrics in Prometheus text; all run in one process with one recorder, so each renders the same registry: gateway-1 and payments-1 show {} and {} of the {} series names looked for ({})",
        found[0],
        found[1],
        METRIC_NAMES.len(),
        METRIC_NAMES.join(", ")
    ));
    Ok(Guarded {
        rate_limited: count(429),
        bulkhead_rejected: turned_away,
    })
}

/// The series the story and the tests look for in `/metrics`.
pub const METRIC_NAMES: &[&str] = &[
    "palisade_circuit_breaker_state",
    "palisade_retry_retries_total",
    "palisade_bulkhead_calls_total",
    "palisade_rate_limiter_keys",
    "palisade_saga_finished_total",
];
