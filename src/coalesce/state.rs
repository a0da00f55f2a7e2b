//! The coalescing layer's shared state: the handle's counters and events,
//! and the map of calls in flight, independent of tower.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;

use crate::events::{EventHub, EventStream};

use super::config::CoalesceConfig;
use super::event::{CoalesceEvent, CoalesceEventKind};
use super::layer::CoalesceLayer;
use super::metrics::CoalesceMetrics;
use super::slot::{Ended, Polled, Slot};

/// A coalescing (singleflight) layer's handle: its name, configuration,
/// counters and events. Clones share them.
///
/// Build tower services with [`layer`](Self::layer), giving it the
/// function that extracts a request's key.
///
/// ```
/// use palisade::coalesce::{Coalesce, CoalesceConfig};
///
/// let profiles = Coalesce::new("profiles", CoalesceConfig::builder().max_in_flight_keys(1000).build()?);
/// let layer = profiles.layer(|user_id: &u64| *user_id);
/// assert_eq!(profiles.metrics().in_flight_keys, 0);
/// # drop(layer);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Coalesce {
    shared: Arc<Handle>,
}

struct Handle {
    name: Arc<str>,
    config: CoalesceConfig,
    in_flight_keys: AtomicUsize,
    waiters: AtomicUsize,
    calls: AtomicU64,
    coalesced: AtomicU64,
    uncoalesced: AtomicU64,
    abandoned: AtomicU64,
    events: EventHub<CoalesceEvent>,
    exported: super::metrics::Exported,
}

impl Coalesce {
    /// A coalescing layer named `name` (in events, traces and metrics).
    pub fn new(name: impl Into<Arc<str>>, config: CoalesceConfig) -> Self {
        let events = EventHub::new(config.event_capacity);
        let name = name.into();
        Self {
            shared: Arc::new(Handle {
                exported: super::metrics::Exported::new(&name),
                name,
                config,
                in_flight_keys: AtomicUsize::new(0),
                waiters: AtomicUsize::new(0),
                calls: AtomicU64::new(0),
                coalesced: AtomicU64::new(0),
                uncoalesced: AtomicU64::new(0),
                abandoned: AtomicU64::new(0),
                events,
            }),
        }
    }

    /// A coalescing layer with the default configuration.
    pub fn with_defaults(name: impl Into<Arc<str>>) -> Self {
        Self::new(name, CoalesceConfig::default())
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration.
    pub fn config(&self) -> &CoalesceConfig {
        &self.shared.config
    }

    /// A layer whose services share one call among the concurrent requests
    /// for which `key` returns equal keys. Each service the layer builds
    /// (and its clones) has its own map of calls in flight: requests to
    /// different inner services are never coalesced together. All of them
    /// count against this handle's `max_in_flight_keys`.
    pub fn layer<Req, K, F>(&self, key: F) -> CoalesceLayer<Req, K, F>
    where
        F: Fn(&Req) -> K,
        K: Hash + Eq + Clone,
    {
        CoalesceLayer::new(self.clone(), key)
    }

    /// Subscribes to this layer's [`CoalesceEvent`]s.
    pub fn subscribe(&self) -> EventStream<CoalesceEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> CoalesceMetrics {
        let s = &self.shared;
        CoalesceMetrics {
            max_in_flight_keys: s.config.max_in_flight_keys,
            in_flight_keys: s.in_flight_keys.load(Relaxed),
            waiters: s.waiters.load(Relaxed),
            calls: s.calls.load(Relaxed),
            coalesced: s.coalesced.load(Relaxed),
            uncoalesced: s.uncoalesced.load(Relaxed),
            abandoned: s.abandoned.load(Relaxed),
        }
    }

    fn publish(&self, kind: impl FnOnce() -> CoalesceEventKind) {
        self.shared.events.publish_with(|| CoalesceEvent {
            coalesce: Arc::clone(&self.shared.name),
            kind: kind(),
        });
    }

    /// Takes one of the `max_in_flight_keys` slots, if one is free.
    fn try_reserve_key(&self) -> Result<(), usize> {
        let max = self.shared.config.max_in_flight_keys;
        self.shared
            .in_flight_keys
            .fetch_update(Relaxed, Relaxed, |keys| (keys < max).then_some(keys + 1))
            .map(drop)
    }
}

impl fmt::Debug for Coalesce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("name", &self.shared.name)
            .field("metrics", &self.metrics())
            .finish()
    }
}

/// The calls in flight of one service (and its clones), by key.
pub(crate) struct Flights<K, Fut: Future> {
    handle: Coalesce,
    map: Mutex<HashMap<K, Arc<Slot<K, Fut>>>>,
}

/// What a request does: wait for a shared call (new or in flight), or run
/// its own call because the map is full.
pub(crate) enum Joined<K, Fut, Req>
where
    K: Hash + Eq + Clone,
    Fut: Future,
    Fut::Output: Clone,
{
    Waiting(Waiter<K, Fut>),
    /// The request, back for its own call.
    Uncoalesced(Req),
}

impl<K, Fut> Flights<K, Fut>
where
    K: Hash + Eq + Clone,
    Fut: Future,
    Fut::Output: Clone,
{
    pub(crate) fn new(handle: Coalesce) -> Self {
        Self {
            handle,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the call in flight for `key` (dropping `request`), or starts
    /// one with `start(request)`, or (when `max_in_flight_keys` keys are in
    /// flight) gives the request back to run on its own. `start` runs under
    /// the map's lock: it only builds the future, it does not poll it.
    pub(crate) fn join<Req>(
        self: &Arc<Self>,
        key: K,
        request: Req,
        start: impl FnOnce(Req) -> Fut,
    ) -> Joined<K, Fut, Req> {
        let handle = &self.handle;
        let mut map = self.map.lock();
        // One hash for the lookup and the insertion. An entry whose call
        // has ended (its last waiter is about to remove it) is replaced.
        let entry = map.entry(key);
        let entry = match entry {
            Entry::Occupied(occupied) => match occupied.get().try_join() {
                Some((place, waiters)) => {
                    let slot = Arc::clone(occupied.get());
                    drop(map);
                    handle.shared.coalesced.fetch_add(1, Relaxed);
                    handle.shared.waiters.fetch_add(1, Relaxed);
                    handle.shared.exported.on_follower();
                    tracing::trace!(coalesce = %handle.shared.name, waiters, "request joined a shared call");
                    handle.publish(|| CoalesceEventKind::Joined { waiters });
                    return Joined::Waiting(Waiter::new(self, slot, place));
                }
                None => Entry::Occupied(occupied),
            },
            vacant => vacant,
        };
        if let Err(in_flight_keys) = handle.try_reserve_key() {
            drop(map);
            handle.shared.uncoalesced.fetch_add(1, Relaxed);
            handle.shared.exported.on_uncoalesced();
            tracing::debug!(
                coalesce = %handle.shared.name,
                in_flight_keys,
                "too many keys in flight: request runs uncoalesced"
            );
            handle.publish(|| CoalesceEventKind::Uncoalesced { in_flight_keys });
            return Joined::Uncoalesced(request);
        }
        let slot = Arc::new(Slot::new(entry.key().clone(), start(request)));
        let ended = match entry {
            Entry::Occupied(mut occupied) => Some(occupied.insert(Arc::clone(&slot))),
            Entry::Vacant(vacant) => {
                vacant.insert(Arc::clone(&slot));
                None
            }
        };
        drop(map);
        drop(ended);
        handle.shared.calls.fetch_add(1, Relaxed);
        handle.shared.waiters.fetch_add(1, Relaxed);
        handle.shared.exported.on_leader();
        tracing::trace!(coalesce = %handle.shared.name, "request started a shared call");
        handle.publish(|| CoalesceEventKind::Started);
        Joined::Waiting(Waiter::new(self, slot, 0))
    }

    /// The call of `slot` ended (answered, panicked or abandoned by every
    /// waiter): removes it from the map if it is still there (a later call
    /// for the key may have replaced it) and reports it.
    fn ended(&self, slot: &Arc<Slot<K, Fut>>, ended: Ended<K>) {
        let key = match &ended {
            Ended::Finished { key, .. } | Ended::Abandoned { key } => key.as_ref(),
            Ended::Left => return,
        };
        let handle = &self.handle;
        if let Some(key) = key {
            let mut map = self.map.lock();
            // One hash: remove, and put back the rare later call that
            // replaced this one.
            let replaced = match map.remove_entry(key) {
                Some((key, current)) if !Arc::ptr_eq(&current, slot) => {
                    map.insert(key, current);
                    None
                }
                removed => removed,
            };
            drop(map);
            drop(replaced);
        }
        match ended {
            Ended::Finished { waiters, .. } => {
                handle.shared.in_flight_keys.fetch_sub(1, Relaxed);
                handle.shared.exported.on_flight_ended(true);
                tracing::trace!(coalesce = %handle.shared.name, waiters, "shared call finished");
                handle.publish(|| CoalesceEventKind::Completed { waiters });
            }
            Ended::Abandoned { .. } => {
                handle.shared.in_flight_keys.fetch_sub(1, Relaxed);
                handle.shared.exported.on_flight_ended(false);
                handle.shared.abandoned.fetch_add(1, Relaxed);
                tracing::debug!(coalesce = %handle.shared.name, "every waiter left: shared call cancelled");
                handle.publish(|| CoalesceEventKind::Abandoned);
            }
            Ended::Left => {}
        }
    }
}

/// A request's place among the waiters of a shared call: it polls the call
/// (or waits for whoever does) and takes a clone of the answer; dropped
/// before that, it leaves, and the last waiter to leave an unfinished call
/// cancels it.
pub(crate) struct Waiter<K, Fut>
where
    K: Hash + Eq + Clone,
    Fut: Future,
    Fut::Output: Clone,
{
    flights: Arc<Flights<K, Fut>>,
    slot: Arc<Slot<K, Fut>>,
    place: usize,
    /// Whether it took the answer (or learnt the call was lost).
    done: bool,
}

impl<K, Fut> Waiter<K, Fut>
where
    K: Hash + Eq + Clone,
    Fut: Future,
    Fut::Output: Clone,
{
    fn new(flights: &Arc<Flights<K, Fut>>, slot: Arc<Slot<K, Fut>>, place: usize) -> Self {
        Self {
            flights: Arc::clone(flights),
            slot,
            place,
            done: false,
        }
    }

    /// The shared call's answer, once it is there.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Polled<Fut::Output>> {
        assert!(
            !self.done,
            "coalesce::ResponseFuture polled after completion"
        );
        let (flights, slot) = (&self.flights, &self.slot);
        let polled = ready!(slot.poll(self.place, cx, |ended| flights.ended(slot, ended)));
        self.done = true;
        self.left();
        Poll::Ready(polled)
    }

    fn left(&self) {
        self.flights.handle.shared.waiters.fetch_sub(1, Relaxed);
        self.flights.handle.shared.exported.on_waiter_left();
    }
}

impl<K, Fut> Drop for Waiter<K, Fut>
where
    K: Hash + Eq + Clone,
    Fut: Future,
    Fut::Output: Clone,
{
    fn drop(&mut self) {
        if !self.done {
            let ended = self.slot.leave(self.place);
            self.flights.ended(&self.slot, ended);
            self.left();
        }
    }
}

impl<K, Fut> fmt::Debug for Waiter<K, Fut>
where
    K: Hash + Eq + Clone,
    Fut: Future,
    Fut::Output: Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("coalesce", &self.flights.handle.shared.name)
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}
