//! The response cache itself, independent of tower: moka's cache of
//! responses stamped with the time they were stored.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

use crate::classify::DefaultClassifier;
use crate::events::{EventHub, EventStream};
use crate::fallback::FailureCause;

use super::config::CacheConfig;
use super::event::{CacheEvent, CacheEventKind};
use super::layer::CacheLayer;
use super::metrics::CacheMetrics;

/// A response cache: responses by key, fresh for `ttl`, kept for
/// `max_staleness` more to answer failed calls. Clones share it.
///
/// Build tower services with [`layer`](Self::layer), giving it the
/// function that extracts a request's key.
///
/// ```
/// use std::time::Duration;
/// use palisade::cache::{CacheConfig, ResponseCache};
///
/// let prices: ResponseCache<String, u64> = ResponseCache::new(
///     "prices",
///     CacheConfig::builder().ttl(Duration::from_secs(30)).max_entries(5_000).build()?,
/// );
/// let layer = prices.layer(|sku: &String| sku.clone());
/// prices.invalidate(&"sku-1".to_string());
/// assert_eq!(prices.metrics().hits, 0);
/// # drop(layer);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub struct ResponseCache<K, Res> {
    shared: Arc<Handle<K, Res>>,
}

struct Handle<K, Res> {
    name: Arc<str>,
    config: CacheConfig,
    entries: moka::sync::Cache<K, Stored<Res>>,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    stored: AtomicU64,
    events: EventHub<CacheEvent>,
    exported: super::metrics::Exported,
}

/// A response and when it was stored (on tokio's clock, so paused-time
/// tests see it age).
#[derive(Clone)]
struct Stored<Res> {
    response: Res,
    stored_at: Instant,
}

/// What the cache holds for a key.
pub(crate) enum Lookup<Res> {
    /// Younger than `ttl`: answers the request.
    Fresh(Res),
    /// Older than `ttl`, within `max_staleness`: answers only a failure.
    Stale(Res),
    Missing,
}

impl<K, Res> Clone for ResponseCache<K, Res> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, Res> ResponseCache<K, Res>
where
    K: Hash + Eq + Send + Sync + 'static,
    Res: Clone + Send + Sync + 'static,
{
    /// A cache named `name` (in events, traces and metrics).
    pub fn new(name: impl Into<Arc<str>>, config: CacheConfig) -> Self {
        // moka forgets entries once no answer can use them; freshness and
        // staleness are decided on tokio's clock, below.
        let retention = config.ttl.saturating_add(config.max_staleness);
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_entries)
            .time_to_live(retention)
            .build();
        let events = EventHub::new(config.event_capacity);
        let name = name.into();
        Self {
            shared: Arc::new(Handle {
                exported: super::metrics::Exported::new(&name),
                name,
                config,
                entries,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                stale_served: AtomicU64::new(0),
                stored: AtomicU64::new(0),
                events,
            }),
        }
    }

    /// A layer whose services answer from this cache, keyed by `key`.
    /// Every service the layer builds, and every layer of this handle,
    /// shares the one cache.
    pub fn layer<Req, F>(&self, key: F) -> CacheLayer<K, Res, F, DefaultClassifier>
    where
        F: Fn(&Req) -> K,
    {
        CacheLayer::new(self.clone(), key)
    }

    /// Forgets the entry for `key`, fresh or stale.
    pub fn invalidate(&self, key: &K) {
        self.shared.entries.invalidate(key);
        self.shared
            .exported
            .on_entries(self.shared.entries.entry_count());
    }

    /// Forgets every entry.
    pub fn invalidate_all(&self) {
        self.shared.entries.invalidate_all();
        self.shared
            .exported
            .on_entries(self.shared.entries.entry_count());
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> CacheMetrics {
        let s = &self.shared;
        CacheMetrics {
            hits: s.hits.load(Relaxed),
            misses: s.misses.load(Relaxed),
            stale_served: s.stale_served.load(Relaxed),
            stored: s.stored.load(Relaxed),
            entries: s.entries.entry_count(),
        }
    }

    /// Looks `key` up, counting a hit or a miss.
    pub(crate) fn lookup(&self, key: &K) -> Lookup<Res> {
        let s = &self.shared;
        let found = s.entries.get(key).and_then(|stored| {
            let age = Instant::now().saturating_duration_since(stored.stored_at);
            if age < s.config.ttl {
                Some(Lookup::Fresh(stored.response))
            } else if age - s.config.ttl < s.config.max_staleness {
                Some(Lookup::Stale(stored.response))
            } else {
                None
            }
        });
        match found {
            Some(Lookup::Fresh(response)) => {
                s.hits.fetch_add(1, Relaxed);
                s.exported.on_hit();
                tracing::trace!(cache = %s.name, "cache hit");
                self.publish(|| CacheEventKind::Hit);
                Lookup::Fresh(response)
            }
            found => {
                let stale_available = matches!(found, Some(Lookup::Stale(_)));
                s.misses.fetch_add(1, Relaxed);
                s.exported.on_miss();
                tracing::trace!(cache = %s.name, stale_available, "cache miss");
                self.publish(|| CacheEventKind::Miss { stale_available });
                found.unwrap_or(Lookup::Missing)
            }
        }
    }

    /// Stores a successful response for `key`.
    pub(crate) fn store(&self, key: K, response: Res) {
        let s = &self.shared;
        s.entries.insert(
            key,
            Stored {
                response,
                stored_at: Instant::now(),
            },
        );
        s.stored.fetch_add(1, Relaxed);
        s.exported.on_stored();
        s.exported.on_entries(s.entries.entry_count());
        self.publish(|| CacheEventKind::Stored);
    }
}

impl<K, Res> ResponseCache<K, Res> {
    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.shared.config
    }

    /// Subscribes to this cache's [`CacheEvent`]s.
    pub fn subscribe(&self) -> EventStream<CacheEvent> {
        self.shared.events.subscribe()
    }

    /// A stale entry answered a failed or rejected call.
    pub(crate) fn served_stale(&self, cause: FailureCause) {
        let s = &self.shared;
        s.stale_served.fetch_add(1, Relaxed);
        s.exported.on_stale_served();
        tracing::debug!(cache = %s.name, %cause, "stale entry answered a failed call");
        self.publish(|| CacheEventKind::StaleServed { cause });
    }

    fn publish(&self, kind: impl FnOnce() -> CacheEventKind) {
        self.shared.events.publish_with(|| CacheEvent {
            cache: Arc::clone(&self.shared.name),
            kind: kind(),
        });
    }
}

impl<K, Res> fmt::Debug for ResponseCache<K, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
