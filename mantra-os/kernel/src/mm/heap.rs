//! Phase-1 kernel heap: a linked-list allocator.
//!
//! Free memory is a singly linked list of blocks kept in address order; each
//! free block stores its header (size, next) in its own first bytes.
//! Allocation is first-fit: the first block that can hold the request at the
//! requested alignment is split into up to three parts — alignment padding
//! (back on the list), the allocation, and the tail (back on the list).
//! Freeing inserts the block at its address and merges it with a free
//! neighbour on either side, so freeing everything leaves one block per
//! contiguous region.
//!
//! Every block address and size is a multiple of [`GRANULE`] (16 bytes, the
//! size of a header), so padding and tails are always big enough to go back
//! on the list and nothing is lost to fragments smaller than a header. The
//! cost is that every allocation is rounded up to 16 bytes.
//!
//! Slab caches (phase 2) will sit on top of this for small fixed sizes.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};

use crate::sync::SpinLock;

/// Unit of block addresses and sizes, and the smallest block.
pub const GRANULE: usize = 16;

/// Header of a free block, at its start.
struct FreeBlock {
    /// Bytes in the block, header included.
    size: usize,
    /// The next free block, at a higher address.
    next: Option<NonNull<FreeBlock>>,
}

const _: () = assert!(size_of::<FreeBlock>() <= GRANULE && align_of::<FreeBlock>() <= GRANULE);

/// Heap usage, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Memory given to the heap (after aligning regions to [`GRANULE`]).
    pub total: usize,
    /// Bytes in allocated blocks (requests rounded up to [`GRANULE`]).
    pub used: usize,
    /// `total - used`.
    pub free: usize,
    /// The largest request (with `GRANULE` alignment) that can succeed now.
    pub largest_free: usize,
    /// Number of free blocks: 1 per region when nothing is allocated.
    pub free_blocks: usize,
}

/// The allocator proper, unsynchronised; [`LockedHeap`] puts it behind a lock.
pub struct Heap {
    head: Option<NonNull<FreeBlock>>,
    total: usize,
    used: usize,
}

// SAFETY: the heap owns the memory its list points into; nothing in it is
// tied to the CPU that created it.
unsafe impl Send for Heap {}

impl Heap {
    /// A heap without memory: every allocation fails until
    /// [`Heap::add_region`] gives it some.
    pub const fn new() -> Self {
        Self { head: None, total: 0, used: 0 }
    }

    /// Gives the heap the `size` bytes at `start` (trimmed inward to
    /// [`GRANULE`] alignment; a region with less than one granule is
    /// ignored). A region adjacent to one already added merges with it, so
    /// growing the heap upward is adding the next region.
    ///
    /// # Safety
    ///
    /// The memory must be valid for reads and writes, unused by anything
    /// else, and must not overlap a region already given, for as long as the
    /// heap is used.
    pub unsafe fn add_region(&mut self, start: *mut u8, size: usize) {
        let pad = start.addr().wrapping_neg() & (GRANULE - 1);
        if pad >= size {
            return;
        }
        let size = (size - pad) & !(GRANULE - 1);
        if size == 0 {
            return;
        }
        // SAFETY: `start + pad` is inside the region (pad < size), so it is
        // non-null and, like the `size` bytes from it, ours by the contract.
        let block = unsafe { NonNull::new_unchecked(start.add(pad)).cast::<FreeBlock>() };
        // SAFETY: the block is unused memory of ours, GRANULE-aligned and
        // GRANULE-sized, disjoint from the list (contract).
        unsafe { self.insert(block, size) };
        self.total += size;
    }

    /// First-fit allocation of `layout` (any power-of-two alignment). A
    /// zero-size request gets a real granule. `None` when no free block fits.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (size, align) = block_layout(layout)?;
        let mut prev: Option<NonNull<FreeBlock>> = None;
        let mut cur = self.head;
        while let Some(block) = cur {
            // SAFETY: every block on the list is a valid header in heap memory.
            let FreeBlock { size: block_size, next } = unsafe { block.read() };
            let pad = block.as_ptr().addr().wrapping_neg() & (align - 1);
            if pad <= block_size && size <= block_size - pad {
                // Pad, allocation and tail are multiples of GRANULE: each is
                // empty or big enough to be a free block.
                let tail = block_size - pad - size;
                let mut link = next;
                if tail > 0 {
                    // SAFETY: the tail lies inside the block, GRANULE-aligned.
                    let tail_block = unsafe { block.byte_add(pad + size) };
                    // SAFETY: as above; we own the block's bytes.
                    unsafe { tail_block.write(FreeBlock { size: tail, next: link }) };
                    link = Some(tail_block);
                }
                if pad > 0 {
                    // SAFETY: the pad keeps the block's header place.
                    unsafe { block.write(FreeBlock { size: pad, next: link }) };
                    link = Some(block);
                }
                self.set_next(prev, link);
                self.used += size;
                // SAFETY: `pad < block_size`, so the result is inside the block.
                return Some(unsafe { block.byte_add(pad) }.cast());
            }
            prev = cur;
            cur = next;
        }
        None
    }

    /// Returns a block to the heap, merging it with free neighbours.
    ///
    /// Panics if the block overlaps free memory (a double free): stopping is
    /// better than handing the memory out twice.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`Heap::allocate`] on this heap with this
    /// `layout`, and must not be used afterwards.
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let (size, _) = block_layout(layout).expect("deallocate: layout that allocate would refuse");
        // SAFETY: the block came from `allocate`: GRANULE-aligned, `size`
        // bytes of heap memory, no longer used by the caller.
        unsafe { self.insert(ptr.cast(), size) };
        self.used -= size;
    }

    /// Usage figures; walks the free list.
    pub fn stats(&self) -> HeapStats {
        let (mut largest_free, mut free_blocks) = (0, 0);
        let mut cur = self.head;
        while let Some(block) = cur {
            // SAFETY: every block on the list is a valid header in heap memory.
            let FreeBlock { size, next } = unsafe { block.read() };
            largest_free = largest_free.max(size);
            free_blocks += 1;
            cur = next;
        }
        HeapStats { total: self.total, used: self.used, free: self.total - self.used, largest_free, free_blocks }
    }

    /// Puts the free block `[block, block + size)` on the list in address
    /// order, merging it with adjacent free blocks.
    ///
    /// # Safety
    ///
    /// The block must be GRANULE-aligned heap memory of `size` bytes (a
    /// multiple of GRANULE) that nobody uses.
    unsafe fn insert(&mut self, block: NonNull<FreeBlock>, size: usize) {
        let addr = block.as_ptr().addr();
        let mut prev: Option<NonNull<FreeBlock>> = None;
        let mut next = self.head;
        while let Some(n) = next {
            if n.as_ptr().addr() > addr {
                break;
            }
            prev = next;
            // SAFETY: list blocks are valid headers.
            next = unsafe { (*n.as_ptr()).next };
        }
        let prev_end = prev.map(|p| {
            // SAFETY: list blocks are valid headers.
            p.as_ptr().addr() + unsafe { (*p.as_ptr()).size }
        });
        assert!(prev_end.is_none_or(|end| end <= addr), "heap: freeing memory that is already free");
        assert!(next.is_none_or(|n| addr + size <= n.as_ptr().addr()), "heap: freeing memory that is already free");

        let (block, size) = match prev {
            // SAFETY: `p` is a valid header.
            Some(p) if prev_end == Some(addr) => (p, unsafe { (*p.as_ptr()).size } + size),
            _ => {
                self.set_next(prev, Some(block));
                (block, size)
            }
        };
        let header = match next {
            // SAFETY: `n` is a valid header; it becomes part of `block`.
            Some(n) if block.as_ptr().addr() + size == n.as_ptr().addr() => unsafe {
                let n = n.read();
                FreeBlock { size: size + n.size, next: n.next }
            },
            _ => FreeBlock { size, next },
        };
        // SAFETY: `block` is the new block or its free predecessor, both ours.
        unsafe { block.write(header) };
    }

    /// Points `prev` (or the list head) at `next`.
    fn set_next(&mut self, prev: Option<NonNull<FreeBlock>>, next: Option<NonNull<FreeBlock>>) {
        match prev {
            // SAFETY: `p` is a valid header on the list.
            Some(p) => unsafe { (*p.as_ptr()).next = next },
            None => self.head = next,
        }
    }
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

/// Block size and alignment for a request: both at least GRANULE, the size
/// a multiple of it. `None` if rounding overflows.
fn block_layout(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(1).checked_next_multiple_of(GRANULE)?;
    Some((size, layout.align().max(GRANULE)))
}

/// The kernel heap: a [`Heap`] behind a [`SpinLock`], usable as
/// `#[global_allocator]`.
///
/// The lock does not mask interrupts: an interrupt handler must not allocate
/// unless the arch layer disables interrupts around heap use, or it may spin
/// forever on the lock its own CPU holds.
pub struct LockedHeap(SpinLock<Heap>);

impl LockedHeap {
    /// A heap without memory; usable in a `static`.
    pub const fn empty() -> Self {
        Self(SpinLock::new(Heap::new()))
    }

    /// [`Heap::add_region`] under the lock, e.g. once at boot with the
    /// mapped heap range, later with more.
    ///
    /// # Safety
    ///
    /// As for [`Heap::add_region`].
    pub unsafe fn add_region(&self, start: *mut u8, size: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.0.lock().add_region(start, size) }
    }

    /// Takes the lock and reports usage.
    pub fn stats(&self) -> HeapStats {
        self.0.lock().stats()
    }
}

// SAFETY: `Heap` hands out disjoint, suitably aligned blocks of memory it
// owns and takes them back only through `dealloc`; the lock serialises it.
unsafe impl GlobalAlloc for LockedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with
        // `layout` (so it is non-null) and is not used afterwards.
        unsafe { self.0.lock().deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A heap over `bytes` of fresh memory starting 8 bytes past a 4 KiB
    /// boundary, so `add_region` has to trim and addresses are predictable.
    struct Arena {
        _memory: Vec<u128>,
        heap: Heap,
        start: usize,
        end: usize,
    }

    fn arena(bytes: usize) -> Arena {
        let mut memory = vec![0u128; (bytes + 8192) / 16];
        let base = memory.as_mut_ptr().cast::<u8>();
        let page = base.wrapping_add(base.addr().wrapping_neg() & 4095);
        let mut heap = Heap::new();
        // SAFETY: `page + 8 .. page + 8 + bytes` lies in `memory`, which is
        // ours, outlives the heap (same struct) and is only used through it.
        unsafe { heap.add_region(page.add(8), bytes) };
        let start = page.addr() + 16;
        Arena { _memory: memory, heap, start, end: start + bytes - 16 }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn regions_are_trimmed_to_granules() {
        let a = arena(4096);
        let s = a.heap.stats();
        assert_eq!(s, HeapStats { total: 4080, used: 0, free: 4080, largest_free: 4080, free_blocks: 1 });
        let mut heap = Heap::new();
        let mut tiny = [0u128; 2];
        // SAFETY: `tiny` outlives `heap` and is otherwise unused.
        unsafe { heap.add_region(tiny.as_mut_ptr().cast::<u8>().add(1), 20) };
        assert_eq!(heap.stats().total, 0);
        assert_eq!(heap.allocate(layout(1, 1)), None);
    }

    #[test]
    fn neighbours_coalesce_on_free() {
        let mut a = arena(4096);
        let l = layout(100, 8); // rounds to 112
        let x = a.heap.allocate(l).unwrap();
        let y = a.heap.allocate(l).unwrap();
        let z = a.heap.allocate(l).unwrap();
        assert_eq!(x.as_ptr().addr(), a.start);
        assert_eq!(y.as_ptr().addr(), a.start + 112);
        assert_eq!(a.heap.stats().used, 336);
        // SAFETY: allocated above with `l`, not used again.
        unsafe { a.heap.deallocate(y, l) };
        assert_eq!(a.heap.stats().free_blocks, 2);
        // SAFETY: as for `y`. It merges with y's block.
        unsafe { a.heap.deallocate(x, l) };
        assert_eq!(a.heap.stats().free_blocks, 2);
        assert_eq!(a.heap.stats().largest_free, 4080 - 336);
        // SAFETY: as for `y`. It merges both ways.
        unsafe { a.heap.deallocate(z, l) };
        assert_eq!(a.heap.stats(), HeapStats { total: 4080, used: 0, free: 4080, largest_free: 4080, free_blocks: 1 });
        // The freed space is reused first-fit.
        assert_eq!(a.heap.allocate(l), Some(x));
    }

    #[test]
    fn alignment_padding_goes_back_on_the_list() {
        let mut a = arena(64 << 10);
        for align in [1, 2, 8, 16, 32, 64, 256, 1024, 4096] {
            let l = layout(24, align);
            let p = a.heap.allocate(l).unwrap();
            assert_eq!(p.as_ptr().addr() % align, 0, "align {align}");
            assert!(p.as_ptr().addr() >= a.start && p.as_ptr().addr() + 24 <= a.end);
            // SAFETY: just allocated with `l`.
            unsafe { a.heap.deallocate(p, l) };
        }
        let small = a.heap.allocate(layout(16, 16)).unwrap();
        let big = a.heap.allocate(layout(4096, 4096)).unwrap();
        // The padding below `big` is free again: a small request lands there.
        let next_small = a.heap.allocate(layout(16, 16)).unwrap();
        assert!(next_small < big && next_small > small);
        assert_eq!(a.heap.stats().used, 16 + 4096 + 16);
        // SAFETY: allocated above with these layouts.
        unsafe {
            a.heap.deallocate(big, layout(4096, 4096));
            a.heap.deallocate(small, layout(16, 16));
            a.heap.deallocate(next_small, layout(16, 16));
        }
        assert_eq!(a.heap.stats().free_blocks, 1);
    }

    #[test]
    fn zero_size_huge_and_exhaustion() {
        let mut a = arena(4096);
        let zero = a.heap.allocate(layout(0, 1)).unwrap();
        assert_eq!(a.heap.stats().used, GRANULE);
        // SAFETY: allocated above with this layout.
        unsafe { a.heap.deallocate(zero, layout(0, 1)) };
        assert_eq!(a.heap.allocate(layout(4096, 1)), None);
        assert_eq!(a.heap.allocate(layout(isize::MAX as usize - 4, 1)), None);
        assert_eq!(a.heap.allocate(layout(8, 1 << 30)), None);
        let l = layout(64, 8);
        let blocks: Vec<_> = std::iter::from_fn(|| a.heap.allocate(l)).collect();
        assert_eq!(blocks.len(), 4080 / 64);
        let s = a.heap.stats();
        assert_eq!((s.free, s.largest_free), (4080 % 64, 4080 % 64));
        for b in blocks {
            // SAFETY: allocated above with `l`.
            unsafe { a.heap.deallocate(b, l) };
        }
        assert_eq!(a.heap.stats().free_blocks, 1);
        assert_eq!(a.heap.allocate(layout(4080, 16)).map(|p| p.as_ptr().addr()), Some(a.start));
    }

    #[test]
    fn adjacent_regions_merge_and_separate_ones_do_not() {
        let mut memory = vec![0u128; 3 * 256];
        let base = memory.as_mut_ptr().cast::<u8>();
        let mut heap = Heap::new();
        // SAFETY: three disjoint 4 KiB slices of `memory`, which outlives `heap`.
        unsafe {
            heap.add_region(base.add(8192), 4096);
            heap.add_region(base, 4096);
            assert_eq!(heap.stats().free_blocks, 2);
            heap.add_region(base.add(4096), 4096);
        }
        assert_eq!(heap.stats(), HeapStats { total: 12288, used: 0, free: 12288, largest_free: 12288, free_blocks: 1 });
        assert!(heap.allocate(layout(12288, 16)).is_some());
    }

    #[test]
    #[should_panic(expected = "already free")]
    fn double_free_is_caught() {
        let mut a = arena(4096);
        let l = layout(32, 8);
        let p = a.heap.allocate(l).unwrap();
        let _keep = a.heap.allocate(l).unwrap();
        // SAFETY: deliberately wrong on the second call: the heap must notice.
        unsafe {
            a.heap.deallocate(p, l);
            a.heap.deallocate(p, l);
        }
    }

    /// Random allocations and frees against a shadow map of live blocks:
    /// no overlap, alignment honoured, contents untouched by the heap, and
    /// one block again once everything is freed.
    #[test]
    fn random_stress_against_shadow() {
        let mut a = arena(256 << 10);
        let total = a.heap.stats().total;
        let mut live: BTreeMap<usize, (usize, Layout, u8, NonNull<u8>)> = BTreeMap::new();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut failures = 0;
        for round in 0..40_000u32 {
            let r = next();
            if r % 5 < 3 {
                let size = match r % 7 {
                    0 => 0,
                    1..=4 => (next() % 128) as usize,
                    5 => (next() % 2048) as usize,
                    _ => (next() % 16384) as usize,
                };
                let l = layout(size, 1 << (next() % 13));
                let Some(p) = a.heap.allocate(l) else {
                    failures += 1;
                    continue;
                };
                let addr = p.as_ptr().addr();
                assert_eq!(addr % l.align(), 0);
                assert!(addr >= a.start && addr + size <= a.end);
                let end = addr + size.max(1);
                if let Some((&s, &(e, ..))) = live.range(..end).next_back() {
                    assert!(e <= addr || s >= end, "overlap: [{addr:#x},{end:#x}) and [{s:#x},{e:#x})");
                }
                let fill = round as u8;
                // SAFETY: the heap gave us `size` bytes at `p`.
                unsafe { p.as_ptr().write_bytes(fill, size) };
                live.insert(addr, (end, l, fill, p));
            } else if !live.is_empty() {
                let key = *live.keys().nth((next() % live.len() as u64) as usize).unwrap();
                let (_, l, fill, p) = live.remove(&key).unwrap();
                // SAFETY: `p` is live with `l.size()` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), l.size()) };
                assert!(bytes.iter().all(|&b| b == fill), "block at {key:#x} was overwritten");
                // SAFETY: allocated with `l`, removed from the shadow: not used again.
                unsafe { a.heap.deallocate(p, l) };
            }
            let used: usize = live.values().map(|(_, l, ..)| block_layout(*l).unwrap().0).sum();
            assert_eq!(a.heap.stats().used, used);
        }
        assert!(failures > 0, "the stress test should reach exhaustion");
        for (_, (_, l, _, p)) in std::mem::take(&mut live) {
            // SAFETY: allocated with `l`, freed once.
            unsafe { a.heap.deallocate(p, l) };
        }
        assert_eq!(a.heap.stats(), HeapStats { total, used: 0, free: total, largest_free: total, free_blocks: 1 });
    }

    #[test]
    fn locked_heap_is_a_global_allocator() {
        let mut memory = vec![0u128; 1024];
        let heap = LockedHeap::empty();
        // SAFETY: `memory` outlives `heap` and is only used through it.
        unsafe { heap.add_region(memory.as_mut_ptr().cast(), 16384) };
        let l = layout(1000, 64);
        // SAFETY: non-zero size layout; the pointer is freed with the same layout.
        unsafe {
            let p = heap.alloc(l);
            assert!(!p.is_null() && p.addr().is_multiple_of(64));
            assert!(heap.alloc(layout(20000, 8)).is_null());
            heap.dealloc(p, l);
        }
        assert_eq!(heap.stats().free_blocks, 1);
    }
}
