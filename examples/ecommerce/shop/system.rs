//! Starts the whole system in this process: every service a real server
//! on its own 127.0.0.1 port with its own SQLite file, registered in the
//! embedded registry with an HTTP health check; the callers' clients are
//! palisade's layers over balancers that find the instances through it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade::BoxError;
use palisade::backoff::Backoff;
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerEventKind, SlidingWindow,
};
use palisade::discovery::{Balance, BalanceEventKind, RegistrationGuard, Registry};
use palisade::events::RecvError;
use palisade::pipeline::Pipeline;
use palisade::rate_limit::{RateLimiter, RateLimiterConfig};
use palisade::retry::{Retry, RetryConfig, RetryEventKind};
use parking_lot::Mutex;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::broker::{self, BrokerConfig, Publisher};
use super::edge::{self, EdgeConfig, Guards, StoppableServer};
use super::gateway::{Gateway, GatewayClients};
use super::http_json::{InstanceClient, JsonClient};
use super::inventory::Inventory;
use super::notifications::Notifications;
use super::order_saga::PipelinedClient;
use super::orders::{Orders, OrdersClients};
use super::payments::PaymentsInstance;
use super::products::Products;
use super::registry::{
    SharedRegistry, balanced_json, open as open_registry, register_instance, wait_healthy,
};
use super::users::{UsersService, users_grpc};

/// The catalogue: id, name, price in cents. The piano costs more than
/// any card allows: its orders are declined.
pub const CATALOGUE: &[(i64, &str, i64)] = &[
    (1, "The Rust Programming Language (book)", 3_999),
    (2, "Mechanical keyboard", 8_999),
    (3, "Desk lamp", 2_499),
    (4, "Grand piano", 1_250_000),
    (5, "Ferris sticker", 199),
];

/// The stock at start: product id, units.
pub const INITIAL_STOCK: &[(i64, i64)] = &[(1, 10), (2, 5), (3, 3), (4, 2), (5, 100)];

/// How the system is started.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Seeds the balancers' pickers and the payments' random faults.
    pub seed: u64,
    /// The gateway's port (0: any free port).
    pub gateway_port: u16,
    /// Requests per second the gateway lets through to the orders service.
    pub orders_per_second: u32,
    /// The gateway's per-user limit, bulkhead, cache and hedging.
    pub edge: EdgeConfig,
    /// The RabbitMQ broker (`amqp://...`) that carries the order events
    /// from the orders service's outbox to notifications; `None`: the
    /// outbox relay delivers them over HTTP.
    pub broker: Option<String>,
    /// The etcd (`etcd://host:port`, feature `etcd`) the services register
    /// in; `None`: the embedded registry.
    pub registry: Option<String>,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            seed: 7,
            gateway_port: 0,
            orders_per_second: 200,
            edge: EdgeConfig::default(),
            broker: None,
            registry: None,
        }
    }
}

/// What the system's parts report, collected as it runs (printed by the
/// scenario at its checkpoints, so that the narration's order does not
/// depend on when events arrive).
#[derive(Debug, Default)]
pub struct Observed {
    /// The payments breaker's transitions, `FROM -> TO`.
    pub breaker_transitions: Vec<String>,
    /// Calls the payments breaker refused.
    pub breaker_rejections: u64,
    /// The delays before each retry of a payments call.
    pub payment_retry_delays: Vec<Duration>,
    /// The delays before each retry of a notification delivery.
    pub relay_retry_delays: Vec<Duration>,
    /// The payments instances ejected by outlier detection.
    pub ejections: Vec<String>,
    /// The audit of the payments breaker (see [`BreakerAudit`]).
    pub payments_audit: BreakerAudit,
}

/// What shows that no call reached payments past its open breaker,
/// counted on both sides of it: every charge or refund a payments
/// instance received must have been sent by a call the breaker permitted,
/// so `received <= permitted_outcomes + cancelled + events_lost` (a
/// permitted call reports exactly one outcome, unless it is cancelled; a
/// call the breaker rejects reports `Rejected` and is never sent).
#[derive(Debug, Default, Clone, Copy)]
pub struct BreakerAudit {
    /// `/charge` and `/refund` requests the payments instances received.
    pub received: u64,
    /// Calls sent below the breaker (to the balancer over the instances).
    pub sent: u64,
    /// Of those, calls whose future was dropped before it finished: by
    /// the timeout (the breaker records a failure: counted twice, which
    /// only loosens the check) or by a crashed executor (no outcome).
    pub cancelled: u64,
    /// Outcomes of permitted calls the breaker reported (success,
    /// failure, ignored).
    pub permitted_outcomes: u64,
    /// Calls the breaker rejected.
    pub rejected: u64,
    /// Breaker events the audit missed (its subscriber lagged).
    pub events_lost: u64,
}

/// The running system. Dropping it stops every server.
pub struct System {
    /// The gateway's address: the only one clients need.
    pub gateway: SocketAddr,
    /// Every instance's address, by instance id.
    pub instances: BTreeMap<String, SocketAddr>,
    /// The orders service's breaker in front of payments.
    pub payments_breaker: CircuitBreaker,
    /// The orders service's retry of payments calls.
    pub payments_retry: Retry,
    /// The orders service's balancer over the payments instances.
    pub payments_balance: Balance<InstanceClient>,
    /// The outbox relay's retry.
    pub relay_retry: Retry,
    /// What the parts reported.
    pub observed: Arc<Mutex<Observed>>,
    /// A plain client, for the scenario and the admin endpoints.
    pub client: JsonClient,
    /// The gateway's guards and the instances' traces.
    pub guards: Guards,
    /// Every instance's server, by instance id (see `stop_instance`).
    stoppable: BTreeMap<String, StoppableServer>,
    /// The broker carrying the order events, if any.
    pub broker: Option<BrokerConfig>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    _registrations: Vec<RegistrationGuard>,
    _registry: SharedRegistry,
    _dir: tempfile::TempDir,
}

impl Drop for System {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

fn pipelined(
    service: impl tower::Service<
        super::http_json::ApiCall,
        Response = super::http_json::JsonReply,
        Error = palisade::pipeline::PipelineError,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
) -> PipelinedClient {
    BoxCloneSyncService::new(service)
}

fn breaker(name: &str) -> Result<CircuitBreaker, BoxError> {
    Ok(CircuitBreaker::new(
        name,
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(10))
            .minimum_number_of_calls(6)
            .failure_rate_threshold(60.0)
            .wait_duration_in_open_state(Duration::from_millis(500))
            .permitted_number_of_calls_in_half_open_state(2)
            .build()?,
    ))
}

fn retry(name: &str, attempts: u32, first_delay: Duration) -> Result<Retry, BoxError> {
    Ok(Retry::new(
        name,
        RetryConfig::builder()
            .max_attempts(attempts)
            .backoff(Backoff::exponential(first_delay, 2.0).build()?)
            .build()?,
    ))
}

impl System {
    /// Starts every service and waits until each is healthy in the registry.
    pub async fn start(config: SystemConfig) -> Result<Self, BoxError> {
        // The recorder first: each layer takes its metric handles when it
        // is made.
        edge::prometheus();
        let guards = Guards::new(config.edge)?;
        let dir = tempfile::tempdir()?;
        let registry = open_registry(config.registry.as_deref()).await?;
        let client = JsonClient::new(Duration::from_secs(60));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let mut servers = Vec::new();
        let mut stoppable = BTreeMap::new();
        let mut registrations = Vec::new();
        let mut instances = BTreeMap::new();
        let mut up = async |service: &str,
                            id: &str,
                            router: axum::Router,
                            port: u16|
               -> Result<SocketAddr, BoxError> {
            let router = edge::instrument(router, id, &guards.traces);
            let server = StoppableServer::start(router, port).await?;
            let address = server.address;
            stoppable.insert(id.to_owned(), server);
            registrations.push(register_instance(&*registry, service, id, address).await?);
            instances.insert(id.to_owned(), address);
            Ok(address)
        };

        // The services with no dependency.
        let users = UsersService::open(&dir.path().join("users.db"))?;
        up("users", "users-1", users.router(), 0).await?;
        // Two catalogue instances on one database, for hedging.
        for id in ["products-1", "products-2"] {
            let products = Products::open(&dir.path().join("products.db"), CATALOGUE)?;
            up("products", id, products.router(), 0).await?;
        }
        let inventory = Inventory::open(&dir.path().join("inventory.db"), INITIAL_STOCK)?;
        up("inventory", "inventory-1", inventory.router(), 0).await?;
        for (n, id) in ["payments-1", "payments-2"].into_iter().enumerate() {
            let instance = PaymentsInstance::open(
                id,
                &dir.path().join("payments.db"),
                config.seed + n as u64,
            )?;
            let router = count_received(instance.router(), &observed);
            up("payments", id, router, 0).await?;
        }
        let notifications = Notifications::open(&dir.path().join("notifications.db"))?;
        let broker = config.broker.as_deref().map(BrokerConfig::new);
        let consumer = match &broker {
            Some(broker) => Some(
                broker::consume(
                    broker.clone(),
                    Arc::clone(&notifications),
                    "notifications-1",
                    guards.traces.clone(),
                )
                .await?,
            ),
            None => None,
        };
        up(
            "notifications",
            "notifications-1",
            notifications.router(),
            0,
        )
        .await?;

        // The orders service's clients.
        let json = JsonClient::new(Duration::from_secs(30));
        let payments_balance = balanced_json(
            &registry,
            "payments",
            json.clone(),
            2,
            Duration::from_secs(3),
            config.seed,
        )?;
        let payments_breaker = breaker("payments")?;
        let payments_retry = retry("payments", 3, Duration::from_millis(20))?;
        let payments_bulkhead = Bulkhead::new(
            "payments",
            BulkheadConfig::builder().max_concurrent_calls(5).build()?,
        );
        let payments = Pipeline::builder("payments")
            .retry(payments_retry.clone())
            .circuit_breaker(payments_breaker.clone())
            .timeout(Duration::from_secs(1))
            .bulkhead(payments_bulkhead)
            .build()?;
        let inventory_client = Pipeline::builder("inventory")
            .circuit_breaker(breaker("inventory")?)
            .timeout(Duration::from_secs(1))
            .build()?;
        let products_client = Pipeline::builder("products")
            .retry(retry("products", 2, Duration::from_millis(20))?)
            .timeout(Duration::from_secs(1))
            .build()?;
        let relay_retry = retry("notifications", 4, Duration::from_millis(25))?;
        let notifications_client = Pipeline::builder("notifications")
            .retry(relay_retry.clone())
            .timeout(Duration::from_millis(500))
            .build()?;
        let users_pipeline = || {
            Ok::<_, BoxError>(
                Pipeline::builder("users")
                    .circuit_breaker(breaker("users")?)
                    .timeout(Duration::from_secs(2))
                    .build()?,
            )
        };
        let clients = OrdersClients {
            users: users_grpc(&registry, users_pipeline()?, config.seed)?,
            products: pipelined(ServiceBuilder::new().layer(products_client).service(
                balanced_json(
                    &registry,
                    "products",
                    json.clone(),
                    3,
                    Duration::from_secs(1),
                    config.seed,
                )?,
            )),
            payments: pipelined(
                ServiceBuilder::new()
                    .layer(payments)
                    .map_future(count_sent(Arc::clone(&observed)))
                    .service(payments_balance.clone()),
            ),
            inventory: pipelined(ServiceBuilder::new().layer(inventory_client).service(
                balanced_json(
                    &registry,
                    "inventory",
                    json.clone(),
                    3,
                    Duration::from_secs(1),
                    config.seed,
                )?,
            )),
            notifications: pipelined(ServiceBuilder::new().layer(notifications_client).service(
                balanced_json(
                    &registry,
                    "notifications",
                    json.clone(),
                    10,
                    Duration::from_secs(1),
                    config.seed,
                )?,
            )),
            broker: match &broker {
                Some(broker) => Some(Publisher::open(broker).await?),
                None => None,
            },
        };
        let orders = Orders::start(dir.path(), clients).await?;
        up("orders", "orders-1", orders.router(), 0).await?;

        // The gateway.
        let orders_limiter = RateLimiter::new(
            "gateway-orders",
            RateLimiterConfig::builder()
                .limit_for_period(config.orders_per_second)
                .limit_refresh_period(Duration::from_secs(1))
                .build()?,
        );
        let gateway_products = Pipeline::builder("gateway-products")
            .cache(
                guards
                    .catalogue_cache
                    .layer(|call: &super::http_json::ApiCall| call.path.clone()),
            )
            .hedge(guards.catalogue_hedge.layer())
            .retry(retry("gateway-products", 2, Duration::from_millis(20))?)
            .circuit_breaker(breaker("gateway-products")?)
            .timeout(Duration::from_secs(1))
            .build()?;
        let gateway_orders = Pipeline::builder("gateway-orders")
            .adaptive_concurrency(guards.orders_concurrency.layer())
            .rate_limiter(orders_limiter)
            .timeout(Duration::from_secs(30))
            .bulkhead(guards.orders_bulkhead.clone())
            .build()?;
        let product = edge_client(ServiceBuilder::new().layer(gateway_products).service(
            balanced_json(
                &registry,
                "products",
                json.clone(),
                3,
                Duration::from_secs(1),
                config.seed,
            )?,
        ));
        let orders_client = pipelined(ServiceBuilder::new().layer(gateway_orders).service(
            balanced_json(
                &registry,
                "orders",
                json.clone(),
                3,
                Duration::from_secs(1),
                config.seed,
            )?,
        ));
        let clients = GatewayClients {
            catalogue: edge_client(
                ServiceBuilder::new()
                    .layer(guards.catalogue_fallback.layer())
                    .service(product.clone()),
            ),
            product,
            // The per-user limit decides when an order arrives: the
            // bulkhead is waited for in the call, not in `poll_ready`
            // before the limit is asked.
            place_orders: edge_client(
                ServiceBuilder::new()
                    .layer(guards.orders_per_user.layer(edge::order_user))
                    .service(edge::ready_in_call(orders_client.clone())),
            ),
            orders: orders_client,
        };
        let secret: [u8; 32] = rand::random();
        let gateway = Gateway::new(
            &secret,
            users_grpc(&registry, users_pipeline()?, config.seed)?,
            clients,
        );
        let gateway = up(
            "gateway",
            "gateway-1",
            gateway.router(),
            config.gateway_port,
        )
        .await?;

        servers.extend(consumer);
        for (service, count) in [
            ("users", 1),
            ("products", 2),
            ("inventory", 1),
            ("payments", 2),
            ("notifications", 1),
            ("orders", 1),
            ("gateway", 1),
        ] {
            wait_healthy(&registry, service, count).await?;
        }

        let system = Self {
            gateway,
            instances,
            payments_breaker,
            payments_retry,
            payments_balance,
            relay_retry,
            observed,
            client,
            guards,
            stoppable,
            broker,
            servers,
            _registrations: registrations,
            _registry: registry,
            _dir: dir,
        };
        system.observe();
        Ok(system)
    }

    /// Collects the events the scenario reports.
    fn observe(&self) {
        // subscribe_all: the audit counts the outcome of every call the
        // breaker permitted, which subscribe() leaves out.
        let mut breaker = self.payments_breaker.subscribe_all();
        let observed = Arc::clone(&self.observed);
        tokio::spawn(async move {
            loop {
                let event = match breaker.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(lost)) => {
                        observed.lock().payments_audit.events_lost += lost;
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                match event.kind {
                    CircuitBreakerEventKind::StateTransition { from, to, .. } => {
                        observed
                            .lock()
                            .breaker_transitions
                            .push(format!("{from} -> {to}"));
                    }
                    CircuitBreakerEventKind::Rejected { .. } => {
                        let mut observed = observed.lock();
                        observed.breaker_rejections += 1;
                        observed.payments_audit.rejected += 1;
                    }
                    CircuitBreakerEventKind::Success { .. }
                    | CircuitBreakerEventKind::Failure { .. }
                    | CircuitBreakerEventKind::Ignored => {
                        observed.lock().payments_audit.permitted_outcomes += 1
                    }
                    _ => {}
                }
            }
        });
        for (retry, payments) in [
            (self.payments_retry.clone(), true),
            (self.relay_retry.clone(), false),
        ] {
            let mut events = retry.subscribe();
            let observed = Arc::clone(&self.observed);
            tokio::spawn(async move {
                while let Ok(event) = events.recv().await {
                    if let RetryEventKind::Retrying { delay, .. } = event.kind {
                        let mut observed = observed.lock();
                        if payments {
                            observed.payment_retry_delays.push(delay);
                        } else {
                            observed.relay_retry_delays.push(delay);
                        }
                    }
                }
            });
        }
        let mut balance = self.payments_balance.subscribe();
        let observed = Arc::clone(&self.observed);
        tokio::spawn(async move {
            while let Ok(event) = balance.recv().await {
                if let BalanceEventKind::Ejected { .. } = event.kind {
                    observed.lock().ejections.push(event.id.to_string());
                }
            }
        });
    }

    /// The registry's backend: `in-memory` or `etcd`.
    pub fn registry_backend(&self) -> &'static str {
        self._registry.backend()
    }

    /// The audit of the payments breaker so far.
    pub fn payments_audit(&self) -> BreakerAudit {
        self.observed.lock().payments_audit
    }

    /// The address of instance `id`.
    pub fn instance(&self, id: &str) -> Result<SocketAddr, BoxError> {
        self.instances
            .get(id)
            .copied()
            .ok_or_else(|| format!("no instance {id}").into())
    }
}

fn edge_client(
    service: impl tower::Service<
        super::http_json::ApiCall,
        Response = super::http_json::JsonReply,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
) -> super::gateway::GatewayClient {
    use tower::ServiceExt;
    BoxCloneSyncService::new(service.map_err(Into::into))
}

impl System {
    /// Stops instance `id`'s server (its registration stays: its health
    /// check fails until `restart_instance`).
    pub async fn stop_instance(&self, id: &str) -> Result<(), BoxError> {
        self.stoppable
            .get(id)
            .ok_or_else(|| format!("no instance {id}"))?
            .stop()
            .await;
        Ok(())
    }

    /// Waits until `service` has `count` healthy instances (at most 5 s).
    pub async fn wait_healthy(&self, service: &str, count: usize) -> Result<(), BoxError> {
        wait_healthy(&self._registry, service, count).await
    }

    /// Serves instance `id` again on its address.
    pub async fn restart_instance(&self, id: &str) -> Result<(), BoxError> {
        self.stoppable
            .get(id)
            .ok_or_else(|| format!("no instance {id}"))?
            .restart()
            .await
    }
}

/// `router` with a count of the `/charge` and `/refund` requests it
/// receives, in front of its routes.
fn count_received(router: axum::Router, observed: &Arc<Mutex<Observed>>) -> axum::Router {
    let observed = Arc::clone(observed);
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            if matches!(request.uri().path(), "/charge" | "/refund") {
                observed.lock().payments_audit.received += 1;
            }
            next.run(request)
        },
    ))
}

/// Counts the calls sent below the payments breaker, and those cancelled
/// before they finished.
fn count_sent<F>(
    observed: Arc<Mutex<Observed>>,
) -> impl Fn(F) -> std::pin::Pin<Box<dyn Future<Output = F::Output> + Send>> + Clone
where
    F: Future + Send + 'static,
{
    struct Unfinished(Option<Arc<Mutex<Observed>>>);
    impl Drop for Unfinished {
        fn drop(&mut self) {
            if let Some(observed) = self.0.take() {
                observed.lock().payments_audit.cancelled += 1;
            }
        }
    }
    move |future: F| {
        observed.lock().payments_audit.sent += 1;
        let mut unfinished = Unfinished(Some(Arc::clone(&observed)));
        Box::pin(async move {
            let output = future.await;
            unfinished.0.take();
            output
        })
    }
}
