//! A fallback layer: answer a failed call with something useful instead of
//! the error.
//!
//! When the recommendations service is down, a product page can still show
//! the bestsellers. A [`Fallback`] watches each call's outcome through the
//! shared [classifier](crate::classify) and, when the outcome is a handled
//! failure, answers in its place with one of:
//!
//! * a static value ([`value`](FallbackConfigBuilder::value)),
//! * a function of the failure ([`from_failure`](FallbackConfigBuilder::from_failure)),
//! * the last good response for the request's key
//!   ([`last_good`](FallbackConfigBuilder::last_good), keys from
//!   [`Fallback::layer_keyed`]), kept in a map bounded to
//!   `last_good_capacity` keys.
//!
//! Rejections by inner layers (an open breaker, a full bulkhead, a rate
//! limit) are answered too when [`on_rejection`](FallbackConfigBuilder::on_rejection)
//! is set. Everything else passes through unchanged.
//!
//! ```
//! use palisade::fallback::{Fallback, FallbackConfig};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let recommendations = Fallback::new(
//!     "recommendations",
//!     FallbackConfig::builder().value(vec!["bestseller".to_string()]).build()?,
//! );
//! let mut service = ServiceBuilder::new()
//!     .layer(recommendations.layer())
//!     .service_fn(|_user: u64| async {
//!         Err::<Vec<String>, _>(std::io::Error::other("recommender down"))
//!     });
//! assert_eq!(service.ready().await?.call(7).await?, ["bestseller"]);
//! assert_eq!(recommendations.metrics().answered_by_value, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | answer | — (required) | `value(response)`, `from_failure(fn)` or `last_good()`: exactly one. |
//! | `on_rejection` | `false` | Also answer calls an inner layer rejected. |
//! | `last_good_capacity` | 1,000 | Keys whose last good response is kept; the key updated longest ago is forgotten first. |
//! | `event_capacity` | 256 | Events buffered per subscriber. |
//! | classifier ([`FallbackLayer::with_classifier`]) | [`DefaultClassifier`](crate::classify::DefaultClassifier) | Which outcomes are failures. |
//!
//! # Which outcomes are answered
//!
//! | outcome | answered? |
//! |---|---|
//! | an error carrying the [`Rejected`](crate::error::Rejected) marker | when `on_rejection`, whatever the classifier says |
//! | [`Outcome::Failure`](crate::classify::Outcome::Failure) (an `Err`, or an `Ok` the classifier fails) | yes |
//! | [`Outcome::Success`](crate::classify::Outcome::Success) | no; kept as the key's last good response (`last_good`) |
//! | [`Outcome::Ignored`](crate::classify::Outcome::Ignored) | no, passed through unchanged |
//!
//! With `last_good`, a failure whose key has no good response yet passes
//! through unchanged (event [`FallbackEventKind::NoLastGood`]).
//!
//! # Guarantees
//!
//! * Errors that are not answered reach the caller unchanged (as a
//!   [`BoxError`](crate::BoxError), so `downcast_ref` finds them).
//! * The fallback adds no waiting and holds nothing across the call: a
//!   cancelled call is dropped with its inner call, and the map of last
//!   good responses never holds more than `last_good_capacity` keys.
//! * The response type must be `Clone` (the value and the last good
//!   responses are cloned out).
//!
//! # Observability
//!
//! Answers are `debug` traces; [`Fallback::subscribe`] delivers
//! [`FallbackEvent`]s saying which kind of fallback answered
//! ([`FallbackSource`]) and why ([`FailureCause`]); [`Fallback::metrics`]
//! returns [`FallbackMetrics`].

mod config;
mod event;
mod future;
mod key;
mod layer;
mod metrics;
mod service;
mod state;

pub use self::config::{FallbackConfig, FallbackConfigBuilder, FallbackFn, MAX_LAST_GOOD_CAPACITY};
pub use self::event::{FailureCause, FallbackEvent, FallbackEventKind, FallbackSource};
pub use self::future::ResponseFuture;
pub use self::key::{LastGoodKey, SameKey};
pub use self::layer::FallbackLayer;
pub use self::metrics::FallbackMetrics;
pub use self::service::FallbackService;
pub use self::state::Fallback;

#[cfg(feature = "cache")]
pub(crate) use self::state::failure_cause;
