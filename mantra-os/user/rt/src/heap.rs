//! The user-space allocator.
//!
//! [`Heap`] is a first-fit free list over memory regions it is given: free
//! blocks are kept in address order, each with its header (size, next) in
//! its first bytes; an allocation splits a block into alignment padding,
//! the allocation and a tail (padding and tail go back on the list); a free
//! merges the block with free neighbours. Block addresses and sizes are
//! multiples of [`GRANULE`] (16 bytes, one header), so no split leaves a
//! fragment too small to track.
//!
//! On the bare-metal target the runtime's `#[global_allocator]` starts with
//! a 64 KiB arena in the program's .bss and grows on demand: it creates a
//! memory object (VMO_CREATE, charged to the process's `self`) and maps it
//! read-write into the process's own address space (VMAR_MAP on `space`,
//! the kernel choosing the address), at least [`MIN_GROWTH`] bytes and at
//! least half of what the heap already holds, so growth is geometric. The
//! memory objects' handles are kept for the process's lifetime.

use core::alloc::Layout;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

/// Unit of block addresses and sizes.
pub const GRANULE: usize = 16;
/// Smallest growth of the heap, in bytes.
pub const MIN_GROWTH: usize = 256 * 1024;
/// Size of the initial arena in .bss.
pub const INITIAL_ARENA: usize = 64 * 1024;

struct Free {
    size: usize,
    next: Option<NonNull<Free>>,
}

const _: () = assert!(size_of::<Free>() <= GRANULE && align_of::<Free>() <= GRANULE);

/// A first-fit free-list allocator over regions given with [`Heap::add_region`].
pub struct Heap {
    head: Option<NonNull<Free>>,
    total: usize,
    used: usize,
}

// SAFETY: the heap owns the memory its list points into; it is not tied to a thread.
unsafe impl Send for Heap {}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

/// Size and alignment of the block for `layout`: at least one granule, the
/// size rounded up to granules. `None` on overflow.
fn block_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(1).checked_next_multiple_of(GRANULE)?;
    Some((size, layout.align().max(GRANULE)))
}

impl Heap {
    pub const fn new() -> Self {
        Self { head: None, total: 0, used: 0 }
    }

    /// Bytes given to the heap.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes in allocated blocks.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Number of free blocks (one per disjoint region when all is free).
    pub fn free_blocks(&self) -> usize {
        let mut count = 0;
        let mut cur = self.head;
        while let Some(block) = cur {
            count += 1;
            // SAFETY: list entries are valid headers in heap memory.
            cur = unsafe { (*block.as_ptr()).next };
        }
        count
    }

    /// Gives the heap `[start, start + size)`, trimmed inward to [`GRANULE`]
    /// alignment. Adjacent regions merge.
    ///
    /// # Safety
    ///
    /// The memory must be readable and writable, used by nothing else and
    /// disjoint from every region given before, for as long as the heap lives.
    pub unsafe fn add_region(&mut self, start: *mut u8, size: usize) {
        let pad = start.addr().wrapping_neg() & (GRANULE - 1);
        if size <= pad {
            return;
        }
        let size = (size - pad) & !(GRANULE - 1);
        if size == 0 {
            return;
        }
        // SAFETY: `start + pad` lies inside the region, which is ours (contract).
        let block = unsafe { NonNull::new_unchecked(start.add(pad)) }.cast::<Free>();
        // SAFETY: an unused, aligned block of `size` bytes, disjoint from the list.
        unsafe { self.insert(block, size) };
        self.total += size;
    }

    /// A block for `layout` (any power-of-two alignment), or `None` if no
    /// free block fits.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (size, align) = block_of(layout)?;
        let mut prev: Option<NonNull<Free>> = None;
        let mut cur = self.head;
        while let Some(block) = cur {
            // SAFETY: list entries are valid headers.
            let Free { size: have, next } = unsafe { block.read() };
            let pad = block.as_ptr().addr().wrapping_neg() & (align - 1);
            if pad < have && size <= have - pad {
                let tail = have - pad - size;
                let mut link = next;
                if tail > 0 {
                    // SAFETY: the tail is inside the block and granule-aligned
                    // (pad and size are multiples of GRANULE).
                    let tail_block = unsafe { block.byte_add(pad + size) };
                    // SAFETY: as above, memory of the free block.
                    unsafe { tail_block.write(Free { size: tail, next: link }) };
                    link = Some(tail_block);
                }
                if pad > 0 {
                    // SAFETY: the block's own header place.
                    unsafe { block.write(Free { size: pad, next: link }) };
                    link = Some(block);
                }
                self.link(prev, link);
                self.used += size;
                // SAFETY: pad < have: still inside the block.
                return Some(unsafe { block.byte_add(pad) }.cast());
            }
            prev = cur;
            cur = next;
        }
        None
    }

    /// Returns a block.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`Heap::allocate`] of this heap with `layout`,
    /// and is not used afterwards.
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let Some((size, _)) = block_of(layout) else { return };
        // SAFETY: the block was allocated from this heap with this size.
        unsafe { self.insert(ptr.cast(), size) };
        self.used -= size;
    }

    /// Puts `[block, block + size)` on the list in address order, merging
    /// with free neighbours.
    ///
    /// # Safety
    ///
    /// A granule-aligned block of `size` (a multiple of GRANULE) bytes of
    /// heap memory that nothing uses and that is not on the list.
    unsafe fn insert(&mut self, block: NonNull<Free>, size: usize) {
        let addr = block.as_ptr().addr();
        let mut prev: Option<NonNull<Free>> = None;
        let mut next = self.head;
        while let Some(n) = next {
            if n.as_ptr().addr() > addr {
                break;
            }
            prev = Some(n);
            // SAFETY: list entries are valid headers.
            next = unsafe { (*n.as_ptr()).next };
        }
        let prev_end = prev.map(|p| {
            // SAFETY: list entries are valid headers.
            p.as_ptr().addr() + unsafe { (*p.as_ptr()).size }
        });
        assert!(prev_end.is_none_or(|end| end <= addr), "heap: double free");
        assert!(next.is_none_or(|n| addr + size <= n.as_ptr().addr()), "heap: double free");
        let (start, mut size) = match prev {
            // SAFETY: `p` is a valid header; the new block extends it.
            Some(p) if prev_end == Some(addr) => (p, unsafe { (*p.as_ptr()).size } + size),
            _ => {
                self.link(prev, Some(block));
                (block, size)
            }
        };
        let mut after = next;
        if let Some(n) = next {
            if start.as_ptr().addr() + size == n.as_ptr().addr() {
                // SAFETY: `n` is a valid header; it merges into `start`.
                let n = unsafe { n.read() };
                size += n.size;
                after = n.next;
            }
        }
        // SAFETY: `start` is the new block or its free predecessor.
        unsafe { start.write(Free { size, next: after }) };
    }

    fn link(&mut self, prev: Option<NonNull<Free>>, next: Option<NonNull<Free>>) {
        match prev {
            // SAFETY: `p` is a valid header on the list.
            Some(p) => unsafe { (*p.as_ptr()).next = next },
            None => self.head = next,
        }
    }
}

/// How many bytes to map when the heap of `total` bytes cannot serve `layout`.
pub fn growth_for(layout: Layout, total: usize) -> usize {
    let need = layout.size().saturating_add(layout.align()).saturating_add(GRANULE);
    need.max(MIN_GROWTH).max(total / 2).saturating_add(4095) & !4095
}

#[cfg(target_os = "none")]
mod global {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;
    use core::ptr::{self, NonNull};

    use mantra_abi::{map, Handle};

    use super::{growth_for, Heap, INITIAL_ARENA};
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

    struct State {
        heap: Heap,
        started: bool,
        vmos: [Handle; KEPT_VMOS],
        vmo_count: usize,
    }

    static STATE: Lock<State> =
        Lock::new(State { heap: Heap::new(), started: false, vmos: [Handle::INVALID; KEPT_VMOS], vmo_count: 0 });

    impl State {
        fn start(&mut self) {
            if !self.started {
                self.started = true;
                // SAFETY: the arena is a static only the heap uses, given once.
                unsafe { self.heap.add_region(ARENA.0.get().cast(), INITIAL_ARENA) };
            }
        }

        /// Maps a new memory object big enough for `layout`.
        fn grow(&mut self, layout: Layout) -> bool {
            let (process, space) = (crate::process::current(), crate::process::space());
            if process == Handle::INVALID || space == Handle::INVALID {
                return false;
            }
            let size = growth_for(layout, self.heap.total());
            let Ok(vmo) = sys::vmo_create(process, size as u64) else { return false };
            match sys::vmar_map(space, vmo, 0, size as u64, map::READ | map::WRITE, 0) {
                Ok(addr) => {
                    // SAFETY: the kernel just mapped `size` fresh bytes at `addr`
                    // for us, read-write, overlapping nothing of ours.
                    unsafe { self.heap.add_region(addr as *mut u8, size) };
                    if self.vmo_count < KEPT_VMOS {
                        self.vmos[self.vmo_count] = vmo;
                        self.vmo_count += 1;
                    } else {
                        let _ = sys::handle_close(vmo);
                    }
                    true
                }
                Err(_) => {
                    let _ = sys::handle_close(vmo);
                    false
                }
            }
        }
    }

    struct RuntimeAllocator;

    #[global_allocator]
    static ALLOCATOR: RuntimeAllocator = RuntimeAllocator;

    // SAFETY: blocks come from `Heap`, which hands out disjoint blocks of at
    // least the requested size and alignment, under the state's lock.
    unsafe impl GlobalAlloc for RuntimeAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let mut state = STATE.lock();
            state.start();
            loop {
                if let Some(block) = state.heap.allocate(layout) {
                    return block.as_ptr();
                }
                if !state.grow(layout) {
                    return ptr::null_mut();
                }
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if let Some(block) = NonNull::new(ptr) {
                // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with `layout`.
                unsafe { STATE.lock().heap.deallocate(block, layout) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn region(bytes: usize) -> Vec<u128> {
        vec![0u128; bytes / 16]
    }

    #[test]
    fn allocates_aligned_disjoint_blocks_and_merges_on_free() {
        let mut memory = region(8192);
        let mut heap = Heap::new();
        // SAFETY: `memory` outlives the heap and is used by nothing else.
        unsafe { heap.add_region(memory.as_mut_ptr().cast(), 8192) };
        assert_eq!((heap.total(), heap.free_blocks()), (8192, 1));
        let layouts = [Layout::from_size_align(1, 1).unwrap(), Layout::from_size_align(100, 64).unwrap(),
                       Layout::from_size_align(1000, 8).unwrap(), Layout::from_size_align(256, 256).unwrap()];
        let blocks: Vec<_> = layouts.iter().map(|&l| (heap.allocate(l).unwrap(), l)).collect();
        for (i, (a, la)) in blocks.iter().enumerate() {
            assert_eq!(a.as_ptr().addr() % la.align(), 0);
            for (b, lb) in &blocks[i + 1..] {
                let (a0, b0) = (a.as_ptr().addr(), b.as_ptr().addr());
                assert!(a0 + la.size() <= b0 || b0 + lb.size() <= a0, "blocks overlap");
            }
        }
        for (block, layout) in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { heap.deallocate(block, layout) };
        }
        assert_eq!((heap.used(), heap.free_blocks()), (0, 1));
        assert!(heap.allocate(Layout::from_size_align(8192, 16).unwrap()).is_some());
        assert!(heap.allocate(Layout::from_size_align(16, 16).unwrap()).is_none());
    }

    #[test]
    fn grows_with_more_regions() {
        let (mut a, mut b) = (region(4096), region(4096));
        let mut heap = Heap::new();
        // SAFETY: the vectors outlive the heap.
        unsafe { heap.add_region(a.as_mut_ptr().cast(), 4096) };
        let big = Layout::from_size_align(3000, 16).unwrap();
        let first = heap.allocate(big).unwrap();
        assert!(heap.allocate(big).is_none());
        // SAFETY: as above.
        unsafe { heap.add_region(b.as_mut_ptr().cast(), 4096) };
        let second = heap.allocate(big).unwrap();
        assert_ne!(first, second);
        // SAFETY: allocated above.
        unsafe {
            heap.deallocate(first, big);
            heap.deallocate(second, big);
        }
        assert_eq!(heap.used(), 0);
    }

    #[test]
    fn odd_regions_are_trimmed() {
        let mut memory = region(4096);
        let mut heap = Heap::new();
        // SAFETY: inside `memory`.
        unsafe { heap.add_region(memory.as_mut_ptr().cast::<u8>().add(3), 100) };
        assert_eq!(heap.total(), 80);
        // SAFETY: inside `memory`, too small to use.
        unsafe { heap.add_region(memory.as_mut_ptr().cast::<u8>().add(1001), 10) };
        assert_eq!(heap.total(), 80);
    }

    #[test]
    fn growth_is_geometric_and_page_sized() {
        let small = Layout::from_size_align(10, 8).unwrap();
        assert_eq!(growth_for(small, 0), MIN_GROWTH);
        assert_eq!(growth_for(small, 4 * MIN_GROWTH), 2 * MIN_GROWTH);
        let huge = Layout::from_size_align(1 << 20, 4096).unwrap();
        let grown = growth_for(huge, 0);
        assert!(grown >= (1 << 20) + 4096 && grown % 4096 == 0);
    }
}
