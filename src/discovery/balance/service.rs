//! [`Balance`]: picks an instance per call and sends the call to its client.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use rand::Rng;
use rand::rngs::SmallRng;
use tower_service::Service;

use crate::circuit_breaker::{BreakerOpen, CircuitBreaker, Reservation};
use crate::classify::{Classify, DefaultClassifier, Outcome};
use crate::discovery::error::NoHealthyInstance;
use crate::discovery::instance::{Instance, ServiceName};
use crate::discovery::registry::Registry;
use crate::error::{BoxError, ConfigError};
use crate::events::EventStream;

use super::config::{BalanceConfig, Picker};
use super::endpoint::{Endpoint, EndpointSet};
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
///   as a failure for outlier detection and the instance's circuit
///   breaker); the next `poll_ready` picks again.
/// * With the [`circuit_breaker`](super::BalanceConfigBuilder::circuit_breaker)
///   option, `poll_ready` asks the picked instance's breaker for the call.
///   If it rejects, the picker picks once more, then every other instance
///   is tried from a random one on, and the first whose breaker admits the
///   call gets it (an OPEN breaker whose wait is over admits it as its
///   HALF_OPEN trial). Breakers are asked without counting a rejection
///   unless every one rejects: then `poll_ready` is ready and the call
///   fails at once with the picked instance's [`BreakerOpen`].
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
    /// The picked endpoint, the time of the pick (a reading of the call
    /// clock) when latency is tracked and the endpoint was ready at once
    /// (the call's start time, saving a clock read), and its breaker's
    /// reservation if it has a breaker.
    Endpoint(Endpoint<S>, Option<u64>, Option<Reservation>),
    NoInstance,
    /// Every instance's breaker rejected the call.
    Rejected(BreakerOpen),
}

/// Reserves `endpoint` if its breaker admits a call now (asked quietly
/// first, so that a breaker about to reject counts no rejection).
#[inline]
fn reserve_if_admitting<S: Clone>(endpoint: &Endpoint<S>, now: Option<u64>) -> Option<Reserved<S>> {
    let reservation = match &endpoint.stats.breaker {
        Some(breaker) => Some(Reservation::take_if_admitting(breaker)?),
        None => None,
    };
    Some(Reserved::Endpoint(endpoint.clone(), now, reservation))
}

/// With circuit breakers: `picked` if its breaker admits the call, else
/// another pick, else the first other instance (from a random one on)
/// whose breaker admits it, else the picked instance's rejection.
fn reserve_any<S: Clone>(
    picked: &Endpoint<S>,
    set: &EndpointSet<S>,
    picker: Picker,
    next: &std::sync::atomic::AtomicUsize,
    rng: &mut SmallRng,
    now: Option<u64>,
) -> Reserved<S> {
    if let Some(reserved) = reserve_if_admitting(picked, now) {
        return reserved;
    }
    let same = |e: &Endpoint<S>| Arc::ptr_eq(&e.stats, &picked.stats);
    if let Some(again) = pick(picker, set, next, rng) {
        if !same(again) {
            if let Some(reserved) = reserve_if_admitting(again, now) {
                return reserved;
            }
        }
    }
    let n = set.available.len();
    let start = rng.random_range(0..n);
    for i in 0..n {
        let endpoint = &set.available[(start + i) % n];
        if !same(endpoint) {
            if let Some(reserved) = reserve_if_admitting(endpoint, now) {
                return reserved;
            }
        }
    }
    // Every breaker rejects: ask the picked one for real, for its rejection
    // (counted and announced by the breaker) or, if it just changed its
    // mind, its reservation.
    let Some(breaker) = &picked.stats.breaker else {
        return Reserved::Endpoint(picked.clone(), now, None);
    };
    match Reservation::take(breaker) {
        Ok(reservation) => Reserved::Endpoint(picked.clone(), now, Some(reservation)),
        Err(open) => Reserved::Rejected(open),
    }
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
            rng: shared.new_rng(),
            shared,
            classifier: DefaultClassifier,
            track_latency,
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

    /// The circuit breaker of instance `id`, with the
    /// [`circuit_breaker`](super::BalanceConfigBuilder::circuit_breaker)
    /// option: for its metrics and events (transitions, rejections). The
    /// balancer drops its own handle when the instance leaves.
    pub fn circuit_breaker(&self, id: &str) -> Option<CircuitBreaker> {
        self.shared.circuit_breaker(id)
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
            let now = self.track_latency.then(|| self.shared.clock.now_nanos());
            let set = self.shared.set.load();
            let picker = self.shared.config.picker;
            let next = &self.shared.next;
            self.reserved = Some(match pick(picker, &set, next, &mut self.rng) {
                Some(endpoint) if endpoint.stats.breaker.is_none() => {
                    Reserved::Endpoint(endpoint.clone(), now, None)
                }
                Some(endpoint) => reserve_any(endpoint, &set, picker, next, &mut self.rng, now),
                None => Reserved::NoInstance,
            });
        }
        let Some(Reserved::Endpoint(endpoint, picked_at, reservation)) = &mut self.reserved else {
            // `call` fails at once with `NoHealthyInstance` or `BreakerOpen`.
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
                let failure = Outcome::Failure { retryable: true };
                endpoint.stats.record(failure);
                if let Some(reservation) = reservation.take() {
                    reservation.start().record(failure);
                }
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
            Reserved::Endpoint(mut endpoint, picked_at, reservation) => {
                let started = match picked_at {
                    Some(at) => Some(at),
                    None => self.track_latency.then(|| self.shared.clock.now_nanos()),
                };
                let permit = reservation.map(Reservation::start);
                let call =
                    InFlight::start(endpoint.stats, started, self.classifier.clone(), permit);
                ResponseFuture::called(endpoint.service.call(request), call)
            }
            Reserved::NoInstance => {
                tracing::debug!(service = %self.shared.service, "balancer: no healthy instance");
                ResponseFuture::no_instance(NoHealthyInstance::new(self.shared.service.clone()))
            }
            Reserved::Rejected(open) => {
                tracing::debug!(service = %self.shared.service, breaker = open.breaker(), "balancer: every instance's circuit breaker rejected the call");
                ResponseFuture::rejected(open)
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
            rng: self.shared.new_rng(),
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
