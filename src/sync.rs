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
