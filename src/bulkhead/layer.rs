//! [`BulkheadLayer`]: wraps services with a shared bulkhead.

use tower_layer::Layer;

use super::service::BulkheadService;
use super::state::Bulkhead;

/// Wraps services in a [`BulkheadService`] sharing one [`Bulkhead`]: every
/// service built by the layer, and every clone, draws from the same permits.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer for `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }

    /// The bulkhead shared by the services this layer builds.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService::new(inner, self.bulkhead.clone())
    }
}
