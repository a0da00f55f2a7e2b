//! [`make_fn`]: a per-instance client factory from a closure.

use std::fmt;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use tower_service::Service;

use crate::discovery::instance::Instance;

/// Builds each instance's client with a closure: a
/// `tower::Service<Instance>` (a `MakeService`) that answers at once.
///
/// ```
/// use palisade::discovery::{make_fn, Instance};
///
/// // E.g. a base URL per instance for a reqwest or hyper client.
/// let make = make_fn(|instance: &Instance| {
///     Ok::<_, std::convert::Infallible>(format!("http://{}", instance.address()))
/// });
/// # let _ = make;
/// ```
pub fn make_fn<F, S, E>(f: F) -> MakeFn<F>
where
    F: FnMut(&Instance) -> Result<S, E>,
{
    MakeFn { f }
}

/// The factory returned by [`make_fn`].
#[derive(Clone)]
pub struct MakeFn<F> {
    f: F,
}

impl<F, S, E> Service<Instance> for MakeFn<F>
where
    F: FnMut(&Instance) -> Result<S, E>,
{
    type Response = S;
    type Error = E;
    type Future = Ready<Result<S, E>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, instance: Instance) -> Self::Future {
        ready((self.f)(&instance))
    }
}

impl<F> fmt::Debug for MakeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeFn").finish_non_exhaustive()
    }
}
