//! Every ```rust block of README.md is compiled here, verbatim.
//!
//! The README's examples are fragments (they use a `payments_client` you
//! would have), so they cannot be doctests as they stand. Instead each block
//! is pasted into a function below, with the setup it needs around it, and
//! the first test checks that every block of the README appears, line for
//! line, in this file: change the API and this file stops compiling; change
//! the README without updating this file and the test fails.

#![allow(unused_variables, unused_imports, unused_mut, dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade::BoxError;

const README: &str = include_str!("../README.md");
const THIS_FILE: &str = include_str!("readme.rs");

/// The ```rust blocks of a markdown text, with the line each starts on.
fn rust_blocks(markdown: &str) -> Vec<(usize, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (number, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match current.take() {
            None if trimmed == "```rust" => current = Some((number + 1, Vec::new())),
            None => {}
            Some(block) if trimmed.starts_with("```") => blocks.push(block),
            Some((start, mut lines)) => {
                lines.push(line);
                current = Some((start, lines));
            }
        }
    }
    blocks
}

/// Whether `needle` occurs in `haystack` as consecutive lines, comparing
/// lines without their leading and trailing white space.
fn contains_lines(haystack: &[&str], needle: &[&str]) -> bool {
    let needle: Vec<&str> = needle.iter().map(|l| l.trim()).collect();
    haystack
        .windows(needle.len().max(1))
        .any(|window| window.iter().map(|l| l.trim()).eq(needle.iter().copied()))
}

#[test]
fn every_rust_block_of_the_readme_is_compiled_by_this_file() {
    let this_file: Vec<&str> = THIS_FILE.lines().collect();
    let blocks = rust_blocks(README);
    assert!(!blocks.is_empty(), "README.md has no ```rust block");
    let missing: Vec<usize> = blocks
        .iter()
        .filter(|(_, lines)| !contains_lines(&this_file, lines))
        .map(|(start, _)| *start)
        .collect();
    assert!(
        missing.is_empty(),
        "the ```rust blocks of README.md starting on lines {missing:?} are not in \
         tests/readme.rs: paste each one, unchanged, into a function there"
    );
}

// ---------------------------------------------------------------------------
// The README's blocks, each in the setting it needs. What surrounds a block
// is the reader's own code (their clients and requests); each block is
// copied from README.md unchanged.
// ---------------------------------------------------------------------------

/// A client of one dependency that answers at once with its request.
#[derive(Clone, Copy)]
struct EchoClient;

impl tower::Service<u64> for EchoClient {
    type Response = u64;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u64, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        std::future::ready(Ok(request))
    }
}

fn echo_client() -> EchoClient {
    EchoClient
}

/// "A circuit breaker around a service".
#[tokio::test]
#[rustfmt::skip]
async fn readme_circuit_breaker() -> Result<(), BoxError> {
    let payments_client = echo_client();
    let charge = 1_200_u64;

    use std::time::Duration;
    use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
    use tower::{Service, ServiceBuilder, ServiceExt};

    let config = CircuitBreakerConfig::builder()
        .sliding_window(SlidingWindow::count(20))      // judge by the last 20 calls
        .minimum_number_of_calls(10)                   // ... once there are 10
        .failure_rate_threshold(50.0)                  // trip at 50 % failures
        .wait_duration_in_open_state(Duration::from_secs(30))
        .build()?;                                     // invalid values: a ConfigError naming the field
    let breaker = CircuitBreaker::new("payments", config);
    let mut payments = ServiceBuilder::new().layer(breaker.layer()).service(payments_client);

    match payments.ready().await?.call(charge).await {
        Err(e) if e.is::<BreakerOpen>() => { /* rejected at once, payments was not called */ }
        other => { /* the service's own response or error */ }
    }
    Ok(())
}

/// "Retry and circuit breaker together".
#[tokio::test]
#[rustfmt::skip]
async fn readme_retry_and_breaker() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let inventory_client = echo_client();

    use std::time::Duration;
    use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
    use palisade::classify::{ClassifyExt, DefaultClassifier};
    use palisade::backoff::{Backoff, Jitter};
    use palisade::retry::{Retry, RetryConfig};

    let breaker = CircuitBreaker::new("inventory", CircuitBreakerConfig::default());
    let retry = Retry::new(
        "inventory",
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(Backoff::exponential(Duration::from_millis(100), 2.0)
                .max_interval(Duration::from_secs(2))
                .jitter(Jitter::Full)
                .build()?)
            .attempt_timeout(Duration::from_secs(1))
            .build()?,                                  // a shared retry budget is on by default
    )
    .layer()
    // A breaker's rejection is returned as is, not retried.
    .with_classifier(DefaultClassifier.pass_rejections());

    let inventory = tower::ServiceBuilder::new()
        .layer(retry)
        .layer(breaker.layer())
        .service(inventory_client);

    let mut inventory = inventory;
    assert_eq!(inventory.ready().await?.call(3).await?, 3);
    Ok(())
}

/// "A bulkhead per dependency".
#[tokio::test]
#[rustfmt::skip]
async fn readme_bulkhead() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let payments_client = echo_client();

    use std::time::Duration;
    use palisade::bulkhead::{BulkheadConfig, BulkheadRegistry};

    let pools = BulkheadRegistry::new(BulkheadConfig::default());
    let payments = pools.bulkhead_with("payments", || {
        BulkheadConfig::builder()
            .max_concurrent_calls(5)                       // at most 5 calls at once
            .max_wait_duration(Duration::from_millis(50))  // others wait, FIFO, this long
            .max_waiting(20)                               // ... at most 20 of them
            .build()
            .expect("valid")
    });
    let client = tower::ServiceBuilder::new().layer(payments.layer()).service(payments_client);
    payments.resize(8)?;                                   // at run time, without dropping calls

    let mut client = client;
    assert_eq!(client.ready().await?.call(5).await?, 5);
    Ok(())
}

/// "More strategies": fallback.
#[tokio::test]
#[rustfmt::skip]
async fn readme_fallback() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let breaker = palisade::circuit_breaker::CircuitBreaker::with_defaults("quotes");
    let quotes_client = tower::service_fn(|symbol: String| async move {
        Ok::<_, std::io::Error>(format!("{symbol} 101.5"))
    });

    use palisade::fallback::{Fallback, FallbackConfig};

    let quotes = Fallback::new(
        "quotes",
        FallbackConfig::builder()
            .last_good()          // the last good quote for the same symbol
            .on_rejection(true)   // ... also when the breaker inside is open
            .build()?,
    );
    let client = tower::ServiceBuilder::new()
        .layer(quotes.layer_keyed(|symbol: &String| symbol.clone()))
        .layer(breaker.layer())
        .service(quotes_client);

    let mut client = client;
    assert_eq!(client.ready().await?.call("ACME".to_string()).await?, "ACME 101.5");
    breaker.transition_to_forced_open();
    assert_eq!(client.ready().await?.call("ACME".to_string()).await?, "ACME 101.5");
    assert_eq!(quotes.metrics().answered_by_last_good, 1);
    Ok(())
}

/// "More strategies": response cache.
#[cfg(feature = "cache")]
#[tokio::test]
#[rustfmt::skip]
async fn readme_cache() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let prices_client = echo_client();

    use std::time::Duration;
    use palisade::cache::{CacheConfig, ResponseCache};

    let prices = ResponseCache::new(
        "prices",
        CacheConfig::builder()
            .ttl(Duration::from_secs(30))             // fresh for 30 s
            .max_entries(10_000)
            .max_staleness(Duration::from_secs(600))  // then kept 10 min to answer failures
            .build()?,
    );
    let client = tower::ServiceBuilder::new()
        .layer(prices.layer(|sku: &u64| *sku))
        .service(prices_client);

    let mut client = client;
    assert_eq!(client.ready().await?.call(5).await?, 5);
    assert_eq!(client.ready().await?.call(5).await?, 5);
    assert_eq!(prices.metrics().hits, 1);
    Ok(())
}

/// "More strategies": coalescing.
#[tokio::test]
#[rustfmt::skip]
async fn readme_coalesce() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let profiles_client = echo_client();

    use palisade::coalesce::Coalesce;

    let profiles = Coalesce::with_defaults("profiles");
    let client = tower::ServiceBuilder::new()
        .layer(profiles.layer(|user_id: &u64| *user_id))  // one call per user id at a time
        .service(profiles_client);

    let mut client = client;
    assert_eq!(client.ready().await?.call(5).await?, 5);
    Ok(())
}

/// "More strategies": "Hedging slow calls".
#[tokio::test]
#[rustfmt::skip]
async fn readme_hedge() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let catalog_client = echo_client();

    use std::time::Duration;
    use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};

    let hedge = Hedge::new(
        "catalog",
        HedgeConfig::builder()
            .delay(HedgeDelay::percentile(0.95))  // copy calls slower than 95 % of the last 10 s
            .max_hedged_attempts(2)                // at most two copies, a delay apart
            .build()?,                             // copies draw from a retry budget by default
    );
    let catalog = tower::ServiceBuilder::new().layer(hedge.layer()).service(catalog_client);

    let mut catalog = catalog;
    assert_eq!(catalog.ready().await?.call(4).await?, 4);
    Ok(())
}

/// "More strategies": "Adaptive concurrency limit".
#[tokio::test]
#[rustfmt::skip]
async fn readme_adaptive_concurrency() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let search_client = echo_client();

    use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig, Vegas};

    let limit = AdaptiveConcurrency::new(
        "search",
        AdaptiveConcurrencyConfig::builder()
            .algorithm(Vegas::default())   // or Aimd::new(latency_threshold)
            .min_limit(4)
            .max_limit(200)
            .build()?,
    );
    let search = tower::ServiceBuilder::new().layer(limit.layer()).service(search_client);
    let now = limit.metrics().limit;       // moves with the measured latency

    let mut search = search;
    assert_eq!(search.ready().await?.call(2).await?, 2);
    assert_eq!(now, 20);
    Ok(())
}

/// "More strategies": "Fault injection (feature `chaos`)".
#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
#[rustfmt::skip]
async fn readme_chaos() -> Result<(), BoxError> {
    use tower::{Service as _, ServiceExt as _};
    let inventory_client = echo_client();

    use std::time::Duration;
    use palisade::chaos::{Chaos, ChaosConfig};

    let chaos = Chaos::new(
        "inventory",
        ChaosConfig::builder()
            .error_rate(0.05)                            // 5 % fail with ChaosFault
            .latency(0.10, Duration::from_millis(300))   // 10 % answer 300 ms later
            .seed(42)                                    // the same faults in every run
            .enabled(false)                              // off until switched on
            .build()?,
    );
    let inventory = tower::ServiceBuilder::new().layer(chaos.layer()).service(inventory_client);
    chaos.enable();                                      // at run time, from a test or an admin knob

    let mut inventory = inventory;
    for id in 0..20 {
        let _ = inventory.ready().await?.call(id).await;
    }
    assert_eq!(chaos.metrics().calls_while_enabled, 20);
    Ok(())
}

/// "Every stage, in the right order: `Pipeline`".
#[tokio::test]
#[rustfmt::skip]
async fn readme_pipeline() -> Result<(), BoxError> {
    use palisade::bulkhead::{Bulkhead, BulkheadConfig};
    use palisade::circuit_breaker::CircuitBreaker;
    use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
    use palisade::retry::{Retry, RetryConfig};
    use tower::{Service, ServiceExt};

    let retry = Retry::new("payments", RetryConfig::builder().build()?);
    let breaker = CircuitBreaker::with_defaults("payments");
    let limiter = RateLimiter::new("payments", RateLimiterConfig::builder().build()?);
    let bulkhead = Bulkhead::new("payments", BulkheadConfig::builder().build()?);
    let payments_client = echo_client();
    let charge = 1_200_u64;

    use std::time::Duration;
    use palisade::pipeline::{Pipeline, PipelineError, Stage};

    let pipeline = Pipeline::builder("payments")
        .retry(retry)                          // outermost: each retry re-enters every stage below
        .circuit_breaker(breaker)              // counts timeouts, not the bulkhead's or limiter's rejections
        .rate_limiter(limiter)                 // governor's GCRA, driven by tokio's clock
        .timeout(Duration::from_secs(2))       // tower's own Timeout
        .bulkhead(bulkhead)                    // innermost: a permit only while the call runs
        .build()?;
    let mut payments = tower::ServiceBuilder::new().layer(pipeline).service(payments_client);

    match payments.ready().await?.call(charge).await {
        Ok(receipt) => { /* ... */ }
        Err(PipelineError::Rejected(r)) if r.stage() == Stage::CircuitBreaker => { /* fail fast */ }
        Err(PipelineError::Rejected(r)) => { /* shed load: r.stage(), r.rejected().name() */ }
        Err(PipelineError::TimedOut(t)) => { /* t.stage(), t.after() */ }
        Err(error) => { /* PipelineError::Service: the service's own error */ }
    }
    Ok(())
}

/// "Wrapping a reqwest client", against a local server that answers 200.
#[cfg(feature = "reqwest")]
#[tokio::test]
#[rustfmt::skip]
async fn readme_reqwest() -> Result<(), BoxError> {
    use std::time::Duration;
    use palisade::circuit_breaker::CircuitBreaker;
    use palisade::pipeline::Pipeline;
    use palisade::retry::{Retry, RetryConfig};
    use tower::{Service, ServiceExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url: reqwest::Url = format!("http://{}/orders", listener.local_addr()?).parse()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, answer));
        }
    });

    let pipeline = Pipeline::builder("orders")
        .retry(Retry::new("orders", RetryConfig::default()))      // honours Retry-After
        .circuit_breaker(CircuitBreaker::with_defaults("orders")) // 5xx and 429 are failures
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut orders = palisade::reqwest::client(reqwest::Client::new(), pipeline);

    let mut order = reqwest::Request::new(reqwest::Method::POST, url);
    *order.body_mut() = Some("sku=17&quantity=2".into());
    palisade::reqwest::mark_idempotent(&mut order); // an Idempotency-Key: this POST may be retried
    let response = orders.ready().await?.call(order).await?;

    assert_eq!(response.status(), 200);
    Ok(())
}

/// The client of one base URL that the discovery example balances.
#[derive(Clone)]
struct HttpClient {
    base: String,
}

impl HttpClient {
    fn new(base: String) -> Self {
        Self { base }
    }
}

impl tower::Service<http::Request<String>> for HttpClient {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<String>) -> Self::Future {
        Box::pin(async { Ok(http::Response::new(String::new())) })
    }
}

/// "Service discovery and client-side load balancing". Compiled, not run:
/// its addresses are an example network's.
#[rustfmt::skip]
async fn readme_discovery(request: http::Request<String>) -> Result<(), BoxError> {
    use std::time::Duration;
    use palisade::classify::HttpStatusClassifier;
    use palisade::discovery::{
        make_fn, Balance, BalanceConfig, HealthCheck, HttpCheck, InMemoryRegistry, Instance,
        OutlierDetection, Picker, Registrar, Registration,
    };
    use tower::{Service, ServiceExt};

    // In the inventory service: register, checked by `GET /health` every 5 s.
    let registry = InMemoryRegistry::new();
    let _registration = registry
        .register(Registration::new(
            Instance::builder("inventory", "inventory-1", "10.0.0.7:8080").tag("v2").build()?,
            HealthCheck::Http(
                HttpCheck::builder()
                    .interval(Duration::from_secs(5))
                    .timeout(Duration::from_secs(1))
                    .deregister_critical_after(Duration::from_secs(60))
                    .build()?,
            ),
        ))
        .await?; // dropping `_registration` deregisters

    // In a client: one HttpClient per healthy instance, P2C peak-EWMA, ejection.
    let make = make_fn(|instance: &Instance| {
        Ok::<_, palisade::BoxError>(HttpClient::new(format!("http://{}", instance.address())))
    });
    let config = BalanceConfig::builder()
        .picker(Picker::peak_ewma())
        .outlier_detection(OutlierDetection::builder().consecutive_failures(5).build()?)
        .build()?;
    let mut inventory = Balance::new("inventory", &registry, make, config)?
        .with_classifier(HttpStatusClassifier::new()); // 5xx responses count as failures
    let response = inventory.ready().await?.call(request).await?;
    Ok(())
}

/// "Discovery backends: Consul, etcd, DNS". Compiled, not run: it needs the
/// servers.
#[cfg(all(feature = "consul", feature = "etcd", feature = "dns"))]
#[rustfmt::skip]
async fn readme_discovery_backends() -> Result<(), BoxError> {
    use std::time::Duration;
    use palisade::discovery::{
        ConsulRegistry, DnsQuery, DnsRegistry, EtcdRegistry, HealthCheck, HttpCheck, Instance,
        Registrar, Registration, Registry,
    };

    // Consul: the local agent runs the HTTP check; the guard deregisters.
    let consul = ConsulRegistry::builder()
        .address("http://127.0.0.1:8500")
        .token(std::env::var("CONSUL_HTTP_TOKEN")?)
        .build()?;
    let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080").tag("v2").build()?;
    let check = HttpCheck::builder()
        .path("/health")
        .interval(Duration::from_secs(5))
        .timeout(Duration::from_secs(1))
        .deregister_critical_after(Duration::from_secs(60))
        .build()?;
    let _registered = consul.register(Registration::new(me, HealthCheck::Http(check))).await?;

    // etcd: the instance vanishes within 5 s of this process dying.
    let etcd = EtcdRegistry::builder().endpoint("http://127.0.0.1:2379").connect().await?;
    let me = Instance::builder("orders", "orders-1", "10.0.0.8:8080").build()?;
    let _lease = etcd
        .register(Registration::new(me, HealthCheck::ttl(Duration::from_secs(5))?))
        .await?;

    // DNS: a Kubernetes headless service, via SRV records.
    let dns = DnsRegistry::builder()
        .service("users", DnsQuery::srv("_http._tcp.users.default.svc.cluster.local"))
        .build()?;

    // Any of them feeds the balancer / `Discover` adapter the same way.
    let users = dns.watch("users");
    Ok(())
}

/// "A saga that survives crashes": the README's whole program, with the
/// reader's service clients (here: ones that always succeed).
#[rustfmt::skip]
mod saga_example {
    use std::io;

    /// The orders service's client.
    pub struct Orders;
    impl Orders {
        pub async fn create(&self, _key: &str, _user: u64, _items: &[String]) -> Result<u64, io::Error> {
            Ok(41)
        }
        pub async fn cancel(&self, _key: &str) -> Result<(), io::Error> {
            Ok(())
        }
        pub async fn confirm(&self, _order: u64) -> Result<(), io::Error> {
            Ok(())
        }
    }

    /// The payments service's client.
    pub struct Payments;
    impl Payments {
        pub async fn charge(&self, _key: &str, _order: u64, _cents: u64) -> Result<u64, PaymentError> {
            Ok(7)
        }
        pub async fn refund(&self, _key: &str) -> Result<(), io::Error> {
            Ok(())
        }
    }

    /// Why a charge failed.
    #[derive(Debug)]
    pub enum PaymentError {
        Declined,
        Unavailable,
    }
    impl std::fmt::Display for PaymentError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }
    impl std::error::Error for PaymentError {}

    /// The inventory service's client.
    pub struct Inventory;
    impl Inventory {
        pub async fn reserve(&self, _key: &str, _order: u64, _items: &[String]) -> Result<(), io::Error> {
            Ok(())
        }
        pub async fn release(&self, _key: &str) -> Result<(), io::Error> {
            Ok(())
        }
    }

    use std::sync::Arc;

    use palisade::backoff::Backoff;
    use palisade::saga::{
        SagaDefinition, SagaExecutor, SagaOutcome, SqliteLog, Step, StepContext, StepError,
    };
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct PlaceOrder {
        user_id: u64,
        items: Vec<String>,
        total_cents: u64,
    }

    /// The clients of the order, payment and inventory services (yours).
    struct Services {
        orders: Orders,
        payments: Payments,
        inventory: Inventory,
    }

    #[tokio::main]
    async fn main() -> Result<(), palisade::BoxError> {
        let order_saga = SagaDefinition::<Services>::builder("create-order", 1)
            // 1. Create the order (pending); compensation: cancel it.
            .step(Step::new(
                "create-order",
                |svc: Arc<Services>, cx: StepContext| async move {
                    let input: PlaceOrder = cx.input()?;
                    svc.orders
                        .create(&cx.idempotency_key(), input.user_id, &input.items)
                        .await
                        .map_err(StepError::unknown)
                },
                |svc, cx| async move {
                    // Also runs if the outcome was unknown: cancel by key.
                    svc.orders.cancel(&cx.idempotency_key()).await
                },
            ))
            // 2. Take the payment, retried with backoff; compensation: refund.
            .step(
                Step::new(
                    "payment",
                    |svc: Arc<Services>, cx: StepContext| async move {
                        let input: PlaceOrder = cx.input()?;
                        let order_id: u64 = cx.output("create-order")?;
                        svc.payments
                            .charge(&cx.idempotency_key(), order_id, input.total_cents)
                            .await
                            .map_err(|e| match e {
                                PaymentError::Declined => StepError::no_effect(e),
                                PaymentError::Unavailable => StepError::unknown(e),
                            })
                    },
                    |svc, cx| async move { svc.payments.refund(&cx.idempotency_key()).await },
                )
                .retry(Backoff::exponential(std::time::Duration::from_millis(100), 2.0).build()?, 3)
                .timeout(std::time::Duration::from_secs(5)),
            )
            // 3. Reserve the stock; compensation: release it.
            .step(Step::new(
                "reserve-inventory",
                |svc: Arc<Services>, cx: StepContext| async move {
                    let input: PlaceOrder = cx.input()?;
                    let order_id: u64 = cx.output("create-order")?;
                    svc.inventory
                        .reserve(&cx.idempotency_key(), order_id, &input.items)
                        .await
                        .map_err(StepError::no_effect) // "out of stock" changed nothing
                },
                |svc, cx| async move { svc.inventory.release(&cx.idempotency_key()).await },
            ))
            // 4. Confirm: the pivot. Once confirmed, the saga only goes forward.
            .pivot(Step::without_compensation(
                "confirm",
                |svc: Arc<Services>, cx: StepContext| async move {
                    let order_id: u64 = cx.output("create-order")?;
                    svc.orders.confirm(order_id).await.map_err(StepError::unknown)
                },
            ))
            .build()?;

        let services = Services { orders: Orders, payments: Payments, inventory: Inventory };
        let executor = SagaExecutor::builder(services, SqliteLog::open("sagas.db")?)
            .owner("orders-1")
            .build()?;
        executor.register(&order_saga);
        // Finish what the last run of this process left unfinished.
        let recovery = executor.recover().await?;
        for (saga, error) in &recovery.failed {
            eprintln!("saga {saga} needs attention: {error}");
        }

        let order = PlaceOrder { user_id: 7, items: vec!["book".into()], total_cents: 1_200 };
        let handle = executor.start(&order_saga, &order).await?;
        match handle.outcome().await? {
            SagaOutcome::Completed(output) => println!("order {} placed", output.get::<u64>("create-order")?),
            SagaOutcome::Compensated(failure) => println!("order rolled back: {} failed: {}", failure.step, failure.error),
            SagaOutcome::Stuck(failure) => eprintln!("needs an operator: undo of {} failed: {}", failure.step, failure.error),
            _ => {}
        }
        std::fs::remove_file("sagas.db").ok();
        Ok(())
    }

    #[test]
    fn readme_saga_program_runs_to_completion() {
        // The program writes `sagas.db` in the working directory and
        // removes it.
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::env::set_current_dir(dir.path()).expect("cd into it");
        main().expect("the README's saga program succeeds");
    }

    /// "Several executors sharing PostgreSQL". Compiled, not run: it needs
    /// the server.
    #[cfg(feature = "postgres")]
    async fn readme_postgres(
        services: Services,
        order_saga: palisade::saga::SagaDefinition<Services>,
    ) -> Result<(), palisade::BoxError> {
        use std::time::Duration;

        use palisade::saga::SagaExecutor;
        use palisade::saga::log::{PostgresLog, PostgresLogConfig};

        let config = PostgresLogConfig::builder("postgres://orders@db.internal:5432/orders")
            .schema("sagas")          // tables live here; created on first connect
            .max_connections(16)      // one connection per operation in flight
            .build()?;                // a bad URL or setting is a ConfigError naming the field
        let log = PostgresLog::connect(config).await?; // refuses a schema of another layout version

        let executor = SagaExecutor::builder(services, log)
            .owner(format!("orders-{}", std::process::id())) // unique per running process
            .lease_ttl(Duration::from_secs(10))
            .takeover_interval(Duration::from_secs(5))       // adopt sagas of executors that died
            .build()?;
        executor.register(&order_saga);
        executor.recover().await?;
        Ok(())
    }
}

/// "Metrics".
#[cfg(feature = "metrics")]
#[test]
#[rustfmt::skip]
fn readme_metrics() -> Result<(), BoxError> {
    use palisade::circuit_breaker::CircuitBreaker;

    // Install the exporter before creating the layers: they take their handles then.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    palisade::metrics::describe(); // optional: # HELP lines
    let breaker = CircuitBreaker::with_defaults("payments");
    // Serve prometheus.render() on /metrics:
    // palisade_circuit_breaker_state{name="payments",state="closed"} 1

    assert!(prometheus
        .render()
        .contains(r#"palisade_circuit_breaker_state{name="payments",state="closed"} 1"#));
    Ok(())
}

/// "Wrapping a tonic client". Compiled, not run: its address is an example
/// network's (tests/tonic.rs runs the same against local servers).
#[cfg(feature = "tonic")]
#[rustfmt::skip]
async fn readme_tonic() -> Result<(), BoxError> {
    let retry = palisade::retry::Retry::new("health", palisade::retry::RetryConfig::default());
    let breaker = palisade::circuit_breaker::CircuitBreaker::with_defaults("health");

    use std::time::Duration;
    use palisade::classify::GrpcStatusClassifier;
    use palisade::pipeline::Pipeline;
    use palisade::tonic::GrpcRetryPolicy;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let channel = tonic::transport::Endpoint::from_static("http://10.0.0.9:50051").connect_lazy();
    let pipeline = Pipeline::builder("health")
        .retry(GrpcRetryPolicy::new().layer(retry)) // gRFC A6: UNAVAILABLE, pushback
        .circuit_breaker(breaker.layer().with_classifier(GrpcStatusClassifier::new()))
        .timeout(Duration::from_secs(1))
        .build()?;
    let mut health = HealthClient::new(palisade::tonic::channel(channel, pipeline));
    let reply = health.check(HealthCheckRequest::default()).await?; // errors are tonic::Status
    Ok(())
}
