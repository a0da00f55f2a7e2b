//! [`EtcdRegistry`]: a [`Registrar`] over etcd v3 (feature `etcd`): leases
//! with keep-alive for registrations, a prefix watch for discovery.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

use crate::backoff::Backoff;
use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::Instance;
use crate::events::{EventHub, EventStream};

use self::watch::EtcdWatch;
use super::polling::polling_watch;
use super::{BoxFuture, Registrar, Registration, RegistrationGuard, Registry, WatchStream};

mod config;
mod lease;
mod transport;
mod watch;
mod wire;

pub use self::config::EtcdRegistryBuilder;

const BACKEND: &str = "etcd";

/// A [`Registrar`] backed by etcd v3 (feature `etcd`, crate `etcd-client`).
///
/// * An instance is the key `<prefix>/<service>/<id>` holding the instance
///   as JSON (`service`, `id`, `host`, `port`, `tags`, `metadata`,
///   `weight`), attached to a lease. A background task keeps the lease
///   alive (a keep-alive every third of its TTL), so the instance vanishes
///   when its process dies: its lease expires after at most one TTL.
///   [`HealthCheck::Ttl`] sets the lease's TTL (etcd leases count whole
///   seconds: the TTL is rounded up, and etcd may raise it to its minimum);
///   [`HealthCheck::None`] uses `default_lease_ttl`. etcd cannot run HTTP
///   checks: [`HealthCheck::Http`] is [`DiscoveryError::Unsupported`].
/// * A lost lease (revoked, or expired while this process could not reach
///   etcd) is noticed by the keep-alive task, which grants a new lease and
///   writes the instance again; connection failures are retried with the
///   configured [`Backoff`].
/// * The [`RegistrationGuard`] stops the keep-alive and revokes the lease,
///   which deletes the key. [`pass_ttl`](Registrar::pass_ttl) sends one
///   keep-alive for the instance's lease.
/// * [`watch`](Registry::watch) reads the prefix (the current set and its
///   revision), then watches the prefix from the next revision. After a
///   disconnect it resumes from the last revision it saw; when that
///   revision was compacted it reads the prefix again. Every change to the
///   set is yielded as a full set; failures are yielded as `Err` items and
///   retried with the backoff (reset after each set yielded). The watch runs inside the stream: dropping
///   the stream cancels it.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `endpoints` | `http://127.0.0.1:2379` | etcd endpoints. |
/// | `prefix` | `/palisade/services` | Key prefix: instances live at `<prefix>/<service>/<id>`. |
/// | `default_lease_ttl` | 10 s | Lease TTL of registrations without a TTL check. |
/// | `backoff` | [`Backoff::default()`] | Delays between retries of keep-alives, re-grants and watches. |
/// | `connect_options` | etcd-client's defaults | Timeouts and keep-alive of the etcd client (the TLS options and credentials below replace its own). |
/// | `ca_certificate_pem` | the system's roots | CA certificates (PEM) trusted for `https://` endpoints, instead of the system's. |
/// | `client_identity_pem` | none | Client certificate chain and private key (PEM) for mutual TLS (etcd's `--client-cert-auth`); the key is never shown. |
/// | `tls_domain_name` | the endpoint's host | The name etcd's certificate must hold. |
/// | `credentials` | none | User and password (etcd's `auth enable`); the password is never shown. |
/// | `event_capacity` | 256 | Events buffered per subscriber. |
///
/// TLS: `https://` endpoints use rustls with the `ring` provider (through
/// etcd-client's `tls` feature), trusting the system's roots or only the
/// given CA. Any TLS option, or any `https://` endpoint, turns TLS on for
/// all endpoints: an `http://` endpoint beside it is a
/// [`ConfigError`](crate::ConfigError) naming `endpoints`. With
/// credentials the client authenticates at [`connect`](EtcdRegistryBuilder::connect)
/// and sends its token with every request; credentials without TLS work
/// but trace a warning. The password and the client's private key never
/// appear in `Debug` output, errors, events or traces.
///
/// [`HealthCheck::Ttl`]: crate::discovery::HealthCheck::Ttl
/// [`HealthCheck::None`]: crate::discovery::HealthCheck::None
/// [`HealthCheck::Http`]: crate::discovery::HealthCheck::Http
///
/// ```no_run
/// use std::time::Duration;
/// use palisade::discovery::{
///     EtcdRegistry, HealthCheck, Instance, Registrar, Registration, Registry,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let etcd = EtcdRegistry::builder()
///     .endpoint("http://127.0.0.1:2379")
///     .connect()
///     .await?;
/// let me = Instance::builder("payments", "payments-1", "10.0.0.7:8080").build()?;
/// // Kept alive in the background; gone within 5 s if this process dies.
/// let _guard = etcd
///     .register(Registration::new(me, HealthCheck::ttl(Duration::from_secs(5))?))
///     .await?;
/// let healthy = etcd.healthy("payments").await?;
/// # Ok(())
/// # }
/// ```
///
/// A secured etcd (TLS with a client certificate, authentication on):
///
/// ```no_run
/// use palisade::discovery::EtcdRegistry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let etcd = EtcdRegistry::builder()
///     .endpoint("https://etcd-1.internal:2379")
///     .ca_certificate_pem(std::fs::read("/etc/etcd/ca.pem")?)
///     .client_identity_pem(
///         std::fs::read("/etc/palisade/client.pem")?,
///         std::fs::read("/etc/palisade/client-key.pem")?,
///     )
///     .credentials("payments", std::env::var("ETCD_PASSWORD")?)
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    default_lease_ttl: Duration,
    backoff: Backoff,
    shared: Arc<Shared>,
    /// Registrations made through this registry, by (service, id).
    local: Mutex<HashMap<(String, String), LocalRegistration>>,
    next_generation: AtomicU64,
}

/// What keep-alive tasks share with the registry.
struct Shared {
    counters: Counters,
    events: EventHub<EtcdEvent>,
}

struct LocalRegistration {
    generation: u64,
    lease: Arc<AtomicI64>,
    task: AbortHandle,
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    deregistrations: AtomicU64,
    lease_regrants: AtomicU64,
    keep_alive_failures: AtomicU64,
    watch_relists: AtomicU64,
    watch_failures: AtomicU64,
}

/// Counts of what an [`EtcdRegistry`] did, from [`EtcdRegistry::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EtcdMetrics {
    /// Registrations kept alive by this registry now.
    pub registered: usize,
    /// Successful registrations.
    pub registrations: u64,
    /// Successful deregistrations (by id or guard).
    pub deregistrations: u64,
    /// Leases granted again after one was lost (revoked or expired).
    pub lease_regrants: u64,
    /// Keep-alives that failed (connection lost, no answer).
    pub keep_alive_failures: u64,
    /// Times a watch read the prefix again because its revision was
    /// compacted.
    pub watch_relists: u64,
    /// Watch reads or watch streams that failed (then retried).
    pub watch_failures: u64,
}

/// Something an [`EtcdRegistry`] did; from [`EtcdRegistry::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EtcdEvent {
    /// An instance was written under a new lease.
    Registered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The lease it is attached to.
        lease: i64,
    },
    /// An instance was deregistered (its lease revoked or key deleted).
    Deregistered {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// A registration's lease was found gone (revoked or expired).
    LeaseLost {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The lost lease.
        lease: i64,
    },
    /// A lost lease was replaced and the instance written again.
    LeaseRegranted {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The new lease.
        lease: i64,
    },
    /// A watch's revision was compacted; it read the prefix again.
    WatchCompacted {
        /// The watched service.
        service: String,
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// A watch failed; it is retried after a backoff.
    WatchFailed {
        /// The watched service.
        service: String,
        /// Why.
        error: String,
    },
}

impl EtcdRegistry {
    /// Starts from the defaults (one endpoint, `http://127.0.0.1:2379`).
    pub fn builder() -> EtcdRegistryBuilder {
        EtcdRegistryBuilder::new()
    }

    /// Subscribes to registrations, lease losses and re-grants, and watch
    /// compactions and failures.
    pub fn subscribe(&self) -> EventStream<EtcdEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Counts of registrations, lease re-grants and watch re-reads.
    pub fn metrics(&self) -> EtcdMetrics {
        let c = &self.inner.shared.counters;
        EtcdMetrics {
            registered: self.inner.local.lock().len(),
            registrations: c.registrations.load(Ordering::Relaxed),
            deregistrations: c.deregistrations.load(Ordering::Relaxed),
            lease_regrants: c.lease_regrants.load(Ordering::Relaxed),
            keep_alive_failures: c.keep_alive_failures.load(Ordering::Relaxed),
            watch_relists: c.watch_relists.load(Ordering::Relaxed),
            watch_failures: c.watch_failures.load(Ordering::Relaxed),
        }
    }

    /// The lease an instance registered through this registry is attached
    /// to now (it changes when a lost lease is re-granted).
    pub fn lease_of(&self, service: &str, id: &str) -> Option<i64> {
        let local = self.inner.local.lock();
        local
            .get(&(service.to_owned(), id.to_owned()))
            .map(|r| r.lease.load(Ordering::Acquire))
    }
}

impl Registry for EtcdRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        Box::pin(async move {
            let (instances, _) = self.inner.list(service).await?;
            let mut instances: Vec<Instance> = instances.into_values().collect();
            instances.sort_by(|a, b| a.id().cmp(b.id()));
            Ok(instances)
        })
    }

    fn watch(&self, service: &str) -> WatchStream {
        let source = EtcdWatch::new(Arc::clone(&self.inner), service);
        polling_watch(source, &self.inner.backoff)
    }
}

impl Registrar for EtcdRegistry {
    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
        Box::pin(self.register_instance(registration))
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.deregister_instance(service, id))
    }

    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        Box::pin(self.pass_ttl_now(service, id))
    }
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("prefix", &self.inner.prefix)
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop keeping registrations alive (their
        // leases expire; guards still revoke them).
        for registration in self.local.get_mut().values() {
            registration.task.abort();
        }
    }
}
