//! The fallback's handle and the store of last good responses,
//! independent of tower.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::classify::{DefaultClassifier, Outcome};
use crate::error::BoxError;
use crate::events::{EventHub, EventStream};

use super::config::{FallbackConfig, Strategy};
use super::event::{FailureCause, FallbackEvent, FallbackEventKind, FallbackSource};
use super::key::{LastGoodKey, SameKey};
use super::layer::FallbackLayer;
use super::metrics::FallbackMetrics;

/// A fallback's handle: its name, configuration (with the answer it gives),
/// counters and events. Clones share them.
///
/// Build tower services with [`layer`](Self::layer) or, for the last good
/// response per key, [`layer_keyed`](Self::layer_keyed).
///
/// ```
/// use palisade::fallback::{Fallback, FallbackConfig};
///
/// let quotes = Fallback::new(
///     "quotes",
///     FallbackConfig::builder().value("no quote today".to_string()).on_rejection(true).build()?,
/// );
/// assert_eq!(quotes.config().strategy(), "value");
/// assert_eq!(quotes.metrics().answered(), 0);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub struct Fallback<Res> {
    shared: Arc<Handle<Res>>,
}

struct Handle<Res> {
    name: Arc<str>,
    config: FallbackConfig<Res>,
    answered_by_value: AtomicU64,
    answered_by_function: AtomicU64,
    answered_by_last_good: AtomicU64,
    no_last_good: AtomicU64,
    answered_rejections: AtomicU64,
    last_good_entries: AtomicUsize,
    events: EventHub<FallbackEvent>,
    exported: super::metrics::Exported,
}

impl<Res> Clone for Fallback<Res> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Res> Fallback<Res> {
    /// A fallback named `name` (in events, traces and metrics).
    pub fn new(name: impl Into<Arc<str>>, config: FallbackConfig<Res>) -> Self {
        let events = EventHub::new(config.event_capacity);
        let name = name.into();
        Self {
            shared: Arc::new(Handle {
                exported: super::metrics::Exported::new(&name),
                name,
                config,
                answered_by_value: AtomicU64::new(0),
                answered_by_function: AtomicU64::new(0),
                answered_by_last_good: AtomicU64::new(0),
                no_last_good: AtomicU64::new(0),
                answered_rejections: AtomicU64::new(0),
                last_good_entries: AtomicUsize::new(0),
                events,
            }),
        }
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration.
    pub fn config(&self) -> &FallbackConfig<Res> {
        &self.shared.config
    }

    /// A layer whose services answer handled failures as configured. With
    /// `last_good`, every request has the same key: a failure is answered
    /// with the last good response of any request. Each layer keeps its
    /// own last good responses, shared by the services it builds.
    pub fn layer(&self) -> FallbackLayer<Res, (), SameKey, DefaultClassifier> {
        FallbackLayer::new(Arc::new(LastGoodStore::new(self.clone())), SameKey)
    }

    /// A layer whose services keep the last good response per `key` of the
    /// request (`key` is only called with the `last_good` answer).
    pub fn layer_keyed<Req, K, F>(&self, key: F) -> FallbackLayer<Res, K, F, DefaultClassifier>
    where
        F: Fn(&Req) -> K,
        K: Hash + Eq + Clone,
    {
        FallbackLayer::new(Arc::new(LastGoodStore::new(self.clone())), key)
    }

    /// Subscribes to this fallback's [`FallbackEvent`]s.
    pub fn subscribe(&self) -> EventStream<FallbackEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> FallbackMetrics {
        let s = &self.shared;
        FallbackMetrics {
            answered_by_value: s.answered_by_value.load(Relaxed),
            answered_by_function: s.answered_by_function.load(Relaxed),
            answered_by_last_good: s.answered_by_last_good.load(Relaxed),
            no_last_good: s.no_last_good.load(Relaxed),
            answered_rejections: s.answered_rejections.load(Relaxed),
            last_good_entries: s.last_good_entries.load(Relaxed),
        }
    }

    pub(crate) fn keeps_last_good(&self) -> bool {
        matches!(self.shared.config.strategy, Strategy::LastGood)
    }

    fn answered(&self, source: FallbackSource, cause: FailureCause) {
        let s = &self.shared;
        match source {
            FallbackSource::Value => &s.answered_by_value,
            FallbackSource::Function => &s.answered_by_function,
            FallbackSource::LastGood => &s.answered_by_last_good,
        }
        .fetch_add(1, Relaxed);
        s.exported.on_answered(source, cause);
        if cause == FailureCause::Rejection {
            s.answered_rejections.fetch_add(1, Relaxed);
        }
        tracing::debug!(fallback = %s.name, %source, %cause, "fallback answered a call");
        s.events.publish_with(|| FallbackEvent {
            fallback: Arc::clone(&s.name),
            kind: FallbackEventKind::Answered { source, cause },
        });
    }
}

impl<Res> fmt::Debug for Fallback<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .field("metrics", &self.metrics())
            .finish()
    }
}

/// Whether a finished call is to be answered by a fallback, and why:
/// a rejection (an error carrying the [`Rejected`](crate::error::Rejected)
/// marker) is answered only when `on_rejection` is set, whatever the
/// classifier says; anything else when the classifier calls it a failure.
pub(crate) fn failure_cause<Res>(
    result: &Result<Res, BoxError>,
    outcome: Outcome,
    on_rejection: bool,
) -> Option<FailureCause> {
    match result {
        Err(error) if crate::error::is_rejection(&**error) => {
            on_rejection.then_some(FailureCause::Rejection)
        }
        _ if outcome.is_failure() => Some(FailureCause::Failure),
        _ => None,
    }
}

/// The last good responses of one layer's services, by key, and the
/// handle they answer for.
pub(crate) struct LastGoodStore<K, Res> {
    fallback: Fallback<Res>,
    map: Mutex<LastGoodMap<K, Res>>,
}

impl<K, Res> LastGoodStore<K, Res> {
    pub(crate) fn new(fallback: Fallback<Res>) -> Self {
        let capacity = fallback.shared.config.last_good_capacity;
        Self {
            fallback,
            map: Mutex::new(LastGoodMap::new(capacity)),
        }
    }

    pub(crate) fn fallback(&self) -> &Fallback<Res> {
        &self.fallback
    }
}

impl<K: Hash + Eq + Clone, Res: Clone> LastGoodStore<K, Res> {
    /// Answers a finished call: remembers a good response, answers a
    /// handled failure, passes everything else through unchanged.
    pub(crate) fn settle(
        &self,
        result: Result<Res, BoxError>,
        outcome: Outcome,
        key: Option<K>,
    ) -> Result<Res, BoxError> {
        let fallback = &self.fallback;
        let config = &fallback.shared.config;
        let Some(cause) = failure_cause(&result, outcome, config.on_rejection) else {
            if let (Ok(response), Outcome::Success, Some(key)) = (&result, outcome, key) {
                self.remember(key, response.clone());
            }
            return result;
        };
        match &config.strategy {
            Strategy::Value(value) => {
                fallback.answered(FallbackSource::Value, cause);
                Ok(value.clone())
            }
            Strategy::Function(answer) => {
                let response = answer(result.as_ref());
                fallback.answered(FallbackSource::Function, cause);
                Ok(response)
            }
            Strategy::LastGood => {
                let last = key.and_then(|key| self.map.lock().get(&key).cloned());
                match last {
                    Some(response) => {
                        fallback.answered(FallbackSource::LastGood, cause);
                        Ok(response)
                    }
                    None => {
                        let s = &fallback.shared;
                        s.no_last_good.fetch_add(1, Relaxed);
                        s.exported.on_no_last_good();
                        tracing::debug!(fallback = %s.name, %cause, "no last good response: failure passes through");
                        s.events.publish_with(|| FallbackEvent {
                            fallback: Arc::clone(&s.name),
                            kind: FallbackEventKind::NoLastGood { cause },
                        });
                        result
                    }
                }
            }
        }
    }

    fn remember(&self, key: K, response: Res) {
        let (added, evicted) = {
            let mut map = self.map.lock();
            map.insert(key, response)
        };
        let entries = &self.fallback.shared.last_good_entries;
        if added && evicted.is_none() {
            entries.fetch_add(1, Relaxed);
            self.fallback.shared.exported.on_last_good_entries(1.0);
        }
        // An evicted response is dropped here, outside the lock.
        drop(evicted);
    }

    /// The request's key, when the fallback answers with the last good
    /// response (`None` otherwise: the key is not computed).
    #[inline]
    pub(crate) fn key_of<Req, F>(&self, key: &F, request: &Req) -> Option<K>
    where
        F: LastGoodKey<Req, Key = K>,
    {
        self.fallback.keeps_last_good().then(|| key.key(request))
    }
}

impl<K, Res> Drop for LastGoodStore<K, Res> {
    fn drop(&mut self) {
        let kept = self.map.get_mut().entries.len();
        self.fallback
            .shared
            .last_good_entries
            .fetch_sub(kept, Relaxed);
        self.fallback
            .shared
            .exported
            .on_last_good_entries(-(kept as f64));
    }
}

/// A map bounded to `capacity` keys that forgets the key updated longest
/// ago: each update appends `(key, generation)` to `order`; entries of
/// `order` whose generation is no longer the key's are skipped, and `order`
/// is rebuilt when it grows past twice the capacity.
struct LastGoodMap<K, Res> {
    entries: HashMap<K, (Res, u64)>,
    order: VecDeque<(K, u64)>,
    capacity: usize,
    generation: u64,
}

impl<K, Res> LastGoodMap<K, Res> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            generation: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, Res> LastGoodMap<K, Res> {
    fn get(&self, key: &K) -> Option<&Res> {
        self.entries.get(key).map(|(response, _)| response)
    }

    /// Keeps `response` for `key`; returns whether the key is new and the
    /// response evicted to make room for it, if any.
    fn insert(&mut self, key: K, response: Res) -> (bool, Option<Res>) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        self.order.push_back((key.clone(), generation));
        let added = self.entries.insert(key, (response, generation)).is_none();
        let mut evicted = None;
        if added && self.entries.len() > self.capacity {
            while let Some((oldest, seen)) = self.order.pop_front() {
                if self.entries.get(&oldest).is_some_and(|(_, g)| *g == seen) {
                    evicted = self.entries.remove(&oldest).map(|(response, _)| response);
                    break;
                }
            }
        }
        if self.order.len() > self.capacity.saturating_mul(2).max(16) {
            let mut live: Vec<(K, u64)> = self
                .entries
                .iter()
                .map(|(key, (_, generation))| (key.clone(), *generation))
                .collect();
            live.sort_unstable_by_key(|(_, generation)| *generation);
            self.order = live.into();
        }
        (added, evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_good_map_forgets_the_key_updated_longest_ago() {
        let mut map = LastGoodMap::new(2);
        assert_eq!(map.insert("a", 1), (true, None));
        assert_eq!(map.insert("b", 2), (true, None));
        assert_eq!(
            map.insert("a", 3),
            (false, None),
            "an update, not a new key"
        );
        assert_eq!(
            map.insert("c", 4),
            (true, Some(2)),
            "b was updated longest ago"
        );
        assert_eq!(map.get(&"a"), Some(&3));
        assert_eq!(map.get(&"b"), None);
        assert_eq!(map.get(&"c"), Some(&4));
    }

    #[test]
    fn last_good_map_order_stays_bounded_under_repeated_updates() {
        let mut map = LastGoodMap::new(4);
        for i in 0..10_000u32 {
            map.insert(i % 3, i);
        }
        assert!(
            map.order.len() <= 16,
            "order has {} entries",
            map.order.len()
        );
        assert_eq!(map.entries.len(), 3);
        assert_eq!(map.insert(7, 0), (true, None));
        assert_eq!(
            map.insert(8, 0),
            (true, Some(9_997)),
            "key 1, last set at 9997, was updated longest ago"
        );
    }
}
