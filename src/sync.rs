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
