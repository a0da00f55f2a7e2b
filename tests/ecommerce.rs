//! The e-commerce example's system on real sockets (every service on its
//! own 127.0.0.1 port 0, its own SQLite files in a temporary directory):
//! the scripted story keeps the system's invariants, the gateway refuses
//! requests without a valid JWT and answers errors as JSON with the right
//! status, and the committed gRPC code matches `users.proto`.
//!
//! Each test starts its own system, so they run in parallel. The story
//! runs in real time (its breaker waits and lease expiries are real), a
//! few seconds.

#[allow(dead_code)]
#[path = "../examples/ecommerce/shop/mod.rs"]
mod shop;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use shop::http_json::{ApiCall, JsonReply};
use shop::scenario::{self, Narrator, payments_faults};
use shop::system::{System, SystemConfig};

async fn call(system: &System, call: ApiCall) -> JsonReply {
    system
        .client
        .send(&system.gateway.to_string(), call)
        .await
        .expect("the gateway answers")
}

/// Asserts `reply` is a JSON error with `status`.
fn assert_json_error(reply: &JsonReply, status: u16, what: &str) {
    assert_eq!(reply.status.as_u16(), status, "{what}: {}", reply.body);
    assert!(
        reply.body["error"].is_string(),
        "{what}: the error is JSON with a message: {}",
        reply.body
    );
    assert_eq!(reply.body["code"], status, "{what}: {}", reply.body);
}

async fn signed_up(system: &System, email: &str) -> String {
    let password = "a-long-password";
    let reply = call(
        system,
        ApiCall::post(
            "/api/users",
            json!({"email": email, "name": "tester", "password": password}),
        ),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    let reply = call(
        system,
        ApiCall::post(
            "/api/users/login",
            json!({"email": email, "password": password}),
        ),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    reply.body["token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_story_keeps_stock_charges_and_notifications_consistent() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let broken = scenario::run(&system, &mut Narrator::default())
        .await
        .expect("the story runs");
    assert!(broken.is_empty(), "invariants broken: {broken:#?}");

    // The story's own outcomes, read back from the services.
    let ledger = shop::invariants::Ledger::read(&system)
        .await
        .expect("ledger");
    assert!(ledger.orders_by_status["CONFIRMED"] >= 9, "{ledger:?}");
    assert!(ledger.orders_by_status["CANCELLED"] >= 7, "{ledger:?}");
    assert!(
        ledger.refunds >= 2,
        "the out-of-stock and the lost-reply charges are refunded: {ledger:?}"
    );
    assert!(
        ledger.deliveries > ledger.emails,
        "a redelivered event is recorded once: {ledger:?}"
    );
    let transitions = system.observed.lock().breaker_transitions.clone();
    assert_eq!(
        transitions.first().map(String::as_str),
        Some("CLOSED -> OPEN")
    );
    assert_eq!(
        transitions.last().map(String::as_str),
        Some("HALF_OPEN -> CLOSED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_requests_without_a_valid_jwt() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let token = signed_up(&system, "carol@example.com").await;
    let order = json!({"items": [{"product_id": 1, "quantity": 1}]});

    let none = call(&system, ApiCall::post("/api/orders", order.clone())).await;
    assert_json_error(&none, 401, "no token");
    let garbage = call(
        &system,
        ApiCall::post("/api/orders", order.clone()).bearer("garbage"),
    )
    .await;
    assert_json_error(&garbage, 401, "a malformed token");
    let exp = (SystemTime::now() + Duration::from_secs(600))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "1", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the gateway's secret"),
    )
    .unwrap();
    let forged = call(
        &system,
        ApiCall::post("/api/orders", order.clone()).bearer(&forged),
    )
    .await;
    assert_json_error(&forged, 401, "a token signed with another key");
    let me = call(&system, ApiCall::get("/api/users/me")).await;
    assert_json_error(&me, 401, "whoami without a token");

    // Nothing reached the orders service.
    let orders = system
        .client
        .send(
            &system.instance("orders-1").unwrap().to_string(),
            ApiCall::get("/orders"),
        )
        .await
        .unwrap();
    assert_eq!(orders.body, json!([]));

    // The same requests with the token go through.
    let me = call(&system, ApiCall::get("/api/users/me").bearer(&token)).await;
    assert_eq!(me.status.as_u16(), 200, "{}", me.body);
    assert_eq!(me.body["email"], "carol@example.com");
    let placed = call(&system, ApiCall::post("/api/orders", order).bearer(&token)).await;
    assert_eq!(placed.status.as_u16(), 201, "{}", placed.body);
    assert_eq!(placed.body["status"], "CONFIRMED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_errors_as_json_with_their_status() {
    let system = System::start(SystemConfig {
        orders_per_second: 2,
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts");
    let token = signed_up(&system, "dave@example.com").await;

    let mut invalid = ApiCall::post("/api/orders", Value::Null).bearer(&token);
    invalid.body = Some(json!("not an order"));
    assert_json_error(
        &call(&system, invalid).await,
        400,
        "a body that is not an order",
    );
    let short = ApiCall::post(
        "/api/users",
        json!({"email": "eve@example.com", "name": "eve", "password": "short"}),
    );
    assert_json_error(&call(&system, short).await, 400, "a short password");
    assert_json_error(
        &call(&system, ApiCall::get("/api/nowhere")).await,
        404,
        "an unknown route",
    );
    assert_json_error(
        &call(&system, ApiCall::get("/api/products/99")).await,
        404,
        "an unknown product",
    );
    let again = ApiCall::post(
        "/api/users",
        json!({"email": "dave@example.com", "name": "dave", "password": "a-long-password"}),
    );
    assert_json_error(&call(&system, again).await, 409, "a taken email");
    let piano = json!({"items": [{"product_id": 4, "quantity": 1}]});
    let declined = call(&system, ApiCall::post("/api/orders", piano).bearer(&token)).await;
    assert_json_error(&declined, 409, "a declined payment");
    assert_eq!(declined.body["status"], "CANCELLED");

    // Payments down: the order is cancelled, 503.
    for instance in ["payments-1", "payments-2"] {
        payments_faults(&system, instance, json!({"down": true}))
            .await
            .unwrap();
    }
    let book = json!({"items": [{"product_id": 1, "quantity": 1}]});
    let down = call(
        &system,
        ApiCall::post("/api/orders", book.clone()).bearer(&token),
    )
    .await;
    assert_json_error(&down, 503, "payments down");
    assert_eq!(down.body["status"], "CANCELLED");

    // Two orders a second: of five more sent at once (within two of the
    // limiter's periods at most), at least one is refused.
    let mut refused = Vec::new();
    for _ in 0..5 {
        let reply = call(
            &system,
            ApiCall::post("/api/orders", book.clone()).bearer(&token),
        )
        .await;
        if reply.status.as_u16() == 429 {
            refused.push(reply);
        }
    }
    assert!(
        !refused.is_empty(),
        "the gateway's rate limit refuses some orders"
    );
    for reply in &refused {
        assert_json_error(reply, 429, "over the gateway's rate");
    }
}

/// Regenerates the users service's Rust code from `users.proto` (protox,
/// no `protoc`) and compares it with the committed copy; with
/// `ECOMMERCE_REGENERATE_PROTO=1` it writes the new code instead.
#[test]
fn generated_grpc_code_matches_users_proto() {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecommerce/proto");
    let descriptors =
        protox::compile([proto.join("users.proto")], [&proto]).expect("users.proto compiles");
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("tonic-prost-build generates the code");
    let file = "ecommerce.users.v1.rs";
    let generated = std::fs::read_to_string(out.path().join(file)).unwrap();
    let committed_path = proto.join(file);
    if std::env::var_os("ECOMMERCE_REGENERATE_PROTO").is_some() {
        std::fs::write(&committed_path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with users.proto: run \
         `ECOMMERCE_REGENERATE_PROTO=1 cargo test --test ecommerce generated_grpc` and commit it",
        committed_path.display()
    );
}

/// Runs the seeded fault run on a fresh system and asserts the invariants
/// held and the faults really happened.
async fn fault_run_keeps_the_invariants(seed: u64, broker: Option<String>) {
    let transport = if broker.is_some() { "amqp" } else { "http" };
    let system = System::start(SystemConfig {
        broker,
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts");
    let report = shop::fault_run::run(
        &system,
        shop::fault_run::FaultRunConfig::new(seed),
        &mut Narrator::default(),
    )
    .await
    .expect("the fault run runs");
    assert!(report.broken.is_empty(), "invariants broken: {report:#?}");

    let placed: u64 = report.replies.values().sum();
    assert_eq!(placed, 40, "5 rounds of 8 orders: {report:?}");
    let failed: u64 = report
        .replies
        .iter()
        .filter(|(status, _)| **status >= 400)
        .map(|(_, count)| count)
        .sum();
    assert!(failed > 0, "the faults failed some orders: {report:?}");
    let ledger = shop::invariants::Ledger::read(&system)
        .await
        .expect("ledger");
    assert_eq!(
        ledger.orders_by_status.values().sum::<u64>(),
        ledger.orders_by_status["CONFIRMED"] + ledger.orders_by_status["CANCELLED"],
        "every order finished: {ledger:?}"
    );
    assert!(
        ledger.deliveries > ledger.emails,
        "lost notification replies were delivered again and recorded once: {ledger:?}"
    );
    let audit = system.payments_audit();
    assert!(audit.received > 0, "{audit:?}");
    assert!(
        audit.rejected > 0,
        "the outage opened the payments breaker, which refused calls: {audit:?}"
    );
    let emails = system
        .client
        .send(
            &system.instance("notifications-1").unwrap().to_string(),
            ApiCall::get("/emails"),
        )
        .await
        .unwrap();
    let emails = emails.body.as_array().expect("emails");
    assert!(
        emails.iter().all(|email| email["transport"] == transport),
        "every event came by {transport}: {emails:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fault_run_1_keeps_stock_charges_notifications_and_the_breaker_consistent() {
    fault_run_keeps_the_invariants(1, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fault_run_2_keeps_stock_charges_notifications_and_the_breaker_consistent() {
    fault_run_keeps_the_invariants(2, None).await;
}

/// The breaker audit is not vacuous: a charge that reaches payments while
/// the breaker is open, past it, breaks the invariant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_open_payments_breaker_breaks_the_invariants() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    assert!(
        shop::invariants::check(&system).await.unwrap().is_empty(),
        "a fresh system keeps the invariants"
    );
    system.payments_breaker.transition_to_open().unwrap();
    let past = system
        .client
        .send(
            &system.instance("payments-1").unwrap().to_string(),
            ApiCall::post(
                "/charge",
                json!({"key": "past-the-breaker", "order_id": "none", "amount_cents": 1}),
            ),
        )
        .await
        .unwrap();
    assert!(past.status.is_success(), "{}", past.body);
    let broken = shop::invariants::check(&system).await.unwrap();
    assert!(
        broken
            .iter()
            .any(|b| b.contains("more than its breaker permitted")),
        "{broken:#?}"
    );
}

/// The broker the RabbitMQ tests use: `PALISADE_AMQP`, set by
/// scripts/integration-rabbitmq.sh.
fn amqp() -> String {
    std::env::var("PALISADE_AMQP").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq: scripts/integration-rabbitmq.sh"]
async fn rabbitmq_story_gives_each_order_event_exactly_one_notification() {
    let system = System::start(SystemConfig {
        broker: Some(amqp()),
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts with the broker");
    let broken = scenario::run(&system, &mut Narrator::default())
        .await
        .expect("the story runs");
    assert!(broken.is_empty(), "invariants broken: {broken:#?}");
    let ledger = shop::invariants::Ledger::read(&system)
        .await
        .expect("ledger");
    assert!(ledger.events >= 30, "{ledger:?}");
    assert_eq!(ledger.events, ledger.emails, "{ledger:?}");
    assert_eq!(ledger.delivered, ledger.events, "every event confirmed");
    assert!(
        ledger.deliveries > ledger.emails,
        "the unacknowledged deliveries came again through the broker and were recorded once: {ledger:?}"
    );
    let emails = system
        .client
        .send(
            &system.instance("notifications-1").unwrap().to_string(),
            ApiCall::get("/emails"),
        )
        .await
        .unwrap();
    let emails = emails.body.as_array().expect("emails");
    assert!(
        emails.iter().all(|email| email["transport"] == "amqp"),
        "every event came through the broker: {emails:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq: scripts/integration-rabbitmq.sh"]
async fn rabbitmq_seeded_fault_run_keeps_the_invariants() {
    fault_run_keeps_the_invariants(3, Some(amqp())).await;
}

/// The story with every service registered in a real etcd
/// (`PALISADE_ETCD`, set by scripts/integration-etcd.sh): the balancers
/// find the instances through etcd's prefix watch.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd: scripts/integration-etcd.sh"]
async fn etcd_registry_story_keeps_the_invariants() {
    let endpoint =
        std::env::var("PALISADE_ETCD").unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
    let address = endpoint
        .strip_prefix("http://")
        .expect("PALISADE_ETCD is http://host:port");
    let system = System::start(SystemConfig {
        registry: Some(format!("etcd://{address}")),
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts on etcd");
    assert_eq!(system.registry_backend(), "etcd");
    let broken = scenario::run(&system, &mut Narrator::default())
        .await
        .expect("the story runs");
    assert!(broken.is_empty(), "invariants broken: {broken:#?}");
    let transitions = system.observed.lock().breaker_transitions.clone();
    assert_eq!(
        transitions.last().map(String::as_str),
        Some("HALF_OPEN -> CLOSED")
    );
}
