//! The error an injected fault fails with by default.

use std::sync::Arc;

/// The error of a fault injected by a [`Chaos`](super::Chaos) layer, unless
/// its configuration names another
/// ([`error_with`](super::ChaosConfigBuilder::error_with)).
///
/// It stands for a failure of the dependency, so it is not a rejection: it
/// carries no [`Rejected`](crate::error::Rejected) marker, and classifiers
/// count it as a failure as they would a real one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chaos '{chaos}' injected a fault")]
pub struct ChaosFault {
    chaos: Arc<str>,
}

impl ChaosFault {
    pub(crate) fn new(chaos: Arc<str>) -> Self {
        Self { chaos }
    }

    /// The name of the chaos layer that injected it.
    pub fn chaos(&self) -> &str {
        &self.chaos
    }
}
