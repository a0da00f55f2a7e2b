//! The error a call rejected by a bulkhead fails with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Rejected;

/// The layer kind a bulkhead's [`Rejected`] marker names.
pub(crate) const LAYER: &str = "bulkhead";

/// A call was rejected by a bulkhead without reaching the service: every
/// permit was taken and the caller could not (or could no longer) wait.
///
/// Distinct from the circuit breaker's [`BreakerOpen`](crate::circuit_breaker::BreakerOpen);
/// find it with `downcast_ref` or [`crate::find_cause`]. Its
/// [`source`](std::error::Error::source) is a [`Rejected`] marker (layer
/// `"bulkhead"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadFull {
    rejected: Rejected,
    max_concurrent_calls: usize,
    waited: Duration,
    queue_full: bool,
}

impl BulkheadFull {
    pub(crate) fn new(
        bulkhead: Arc<str>,
        max_concurrent_calls: usize,
        waited: Duration,
        queue_full: bool,
    ) -> Self {
        Self {
            rejected: Rejected::new(LAYER, bulkhead),
            max_concurrent_calls,
            waited,
            queue_full,
        }
    }

    /// The name of the bulkhead that rejected the call.
    pub fn bulkhead(&self) -> &str {
        self.rejected.name()
    }

    /// Its limit when it rejected the call.
    pub fn max_concurrent_calls(&self) -> usize {
        self.max_concurrent_calls
    }

    /// How long the caller waited for a permit before giving up.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether the caller was rejected because too many were already waiting.
    pub fn queue_full(&self) -> bool {
        self.queue_full
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulkhead '{}' is full: all {} permits are in use",
            self.bulkhead(),
            self.max_concurrent_calls
        )?;
        if self.queue_full {
            f.write_str(" and the waiting queue is full")
        } else if self.waited.is_zero() {
            Ok(())
        } else {
            write!(f, " (waited {:?})", self.waited)
        }
    }
}

impl std::error::Error for BulkheadFull {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}
