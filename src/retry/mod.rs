//! Retrying failed calls: backoff with jitter, retry budgets, deadlines.
//!
//! Work in progress: the backoff strategies ([`backoff`]) and the retry
//! budget ([`budget`]) are usable on their own; the retry layer built on
//! them and on the shared [`classify`](crate::classify) outcome classifier
//! follows.

pub mod backoff;
pub mod budget;
