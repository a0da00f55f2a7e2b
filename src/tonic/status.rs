//! Palisade's errors as `tonic::Status`es with the code a gRPC caller
//! expects.

use std::sync::Arc;

use tonic::{Code, Status};

use crate::error::{BoxError, find_cause, is_rejection};
use crate::pipeline::PipelineError;

/// The gRPC code for a palisade error, if it is one of palisade's own:
///
/// | error | code |
/// |---|---|
/// | [`BreakerOpen`](crate::circuit_breaker::BreakerOpen) | `UNAVAILABLE` |
/// | [`NoHealthyInstance`](crate::discovery::NoHealthyInstance) (feature `discovery`) | `UNAVAILABLE` |
/// | [`BulkheadFull`](crate::bulkhead::BulkheadFull) | `RESOURCE_EXHAUSTED` |
/// | [`RateLimited`](crate::rate_limit::RateLimited) | `RESOURCE_EXHAUSTED` |
/// | another layer's rejection ([`Rejected`](crate::error::Rejected) marker) | `UNAVAILABLE` |
/// | [`PipelineError::TimedOut`], [`AttemptTimedOut`](crate::retry::AttemptTimedOut), [`RetryTimedOut`](crate::retry::RetryTimedOut), tower's `Elapsed` | `DEADLINE_EXCEEDED` |
///
/// Anything else (the service's own error) is `None`. The error's whole
/// source chain is searched.
pub fn rejection_code(error: &(dyn std::error::Error + 'static)) -> Option<Code> {
    use crate::bulkhead::BulkheadFull;
    use crate::circuit_breaker::BreakerOpen;
    use crate::rate_limit::RateLimited;
    use crate::retry::{AttemptTimedOut, RetryTimedOut};

    if find_cause::<BreakerOpen>(error).is_some() {
        return Some(Code::Unavailable);
    }
    #[cfg(feature = "discovery")]
    if find_cause::<crate::discovery::NoHealthyInstance>(error).is_some() {
        return Some(Code::Unavailable);
    }
    if find_cause::<BulkheadFull>(error).is_some() || find_cause::<RateLimited>(error).is_some() {
        return Some(Code::ResourceExhausted);
    }
    if is_rejection(error) {
        return Some(Code::Unavailable);
    }
    let timed_out = matches!(
        find_cause::<PipelineError>(error),
        Some(PipelineError::TimedOut(_))
    ) || find_cause::<crate::pipeline::TimedOut>(error).is_some()
        || find_cause::<AttemptTimedOut>(error).is_some()
        || find_cause::<RetryTimedOut>(error).is_some()
        || find_cause::<tower::timeout::error::Elapsed>(error).is_some();
    timed_out.then_some(Code::DeadlineExceeded)
}

/// `error` as a [`Status`] a gRPC caller understands: palisade's
/// rejections and timeouts get the code [`rejection_code`] gives, with the
/// error's text as the message; other errors are read by tonic's
/// [`Status::from_error`] (a `Status` inside is kept, a refused connection
/// is `UNAVAILABLE`, the rest `UNKNOWN`). Either way the status's
/// [`source`](std::error::Error::source) is `error`, so the palisade error
/// is found with [`crate::find_cause`].
///
/// ```
/// use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker};
///
/// let breaker = CircuitBreaker::with_defaults("greeter");
/// breaker.transition_to_forced_open();
/// let open = breaker.try_acquire().unwrap_err();
///
/// let status = palisade::tonic::to_status(open.into());
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert!(palisade::find_cause::<BreakerOpen>(&status).is_some());
/// ```
pub fn to_status(error: BoxError) -> Status {
    if error.is::<Status>() {
        return Status::from_error(error);
    }
    match rejection_code(&*error) {
        Some(code) => {
            let mut status = Status::new(code, error.to_string());
            status.set_source(Arc::from(error));
            status
        }
        None => {
            let source: Arc<dyn std::error::Error + Send + Sync> = Arc::from(error);
            let mut status = Status::from_error(Box::new(SharedError(Arc::clone(&source))));
            status.set_source(source);
            status
        }
    }
}

/// Lends an `Arc`'d error to [`Status::from_error`], which takes a `Box`,
/// so the same error can be the status's source.
#[derive(Debug)]
struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bulkhead::{Bulkhead, BulkheadConfig};

    #[test]
    fn a_service_error_keeps_tonic_reading_and_its_source() {
        let error: BoxError = Box::new(std::io::Error::other("reset by peer"));
        let status = to_status(error);
        assert_eq!(status.code(), Code::Unknown);
        assert!(find_cause::<std::io::Error>(&status).is_some());
    }

    #[test]
    fn a_status_from_the_server_is_kept() {
        let error: BoxError = Box::new(Status::not_found("no such order"));
        let status = to_status(error);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such order");
    }

    #[test]
    fn a_full_bulkhead_is_resource_exhausted() {
        let bulkhead = Bulkhead::new(
            "orders",
            BulkheadConfig::builder()
                .max_concurrent_calls(1)
                .max_wait_duration(Duration::ZERO)
                .build()
                .expect("valid"),
        );
        let _held = bulkhead.try_acquire().expect("one permit");
        let full: BoxError = bulkhead.try_acquire().unwrap_err().into();
        let status = to_status(full);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(find_cause::<crate::bulkhead::BulkheadFull>(&status).is_some());
    }
}
