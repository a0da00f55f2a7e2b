//! Choosing one endpoint of a set, per [`Picker`].

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::config::Picker;
use super::endpoint::{Endpoint, EndpointSet};

/// Picks an endpoint of `set`, or `None` when it is empty. `next` is the
/// round-robin position shared by every clone of the balancer; `now` is
/// read by the caller when the picker is [`Picker::PeakEwma`].
#[inline]
pub(crate) fn pick<'a, S: Clone>(
    picker: Picker,
    set: &'a EndpointSet<S>,
    next: &AtomicUsize,
    rng: &mut SmallRng,
    now: Option<Instant>,
) -> Option<&'a Endpoint<S>> {
    let endpoints = &set.available;
    let n = endpoints.len();
    if n <= 1 {
        return endpoints.front();
    }
    let index = match picker {
        Picker::RoundRobin => next.fetch_add(1, Ordering::Relaxed) % n,
        Picker::Random => rng.random_range(0..n),
        Picker::Weighted => {
            let point = rng.random_range(0..set.total_weight());
            set.cumulative_weights.partition_point(|&c| c <= point)
        }
        Picker::LeastLoaded => {
            let (a, b) = two_distinct(n, rng);
            if endpoints[b].stats.in_flight() < endpoints[a].stats.in_flight() {
                b
            } else {
                a
            }
        }
        Picker::PeakEwma { .. } => {
            let (a, b) = two_distinct(n, rng);
            let now = now.unwrap_or_else(Instant::now);
            if endpoints[b].stats.ewma_cost(now) < endpoints[a].stats.ewma_cost(now) {
                b
            } else {
                a
            }
        }
    };
    endpoints.get(index)
}

/// Two different indexes below `n` (`n >= 2`), uniformly.
#[inline]
fn two_distinct(n: usize, rng: &mut SmallRng) -> (usize, usize) {
    let a = rng.random_range(0..n);
    let b = rng.random_range(0..n - 1);
    (a, if b >= a { b + 1 } else { b })
}
