//! How a registry decides that a registered instance is healthy: a TTL the
//! instance renews, or an HTTP endpoint or (feature `tonic`) a gRPC health
//! service the registry polls.

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
/// | `HealthCheck::Grpc` (feature `tonic`) | the last grpc.health.v1 `Check` answered `SERVING` within its timeout | critical until the first check, run at once, passes |
///
/// A TTL instance whose TTL lapses is removed from the registry (the process
/// is presumed dead, as with an etcd lease); an HTTP or gRPC instance that
/// stays critical for longer than `deregister_critical_after` is removed
/// too. A gRPC server (HTTP/2 only) never passes an HTTP check, which
/// speaks HTTP/1.1: give it a gRPC check.
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
    /// The registry calls the instance's gRPC health service
    /// (`grpc.health.v1.Health/Check`, over HTTP/2).
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    Grpc(GrpcCheck),
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

    /// A gRPC check of the server's overall health (service name `""`)
    /// with the defaults of [`GrpcCheck::builder`].
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc() -> Self {
        HealthCheck::Grpc(GrpcCheck::default())
    }

    /// Time between two polls of a polled check (HTTP, gRPC). Only the
    /// in-memory registry's check runner, built with `http`, polls.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn poll_interval(&self) -> Option<Duration> {
        match self {
            HealthCheck::Http(http) => Some(http.interval()),
            #[cfg(feature = "tonic")]
            HealthCheck::Grpc(grpc) => Some(grpc.interval()),
            HealthCheck::None | HealthCheck::Ttl { .. } => None,
        }
    }

    /// How long a polled check may stay critical before its instance is
    /// removed.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn deregister_critical_after(&self) -> Option<Duration> {
        match self {
            HealthCheck::Http(http) => http.deregister_critical_after(),
            #[cfg(feature = "tonic")]
            HealthCheck::Grpc(grpc) => grpc.deregister_critical_after(),
            HealthCheck::None | HealthCheck::Ttl { .. } => None,
        }
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
        check_timing(c.interval, c.timeout, c.deregister_critical_after)?;
        Ok(self.check)
    }
}

/// The rules an active check's timing shares with every other kind: each
/// period within [`check_period`]'s bounds, and a timeout no longer than
/// the interval.
fn check_timing(
    interval: Duration,
    timeout: Duration,
    deregister_critical_after: Option<Duration>,
) -> Result<(), ConfigError> {
    check_period("interval", interval)?;
    check_period("timeout", timeout)?;
    if timeout > interval {
        return Err(ConfigError::new(
            COMPONENT,
            "timeout",
            format!("must not exceed interval ({interval:?}), got {timeout:?}"),
        ));
    }
    if let Some(after) = deregister_critical_after {
        check_period("deregister_critical_after", after)?;
    }
    Ok(())
}

#[cfg(feature = "tonic")]
pub use self::grpc::{GrpcCheck, GrpcCheckBuilder};

#[cfg(feature = "tonic")]
mod grpc {
    use std::time::Duration;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::{COMPONENT, check_timing};
    use crate::discovery::instance::InstanceAddress;
    use crate::error::ConfigError;

    /// A gRPC health check: calls `grpc.health.v1.Health/Check` for
    /// `service` on the instance (plain-text HTTP/2) every `interval`;
    /// `SERVING` within `timeout` passes, anything else (`NOT_SERVING`,
    /// `SERVICE_UNKNOWN`, an error status, a refused connection, a timeout)
    /// is critical. The protocol is gRPC's own
    /// (<https://github.com/grpc/grpc/blob/master/doc/health-checking.md>),
    /// served by `tonic-health` and most gRPC servers.
    ///
    /// | option | default | meaning |
    /// |---|---|---|
    /// | `service` | `""` | The service name asked about; `""` is the server as a whole. |
    /// | `interval` | 10 s | Time between the starts of two checks. |
    /// | `timeout` | 5 s | How long one check may take, connecting included; must not exceed `interval`. |
    /// | `deregister_critical_after` | none | Remove the instance once it has been critical this long. |
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade::discovery::{GrpcCheck, HealthCheck};
    ///
    /// let check = GrpcCheck::builder()
    ///     .service("orders.v1.Orders")
    ///     .interval(Duration::from_secs(2))
    ///     .timeout(Duration::from_secs(1))
    ///     .build()?;
    /// assert_eq!(check.service(), "orders.v1.Orders");
    /// let check = HealthCheck::Grpc(check);
    /// # drop(check);
    /// # Ok::<(), palisade::ConfigError>(())
    /// ```
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GrpcCheck {
        service: String,
        interval: Duration,
        timeout: Duration,
        deregister_critical_after: Option<Duration>,
    }

    impl Default for GrpcCheck {
        fn default() -> Self {
            Self {
                service: String::new(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(5),
                deregister_critical_after: None,
            }
        }
    }

    impl GrpcCheck {
        /// Starts from the defaults.
        pub fn builder() -> GrpcCheckBuilder {
            GrpcCheckBuilder {
                check: Self::default(),
            }
        }

        /// The service name asked about (`""`: the whole server).
        pub fn service(&self) -> &str {
            &self.service
        }

        /// Time between the starts of two checks.
        pub fn interval(&self) -> Duration {
            self.interval
        }

        /// How long one check may take.
        pub fn timeout(&self) -> Duration {
            self.timeout
        }

        /// How long an instance may stay critical before it is removed;
        /// `None` keeps it.
        pub fn deregister_critical_after(&self) -> Option<Duration> {
            self.deregister_critical_after
        }

        /// Runs one check against `address`; `Err` says why it is critical.
        /// A new connection each time, as Consul's agent does.
        pub(crate) async fn probe(&self, address: &InstanceAddress) -> Result<(), String> {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| format!("invalid check address: {e}"))?
                .connect_timeout(self.timeout)
                .timeout(self.timeout);
            let attempt = async {
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("connection failed: {}", error_chain(&e)))?;
                let request = HealthCheckRequest {
                    service: self.service.clone(),
                };
                let response =
                    HealthClient::new(channel)
                        .check(request)
                        .await
                        .map_err(|status| {
                            format!("status {:?}: {}", status.code(), status.message())
                        })?;
                match response.into_inner().status() {
                    ServingStatus::Serving => Ok(()),
                    other => Err(format!("serving status {}", other.as_str_name())),
                }
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {:?}", self.timeout)),
            }
        }
    }

    fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// Builds a [`GrpcCheck`]; every setter is checked in [`build`](Self::build).
    #[derive(Debug, Clone)]
    #[must_use = "call .build() to get a health check"]
    pub struct GrpcCheckBuilder {
        check: GrpcCheck,
    }

    impl GrpcCheckBuilder {
        /// The service name to ask about, such as `orders.v1.Orders`.
        /// Default `""`: the server as a whole.
        pub fn service(mut self, service: impl Into<String>) -> Self {
            self.check.service = service.into();
            self
        }

        /// Time between the starts of two checks, at least 1 ms. Default 10 s.
        pub fn interval(mut self, interval: Duration) -> Self {
            self.check.interval = interval;
            self
        }

        /// How long one check may take, at least 1 ms and at most
        /// `interval`. Default 5 s.
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.check.timeout = timeout;
            self
        }

        /// Remove the instance once it has been critical this long, at
        /// least 1 ms. Default: never.
        pub fn deregister_critical_after(mut self, after: Duration) -> Self {
            self.check.deregister_critical_after = Some(after);
            self
        }

        /// Checks every field and returns the check, or the first field
        /// that breaks its rule.
        pub fn build(self) -> Result<GrpcCheck, ConfigError> {
            let c = &self.check;
            if c.service
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace())
            {
                return Err(ConfigError::new(
                    COMPONENT,
                    "service",
                    format!(
                        "must not contain whitespace or control characters, got {:?}",
                        c.service
                    ),
                ));
            }
            check_timing(c.interval, c.timeout, c.deregister_critical_after)?;
            Ok(self.check)
        }
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
