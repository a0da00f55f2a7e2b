//! How a request's key is found, for the last-good fallback.

use std::hash::Hash;

/// Extracts the key under which a request's last good response is kept.
///
/// Implemented by every `Fn(&Req) -> K` closure and by [`SameKey`].
pub trait LastGoodKey<Req> {
    /// The key.
    type Key: Hash + Eq + Clone;

    /// The key of `request`.
    fn key(&self, request: &Req) -> Self::Key;
}

impl<Req, K, F> LastGoodKey<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone,
{
    type Key = K;

    #[inline]
    fn key(&self, request: &Req) -> K {
        self(request)
    }
}

/// Every request has the same key: the last-good fallback answers with the
/// last good response of any request. Used by
/// [`Fallback::layer`](super::Fallback::layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SameKey;

impl<Req> LastGoodKey<Req> for SameKey {
    type Key = ();

    #[inline]
    fn key(&self, _request: &Req) {}
}
