//! What a fallback reports to its subscribers.

use std::fmt;
use std::sync::Arc;

/// One thing that happened to a fallback; delivered by
/// [`Fallback::subscribe`](super::Fallback::subscribe).
#[derive(Debug, Clone)]
pub struct FallbackEvent {
    /// The fallback's name.
    pub fallback: Arc<str>,
    /// What happened.
    pub kind: FallbackEventKind,
}

/// The kinds of [`FallbackEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackEventKind {
    /// The fallback answered a call in place of the inner service.
    Answered {
        /// Which kind of fallback answered.
        source: FallbackSource,
        /// Why.
        cause: FailureCause,
    },
    /// A call should have been answered with the last good response for
    /// its key, but there was none: the failure passed through.
    NoLastGood {
        /// Why the call was to be answered.
        cause: FailureCause,
    },
}

/// Which kind of fallback answered a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackSource {
    /// The configured static value.
    Value,
    /// The configured function of the failure.
    Function,
    /// The last good response for the request's key.
    LastGood,
}

impl FallbackSource {
    /// `"value"`, `"function"` or `"last_good"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackSource::Value => "value",
            FallbackSource::Function => "function",
            FallbackSource::LastGood => "last_good",
        }
    }
}

impl fmt::Display for FallbackSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call was answered by a fallback (or from stale data by a
/// [cache](crate::cache)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// The classifier called the outcome a failure.
    Failure,
    /// An inner layer rejected the call (its error carries the
    /// [`Rejected`](crate::error::Rejected) marker).
    Rejection,
}

impl FailureCause {
    /// `"failure"` or `"rejection"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Failure => "failure",
            FailureCause::Rejection => "rejection",
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
