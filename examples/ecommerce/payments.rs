//! A stand-in payments service instance that can be made to fail, as a
//! `tower::Service`; the example runs two of them behind a balancer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

/// A request to charge an order.
#[derive(Debug, Clone)]
pub struct Charge {
    pub order_id: u64,
    pub amount_cents: u64,
}

/// The payment taken.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub payment_id: u64,
    pub order_id: u64,
    /// The instance that took the payment.
    pub instance: Arc<str>,
}

/// Why a charge failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("payment provider unavailable")]
    Unavailable,
}

/// One instance of the simulated provider, with its switches.
#[derive(Clone)]
pub struct Payments {
    instance: Arc<str>,
    down: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
}

impl Payments {
    /// An instance named `instance` (its id in the registry).
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.into(),
            down: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Makes every following call fail (or succeed again).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Service<Charge> for Payments {
    type Response = Receipt;
    type Error = PaymentError;
    type Future = Pin<Box<dyn Future<Output = Result<Receipt, PaymentError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, charge: Charge) -> Self::Future {
        tracing::debug!(
            order = charge.order_id,
            amount_cents = charge.amount_cents,
            "charge"
        );
        let down = self.down.load(Ordering::SeqCst);
        let payment_id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let instance = Arc::clone(&self.instance);
        Box::pin(async move {
            // A provider that is down makes callers wait before failing.
            tokio::time::sleep(Duration::from_millis(if down { 20 } else { 2 })).await;
            if down {
                Err(PaymentError::Unavailable)
            } else {
                Ok(Receipt {
                    payment_id,
                    order_id: charge.order_id,
                    instance,
                })
            }
        })
    }
}
