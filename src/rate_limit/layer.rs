//! [`RateLimiterLayer`]: wraps services so every call takes a permit.

use tower_layer::Layer;

use super::service::RateLimiterService;
use super::state::RateLimiter;

/// Wraps services in a [`RateLimiterService`] that takes a permit of one
/// shared [`RateLimiter`] for every call. Built by [`RateLimiter::layer`].
#[derive(Debug, Clone)]
pub struct RateLimiterLayer {
    limiter: RateLimiter,
}

impl RateLimiterLayer {
    /// A layer over `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }

    /// The limiter the layer's services share.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimiterLayer {
    type Service = RateLimiterService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimiterService::new(inner, self.limiter.clone())
    }
}
