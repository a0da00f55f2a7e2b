//! How a registry decides that a registered instance is healthy: a TTL the
//! instance renews, or an HTTP endpoint the registry polls.

use std::time::Duration;

use crate::error::ConfigError;

const COMPONENT: &str = "discovery health check";

/// The shortest TTL, interval or timeout a health check accepts.
pub const MIN_CHECK_PERIOD: Duration = Duration::from_millis(1);

/// The longest TTL, interval, timeout or `deregister_critical_after` a health
/// check accepts: one year. A longer period is a mistake (a TTL of
/// `Duration::MAX` would never lapse), so the builders reject it with a
/// [`ConfigError`] naming the field instead of overflowing the clock later.
pub const MAX_CHECK_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The health check of a registration, as Consul's agent runs them.
///
/// | check | healthy when | starts |
/// |---|---|---|
/// | [`HealthCheck::None`] | always, while registered | healthy |
/// | [`HealthCheck::Ttl`] | the instance renewed its TTL ([`Registrar::pass_ttl`](super::Registrar::pass_ttl)) within `ttl` | healthy: registering counts as the first renewal |
/// | [`HealthCheck::Http`] | the last `GET` of the check's path answered 2xx within its timeout | critical until the first check, run at once, passes |
///
/// A TTL instance whose TTL lapses is removed from the registry (the process
/// is presumed dead, as with an etcd lease); an HTTP instance that stays
/// critical for longer than `deregister_critical_after` is removed too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// No check: the instance is healthy until it is deregistered.
    None,
    /// The instance must renew its registration within `ttl`.
    Ttl {
        /// How long a renewal keeps the instance healthy.
        ttl: Duration,
    },
    /// The registry polls an HTTP endpoint of the instance.
    Http(HttpCheck),
}

impl HealthCheck {
    /// A TTL check; `ttl` must be within [`MIN_CHECK_PERIOD`] and
    /// [`MAX_CHECK_PERIOD`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade::discovery::HealthCheck;
    ///
    /// assert!(HealthCheck::ttl(Duration::from_secs(10)).is_ok());
    /// assert_eq!(HealthCheck::ttl(Duration::ZERO).unwrap_err().field(), "ttl");
    /// assert_eq!(HealthCheck::ttl(Duration::MAX).unwrap_err().field(), "ttl");
    /// ```
    pub fn ttl(ttl: Duration) -> Result<Self, ConfigError> {
        check_period("ttl", ttl)?;
        Ok(HealthCheck::Ttl { ttl })
    }

    /// An HTTP check with the defaults of [`HttpCheck::builder`].
    pub fn http() -> Self {
        HealthCheck::Http(HttpCheck::default())
    }
}

fn check_period(field: &'static str, period: Duration) -> Result<(), ConfigError> {
    if period < MIN_CHECK_PERIOD {
        return Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be at least 1ms, got {period:?}"),
        ));
    }
    if period > MAX_CHECK_PERIOD {
        return Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be at most one year (MAX_CHECK_PERIOD), got {period:?}"),
        ));
    }
    Ok(())
}

/// An HTTP health check: `GET http://<instance address><path>` every
/// `interval`; a 2xx answer within `timeout` passes, anything else (another
/// status, a refused connection, a timeout) is critical.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `path` | `/health` | Path and query requested on the instance's address. |
/// | `interval` | 10 s | Time between the starts of two checks. |
/// | `timeout` | 5 s | How long one check may take; must not exceed `interval`. |
/// | `deregister_critical_after` | none | Remove the instance once it has been critical this long (Consul's `DeregisterCriticalServiceAfter`); none keeps it, unhealthy. |
///
/// ```
/// use std::time::Duration;
/// use palisade::discovery::HttpCheck;
///
/// let check = HttpCheck::builder()
///     .path("/ready")
///     .interval(Duration::from_secs(2))
///     .timeout(Duration::from_secs(1))
///     .deregister_critical_after(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(check.path(), "/ready");
///
/// let err = HttpCheck::builder().path("ready").build().unwrap_err();
/// assert_eq!(err.field(), "path");
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    path: String,
    interval: Duration,
    timeout: Duration,
    deregister_critical_after: Option<Duration>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            deregister_critical_after: None,
        }
    }
}

impl HttpCheck {
    /// Starts from the defaults.
    pub fn builder() -> HttpCheckBuilder {
        HttpCheckBuilder {
            check: Self::default(),
        }
    }

    /// The path (and query) requested.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Time between the starts of two checks.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long one check may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long an instance may stay critical before it is removed; `None`
    /// keeps it.
    pub fn deregister_critical_after(&self) -> Option<Duration> {
        self.deregister_critical_after
    }
}

/// Builds an [`HttpCheck`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a health check"]
pub struct HttpCheckBuilder {
    check: HttpCheck,
}

impl HttpCheckBuilder {
    /// The path (and optional query) to `GET`; must start with `/` and be a
    /// valid URI path. Default `/health`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.check.path = path.into();
        self
    }

    /// Time between the starts of two checks, at least 1 ms. Default 10 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.check.interval = interval;
        self
    }

    /// How long one check may take, at least 1 ms and at most `interval`.
    /// Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.check.timeout = timeout;
        self
    }

    /// Remove the instance once it has been critical this long, at least
    /// 1 ms. Default: never.
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.check.deregister_critical_after = Some(after);
        self
    }

    /// Checks every field and returns the check, or the first field that
    /// breaks its rule.
    pub fn build(self) -> Result<HttpCheck, ConfigError> {
        let c = &self.check;
        if !c.path.starts_with('/') {
            return Err(ConfigError::new(
                COMPONENT,
                "path",
                format!("must start with '/', got {:?}", c.path),
            ));
        }
        if c.path
            .chars()
            .any(|ch| ch.is_control() || ch.is_whitespace() || ch == '#' || !ch.is_ascii())
        {
            return Err(ConfigError::new(
                COMPONENT,
                "path",
                format!(
                    "must be ASCII without whitespace, control characters or '#', got {:?}",
                    c.path
                ),
            ));
        }
        check_period("interval", c.interval)?;
        check_period("timeout", c.timeout)?;
        if c.timeout > c.interval {
            return Err(ConfigError::new(
                COMPONENT,
                "timeout",
                format!(
                    "must not exceed interval ({:?}), got {:?}",
                    c.interval, c.timeout
                ),
            ));
        }
        if let Some(after) = c.deregister_critical_after {
            check_period("deregister_critical_after", after)?;
        }
        Ok(self.check)
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn periods_past_one_year_are_rejected_naming_the_field() {
        assert_eq!(HealthCheck::ttl(Duration::MAX).unwrap_err().field(), "ttl");
        let err = HttpCheck::builder()
            .interval(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "interval");
        assert!(err.to_string().contains("at most one year"), "{err}");
        let err = HttpCheck::builder()
            .deregister_critical_after(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "deregister_critical_after");
        assert!(HealthCheck::ttl(MAX_CHECK_PERIOD).is_ok());
    }
}
