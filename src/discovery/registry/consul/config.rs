//! [`ConsulRegistryBuilder`]: the options of a [`ConsulRegistry`] and the
//! rules they are checked against.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use governor::Quota;
use http::Uri;
use http::header::HeaderValue;
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;

use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::events::{EventHub, check_event_capacity};

use super::super::tls::TlsSettings;
use super::{ConsulRegistry, Counters, Inner};

const COMPONENT: &str = "consul registry";

/// The longest `wait` Consul accepts for a blocking query.
pub const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// Builds a [`ConsulRegistry`]; every setter is checked in
/// [`build`](Self::build). See [`ConsulRegistry`] for the defaults.
///
/// Its `Debug` shows whether a token and a client key are set, never
/// their values.
#[derive(Clone)]
#[must_use = "call .build() to get a registry"]
pub struct ConsulRegistryBuilder {
    address: String,
    /// The ACL token: never shown.
    token: Option<String>,
    tls: TlsSettings,
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
            tls: TlsSettings::default(),
            datacenter: None,
            wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            query_burst: 2,
            query_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            event_capacity: 256,
        }
    }

    /// The agent's base URL, `http://host:port` or `https://host:port`
    /// (optionally with a path prefix). Default `http://127.0.0.1:8500`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// An ACL token, sent as `X-Consul-Token` on every request. It is never
    /// shown by `Debug`, errors, events or traces. Default none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM
    /// `CERTIFICATE` blocks) instead of the system's roots, for an
    /// `https://` address. Default: the system's roots.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_certificate = Some(pem.into());
        self
    }

    /// Presents a client certificate (mutual TLS, Consul's
    /// `verify_incoming`): the PEM certificate chain and its PEM private
    /// key. Default none.
    pub fn client_identity_pem(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The name the agent's certificate must hold, when it differs from
    /// the address's host. Default the address's host.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls.domain_name = Some(name.into());
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
        if userinfo_range(&base).is_some() {
            // Not quoted: the part before '@' may be a password.
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                "must not hold a user or password (user:password@host); use token",
            ));
        }
        let uri: Uri = base.parse().map_err(|e| {
            ConfigError::new(
                COMPONENT,
                "address",
                format!("must be a URL like http://127.0.0.1:8500, got {base:?} ({e})"),
            )
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "address",
                    format!("must be an http:// or https:// URL with a host, got {base:?}"),
                ));
            }
        };
        if uri.authority().is_none() || uri.query().is_some() {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                format!("must be a URL with a host and no query, got {base:?}"),
            ));
        }
        if !https && self.tls.is_set() {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                format!("must be an https:// URL when TLS options are set, got {base:?}"),
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
        let tls = self.tls.check(COMPONENT)?;
        // The system's roots are read only for an https:// agent without a
        // CA certificate of its own; an http:// agent never uses TLS.
        let system_roots = if https && tls.ca_certificates.is_none() {
            system_roots()?
        } else {
            RootCertStore::empty()
        };
        let tls_config = tls.client_config(COMPONENT, system_roots)?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new().with_tls_config(tls_config);
        let connector = if https {
            connector.https_only()
        } else {
            connector.https_or_http()
        };
        let connector = match tls.domain_name {
            Some(name) => {
                let name = ServerName::try_from(name)
                    .map_err(|e| ConfigError::new(COMPONENT, "tls_domain_name", e.to_string()))?;
                connector.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => connector,
        };
        let connector = connector.enable_http1().wrap_connector(http);
        Ok(ConsulRegistry {
            inner: Arc::new(Inner {
                base,
                token,
                datacenter: self.datacenter,
                wait: self.wait,
                request_timeout: self.request_timeout,
                query_quota,
                backoff: self.backoff,
                client: Client::builder(TokioExecutor::new()).build(connector),
                counters: Counters::default(),
                events: EventHub::new(self.event_capacity),
                local: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
            }),
        })
    }
}

/// The certificates the system trusts (rustls-native-certs).
fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ConfigError::new(
            COMPONENT,
            "ca_certificate",
            "must be set for an https:// address: the system has no CA certificates",
        ));
    }
    Ok(roots)
}

impl fmt::Debug for ConsulRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistryBuilder")
            .field("address", &redact_userinfo(&self.address))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("datacenter", &self.datacenter)
            .field("wait", &self.wait)
            .field("request_timeout", &self.request_timeout)
            .field("query_burst", &self.query_burst)
            .field("query_interval", &self.query_interval)
            .field("backoff", &self.backoff)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

/// Where `user:password@` sits in `address`, if it has one.
fn userinfo_range(address: &str) -> Option<std::ops::Range<usize>> {
    let start = address.find("://").map_or(0, |i| i + 3);
    let authority_len = address[start..]
        .find(['/', '?', '#'])
        .unwrap_or(address.len() - start);
    let at = address[start..start + authority_len].rfind('@')?;
    Some(start..start + at + 1)
}

/// `address` with any `user:password@` replaced, for `Debug`.
fn redact_userinfo(address: &str) -> String {
    match userinfo_range(address) {
        None => address.to_owned(),
        Some(range) => format!(
            "{}<redacted>@{}",
            &address[..range.start],
            &address[range.end..]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_user_and_password_of_an_address() {
        assert_eq!(
            redact_userinfo("https://admin:s3cret@consul.local:8501/prefix"),
            "https://<redacted>@consul.local:8501/prefix"
        );
        assert_eq!(
            redact_userinfo("http://127.0.0.1:8500/a@b"),
            "http://127.0.0.1:8500/a@b"
        );
    }
}
