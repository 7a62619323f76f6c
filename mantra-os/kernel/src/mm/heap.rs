//! Phase-1 kernel heap: the shared linked-list allocator ([`mantra_heap`])
//! over the fixed, pre-mapped heap range, behind a [`SpinLock`].
//!
//! The allocator (first fit, coalescing, [`GRANULE`]-sized blocks, double
//! free caught) is described in `mantra_heap`; here it only gets the kernel's
//! lock. The heap never grows on its own ([`Fixed`]): the arch layer gives
//! it memory with [`LockedHeap::add_region`].
//!
//! Slab caches (phase 2) will sit on top of this for small fixed sizes.

pub use mantra_heap::{Fixed, Heap, HeapStats, GRANULE};

use crate::sync::SpinLock;

/// The kernel heap: a [`Heap`] behind a [`SpinLock`], usable as
/// `#[global_allocator]`:
/// `static HEAP: LockedHeap = LockedHeap::new(SpinLock::new(Heap::new()));`.
///
/// The lock does not mask interrupts: an interrupt handler must not allocate
/// unless the arch layer disables interrupts around heap use, or it may spin
/// forever on the lock its own CPU holds.
pub type LockedHeap = mantra_heap::LockedHeap<SpinLock<Heap>>;

impl<T> mantra_heap::Mutex for SpinLock<T> {
    type Data = T;

    /// Spins for the lock (see [`SpinLock::lock`]); interrupts stay as they are.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock())
    }
}

#[cfg(test)]
mod tests {
    use core::alloc::{GlobalAlloc, Layout};

    use super::*;

    /// The allocator's own tests are in `mantra_heap`; this one checks the
    /// kernel's lock wiring.
    #[test]
    fn locked_heap_is_a_global_allocator() {
        let mut memory = vec![0u128; 1024];
        let heap = LockedHeap::new(SpinLock::new(Heap::new()));
        // SAFETY: `memory` outlives `heap` and is only used through it.
        unsafe { heap.add_region(memory.as_mut_ptr().cast(), 16384) };
        let l = Layout::from_size_align(1000, 64).unwrap();
        // SAFETY: non-zero size layout; the pointer is freed with the same layout.
        unsafe {
            let p = heap.alloc(l);
            assert!(!p.is_null() && p.addr().is_multiple_of(64));
            assert!(heap.alloc(Layout::from_size_align(20000, 8).unwrap()).is_null());
            heap.dealloc(p, l);
        }
        assert_eq!(heap.stats().free_blocks, 1);
    }
}
