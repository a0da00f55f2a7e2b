//! Test doubles shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::Service;

/// What the backend should do with one call.
#[derive(Clone)]
pub enum Reply {
    Ok,
    Err,
    /// Succeed after this long (paused time advances it).
    OkAfter(Duration),
    /// Fail after this long.
    ErrAfter(Duration),
    /// Succeed once the gate opens.
    OkWhen(Gate),
    /// Fail once the gate opens.
    ErrWhen(Gate),
}

/// Holds calls until the test opens it.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }

    /// Lets every waiting and future call through.
    pub fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    async fn wait(&self) {
        let _ = self.0.acquire().await;
    }
}

/// A backend that counts the calls that reach it and in flight.
#[derive(Clone, Default)]
pub struct Backend {
    pub calls: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
}

impl Backend {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

pub type BackendFuture =
    Pin<Box<dyn Future<Output = Result<&'static str, &'static str>> + Send + 'static>>;

struct InFlight(Arc<AtomicUsize>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<Reply> for Backend {
    type Response = &'static str;
    type Error = &'static str;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, reply: Reply) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        Box::pin(async move {
            let _guard = guard;
            match reply {
                Reply::Ok => Ok("ok"),
                Reply::Err => Err("backend failed"),
                Reply::OkAfter(d) => {
                    tokio::time::sleep(d).await;
                    Ok("ok")
                }
                Reply::ErrAfter(d) => {
                    tokio::time::sleep(d).await;
                    Err("backend failed")
                }
                Reply::OkWhen(gate) => {
                    gate.wait().await;
                    Ok("ok")
                }
                Reply::ErrWhen(gate) => {
                    gate.wait().await;
                    Err("backend failed")
                }
            }
        })
    }
}
