//! Deciding whether a call succeeded: the outcome classifier shared by every layer.
//!
//! A circuit breaker counts failures, a retry layer retries some of them, an
//! outlier detector ejects hosts that produce them. All of them ask the same
//! question of a finished call, so palisade answers it once, with a
//! [`Classify`] implementation that maps `Result<&Response, &Error>` to an
//! [`Outcome`]:
//!
//! | outcome | circuit breaker | retry |
//! |---|---|---|
//! | [`Outcome::Success`] | recorded as a success | returned |
//! | [`Outcome::Failure`] `{ retryable: true }` | recorded as a failure | retried |
//! | [`Outcome::Failure`] `{ retryable: false }` | recorded as a failure | returned |
//! | [`Outcome::Ignored`] | not recorded at all | returned |
//!
//! [`DefaultClassifier`] treats every `Ok` as a success and every `Err` as a
//! retryable failure. Adapt it with [`ClassifyExt`], or write any rule with
//! [`classify_fn`]:
//!
//! ```
//! use palisade::classify::{classify_fn, Classify, ClassifyExt, DefaultClassifier, Outcome};
//!
//! #[derive(Debug)]
//! enum DbError { NotFound, Timeout }
//!
//! // "Not found" is the caller's problem, not the database's: ignore it.
//! let classifier = DefaultClassifier.ignore_errors(|e: &DbError| matches!(e, DbError::NotFound));
//! assert_eq!(classifier.classify(Err::<&(), _>(&DbError::NotFound)), Outcome::Ignored);
//! assert_eq!(
//!     classifier.classify(Err::<&(), _>(&DbError::Timeout)),
//!     Outcome::Failure { retryable: true }
//! );
//!
//! // A response that says "try later" is a failure even though it is `Ok`.
//! let classifier = classify_fn(|result: Result<&u16, &DbError>| match result {
//!     Ok(503) => Outcome::Failure { retryable: true },
//!     Ok(_) => Outcome::Success,
//!     Err(_) => Outcome::Failure { retryable: true },
//! });
//! assert_eq!(classifier.classify(Ok(&503)), Outcome::Failure { retryable: true });
//! ```
//!
//! [`by_error`] classifies errors by their type, as resilience4j's
//! `recordExceptions` and `ignoreExceptions` lists do, walking each error's
//! source chain:
//!
//! ```
//! use palisade::classify::{by_error, Classify, Outcome};
//!
//! let classifier = by_error().record::<std::io::Error>();
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! assert_eq!(classifier.classify(Err::<&(), _>(&refused)), Outcome::Failure { retryable: true });
//! ```
//!
//! With the `http` feature (on by default), [`HttpStatusClassifier`] and
//! [`GrpcStatusClassifier`] classify `http::Response`s by status code and by
//! `grpc-status`, building on tower-http's `ServerErrorsAsFailures` and
//! `GrpcErrorsAsFailures`.

use std::fmt;

mod by_error;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::http::{GrpcCode, GrpcStatusClassifier, HttpStatusClassifier};

pub use self::by_error::{AsError, ByError, by_error};

/// What a finished call means for the layers that watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded (or failed for a reason that says nothing about the
    /// health of the dependency, such as an HTTP 404).
    Success,
    /// The call failed. `retryable` tells a retry layer whether another
    /// attempt may succeed (a connection refused or HTTP 503 may; an HTTP 500
    /// caused by a bug will not).
    Failure {
        /// Whether another attempt of the same call may succeed.
        retryable: bool,
    },
    /// The call is neither a success nor a failure: it is not recorded.
    Ignored,
}

impl Outcome {
    /// Returns `true` for [`Outcome::Failure`], retryable or not.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure { .. })
    }

    /// Returns `true` for a [`Outcome::Failure`] marked retryable.
    pub fn is_retryable(self) -> bool {
        matches!(self, Outcome::Failure { retryable: true })
    }
}

/// Maps the result of a call to an [`Outcome`].
///
/// Implemented by [`DefaultClassifier`], by the HTTP and gRPC classifiers, by
/// the adapters of [`ClassifyExt`] and by [`FnClassifier`]. Layers clone
/// their classifier into each response future, so keep it cheap to clone
/// (the provided ones are zero-sized or a few bytes).
pub trait Classify<Res, Err> {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome;

    /// Whether this result moves a CLOSED circuit breaker straight to OPEN,
    /// whatever its window says (resilience4j's `transitionOnResult`). Set
    /// with [`ClassifyExt::transition_to_open_on_result`]; `false` unless
    /// overridden, and other layers do not ask. Adapters pass it through
    /// from the classifier they wrap.
    #[inline]
    fn forces_open(&self, result: Result<&Res, &Err>) -> bool {
        let _ = result;
        false
    }

    /// For a response whose outcome only the end of its body tells (a gRPC
    /// status sent in trailers): hands the circuit breaker's `permit` to
    /// the response, which records the outcome when its body ends, and
    /// returns `None`. The default gives the permit back, and the breaker
    /// records [`classify`](Self::classify)'s outcome at once. Only
    /// circuit breakers ask; adapters pass it through.
    /// [`GrpcStatusClassifier`] holds the permit when the response carries
    /// a [`HeldUntilEnd`](crate::circuit_breaker::HeldUntilEnd) (feature `http`).
    #[inline]
    fn hold_until_end(
        &self,
        response: &Res,
        permit: crate::circuit_breaker::CallPermit,
    ) -> Option<crate::circuit_breaker::CallPermit> {
        let _ = response;
        Some(permit)
    }
}

/// `Ok` is [`Outcome::Success`]; every `Err` is a retryable
/// [`Outcome::Failure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<Res, Err> Classify<Res, Err> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure { retryable: true },
        }
    }
}

/// A classifier written as a closure; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct FnClassifier<F> {
    f: F,
}

impl<F> fmt::Debug for FnClassifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnClassifier").finish_non_exhaustive()
    }
}

/// Builds a classifier from a closure over `Result<&Res, &Err>`.
///
/// Annotate the closure's argument type so the compiler knows `Res` and `Err`:
///
/// ```
/// use palisade::classify::{classify_fn, Classify, Outcome};
///
/// let classifier = classify_fn(|r: Result<&String, &std::io::Error>| match r {
///     Ok(body) if body.is_empty() => Outcome::Failure { retryable: true },
///     Ok(_) => Outcome::Success,
///     Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Outcome::Ignored,
///     Err(_) => Outcome::Failure { retryable: true },
/// });
/// assert_eq!(classifier.classify(Ok(&String::new())), Outcome::Failure { retryable: true });
/// ```
pub fn classify_fn<Res, Err, F>(f: F) -> FnClassifier<F>
where
    F: Fn(Result<&Res, &Err>) -> Outcome,
{
    FnClassifier { f }
}

impl<Res, Err, F> Classify<Res, Err> for FnClassifier<F>
where
    F: Fn(Result<&Res, &Err>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        (self.f)(result)
    }
}

/// Adapters available on every classifier.
pub trait ClassifyExt: Sized {
    /// Errors for which `predicate` returns `true` become
    /// [`Outcome::Ignored`]; everything else is classified by `self`.
    fn ignore_errors<F>(self, predicate: F) -> IgnoreErrors<Self, F> {
        IgnoreErrors {
            inner: self,
            predicate,
        }
    }

    /// Successful responses for which `predicate` returns `true` become a
    /// failure (retryable as given); everything else is classified by `self`.
    fn fail_responses<F>(self, predicate: F, retryable: bool) -> FailResponses<Self, F> {
        FailResponses {
            inner: self,
            predicate,
            retryable,
        }
    }

    /// Errors that are a layer's rejection become [`Outcome::Ignored`]: a
    /// retry layer outside a circuit breaker, a bulkhead or a rate limiter
    /// returns the rejection at once instead of retrying into it. A
    /// rejection is any error that carries a
    /// [`Rejected`](crate::error::Rejected) marker anywhere in its source
    /// chain ([`crate::error::is_rejection`]): palisade's
    /// [`BreakerOpen`](crate::circuit_breaker::BreakerOpen),
    /// [`BulkheadFull`](crate::bulkhead::BulkheadFull),
    /// [`RateLimited`](crate::rate_limit::RateLimited),
    /// [`TooManyKeys`](crate::rate_limit::TooManyKeys) and
    /// [`ConcurrencyLimitExceeded`](crate::adaptive_concurrency::ConcurrencyLimitExceeded),
    /// and any layer of yours whose error carries the marker. For services whose error is
    /// [`BoxError`](crate::BoxError), as every palisade service's is.
    ///
    /// ```
    /// use palisade::classify::{Classify, ClassifyExt, DefaultClassifier, Outcome};
    /// use palisade::circuit_breaker::CircuitBreaker;
    /// use palisade::BoxError;
    ///
    /// let breaker = CircuitBreaker::with_defaults("payments");
    /// breaker.transition_to_forced_open();
    /// let rejection: BoxError = breaker.try_acquire().unwrap_err().into();
    /// let other: BoxError = "connection reset".into();
    ///
    /// let classifier = DefaultClassifier.pass_rejections();
    /// assert_eq!(classifier.classify(Err::<&(), _>(&rejection)), Outcome::Ignored);
    /// assert_eq!(classifier.classify(Err::<&(), _>(&other)), Outcome::Failure { retryable: true });
    /// ```
    fn pass_rejections(self) -> PassRejections<Self> {
        PassRejections { inner: self }
    }

    /// Results for which `predicate` returns `true` move a CLOSED circuit
    /// breaker straight to OPEN for its configured wait, after the outcome
    /// (classified by `self`) is recorded: resilience4j's
    /// `transitionOnResult` returning `transitionToOpen`. In other states
    /// the predicate changes nothing, and only circuit breakers ask it.
    ///
    /// ```
    /// use palisade::circuit_breaker::{CircuitBreaker, CircuitState};
    /// use palisade::classify::{ClassifyExt, DefaultClassifier};
    ///
    /// // A 429 says "stop calling" louder than any failure rate.
    /// let classifier = DefaultClassifier
    ///     .transition_to_open_on_result(|r: Result<&u16, &std::io::Error>| matches!(r, Ok(&429)));
    /// let breaker = CircuitBreaker::with_defaults("quotes");
    /// breaker.try_acquire()?.record_result(Ok(&429), &classifier);
    /// assert_eq!(breaker.state(), CircuitState::Open);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn transition_to_open_on_result<F>(self, predicate: F) -> OpenOnResult<Self, F> {
        OpenOnResult {
            inner: self,
            predicate,
        }
    }
}

impl<C> ClassifyExt for C {}

/// See [`ClassifyExt::pass_rejections`].
#[derive(Debug, Clone, Copy)]
pub struct PassRejections<C> {
    inner: C,
}

impl<Res, C> Classify<Res, crate::BoxError> for PassRejections<C>
where
    C: Classify<Res, crate::BoxError>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &crate::BoxError>) -> Outcome {
        match result {
            Err(error) if crate::error::is_rejection(&**error) => Outcome::Ignored,
            other => self.inner.classify(other),
        }
    }

    #[inline]
    fn forces_open(&self, result: Result<&Res, &crate::BoxError>) -> bool {
        self.inner.forces_open(result)
    }

    #[inline]
    fn hold_until_end(
        &self,
        response: &Res,
        permit: crate::circuit_breaker::CallPermit,
    ) -> Option<crate::circuit_breaker::CallPermit> {
        self.inner.hold_until_end(response, permit)
    }
}

/// See [`ClassifyExt::ignore_errors`].
#[derive(Clone, Copy)]
pub struct IgnoreErrors<C, F> {
    inner: C,
    predicate: F,
}

impl<C: fmt::Debug, F> fmt::Debug for IgnoreErrors<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IgnoreErrors")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Res, Err, C, F> Classify<Res, Err> for IgnoreErrors<C, F>
where
    C: Classify<Res, Err>,
    F: Fn(&Err) -> bool,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Err(e) if (self.predicate)(e) => Outcome::Ignored,
            other => self.inner.classify(other),
        }
    }

    #[inline]
    fn forces_open(&self, result: Result<&Res, &Err>) -> bool {
        self.inner.forces_open(result)
    }

    #[inline]
    fn hold_until_end(
        &self,
        response: &Res,
        permit: crate::circuit_breaker::CallPermit,
    ) -> Option<crate::circuit_breaker::CallPermit> {
        self.inner.hold_until_end(response, permit)
    }
}

/// See [`ClassifyExt::fail_responses`].
#[derive(Clone, Copy)]
pub struct FailResponses<C, F> {
    inner: C,
    predicate: F,
    retryable: bool,
}

impl<C: fmt::Debug, F> fmt::Debug for FailResponses<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailResponses")
            .field("inner", &self.inner)
            .field("retryable", &self.retryable)
            .finish_non_exhaustive()
    }
}

impl<Res, Err, C, F> Classify<Res, Err> for FailResponses<C, F>
where
    C: Classify<Res, Err>,
    F: Fn(&Res) -> bool,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Ok(res) if (self.predicate)(res) => Outcome::Failure {
                retryable: self.retryable,
            },
            other => self.inner.classify(other),
        }
    }

    #[inline]
    fn forces_open(&self, result: Result<&Res, &Err>) -> bool {
        self.inner.forces_open(result)
    }

    #[inline]
    fn hold_until_end(
        &self,
        response: &Res,
        permit: crate::circuit_breaker::CallPermit,
    ) -> Option<crate::circuit_breaker::CallPermit> {
        self.inner.hold_until_end(response, permit)
    }
}

/// See [`ClassifyExt::transition_to_open_on_result`].
#[derive(Clone, Copy)]
pub struct OpenOnResult<C, F> {
    inner: C,
    predicate: F,
}

impl<C: fmt::Debug, F> fmt::Debug for OpenOnResult<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenOnResult")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Res, Err, C, F> Classify<Res, Err> for OpenOnResult<C, F>
where
    C: Classify<Res, Err>,
    F: Fn(Result<&Res, &Err>) -> bool,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        self.inner.classify(result)
    }

    #[inline]
    fn forces_open(&self, result: Result<&Res, &Err>) -> bool {
        (self.predicate)(result) || self.inner.forces_open(result)
    }

    #[inline]
    fn hold_until_end(
        &self,
        response: &Res,
        permit: crate::circuit_breaker::CallPermit,
    ) -> Option<crate::circuit_breaker::CallPermit> {
        self.inner.hold_until_end(response, permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_classifier_fails_errors_and_passes_responses() {
        assert_eq!(
            DefaultClassifier.classify(Ok::<_, &()>(&1)),
            Outcome::Success
        );
        assert_eq!(
            DefaultClassifier.classify(Err::<&(), _>(&"boom")),
            Outcome::Failure { retryable: true }
        );
    }

    #[test]
    fn adapters_compose_in_order() {
        let c = DefaultClassifier
            .ignore_errors(|e: &&str| *e == "ignore me")
            .fail_responses(|r: &u32| *r >= 500, false);
        assert_eq!(c.classify(Ok(&200)), Outcome::Success);
        assert_eq!(c.classify(Ok(&503)), Outcome::Failure { retryable: false });
        assert_eq!(c.classify(Err(&"ignore me")), Outcome::Ignored);
        assert_eq!(
            c.classify(Err(&"other")),
            Outcome::Failure { retryable: true }
        );
    }

    /// A layer palisade does not know, whose error carries the marker.
    #[derive(Debug, thiserror::Error)]
    #[error("load shedder '{}' is overloaded", .0.name())]
    struct Shed(#[source] crate::error::Rejected);

    #[derive(Debug, thiserror::Error)]
    #[error("call failed")]
    struct Wrapped(#[source] crate::BoxError);

    #[test]
    fn pass_rejections_ignores_the_keyed_limiter_and_adaptive_limit_rejections() {
        let classifier = DefaultClassifier.pass_rejections();
        let too_many_keys: crate::BoxError =
            Box::new(crate::rate_limit::TooManyKeys::new("per-user".into(), 10));
        assert_eq!(
            classifier.classify(Err::<&(), _>(&too_many_keys)),
            Outcome::Ignored
        );
        let over_limit: crate::BoxError = Box::new(
            crate::adaptive_concurrency::ConcurrencyLimitExceeded::new("orders".into(), 4),
        );
        assert_eq!(
            classifier.classify(Err::<&(), _>(&over_limit)),
            Outcome::Ignored
        );
    }

    #[test]
    fn pass_rejections_ignores_any_error_carrying_the_rejected_marker() {
        let classifier = DefaultClassifier.pass_rejections();
        let shed: crate::BoxError =
            Box::new(Shed(crate::error::Rejected::new("load_shed", "checkout")));
        assert_eq!(classifier.classify(Err::<&(), _>(&shed)), Outcome::Ignored);
        let wrapped: crate::BoxError = Box::new(Wrapped(shed));
        assert_eq!(
            classifier.classify(Err::<&(), _>(&wrapped)),
            Outcome::Ignored,
            "found anywhere in the source chain"
        );
        let other: crate::BoxError = "connection reset".into();
        assert_eq!(
            classifier.classify(Err::<&(), _>(&other)),
            Outcome::Failure { retryable: true }
        );
    }
}
