//! Keeping a registration alive: its lease's keep-alives and, when the
//! lease is lost, a new lease and the instance written again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::Client;

use crate::backoff::Backoff;

use super::transport::{grant_and_put, is_lease_not_found};
use super::{BACKEND, EtcdEvent, Shared};

/// Whole seconds, rounded up, at least 1.
pub(super) fn lease_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// How a run of keep-alives ended.
enum KeepAliveEnd {
    /// etcd says the lease is gone.
    LeaseLost,
    /// The keep-alive stream failed; the lease may still be alive.
    Failed(String),
}

/// Keeps `lease` alive every `period` until it is lost or the stream fails.
/// Calls `alive` after each confirmed keep-alive.
async fn keep_alive(
    client: &mut Client,
    lease: i64,
    period: Duration,
    mut alive: impl FnMut(),
) -> KeepAliveEnd {
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(error) if is_lease_not_found(&error) => return KeepAliveEnd::LeaseLost,
        Err(error) => return KeepAliveEnd::Failed(error.to_string()),
    };
    alive();
    loop {
        tokio::time::sleep(period).await;
        if let Err(error) = keeper.keep_alive().await {
            return KeepAliveEnd::Failed(error.to_string());
        }
        match tokio::time::timeout(period, stream.message()).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => alive(),
            Ok(Ok(Some(_))) => return KeepAliveEnd::LeaseLost,
            Ok(Ok(None)) => return KeepAliveEnd::Failed("keep-alive stream ended".to_owned()),
            Ok(Err(error)) if is_lease_not_found(&error) => return KeepAliveEnd::LeaseLost,
            Ok(Err(error)) => return KeepAliveEnd::Failed(error.to_string()),
            Err(_) => {
                return KeepAliveEnd::Failed(format!("no keep-alive answer within {period:?}"));
            }
        }
    }
}

/// The background task of one registration: keeps its lease alive and,
/// when the lease is lost, grants a new one and writes the instance again.
pub(super) struct KeepRegistered {
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    pub(super) backoff: Backoff,
    /// The instance's key and JSON value, written again under a new lease.
    pub(super) key: String,
    pub(super) value: String,
    /// The lease TTL, in seconds.
    pub(super) ttl: i64,
    /// The current lease, replaced when a lost one is granted again.
    pub(super) lease: Arc<AtomicI64>,
    pub(super) service: String,
    pub(super) id: String,
}

impl KeepRegistered {
    pub(super) async fn run(mut self) {
        // A third of the TTL, as etcd's own client does.
        let period = Duration::from_millis((self.ttl as u64).saturating_mul(1000) / 3)
            .max(Duration::from_millis(100));
        let mut schedule = self.backoff.schedule();
        loop {
            let lease = self.lease.load(Ordering::Acquire);
            let end = keep_alive(&mut self.client, lease, period, || schedule.reset()).await;
            match end {
                KeepAliveEnd::Failed(error) => {
                    self.shared
                        .counters
                        .keep_alive_failures
                        .fetch_add(1, Ordering::Relaxed);
                    crate::discovery::registry::metrics::failed(
                        BACKEND,
                        &self.service,
                        "keep_alive",
                    );
                    let delay = schedule.next_delay();
                    tracing::warn!(backend = BACKEND, service = %self.service, id = %self.id, lease, %error, retry_in_ms = delay.as_millis() as u64, "lease keep-alive failed");
                    tokio::time::sleep(delay).await;
                }
                KeepAliveEnd::LeaseLost => {
                    tracing::warn!(backend = BACKEND, service = %self.service, id = %self.id, lease, "lease lost (revoked or expired): registering again");
                    self.shared.events.publish_with(|| EtcdEvent::LeaseLost {
                        service: self.service.clone(),
                        id: self.id.clone(),
                        lease,
                    });
                    self.regrant().await;
                }
            }
        }
    }

    async fn regrant(&mut self) {
        let mut schedule = self.backoff.schedule();
        loop {
            match grant_and_put(&mut self.client, &self.key, &self.value, self.ttl).await {
                Ok(lease) => {
                    self.lease.store(lease, Ordering::Release);
                    tracing::info!(backend = BACKEND, service = %self.service, id = %self.id, lease, "lease granted again and instance registered again");
                    self.shared
                        .events
                        .publish_with(|| EtcdEvent::LeaseRegranted {
                            service: self.service.clone(),
                            id: self.id.clone(),
                            lease,
                        });
                    // Counted last: a reader that sees the count sees the
                    // new lease and the event.
                    self.shared
                        .counters
                        .lease_regrants
                        .fetch_add(1, Ordering::Relaxed);
                    crate::discovery::registry::metrics::lease_regranted(BACKEND, &self.service);
                    return;
                }
                Err(error) => {
                    let delay = schedule.next_delay();
                    tracing::warn!(backend = BACKEND, service = %self.service, id = %self.id, %error, retry_in_ms = delay.as_millis() as u64, "granting a new lease failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_seconds(Duration::from_secs(5)), 5);
        assert_eq!(lease_seconds(Duration::from_millis(5001)), 6);
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
    }
}
