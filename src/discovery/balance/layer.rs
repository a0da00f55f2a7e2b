//! [`BalanceLayer`]: turns a per-instance client factory into a [`Balance`].

use std::fmt;

use tower_layer::Layer;
use tower_service::Service;

use crate::discovery::instance::{Instance, ServiceName};
use crate::discovery::registry::Registry;
use crate::error::{BoxError, ConfigError};

use super::config::BalanceConfig;
use super::service::Balance;

/// Wraps a `MakeService` (a `tower::Service<Instance>` building one client
/// per instance) into a [`Balance`] over the healthy instances of a service.
///
/// `layer` starts the balancer's watch on the current tokio runtime: call
/// it inside one.
#[derive(Clone)]
pub struct BalanceLayer<R> {
    registry: R,
    service: ServiceName,
    config: BalanceConfig,
}

impl<R: Registry> BalanceLayer<R> {
    /// Balances `service`, found in `registry`, with `config`. Fails when
    /// `service` is not a valid [`ServiceName`].
    pub fn new(
        registry: R,
        service: impl AsRef<str>,
        config: BalanceConfig,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            registry,
            service: ServiceName::new(service)?,
            config,
        })
    }
}

impl<R, M> Layer<M> for BalanceLayer<R>
where
    R: Registry,
    M: Service<Instance> + Send + 'static,
    M::Response: Clone + Send + Sync + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
{
    type Service = Balance<M::Response>;

    fn layer(&self, make: M) -> Self::Service {
        Balance::with_name(
            self.service.clone(),
            &self.registry,
            make,
            self.config.clone(),
        )
    }
}

impl<R: fmt::Debug> fmt::Debug for BalanceLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("registry", &self.registry)
            .field("service", &self.service)
            .field("config", &self.config)
            .finish()
    }
}
