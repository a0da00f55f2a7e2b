//! Event subscriptions shared by every layer.
//!
//! Each layer publishes what happens to it (state changes, calls, rejections)
//! on an [`EventStream`]. Publishing costs one atomic load when nobody is
//! subscribed, so events cost nothing on the hot path of an unobserved
//! service; and a layer allocates an event channel only on `subscribe()`, so
//! an unobserved breaker, balancer or bulkhead holds none (a
//! `KeyedCircuitBreakerLayer` may hold thousands of breakers).
//!
//! # A subscriber that falls behind
//!
//! Each subscriber has a buffer of the layer's `event_capacity` events of its
//! own. While it is full, the events published are **dropped for that
//! subscriber** (the newest, not the ones it holds) and counted: it receives
//! the events it holds, in order, then [`RecvError::Lagged`]`(n)` (or
//! [`TryRecvError::Lagged`]) telling how many it missed there, then the
//! events published once it had taken one and made room. Other subscribers
//! are not affected. A subscriber that stops draining therefore holds the
//! oldest `event_capacity` events, not the newest: after a `Lagged`, read
//! the layer's current state or metrics if the latest state matters.
//!
//! Dropping the newest event rather than overwriting the oldest is what makes
//! an idle subscriber cheap: once its buffer is full, an event published to
//! it is not even built, only counted (one atomic operation), so a layer with
//! per-call events (a breaker's
//! [`subscribe_all`](crate::circuit_breaker::CircuitBreaker::subscribe_all))
//! keeps its fast path while nobody drains.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError as ChannelEmpty;

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

/// [`Hub::room`]: `with_room << ROOM_SHIFT | missed`, where `with_room` is
/// the number of subscribers whose buffer is not known to be full, and
/// `missed` (modulo 2^40) the number of events published while every
/// subscriber's buffer was full, which none of them was sent.
const ROOM_SHIFT: u32 = 40;
const ONE_WITH_ROOM: u64 = 1 << ROOM_SHIFT;
const MISSED_MASK: u64 = ONE_WITH_ROOM - 1;

/// The publishing side, owned by a layer's shared state. Each subscriber
/// gets a channel of `capacity` events of its own, made by
/// [`subscribe`](Self::subscribe).
pub(crate) struct EventHub<E> {
    hub: Arc<Hub<E>>,
}

/// What the publishing side shares with its subscribers' streams.
struct Hub<E> {
    capacity: usize,
    /// The number of subscribers: publishing is one load of it while it is 0.
    subscribers: AtomicUsize,
    /// See [`ROOM_SHIFT`]. While `with_room` is 0, publishing counts an event
    /// in `missed` and builds nothing; a subscriber that becomes full notes
    /// `missed` then, and when it has room again the difference is what it
    /// missed meanwhile. Changes to `with_room` are made under `senders`'
    /// lock, with the change of the subscriber's `full` that they count.
    room: AtomicU64,
    /// Every subscriber's sending side. Publishing while someone has room,
    /// subscribing, unsubscribing and a full subscriber's taking an event
    /// lock it. Emptied when the layer is dropped, which closes the streams.
    senders: Mutex<Vec<Subscriber<E>>>,
}

struct Subscriber<E> {
    /// Unbounded: the hub bounds it with `SubscriberState::queued`, which
    /// spares each event received the waiter lock of a bounded channel's
    /// semaphore.
    sender: mpsc::UnboundedSender<Delivery<E>>,
    state: Arc<SubscriberState>,
}

/// One subscriber's account of what it holds and missed. Written under the
/// hub's lock only (but `queued`, which its stream counts down); atomics so
/// that its stream may read them without the lock.
#[derive(Default)]
struct SubscriberState {
    /// Its buffer was found full: nothing is sent to it until it takes an
    /// event.
    full: AtomicBool,
    /// While `full`: the hub's `missed` count when it became full.
    missed_base: AtomicU64,
    /// Events it missed that are not reported yet: reported with the next
    /// event sent to it, or by its stream when its buffer is empty.
    lagged: AtomicU64,
    /// Events in its channel: it is full at the hub's `capacity`. Counted
    /// up when one is sent, down by its stream when one is taken.
    queued: AtomicUsize,
}

/// An event as a subscriber's channel carries it: `lagged_before` events
/// were missed just before it.
struct Delivery<E> {
    lagged_before: u64,
    event: E,
}

impl<E: Clone> EventHub<E> {
    /// `capacity` must be at least 1 (builders validate it). Allocates the
    /// hub's counters, no event buffer.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            hub: Arc::new(Hub {
                capacity: capacity.max(1),
                subscribers: AtomicUsize::new(0),
                room: AtomicU64::new(0),
                senders: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Whether anyone listens; check before building an event.
    #[inline]
    pub(crate) fn is_observed(&self) -> bool {
        self.hub.subscribers.load(Relaxed) != 0
    }

    /// For a caller that found the hub [observed](Self::is_observed) and
    /// would publish an event now: when every subscriber's buffer is full,
    /// counts the event as missed by each of them, exactly as
    /// [`publish_with`](Self::publish_with) would, and returns `true`; the
    /// event then need not be built. `false`: publish it.
    #[inline]
    pub(crate) fn missed_by_all(&self) -> bool {
        self.hub.miss_if_all_full()
    }

    /// Publishes `event` to the current subscribers, if any. `event` is not
    /// called unless a subscriber has room for it.
    #[inline]
    pub(crate) fn publish_with(&self, event: impl FnOnce() -> E) {
        if self.is_observed() && !self.hub.miss_if_all_full() {
            self.hub.send(event());
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream<E> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let state = Arc::new(SubscriberState::default());
        {
            let mut senders = self.hub.senders.lock();
            senders.push(Subscriber {
                sender,
                state: Arc::clone(&state),
            });
            // Counted once its channel is listed, so that a publish that
            // sees the count finds the channel.
            self.hub.room.fetch_add(ONE_WITH_ROOM, Relaxed);
            self.hub.subscribers.fetch_add(1, Relaxed);
        }
        EventStream {
            receiver,
            state,
            hub: Arc::clone(&self.hub),
            held: None,
        }
    }
}

impl<E> Drop for EventHub<E> {
    /// The layer is gone: its subscribers' channels close (each stream
    /// still delivers what it holds, then reports `Closed`).
    fn drop(&mut self) {
        let senders = std::mem::take(&mut *self.hub.senders.lock());
        drop(senders);
    }
}

impl<E> fmt::Debug for EventHub<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHub")
            .field("capacity", &self.hub.capacity)
            .field("subscribers", &self.hub.subscribers.load(Relaxed))
            .finish()
    }
}

impl<E> Hub<E> {
    /// When no subscriber has room, counts one missed event and returns
    /// `true`.
    #[inline]
    fn miss_if_all_full(&self) -> bool {
        let mut room = self.room.load(Relaxed);
        while room >> ROOM_SHIFT == 0 {
            // `with_room` is 0, so `room` is the missed count alone.
            match self
                .room
                .compare_exchange_weak(room, (room + 1) & MISSED_MASK, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => room = actual,
            }
        }
        false
    }

    /// Under the lock: a subscriber marked full takes events again; what it
    /// missed while full is added to its `lagged`.
    fn reopen_locked(&self, state: &SubscriberState) {
        if state.full.load(Relaxed) {
            let before = self.room.fetch_add(ONE_WITH_ROOM, Relaxed);
            let missed = before.wrapping_sub(state.missed_base.load(Relaxed)) & MISSED_MASK;
            state.lagged.fetch_add(missed, Relaxed);
            state.full.store(false, Relaxed);
        }
    }
}

impl<E: Clone> Hub<E> {
    /// Sends `event` to every subscriber with room, in the order of the
    /// lock: every subscriber receives events in one order.
    #[inline(never)]
    fn send(&self, event: E) {
        let senders = self.senders.lock();
        if let Some((last, others)) = senders.split_last() {
            for subscriber in others {
                self.offer(subscriber, || event.clone());
            }
            self.offer(last, || event);
        }
    }

    fn offer(&self, subscriber: &Subscriber<E>, event: impl FnOnce() -> E) {
        let state = &*subscriber.state;
        let lagged_before = state.lagged.load(Relaxed);
        if state.full.load(Relaxed) {
            state.lagged.store(lagged_before + 1, Relaxed);
            return;
        }
        if state.queued.load(Acquire) >= self.capacity {
            self.mark_full_locked(state);
            return;
        }
        let delivery = Delivery {
            lagged_before,
            event: event(),
        };
        // Counted before it is sent, so the stream that takes it never
        // counts below zero.
        state.queued.fetch_add(1, Relaxed);
        if subscriber.sender.send(delivery).is_ok() {
            state.lagged.store(0, Relaxed);
        } else {
            // Its stream is being dropped, and unlists it.
            state.queued.fetch_sub(1, Relaxed);
        }
    }

    /// A subscriber's buffer is full: it misses this event, and every
    /// event until its stream takes one.
    fn mark_full_locked(&self, state: &SubscriberState) {
        let before = self.room.fetch_sub(ONE_WITH_ROOM, Relaxed);
        state.missed_base.store(before & MISSED_MASK, Relaxed);
        state.lagged.fetch_add(1, Relaxed);
        state.full.store(true, Release);
    }
}

/// A subscription to a layer's events; receives every event published after
/// it was created, in order, unless its buffer is full (see
/// [the module's documentation](self#a-subscriber-that-falls-behind)).
/// Dropping it unsubscribes.
pub struct EventStream<E> {
    receiver: mpsc::UnboundedReceiver<Delivery<E>>,
    state: Arc<SubscriberState>,
    hub: Arc<Hub<E>>,
    /// The event that followed a gap, held while the gap is reported.
    held: Option<E>,
}

impl<E> EventStream<E> {
    /// Waits for the next event.
    ///
    /// Fails with [`RecvError::Lagged`]`(n)` where this subscriber missed `n`
    /// events because its buffer was full (the next call returns the first
    /// event published after it made room), and with [`RecvError::Closed`]
    /// once the layer is gone and every event it holds was received.
    /// Cancel safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Result<E, RecvError> {
        if let Some(event) = self.held.take() {
            return Ok(event);
        }
        let delivery = match self.receiver.try_recv() {
            Ok(delivery) => delivery,
            Err(ChannelEmpty::Empty) => {
                let lagged = self.take_lag();
                if lagged != 0 {
                    return Err(RecvError::Lagged(lagged));
                }
                match self.receiver.recv().await {
                    Some(delivery) => delivery,
                    None => return Err(self.closed(RecvError::Lagged, RecvError::Closed)),
                }
            }
            Err(ChannelEmpty::Disconnected) => {
                return Err(self.closed(RecvError::Lagged, RecvError::Closed));
            }
        };
        self.taken(delivery).map_err(RecvError::Lagged)
    }

    /// Returns the next event if one is waiting; errors as
    /// [`recv`](Self::recv)'s, and [`TryRecvError::Empty`] when none is.
    pub fn try_recv(&mut self) -> Result<E, TryRecvError> {
        if let Some(event) = self.held.take() {
            return Ok(event);
        }
        match self.receiver.try_recv() {
            Ok(delivery) => self.taken(delivery).map_err(TryRecvError::Lagged),
            // Without the lock when nothing is to be reported: a mark made
            // meanwhile is seen by the next call (`recv`, which then waits,
            // always takes the lock).
            Err(ChannelEmpty::Empty)
                if !self.state.full.load(Acquire) && self.state.lagged.load(Acquire) == 0 =>
            {
                Err(TryRecvError::Empty)
            }
            Err(ChannelEmpty::Empty) => match self.take_lag() {
                0 => Err(TryRecvError::Empty),
                lagged => Err(TryRecvError::Lagged(lagged)),
            },
            Err(ChannelEmpty::Disconnected) => {
                Err(self.closed(TryRecvError::Lagged, TryRecvError::Closed))
            }
        }
    }

    /// Drains every event waiting now, skipping over any lag.
    pub fn drain(&mut self) -> Vec<E> {
        let mut events = Vec::new();
        loop {
            match self.try_recv() {
                Ok(event) => events.push(event),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => return events,
            }
        }
    }

    /// An event taken from the channel: made room, so a full subscriber
    /// takes events again; a gap before it is reported first.
    fn taken(&mut self, delivery: Delivery<E>) -> Result<E, u64> {
        self.state.queued.fetch_sub(1, Release);
        if self.state.full.load(Acquire) {
            let _senders = self.hub.senders.lock();
            self.hub.reopen_locked(&self.state);
        }
        if delivery.lagged_before == 0 {
            Ok(delivery.event)
        } else {
            self.held = Some(delivery.event);
            Err(delivery.lagged_before)
        }
    }

    /// With the channel empty: the events missed since the last one
    /// received, reported now (none may follow for a while). Also makes
    /// sure the subscriber is not left marked full with an empty buffer.
    fn take_lag(&self) -> u64 {
        let _senders = self.hub.senders.lock();
        self.hub.reopen_locked(&self.state);
        self.state.lagged.swap(0, Relaxed)
    }

    /// The layer is gone and the channel drained: a last lag, then closed.
    fn closed<R>(&self, lagged: impl FnOnce(u64) -> R, closed: R) -> R {
        match self.take_lag() {
            0 => closed,
            n => lagged(n),
        }
    }
}

impl<E> fmt::Debug for EventStream<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("capacity", &self.hub.capacity)
            .field("waiting", &self.state.queued.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl<E> Drop for EventStream<E> {
    fn drop(&mut self) {
        let removed = {
            let mut senders = self.hub.senders.lock();
            let position = senders
                .iter()
                .position(|subscriber| Arc::ptr_eq(&subscriber.state, &self.state));
            position.map(|position| {
                if !self.state.full.load(Relaxed) {
                    self.hub.room.fetch_sub(ONE_WITH_ROOM, Relaxed);
                }
                self.hub.subscribers.fetch_sub(1, Relaxed);
                senders.swap_remove(position)
            })
        };
        drop(removed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Publishes `events` in turn.
    fn publish(hub: &EventHub<u32>, events: impl IntoIterator<Item = u32>) {
        for event in events {
            hub.publish_with(|| event);
        }
    }

    /// Everything `stream` holds now, with its gaps as `Err(n)`.
    fn received(stream: &mut EventStream<u32>) -> Vec<Result<u32, u64>> {
        let mut received = Vec::new();
        loop {
            match stream.try_recv() {
                Ok(event) => received.push(Ok(event)),
                Err(TryRecvError::Lagged(n)) => received.push(Err(n)),
                Err(_) => return received,
            }
        }
    }

    #[test]
    fn a_draining_subscriber_receives_every_event_in_order() {
        let hub = EventHub::new(4);
        let mut stream = hub.subscribe();
        let mut received_events = Vec::new();
        // Drained every round: never more than 3 waiting.
        for round in 0..10 {
            publish(&hub, round * 3..round * 3 + 3);
            received_events.extend(received(&mut stream));
        }
        assert_eq!(received_events, (0..30).map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_subscriber_keeps_the_oldest_events_and_reports_the_newest_missed() {
        let hub = EventHub::new(4);
        let mut stream = hub.subscribe();
        publish(&hub, 0..10);
        assert_eq!(
            received(&mut stream),
            [Ok(0), Ok(1), Ok(2), Ok(3), Err(6)],
            "the gap is reported once the held events are taken"
        );
        assert_eq!(stream.try_recv(), Err(TryRecvError::Empty));
        publish(&hub, 10..12);
        assert_eq!(received(&mut stream), [Ok(10), Ok(11)], "no gap since");
    }

    #[test]
    fn the_gap_comes_between_the_held_events_and_those_published_after_room_was_made() {
        let hub = EventHub::new(2);
        let mut stream = hub.subscribe();
        publish(&hub, 0..4); // 2 and 3 are missed
        assert_eq!(stream.try_recv(), Ok(0)); // makes room
        publish(&hub, [4]);
        assert_eq!(received(&mut stream), [Ok(1), Err(2), Ok(4)]);
    }

    #[test]
    fn a_full_subscriber_costs_no_event_built() {
        let hub = EventHub::new(3);
        let mut stream = hub.subscribe();
        let built = AtomicU32::new(0);
        for event in 0..100 {
            hub.publish_with(|| {
                built.fetch_add(1, Relaxed);
                event
            });
        }
        assert_eq!(
            built.load(Relaxed),
            4,
            "built: the events that fit, and the one that found the buffer full"
        );
        assert_eq!(received(&mut stream), [Ok(0), Ok(1), Ok(2), Err(97)]);
    }

    #[test]
    fn missed_by_all_counts_as_a_publish_would() {
        let hub = EventHub::new(2);
        let mut stream = hub.subscribe();
        assert!(!hub.missed_by_all(), "it has room");
        publish(&hub, 0..3); // fills it, 2 is missed
        for _ in 0..5 {
            assert!(hub.missed_by_all());
        }
        assert_eq!(received(&mut stream), [Ok(0), Ok(1), Err(6)]);
        assert!(!hub.missed_by_all(), "room again");
    }

    #[test]
    fn a_lagging_subscriber_does_not_slow_down_or_disturb_another() {
        let hub = EventHub::new(3);
        let mut idle = hub.subscribe();
        let mut draining = hub.subscribe();
        let mut got = Vec::new();
        for round in 0..5 {
            publish(&hub, round * 2..round * 2 + 2);
            got.extend(received(&mut draining));
        }
        assert_eq!(got, (0..10).map(Ok).collect::<Vec<_>>());
        // The idle one's misses were counted while the other had room.
        assert_eq!(received(&mut idle), [Ok(0), Ok(1), Ok(2), Err(7)]);

        // Both full: misses are counted once for all, and still exactly.
        publish(&hub, 10..16); // `draining` holds 10..13 and misses 3
        publish(&hub, 16..20); // `idle` holds 10..13 and misses 3 + 4
        assert_eq!(received(&mut draining), [Ok(10), Ok(11), Ok(12), Err(7)]);
        assert_eq!(received(&mut idle), [Ok(10), Ok(11), Ok(12), Err(7)]);
    }

    #[test]
    fn misses_while_every_subscriber_is_full_count_for_those_full_then() {
        let hub = EventHub::new(1);
        let mut first = hub.subscribe();
        let mut second = hub.subscribe();
        publish(&hub, [0, 1]); // both hold 0, both miss 1
        assert_eq!(first.try_recv(), Ok(0)); // `first` has room again
        publish(&hub, [2, 3, 4]); // `first` holds 2 (lag 1 before it), misses 3, 4
        assert_eq!(received(&mut first), [Err(1), Ok(2), Err(2)]);
        assert_eq!(received(&mut second), [Ok(0), Err(4)]);
    }

    #[test]
    fn dropping_the_hub_closes_streams_after_what_they_hold() {
        let hub = EventHub::new(2);
        let mut stream = hub.subscribe();
        publish(&hub, 0..5);
        drop(hub);
        assert_eq!(stream.try_recv(), Ok(0));
        assert_eq!(stream.try_recv(), Ok(1));
        assert_eq!(stream.try_recv(), Err(TryRecvError::Lagged(3)));
        assert_eq!(stream.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn a_dropped_subscriber_is_unlisted_and_the_hub_unobserved_again() {
        let hub = EventHub::new(1);
        let full = hub.subscribe();
        let mut other = hub.subscribe();
        publish(&hub, [0, 1]);
        drop(full);
        assert!(hub.is_observed());
        assert_eq!(received(&mut other), [Ok(0), Err(1)]);
        publish(&hub, [2]);
        assert_eq!(received(&mut other), [Ok(2)]);
        drop(other);
        assert!(!hub.is_observed());
        assert!(hub.hub.senders.lock().is_empty());
        assert_eq!(hub.hub.room.load(Relaxed) >> ROOM_SHIFT, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn recv_waits_for_events_and_reports_gaps_and_closing() {
        let hub = Arc::new(EventHub::new(2));
        let mut stream = hub.subscribe();
        let publisher = {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                publish(&hub, 0..5);
            })
        };
        assert_eq!(stream.recv().await, Ok(0), "woken by the first event");
        publisher.await.unwrap();
        assert_eq!(stream.recv().await, Ok(1));
        assert_eq!(stream.recv().await, Err(RecvError::Lagged(3)));
        drop(Arc::into_inner(hub));
        assert_eq!(stream.recv().await, Err(RecvError::Closed));
    }

    /// A subscriber waiting in `recv` on a multi-threaded runtime while
    /// threads publish into its small buffer: it is never left waiting
    /// with events or a gap to report, and accounts for every event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recv_accounts_for_every_event_of_concurrent_publishers() {
        const THREADS: u32 = 3;
        const EACH: u32 = 20_000;
        let hub = Arc::new(EventHub::new(4));
        let mut stream = hub.subscribe();
        let publishers: Vec<_> = (0..THREADS)
            .map(|_| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || publish(&hub, 0..EACH))
            })
            .collect();
        let (mut received_events, mut missed) = (0u64, 0u64);
        while received_events + missed < u64::from(THREADS * EACH) {
            match stream.recv().await {
                Ok(_) => received_events += 1,
                Err(RecvError::Lagged(n)) => missed += n,
                Err(RecvError::Closed) => unreachable!("the hub lives"),
            }
        }
        for publisher in publishers {
            publisher.join().unwrap();
        }
        assert_eq!(received_events + missed, u64::from(THREADS * EACH));
        assert_eq!(stream.try_recv(), Err(TryRecvError::Empty), "nothing more");
    }

    /// Publishers on several threads, one subscriber draining with a small
    /// buffer: each publisher's events arrive in its order, and what was
    /// received plus what was reported missed is what was published.
    #[test]
    fn concurrent_publishers_lose_nothing_uncounted() {
        const THREADS: u32 = 4;
        const EACH: u32 = 20_000;
        let hub = EventHub::new(8);
        let mut stream = hub.subscribe();
        let (received_events, missed) = std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let hub = &hub;
                scope.spawn(move || publish(hub, (0..EACH).map(|i| thread << 24 | i)));
            }
            let mut last = [None::<u32>; THREADS as usize];
            let (mut received_events, mut missed) = (0u64, 0u64);
            while received_events + missed < u64::from(THREADS * EACH) {
                match stream.try_recv() {
                    Ok(event) => {
                        let (thread, i) = ((event >> 24) as usize, event & 0xFF_FFFF);
                        assert!(last[thread] < Some(i), "in each publisher's order");
                        last[thread] = Some(i);
                        received_events += 1;
                    }
                    Err(TryRecvError::Lagged(n)) => missed += n,
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Closed) => unreachable!("the hub lives"),
                }
            }
            (received_events, missed)
        });
        assert_eq!(received_events + missed, u64::from(THREADS * EACH));
        assert!(received_events >= 8, "at least a buffer's worth arrived");
        assert_eq!(stream.try_recv(), Err(TryRecvError::Empty), "nothing more");
    }
}
