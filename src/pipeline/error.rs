//! [`PipelineError`]: one error type that names the stage it comes from.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::error::{BoxError, Rejected, own_rejection, write_layer_kind};
use crate::retry::{AttemptTimedOut, RetryTimedOut};

/// The stages of a [`Pipeline`](super::Pipeline), outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The response cache (outermost).
    Cache,
    /// Request coalescing.
    Coalesce,
    /// The fallback.
    Fallback,
    /// Hedging.
    Hedge,
    /// The retry stage.
    Retry,
    /// The circuit breaker.
    CircuitBreaker,
    /// The rate limiter.
    RateLimiter,
    /// The timeout (time limiter).
    Timeout,
    /// The bulkhead.
    Bulkhead,
    /// The adaptive concurrency limit.
    AdaptiveConcurrency,
    /// Fault injection (innermost).
    Chaos,
    /// The wrapped service itself.
    Service,
}

impl Stage {
    const ALL: [Stage; 12] = [
        Stage::Cache,
        Stage::Coalesce,
        Stage::Fallback,
        Stage::Hedge,
        Stage::Retry,
        Stage::CircuitBreaker,
        Stage::RateLimiter,
        Stage::Timeout,
        Stage::Bulkhead,
        Stage::AdaptiveConcurrency,
        Stage::Chaos,
        Stage::Service,
    ];

    /// The stage whose [name](Self::as_str) is `name`, if any: the stage a
    /// [`Rejected`] marker's [layer](Rejected::layer) kind stands for.
    pub fn from_name(name: &str) -> Option<Stage> {
        Self::ALL.into_iter().find(|stage| stage.as_str() == name)
    }

    /// The stage's name in traces, the same as the kind of layer in its
    /// rejections' [`Rejected`] marker: `"cache"`, `"coalesce"`,
    /// `"fallback"`, `"hedge"`, `"retry"`, `"circuit_breaker"`,
    /// `"rate_limiter"`, `"timeout"`, `"bulkhead"`,
    /// `"adaptive_concurrency"`, `"chaos"` or `"service"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Cache => "cache",
            Stage::Coalesce => "coalesce",
            Stage::Fallback => "fallback",
            Stage::Hedge => "hedge",
            Stage::Retry => "retry",
            Stage::CircuitBreaker => "circuit_breaker",
            Stage::RateLimiter => "rate_limiter",
            Stage::Timeout => "timeout",
            Stage::Bulkhead => "bulkhead",
            Stage::AdaptiveConcurrency => "adaptive_concurrency",
            Stage::Chaos => "chaos",
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

/// A call turned away without reaching the service, by a stage of the
/// pipeline or by a layer inside the wrapped service: its error carried a
/// [`Rejected`] marker (see [`crate::error`]).
///
/// The layer's own error is kept: [`downcast_ref`](Self::downcast_ref) it,
/// or find it with [`crate::find_cause`] on the [`PipelineError`], whose
/// [`source`](Error::source) it is.
#[derive(Debug)]
pub struct Rejection {
    stage: Stage,
    // Carries the marker (itself or as its source): found again when asked
    // for rather than cloned into every rejection.
    error: BoxError,
}

impl Rejection {
    /// The stage that rejected the call: the stage named by the marker's
    /// [layer](Rejected::layer) kind, or [`Stage::Service`] for a layer the
    /// pipeline does not have (one inside the wrapped service).
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The marker the layer's error carried: the kind of layer and its name.
    pub fn rejected(&self) -> &Rejected {
        own_rejection(&*self.error).expect("a rejection's error carries its marker")
    }

    /// The layer's own error, e.g. a
    /// [`BreakerOpen`](crate::circuit_breaker::BreakerOpen).
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The layer's own error as an `E`, if it is one.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref::<E>()
    }

    /// Unwraps the layer's own error.
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected by the ")?;
        write_layer_kind(f, self.rejected().layer())?;
        write!(f, ": {}", self.error)
    }
}

/// Why a call through a [`Pipeline`](super::Pipeline) failed: a stage
/// rejected it, a deadline passed, or the service failed.
///
/// Each variant's [`source`](std::error::Error::source) is the stage's own
/// error, so [`crate::find_cause`] finds a
/// [`BreakerOpen`](crate::circuit_breaker::BreakerOpen) inside a
/// `PipelineError` as well as on its own.
///
/// ```
/// use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker};
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
///     Err(PipelineError::Rejected(rejection)) => {
///         assert_eq!(rejection.stage(), Stage::CircuitBreaker);
///         let open = rejection.downcast_ref::<BreakerOpen>().expect("the breaker's error");
///         assert_eq!(open.breaker(), "users");
///     }
///     other => panic!("expected the breaker's rejection, got {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PipelineError {
    /// A stage turned the call away without it reaching the service (breaker
    /// open, rate limited, bulkhead full), or a layer inside the service did.
    Rejected(Rejection),
    /// A deadline passed: the timeout stage's, or the retry stage's.
    TimedOut(TimedOut),
    /// The service failed (after any retries); its error is inside.
    Service(BoxError),
}

impl PipelineError {
    /// The stage the error comes from.
    pub fn stage(&self) -> Stage {
        match self {
            PipelineError::Rejected(rejection) => rejection.stage,
            PipelineError::TimedOut(timed_out) => timed_out.stage,
            PipelineError::Service(_) => Stage::Service,
        }
    }

    /// Whether a stage turned the call away without it reaching the
    /// service (breaker open, rate limited, bulkhead full).
    pub fn is_rejection(&self) -> bool {
        matches!(self, PipelineError::Rejected(_))
    }

    /// The rejection, if a stage turned the call away.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            PipelineError::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }

    /// Sorts an error that came out of the stages by the stage that made it.
    ///
    /// A rejection is recognised by the marker its error carries, not by
    /// its type, so a new rejecting layer needs no change here.
    pub(crate) fn from_stages(error: BoxError, timeout: Option<Duration>) -> Self {
        if let Some(marker) = own_rejection(&*error) {
            return PipelineError::Rejected(Rejection {
                stage: Stage::from_name(marker.layer()).unwrap_or(Stage::Service),
                error,
            });
        }
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
            PipelineError::Rejected(e) => e.fmt(f),
            PipelineError::TimedOut(e) => e.fmt(f),
            PipelineError::Service(e) => write!(f, "the service failed: {e}"),
        }
    }
}

impl std::error::Error for PipelineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PipelineError::Rejected(e) => Some(&*e.error),
            PipelineError::TimedOut(e) => Some(e),
            PipelineError::Service(e) => Some(&**e),
        }
    }
}
