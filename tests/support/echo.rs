//! The cheapest service there is, and a way to call a service that answers
//! at once without a runtime: shared by the allocation tests and the benches.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll};

use futures::task::noop_waker_ref;
use tower::Service;

/// Always ready; answers with its request.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ready(Ok(request))
    }
}

/// Makes one call to a service that is always ready and answers on the
/// first poll (`poll_ready`, `call`, one poll with a no-op waker).
#[inline]
pub fn call_now<S: Service<u64>>(service: &mut S, request: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(noop_waker_ref());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => return Err(error),
        Poll::Pending => panic!("the service was not ready"),
    }
    let mut response = pin!(service.call(request));
    match response.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response did not complete on its first poll"),
    }
}
