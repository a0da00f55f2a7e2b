//! The error a call rejected by an adaptive concurrency limit fails with.

use std::fmt;
use std::sync::Arc;

use crate::error::Rejected;

/// The layer kind an adaptive limit's [`Rejected`] marker names.
pub(crate) const LAYER: &str = "adaptive_concurrency";

/// A call was rejected by an
/// [`AdaptiveConcurrency`](super::AdaptiveConcurrency) limit without
/// reaching the service: as many calls as the current limit were in flight.
///
/// Its [`source`](std::error::Error::source) is a [`Rejected`] marker
/// (layer `"adaptive_concurrency"`), so retries and breakers with
/// [`pass_rejections`](crate::classify::ClassifyExt::pass_rejections) treat
/// it as a rejection, not as the dependency's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimitExceeded {
    rejected: Rejected,
    limit: usize,
}

impl ConcurrencyLimitExceeded {
    pub(crate) fn new(name: Arc<str>, limit: usize) -> Self {
        Self {
            rejected: Rejected::new(LAYER, name),
            limit,
        }
    }

    /// The name of the limit that rejected the call.
    pub fn name(&self) -> &str {
        self.rejected.name()
    }

    /// The limit when it rejected the call.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for ConcurrencyLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "adaptive concurrency limit '{}' reached: {} calls in flight",
            self.name(),
            self.limit
        )
    }
}

impl std::error::Error for ConcurrencyLimitExceeded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}
