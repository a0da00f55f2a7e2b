//! [`ResponseFuture`]: holds the permit while the call runs.

use crate::future::AdmittedFuture;

use super::error::BulkheadFull;
use super::state::BulkheadPermit;

/// The response future of a [`BulkheadService`](super::BulkheadService):
/// holds the call's permit until it completes or is dropped, or fails at
/// once with [`BulkheadFull`].
pub type ResponseFuture<F> = AdmittedFuture<F, BulkheadPermit, BulkheadFull>;
