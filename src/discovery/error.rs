//! The errors of registries and of the balancer.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::error::{BoxError, ConfigError};

use super::instance::ServiceName;

/// A registry operation failed.
///
/// Cheap to clone (a backend's I/O error is kept behind an `Arc`), so a
/// watch can hand the same error to every subscriber.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The instance is not (or no longer) registered: deregistering it
    /// twice, or renewing the TTL of an instance whose TTL lapsed.
    #[error("instance '{id}' of service '{service}' is not registered")]
    NotRegistered {
        /// The service named in the call.
        service: String,
        /// The instance id named in the call.
        id: String,
    },
    /// The registry cannot do this, e.g. an HTTP check with etcd (which
    /// runs no checks), a TTL renewal for an instance registered without a
    /// TTL check, or a DNS service without a query.
    #[error("the {backend} registry does not support {operation}")]
    Unsupported {
        /// The backend, e.g. `"static"`.
        backend: &'static str,
        /// What was asked, e.g. `"register"`.
        operation: &'static str,
    },
    /// The backend's server could not be reached or answered with an error;
    /// the operation may succeed later.
    #[error("the {backend} registry is unavailable: {source}")]
    Unavailable {
        /// The backend, e.g. `"consul"`.
        backend: &'static str,
        /// What went wrong.
        #[source]
        source: Arc<dyn Error + Send + Sync>,
    },
    /// The backend's server answered with data that is not a valid instance.
    #[error("the {backend} registry returned invalid data: {detail}")]
    InvalidData {
        /// The backend, e.g. `"etcd"`.
        backend: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The registry was shut down (its last handle dropped).
    #[error("the {backend} registry is closed")]
    Closed {
        /// The backend, e.g. `"in-memory"`.
        backend: &'static str,
    },
    /// The registration was rejected (an invalid field).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl DiscoveryError {
    /// An [`Unavailable`](Self::Unavailable) error from `backend` caused by `source`.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        DiscoveryError::Unavailable {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// A [`NotRegistered`](Self::NotRegistered) error.
    pub fn not_registered(service: impl Into<String>, id: impl Into<String>) -> Self {
        DiscoveryError::NotRegistered {
            service: service.into(),
            id: id.into(),
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DiscoveryError::Unavailable { .. })
    }
}

/// A call reached a balancer that had no healthy instance of its service to
/// send it to (none registered, all failing their health checks, or all
/// ejected).
///
/// Returned from the response future, boxed in a [`BoxError`]; find it with
/// `downcast_ref` or [`crate::find_cause`].
///
/// ```
/// use palisade::discovery::{NoHealthyInstance, ServiceName};
///
/// let err = NoHealthyInstance::new(ServiceName::new("payments")?);
/// assert_eq!(err.service().as_str(), "payments");
/// assert_eq!(err.to_string(), "no healthy instance of service 'payments'");
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoHealthyInstance {
    service: ServiceName,
}

impl NoHealthyInstance {
    /// The error for `service`.
    pub fn new(service: ServiceName) -> Self {
        Self { service }
    }

    /// The service that had no healthy instance.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
}

impl fmt::Display for NoHealthyInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no healthy instance of service '{}'", self.service)
    }
}

impl Error for NoHealthyInstance {}
