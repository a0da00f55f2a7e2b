//! [`RegistrationGuard`]: keeps an instance registered until dropped.

use std::fmt;
use std::task::{Context, Poll, Waker};

use super::BoxFuture;
use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::{Instance, InstanceId, ServiceName};

/// The deregistration a backend hands to a [`RegistrationGuard`].
type Deregistration =
    Box<dyn FnOnce() -> BoxFuture<'static, Result<(), DiscoveryError>> + Send + Sync>;

/// Keeps an instance registered: dropping it deregisters the instance.
///
/// Returned by [`Registrar::register`](super::Registrar::register). Call
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
