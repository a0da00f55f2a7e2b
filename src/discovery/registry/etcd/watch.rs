//! An etcd watch: read the prefix, then follow etcd's watch stream from the
//! next revision, plugged into the shared polling driver.
//!
//! etcd pushes changes on a gRPC stream rather than answering polls, so a
//! "fetch" here is: read the prefix (first, and after a compaction), or
//! open the stream (from the last revision seen + 1), then apply its
//! events until the set changes. The driver does the rest, as for the
//! polling backends: the backoff after a failure (reset when a set is
//! yielded), de-duplication, and yielding errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::Instance;
use crate::discovery::registry::polling::{Fetched, SnapshotSource};

use super::transport::unavailable;
use super::{BACKEND, EtcdEvent, Inner};

/// Where a watch is.
enum Phase {
    /// Read the prefix (first, or after a compaction).
    List,
    /// Start watching from `revision + 1`.
    Watch,
    /// Receiving events.
    Watching(Box<etcd_client::WatchStream>),
}

/// One watch of one service: what it carries between fetches.
pub(super) struct EtcdWatch {
    inner: Arc<Inner>,
    service: String,
    phase: Phase,
    /// The last revision seen: the list's, then each event's.
    revision: i64,
    /// The service's instances by key.
    instances: BTreeMap<String, Instance>,
}

impl EtcdWatch {
    pub(super) fn new(inner: Arc<Inner>, service: &str) -> Self {
        Self {
            inner,
            service: service.to_owned(),
            phase: Phase::List,
            revision: 0,
            instances: BTreeMap::new(),
        }
    }

    fn snapshot(&self) -> Fetched {
        let mut instances: Vec<Instance> = self.instances.values().cloned().collect();
        instances.sort_by(|a, b| a.id().cmp(b.id()));
        Fetched::now(instances)
    }

    fn compacted(&mut self, compact_revision: i64) {
        self.inner
            .shared
            .counters
            .watch_relists
            .fetch_add(1, Ordering::Relaxed);
        crate::discovery::registry::metrics::watch_restarted(BACKEND, &self.service, "compacted");
        tracing::info!(backend = BACKEND, service = %self.service, revision = self.revision, compact_revision, "watch revision compacted: reading the prefix again");
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::WatchCompacted {
                service: self.service.clone(),
                compact_revision,
            });
        self.phase = Phase::List;
    }

    /// Applies one watch response's events; whether the set changed.
    fn apply(&mut self, response: &etcd_client::WatchResponse) -> bool {
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match event.event_type() {
                EventType::Put => match self.inner.parse(&self.service, kv) {
                    Some((key, instance)) => {
                        if self.instances.get(&key) != Some(&instance) {
                            self.instances.insert(key, instance);
                            changed = true;
                        }
                    }
                    None => changed |= self.instances.remove(&key).is_some(),
                },
                EventType::Delete => {
                    changed |= self.instances.remove(&key).is_some();
                }
            }
        }
        changed
    }
}

impl SnapshotSource for EtcdWatch {
    async fn fetch(&mut self) -> Result<Fetched, DiscoveryError> {
        loop {
            // A failure below leaves the phase at `Watch`: the next fetch
            // resumes from the last revision seen.
            match std::mem::replace(&mut self.phase, Phase::Watch) {
                Phase::List => match self.inner.list(&self.service).await {
                    Ok((instances, revision)) => {
                        self.instances = instances;
                        self.revision = revision;
                        tracing::debug!(backend = BACKEND, service = %self.service, revision, instances = self.instances.len(), "prefix read");
                        return Ok(self.snapshot());
                    }
                    Err(error) => {
                        self.phase = Phase::List;
                        return Err(error);
                    }
                },
                Phase::Watch => {
                    let mut client = self.inner.client.clone();
                    let options = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(self.revision + 1);
                    let stream = client
                        .watch(self.inner.service_prefix(&self.service), Some(options))
                        .await
                        .map_err(unavailable)?;
                    self.phase = Phase::Watching(Box::new(stream));
                }
                Phase::Watching(mut stream) => {
                    let response = match stream.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) => {
                            return Err(DiscoveryError::unavailable(
                                BACKEND,
                                "the watch stream ended",
                            ));
                        }
                        Err(error) => return Err(unavailable(error)),
                    };
                    if response.compact_revision() > 0 {
                        self.compacted(response.compact_revision());
                        continue;
                    }
                    if response.canceled() {
                        let reason = response.cancel_reason().to_owned();
                        return Err(DiscoveryError::unavailable(
                            BACKEND,
                            format!("etcd cancelled the watch: {reason}"),
                        ));
                    }
                    let changed = self.apply(&response);
                    self.phase = Phase::Watching(stream);
                    if changed {
                        return Ok(self.snapshot());
                    }
                }
            }
        }
    }

    fn changed(&mut self, instances: &[Instance], first: bool) {
        // The prefix read traces at debug; changes need no more.
        crate::discovery::registry::metrics::watch_changed(
            BACKEND,
            &self.service,
            instances.len(),
            first,
        );
    }

    fn failed(&mut self, error: &DiscoveryError, retry_in: Duration) {
        self.inner
            .shared
            .counters
            .watch_failures
            .fetch_add(1, Ordering::Relaxed);
        crate::discovery::registry::metrics::failed(BACKEND, &self.service, "watch");
        tracing::warn!(backend = BACKEND, service = %self.service, %error, revision = self.revision, retry_in_ms = retry_in.as_millis() as u64, "etcd watch failed");
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::WatchFailed {
                service: self.service.clone(),
                error: error.to_string(),
            });
    }
}
