//! [`ConsulRegistryBuilder`]: the options of a [`ConsulRegistry`] and the
//! rules they are checked against.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use governor::Quota;
use http::Uri;
use http::header::HeaderValue;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::events::{EventHub, check_event_capacity};

use super::{ConsulRegistry, Counters, Inner};

const COMPONENT: &str = "consul registry";

/// The longest `wait` Consul accepts for a blocking query.
pub const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// Builds a [`ConsulRegistry`]; every setter is checked in
/// [`build`](Self::build). See [`ConsulRegistry`] for the defaults.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a registry"]
pub struct ConsulRegistryBuilder {
    address: String,
    token: Option<String>,
    datacenter: Option<String>,
    wait: Duration,
    request_timeout: Duration,
    query_burst: u32,
    query_interval: Duration,
    backoff: Backoff,
    event_capacity: usize,
}

impl ConsulRegistryBuilder {
    /// The defaults (a local agent on `http://127.0.0.1:8500`).
    pub(super) fn new() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            datacenter: None,
            wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            query_burst: 2,
            query_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            event_capacity: 256,
        }
    }

    /// The agent's base URL, `http://host:port` (optionally with a path
    /// prefix). Default `http://127.0.0.1:8500`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// An ACL token, sent as `X-Consul-Token` on every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The datacenter to query (`dc`); default the agent's own.
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// How long one blocking query may wait for a change (`wait`), 1 ms to
    /// 10 minutes. Default 5 minutes (Consul's own default).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long a request may take beyond its blocking wait, at least
    /// 1 ms. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many watch queries may go back to back before the rate limit
    /// applies, at least 1. Default 2 (as Consul's docs suggest).
    pub fn query_burst(mut self, burst: u32) -> Self {
        self.query_burst = burst;
        self
    }

    /// The time to earn one more watch query once the burst is spent: the
    /// fastest a watch polls a server that answers at once. At least 1 ms.
    /// Default 1 s.
    pub fn query_interval(mut self, interval: Duration) -> Self {
        self.query_interval = interval;
        self
    }

    /// The delays between retries of a failed watch query. Default
    /// [`Backoff::default()`] (exponential from 100 ms, full jitter, at
    /// most 10 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Events buffered per subscriber, 1 to
    /// [`MAX_EVENT_CAPACITY`](crate::events::MAX_EVENT_CAPACITY). Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Checks every field and returns the registry, or the first field that
    /// breaks its rule. Needs no runtime; requests need a tokio runtime.
    pub fn build(self) -> Result<ConsulRegistry, ConfigError> {
        let base = self.address.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|e| {
            ConfigError::new(
                COMPONENT,
                "address",
                format!("must be a URL like http://127.0.0.1:8500, got {base:?} ({e})"),
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "address",
                    format!("must use http:// (https is not supported), got {base:?}"),
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "address",
                    format!("must be an http:// URL with a host, got {base:?}"),
                ));
            }
        }
        if uri.authority().is_none() || uri.query().is_some() {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                format!("must be an http:// URL with a host and no query, got {base:?}"),
            ));
        }
        let token = match self.token {
            None => None,
            Some(token) => {
                let value = HeaderValue::from_str(&token)
                    .ok()
                    .filter(|_| !token.is_empty());
                let mut value = value.ok_or_else(|| {
                    ConfigError::new(
                        COMPONENT,
                        "token",
                        "must be non-empty visible ASCII (an HTTP header value)",
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        if let Some(dc) = &self.datacenter {
            if dc.is_empty() || !dc.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "datacenter",
                    format!("must be non-empty visible ASCII, got {dc:?}"),
                ));
            }
        }
        if self.wait < Duration::from_millis(1) || self.wait > MAX_CONSUL_WAIT {
            return Err(ConfigError::new(
                COMPONENT,
                "wait",
                format!("must be 1ms to 10min (Consul's limit), got {:?}", self.wait),
            ));
        }
        if self.request_timeout < Duration::from_millis(1) {
            return Err(ConfigError::new(
                COMPONENT,
                "request_timeout",
                format!("must be at least 1ms, got {:?}", self.request_timeout),
            ));
        }
        let Some(query_burst) = NonZeroU32::new(self.query_burst) else {
            return Err(ConfigError::new(
                COMPONENT,
                "query_burst",
                "must be at least 1, got 0",
            ));
        };
        let query_quota = Quota::with_period(self.query_interval)
            .filter(|_| self.query_interval >= Duration::from_millis(1))
            .ok_or_else(|| {
                ConfigError::new(
                    COMPONENT,
                    "query_interval",
                    format!(
                        "must be at least 1ms (the rate limit that stops a busy loop), got {:?}",
                        self.query_interval
                    ),
                )
            })?
            .allow_burst(query_burst);
        check_event_capacity(COMPONENT, self.event_capacity)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ConsulRegistry {
            inner: Arc::new(Inner {
                base,
                token,
                datacenter: self.datacenter,
                wait: self.wait,
                request_timeout: self.request_timeout,
                query_quota,
                backoff: self.backoff,
                client,
                counters: Counters::default(),
                events: EventHub::new(self.event_capacity),
                local: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
            }),
        })
    }
}
