//! The etcd calls of a registry: reading a service's keys, writing an
//! instance under a lease, deregistering and renewing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{Client, DeleteOptions, GetOptions, KeyValue, PutOptions};

use crate::discovery::error::DiscoveryError;
use crate::discovery::health::HealthCheck;
use crate::discovery::instance::Instance;
use crate::discovery::registry::{Registration, RegistrationGuard};

use super::lease::{KeepRegistered, lease_seconds};
use super::wire::StoredInstance;
use super::{BACKEND, EtcdEvent, EtcdRegistry, Inner, LocalRegistration};

pub(super) fn unavailable(error: etcd_client::Error) -> DiscoveryError {
    DiscoveryError::unavailable(BACKEND, error)
}

/// Whether `error` says the lease does not exist (revoked or expired).
pub(super) fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        // etcd: code NotFound, "etcdserver: requested lease not found".
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        _ => false,
    }
}

impl Inner {
    pub(super) fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{}/{}", self.prefix, service, id)
    }

    pub(super) fn service_prefix(&self, service: &str) -> String {
        format!("{}/{}/", self.prefix, service)
    }

    /// Parses one key-value of `service`; `None` (with a warning) when it
    /// is not a valid instance.
    pub(super) fn parse(&self, service: &str, kv: &KeyValue) -> Option<(String, Instance)> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let id = key.strip_prefix(&self.service_prefix(service))?.to_owned();
        let parsed = serde_json::from_slice::<StoredInstance>(kv.value())
            .map_err(|e| e.to_string())
            .and_then(|stored| stored.into_instance().map_err(|e| e.to_string()));
        match parsed {
            Ok(instance) if instance.id().as_str() == id => Some((key, instance)),
            Ok(instance) => {
                tracing::warn!(backend = BACKEND, %key, stored_id = %instance.id(), "skipping an instance stored under another id's key");
                None
            }
            Err(error) => {
                tracing::warn!(backend = BACKEND, %key, %error, "skipping an invalid instance in etcd");
                None
            }
        }
    }

    /// Reads every instance of `service` and the store's revision.
    pub(super) async fn list(
        &self,
        service: &str,
    ) -> Result<(BTreeMap<String, Instance>, i64), DiscoveryError> {
        let mut client = self.client.clone();
        let response = client
            .get(
                self.service_prefix(service),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(unavailable)?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let instances = response
            .kvs()
            .iter()
            .filter_map(|kv| self.parse(service, kv))
            .collect();
        Ok((instances, revision))
    }

    pub(super) fn forget_local(
        &self,
        service: &str,
        id: &str,
        generation: Option<u64>,
    ) -> Option<i64> {
        let mut local = self.local.lock();
        let key = (service.to_owned(), id.to_owned());
        let matches = match (local.get(&key), generation) {
            (Some(r), Some(g)) => r.generation == g,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            return None;
        }
        let registration = local.remove(&key)?;
        registration.task.abort();
        Some(registration.lease.load(Ordering::Acquire))
    }
}

/// Grants a lease of `ttl` seconds and writes `value` under `key` with it.
pub(super) async fn grant_and_put(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    if let Err(error) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        // Do not leave the fresh lease behind.
        let _ = client.lease_revoke(lease).await;
        return Err(error);
    }
    Ok(lease)
}

impl EtcdRegistry {
    pub(super) async fn register_instance(
        &self,
        registration: Registration,
    ) -> Result<RegistrationGuard, DiscoveryError> {
        let Registration { instance, check } = registration;
        let ttl = match check {
            HealthCheck::None => lease_seconds(self.inner.default_lease_ttl),
            HealthCheck::Ttl { ttl } => lease_seconds(ttl),
            HealthCheck::Http(_) => {
                return Err(DiscoveryError::Unsupported {
                    backend: BACKEND,
                    operation: "HTTP health checks (etcd runs no checks: use a TTL)",
                });
            }
            #[cfg(feature = "tonic")]
            HealthCheck::Grpc(_) => {
                return Err(DiscoveryError::Unsupported {
                    backend: BACKEND,
                    operation: "gRPC health checks (etcd runs no checks: use a TTL)",
                });
            }
        };
        let service = instance.service().to_string();
        let id = instance.id().to_string();
        let key = self.inner.key(&service, &id);
        let value = serde_json::to_string(&StoredInstance::of(&instance)).map_err(|e| {
            DiscoveryError::InvalidData {
                backend: BACKEND,
                detail: e.to_string(),
            }
        })?;
        let mut client = self.inner.client.clone();
        let lease = grant_and_put(&mut client, &key, &value, ttl)
            .await
            .map_err(unavailable)?;
        let lease_cell = Arc::new(AtomicI64::new(lease));
        let task = tokio::spawn(
            KeepRegistered {
                client,
                shared: Arc::clone(&self.inner.shared),
                backoff: self.inner.backoff.clone(),
                key,
                value,
                ttl,
                lease: Arc::clone(&lease_cell),
                service: service.clone(),
                id: id.clone(),
            }
            .run(),
        )
        .abort_handle();
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let replaced = self.inner.local.lock().insert(
            (service.clone(), id.clone()),
            LocalRegistration {
                generation,
                lease: Arc::clone(&lease_cell),
                task,
            },
        );
        if let Some(old) = replaced {
            // The key now belongs to the new lease: revoking the old one
            // only ends the old registration.
            old.task.abort();
            let old_lease = old.lease.load(Ordering::Acquire);
            let mut client = self.inner.client.clone();
            tokio::spawn(async move {
                let _ = client.lease_revoke(old_lease).await;
            });
        }
        self.inner
            .shared
            .counters
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        crate::discovery::registry::metrics::registered(BACKEND, &service);
        tracing::info!(backend = BACKEND, %service, %id, address = %instance.address(), lease, ttl_secs = ttl, "instance registered in etcd");
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::Registered {
                service: service.clone(),
                id: id.clone(),
                lease,
            });
        let inner = Arc::clone(&self.inner);
        Ok(RegistrationGuard::new(BACKEND, &instance, move || {
            let lease = inner.forget_local(&service, &id, Some(generation));
            Box::pin(async move {
                let Some(lease) = lease else {
                    // Deregistered by id or replaced meanwhile.
                    return Err(DiscoveryError::not_registered(service, id));
                };
                let mut client = inner.client.clone();
                match client.lease_revoke(lease).await {
                    Ok(_) => {
                        inner
                            .shared
                            .counters
                            .deregistrations
                            .fetch_add(1, Ordering::Relaxed);
                        crate::discovery::registry::metrics::deregistered(BACKEND, &service);
                        tracing::info!(backend = BACKEND, %service, %id, lease, "lease revoked: instance deregistered");
                        inner
                            .shared
                            .events
                            .publish_with(|| EtcdEvent::Deregistered {
                                service: service.clone(),
                                id: id.clone(),
                            });
                        Ok(())
                    }
                    Err(error) if is_lease_not_found(&error) => {
                        Err(DiscoveryError::not_registered(service, id))
                    }
                    Err(error) => Err(unavailable(error)),
                }
            })
        }))
    }

    pub(super) async fn deregister_instance(
        &self,
        service: &str,
        id: &str,
    ) -> Result<(), DiscoveryError> {
        let lease = self.inner.forget_local(service, id, None);
        let mut client = self.inner.client.clone();
        let deleted = client
            .delete(self.inner.key(service, id), Some(DeleteOptions::new()))
            .await
            .map_err(unavailable)?
            .deleted();
        if let Some(lease) = lease {
            let _ = client.lease_revoke(lease).await;
        }
        if deleted == 0 {
            return Err(DiscoveryError::not_registered(service, id));
        }
        self.inner
            .shared
            .counters
            .deregistrations
            .fetch_add(1, Ordering::Relaxed);
        crate::discovery::registry::metrics::deregistered(BACKEND, service);
        tracing::info!(
            backend = BACKEND,
            service,
            id,
            "instance deregistered from etcd"
        );
        self.inner
            .shared
            .events
            .publish_with(|| EtcdEvent::Deregistered {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        Ok(())
    }

    pub(super) async fn pass_ttl_now(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let mut client = self.inner.client.clone();
        let response = client
            .get(self.inner.key(service, id), None)
            .await
            .map_err(unavailable)?;
        let Some(kv) = response.kvs().first() else {
            return Err(DiscoveryError::not_registered(service, id));
        };
        let lease = kv.lease();
        if lease == 0 {
            return Err(DiscoveryError::Unsupported {
                backend: BACKEND,
                operation: "pass_ttl for an instance without a lease",
            });
        }
        match client.lease_keep_alive(lease).await {
            Ok(_) => {
                tracing::trace!(backend = BACKEND, service, id, lease, "lease renewed");
                Ok(())
            }
            Err(error) if is_lease_not_found(&error) => {
                Err(DiscoveryError::not_registered(service, id))
            }
            Err(error) => Err(unavailable(error)),
        }
    }
}
