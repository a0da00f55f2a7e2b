//! Small concurrency helpers shared by the layers.

use std::ops::Deref;

/// Keeps a value on its own cache line(s) so that writes to neighbouring
/// data do not invalidate it (false sharing). 128 bytes covers the adjacent
/// line prefetcher of x86_64 and the 128-byte lines of some ARM cores.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Atomics: `std`'s, or loom's when model-checking with
/// `RUSTFLAGS="--cfg palisade_loom"` (see `scripts/loom.sh`).
pub(crate) mod atomic {
    #[cfg(palisade_loom)]
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
    #[cfg(not(palisade_loom))]
    pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
}

/// A counter split over several cache lines so that threads adding to it
/// at once do not all fight over one line; reading sums the stripes.
///
/// Each thread adds to the stripe picked for it on first use (threads are
/// spread round-robin), so an add is one uncontended `fetch_add` as long as
/// there are no more busy threads than stripes.
pub(crate) struct StripedCounter {
    stripes: Box<[CachePadded<atomic::AtomicU64>]>,
}

const STRIPES: usize = 8;

impl StripedCounter {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| CachePadded(atomic::AtomicU64::new(0)))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe_of_this_thread()].fetch_add(n, atomic::Ordering::AcqRel);
    }

    /// This thread's stripe, for a caller that reads it before adding.
    #[inline]
    pub(crate) fn stripe(&self) -> &atomic::AtomicU64 {
        &self.stripes[stripe_of_this_thread()]
    }

    /// The sum of every add that happened before this call (adds racing it
    /// may or may not be counted).
    pub(crate) fn sum(&self) -> u64 {
        self.stripes.iter().fold(0u64, |sum, stripe| {
            sum.wrapping_add(stripe.load(atomic::Ordering::Acquire))
        })
    }
}

impl std::fmt::Debug for StripedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StripedCounter").field(&self.sum()).finish()
    }
}

#[inline]
fn stripe_of_this_thread() -> usize {
    // Not part of any model: which stripe a thread uses never changes a sum.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}
