//! [`ResponseFuture`]: the inner call, or the rejection.

use crate::future::AdmittedFuture;

use super::error::RateLimited;

/// The response future of a [`RateLimiterService`](super::RateLimiterService):
/// the inner call (a rate limiter's permit is spent once taken, so it holds
/// none), or [`RateLimited`] at once.
pub type ResponseFuture<F> = AdmittedFuture<F, (), RateLimited>;
