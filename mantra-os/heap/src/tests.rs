//! Host tests: the free list over fresh memory, growth from a source, the
//! locked global allocator, and randomized runs against a shadow map.
extern crate std;

use super::*;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

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

/// Nothing allocated, everything in one free block.
fn all_free(total: usize) -> HeapStats {
    HeapStats { total, used: 0, free: total, largest_free: total, free_blocks: 1 }
}

#[test]
fn regions_are_trimmed_to_granules() {
    let a = arena(4096);
    assert_eq!(a.heap.stats(), all_free(4080));
    let mut heap = Heap::new();
    let mut tiny = [0u128; 2];
    // SAFETY: `tiny` outlives `heap` and is otherwise unused.
    unsafe { heap.add_region(tiny.as_mut_ptr().cast::<u8>().add(1), 20) };
    assert_eq!(heap.stats().total, 0);
    assert_eq!(heap.allocate(layout(1, 1)), None);
}

#[test]
fn odd_regions_are_trimmed() {
    let mut memory = vec![0u128; 256];
    let base = memory.as_mut_ptr().cast::<u8>();
    let mut heap = Heap::new();
    // SAFETY: inside `memory`, which outlives the heap.
    unsafe { heap.add_region(base.add(3), 100) };
    assert_eq!(heap.total(), 80);
    // SAFETY: inside `memory`, disjoint from the first region, too small to use.
    unsafe { heap.add_region(base.add(1001), 10) };
    assert_eq!(heap.total(), 80);
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
    assert_eq!(a.heap.stats(), all_free(4080));
    // The freed space is reused first-fit.
    assert_eq!(a.heap.allocate(l), Some(x));
}

#[test]
fn allocates_aligned_disjoint_blocks_and_merges_on_free() {
    let mut memory = vec![0u128; 8192 / 16];
    let mut heap = Heap::new();
    // SAFETY: `memory` outlives the heap and is used by nothing else.
    unsafe { heap.add_region(memory.as_mut_ptr().cast(), 8192) };
    assert_eq!(heap.stats(), all_free(8192));
    let layouts = [layout(1, 1), layout(100, 64), layout(1000, 8), layout(256, 256)];
    let blocks: Vec<_> = layouts.iter().map(|&l| (heap.allocate(l).unwrap(), l)).collect();
    for (i, (a, la)) in blocks.iter().enumerate() {
        assert_eq!(a.as_ptr().addr() % la.align(), 0);
        for (b, lb) in &blocks[i + 1..] {
            let (a0, b0) = (a.as_ptr().addr(), b.as_ptr().addr());
            assert!(a0 + la.size() <= b0 || b0 + lb.size() <= a0, "blocks overlap");
        }
    }
    for (block, l) in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { heap.deallocate(block, l) };
    }
    assert_eq!(heap.stats(), all_free(8192));
    assert!(heap.allocate(layout(8192, 16)).is_some());
    assert!(heap.allocate(layout(16, 16)).is_none());
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
    assert_eq!(heap.stats(), all_free(12288));
    assert!(heap.allocate(layout(12288, 16)).is_some());
}

#[test]
fn grows_with_more_regions() {
    let (mut a, mut b) = (vec![0u128; 256], vec![0u128; 256]);
    let mut heap = Heap::new();
    // SAFETY: the vectors outlive the heap.
    unsafe { heap.add_region(a.as_mut_ptr().cast(), 4096) };
    let big = layout(3000, 16);
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

/// A source carving regions from one buffer, top down (each new region ends
/// where the previous one starts, so they merge), at least `min` bytes and
/// a multiple of 4 KiB, like the runtime's growth; it records what it was
/// asked.
struct Pool {
    _memory: Vec<u128>,
    /// The buffer's first byte, and its address.
    base: *mut u8,
    start: usize,
    /// Regions are carved below this address.
    top: usize,
    min: usize,
    /// Of each call: the heap's total, and the size handed out (0: none).
    calls: Vec<(usize, usize)>,
}

impl Pool {
    fn new(bytes: usize, min: usize) -> Self {
        let mut memory = vec![0u128; bytes / 16];
        let base = memory.as_mut_ptr().cast::<u8>();
        let start = base.addr();
        Pool { _memory: memory, base, start, top: start + bytes, min, calls: Vec::new() }
    }
}

// SAFETY: regions are disjoint pieces of the pool's own buffer, handed out
// once each; the buffer moves with the heap that owns the pool.
unsafe impl Source for Pool {
    fn grow(&mut self, layout: Layout, total: usize) -> Option<(*mut u8, usize)> {
        let want = (layout.size() + layout.align() + GRANULE).max(self.min).next_multiple_of(4096);
        let size = if self.top - self.start >= want { want } else { 0 };
        self.calls.push((total, size));
        if size == 0 {
            return None;
        }
        self.top -= size;
        Some((self.base.wrapping_add(self.top - self.start), size))
    }
}

#[test]
fn grows_from_its_source_and_retries() {
    let mut heap = Heap::with_source(Pool::new(64 << 10, 8192));
    // The first request finds no memory at all and grows.
    let a = heap.allocate(layout(100, 8)).unwrap();
    assert_eq!(heap.source.calls, [(0, 8192)]);
    // Served from what is there: no growth.
    let b = heap.allocate(layout(8000, 16)).unwrap();
    assert_eq!(heap.source.calls.len(), 1);
    // Too big for the rest: one more region, merged below the first.
    let c = heap.allocate(layout(20000, 4096)).unwrap();
    assert_eq!(heap.source.calls, [(0, 8192), (8192, 24576)]);
    assert_eq!(c.as_ptr().addr() % 4096, 0);
    // More than the pool has left: the source says no, the request fails.
    assert_eq!(heap.allocate(layout(40000, 16)), None);
    assert_eq!(heap.source.calls.last(), Some(&(32768, 0)));
    // SAFETY: allocated above with these layouts.
    unsafe {
        heap.deallocate(a, layout(100, 8));
        heap.deallocate(c, layout(20000, 4096));
        heap.deallocate(b, layout(8000, 16));
    }
    assert_eq!(heap.stats(), all_free(32768));
}

/// The heap's `Mutex` over `std::sync::Mutex`, for the global-allocator test.
struct StdMutex<T>(std::sync::Mutex<T>);

impl<T> Mutex for StdMutex<T> {
    type Data = T;
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
}

#[test]
fn locked_heap_is_a_global_allocator() {
    let mut memory = vec![0u128; 1024];
    let heap = LockedHeap::new(StdMutex(std::sync::Mutex::new(Heap::new())));
    // SAFETY: `memory` outlives `heap` and is only used through it.
    unsafe { heap.add_region(memory.as_mut_ptr().cast(), 16384) };
    let l = layout(1000, 64);
    // SAFETY: non-zero size layout; the pointer is freed with the same layout;
    // freeing null is allowed by `dealloc` and ignored.
    unsafe {
        let p = heap.alloc(l);
        assert!(!p.is_null() && p.addr().is_multiple_of(64));
        assert!(heap.alloc(layout(20000, 8)).is_null());
        heap.dealloc(p, l);
        heap.dealloc(ptr::null_mut(), l);
    }
    assert_eq!(heap.stats(), all_free(16384));
}

/// Random allocations and frees on `heap` against a shadow map of live
/// blocks, with a deterministic xorshift seed: no overlap, alignment
/// honoured, every block inside `[lo, hi)`, contents untouched by the heap,
/// `used` exact after every step. Frees everything at the end and returns
/// how many requests failed.
fn stress<S: Source>(heap: &mut Heap<S>, lo: usize, hi: usize, rounds: u32, seed: u64) -> usize {
    let mut live: BTreeMap<usize, (usize, Layout, u8, NonNull<u8>)> = BTreeMap::new();
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut failures = 0;
    for round in 0..rounds {
        let r = next();
        if r % 5 < 3 {
            let size = match r % 7 {
                0 => 0,
                1..=4 => (next() % 128) as usize,
                5 => (next() % 2048) as usize,
                _ => (next() % 16384) as usize,
            };
            let l = layout(size, 1 << (next() % 13));
            let Some(p) = heap.allocate(l) else {
                failures += 1;
                continue;
            };
            let addr = p.as_ptr().addr();
            assert_eq!(addr % l.align(), 0);
            assert!(addr >= lo && addr + size <= hi);
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
            unsafe { heap.deallocate(p, l) };
        }
        let used: usize = live.values().map(|(_, l, ..)| block_layout(*l).unwrap().0).sum();
        assert_eq!(heap.stats().used, used);
    }
    for (_, (_, l, _, p)) in live {
        // SAFETY: allocated with `l`, freed once.
        unsafe { heap.deallocate(p, l) };
    }
    failures
}

/// A fixed heap: exhaustion is reached, and everything merges back into
/// the one block it started as.
#[test]
fn random_stress_against_shadow() {
    let mut a = arena(256 << 10);
    let total = a.heap.stats().total;
    let failures = stress(&mut a.heap, a.start, a.end, 40_000, 0x1234_5678_9abc_def1);
    assert!(failures > 0, "the stress test should reach exhaustion");
    assert_eq!(a.heap.stats(), all_free(total));
}

/// A growing heap: it takes many regions from its source until the source
/// runs dry, and since they are adjacent, freeing everything leaves one
/// block covering all of them.
#[test]
fn random_stress_growing_from_a_source() {
    let pool = Pool::new(1 << 20, 4096);
    let (lo, hi) = (pool.start, pool.top);
    let mut heap = Heap::with_source(pool);
    let failures = stress(&mut heap, lo, hi, 60_000, 0x0bad_cafe_f00d_5eed);
    let grown = heap.source.calls.iter().filter(|&&(_, size)| size > 0).count();
    assert!(grown > 10, "the heap should grow many times, grew {grown}");
    assert!(failures > 0, "the stress test should exhaust the source");
    assert_eq!(heap.stats(), all_free(hi - heap.source.top));
}
