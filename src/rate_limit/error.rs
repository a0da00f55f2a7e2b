//! The error a call rejected by a rate limiter fails with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A call was rejected by a rate limiter without reaching the service: no
/// permit was available within the limiter's `max_wait_duration`.
///
/// Find it with `downcast_ref` or [`crate::find_cause`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub(crate) limiter: Arc<str>,
    pub(crate) retry_after: Duration,
}

impl RateLimited {
    /// The name of the rate limiter that rejected the call.
    pub fn limiter(&self) -> &str {
        &self.limiter
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
            self.limiter, self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}
