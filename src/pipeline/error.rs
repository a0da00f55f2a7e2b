//! [`PipelineError`]: one error type, whose variant names the stage.

use std::fmt;
use std::time::Duration;

use crate::bulkhead::BulkheadFull;
use crate::circuit_breaker::BreakerOpen;
use crate::error::BoxError;
use crate::rate_limit::RateLimited;
use crate::retry::{AttemptTimedOut, RetryTimedOut};

/// The stages of a [`Pipeline`](super::Pipeline), outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The retry stage (outermost).
    Retry,
    /// The circuit breaker.
    CircuitBreaker,
    /// The rate limiter.
    RateLimiter,
    /// The timeout (time limiter).
    Timeout,
    /// The bulkhead (innermost).
    Bulkhead,
    /// The wrapped service itself.
    Service,
}

impl Stage {
    /// The stage's name in traces: `"retry"`, `"circuit_breaker"`,
    /// `"rate_limiter"`, `"timeout"`, `"bulkhead"` or `"service"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Retry => "retry",
            Stage::CircuitBreaker => "circuit_breaker",
            Stage::RateLimiter => "rate_limiter",
            Stage::Timeout => "timeout",
            Stage::Bulkhead => "bulkhead",
            Stage::Service => "service",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call through a [`Pipeline`](super::Pipeline) took too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub(crate) stage: Stage,
    pub(crate) after: Duration,
}

impl TimedOut {
    /// The stage whose deadline passed: [`Stage::Timeout`] for the timeout
    /// stage, [`Stage::Retry`] for the retry's `attempt_timeout` or
    /// `overall_timeout`.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The deadline that passed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?} ({} stage)", self.after, self.stage)
    }
}

impl std::error::Error for TimedOut {}

/// Why a call through a [`Pipeline`](super::Pipeline) failed: the stage
/// that rejected it, or the service's own error.
///
/// Each variant's [`source`](std::error::Error::source) is the stage's own
/// error, so [`crate::find_cause`] finds a [`BreakerOpen`] inside a
/// `PipelineError` as well as on its own.
///
/// ```
/// use palisade::circuit_breaker::CircuitBreaker;
/// use palisade::pipeline::{Pipeline, PipelineError, Stage};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let breaker = CircuitBreaker::with_defaults("users");
/// breaker.transition_to_forced_open();
/// let mut users = ServiceBuilder::new()
///     .layer(Pipeline::builder("users").circuit_breaker(breaker).build()?)
///     .service_fn(|id: u64| async move { Ok::<_, std::io::Error>(id) });
///
/// match users.ready().await?.call(7).await {
///     Err(PipelineError::CircuitOpen(open)) => assert_eq!(open.breaker(), "users"),
///     other => panic!("expected the breaker's rejection, got {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PipelineError {
    /// The circuit breaker rejected the call.
    CircuitOpen(BreakerOpen),
    /// The rate limiter had no permit for the call.
    RateLimited(RateLimited),
    /// The bulkhead had no room for the call.
    BulkheadFull(BulkheadFull),
    /// A deadline passed: the timeout stage's, or the retry stage's.
    TimedOut(TimedOut),
    /// The service failed (after any retries); its error is inside.
    Service(BoxError),
}

impl PipelineError {
    /// The stage the error comes from.
    pub fn stage(&self) -> Stage {
        match self {
            PipelineError::CircuitOpen(_) => Stage::CircuitBreaker,
            PipelineError::RateLimited(_) => Stage::RateLimiter,
            PipelineError::BulkheadFull(_) => Stage::Bulkhead,
            PipelineError::TimedOut(timed_out) => timed_out.stage,
            PipelineError::Service(_) => Stage::Service,
        }
    }

    /// Whether a stage turned the call away without it reaching the
    /// service (breaker open, rate limited, bulkhead full).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            PipelineError::CircuitOpen(_)
                | PipelineError::RateLimited(_)
                | PipelineError::BulkheadFull(_)
        )
    }

    /// Sorts an error that came out of the stages by the stage that made it.
    pub(crate) fn from_stages(error: BoxError, timeout: Option<Duration>) -> Self {
        let error = match error.downcast::<BreakerOpen>() {
            Ok(open) => return PipelineError::CircuitOpen(*open),
            Err(error) => error,
        };
        let error = match error.downcast::<BulkheadFull>() {
            Ok(full) => return PipelineError::BulkheadFull(*full),
            Err(error) => error,
        };
        let error = match error.downcast::<RateLimited>() {
            Ok(limited) => return PipelineError::RateLimited(*limited),
            Err(error) => error,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            return PipelineError::TimedOut(TimedOut {
                stage: Stage::Timeout,
                after: timeout.unwrap_or_default(),
            });
        }
        if let Some(timed_out) = error.downcast_ref::<AttemptTimedOut>() {
            return PipelineError::TimedOut(TimedOut {
                stage: Stage::Retry,
                after: timed_out.timeout(),
            });
        }
        if let Some(timed_out) = error.downcast_ref::<RetryTimedOut>() {
            return PipelineError::TimedOut(TimedOut {
                stage: Stage::Retry,
                after: timed_out.timeout(),
            });
        }
        PipelineError::Service(error)
    }

    /// Converts into a [`BoxError`] (every variant is downcastable from it).
    pub fn into_box_error(self) -> BoxError {
        Box::new(self)
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::CircuitOpen(e) => write!(f, "rejected by the circuit breaker: {e}"),
            PipelineError::RateLimited(e) => write!(f, "rejected by the rate limiter: {e}"),
            PipelineError::BulkheadFull(e) => write!(f, "rejected by the bulkhead: {e}"),
            PipelineError::TimedOut(e) => e.fmt(f),
            PipelineError::Service(e) => write!(f, "the service failed: {e}"),
        }
    }
}

impl std::error::Error for PipelineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PipelineError::CircuitOpen(e) => Some(e),
            PipelineError::RateLimited(e) => Some(e),
            PipelineError::BulkheadFull(e) => Some(e),
            PipelineError::TimedOut(e) => Some(e),
            PipelineError::Service(e) => Some(&**e),
        }
    }
}
