//! What every service's edge has, and the gateway's guards:
//!
//! * W3C trace context: each request runs with the `traceparent` it came
//!   with (or a new trace when it came without one, as at the gateway), in
//!   a `request` span that logs the trace id; the JSON client and the gRPC
//!   client send it on to the next hop.
//! * `/metrics` in Prometheus text. The services all run in this process,
//!   so one recorder holds every layer's series: each service's `/metrics`
//!   renders that same registry.
//! * `/admin/traces`: the trace ids of the last requests an instance served.
//! * The gateway's guards on placing orders (a per-user rate limit keyed by
//!   the JWT subject, a bulkhead and an adaptive concurrency limit in front
//!   of the orders service) and on catalogue reads (a cache that serves stale
//!   data when the catalogue fails, hedging across the products instances,
//!   a fallback when nothing is cached).
//! * Servers that can be stopped and started again on the same port (the
//!   products instances, for the story's outage).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use palisade::BoxError;
use palisade::adaptive_concurrency::{AdaptiveConcurrency, AdaptiveConcurrencyConfig, Vegas};
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::cache::{CacheConfig, ResponseCache};
use palisade::fallback::{Fallback, FallbackConfig};
use palisade::hedge::{Hedge, HedgeConfig, HedgeDelay};
use palisade::rate_limit::{KeyedRateLimiter, RateLimiterConfig};
use parking_lot::Mutex;
use serde_json::json;
use tracing::Instrument;

use super::http_json::{ApiCall, JsonReply};

// ---------------------------------------------------------------------------
// W3C trace context.

/// A W3C `traceparent` (version 00): `00-<trace id>-<parent id>-<flags>`,
/// 55 characters of lowercase hex and dashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's id, shared by every hop (never all zero).
    pub trace_id: [u8; 16],
    /// The id of the sender's span (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(text[2 * i])? << 4 | digit(text[2 * i + 1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` header. A version other than 00 is read as
    /// 00 if it starts like one (the spec's forward compatibility); `ff`,
    /// upper-case hex and all-zero ids are refused.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.split('-');
        let version: [u8; 1] = unhex(parts.next()?)?;
        let trace_id: [u8; 16] = unhex(parts.next()?)?;
        let parent_id: [u8; 8] = unhex(parts.next()?)?;
        let flags: [u8; 1] = unhex(parts.next()?)?;
        let rest = parts.next();
        if version[0] == 0xff || (version[0] == 0 && rest.is_some()) {
            return None;
        }
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// A new trace (sampled), as the gateway starts one.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(),
            parent_id: nonzero(),
            flags: 1,
        }
    }

    /// The same trace with a new span id: what this hop sends on.
    pub fn child(&self) -> Self {
        Self {
            parent_id: nonzero(),
            ..*self
        }
    }

    /// The trace id in hex (32 characters), as the logs show it.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = std::array::from_fn(|_| rand::random());
        if bytes != [0; N] {
            return bytes;
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    /// The trace context of the request this task serves.
    static CURRENT: TraceParent;
}

/// The trace context of the request being served, if any.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|context| *context).ok()
}

/// The `traceparent` to send on a call made while serving a request.
pub fn outgoing() -> Option<String> {
    current().map(|context| context.child().to_string())
}

/// Runs `future` with `context` as the current trace (the saga's steps run
/// on the executor's tasks, so they carry the order's trace with them).
pub async fn within<F: Future>(context: Option<TraceParent>, future: F) -> F::Output {
    match context {
        Some(context) => CURRENT.scope(context, future).await,
        None => future.await,
    }
}

/// The trace ids each instance served, the latest last (at most 256 each).
#[derive(Clone, Default)]
pub struct Traces {
    seen: Arc<Mutex<std::collections::BTreeMap<String, VecDeque<String>>>>,
}

impl Traces {
    /// Records that `instance` served a request of trace `trace_id`.
    pub fn record(&self, instance: &str, trace_id: String) {
        let mut seen = self.seen.lock();
        let ids = seen.entry(instance.to_owned()).or_default();
        if ids.len() == 256 {
            ids.pop_front();
        }
        ids.push_back(trace_id);
    }

    /// The trace ids `instance` served.
    pub fn of(&self, instance: &str) -> Vec<String> {
        self.seen
            .lock()
            .get(instance)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct Hop {
    instance: Arc<str>,
    traces: Traces,
}

/// Requests that are not part of a user's trace: the registry's health
/// checks and the scrapes.
fn untraced(path: &str) -> bool {
    path == "/health" || path == "/metrics" || path.starts_with("/grpc.health.v1.")
}

async fn trace_request(State(hop): State<Hop>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if untraced(&path) {
        return next.run(request).await;
    }
    let incoming = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse);
    let context = incoming.unwrap_or_else(TraceParent::new_root).child();
    let trace_id = context.trace_id();
    hop.traces.record(&hop.instance, trace_id.clone());
    let span = tracing::info_span!(
        "request",
        service = %hop.instance,
        trace_id = %trace_id,
        method = %request.method(),
        path = %path,
    );
    let response = CURRENT
        .scope(context, next.run(request))
        .instrument(span.clone())
        .await;
    tracing::info!(parent: &span, status = response.status().as_u16(), "served");
    response
}

/// Adds `/metrics`, `/admin/traces` and the trace context to an
/// instance's routes.
pub fn instrument(router: Router, instance: &str, traces: &Traces) -> Router {
    let hop = Hop {
        instance: instance.into(),
        traces: traces.clone(),
    };
    let seen = hop.clone();
    router
        .route("/metrics", get(|| async { prometheus().render() }))
        .route(
            "/admin/traces",
            get(move || async move { axum::Json(json!(seen.traces.of(&seen.instance))) }),
        )
        .layer(axum::middleware::from_fn_with_state(hop, trace_request))
}

// ---------------------------------------------------------------------------
// Metrics.

/// The process's Prometheus recorder, installed on first use (before any
/// layer is made: each layer takes its metric handles when it is created).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test's): then this
        // one renders only what it was given, which is nothing.
        if metrics::set_global_recorder(recorder).is_ok() {
            palisade::metrics::describe();
        }
        handle
    })
}

// ---------------------------------------------------------------------------
// The gateway's guards.

/// The limits of the gateway's guards.
#[derive(Debug, Clone, Copy)]
pub struct EdgeConfig {
    /// Orders one user may place per `orders_period` (also the burst).
    pub orders_per_user: u32,
    /// See `orders_per_user`.
    pub orders_period: Duration,
    /// Orders the gateway sends to the orders service at once.
    pub orders_bulkhead: usize,
    /// How long an order waits for a turn before it is turned away.
    pub orders_bulkhead_wait: Duration,
    /// How long a catalogue answer is fresh.
    pub catalogue_ttl: Duration,
    /// How long a catalogue read waits before a copy goes to another
    /// instance.
    pub hedge_delay: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            orders_per_user: 10,
            orders_period: Duration::from_secs(20),
            orders_bulkhead: 3,
            orders_bulkhead_wait: Duration::from_millis(900),
            catalogue_ttl: Duration::from_millis(100),
            hedge_delay: Duration::from_millis(50),
        }
    }
}

/// The gateway's guards, kept to read their figures.
#[derive(Clone)]
pub struct Guards {
    /// Their limits.
    pub config: EdgeConfig,
    /// Orders per user (the JWT subject).
    pub orders_per_user: KeyedRateLimiter<i64>,
    /// Orders in flight to the orders service.
    pub orders_bulkhead: Bulkhead,
    /// The adaptive limit inside the bulkhead.
    pub orders_concurrency: AdaptiveConcurrency,
    /// Catalogue answers, by path.
    pub catalogue_cache: ResponseCache<String, JsonReply>,
    /// Copies of slow catalogue reads.
    pub catalogue_hedge: Hedge,
    /// The empty catalogue shown when nothing is cached.
    pub catalogue_fallback: Fallback<JsonReply>,
    /// Every instance's served trace ids.
    pub traces: Traces,
}

impl Guards {
    /// Builds the guards.
    pub fn new(config: EdgeConfig) -> Result<Self, BoxError> {
        let min = config.orders_bulkhead.max(1);
        Ok(Self {
            config,
            orders_per_user: KeyedRateLimiter::new(
                "gateway-orders-per-user",
                RateLimiterConfig::builder()
                    .limit_for_period(config.orders_per_user)
                    .limit_refresh_period(config.orders_period)
                    .build()?,
            ),
            orders_bulkhead: Bulkhead::new(
                "gateway-orders",
                BulkheadConfig::builder()
                    .max_concurrent_calls(config.orders_bulkhead)
                    .max_wait_duration(config.orders_bulkhead_wait)
                    .build()?,
            ),
            // Behind the bulkhead, never below its size: it turns orders
            // away only if the bulkhead is made larger than what the
            // orders service serves at once.
            orders_concurrency: AdaptiveConcurrency::new(
                "gateway-orders",
                AdaptiveConcurrencyConfig::builder()
                    .algorithm(Vegas::default())
                    .initial_limit(min.max(20))
                    .min_limit(min)
                    .max_limit(200)
                    .build()?,
            ),
            catalogue_cache: ResponseCache::new(
                "catalogue",
                CacheConfig::builder()
                    .ttl(config.catalogue_ttl)
                    .max_staleness(Duration::from_secs(600))
                    .build()?,
            ),
            catalogue_hedge: Hedge::new(
                "catalogue",
                HedgeConfig::builder()
                    .delay(HedgeDelay::Fixed(config.hedge_delay))
                    .build()?,
            ),
            catalogue_fallback: Fallback::new(
                "catalogue",
                FallbackConfig::builder()
                    .value(JsonReply {
                        status: http::StatusCode::OK,
                        body: json!([]),
                    })
                    .on_rejection(true)
                    .build()?,
            ),
            traces: Traces::default(),
        })
    }
}

/// The key of an order's rate limit: the user it is placed for, which the
/// gateway took from the JWT's subject.
pub fn order_user(call: &ApiCall) -> i64 {
    call.body
        .as_ref()
        .and_then(|body| body["user_id"].as_i64())
        .unwrap_or_default()
}

/// `client` as a service that is always ready and waits for the client's
/// readiness (a bulkhead permit, say) inside each call's future.
pub fn ready_in_call(
    client: super::order_saga::PipelinedClient,
) -> impl tower::Service<
    ApiCall,
    Response = JsonReply,
    Error = palisade::pipeline::PipelineError,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    use tower::ServiceExt;
    tower::service_fn(move |call: ApiCall| client.clone().oneshot(call))
}

// ---------------------------------------------------------------------------
// Servers that stop and start again.

/// A server on a fixed port that can be stopped (gracefully: idle
/// keep-alive connections are closed too) and started again.
pub struct StoppableServer {
    /// Its address.
    pub address: SocketAddr,
    router: Router,
    running: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

impl StoppableServer {
    /// Serves `router` on `127.0.0.1:port` (0: any free port).
    pub async fn start(router: Router, port: u16) -> Result<Self, BoxError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let server = Self {
            address: listener.local_addr()?,
            router,
            running: Mutex::new(None),
        };
        server.run(listener);
        Ok(server)
    }

    fn run(&self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = self.router.clone();
        let address = self.address;
        let task = tokio::spawn(async move {
            let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serving.await {
                tracing::error!(%error, %address, "server stopped");
            }
        });
        *self.running.lock() = Some((stop, task));
    }

    /// Stops serving; waits (at most 2 s) until its connections are closed.
    pub async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&self) -> Result<(), BoxError> {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.address).await?;
        self.run(listener);
        Ok(())
    }
}

impl Drop for StoppableServer {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.lock().take() {
            task.abort();
        }
    }
}
