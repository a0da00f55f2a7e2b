//! The validated settings of a [`PostgresLog`](super::PostgresLog).

use std::time::Duration;

use super::COMPONENT;
use crate::error::ConfigError;

/// Settings of a [`PostgresLog`].
#[derive(Debug, Clone)]
pub struct PostgresLogConfig {
    pub(super) pg: tokio_postgres::Config,
    pub(super) schema: String,
    pub(super) max_connections: usize,
    pub(super) connect_timeout: Duration,
    pub(super) acquire_timeout: Duration,
}

impl PostgresLogConfig {
    /// Starts from a connection string, either a URL
    /// (`postgres://user:password@host:port/database`) or key-value pairs
    /// (`host=... user=... dbname=...`), with the defaults: schema
    /// `palisade`, up to 8 connections, 10 s to connect, 30 s to wait for
    /// a free connection.
    pub fn builder(url: impl Into<String>) -> PostgresLogConfigBuilder {
        PostgresLogConfigBuilder {
            source: Source::Url(url.into()),
            schema: "palisade".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// Like [`builder`](Self::builder), from a parsed
    /// [`tokio_postgres::Config`].
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
}

#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Config(Box<tokio_postgres::Config>),
}

/// Builds a [`PostgresLogConfig`]; see [`PostgresLogConfig::builder`].
#[derive(Debug, Clone)]
pub struct PostgresLogConfigBuilder {
    source: Source,
    schema: String,
    max_connections: usize,
    connect_timeout: Duration,
    acquire_timeout: Duration,
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
    /// with [`LogError::Unavailable`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<PostgresLogConfig, ConfigError> {
        let mut pg = match self.source {
            Source::Url(url) => url.parse::<tokio_postgres::Config>().map_err(|e| {
                ConfigError::new(COMPONENT, "url", format!("is not a connection string: {e}"))
            })?,
            Source::Config(pg) => *pg,
        };
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
        })
    }
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
