//! A Consul watch: rate-limited blocking queries, plugged into the shared
//! polling driver (which retries, de-duplicates and yields).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use governor::clock::Clock;

use crate::clock::{DirectGcra, GovernorClock};

use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::Instance;
use crate::discovery::registry::polling::{Fetched, SnapshotSource};

use super::{BACKEND, ConsulEvent, Inner};

type Gcra = DirectGcra;

/// The rate limit of one watch's queries (governor's GCRA): the quota's
/// burst at once, then one more per its period.
struct QueryRateLimit {
    gcra: Gcra,
    clock: GovernorClock,
}

impl QueryRateLimit {
    fn new(quota: governor::Quota) -> Self {
        let clock = GovernorClock::new();
        Self {
            gcra: governor::RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes a permit, first waiting for one if none is left. Returns
    /// whether it had to wait.
    async fn acquire(&self) -> bool {
        let mut waited = false;
        while let Err(not_until) = self.gcra.check() {
            waited = true;
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
        waited
    }
}

/// The index to send on the next blocking query, after an answer with
/// `returned` to a query sent with `previous`, as Consul's blocking query
/// docs ask: reset to 0 when the index went backwards, then never less
/// than 1 (an index of 0 does not block).
pub(super) fn next_index(previous: u64, returned: u64) -> u64 {
    let index = if returned < previous { 0 } else { returned };
    index.max(1)
}

/// One watch of one service: what it carries between queries.
pub(super) struct ConsulWatch {
    inner: Arc<Inner>,
    service: String,
    /// The index of the next query; 0 only before the first answer.
    index: u64,
    /// The `X-Consul-Index` of the last answer.
    returned: u64,
    rate: QueryRateLimit,
}

impl ConsulWatch {
    pub(super) fn new(inner: Arc<Inner>, service: &str) -> Self {
        let rate = QueryRateLimit::new(inner.query_quota);
        Self {
            inner,
            service: service.to_owned(),
            index: 0,
            returned: 0,
            rate,
        }
    }
}

impl SnapshotSource for ConsulWatch {
    async fn fetch(&mut self) -> Result<Fetched, DiscoveryError> {
        if self.rate.acquire().await {
            self.inner
                .counters
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            crate::discovery::registry::metrics::rate_limited(BACKEND, &self.service);
            tracing::debug!(backend = BACKEND, service = %self.service, "watch query delayed by the rate limit");
        }
        let block = (self.index > 0).then_some(self.index);
        let (instances, returned) = match self.inner.query(&self.service, block).await? {
            (instances, Some(index)) => (instances, index),
            (_, None) => {
                return Err(DiscoveryError::InvalidData {
                    backend: BACKEND,
                    detail: "health answer without X-Consul-Index".to_owned(),
                });
            }
        };
        let previous = self.index;
        self.index = next_index(previous, returned);
        self.returned = returned;
        if returned < previous || returned == 0 {
            self.inner
                .counters
                .index_resets
                .fetch_add(1, Ordering::Relaxed);
            crate::discovery::registry::metrics::watch_restarted(
                BACKEND,
                &self.service,
                "index_reset",
            );
            tracing::info!(
                backend = BACKEND,
                service = %self.service,
                previous,
                returned,
                next = self.index,
                "X-Consul-Index went backwards or was 0: index reset"
            );
            self.inner.events.publish_with(|| ConsulEvent::IndexReset {
                service: self.service.clone(),
                previous,
                returned,
            });
        }
        Ok(Fetched::now(instances))
    }

    fn changed(&mut self, instances: &[Instance], first: bool) {
        crate::discovery::registry::metrics::watch_changed(
            BACKEND,
            &self.service,
            instances.len(),
            first,
        );
        tracing::debug!(
            backend = BACKEND,
            service = %self.service,
            instances = instances.len(),
            index = self.returned,
            "healthy instances changed"
        );
        self.inner
            .events
            .publish_with(|| ConsulEvent::WatchChanged {
                service: self.service.clone(),
                instances: instances.len(),
                index: self.returned,
            });
    }

    fn failed(&mut self, error: &DiscoveryError, retry_in: Duration) {
        tracing::warn!(
            backend = BACKEND,
            service = %self.service,
            %error,
            retry_in_ms = retry_in.as_millis() as u64,
            "consul watch query failed"
        );
        self.inner.events.publish_with(|| ConsulEvent::WatchFailed {
            service: self.service.clone(),
            error: error.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use tokio::time::Instant;

    use super::*;

    #[test]
    fn next_index_resets_when_the_index_goes_backwards_and_never_drops_below_one() {
        assert_eq!(next_index(0, 10), 10, "first answer");
        assert_eq!(next_index(10, 12), 12, "forwards");
        assert_eq!(next_index(12, 12), 12, "unchanged (a wait timeout)");
        assert_eq!(next_index(12, 5), 1, "backwards: reset, then at least 1");
        assert_eq!(
            next_index(0, 0),
            1,
            "a 0 from the server is never sent back"
        );
        assert_eq!(next_index(7, 0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_allows_a_burst_then_one_query_per_interval() {
        let interval = Duration::from_millis(100);
        let quota = governor::Quota::with_period(interval)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(2).expect("non-zero"));
        let rate = QueryRateLimit::new(quota);
        let start = Instant::now();
        assert!(!rate.acquire().await);
        assert!(!rate.acquire().await);
        assert_eq!(Instant::now(), start, "the burst goes at once");
        for n in 1..=5u32 {
            assert!(rate.acquire().await, "query {} waits", n + 2);
            assert_eq!(Instant::now() - start, interval * n);
        }
        // Idle long enough to refill the bucket: a burst again.
        tokio::time::advance(interval * 10).await;
        let now = Instant::now();
        assert!(!rate.acquire().await);
        assert!(!rate.acquire().await);
        assert_eq!(Instant::now(), now);
        assert!(rate.acquire().await);
    }
}
