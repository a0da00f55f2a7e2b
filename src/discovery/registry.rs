//! The [`Registry`] trait every discovery backend implements, and the types
//! it exchanges: [`Registration`], [`RegistrationGuard`], [`WatchStream`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use super::error::DiscoveryError;
use super::health::HealthCheck;
use super::instance::{Instance, InstanceId, ServiceName};

/// A boxed, `Send` future: what [`Registry`] methods return, so the trait
/// stays object-safe (`Arc<dyn Registry>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The stream returned by [`Registry::watch`]: full snapshots of a
/// service's healthy instances.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<Instance>, DiscoveryError>> + Send>>;

/// What to register: an instance and how its health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The instance: service, id, address, tags, metadata, weight.
    pub instance: Instance,
    /// How the registry decides the instance is healthy.
    pub check: HealthCheck,
}

impl Registration {
    /// Registers `instance` with `check`.
    pub fn new(instance: Instance, check: HealthCheck) -> Self {
        Self { instance, check }
    }
}

/// A service registry: where instances register and where clients find the
/// healthy instances of a service.
///
/// Implemented by [`InMemoryRegistry`](super::InMemoryRegistry) and
/// [`StaticRegistry`](super::StaticRegistry), and by the DNS, etcd and
/// Consul backends behind their features. The trait is object-safe:
/// balancers take any `R: Registry`, including `Arc<dyn Registry>`.
///
/// # Contract for implementations
///
/// * [`register`](Self::register) replaces an earlier registration of the
///   same service and id (as Consul's agent does) and returns a
///   [`RegistrationGuard`] that deregisters when dropped. Instances with a
///   [`HealthCheck::Ttl`] are healthy at once (registering is the first
///   renewal); with a [`HealthCheck::Http`] they are critical until the
///   first check, run at once, passes.
/// * [`watch`](Self::watch) yields the current healthy set first (possibly
///   empty), then a new full set each time it may have changed. Repeating
///   an unchanged set is allowed; consumers diff with
///   [`SnapshotDiff`](super::SnapshotDiff). An `Err` item reports a
///   transient problem: the stream goes on, the backend retries (with
///   [`Backoff`](crate::backoff::Backoff)), and consumers keep the
///   last set they saw. The stream ends only when the registry is closed.
///   Dropping the stream stops the watch's background work.
/// * Every method is cancel-safe: dropping a returned future leaves the
///   registry consistent.
pub trait Registry: fmt::Debug + Send + Sync + 'static {
    /// The backend's name for errors and traces, e.g. `"in-memory"`.
    fn backend(&self) -> &'static str;

    /// Registers an instance; the returned guard deregisters it when
    /// dropped or on [`RegistrationGuard::deregister`].
    fn register(
        &self,
        registration: Registration,
    ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>>;

    /// Removes an instance. Fails with
    /// [`DiscoveryError::NotRegistered`] when it is not registered.
    fn deregister<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>>;

    /// Renews the TTL of an instance registered with
    /// [`HealthCheck::Ttl`] (Consul's `/v1/agent/check/pass`, an etcd lease
    /// keep-alive). Fails with [`DiscoveryError::NotRegistered`] when the
    /// instance is gone (its TTL lapsed: register again) and
    /// [`DiscoveryError::Unsupported`] when it has no TTL check.
    fn pass_ttl<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>>;

    /// The healthy instances of `service` now, in id order.
    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>>;

    /// Watches the healthy instances of `service`: the current set first,
    /// then every new set (see the trait docs).
    fn watch(&self, service: &str) -> WatchStream;
}

macro_rules! forward_registry {
    ($($ptr:ty),*) => {$(
        impl<R: Registry + ?Sized> Registry for $ptr {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }

            fn register(
                &self,
                registration: Registration,
            ) -> BoxFuture<'_, Result<RegistrationGuard, DiscoveryError>> {
                (**self).register(registration)
            }

            fn deregister<'a>(
                &'a self,
                service: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
                (**self).deregister(service, id)
            }

            fn pass_ttl<'a>(
                &'a self,
                service: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
                (**self).pass_ttl(service, id)
            }

            fn healthy<'a>(
                &'a self,
                service: &'a str,
            ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
                (**self).healthy(service)
            }

            fn watch(&self, service: &str) -> WatchStream {
                (**self).watch(service)
            }
        }
    )*};
}

forward_registry!(Arc<R>, Box<R>);

/// The deregistration a backend hands to a [`RegistrationGuard`].
type Deregistration =
    Box<dyn FnOnce() -> BoxFuture<'static, Result<(), DiscoveryError>> + Send + Sync>;

/// Keeps an instance registered: dropping it deregisters the instance.
///
/// Returned by [`Registry::register`]. Call
/// [`deregister`](Self::deregister) to deregister and learn whether it
/// worked; a dropped guard deregisters in the background (on the current
/// tokio runtime, or at once when the backend can do it without waiting)
/// and logs failures. [`keep`](Self::keep) leaves the instance registered.
#[must_use = "dropping the guard deregisters the instance at once"]
pub struct RegistrationGuard {
    service: ServiceName,
    id: InstanceId,
    backend: &'static str,
    deregistration: Option<Deregistration>,
}

impl RegistrationGuard {
    /// A guard for `instance` registered with `backend`. `deregister` is
    /// called at most once, when the guard is dropped or
    /// [`deregister`](Self::deregister)ed; it should do what it can without
    /// waiting (stop a keep-alive, remove a local entry) before returning
    /// the future that finishes the job (a server call), because a guard
    /// dropped outside a tokio runtime polls that future only once.
    pub fn new<F>(backend: &'static str, instance: &Instance, deregister: F) -> Self
    where
        F: FnOnce() -> BoxFuture<'static, Result<(), DiscoveryError>> + Send + Sync + 'static,
    {
        Self {
            service: instance.service().clone(),
            id: instance.id().clone(),
            backend,
            deregistration: Some(Box::new(deregister)),
        }
    }

    /// The registered instance's service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The registered instance's id.
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// Deregisters the instance and waits for the registry to confirm.
    pub async fn deregister(mut self) -> Result<(), DiscoveryError> {
        match self.deregistration.take() {
            Some(deregister) => deregister().await,
            None => Ok(()),
        }
    }

    /// Leaves the instance registered when the guard is gone (it then
    /// lives until deregistered by id, or until its TTL lapses).
    pub fn keep(mut self) -> (ServiceName, InstanceId) {
        self.deregistration = None;
        (self.service.clone(), self.id.clone())
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        let Some(deregister) = self.deregistration.take() else {
            return;
        };
        let (service, id, backend) = (self.service.clone(), self.id.clone(), self.backend);
        let mut future = deregister();
        let report = move |result: Result<(), DiscoveryError>| match result {
            Ok(()) => {
                tracing::debug!(backend, %service, %id, "dropped registration guard deregistered the instance")
            }
            // Already gone (a lapsed TTL, an explicit deregistration) or the
            // registry is closed: nothing is left registered.
            Err(error @ (DiscoveryError::NotRegistered { .. } | DiscoveryError::Closed { .. })) => {
                tracing::debug!(backend, %service, %id, %error, "dropped registration guard: the instance was already gone")
            }
            Err(error) => {
                tracing::warn!(backend, %service, %id, %error, "dropped registration guard failed to deregister the instance")
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { report(future.await) });
            }
            Err(_) => match future
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(result) => report(result),
                Poll::Pending => tracing::warn!(
                    backend,
                    service = %self.service,
                    id = %self.id,
                    "registration guard dropped outside a tokio runtime: the instance stays registered until its TTL or health check removes it"
                ),
            },
        }
    }
}

impl fmt::Debug for RegistrationGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationGuard")
            .field("backend", &self.backend)
            .field("service", &self.service)
            .field("id", &self.id)
            .field("registered", &self.deregistration.is_some())
            .finish()
    }
}
