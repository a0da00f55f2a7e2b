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
    pub(super) rejected: Rejected,
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

/// A call was rejected by a [`KeyedRateLimiter`](super::KeyedRateLimiter)
/// because its key is new and the limiter already holds state for
/// `max_keys` keys, none of them idle (see
/// [the bound on keys](super::KeyedRateLimiter#a-bounded-number-of-keys)).
///
/// Calls with keys the limiter already knows are not affected. Find it with
/// `downcast_ref` or [`crate::find_cause`]. Its
/// [`source`](std::error::Error::source) is a [`Rejected`] marker (layer
/// `"rate_limiter"`), as [`RateLimited`]'s is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyKeys {
    pub(super) rejected: Rejected,
    max_keys: usize,
}

impl TooManyKeys {
    pub(crate) fn new(limiter: Arc<str>, max_keys: usize) -> Self {
        Self {
            rejected: Rejected::new(LAYER, limiter),
            max_keys,
        }
    }

    /// The name of the rate limiter that rejected the call.
    pub fn limiter(&self) -> &str {
        self.rejected.name()
    }

    /// The most keys the limiter holds state for.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }
}

impl fmt::Display for TooManyKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limiter '{}' holds the most keys it may ({}), none idle: a new key is rejected",
            self.limiter(),
            self.max_keys
        )
    }
}

impl std::error::Error for TooManyKeys {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}

/// Why a [`KeyedRateLimiter`](super::KeyedRateLimiter) refused a permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedRejection {
    /// The key's permits are used up for now.
    RateLimited(RateLimited),
    /// The key is new and the limiter holds the most keys it may.
    TooManyKeys(TooManyKeys),
}

impl KeyedRejection {
    /// The [`Rejected`] marker of either rejection.
    pub fn rejected(&self) -> &Rejected {
        match self {
            KeyedRejection::RateLimited(error) => &error.rejected,
            KeyedRejection::TooManyKeys(error) => &error.rejected,
        }
    }
}

impl fmt::Display for KeyedRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyedRejection::RateLimited(error) => error.fmt(f),
            KeyedRejection::TooManyKeys(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for KeyedRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.rejected())
    }
}

impl KeyedRejection {
    /// The rejection itself, boxed ([`RateLimited`] or [`TooManyKeys`]),
    /// so that callers downcast to the same types as for the other layers;
    /// the keyed layer's services fail with this.
    pub fn into_error(self) -> crate::BoxError {
        match self {
            KeyedRejection::RateLimited(error) => Box::new(error),
            KeyedRejection::TooManyKeys(error) => Box::new(error),
        }
    }
}
