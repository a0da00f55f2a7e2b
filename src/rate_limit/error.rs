//! The error a call rejected by a rate limiter fails with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Rejected;

/// The layer kind a rate limiter's [`Rejected`] marker names.
pub(crate) const LAYER: &str = "rate_limiter";

/// A call was rejected by a rate limiter without reaching the service: no
/// permit was available within the limiter's `max_wait_duration`.
///
/// Find it with `downcast_ref` or [`crate::find_cause`]. Its
/// [`source`](std::error::Error::source) is a [`Rejected`] marker (layer
/// `"rate_limiter"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    rejected: Rejected,
    retry_after: Duration,
}

impl RateLimited {
    pub(crate) fn new(limiter: Arc<str>, retry_after: Duration) -> Self {
        Self {
            rejected: Rejected::new(LAYER, limiter),
            retry_after,
        }
    }

    /// The name of the rate limiter that rejected the call.
    pub fn limiter(&self) -> &str {
        self.rejected.name()
    }

    /// How long after the rejection the next permit becomes available.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limiter '{}' has no permit: the next one is available in {:?}",
            self.limiter(),
            self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}
