//! [`EtcdRegistryBuilder`]: the options of an [`EtcdRegistry`], checked
//! before connecting.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::discovery::error::DiscoveryError;
use crate::error::ConfigError;
use crate::events::{EventHub, check_event_capacity};

use super::super::tls::TlsSettings;
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
    tls: TlsSettings,
    /// User name and password; the password is never shown.
    credentials: Option<(String, String)>,
    event_capacity: usize,
}

impl fmt::Debug for EtcdRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistryBuilder")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("default_lease_ttl", &self.default_lease_ttl)
            .field("backoff", &self.backoff)
            .field("tls", &self.tls)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<redacted password>")),
            )
            .field("event_capacity", &self.event_capacity)
            // `connect_options` is left out: its `Debug` shows a password.
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
            tls: TlsSettings::default(),
            credentials: None,
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

    /// The lease TTL of registrations with
    /// [`HealthCheck::None`](crate::discovery::HealthCheck::None), at least
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

    /// Options of the etcd client (timeouts, keep-alive). The TLS options
    /// and credentials set on this builder replace those in `options`.
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connect_options = Some(options);
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM
    /// `CERTIFICATE` blocks) instead of the system's roots, for `https://`
    /// endpoints. Default: the system's roots.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_certificate = Some(pem.into());
        self
    }

    /// Presents a client certificate (mutual TLS, etcd's
    /// `--client-cert-auth`): the PEM certificate chain and its PEM private
    /// key. Default none.
    pub fn client_identity_pem(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The name etcd's certificate must hold, when it differs from the
    /// endpoints' host. Default the endpoint's host.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls.domain_name = Some(name.into());
        self
    }

    /// Authenticates as `user` with `password` (etcd's `auth enable`); the
    /// client gets a token at connect and sends it with every request. The
    /// password is never shown by `Debug`, errors or traces. Default none.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
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
    /// as [`DiscoveryError::Unavailable`] from the first operation. With
    /// credentials it authenticates at once: a wrong password is
    /// [`DiscoveryError::Unavailable`] from `connect`.
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
        let mut options = self.connect_options;
        let tls_on = self.tls.is_set() || endpoints.iter().any(|e| e.starts_with("https://"));
        if tls_on {
            if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "endpoints",
                    format!(
                        "must all be https:// URLs when TLS is on (TLS options set or an https:// endpoint), got {plain:?}"
                    ),
                )
                .into());
            }
            let checked = self.tls.check(COMPONENT)?;
            let mut tls = TlsOptions::new();
            tls = match &self.tls.ca_certificate {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((certificate, key)) = &self.tls.client_identity {
                tls = tls.identity(Identity::from_pem(certificate, key));
            }
            if let Some(name) = checked.domain_name {
                tls = tls.domain_name(name);
            }
            options = Some(options.unwrap_or_default().with_tls(tls));
        }
        if let Some((user, password)) = self.credentials {
            if user.is_empty() || user.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "credentials",
                    "the user must be non-empty, without control characters",
                )
                .into());
            }
            if password.is_empty() {
                return Err(ConfigError::new(
                    COMPONENT,
                    "credentials",
                    format!("the password of user {user:?} must be non-empty"),
                )
                .into());
            }
            if !tls_on {
                tracing::warn!(
                    backend = BACKEND,
                    %user,
                    "etcd credentials are sent without TLS: use https:// endpoints"
                );
            }
            options = Some(options.unwrap_or_default().with_user(user, password));
        }
        let client = Client::connect(&endpoints, options)
            .await
            .map_err(|e| DiscoveryError::unavailable(BACKEND, e))?;
        tracing::debug!(backend = BACKEND, ?endpoints, prefix = %self.prefix, tls = tls_on, "etcd registry created");
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
