//! Event subscriptions shared by every layer.
//!
//! Each layer publishes what happens to it (state changes, calls, rejections)
//! on an [`EventStream`]. Publishing costs one atomic load when nobody is
//! subscribed, so events cost nothing on the hot path of an unobserved
//! service. Subscribers that fall behind by more than the layer's event
//! capacity miss the oldest events and are told how many
//! ([`RecvError::Lagged`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// The publishing side, owned by a layer's shared state.
#[derive(Debug)]
pub(crate) struct EventHub<E> {
    sender: broadcast::Sender<E>,
    subscribers: Arc<AtomicUsize>,
}

impl<E: Clone> EventHub<E> {
    /// `capacity` must be at least 1 (builders validate it).
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
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
            // An error only means every receiver was dropped meanwhile.
            let _ = self.sender.send(event());
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream<E> {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        EventStream {
            receiver: self.sender.subscribe(),
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
