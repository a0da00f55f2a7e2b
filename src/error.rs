//! Error types shared by every palisade layer.
//!
//! Each layer has its own rejection error (for example
//! [`BreakerOpen`](crate::circuit_breaker::BreakerOpen)) so callers can tell
//! them apart with `downcast_ref`. Services
//! return [`BoxError`] because they add failure modes to the inner service's;
//! [`is_caused_by`] and [`find_cause`] walk an error's
//! [`source`](std::error::Error::source) chain so you do not have to.
//!
//! # Rejections
//!
//! A *rejection* is a call a layer turned away without it reaching the
//! service: an open breaker, a full bulkhead, an exhausted rate limiter
//! (or a keyed one with no room for a new key), an adaptive concurrency
//! limit reached.
//! Every rejection error carries a [`Rejected`] marker as its
//! [`source`](std::error::Error::source), naming the kind of layer and the
//! layer's name. The code that must treat rejections apart (the
//! [`pass_rejections`](crate::classify::ClassifyExt::pass_rejections)
//! classifier, the [pipeline](crate::pipeline)'s stages and its
//! [`PipelineError::Rejected`](crate::pipeline::PipelineError::Rejected))
//! looks for the marker with [`find_rejection`] / [`is_rejection`], and
//! knows no layer by name: a new rejecting layer, palisade's or yours,
//! only has to return the marker.
//!
//! ```
//! use std::error::Error;
//! use std::fmt;
//! use palisade::error::{Rejected, find_rejection};
//!
//! /// A load shedder's rejection: the marker makes palisade treat it like
//! /// an open breaker (not retried, not counted as the dependency's failure).
//! #[derive(Debug)]
//! struct Shed {
//!     rejected: Rejected,
//! }
//!
//! impl fmt::Display for Shed {
//!     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
//!         write!(f, "load shedder '{}' is overloaded", self.rejected.name())
//!     }
//! }
//!
//! impl Error for Shed {
//!     fn source(&self) -> Option<&(dyn Error + 'static)> {
//!         Some(&self.rejected)
//!     }
//! }
//!
//! let error: palisade::BoxError = Box::new(Shed { rejected: Rejected::new("load_shed", "checkout") });
//! let marker = find_rejection(&*error).expect("a rejection");
//! assert_eq!((marker.layer(), marker.name()), ("load_shed", "checkout"));
//! ```

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

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

/// The marker every rejection error carries: which kind of layer turned
/// the call away, and that layer's name. See [Rejections](self#rejections).
///
/// A rejection error returns its marker from
/// [`source`](Error::source); palisade's are
/// [`BreakerOpen`](crate::circuit_breaker::BreakerOpen) (layer
/// `"circuit_breaker"`), [`BulkheadFull`](crate::bulkhead::BulkheadFull)
/// (`"bulkhead"`) and [`RateLimited`](crate::rate_limit::RateLimited)
/// (`"rate_limiter"`). The layer kind is also the name of the
/// [pipeline stage](crate::pipeline::Stage::as_str) it matches, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rejected {
    layer: &'static str,
    name: Arc<str>,
}

impl Rejected {
    /// A marker for a rejection by the layer kind `layer` (snake case, e.g.
    /// `"load_shed"`) named `name`.
    pub fn new(layer: &'static str, name: impl Into<Arc<str>>) -> Self {
        Self {
            layer,
            name: name.into(),
        }
    }

    /// The kind of layer that rejected the call, e.g. `"circuit_breaker"`.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The name of the layer that rejected the call (the breaker's, the
    /// bulkhead's).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected by ")?;
        write_layer_kind(f, self.layer)?;
        write!(f, " '{}'", self.name)
    }
}

impl Error for Rejected {}

/// Writes a snake-case layer kind as words: `circuit_breaker` -> `circuit breaker`.
pub(crate) fn write_layer_kind(f: &mut fmt::Formatter<'_>, layer: &str) -> fmt::Result {
    for (i, word) in layer.split('_').enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        f.write_str(word)?;
    }
    Ok(())
}

/// The [`Rejected`] marker of the first rejection in `error`'s
/// [`source`](Error::source) chain, starting with `error` itself.
///
/// ```
/// use palisade::circuit_breaker::CircuitBreaker;
/// use palisade::error::find_rejection;
/// use palisade::BoxError;
///
/// let breaker = CircuitBreaker::with_defaults("payments");
/// breaker.transition_to_forced_open();
/// let error: BoxError = breaker.try_acquire().unwrap_err().into();
/// let rejected = find_rejection(&*error).expect("the breaker's rejection");
/// assert_eq!((rejected.layer(), rejected.name()), ("circuit_breaker", "payments"));
/// ```
pub fn find_rejection<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Rejected> {
    find_cause::<Rejected>(error)
}

/// Whether `error` is, or was caused by, a layer's rejection (it carries a
/// [`Rejected`] marker somewhere in its [`source`](Error::source) chain).
pub fn is_rejection(error: &(dyn Error + 'static)) -> bool {
    find_rejection(error).is_some()
}

/// The marker `error` carries itself, as a rejection error does: `error`
/// is a [`Rejected`], or its own [`source`](Error::source) is. Unlike
/// [`find_rejection`], a service error that merely wraps a rejection
/// further down is not one.
pub(crate) fn own_rejection<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Rejected> {
    error
        .downcast_ref::<Rejected>()
        .or_else(|| error.source()?.downcast_ref::<Rejected>())
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

    #[derive(Debug, thiserror::Error)]
    #[error("shed")]
    struct Shed(#[source] Rejected);

    #[test]
    fn a_rejection_is_found_through_its_marker_anywhere_in_the_chain() {
        let shed = Shed(Rejected::new("load_shed", "checkout"));
        assert_eq!(own_rejection(&shed).map(Rejected::layer), Some("load_shed"));
        let wrapped: BoxError = Box::new(Outer2(Box::new(shed)));
        assert!(is_rejection(&*wrapped));
        assert_eq!(
            find_rejection(&*wrapped).map(Rejected::name),
            Some("checkout")
        );
        assert!(
            own_rejection(&*wrapped).is_none(),
            "only wrapped, not its own"
        );
        let plain: BoxError = "connection reset".into();
        assert!(!is_rejection(&*plain));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer2(#[source] BoxError);

    #[test]
    fn a_marker_reads_as_the_layer_and_its_name() {
        assert_eq!(
            Rejected::new("circuit_breaker", "users").to_string(),
            "rejected by circuit breaker 'users'"
        );
    }
}
