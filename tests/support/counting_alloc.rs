//! A global allocator that counts the allocations a thread makes while a
//! test asks it to, for the tests that prove a hot path allocates nothing.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// The bytes those allocations asked for (a reallocation counts its new size).
static BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are being counted. A `const`
    /// initializer and no destructor: reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

/// Only one thread counts at a time.
static COUNTING_SECTION: Mutex<()> = Mutex::new(());

impl CountingAllocator {
    fn note_allocation(&self, bytes: usize) {
        // `try_with`: the allocator may run while this thread's locals are
        // being torn down.
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

// SAFETY: every request is passed unchanged to `System`; counting touches
// only an atomic and a `const` thread-local, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note_allocation(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note_allocation(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note_allocation(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations made by this thread while `f` runs (one counting section at a
/// time, so tests running in parallel do not add to each other's counts).
pub fn allocations_during(f: impl FnOnce()) -> usize {
    counted(f).0
}

/// The bytes this thread allocated while `f` runs (freed or not; a
/// reallocation counts its new size), one counting section at a time.
pub fn bytes_allocated_during(f: impl FnOnce()) -> usize {
    counted(f).1
}

fn counted(f: impl FnOnce()) -> (usize, usize) {
    let _section = COUNTING_SECTION
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(true));
    f();
    COUNTING.with(|counting| counting.set(false));
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}
