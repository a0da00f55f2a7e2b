//! [`Balance`]: picks an instance per call and sends the call to its client.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::discovery::error::NoHealthyInstance;
use crate::discovery::instance::{Instance, ServiceName};
use crate::discovery::registry::Registry;
use crate::error::{BoxError, ConfigError};
use crate::events::EventStream;

use super::config::{BalanceConfig, Picker};
use super::endpoint::Endpoint;
use super::future::{InFlight, ResponseFuture};
use super::metrics::{BalanceEvent, BalanceMetrics};
use super::picker::pick;
use super::shared::Shared;

/// A client that spreads calls over the healthy instances of a service.
///
/// It watches the service in a [`Registry`], builds one client `S` per
/// instance with a `MakeService` (a `tower::Service<Instance>`, e.g.
/// [`make_fn`](super::make_fn)) and drops it when the instance goes away.
/// Each call is sent to the instance its [`Picker`] chooses, skipping
/// ejected ones.
///
/// * `poll_ready` waits for the registry's first answer, picks an instance,
///   clones its client and polls that clone until it is ready; `call`
///   sends the request to it. The clients must be cheap to clone (a tonic
///   `Channel`, a hyper `Client`, a `Buffer`).
/// * With no instance to pick, `poll_ready` is ready and the call fails at
///   once with [`NoHealthyInstance`].
/// * A call counts as in flight on its instance until its response future
///   completes or is dropped.
/// * An error from the picked client's `poll_ready` is returned (and counts
///   as a failure for outlier detection); the next `poll_ready` picks again.
///
/// Clones share the instances, their load and the round-robin position.
/// The background watch stops when the last clone is dropped.
pub struct Balance<S, C = DefaultClassifier> {
    shared: Arc<Shared<S>>,
    classifier: C,
    track_latency: bool,
    rng: SmallRng,
    reserved: Option<Reserved<S>>,
}

enum Reserved<S> {
    /// The picked endpoint, and the time of the pick when latency is
    /// tracked and the endpoint was ready at once (the call's start time,
    /// saving a clock read).
    Endpoint(Endpoint<S>, Option<Instant>),
    NoInstance,
}

impl<S> Balance<S, DefaultClassifier>
where
    S: Clone + Send + Sync + 'static,
{
    /// Balances calls over the healthy instances of `service` in
    /// `registry`, building each instance's client with `make`.
    ///
    /// Starts the watch on the current tokio runtime: call it inside one
    /// (it panics otherwise, as `tower::buffer::Buffer::new` does). Fails
    /// when `service` is not a valid [`ServiceName`].
    pub fn new<R, M>(
        service: impl AsRef<str>,
        registry: &R,
        make: M,
        config: BalanceConfig,
    ) -> Result<Self, ConfigError>
    where
        R: Registry + ?Sized,
        M: Service<Instance, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send,
    {
        Ok(Self::with_name(
            ServiceName::new(service)?,
            registry,
            make,
            config,
        ))
    }

    pub(crate) fn with_name<R, M>(
        service: ServiceName,
        registry: &R,
        make: M,
        config: BalanceConfig,
    ) -> Self
    where
        R: Registry + ?Sized,
        M: Service<Instance, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send,
    {
        let track_latency = matches!(config.picker, Picker::PeakEwma { .. });
        let shared = Shared::new(service, config);
        shared.start(registry, make);
        Self {
            shared,
            classifier: DefaultClassifier,
            track_latency,
            rng: SmallRng::from_rng(&mut rand::rng()),
            reserved: None,
        }
    }
}

impl<S, C> Balance<S, C>
where
    S: Clone + Send + Sync + 'static,
{
    /// Classifies outcomes with `classifier` for outlier detection
    /// (default: [`DefaultClassifier`], every `Err` is a failure).
    pub fn with_classifier<C2>(self, classifier: C2) -> Balance<S, C2> {
        Balance {
            shared: self.shared,
            classifier,
            track_latency: self.track_latency,
            rng: self.rng,
            reserved: None,
        }
    }

    /// The balanced service.
    pub fn service(&self) -> &ServiceName {
        &self.shared.service
    }

    /// The balancer's configuration.
    pub fn config(&self) -> &BalanceConfig {
        &self.shared.config
    }

    /// A snapshot of the instances and their load.
    pub fn metrics(&self) -> BalanceMetrics {
        self.shared.metrics()
    }

    /// Subscribes to instances added, removed, ejected and returned.
    pub fn subscribe(&self) -> EventStream<BalanceEvent> {
        self.shared.events.subscribe()
    }
}

impl<S, C, Req> Service<Req> for Balance<S, C>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !matches!(self.reserved, Some(Reserved::Endpoint(..))) {
            if !self.shared.poll_initialized(cx) {
                return Poll::Pending;
            }
            let now = self.track_latency.then(Instant::now);
            let set = self.shared.set.load();
            let picker = self.shared.config.picker;
            self.reserved = Some(
                match pick(picker, &set, &self.shared.next, &mut self.rng, now) {
                    Some(endpoint) => Reserved::Endpoint(endpoint.clone(), now),
                    None => Reserved::NoInstance,
                },
            );
        }
        let Some(Reserved::Endpoint(endpoint, picked_at)) = &mut self.reserved else {
            // `call` fails at once with `NoHealthyInstance`.
            return Poll::Ready(Ok(()));
        };
        match endpoint.service.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => {
                // The call will start later than the pick: time it in `call`.
                *picked_at = None;
                Poll::Pending
            }
            Poll::Ready(Err(error)) => {
                endpoint
                    .stats
                    .record(crate::classify::Outcome::Failure { retryable: true });
                self.reserved = None;
                Poll::Ready(Err(error.into()))
            }
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        match self.reserved.take().expect(
            "Balance::call without a successful poll_ready: poll_ready must be called first",
        ) {
            Reserved::Endpoint(mut endpoint, picked_at) => {
                let started = match picked_at {
                    Some(at) => Some(at),
                    None => self.track_latency.then(Instant::now),
                };
                let call = InFlight::start(endpoint.stats, started, self.classifier.clone());
                ResponseFuture::called(endpoint.service.call(request), call)
            }
            Reserved::NoInstance => {
                tracing::debug!(service = %self.shared.service, "balancer: no healthy instance");
                ResponseFuture::no_instance(NoHealthyInstance::new(self.shared.service.clone()))
            }
        }
    }
}

impl<S, C: Clone> Clone for Balance<S, C> {
    /// A clone shares the instances but not a reservation made by
    /// `poll_ready`: it starts unreserved, as tower's `ConcurrencyLimit`.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
            track_latency: self.track_latency,
            rng: SmallRng::from_rng(&mut rand::rng()),
            reserved: None,
        }
    }
}

impl<S, C> fmt::Debug for Balance<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}
