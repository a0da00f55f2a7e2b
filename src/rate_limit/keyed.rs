//! [`KeyedRateLimiter`] and [`KeyedRateLimiterLayer`]: one limit per key
//! (per user, per API token, per client address), on governor's keyed GCRA.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::Quota;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{HashMapStateStore, ShrinkableKeyedStateStore};
use parking_lot::{Mutex, RwLock};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::{GovernorClock, duration_nanos};
use crate::error::{BoxError, ConfigError};
use crate::events::{EventHub, EventStream};
use crate::future::AdmittedFuture;
use crate::sync::StripedCounter;

use super::config::RateLimiterConfig;
use super::error::{KeyedRejection, RateLimited, TooManyKeys};
use super::event::{RateLimiterEvent, RateLimiterEventKind};
use super::metrics::KeyedRateLimiterMetrics;

/// The default cap on the keys a [`KeyedRateLimiter`] holds state for:
/// 100,000 (a few dozen bytes each plus the key).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How often a [`KeyedRateLimiter`] removes its idle keys by default: every
/// 60 seconds.
pub const DEFAULT_IDLE_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

const COMPONENT: &str = "keyed_rate_limiter";

/// `last_cleanup` before the first cleanup.
const NEVER: u64 = 0;

/// The keys' states: governor's hash map, shared between governor (which
/// measures and updates a key's state) and the limiter (which bounds the
/// number of keys).
struct SharedStates<K: Hash + Eq + Clone>(Arc<HashMapStateStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for SharedStates<K> {
    type Key = K;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for SharedStates<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type KeyedGcra<K> =
    governor::RateLimiter<K, SharedStates<K>, GovernorClock, NoOpMiddleware<Duration>>;

struct Inner<K: Hash + Eq + Clone> {
    name: Arc<str>,
    config: RateLimiterConfig,
    max_keys: usize,
    cleanup_interval: Duration,
    gcra: KeyedGcra<K>,
    states: Arc<HashMapStateStore<K>>,
    clock: GovernorClock,
    /// Held (shared) while a known key is checked, (exclusive) while idle
    /// keys are removed: a key found present stays so until its check is
    /// done, so only the new-key path, under `adding`, adds keys.
    removal: RwLock<()>,
    /// Held while a new key is added or idle keys are removed.
    adding: Mutex<()>,
    /// Limiter-clock nanoseconds of the last cleanup (at least 1), or
    /// [`NEVER`]. The cadence counts from the limiter's creation.
    last_cleanup: AtomicU64,
    events: EventHub<RateLimiterEvent>,
    permitted: StripedCounter,
    permitted_after_waiting: StripedCounter,
    rejected: StripedCounter,
    rejected_too_many_keys: StripedCounter,
    evicted_keys: AtomicU64,
    waiting: AtomicUsize,
    exported: super::metrics::Exported,
}

/// A rate limiter with one limit per key: each key gets
/// `limit_for_period` calls per `limit_refresh_period` of its own, as a
/// [`RateLimiter`](super::RateLimiter) gives one limit to all calls.
/// governor's keyed GCRA on tokio's clock (so tests can pause time).
///
/// Build tower services with [`layer`](Self::layer), which takes the key
/// from each request, or ask for permits directly with
/// [`try_acquire`](Self::try_acquire) and [`acquire`](Self::acquire).
/// Every clone shares the keys' states.
///
/// ```
/// use std::time::Duration;
/// use palisade::rate_limit::{KeyedRateLimiter, KeyedRejection, RateLimiterConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let per_user = KeyedRateLimiter::<u64>::new(
///     "api-per-user",
///     RateLimiterConfig::builder()
///         .limit_for_period(2)
///         .limit_refresh_period(Duration::from_secs(1))
///         .build()?,
/// )
/// .with_max_keys(10_000)?;
/// per_user.try_acquire(&7)?;
/// per_user.try_acquire(&7)?;
/// assert!(matches!(per_user.try_acquire(&7), Err(KeyedRejection::RateLimited(_))));
/// per_user.try_acquire(&8)?; // another user has permits of its own
/// tokio::time::advance(Duration::from_millis(500)).await;
/// per_user.try_acquire(&7)?; // one permit back every 500 ms
/// # Ok(())
/// # }
/// ```
///
/// # Keys
///
/// A key is any `Hash + Eq + Clone` value: a user id, an IP address, an
/// API token. A key known to the limiter is looked up without allocating;
/// a key type that owns heap memory (`String`) costs whatever building it
/// from the request costs, so prefer ids and addresses where they exist.
/// Only the limiter's name labels its events and metrics, never a key.
///
/// The keys' states live in governor's mutex-guarded `HashMap` store: a
/// call takes a shared read lock (held off only by a cleanup) and the map's
/// mutex twice (is the key known? then governor's check), so calls for
/// different keys contend on that mutex. That suits a gateway's per-user
/// limits; a limit on the hottest path of a many-core server is better
/// served by a plain [`RateLimiter`](super::RateLimiter) per key you know
/// in advance.
///
/// # A bounded number of keys
///
/// Keys come from requests, so whoever sends them chooses how many there
/// are. The limiter keeps the state of at most
/// [`max_keys`](Self::with_max_keys) keys ([`DEFAULT_MAX_KEYS`] by
/// default):
///
/// * **Idle keys are removed on a cadence.** A key is idle when its state
///   is no different from a new key's (governor's test: all its permits
///   have been back for at least one replenish interval,
///   `limit_refresh_period / limit_for_period`): removing it changes
///   nothing for its next call. Every
///   [`idle_cleanup_interval`](Self::with_idle_cleanup_interval) (60 s by
///   default) the first call after it is due removes the idle keys
///   (governor's `retain_recent`) and gives the memory back
///   (`shrink_to_fit`). There is no background task.
/// * **A new key beyond the bound is rejected** with [`TooManyKeys`], not
///   admitted by evicting a key in use: evicting a busy key would give it
///   its full burst again, so a client could reset its own limit by
///   sending made-up keys. When a new key finds the limiter full, idle
///   keys are removed first (at most once per eighth of the cleanup
///   interval, so a flood of new keys does not rescan the map on every
///   call), and the key is rejected only if that freed nothing. Keys the
///   limiter already holds are never affected.
///
/// The bound is exact: new keys are added one at a time, and a key being
/// checked is never removed meanwhile.
///
/// # Waiting
///
/// [`acquire`](Self::acquire) waits for a permit up to the configuration's
/// `max_wait_duration`. The [layer](KeyedRateLimiterLayer) never waits: it
/// learns the key only in `call`, after the inner service is ready, so it
/// answers at once (a gateway's 429 with [`RateLimited::retry_after`]).
pub struct KeyedRateLimiter<K: Hash + Eq + Clone> {
    inner: Arc<Inner<K>>,
}

impl<K: Hash + Eq + Clone> Clone for KeyedRateLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedRateLimiter<K> {
    /// A limiter named `name` (used in errors, events, traces and metrics
    /// labels) giving each key the limit of `config`, holding at most
    /// [`DEFAULT_MAX_KEYS`] keys and removing idle keys every
    /// [`DEFAULT_IDLE_CLEANUP_INTERVAL`].
    pub fn new(name: impl Into<Arc<str>>, config: RateLimiterConfig) -> Self {
        Self::with_bounds(
            name.into(),
            config,
            DEFAULT_MAX_KEYS,
            DEFAULT_IDLE_CLEANUP_INTERVAL,
        )
    }

    /// Creates it after checking `name` as
    /// [`RateLimiter::try_new`](super::RateLimiter::try_new) does.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: RateLimiterConfig,
    ) -> Result<Self, ConfigError> {
        let name = crate::circuit_breaker::check_name("rate_limiter", name)?;
        Ok(Self::new(name, config))
    }

    fn with_bounds(
        name: Arc<str>,
        config: RateLimiterConfig,
        max_keys: usize,
        cleanup_interval: Duration,
    ) -> Self {
        let quota = Quota::with_period(config.replenish_interval())
            .expect("the config builder rejects a zero replenish interval")
            .allow_burst(config.limit_for_period);
        let clock = GovernorClock::new();
        let states = Arc::new(HashMapStateStore::<K>::new(HashMap::default()));
        let inner = Inner {
            exported: super::metrics::Exported::new(&name, true),
            gcra: governor::RateLimiter::new(
                quota,
                SharedStates(Arc::clone(&states)),
                clock.clone(),
            ),
            states,
            clock,
            name,
            events: EventHub::new(config.event_capacity),
            config,
            max_keys,
            cleanup_interval,
            removal: RwLock::new(()),
            adding: Mutex::new(()),
            last_cleanup: AtomicU64::new(NEVER),
            permitted: StripedCounter::new(),
            permitted_after_waiting: StripedCounter::new(),
            rejected: StripedCounter::new(),
            rejected_too_many_keys: StripedCounter::new(),
            evicted_keys: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Holds the state of at most `max_keys` keys (at least 1; default
    /// [`DEFAULT_MAX_KEYS`]); see [the bound](Self#a-bounded-number-of-keys).
    /// Call it when building the limiter: the returned limiter starts with
    /// no keys and is not shared with clones of `self`.
    pub fn with_max_keys(self, max_keys: usize) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "max_keys",
                "must be at least 1, got 0",
            ));
        }
        let i = &self.inner;
        Ok(Self::with_bounds(
            Arc::clone(&i.name),
            i.config.clone(),
            max_keys,
            i.cleanup_interval,
        ))
    }

    /// Removes idle keys every `interval` (more than zero; default
    /// [`DEFAULT_IDLE_CLEANUP_INTERVAL`]); see
    /// [the bound](Self#a-bounded-number-of-keys). Like
    /// [`with_max_keys`](Self::with_max_keys), call it when building.
    pub fn with_idle_cleanup_interval(self, interval: Duration) -> Result<Self, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "idle_cleanup_interval",
                "must be more than zero",
            ));
        }
        let i = &self.inner;
        Ok(Self::with_bounds(
            Arc::clone(&i.name),
            i.config.clone(),
            i.max_keys,
            interval,
        ))
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The limit each key gets.
    pub fn config(&self) -> &RateLimiterConfig {
        &self.inner.config
    }

    /// The most keys the limiter holds state for.
    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// How often idle keys are removed.
    pub fn idle_cleanup_interval(&self) -> Duration {
        self.inner.cleanup_interval
    }

    /// Keys the limiter holds state for now.
    pub fn keys(&self) -> usize {
        self.inner.states.lock().len()
    }

    /// Whether `self` and `other` are the same limiter (clones of one another).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A layer whose services take a permit of the key `key(&request)`
    /// for every call.
    pub fn layer<F>(&self, key: F) -> KeyedRateLimiterLayer<K, F> {
        KeyedRateLimiterLayer {
            limiter: self.clone(),
            key,
        }
    }

    /// Subscribes to the limiter's events (all keys together).
    pub fn subscribe(&self) -> EventStream<RateLimiterEvent> {
        self.inner.events.subscribe()
    }

    /// A snapshot of the limiter's counters.
    pub fn metrics(&self) -> KeyedRateLimiterMetrics {
        let i = &self.inner;
        KeyedRateLimiterMetrics {
            permitted: i.permitted.sum(),
            permitted_after_waiting: i.permitted_after_waiting.sum(),
            rejected: i.rejected.sum(),
            rejected_too_many_keys: i.rejected_too_many_keys.sum(),
            waiting: i.waiting.load(Ordering::Relaxed),
            keys: self.keys(),
            evicted_keys: i.evicted_keys.load(Ordering::Relaxed),
        }
    }

    /// Takes a permit of `key` if one is available now; never waits.
    pub fn try_acquire(&self, key: &K) -> Result<(), KeyedRejection> {
        match self.check(key) {
            Ok(()) => {
                self.on_permitted(Duration::ZERO);
                Ok(())
            }
            Err(Check::Wait(retry_after)) => Err(KeyedRejection::RateLimited(
                self.on_rate_limited(retry_after),
            )),
            Err(Check::TooManyKeys) => Err(KeyedRejection::TooManyKeys(self.on_too_many_keys())),
        }
    }

    /// Takes a permit of `key`, waiting for it at most the configuration's
    /// `max_wait_duration`; a caller whose permit would come later is
    /// rejected at once. Dropping the future stops the wait and takes
    /// nothing.
    pub async fn acquire(&self, key: &K) -> Result<(), KeyedRejection> {
        let started = tokio::time::Instant::now();
        let deadline = started.checked_add(self.inner.config.max_wait_duration);
        let mut waiting: Option<WaitingGuard<'_, K>> = None;
        loop {
            match self.check(key) {
                Ok(()) => {
                    self.on_permitted(started.elapsed());
                    return Ok(());
                }
                Err(Check::TooManyKeys) => {
                    return Err(KeyedRejection::TooManyKeys(self.on_too_many_keys()));
                }
                Err(Check::Wait(retry_after)) => {
                    let now = tokio::time::Instant::now();
                    let due = match now.checked_add(retry_after) {
                        Some(due) if deadline.is_none_or(|deadline| due <= deadline) => due,
                        _ => {
                            return Err(KeyedRejection::RateLimited(
                                self.on_rate_limited(retry_after),
                            ));
                        }
                    };
                    if waiting.is_none() {
                        waiting = Some(WaitingGuard::new(&self.inner));
                    }
                    tokio::time::sleep_until(due).await;
                }
            }
        }
    }

    /// Removes the idle keys now (the cleanup that otherwise runs every
    /// `idle_cleanup_interval`); returns how many were removed.
    pub fn remove_idle_keys(&self) -> usize {
        let _adding = self.inner.adding.lock();
        self.cleanup_locked(self.inner.clock.now())
    }

    /// Takes a permit of `key`, or says why not.
    fn check(&self, key: &K) -> Result<(), Check> {
        let i = &self.inner;
        let now = i.clock.now();
        if duration_nanos(now).saturating_sub(i.last_cleanup.load(Ordering::Relaxed))
            >= duration_nanos(i.cleanup_interval)
        {
            self.cleanup_if_due(now);
        }
        {
            let _no_removal = i.removal.read();
            let known = i.states.lock().contains_key(key);
            if known {
                return i
                    .gcra
                    .check_key(key)
                    .map_err(|not_until| Check::Wait(not_until.wait_time_from(now)));
            }
        }
        self.check_new_key(key, now)
    }

    /// The slow path: `key` was not known a moment ago.
    #[cold]
    fn check_new_key(&self, key: &K, now: Duration) -> Result<(), Check> {
        let i = &self.inner;
        let _adding = i.adding.lock();
        let last_cleanup = i.last_cleanup.load(Ordering::Relaxed);
        let rescan_allowed = last_cleanup == NEVER
            || duration_nanos(now).saturating_sub(last_cleanup)
                >= duration_nanos(i.cleanup_interval / 8);
        if rescan_allowed && i.states.lock().len() >= i.max_keys {
            self.cleanup_locked(now);
        }
        let _no_removal = i.removal.read();
        let keys = {
            let states = i.states.lock();
            if !states.contains_key(key) && states.len() >= i.max_keys {
                return Err(Check::TooManyKeys);
            }
            states.len()
        };
        let result = i
            .gcra
            .check_key(key)
            .map_err(|not_until| Check::Wait(not_until.wait_time_from(now)));
        i.exported.on_keys(keys + 1);
        result
    }

    /// Cleans up unless another caller is adding a key or cleaning up.
    fn cleanup_if_due(&self, now: Duration) {
        if let Some(_adding) = self.inner.adding.try_lock() {
            let since =
                duration_nanos(now).saturating_sub(self.inner.last_cleanup.load(Ordering::Relaxed));
            if since >= duration_nanos(self.inner.cleanup_interval) {
                self.cleanup_locked(now);
            }
        }
    }

    /// Removes idle keys; the caller holds `adding`.
    fn cleanup_locked(&self, now: Duration) -> usize {
        let i = &self.inner;
        let _removal = i.removal.write();
        let before = i.states.lock().len();
        i.gcra.retain_recent();
        i.gcra.shrink_to_fit();
        let keys = i.states.lock().len();
        i.last_cleanup
            .store(duration_nanos(now).max(1), Ordering::Relaxed);
        let evicted = before.saturating_sub(keys);
        i.evicted_keys.fetch_add(evicted as u64, Ordering::Relaxed);
        i.exported.on_keys(keys);
        tracing::debug!(rate_limiter = %i.name, evicted, keys, "keyed rate limiter removed idle keys");
        if evicted > 0 {
            i.events.publish_with(|| RateLimiterEvent {
                limiter: Arc::clone(&i.name),
                kind: RateLimiterEventKind::IdleKeysEvicted { evicted, keys },
            });
        }
        evicted
    }

    fn on_permitted(&self, waited: Duration) {
        let i = &self.inner;
        i.permitted.add(1);
        i.exported.on_permitted(waited);
        if !waited.is_zero() {
            i.permitted_after_waiting.add(1);
        }
        i.events.publish_with(|| RateLimiterEvent {
            limiter: Arc::clone(&i.name),
            kind: RateLimiterEventKind::Acquired { waited },
        });
    }

    fn on_rate_limited(&self, retry_after: Duration) -> RateLimited {
        let i = &self.inner;
        i.rejected.add(1);
        i.exported.on_rejected();
        tracing::debug!(
            rate_limiter = %i.name,
            retry_after_ms = retry_after.as_millis() as u64,
            "keyed rate limiter rejected a call"
        );
        i.events.publish_with(|| RateLimiterEvent {
            limiter: Arc::clone(&i.name),
            kind: RateLimiterEventKind::Rejected { retry_after },
        });
        RateLimited::new(Arc::clone(&i.name), retry_after)
    }

    fn on_too_many_keys(&self) -> TooManyKeys {
        let i = &self.inner;
        i.rejected_too_many_keys.add(1);
        i.exported.on_rejected();
        tracing::debug!(
            rate_limiter = %i.name,
            max_keys = i.max_keys,
            "keyed rate limiter rejected a new key: it holds the most keys it may, none idle"
        );
        i.events.publish_with(|| RateLimiterEvent {
            limiter: Arc::clone(&i.name),
            kind: RateLimiterEventKind::TooManyKeys {
                max_keys: i.max_keys,
            },
        });
        TooManyKeys::new(Arc::clone(&i.name), i.max_keys)
    }
}

/// Why [`KeyedRateLimiter::check`] gave no permit.
enum Check {
    /// The key's next permit is due in this long.
    Wait(Duration),
    TooManyKeys,
}

/// A caller waiting in [`KeyedRateLimiter::acquire`]; counted until it
/// returns or is dropped.
struct WaitingGuard<'a, K: Hash + Eq + Clone> {
    inner: &'a Inner<K>,
}

impl<'a, K: Hash + Eq + Clone> WaitingGuard<'a, K> {
    fn new(inner: &'a Inner<K>) -> Self {
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        inner.exported.on_waiting(1);
        Self { inner }
    }
}

impl<K: Hash + Eq + Clone> Drop for WaitingGuard<'_, K> {
    fn drop(&mut self) {
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        self.inner.exported.on_waiting(-1);
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("max_keys", &self.inner.max_keys)
            .field("idle_cleanup_interval", &self.inner.cleanup_interval)
            .finish_non_exhaustive()
    }
}

/// Wraps services so that each call takes a permit of the key
/// `key(&request)` from one shared [`KeyedRateLimiter`]; built by
/// [`KeyedRateLimiter::layer`].
///
/// Unlike [`RateLimiterLayer`](super::RateLimiterLayer), which decides in
/// `poll_ready`, the keyed service learns the key only in `call`: its
/// `poll_ready` is the inner service's, and `call` either calls the inner
/// service or fails at once, without waiting, with [`RateLimited`] (the
/// key's permits are used up; [`retry_after`](RateLimited::retry_after)
/// says for how long) or [`TooManyKeys`]. Both carry the
/// [`Rejected`](crate::error::Rejected) marker.
///
/// Because the key is checked after the inner service is ready, a caller
/// over its limit still waits for an inner service that is slow to get
/// ready (a full bulkhead, say) before it is refused. Where that matters,
/// move the inner wait into the call's future, so that `poll_ready` is
/// ready at once and the key is checked first: wrap the inner service as
/// `tower::service_fn(move |request| inner.clone().oneshot(request))`
/// (`examples/ecommerce` does this in front of its order pipeline).
///
/// ```
/// use std::time::Duration;
/// use palisade::rate_limit::{KeyedRateLimiter, RateLimited, RateLimiterConfig};
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// struct Request { user: u64 }
/// let per_user = KeyedRateLimiter::new(
///     "gateway",
///     RateLimiterConfig::builder().limit_for_period(1).build()?,
/// );
/// let mut gateway = per_user
///     .layer(|request: &Request| request.user)
///     .layer(tower::service_fn(|_: Request| async { Ok::<_, std::io::Error>("200 OK") }));
///
/// gateway.ready().await?.call(Request { user: 1 }).await?;
/// gateway.ready().await?.call(Request { user: 2 }).await?;
/// let error = gateway.ready().await?.call(Request { user: 1 }).await.unwrap_err();
/// assert!(error.downcast_ref::<RateLimited>().is_some());
/// # Ok(())
/// # }
/// ```
pub struct KeyedRateLimiterLayer<K: Hash + Eq + Clone, F> {
    limiter: KeyedRateLimiter<K>,
    key: F,
}

impl<K: Hash + Eq + Clone, F: Clone> Clone for KeyedRateLimiterLayer<K, F> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, F> KeyedRateLimiterLayer<K, F> {
    /// The limiter the layer's services share.
    pub fn limiter(&self) -> &KeyedRateLimiter<K> {
        &self.limiter
    }
}

impl<S, K: Hash + Eq + Clone, F: Clone> Layer<S> for KeyedRateLimiterLayer<K, F> {
    type Service = KeyedRateLimiterService<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimiterService {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, F> fmt::Debug for KeyedRateLimiterLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiterLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// A service whose calls each take a permit of their key; built by
/// [`KeyedRateLimiterLayer`].
pub struct KeyedRateLimiterService<S, K: Hash + Eq + Clone, F> {
    inner: S,
    limiter: KeyedRateLimiter<K>,
    key: F,
}

impl<S: Clone, K: Hash + Eq + Clone, F: Clone> Clone for KeyedRateLimiterService<S, K, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K: Hash + Eq + Clone, F> KeyedRateLimiterService<S, K, F> {
    /// The limiter guarding this service.
    pub fn limiter(&self) -> &KeyedRateLimiter<K> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, F, Req> Service<Req> for KeyedRateLimiterService<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AdmittedFuture<S::Future, (), BoxError>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.limiter.try_acquire(&(self.key)(&request)) {
            Ok(()) => AdmittedFuture::admitted(self.inner.call(request), ()),
            Err(rejection) => AdmittedFuture::rejected(rejection.into_error()),
        }
    }
}

impl<S: fmt::Debug, K: Hash + Eq + Clone, F> fmt::Debug for KeyedRateLimiterService<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiterService")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter.name())
            .finish_non_exhaustive()
    }
}
