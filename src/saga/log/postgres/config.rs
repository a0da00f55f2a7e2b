//! The validated settings of a [`PostgresLog`](super::PostgresLog).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::tls::{self, PostgresSslMode};
use super::{COMPONENT, conninfo};
use crate::error::ConfigError;

/// Settings of a [`PostgresLog`](super::PostgresLog).
///
/// `Debug` shows no password: tokio-postgres hides it in its
/// [`Config`](tokio_postgres::Config).
#[derive(Clone)]
pub struct PostgresLogConfig {
    pub(super) pg: tokio_postgres::Config,
    pub(super) schema: String,
    pub(super) max_connections: usize,
    pub(super) connect_timeout: Duration,
    pub(super) acquire_timeout: Duration,
    ssl_mode: PostgresSslMode,
    root_certificates: usize,
    /// `None` for [`PostgresSslMode::Disable`].
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for PostgresLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLogConfig")
            .field("pg", &self.pg)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_certificates", &self.root_certificates)
            .finish()
    }
}

impl PostgresLogConfig {
    /// Starts from a connection string, either a URL
    /// (`postgres://user:password@host:port/database`) or key-value pairs
    /// (`host=... user=... dbname=...`), with the defaults: schema
    /// `palisade`, up to 8 connections, 10 s to connect, 30 s to wait for
    /// a free connection.
    ///
    /// The string's `sslmode` and `sslrootcert` choose TLS (see
    /// [`PostgresSslMode`] and [`PostgresLog`'s TLS section](super::PostgresLog#tls)); with neither,
    /// TLS is used if the server offers it (`prefer`), as libpq does.
    pub fn builder(url: impl Into<String>) -> PostgresLogConfigBuilder {
        PostgresLogConfigBuilder {
            source: Source::Url(url.into()),
            schema: "palisade".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
            ssl_mode: None,
            root_certificates: Vec::new(),
        }
    }

    /// Like [`builder`](Self::builder), from a parsed
    /// [`tokio_postgres::Config`]; its
    /// [`ssl_mode`](tokio_postgres::Config::ssl_mode) is the TLS mode
    /// unless [`ssl_mode`](PostgresLogConfigBuilder::ssl_mode) is set.
    pub fn builder_from(pg: tokio_postgres::Config) -> PostgresLogConfigBuilder {
        PostgresLogConfigBuilder {
            source: Source::Config(Box::new(pg)),
            ..Self::builder(String::new())
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The most connections the log opens.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Whether and how connections use TLS.
    pub fn ssl_mode(&self) -> PostgresSslMode {
        self.ssl_mode
    }
}

#[derive(Clone)]
enum Source {
    Url(String),
    Config(Box<tokio_postgres::Config>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => f
                .debug_tuple("Url")
                .field(&conninfo::redacted(url))
                .finish(),
            Self::Config(pg) => f.debug_tuple("Config").field(pg).finish(),
        }
    }
}

/// Builds a [`PostgresLogConfig`]; see [`PostgresLogConfig::builder`].
///
/// `Debug` shows the connection string with its password replaced by
/// `<hidden>`.
#[derive(Debug, Clone)]
pub struct PostgresLogConfigBuilder {
    source: Source,
    schema: String,
    max_connections: usize,
    connect_timeout: Duration,
    acquire_timeout: Duration,
    ssl_mode: Option<PostgresSslMode>,
    root_certificates: Vec<Vec<u8>>,
}

/// The longest accepted connect and acquire timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl PostgresLogConfigBuilder {
    /// The schema holding the log's tables (default `palisade`): 1 to 63
    /// characters among `a-z`, `0-9` and `_`, not starting with a digit
    /// nor with `pg_`. Several logs (or test runs) can share a database
    /// in different schemas.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections open at once (1 to 1024, default 8). Each
    /// operation holds one connection for the length of its transaction.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long to wait for a new connection to be established (more than
    /// zero, at most 1 h; default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an operation waits for a free connection when all
    /// [`max_connections`](Self::max_connections) are busy (more than
    /// zero, at most 1 h; default 30 s). A timeout fails the operation
    /// with [`LogError::Unavailable`](crate::saga::log::LogError::Unavailable).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Whether and how connections use TLS, in place of the connection
    /// string's `sslmode` (or the parsed config's
    /// [`ssl_mode`](tokio_postgres::Config::ssl_mode)).
    pub fn ssl_mode(mut self, mode: PostgresSslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// Trusts the CA certificates in `pem` (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks) for `verify-ca` and
    /// `verify-full` (and `require`, which then verifies the chain as
    /// libpq does), besides those of the connection string's
    /// `sslrootcert`. May be called more than once.
    pub fn root_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_certificates.push(pem.as_ref().to_vec());
        self
    }

    /// Validates the settings; reads the connection string's `sslrootcert`
    /// file (once: a CA file replaced later is read by the next `build`).
    pub fn build(self) -> Result<PostgresLogConfig, ConfigError> {
        let (mut pg, options) = match self.source {
            Source::Url(url) => {
                // A string that does not parse goes to tokio-postgres as is,
                // to be refused below.
                let (rest, options) = conninfo::take_tls_options(&url)
                    .unwrap_or_else(|| (url.clone(), conninfo::TlsOptions::default()));
                // The parse error is not shown: it may quote the string,
                // password included.
                let pg = rest.parse::<tokio_postgres::Config>().map_err(|_| {
                    ConfigError::new(
                        COMPONENT,
                        "url",
                        "is not a connection string (neither a `postgres://` URL nor \
                         `key=value` pairs libpq and tokio-postgres accept)",
                    )
                })?;
                (pg, options)
            }
            Source::Config(pg) => {
                let options = conninfo::TlsOptions {
                    sslmode: Some(from_tokio_postgres(pg.get_ssl_mode()).as_sslmode().into()),
                    sslrootcert: None,
                };
                (*pg, options)
            }
        };
        let (ssl_mode, roots) = tls_settings(self.ssl_mode, options, &self.root_certificates)?;
        let root_certificates = roots.len();
        let tls = tls::client_config(ssl_mode, roots)
            .map_err(|problem| ConfigError::new(COMPONENT, "sslrootcert", problem))?
            .map(Arc::new);
        pg.ssl_mode(ssl_mode.negotiation());
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::new(COMPONENT, "url", "must name a host"));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("palisade-saga");
        }
        check_schema_name(&self.schema)?;
        if !(1..=1024).contains(&self.max_connections) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_connections",
                format!("must be 1 to 1024, got {}", self.max_connections),
            ));
        }
        for (field, timeout) in [
            ("connect_timeout", self.connect_timeout),
            ("acquire_timeout", self.acquire_timeout),
        ] {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(ConfigError::new(
                    COMPONENT,
                    field,
                    format!("must be more than zero and at most 1h, got {timeout:?}"),
                ));
            }
        }
        pg.connect_timeout(self.connect_timeout);
        Ok(PostgresLogConfig {
            pg,
            schema: self.schema,
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
            acquire_timeout: self.acquire_timeout,
            ssl_mode,
            root_certificates,
            tls,
        })
    }
}

fn from_tokio_postgres(mode: tokio_postgres::config::SslMode) -> PostgresSslMode {
    use tokio_postgres::config::SslMode;
    match mode {
        SslMode::Disable => PostgresSslMode::Disable,
        SslMode::Prefer => PostgresSslMode::Prefer,
        _ => PostgresSslMode::Require,
    }
}

/// The TLS mode and root certificates from the builder (`chosen`, `pems`)
/// and the connection string (`options`), checked as libpq does.
fn tls_settings(
    chosen: Option<PostgresSslMode>,
    options: conninfo::TlsOptions,
    pems: &[Vec<u8>],
) -> Result<(PostgresSslMode, Vec<CertificateDer<'static>>), ConfigError> {
    let written = match options.sslmode.as_deref() {
        None => None,
        Some("allow") => {
            return Err(ConfigError::new(
                COMPONENT,
                "sslmode",
                "`allow` is not supported: use disable, prefer, require, verify-ca or verify-full",
            ));
        }
        // The value is not shown: a mis-quoted string may have put
        // anything in it.
        Some(value) => Some(PostgresSslMode::from_sslmode(value).ok_or_else(|| {
            ConfigError::new(
                COMPONENT,
                "sslmode",
                "must be disable, prefer, require, verify-ca or verify-full",
            )
        })?),
    };
    let explicit = chosen.or(written);
    let mut roots = Vec::new();
    let mode = match options.sslrootcert.as_deref() {
        Some("system") => {
            // libpq: `system` implies verify-full and refuses weaker modes.
            if explicit.is_some_and(|mode| mode != PostgresSslMode::VerifyFull) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "sslmode",
                    "must be verify-full with sslrootcert=system",
                ));
            }
            roots = tls::system_certificates()
                .map_err(|problem| ConfigError::new(COMPONENT, "sslrootcert", problem))?;
            PostgresSslMode::VerifyFull
        }
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(
                    COMPONENT,
                    "sslrootcert",
                    format!("cannot read {path:?}: {e}"),
                )
            })?;
            roots = tls::pem_certificates(&pem).map_err(|problem| {
                ConfigError::new(COMPONENT, "sslrootcert", format!("{path:?} {problem}"))
            })?;
            explicit.unwrap_or_default()
        }
        None => explicit.unwrap_or_default(),
    };
    for pem in pems {
        roots.extend(
            tls::pem_certificates(pem)
                .map_err(|problem| ConfigError::new(COMPONENT, "root_certificate", problem))?,
        );
    }
    if mode.verifies() && roots.is_empty() {
        return Err(ConfigError::new(
            COMPONENT,
            "sslrootcert",
            format!(
                "must name a CA file (or `system`) for sslmode={mode}, \
                 unless root_certificate(..) gives one"
            ),
        ));
    }
    Ok((mode, roots))
}

pub(super) fn check_schema_name(schema: &str) -> Result<(), ConfigError> {
    let problem = if schema.is_empty() || schema.len() > 63 {
        Some(format!("must be 1 to 63 characters, got {}", schema.len()))
    } else if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some(format!("must use only a-z, 0-9 and _, got {schema:?}"))
    } else if schema.as_bytes()[0].is_ascii_digit() || schema.starts_with("pg_") {
        Some(format!(
            "must not start with a digit or `pg_`, got {schema:?}"
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::new(COMPONENT, "schema", problem)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        for good in ["palisade", "t_1", "_x", &"a".repeat(63)] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "pg_temp",
            "Upper",
            "a-b",
            "a\"b",
            &"a".repeat(64),
        ] {
            let err = check_schema_name(bad).unwrap_err();
            assert_eq!(err.field(), "schema", "{bad}");
        }
    }
}
