//! The user-space allocator: the shared first-fit free list
//! ([`mantra_heap::Heap`]) growing from memory objects.
//!
//! On the bare-metal target the runtime's `#[global_allocator]` starts with
//! a 64 KiB arena in the program's .bss and grows on demand: it creates a
//! memory object (VMO_CREATE, charged to the process's `self`) and maps it
//! read-write into the process's own address space (VMAR_MAP on `space`,
//! the kernel choosing the address), at least [`MIN_GROWTH`] bytes and at
//! least half of what the heap already holds, so growth is geometric. The
//! memory objects' handles are kept for the process's lifetime. The heap is
//! behind the runtime's [`Lock`], which yields the CPU while it waits.

use core::alloc::Layout;

pub use mantra_heap::{Heap, HeapStats, GRANULE};

use crate::sync::Lock;

/// Smallest growth of the heap, in bytes.
pub const MIN_GROWTH: usize = 256 * 1024;
/// Size of the initial arena in .bss.
pub const INITIAL_ARENA: usize = 64 * 1024;

/// How many bytes to map when the heap of `total` bytes cannot serve `layout`.
pub fn growth_for(layout: Layout, total: usize) -> usize {
    let need = layout.size().saturating_add(layout.align()).saturating_add(GRANULE);
    need.max(MIN_GROWTH).max(total / 2).saturating_add(4095) & !4095
}

impl<T> mantra_heap::Mutex for Lock<T> {
    type Data = T;

    /// Waits for the lock, yielding the CPU (see [`Lock::lock`]).
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock())
    }
}

#[cfg(target_os = "none")]
mod global {
    use core::alloc::Layout;
    use core::cell::UnsafeCell;

    use mantra_abi::{map, Handle};
    use mantra_heap::{Heap, LockedHeap, Source};

    use super::{growth_for, INITIAL_ARENA};
    use crate::sync::Lock;
    use crate::sys;

    /// Memory-object handles kept (after this many, further ones are closed:
    /// the mapping keeps its memory object alive).
    const KEPT_VMOS: usize = 32;

    #[repr(C, align(4096))]
    struct Arena(UnsafeCell<[u8; INITIAL_ARENA]>);
    // SAFETY: only the heap touches the arena, under the heap's lock.
    unsafe impl Sync for Arena {}
    static ARENA: Arena = Arena(UnsafeCell::new([0; INITIAL_ARENA]));

    /// Where the runtime's heap gets memory: the arena first, then memory
    /// objects mapped into the process's own space.
    struct Memory {
        started: bool,
        vmos: [Handle; KEPT_VMOS],
        vmo_count: usize,
    }

    // SAFETY: the arena is handed out once (`started`), and it is a static
    // nothing else uses; every later region is a fresh mapping the kernel
    // just made for us, read-write, overlapping nothing of ours.
    unsafe impl Source for Memory {
        fn grow(&mut self, layout: Layout, total: usize) -> Option<(*mut u8, usize)> {
            if !self.started {
                self.started = true;
                return Some((ARENA.0.get().cast(), INITIAL_ARENA));
            }
            let (process, space) = (crate::process::current(), crate::process::space());
            if process == Handle::INVALID || space == Handle::INVALID {
                return None;
            }
            let size = growth_for(layout, total);
            let vmo = sys::vmo_create(process, size as u64).ok()?;
            match sys::vmar_map(space, vmo, 0, size as u64, map::READ | map::WRITE, 0) {
                Ok(addr) => {
                    if self.vmo_count < KEPT_VMOS {
                        self.vmos[self.vmo_count] = vmo;
                        self.vmo_count += 1;
                    } else {
                        let _ = sys::handle_close(vmo);
                    }
                    Some((addr as *mut u8, size))
                }
                Err(_) => {
                    let _ = sys::handle_close(vmo);
                    None
                }
            }
        }
    }

    #[global_allocator]
    static ALLOCATOR: LockedHeap<Lock<Heap<Memory>>> = LockedHeap::new(Lock::new(Heap::with_source(Memory {
        started: false,
        vmos: [Handle::INVALID; KEPT_VMOS],
        vmo_count: 0,
    })));
}

#[cfg(test)]
mod tests {
    use super::*;

    // The allocator's own tests are in `mantra_heap`.

    #[test]
    fn growth_is_geometric_and_page_sized() {
        let small = Layout::from_size_align(10, 8).unwrap();
        assert_eq!(growth_for(small, 0), MIN_GROWTH);
        assert_eq!(growth_for(small, 4 * MIN_GROWTH), 2 * MIN_GROWTH);
        let huge = Layout::from_size_align(1 << 20, 4096).unwrap();
        let grown = growth_for(huge, 0);
        assert!(grown >= (1 << 20) + 4096 && grown.is_multiple_of(4096));
    }
}
