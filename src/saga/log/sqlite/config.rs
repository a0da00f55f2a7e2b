//! The validated settings of a [`SqliteLog`](super::SqliteLog).

use std::time::Duration;

use crate::error::ConfigError;

const COMPONENT: &str = "sqlite saga log";

/// The largest [`max_batch`](SqliteLogConfigBuilder::max_batch).
pub const MAX_SQLITE_BATCH: usize = 65_536;

/// How hard SQLite works to make each commit survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// `synchronous = FULL`: a commit survives an operating-system crash
    /// or a power loss (the default).
    #[default]
    Full,
    /// `synchronous = NORMAL`: in WAL mode a commit survives a crash of
    /// the process but the last ones may be lost on power loss; faster.
    Normal,
}

/// Settings of a [`SqliteLog`](super::SqliteLog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteLogConfig {
    pub(super) max_batch: usize,
    pub(super) synchronous: SqliteSync,
    pub(super) busy_timeout: Duration,
    pub(super) queue_capacity: usize,
}

impl Default for SqliteLogConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            synchronous: SqliteSync::Full,
            busy_timeout: Duration::from_secs(5),
            queue_capacity: 4096,
        }
    }
}

impl SqliteLogConfig {
    /// Starts from the defaults: batches of up to 1024 operations,
    /// `synchronous = FULL`, a 5 s busy timeout, 4096 queued operations.
    pub fn builder() -> SqliteLogConfigBuilder {
        SqliteLogConfigBuilder {
            config: Self::default(),
        }
    }
}

/// Builds a [`SqliteLogConfig`].
#[derive(Debug, Clone)]
pub struct SqliteLogConfigBuilder {
    config: SqliteLogConfig,
}

impl SqliteLogConfigBuilder {
    /// The most operations committed in one transaction (1 to
    /// [`MAX_SQLITE_BATCH`]). 1 disables group commit.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.config.max_batch = max_batch;
        self
    }

    /// The durability of each commit.
    pub fn synchronous(mut self, synchronous: SqliteSync) -> Self {
        self.config.synchronous = synchronous;
        self
    }

    /// How long to wait for another process's lock on the file (at most
    /// one hour).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.config.busy_timeout = timeout;
        self
    }

    /// How many operations may wait for the writer thread (at least 1,
    /// default 4096). When the queue is full, callers wait for room
    /// (backpressure) instead of queueing without bound.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<SqliteLogConfig, ConfigError> {
        let config = self.config;
        if !(1..=MAX_SQLITE_BATCH).contains(&config.max_batch) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_batch",
                format!("must be 1 to {MAX_SQLITE_BATCH}, got {}", config.max_batch),
            ));
        }
        if config.queue_capacity == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "queue_capacity",
                "must be at least 1, got 0",
            ));
        }
        if config.busy_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                COMPONENT,
                "busy_timeout",
                format!("must be at most 1h, got {:?}", config.busy_timeout),
            ));
        }
        Ok(config)
    }
}
