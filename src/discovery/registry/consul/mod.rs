//! [`ConsulRegistry`]: a [`Registry`] over Consul's HTTP API.
//!
//! | operation | Consul endpoint |
//! |---|---|
//! | [`register`](Registry::register) | `PUT /v1/agent/service/register?replace-existing-checks=true` with one check |
//! | [`deregister`](Registry::deregister), guard drop | `PUT /v1/agent/service/deregister/<id>` |
//! | [`pass_ttl`](Registry::pass_ttl) | `PUT /v1/agent/check/pass/service:<id>` |
//! | [`healthy`](Registry::healthy) | `GET /v1/health/service/<name>?passing=true` |
//! | [`watch`](Registry::watch) | the same, as a blocking query (`index`, `wait`, `X-Consul-Index`) |
//!
//! Tested against an in-process HTTP server that implements these
//! endpoints as Consul documents them (no Consul server can be installed
//! where this crate is built); the requests follow Consul's API docs. The
//! same server behind rustls tests the `https://` path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use governor::Quota;
use http::header::HeaderValue;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::Instance;
use crate::events::{EventHub, EventStream};

use self::watch::ConsulWatch;
use super::polling::polling_watch;
use super::{BoxFuture, Registrar, Registration, RegistrationGuard, Registry, WatchStream};

mod config;
mod transport;
mod watch;
mod wire;

pub use self::config::{ConsulRegistryBuilder, MAX_CONSUL_WAIT};
pub use self::transport::ConsulStatusError;

const BACKEND: &str = "consul";

/// A [`Registry`] backed by a Consul agent's HTTP API (feature `consul`).
///
/// * Registering sends the instance (`ID`, `Name`, `Tags`, `Address`,
///   `Port`, `Meta`, `Weights.Passing` = its weight) with one check:
///   [`HealthCheck::Ttl`] becomes `Check.TTL` with initial
///   `Status: "passing"` (healthy at once, as the [`Registry`] contract
///   says) and `DeregisterCriticalServiceAfter` of the TTL, but at least
///   one minute (Consul's minimum): a lapsed TTL hides the instance at once
///   and Consul removes it a little later. [`HealthCheck::Http`] becomes
///   `Check.HTTP` (`http://<address><path>`) with `Interval`, `Timeout` and
///   `DeregisterCriticalServiceAfter`; Consul's agent runs it, and the
///   instance is critical until it first passes. The check's id is
///   `service:<id>`, which [`pass_ttl`](Registrar::pass_ttl) renews.
///   Consul answers a pass of an unknown check and of a check that is not
///   a TTL check alike (`CheckID ... does not have associated TTL`): both
///   are [`DiscoveryError::NotRegistered`], except for instances this
///   registry registered without a TTL check, which are
///   [`DiscoveryError::Unsupported`] without asking Consul.
/// * Consul's service ids are unique per agent, not per service: use
///   instance ids that are unique across the services of one agent.
/// * [`watch`](Registry::watch) runs blocking queries on
///   `/v1/health/service/<name>?passing=true` as Consul's
///   [blocking query docs] ask: it sends the last `X-Consul-Index` as
///   `index` with `wait`; when the returned index goes backwards it resets
///   its index, and it never blocks on an index below 1 (an index of 0 from
///   the server would otherwise turn the loop into a busy loop); queries
///   are rate limited (governor's GCRA: `query_burst` at once, then one
///   more every `query_interval`) so a server that answers at once cannot
///   make the loop spin; errors are yielded as `Err` items and retried with
///   the configured [`Backoff`] (reset after each answer). Only sets that
///   differ from the last one yielded are yielded. The watch runs inside
///   the stream: dropping the stream cancels its query.
///
/// `http://` and `https://` agent addresses are supported. `https://` uses
/// rustls with the `ring` provider, trusting the system's roots, or only
/// the CA certificates given with
/// [`ca_certificate_pem`](ConsulRegistryBuilder::ca_certificate_pem);
/// [`client_identity_pem`](ConsulRegistryBuilder::client_identity_pem)
/// presents a client certificate (Consul's `verify_incoming`). TLS options
/// with an `http://` address are a [`ConfigError`](crate::ConfigError), as
/// is an address holding `user:password@`.
///
/// The ACL token and the client's private key never appear in `Debug`
/// output (of the builder or the registry), errors, events or traces: the
/// token is a sensitive header value, shown as `<redacted>`.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `address` | `http://127.0.0.1:8500` | The agent's base URL, `http://` or `https://`. |
/// | `token` | none | ACL token, sent as `X-Consul-Token`; never shown. |
/// | `ca_certificate_pem` | the system's roots | CA certificates (PEM) trusted for an `https://` agent, instead of the system's. |
/// | `client_identity_pem` | none | Client certificate chain and private key (PEM) for mutual TLS; the key is never shown. |
/// | `tls_domain_name` | the address's host | The name the agent's certificate must hold. |
/// | `datacenter` | none (the agent's) | `dc` of health queries. |
/// | `wait` | 5 min | A blocking query's `wait`, 1 ms to 10 min. |
/// | `request_timeout` | 10 s | Limit on a non-blocking request; a blocking one may take `wait + wait/16 + request_timeout`. |
/// | `query_burst` | 2 | Queries a watch may send back to back. |
/// | `query_interval` | 1 s | Time to earn one more query once the burst is spent, at least 1 ms. |
/// | `backoff` | [`Backoff::default()`] | Delay before retrying a failed watch query. |
/// | `event_capacity` | 256 | Events buffered per subscriber. |
///
/// [blocking query docs]: https://developer.hashicorp.com/consul/api-docs/features/blocking
/// [`HealthCheck::Ttl`]: crate::discovery::HealthCheck::Ttl
/// [`HealthCheck::Http`]: crate::discovery::HealthCheck::Http
///
/// ```no_run
/// use std::time::Duration;
/// use palisade::discovery::{
///     ConsulRegistry, HealthCheck, Instance, Registrar, Registration, Registry,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let consul = ConsulRegistry::builder()
///     .address("http://127.0.0.1:8500")
///     .token("secret-acl-token")
///     .build()?;
/// let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080").tag("v2").build()?;
/// let _guard = consul
///     .register(Registration::new(me, HealthCheck::ttl(Duration::from_secs(15))?))
///     .await?;
/// consul.pass_ttl("payments", "payments-1").await?; // renew within 15 s
/// let healthy = consul.healthy("payments").await?;
/// # Ok(())
/// # }
/// ```
///
/// An agent over TLS with its own CA:
///
/// ```no_run
/// use palisade::discovery::ConsulRegistry;
///
/// # fn main() -> Result<(), palisade::BoxError> {
/// let consul = ConsulRegistry::builder()
///     .address("https://consul.internal:8501")
///     .ca_certificate_pem(std::fs::read("/etc/consul/ca.pem")?)
///     .token(std::env::var("CONSUL_HTTP_TOKEN")?)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConsulRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    wait: Duration,
    request_timeout: Duration,
    /// The rate limit of a watch's queries: `query_burst` at once, then
    /// one per `query_interval`.
    query_quota: Quota,
    backoff: Backoff,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    counters: Counters,
    events: EventHub<ConsulEvent>,
    /// The instances registered through this registry, by id.
    local: Mutex<HashMap<String, LocalRegistration>>,
    next_generation: AtomicU64,
}

/// What this registry remembers of an instance it registered.
struct LocalRegistration {
    /// Tells the registration's guard from an earlier one's.
    generation: u64,
    /// Whether it has a TTL check: Consul answers a pass of a check that is
    /// not a TTL check exactly as one of an unknown check.
    ttl: bool,
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    deregistrations: AtomicU64,
    ttl_passes: AtomicU64,
    queries: AtomicU64,
    query_errors: AtomicU64,
    index_resets: AtomicU64,
    rate_limited: AtomicU64,
}

/// Counts of what a [`ConsulRegistry`] did, from
/// [`ConsulRegistry::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConsulMetrics {
    /// Successful registrations.
    pub registrations: u64,
    /// Successful deregistrations (by id or guard).
    pub deregistrations: u64,
    /// Successful TTL renewals.
    pub ttl_passes: u64,
    /// Health queries sent (by `healthy` and by watches).
    pub queries: u64,
    /// Health queries that failed.
    pub query_errors: u64,
    /// Times a watch reset its index because `X-Consul-Index` went
    /// backwards or was 0.
    pub index_resets: u64,
    /// Times a watch waited for the rate limiter before a query.
    pub rate_limited: u64,
}

/// Something a [`ConsulRegistry`] did; from [`ConsulRegistry::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsulEvent {
    /// An instance was registered with the agent.
    Registered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// An instance was deregistered.
    Deregistered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// A watch saw a new set of healthy instances.
    WatchChanged {
        /// The watched service.
        service: String,
        /// How many instances are healthy.
        instances: usize,
        /// The `X-Consul-Index` of the answer.
        index: u64,
    },
    /// A watch reset its index: `X-Consul-Index` went backwards (or was 0).
    IndexReset {
        /// The watched service.
        service: String,
        /// The index the query was sent with.
        previous: u64,
        /// The index the server returned.
        returned: u64,
    },
    /// A watch query failed; it is retried after a backoff.
    WatchFailed {
        /// The watched service.
        service: String,
        /// Why.
        error: String,
    },
}

impl ConsulRegistry {
    /// Starts from the defaults (a local agent on `http://127.0.0.1:8500`).
    pub fn builder() -> ConsulRegistryBuilder {
        ConsulRegistryBuilder::new()
    }

    /// Subscribes to registrations and watch changes, resets and failures.
    pub fn subscribe(&self) -> EventStream<ConsulEvent> {
        self.inner.events.subscribe()
    }

    /// Counts of registrations, queries, index resets and rate limiting.
    pub fn metrics(&self) -> ConsulMetrics {
        let c = &self.inner.counters;
        ConsulMetrics {
            registrations: c.registrations.load(Ordering::Relaxed),
            deregistrations: c.deregistrations.load(Ordering::Relaxed),
            ttl_passes: c.ttl_passes.load(Ordering::Relaxed),
            queries: c.queries.load(Ordering::Relaxed),
            query_errors: c.query_errors.load(Ordering::Relaxed),
            index_resets: c.index_resets.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
        }
    }
}

impl Registry for ConsulRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        Box::pin(async move {
            let (instances, _) = self.inner.query(service, None).await?;
            Ok(instances)
        })
    }

    fn watch(&self, service: &str) -> WatchStream {
        let source = ConsulWatch::new(Arc::clone(&self.inner), service);
        polling_watch(source, &self.inner.backoff)
    }
}

impl Registrar for ConsulRegistry {
    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
        Box::pin(async move {
            let instance = registration.instance.clone();
            let generation = self.inner.register(registration).await?;
            let inner = Arc::clone(&self.inner);
            let (service, id) = (instance.service().clone(), instance.id().clone());
            Ok(RegistrationGuard::new(BACKEND, &instance, move || {
                // A later registration of the same id replaced this one:
                // leave it alone.
                let current = inner
                    .local
                    .lock()
                    .get(id.as_str())
                    .is_some_and(|r| r.generation == generation);
                Box::pin(async move {
                    if !current {
                        return Err(DiscoveryError::not_registered(
                            service.as_str(),
                            id.as_str(),
                        ));
                    }
                    inner.deregister(service.as_str(), id.as_str()).await
                })
            }))
        })
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.inner.deregister(service, id))
    }

    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.inner.pass_ttl(service, id))
    }
}

impl fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("address", &self.inner.base)
            .field("datacenter", &self.inner.datacenter)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.inner.wait)
            .field("metrics", &self.metrics())
            .finish()
    }
}
