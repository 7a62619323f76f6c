//! `mantra_heap`: the linked-list heap of the kernel and of the user runtime.
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
//! What differs between the users is kept out of the allocator:
//!
//! - where memory comes from: [`Heap::add_region`] for memory given up front
//!   (the kernel's pre-mapped heap range), and a [`Source`] the heap asks
//!   when no free block fits (the runtime maps memory objects; the kernel's
//!   [`Fixed`] never grows);
//! - the lock: [`LockedHeap`], the `#[global_allocator]`, takes its owner's
//!   lock type through [`Mutex`] (the kernel's spinning ticket lock, the
//!   runtime's yielding lock), with that lock's rules.
#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};

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

/// Where a heap gets more memory when no free block fits a request.
///
/// # Safety
///
/// Every region [`Source::grow`] returns must be valid for reads and writes,
/// used by nothing else and disjoint from every region the heap already has,
/// for as long as the heap is used: the heap takes it as if it were given
/// with [`Heap::add_region`].
pub unsafe trait Source {
    /// A new region `(start, size)` for a heap that holds `total` bytes and
    /// cannot serve `layout`, or `None` when there is no more memory. The
    /// heap retries the request after adding the region, and asks again if
    /// it still does not fit. Runs under the heap's lock, if it has one.
    fn grow(&mut self, layout: Layout, total: usize) -> Option<(*mut u8, usize)>;
}

/// The source of a heap that never grows: it has the regions given with
/// [`Heap::add_region`] and nothing else (the kernel heap's fixed range).
#[derive(Clone, Copy, Debug, Default)]
pub struct Fixed;

// SAFETY: it returns no region at all.
unsafe impl Source for Fixed {
    fn grow(&mut self, _layout: Layout, _total: usize) -> Option<(*mut u8, usize)> {
        None
    }
}

/// The allocator proper, unsynchronised: a first-fit free list over the
/// regions it is given, growing from its [`Source`] `S` when a request does
/// not fit. [`LockedHeap`] puts it behind a lock.
pub struct Heap<S = Fixed> {
    head: Option<NonNull<FreeBlock>>,
    total: usize,
    used: usize,
    source: S,
}

// SAFETY: the heap owns the memory its list points into; nothing in it is
// tied to the CPU or thread that created it. The source moves with it.
unsafe impl<S: Send> Send for Heap<S> {}

impl Heap {
    /// A heap without memory that never grows: every allocation fails until
    /// [`Heap::add_region`] gives it some.
    pub const fn new() -> Self {
        Self::with_source(Fixed)
    }
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Heap<S> {
    /// A heap without memory that asks `source` for some when a request
    /// does not fit (the first request, for a start).
    pub const fn with_source(source: S) -> Self {
        Self { head: None, total: 0, used: 0, source }
    }

    /// Bytes given to the heap (after trimming regions to [`GRANULE`]).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes in allocated blocks.
    pub fn used(&self) -> usize {
        self.used
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

    /// First fit for a block of `size` bytes at `align` (both from
    /// [`block_layout`]), from the free list as it is.
    fn take_first_fit(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
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
                // SAFETY: `pad < block_size` (size > 0), so the result is
                // inside the block.
                return Some(unsafe { block.byte_add(pad) }.cast());
            }
            prev = cur;
            cur = next;
        }
        None
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

impl<S: Source> Heap<S> {
    /// First-fit allocation of `layout` (any power-of-two alignment); when
    /// no free block fits, the heap grows from its source and tries again. A
    /// zero-size request gets a real granule. `None` when nothing fits and
    /// the source has no more memory.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (size, align) = block_layout(layout)?;
        loop {
            if let Some(block) = self.take_first_fit(size, align) {
                return Some(block);
            }
            let (start, bytes) = self.source.grow(layout, self.total)?;
            // SAFETY: `Source`'s contract: the region is memory for the heap
            // alone, disjoint from what it has.
            unsafe { self.add_region(start, bytes) };
        }
    }
}

/// Block size and alignment for a request: both at least GRANULE, the size
/// a multiple of it. `None` if rounding overflows.
fn block_layout(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(1).checked_next_multiple_of(GRANULE)?;
    Some((size, layout.align().max(GRANULE)))
}

/// Exclusive access to a value behind its owner's lock: the kernel's
/// spinning ticket lock and the runtime's yielding lock implement it, so
/// [`LockedHeap`] keeps each one's waiting rules.
pub trait Mutex {
    /// The value the lock protects.
    type Data;

    /// Runs `f` with the lock held.
    fn with<R>(&self, f: impl FnOnce(&mut Self::Data) -> R) -> R;
}

/// A [`Heap`] behind the lock `M`, usable as `#[global_allocator]`. Every
/// call takes the lock, so the lock's rules are the heap's (e.g. which
/// contexts may allocate at all).
pub struct LockedHeap<M>(M);

impl<M> LockedHeap<M> {
    /// The heap behind `lock`; usable in a `static`.
    pub const fn new(lock: M) -> Self {
        Self(lock)
    }
}

impl<M: Mutex<Data = Heap<S>>, S: Source> LockedHeap<M> {
    /// [`Heap::add_region`] under the lock, e.g. once at boot with the
    /// mapped heap range, later with more.
    ///
    /// # Safety
    ///
    /// As for [`Heap::add_region`].
    pub unsafe fn add_region(&self, start: *mut u8, size: usize) {
        // SAFETY: forwarded contract.
        self.0.with(|heap| unsafe { heap.add_region(start, size) })
    }

    /// Takes the lock and reports usage.
    pub fn stats(&self) -> HeapStats {
        self.0.with(|heap| heap.stats())
    }
}

// SAFETY: `Heap` hands out disjoint, suitably aligned blocks of memory it
// owns and takes them back only through `dealloc`; the lock serialises it.
//
// Both calls stay out of line (as they were when each user had its own
// non-generic allocator): inlined into every allocation site, the
// allocator's loops and atomics keep LLVM from building a large `Box::new`
// value in place, and a 48 KiB per-CPU area built on a 32 KiB kernel stack
// overflows it.
unsafe impl<M: Mutex<Data = Heap<S>>, S: Source> GlobalAlloc for LockedHeap<M> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.with(|heap| heap.allocate(layout)).map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(block) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with
            // `layout` and is not used afterwards.
            self.0.with(|heap| unsafe { heap.deallocate(block, layout) })
        }
    }
}

#[cfg(test)]
mod tests;
