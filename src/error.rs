//! Error types shared by every palisade layer.
//!
//! Each layer has its own rejection error (for example
//! [`BreakerOpen`](crate::circuit_breaker::BreakerOpen)) so callers can tell
//! them apart with `downcast_ref`. Services
//! return [`BoxError`] because they add failure modes to the inner service's;
//! [`is_caused_by`] and [`find_cause`] walk an error's
//! [`source`](std::error::Error::source) chain so you do not have to.

use std::borrow::Cow;
use std::error::Error;

/// The boxed error type returned by palisade services: `tower::BoxError`.
pub type BoxError = tower::BoxError;

/// A configuration value was rejected by a builder.
///
/// Every builder in palisade validates all of its fields in `build()` and
/// returns this error naming the component, the field and the rule broken.
/// Nothing is clamped silently and nothing panics.
///
/// ```
/// use palisade::circuit_breaker::CircuitBreakerConfig;
///
/// let err = CircuitBreakerConfig::builder()
///     .failure_rate_threshold(150.0)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "failure_rate_threshold");
/// assert_eq!(
///     err.to_string(),
///     "invalid circuit breaker configuration: `failure_rate_threshold` must be \
///      greater than 0 and at most 100 (percent), got 150"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {component} configuration: `{field}` {problem}")]
pub struct ConfigError {
    component: &'static str,
    field: &'static str,
    problem: Cow<'static, str>,
}

impl ConfigError {
    /// Creates an error for `field` of `component`; `problem` completes the
    /// sentence "`field` ..." (e.g. "must be at least 1, got 0").
    pub fn new(
        component: &'static str,
        field: &'static str,
        problem: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            component,
            field,
            problem: problem.into(),
        }
    }

    /// The component whose configuration was rejected, e.g. `"circuit breaker"`.
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The name of the rejected field, as spelled by the builder method.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The rule the value broke, e.g. "must be at least 1, got 0".
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// Returns `true` if `error` or any error in its [`source`](Error::source)
/// chain is an `E`.
///
/// ```
/// use palisade::{is_caused_by, BoxError};
/// use palisade::circuit_breaker::BreakerOpen;
///
/// let err: BoxError = "some I/O problem".into();
/// assert!(!is_caused_by::<BreakerOpen>(&*err));
/// ```
pub fn is_caused_by<E: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
    find_cause::<E>(error).is_some()
}

/// Returns the first `E` found in `error`'s [`source`](Error::source) chain,
/// starting with `error` itself.
pub fn find_cause<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] ConfigError);

    #[test]
    fn find_cause_walks_the_source_chain() {
        let inner = ConfigError::new("retry", "max_attempts", "must be at least 1, got 0");
        let outer: BoxError = Box::new(Outer(inner.clone()));
        assert_eq!(find_cause::<ConfigError>(&*outer), Some(&inner));
        assert!(is_caused_by::<ConfigError>(&*outer));
        assert!(!is_caused_by::<std::fmt::Error>(&*outer));
    }
}
