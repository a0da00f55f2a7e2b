//! [`EtcdRegistryBuilder`]: the options of an [`EtcdRegistry`], checked
//! before connecting.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::discovery::error::DiscoveryError;
use crate::error::ConfigError;
use crate::events::{EventHub, check_event_capacity};

use super::{BACKEND, Counters, EtcdRegistry, Inner, Shared};

const COMPONENT: &str = "etcd registry";

/// Builds an [`EtcdRegistry`]; see it for the defaults.
#[must_use = "call .connect() to get a registry"]
pub struct EtcdRegistryBuilder {
    endpoints: Vec<String>,
    prefix: String,
    default_lease_ttl: Duration,
    backoff: Backoff,
    connect_options: Option<ConnectOptions>,
    event_capacity: usize,
}

impl fmt::Debug for EtcdRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistryBuilder")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("default_lease_ttl", &self.default_lease_ttl)
            .field("backoff", &self.backoff)
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistryBuilder {
    /// The defaults (one endpoint, `http://127.0.0.1:2379`).
    pub(super) fn new() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: "/palisade/services".to_owned(),
            default_lease_ttl: Duration::from_secs(10),
            backoff: Backoff::default(),
            connect_options: None,
            event_capacity: 256,
        }
    }

    /// Adds an etcd endpoint, e.g. `http://10.0.0.1:2379`. Default (when
    /// none is added) `http://127.0.0.1:2379`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// The key prefix: starts with `/`, does not end with `/`. Default
    /// `/palisade/services`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease TTL of registrations with [`HealthCheck::None`], at least
    /// 1 s. Default 10 s.
    pub fn default_lease_ttl(mut self, ttl: Duration) -> Self {
        self.default_lease_ttl = ttl;
        self
    }

    /// The delays between retries of failed keep-alives, lease re-grants
    /// and watches. Default [`Backoff::default()`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Options of the etcd client (timeouts, credentials, TLS).
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connect_options = Some(options);
        self
    }

    /// Events buffered per subscriber, 1 to
    /// [`MAX_EVENT_CAPACITY`](crate::events::MAX_EVENT_CAPACITY). Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Checks every field and creates the etcd client. The client connects
    /// lazily (unless credentials are given): an unreachable etcd shows up
    /// as [`DiscoveryError::Unavailable`] from the first operation.
    pub async fn connect(self) -> Result<EtcdRegistry, DiscoveryError> {
        if !self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
            || self
                .prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::new(
                COMPONENT,
                "prefix",
                format!(
                    "must start with '/', not end with '/' and hold no whitespace, got {:?}",
                    self.prefix
                ),
            )
            .into());
        }
        if self.default_lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "default_lease_ttl",
                format!(
                    "must be at least 1s (etcd leases count seconds), got {:?}",
                    self.default_lease_ttl
                ),
            )
            .into());
        }
        check_event_capacity(COMPONENT, self.event_capacity)?;
        let endpoints = if self.endpoints.is_empty() {
            vec!["http://127.0.0.1:2379".to_owned()]
        } else {
            self.endpoints
        };
        let client = Client::connect(&endpoints, self.connect_options)
            .await
            .map_err(|e| DiscoveryError::unavailable(BACKEND, e))?;
        tracing::debug!(backend = BACKEND, ?endpoints, prefix = %self.prefix, "etcd registry created");
        Ok(EtcdRegistry {
            inner: Arc::new(Inner {
                client,
                prefix: self.prefix,
                default_lease_ttl: self.default_lease_ttl,
                backoff: self.backoff,
                shared: Arc::new(Shared {
                    counters: Counters::default(),
                    events: EventHub::new(self.event_capacity),
                }),
                local: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
            }),
        })
    }
}
