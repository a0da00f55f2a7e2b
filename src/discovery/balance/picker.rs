//! Choosing one endpoint of a set, per [`Picker`].

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore};

use super::config::Picker;
use super::endpoint::{Endpoint, EndpointSet};

/// Picks an endpoint of `set`, or `None` when it is empty. `next` is the
/// round-robin position shared by every clone of the balancer. No picker
/// reads the clock: peak-EWMA compares decayed estimates without it (see
/// `EndpointStats::cheaper_than`).
#[inline]
pub(crate) fn pick<'a, S: Clone>(
    picker: Picker,
    set: &'a EndpointSet<S>,
    next: &AtomicUsize,
    rng: &mut SmallRng,
) -> Option<&'a Endpoint<S>> {
    let endpoints = &set.available;
    let n = endpoints.len();
    if n <= 1 {
        return endpoints.front();
    }
    let Some(slots) = &set.weights else {
        // Round robin: in id order, through the vector.
        return endpoints.get(next.fetch_add(1, Ordering::Relaxed) % n);
    };
    match picker {
        Picker::RoundRobin => endpoints.get(next.fetch_add(1, Ordering::Relaxed) % n),
        Picker::Random => slots.nth(rng.random_range(0..n)),
        Picker::Weighted => {
            let total = slots.total();
            if total == 0 {
                return None;
            }
            slots.find(rng.random_range(0..total))
        }
        Picker::LeastLoaded => {
            let (a, b) = two_distinct(n, rng);
            let (first, second) = (slots.nth(a)?, slots.nth(b)?);
            Some(if second.stats.in_flight() < first.stats.in_flight() {
                second
            } else {
                first
            })
        }
        Picker::PeakEwma { .. } => {
            let (a, b) = two_distinct(n, rng);
            let (first, second) = (slots.nth(a)?, slots.nth(b)?);
            Some(if second.stats.cheaper_than(&first.stats) {
                second
            } else {
                first
            })
        }
    }
}

/// Two different indexes below `n` (`n >= 2`), uniformly, from one
/// random `u64` `r`: the first is the high word of `r × n`, the second the
/// high word of its low word `× (n - 1)` (the low word is again uniform).
/// Each index is off uniform by at most `n / 2^64`, where two
/// `random_range` calls would each reject and redraw to be exact.
#[inline]
fn two_distinct(n: usize, rng: &mut SmallRng) -> (usize, usize) {
    let wide = u128::from(rng.next_u64()) * n as u128;
    let a = (wide >> 64) as usize;
    let b = ((u128::from(wide as u64) * (n as u128 - 1)) >> 64) as usize;
    (a, if b >= a { b + 1 } else { b })
}
