//! The error every waiter of a failed shared call receives.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The error of a shared call, handed to every request that waited for it.
///
/// One inner call answers many callers, and an error is not `Clone` in
/// general, so the inner service's error is kept once behind an `Arc` and
/// each waiter gets a `CoalescedError` pointing at it. Its
/// [`source`](Error::source) is the inner error, so
/// [`crate::find_cause`], [`crate::is_caused_by`] and
/// [`crate::error::is_rejection`] see through it; `downcast_ref` on the
/// returned [`BoxError`](crate::BoxError) finds the `CoalescedError`
/// itself. A call that ran uncoalesced (beyond `max_in_flight_keys`)
/// returns its inner error unwrapped.
#[derive(Clone)]
pub struct CoalescedError {
    error: Arc<dyn Error + Send + Sync + 'static>,
}

impl CoalescedError {
    pub(crate) fn new(error: crate::BoxError) -> Self {
        Self {
            error: Arc::from(error),
        }
    }

    /// The inner service's error, shared by every waiter.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.error
    }

    /// A handle on the inner service's error that outlives this one.
    pub fn shared(&self) -> Arc<dyn Error + Send + Sync + 'static> {
        Arc::clone(&self.error)
    }
}

impl fmt::Debug for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CoalescedError").field(&self.error).finish()
    }
}

impl fmt::Display for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared call failed: {}", self.error)
    }
}

impl Error for CoalescedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.error)
    }
}
