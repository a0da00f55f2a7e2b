//! Classifying errors by their type, as resilience4j's `recordExceptions`
//! and `ignoreExceptions` lists do.

use std::any::type_name;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

use super::{Classify, Outcome};

/// Starts a classifier that decides by the types of errors in an error's
/// [`source`](Error::source) chain; see [`ByError`].
///
/// ```
/// use std::io;
/// use palisade::classify::{by_error, Classify, Outcome};
/// use palisade::BoxError;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("no such customer")]
/// struct UnknownCustomer;
///
/// let classifier = by_error().record::<io::Error>().ignore::<UnknownCustomer>();
/// let timeout: BoxError = io::Error::from(io::ErrorKind::TimedOut).into();
/// let unknown: BoxError = UnknownCustomer.into();
/// let other: BoxError = "invalid input".into();
/// assert_eq!(classifier.classify(Err::<&(), _>(&timeout)), Outcome::Failure { retryable: true });
/// assert_eq!(classifier.classify(Err::<&(), _>(&unknown)), Outcome::Ignored);
/// // A record list is given: anything else is a success, as in resilience4j.
/// assert_eq!(classifier.classify(Err::<&(), _>(&other)), Outcome::Success);
/// ```
pub fn by_error() -> ByError {
    ByError {
        lists: Arc::new(Lists::default()),
    }
}

/// Whether one error is of a listed type.
type Check = fn(&(dyn Error + 'static)) -> bool;

fn is<E: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
    error.is::<E>()
}

#[derive(Clone, Default)]
struct Lists {
    record: Vec<(Check, &'static str)>,
    ignore: Vec<(Check, &'static str)>,
    otherwise: Option<Outcome>,
}

/// A classifier that decides by error type, from [`by_error`]:
///
/// 1. an `Ok` is a success;
/// 2. an error with an [`ignore`](Self::ignore)d type anywhere in its
///    source chain is [`Outcome::Ignored`] (ignore wins over record, as in
///    resilience4j);
/// 3. an error with a [`record`](Self::record)ed type anywhere in its chain
///    is a retryable [`Outcome::Failure`];
/// 4. any other error is what [`otherwise`](Self::otherwise) says; unset,
///    it is resilience4j's rule: a success when a record list is given
///    ("only these are failures"), a retryable failure when none is.
///
/// The error type the service returns must implement [`AsError`]:
/// [`BoxError`](crate::BoxError) (every palisade service's),
/// the other boxed `dyn Error`s and [`std::io::Error`] do, and an error
/// type of yours does with a one-line impl. Cloning is a reference-count
/// increment.
#[derive(Clone)]
pub struct ByError {
    lists: Arc<Lists>,
}

impl ByError {
    /// Errors whose chain holds an `E` are failures.
    pub fn record<E: Error + 'static>(mut self) -> Self {
        Arc::make_mut(&mut self.lists)
            .record
            .push((is::<E> as Check, type_name::<E>()));
        self
    }

    /// Errors whose chain holds an `E` are ignored: not recorded, not retried.
    pub fn ignore<E: Error + 'static>(mut self) -> Self {
        Arc::make_mut(&mut self.lists)
            .ignore
            .push((is::<E> as Check, type_name::<E>()));
        self
    }

    /// The outcome of an error that is neither recorded nor ignored.
    pub fn otherwise(mut self, outcome: Outcome) -> Self {
        Arc::make_mut(&mut self.lists).otherwise = Some(outcome);
        self
    }

    /// Classifies one error (rules 2 to 4 above).
    pub fn classify_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        let lists = &*self.lists;
        let in_chain = |list: &[(Check, &'static str)]| {
            let mut current = Some(error);
            while let Some(err) = current {
                if list.iter().any(|(check, _)| check(err)) {
                    return true;
                }
                current = err.source();
            }
            false
        };
        if in_chain(&lists.ignore) {
            Outcome::Ignored
        } else if in_chain(&lists.record) {
            Outcome::Failure { retryable: true }
        } else {
            lists.otherwise.unwrap_or(if lists.record.is_empty() {
                Outcome::Failure { retryable: true }
            } else {
                Outcome::Success
            })
        }
    }
}

impl fmt::Debug for ByError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names =
            |list: &[(Check, &'static str)]| list.iter().map(|(_, n)| *n).collect::<Vec<_>>();
        f.debug_struct("ByError")
            .field("record", &names(&self.lists.record))
            .field("ignore", &names(&self.lists.ignore))
            .field("otherwise", &self.lists.otherwise)
            .finish()
    }
}

/// An error type [`ByError`] can walk: it lends itself as a `dyn Error`.
///
/// A blanket impl for every `Error` type would exclude the boxed
/// `dyn Error`s (they do not implement `Error`), so each type opts in:
///
/// ```
/// use palisade::classify::AsError;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("ledger unavailable")]
/// struct LedgerError;
///
/// impl AsError for LedgerError {
///     fn as_error(&self) -> &(dyn std::error::Error + 'static) {
///         self
///     }
/// }
/// ```
pub trait AsError {
    /// `self` as a `dyn Error`, whose source chain is walked.
    fn as_error(&self) -> &(dyn Error + 'static);
}

impl AsError for Box<dyn Error + Send + Sync> {
    fn as_error(&self) -> &(dyn Error + 'static) {
        &**self
    }
}

impl AsError for Box<dyn Error + Send> {
    fn as_error(&self) -> &(dyn Error + 'static) {
        &**self
    }
}

impl AsError for Box<dyn Error> {
    fn as_error(&self) -> &(dyn Error + 'static) {
        &**self
    }
}

impl AsError for std::io::Error {
    fn as_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl<Res, Err: AsError> Classify<Res, Err> for ByError {
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => self.classify_error(error.as_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("business rule")]
    struct Business;

    #[derive(Debug, thiserror::Error)]
    #[error("call failed")]
    struct Wrapped(#[source] io::Error);

    fn boxed(e: impl Error + Send + Sync + 'static) -> crate::BoxError {
        Box::new(e)
    }

    #[test]
    fn recorded_types_are_found_anywhere_in_the_source_chain() {
        let c = by_error().record::<io::Error>();
        let wrapped = boxed(Wrapped(io::Error::other("reset")));
        assert_eq!(
            c.classify(Err::<&(), _>(&wrapped)),
            Outcome::Failure { retryable: true }
        );
        assert_eq!(
            c.classify(Err::<&(), _>(&boxed(Business))),
            Outcome::Success
        );
    }

    #[test]
    fn ignore_wins_over_record() {
        let c = by_error().record::<Wrapped>().ignore::<io::Error>();
        let wrapped = boxed(Wrapped(io::Error::other("reset")));
        assert_eq!(c.classify(Err::<&(), _>(&wrapped)), Outcome::Ignored);
    }

    #[test]
    fn without_a_record_list_every_other_error_is_a_failure_unless_told_otherwise() {
        let c = by_error().ignore::<Business>();
        let other = io::Error::other("x");
        assert_eq!(
            c.classify(Err::<&(), _>(&other)),
            Outcome::Failure { retryable: true }
        );
        let c = c.otherwise(Outcome::Failure { retryable: false });
        assert_eq!(
            c.classify(Err::<&(), _>(&other)),
            Outcome::Failure { retryable: false }
        );
        assert_eq!(c.classify(Ok::<_, &io::Error>(&1)), Outcome::Success);
    }

    #[test]
    fn building_from_a_shared_classifier_leaves_the_original_alone() {
        let base = by_error().record::<io::Error>();
        let shared = base.clone();
        let extended = base.ignore::<Business>();
        let business = boxed(Business);
        assert_eq!(shared.classify(Err::<&(), _>(&business)), Outcome::Success);
        assert_eq!(
            extended.classify(Err::<&(), _>(&business)),
            Outcome::Ignored
        );
    }
}
