//! [`RegistryDiscover`]: any registry's watch as a `tower::discover::Discover`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tower::discover::Change;
use tower_service::Service;

use crate::error::{BoxError, ConfigError};

use super::diff::InstanceChange;
use super::instance::{Instance, InstanceId, ServiceName};
use super::registry::{InstanceSet, InstanceSetStream, Registry};

pin_project! {
    /// The healthy instances of a service as a stream of
    /// `tower::discover::Change<InstanceId, S>`, which makes it a
    /// [`tower::discover::Discover`], so tower's own balancer
    /// (`tower::balance::p2c::Balance`) can balance over any [`Registry`].
    ///
    /// Each instance that appears is [`Change::Insert`]ed with a client
    /// built by `make` (a `tower::Service<Instance>`, e.g.
    /// [`make_fn`](super::make_fn)); one that changes is inserted again
    /// with a new client (tower replaces the old one); one that goes is
    /// [`Change::Remove`]d. Registry errors are logged and skipped (tower's
    /// balancer treats a `Discover` error as fatal); so are instances whose
    /// client cannot be built (they are tried again when the registry next
    /// reports them). The stream ends when the registry is closed.
    ///
    /// It watches with [`Registry::watch_sets`] and diffs successive sets
    /// with [`InstanceSet::changes_to`]: with a registry that keeps its
    /// sets persistent ([`InMemoryRegistry`](super::InMemoryRegistry)), a
    /// change of `k` instances costs O(k log n), not O(n).
    ///
    /// ```
    /// use palisade::discovery::{make_fn, Instance, RegistryDiscover, StaticRegistry};
    /// use tower::balance::p2c::Balance;
    /// use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    /// use tower::{service_fn, Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade::BoxError> {
    /// let registry = StaticRegistry::new([
    ///     Instance::builder("users", "a", "10.0.0.1:80").build()?,
    ///     Instance::builder("users", "b", "10.0.0.2:80").build()?,
    /// ]);
    /// let make = make_fn(|instance: &Instance| {
    ///     let id = instance.id().to_string();
    ///     Ok::<_, palisade::BoxError>(service_fn(move |_: ()| {
    ///         let id = id.clone();
    ///         async move { Ok::<_, palisade::BoxError>(id) }
    ///     }))
    /// });
    /// let discover = RegistryDiscover::new(&registry, "users", make)?;
    /// let mut users = Balance::new(PendingRequestsDiscover::new(discover, CompleteOnResponse::default()));
    /// let id = users.ready().await?.call(()).await?;
    /// assert!(id == "a" || id == "b");
    /// # Ok(())
    /// # }
    /// ```
    pub struct RegistryDiscover<M>
    where
        M: Service<Instance>,
    {
        service: ServiceName,
        stream: InstanceSetStream,
        make: M,
        // The instances inserted (or being built), derived from the
        // registry's last set so that diffing the next one skips what the
        // two share.
        current: InstanceSet,
        pending: VecDeque<InstanceChange>,
        making: Option<(Instance, Pin<Box<M::Future>>)>,
    }
}

impl<M> RegistryDiscover<M>
where
    M: Service<Instance>,
{
    /// Watches `service` in `registry`, building clients with `make`.
    /// Fails when `service` is not a valid [`ServiceName`].
    pub fn new<R>(registry: &R, service: impl AsRef<str>, make: M) -> Result<Self, ConfigError>
    where
        R: Registry + ?Sized,
    {
        let service = ServiceName::new(service)?;
        Ok(Self {
            stream: registry.watch_sets(service.as_str()),
            service,
            make,
            current: InstanceSet::new(),
            pending: VecDeque::new(),
            making: None,
        })
    }

    /// The watched service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
}

impl<M> Stream for RegistryDiscover<M>
where
    M: Service<Instance>,
    M::Error: Into<BoxError>,
{
    type Item = Result<Change<InstanceId, M::Response>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        loop {
            if let Some((instance, future)) = this.making {
                let result = ready!(future.as_mut().poll(cx));
                let instance = instance.clone();
                *this.making = None;
                match result {
                    Ok(client) => {
                        return Poll::Ready(Some(Ok(Change::Insert(
                            instance.id().clone(),
                            client,
                        ))));
                    }
                    Err(error) => {
                        let error: BoxError = error.into();
                        tracing::warn!(service = %this.service, id = %instance.id(), %error, "discover: building the instance's client failed");
                        this.current.remove(instance.id().as_str());
                        // An updated instance keeps no stale client.
                        return Poll::Ready(Some(Ok(Change::Remove(instance.id().clone()))));
                    }
                }
            }
            if let Some(change) = this.pending.pop_front() {
                match change {
                    InstanceChange::Removed(instance) => {
                        return Poll::Ready(Some(Ok(Change::Remove(instance.id().clone()))));
                    }
                    InstanceChange::Added(instance) | InstanceChange::Updated(instance) => {
                        match this.make.poll_ready(cx) {
                            Poll::Pending => {
                                this.pending.push_front(InstanceChange::Added(instance));
                                return Poll::Pending;
                            }
                            Poll::Ready(Err(error)) => {
                                let error: BoxError = error.into();
                                tracing::warn!(service = %this.service, id = %instance.id(), %error, "discover: the client factory failed");
                                this.current.remove(instance.id().as_str());
                                return Poll::Ready(Some(Ok(Change::Remove(
                                    instance.id().clone(),
                                ))));
                            }
                            Poll::Ready(Ok(())) => {
                                let future = Box::pin(this.make.call(instance.clone()));
                                *this.making = Some((instance, future));
                                continue;
                            }
                        }
                    }
                }
            }
            match ready!(this.stream.as_mut().poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(error)) => {
                    tracing::warn!(service = %this.service, %error, "discover: registry watch error; keeping the last instances");
                }
                Some(Ok(snapshot)) => {
                    this.pending.extend(this.current.changes_to(&snapshot));
                    *this.current = snapshot;
                }
            }
        }
    }
}

impl<M> fmt::Debug for RegistryDiscover<M>
where
    M: Service<Instance>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryDiscover")
            .field("service", &self.service)
            .field("instances", &self.current.len())
            .finish_non_exhaustive()
    }
}
