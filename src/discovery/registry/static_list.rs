//! [`StaticRegistry`]: a fixed list of instances, replaceable at run time.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::watch_channel::snapshot_stream;
use super::{BoxFuture, Registry, WatchStream};
use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::Instance;

const BACKEND: &str = "static";

/// A read-only [`Registry`] of instances given by configuration: every
/// listed instance is healthy. Instances do not register with it (it is
/// no [`Registrar`](super::Registrar)); [`replace`](Self::replace) swaps
/// the whole list, and watches see the change.
///
/// ```
/// use palisade::discovery::{Instance, Registry, StaticRegistry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let registry = StaticRegistry::new([
///     Instance::builder("users", "users-a", "10.0.0.1:80").build()?,
///     Instance::builder("users", "users-b", "10.0.0.2:80").build()?,
///     Instance::builder("orders", "orders-a", "10.0.0.3:80").build()?,
/// ]);
/// assert_eq!(registry.healthy("users").await?.len(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StaticRegistry {
    instances: Arc<watch::Sender<Arc<[Instance]>>>,
}

impl StaticRegistry {
    /// A registry listing `instances` (of any services).
    pub fn new(instances: impl IntoIterator<Item = Instance>) -> Self {
        let instances = Self::sorted(instances);
        super::metrics::listed(BACKEND, &[], &instances);
        Self {
            instances: Arc::new(watch::Sender::new(instances)),
        }
    }

    /// Replaces the whole list.
    pub fn replace(&self, instances: impl IntoIterator<Item = Instance>) {
        let instances = Self::sorted(instances);
        tracing::info!(
            backend = BACKEND,
            instances = instances.len(),
            "static instance list replaced"
        );
        let new = Arc::clone(&instances);
        let old = self.instances.send_replace(instances);
        super::metrics::listed(BACKEND, &old, &new);
    }

    /// Every listed instance, of every service.
    pub fn instances(&self) -> Vec<Instance> {
        self.instances.borrow().to_vec()
    }

    fn sorted(instances: impl IntoIterator<Item = Instance>) -> Arc<[Instance]> {
        let mut instances: Vec<Instance> = instances.into_iter().collect();
        instances.sort_by(|a, b| (a.service(), a.id()).cmp(&(b.service(), b.id())));
        instances.dedup_by(|a, b| a.service() == b.service() && a.id() == b.id());
        Arc::from(instances)
    }
}

fn of_service(instances: &[Instance], service: &str) -> Vec<Instance> {
    instances
        .iter()
        .filter(|i| i.service().as_str() == service)
        .cloned()
        .collect()
}

impl Registry for StaticRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn healthy<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, DiscoveryError>> {
        let instances = of_service(&self.instances.borrow(), service);
        Box::pin(std::future::ready(Ok(instances)))
    }

    fn watch(&self, service: &str) -> WatchStream {
        let service = service.to_owned();
        snapshot_stream(self.instances.subscribe(), move |all: Arc<[Instance]>| {
            of_service(&all, &service)
        })
    }
}

impl fmt::Debug for StaticRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticRegistry")
            .field("instances", &self.instances.borrow().len())
            .finish()
    }
}
