//! [`ChaosLayer`]: wraps services with a shared chaos layer.

use std::fmt;

use tower_layer::Layer;

use super::service::ChaosService;
use super::state::Chaos;

/// Wraps services in a [`ChaosService`] sharing one [`Chaos`]: switching or
/// reconfiguring the chaos affects every service built by the layer.
pub struct ChaosLayer<Res> {
    chaos: Chaos<Res>,
}

impl<Res> fmt::Debug for ChaosLayer<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("chaos", &self.chaos)
            .finish()
    }
}

impl<Res> Clone for ChaosLayer<Res> {
    fn clone(&self) -> Self {
        Self {
            chaos: self.chaos.clone(),
        }
    }
}

impl<Res> ChaosLayer<Res> {
    /// A layer for `chaos`.
    pub fn new(chaos: Chaos<Res>) -> Self {
        Self { chaos }
    }

    /// The chaos shared by the services this layer builds.
    pub fn chaos(&self) -> &Chaos<Res> {
        &self.chaos
    }
}

impl<S, Res> Layer<S> for ChaosLayer<Res> {
    type Service = ChaosService<S, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        ChaosService::new(inner, self.chaos.clone())
    }
}
