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
