//! [`CoalesceLayer`]: wraps services so that concurrent requests for the
//! same key share one call.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;

use super::service::CoalesceService;
use super::state::{Coalesce, Flights};

/// Wraps services in a [`CoalesceService`]; built by
/// [`Coalesce::layer`] with the function that extracts a request's key.
///
/// Each service the layer builds gets its own map of calls in flight
/// (shared by its clones); every map counts against the handle's
/// `max_in_flight_keys` and reports to the handle's metrics and events.
pub struct CoalesceLayer<Req, K, F> {
    coalesce: Coalesce,
    key: F,
    _request: PhantomData<fn(&Req) -> K>,
}

impl<Req, K, F> CoalesceLayer<Req, K, F> {
    pub(crate) fn new(coalesce: Coalesce, key: F) -> Self {
        Self {
            coalesce,
            key,
            _request: PhantomData,
        }
    }

    /// The handle whose counters and events the services report to.
    pub fn coalesce(&self) -> &Coalesce {
        &self.coalesce
    }
}

impl<Req, K, F: Clone> Clone for CoalesceLayer<Req, K, F> {
    fn clone(&self) -> Self {
        Self::new(self.coalesce.clone(), self.key.clone())
    }
}

impl<Req, K, F> fmt::Debug for CoalesceLayer<Req, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("coalesce", &self.coalesce.name())
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, F> Layer<S> for CoalesceLayer<Req, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
    F: Clone,
{
    type Service = CoalesceService<S, Req, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        CoalesceService::new(
            inner,
            self.key.clone(),
            Arc::new(Flights::new(self.coalesce.clone())),
        )
    }
}
