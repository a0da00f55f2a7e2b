//! Event subscriptions shared by every layer.
//!
//! Each layer publishes what happens to it (state changes, calls, rejections)
//! on an [`EventStream`]. Publishing costs one atomic load when nobody is
//! subscribed, so events cost nothing on the hot path of an unobserved
//! service; and a layer allocates its event buffer (`event_capacity` slots)
//! only on its first `subscribe()`, so an unobserved breaker, balancer or
//! bulkhead holds none (a `KeyedCircuitBreakerLayer` may hold thousands of
//! breakers). Subscribers that fall behind by more than the layer's event
//! capacity miss the oldest events and are told how many
//! ([`RecvError::Lagged`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

pub use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::ConfigError;

/// The largest number of events a layer may buffer per subscriber.
pub const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// Checks a builder's `event_capacity`: 1 to [`MAX_EVENT_CAPACITY`].
pub(crate) fn check_event_capacity(
    component: &'static str,
    capacity: usize,
) -> Result<(), ConfigError> {
    if (1..=MAX_EVENT_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(ConfigError::new(
            component,
            "event_capacity",
            format!("must be 1 to {MAX_EVENT_CAPACITY}, got {capacity}"),
        ))
    }
}

/// The publishing side, owned by a layer's shared state. The channel, and
/// with it the buffer of `capacity` events, is made by the first
/// [`subscribe`](Self::subscribe).
#[derive(Debug)]
pub(crate) struct EventHub<E> {
    sender: OnceLock<broadcast::Sender<E>>,
    capacity: usize,
    subscribers: Arc<AtomicUsize>,
}

impl<E: Clone> EventHub<E> {
    /// `capacity` must be at least 1 (builders validate it). Allocates no
    /// event buffer.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sender: OnceLock::new(),
            capacity: capacity.max(1),
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens; check before building an event.
    #[inline]
    pub(crate) fn is_observed(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) != 0
    }

    /// Publishes `event` to the current subscribers, if any.
    #[inline]
    pub(crate) fn publish_with(&self, event: impl FnOnce() -> E) {
        if self.is_observed() {
            if let Some(sender) = self.sender.get() {
                // An error only means every receiver was dropped meanwhile.
                let _ = sender.send(event());
            }
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream<E> {
        let sender = self
            .sender
            .get_or_init(|| broadcast::channel(self.capacity).0);
        // Count the subscriber once its receiver exists, so that a publish
        // that sees the count finds the channel.
        let receiver = sender.subscribe();
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        EventStream {
            receiver,
            subscribers: Arc::clone(&self.subscribers),
        }
    }
}

/// A subscription to a layer's events; receives every event published after
/// it was created. Dropping it unsubscribes.
#[derive(Debug)]
pub struct EventStream<E> {
    receiver: broadcast::Receiver<E>,
    subscribers: Arc<AtomicUsize>,
}

impl<E: Clone> EventStream<E> {
    /// Waits for the next event.
    ///
    /// Fails with [`RecvError::Lagged`] if this subscriber fell behind and
    /// events were dropped (the next call returns the oldest one kept), and
    /// with [`RecvError::Closed`] once the layer is gone.
    pub async fn recv(&mut self) -> Result<E, RecvError> {
        self.receiver.recv().await
    }

    /// Returns the next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<E, TryRecvError> {
        self.receiver.try_recv()
    }

    /// Drains every event waiting now, skipping over any lag.
    pub fn drain(&mut self) -> Vec<E> {
        let mut events = Vec::new();
        loop {
            match self.receiver.try_recv() {
                Ok(event) => events.push(event),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => return events,
            }
        }
    }
}

impl<E> Drop for EventStream<E> {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}
