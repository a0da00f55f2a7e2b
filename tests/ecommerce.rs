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

// ---------------------------------------------------------------------------
// The gateway's guards, the chaos faults, gRPC health, /metrics and the
// W3C trace context.

/// `GET path` on instance `id` (not through the gateway).
async fn on_instance(system: &System, id: &str, call: ApiCall) -> JsonReply {
    system
        .client
        .send(&system.instance(id).unwrap().to_string(), call)
        .await
        .expect("the instance answers")
}

/// Places a sticker order over a plain TCP connection; the response's
/// status line and headers.
async fn raw_order(system: &System, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = sticker().to_string();
    let mut stream = tokio::net::TcpStream::connect(system.gateway)
        .await
        .unwrap();
    let request = format!(
        "POST /api/orders HTTP/1.1\r\nhost: shop\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn sticker() -> Value {
    json!({"items": [{"product_id": 5, "quantity": 1}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_limits_orders_per_user_by_the_jwt_subject() {
    let system = System::start(SystemConfig {
        edge: shop::edge::EdgeConfig {
            orders_per_user: 2,
            orders_period: Duration::from_secs(600),
            ..Default::default()
        },
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts");
    let frank = signed_up(&system, "frank@example.com").await;
    let grace = signed_up(&system, "grace@example.com").await;
    for _ in 0..2 {
        let placed = call(
            &system,
            ApiCall::post("/api/orders", sticker()).bearer(&frank),
        )
        .await;
        assert_eq!(placed.status.as_u16(), 201, "{}", placed.body);
    }
    let refused = call(
        &system,
        ApiCall::post("/api/orders", sticker()).bearer(&frank),
    )
    .await;
    assert_json_error(&refused, 429, "frank's third order");
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("from this user; retry in"),
        "{}",
        refused.body
    );
    // The 429 says when to come back (read raw: the JSON client keeps no
    // headers).
    let head = raw_order(&system, &frank).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let retry_after: u64 = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .expect("a Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    // Another user has a limit of their own.
    let placed = call(
        &system,
        ApiCall::post("/api/orders", sticker()).bearer(&grace),
    )
    .await;
    assert_eq!(placed.status.as_u16(), 201, "{}", placed.body);
    let limiter = system.guards.orders_per_user.metrics();
    assert_eq!((limiter.keys, limiter.rejected), (2, 2), "{limiter:?}");
    // The refused order never reached the orders service.
    let orders = on_instance(&system, "orders-1", ApiCall::get("/orders")).await;
    assert_eq!(
        orders.body.as_array().map(Vec::len),
        Some(3),
        "{}",
        orders.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_is_served_stale_then_by_the_fallback_while_it_is_down() {
    let system = System::start(SystemConfig {
        edge: shop::edge::EdgeConfig {
            // Stale as soon as it is stored (a round trip takes longer):
            // every later read asks the catalogue first.
            catalogue_ttl: Duration::from_micros(1),
            ..Default::default()
        },
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts");
    let fresh = call(&system, ApiCall::get("/api/products")).await;
    assert_eq!(fresh.status.as_u16(), 200);
    assert_eq!(
        fresh.body.as_array().map(Vec::len),
        Some(5),
        "{}",
        fresh.body
    );

    for id in ["products-1", "products-2"] {
        system.stop_instance(id).await.unwrap();
    }
    let stale = call(&system, ApiCall::get("/api/products")).await;
    assert_eq!(stale.status.as_u16(), 200, "{}", stale.body);
    assert_eq!(stale.body, fresh.body, "the last catalogue, from the cache");
    assert_eq!(system.guards.catalogue_cache.metrics().stale_served, 1);

    // Nothing cached: the fallback's empty catalogue.
    system
        .guards
        .catalogue_cache
        .invalidate(&"/products".to_owned());
    let fallback = call(&system, ApiCall::get("/api/products")).await;
    assert_eq!(fallback.status.as_u16(), 200, "{}", fallback.body);
    assert_eq!(fallback.body, json!([]));
    let answered = system.guards.catalogue_fallback.metrics();
    assert_eq!(answered.answered_by_value, 1, "{answered:?}");
    // A product page has no fallback: 503 as JSON.
    let page = call(&system, ApiCall::get("/api/products/3")).await;
    assert_json_error(&page, 503, "a product never read, catalogue down");

    for id in ["products-1", "products-2"] {
        system.restart_instance(id).await.unwrap();
    }
    system.wait_healthy("products", 2).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = call(&system, ApiCall::get("/api/products")).await;
        if again.body == fresh.body {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted catalogue answers again: {}",
            again.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_catalogue_instance_is_hedged_around() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let slow = ApiCall::post("/admin/faults", json!({"latency_ms": 5_000}));
    assert_eq!(
        on_instance(&system, "products-1", slow)
            .await
            .status
            .as_u16(),
        200
    );
    for id in 1..=4 {
        let started = tokio::time::Instant::now();
        let reply = call(&system, ApiCall::get(format!("/api/products/{id}"))).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
        assert_eq!(reply.body["id"], id);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "product {id} took {:?}: the slow instance set the latency",
            started.elapsed()
        );
    }
    let hedge = system.guards.catalogue_hedge.metrics();
    assert!(hedge.hedge_wins >= 2, "{hedge:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_faults_are_the_chaos_layer_behind_the_admin_endpoint() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let charge = |key: &str| {
        ApiCall::post(
            "/charge",
            json!({"key": key, "order_id": key, "amount_cents": 100}),
        )
    };
    // A rate above 1 is refused, naming the field.
    let bad = on_instance(
        &system,
        "payments-1",
        ApiCall::post("/admin/faults", json!({"error_rate": 2.0})),
    )
    .await;
    assert_json_error(&bad, 400, "error_rate 2");
    assert!(
        bad.body["error"].as_str().unwrap().contains("error_rate"),
        "{}",
        bad.body
    );

    payments_faults(&system, "payments-1", json!({"down": true}))
        .await
        .unwrap();
    let down = on_instance(&system, "payments-1", charge("k-down")).await;
    assert_json_error(&down, 503, "a charge while down");
    assert_eq!(down.body["error"], "payments-1 is failing");
    let ledger = on_instance(&system, "payments-1", ApiCall::get("/ledger")).await;
    assert_eq!(ledger.body, json!([]), "the handler was not called");

    payments_faults(&system, "payments-1", json!({"latency_ms": 200}))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let late = on_instance(&system, "payments-1", charge("k-late")).await;
    assert_eq!(late.status.as_u16(), 200, "{}", late.body);
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Half the calls fail, the same ones in every run (seeded draws).
    let mut outcomes = Vec::new();
    for run in 0..2 {
        payments_faults(&system, "payments-2", json!({"error_rate": 0.5}))
            .await
            .unwrap();
        let mut failed = Vec::new();
        for n in 0..20 {
            let reply = on_instance(&system, "payments-2", charge(&format!("k-{run}-{n}"))).await;
            failed.push(reply.status.as_u16() == 503);
        }
        outcomes.push(failed);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    let failures = outcomes[0].iter().filter(|f| **f).count();
    assert!((1..20).contains(&failures), "{failures} of 20 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_service_answers_grpc_health_checks() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let address = system.instance("users-1").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_prometheus_metrics() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let token = signed_up(&system, "heidi@example.com").await;
    let placed = call(
        &system,
        ApiCall::post("/api/orders", sticker()).bearer(&token),
    )
    .await;
    assert_eq!(placed.status.as_u16(), 201, "{}", placed.body);
    for id in system.instances.keys() {
        let reply = on_instance(&system, id, ApiCall::get("/metrics")).await;
        assert_eq!(reply.status.as_u16(), 200, "{id}");
        let text = reply.body.as_str().expect("Prometheus text");
        for name in scenario::METRIC_NAMES {
            assert!(text.contains(name), "{id}'s /metrics lacks {name}");
        }
        for series in [
            r#"palisade_circuit_breaker_state{name="payments",state="closed"}"#,
            r#"palisade_bulkhead_calls_total{name="gateway-orders",outcome="permitted"}"#,
            r#"palisade_saga_finished_total{outcome="completed"}"#,
            "# TYPE palisade_retry_retries_total counter",
        ] {
            assert!(text.contains(series), "{id}'s /metrics lacks {series}");
        }
    }
}

/// Signs `email` up, places a sticker order carrying the W3C trace
/// `trace_id` (parent span `span_id`), checks it was confirmed and waits
/// until the outbox has delivered its events (asynchronously: the outbox
/// keeps the order's trace context with each event). The user's token
/// and the order's reply.
async fn place_traced_order(
    system: &System,
    email: &str,
    trace_id: &str,
    span_id: &str,
) -> (String, JsonReply) {
    let token = signed_up(system, email).await;
    let mut order = ApiCall::post("/api/orders", sticker()).bearer(&token);
    order.headers.push((
        http::HeaderName::from_static("traceparent"),
        format!("00-{trace_id}-{span_id}-01"),
    ));
    let placed = call(system, order).await;
    assert_eq!(placed.status.as_u16(), 201, "{}", placed.body);
    shop::invariants::wait_for_outbox(system)
        .await
        .expect("the outbox is delivered");
    (token, placed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_trace_id_reaches_every_service_it_touches() {
    let system = System::start(SystemConfig::default())
        .await
        .expect("the system starts");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let (token, placed) =
        place_traced_order(&system, "ivan@example.com", trace_id, "b7ad6b7169203331").await;
    let outbox = on_instance(&system, "orders-1", ApiCall::get("/outbox")).await;
    let events: Vec<&Value> = outbox
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["order_id"] == placed.body["id"])
        .collect();
    assert_eq!(events.len(), 2, "OrderCreated, OrderConfirmed: {events:?}");
    for event in events {
        assert!(
            event["traceparent"]
                .as_str()
                .is_some_and(|header| header.contains(trace_id)),
            "{event}"
        );
    }

    let saw = |ids: &[&str]| {
        ids.iter().any(|id| {
            system
                .guards
                .traces
                .of(id)
                .iter()
                .any(|seen| seen == trace_id)
        })
    };
    for hop in [
        &["gateway-1"][..],
        &["orders-1"],
        &["users-1"],
        &["products-1", "products-2"],
        &["payments-1", "payments-2"],
        &["inventory-1"],
        &["notifications-1"],
    ] {
        assert!(saw(hop), "{hop:?} did not see trace {trace_id}");
    }
    // The same, read from an instance's admin endpoint.
    let seen = on_instance(&system, "inventory-1", ApiCall::get("/admin/traces")).await;
    assert!(
        seen.body
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == trace_id),
        "{}",
        seen.body
    );

    // Without a traceparent the gateway starts a trace, and it goes on.
    let placed = call(
        &system,
        ApiCall::post("/api/orders", sticker()).bearer(&token),
    )
    .await;
    assert_eq!(placed.status.as_u16(), 201, "{}", placed.body);
    let started = system
        .guards
        .traces
        .of("gateway-1")
        .last()
        .cloned()
        .unwrap();
    assert_ne!(started, trace_id);
    assert!(system.guards.traces.of("orders-1").contains(&started));
}

#[test]
fn traceparent_is_parsed_and_formatted_as_w3c_says() {
    use shop::edge::TraceParent;
    let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let parsed = TraceParent::parse(header).expect("a valid traceparent");
    assert_eq!(parsed.to_string(), header);
    assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(parsed.flags, 1);
    let child = parsed.child();
    assert_eq!(child.trace_id, parsed.trace_id);
    assert_ne!(child.parent_id, parsed.parent_id);
    assert_eq!(child.to_string().len(), 55);
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ] {
        assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
    }
    // A later version is read by its version-00 prefix.
    assert!(
        TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some()
    );
    let root = TraceParent::new_root();
    assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
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

/// The story's narration is the same from run to run, apart from the
/// measured latencies: two stories, each on a system of its own, side by
/// side, tell the same lines once the p50/p99 figures are masked (no
/// random ids, no counts of polling calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_tells_the_same_lines_every_run() {
    async fn story() -> Vec<String> {
        let system = System::start(SystemConfig::default())
            .await
            .expect("the system starts");
        let mut narrator = Narrator::keeping();
        let broken = scenario::run(&system, &mut narrator)
            .await
            .expect("the story runs");
        assert!(broken.is_empty(), "invariants broken: {broken:#?}");
        narrator
            .lines()
            .iter()
            .map(|line| match line.split_once("p50 / p99") {
                // The latencies vary (and with them the padding); the
                // count of calls does not.
                Some((name, figures)) => format!(
                    "{name}p50 / p99 | <masked> ({}",
                    figures
                        .split_once('(')
                        .map_or("", |(_, calls)| calls.trim_end_matches([' ', '|']))
                ),
                None => line.clone(),
            })
            .collect()
    }
    let (first, second) = tokio::join!(story(), story());
    assert!(first.len() > 30, "{first:#?}");
    assert!(first.iter().any(|line| line.contains("<masked> (")));
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a, b);
    }
    assert_eq!(first.len(), second.len());
}

/// Through RabbitMQ too, an order's events carry its trace context (an
/// AMQP `traceparent` header): notifications handles them in that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq: scripts/integration-rabbitmq.sh"]
async fn rabbitmq_order_events_carry_the_orders_trace() {
    let system = System::start(SystemConfig {
        broker: Some(amqp()),
        ..SystemConfig::default()
    })
    .await
    .expect("the system starts with the broker");
    let trace_id = "5d2f0c1e9b8a47d6a3c2b1f0e9d8c7b6";
    place_traced_order(&system, "judy@example.com", trace_id, "a1b2c3d4e5f60718").await;
    let emails = on_instance(&system, "notifications-1", ApiCall::get("/emails")).await;
    assert!(
        emails
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|email| email["transport"] == "amqp"),
        "{}",
        emails.body
    );
    assert!(
        system
            .guards
            .traces
            .of("notifications-1")
            .contains(&trace_id.to_owned()),
        "notifications did not handle an event in trace {trace_id}"
    );
}
