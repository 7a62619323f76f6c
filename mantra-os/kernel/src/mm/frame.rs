//! Physical frame allocator: 4 KiB frames, tracked in bitmaps.
//!
//! The allocator runs before there is a heap, so its bitmaps live in a few
//! frames carved out of the usable memory itself and are reached through the
//! caller's `phys_to_virt` offset (the firmware's identity map at first, the
//! kernel's direct map later: see [`FrameAllocator::set_phys_offset`]).
//!
//! The bitmaps cover every frame of `[0, span_end)`, decided once at init,
//! with two bits per frame:
//!
//! - *usable*: the frame is RAM this allocator manages;
//! - *free*: the frame is available (only ever set on usable frames).
//!
//! Memory that is not usable yet (boot-services memory, ACPI tables) stays
//! unusable until [`FrameAllocator::add_range`] hands it over, which only
//! flips bits. Because of the usable bit, freeing a frame that was never
//! handed out (MMIO, a reserved hole, a frame freed twice) is an error
//! instead of corruption. Frame 0 is never usable, so a null physical
//! address is never handed out.
//!
//! The kernel keeps one in a `static SpinLock<FrameAllocator>`: it starts
//! empty ([`FrameAllocator::new`]) and gets its memory from
//! [`FrameAllocator::init`].
//!
//! `alloc` is next-fit (it resumes after the last frame it handed out) and
//! scans 64 frames per word; `alloc_contiguous` is first-fit from the bottom.

use core::ops::Range;
use core::ptr::NonNull;
use core::slice;

use super::paging::{FrameAlloc, PhysAddr};
use super::PAGE_SIZE;

/// Why the allocator refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// `init` on an allocator that already has memory.
    AlreadyInitialised,
    /// At init: no usable range has enough whole frames for the bitmaps.
    NoRoomForBitmap,
    /// `add_range` reaches beyond the span fixed at init (or before init).
    OutOfSpan,
    /// The address is not 4 KiB-aligned.
    Misaligned,
    /// The frame is not memory this allocator manages.
    NotManaged,
    /// The frame is already free.
    DoubleFree,
}

/// The allocator's two bitmaps: `words` words of usable bits, then `words`
/// words of free bits, in frames it owns.
struct Bitmaps {
    ptr: *mut u64,
    words: usize,
}

impl Bitmaps {
    /// (usable, free).
    fn split(&mut self) -> (&mut [u64], &mut [u64]) {
        // SAFETY: `ptr` addresses `2 * words` words that the allocator owns
        // exclusively (`FrameAllocator::init`'s and `set_phys_offset`'s
        // contracts; before init, `words` is 0 and `ptr` dangling but aligned), and `&mut self` makes this the only live view.
        let all = unsafe { slice::from_raw_parts_mut(self.ptr, 2 * self.words) };
        all.split_at_mut(self.words)
    }

    fn free(&self) -> &[u64] {
        // SAFETY: as in `split`; `&self` excludes a concurrent `split`.
        unsafe { slice::from_raw_parts(self.ptr.add(self.words), self.words) }
    }
}

/// The physical frame allocator. One instance owns all RAM it was given;
/// the kernel keeps it behind a lock.
pub struct FrameAllocator {
    bits: Bitmaps,
    /// Physical address of the bitmap storage.
    bitmap_phys: u64,
    /// Frames covered: `[0, frames)`.
    frames: u64,
    /// Usable frames, including those holding the bitmaps.
    total: usize,
    /// Free frames.
    free: usize,
    /// Next-fit: the frame `alloc` starts looking at.
    hint: u64,
}

// SAFETY: the allocator exclusively owns its bitmap storage; the raw pointer
// is no reason to tie it to one CPU.
unsafe impl Send for FrameAllocator {}

impl FrameAllocator {
    /// An allocator without memory, usable in a `static`: every `alloc`
    /// fails until [`FrameAllocator::init`].
    pub const fn new() -> Self {
        Self {
            bits: Bitmaps { ptr: NonNull::dangling().as_ptr(), words: 0 },
            bitmap_phys: 0,
            frames: 0,
            total: 0,
            free: 0,
            hint: 0,
        }
    }

    /// Gives the allocator the `usable` physical byte ranges `(start, end)`,
    /// which may be unaligned, overlapping, empty or inverted (only whole
    /// frames inside a range count; frame 0 never does). The bitmaps cover
    /// `[0, max(span_end, highest usable end))`: pass the end of the RAM that
    /// [`FrameAllocator::add_range`] may hand over later — RAM kinds only,
    /// not MMIO, since the bitmaps cost 2 bits per frame of the span (64 KiB
    /// per 1 GiB). They go into the first usable range large enough and are
    /// accessed at `phys + phys_offset`; their frames count as allocated.
    ///
    /// Errors: `AlreadyInitialised`, `NoRoomForBitmap` (nothing changed).
    ///
    /// # Safety
    ///
    /// The usable ranges must be RAM that nothing else uses from now on, and
    /// every byte of them must be readable and writable at `phys +
    /// phys_offset` (wrapping) until [`FrameAllocator::set_phys_offset`]
    /// says otherwise.
    pub unsafe fn init<I>(&mut self, usable: I, span_end: u64, phys_offset: u64) -> Result<(), FrameError>
    where
        I: IntoIterator<Item = (u64, u64)>,
        I::IntoIter: Clone,
    {
        if self.frames != 0 {
            return Err(FrameError::AlreadyInitialised);
        }
        let ranges = usable.into_iter();
        let end = ranges.clone().map(|(_, end)| end).fold(span_end, u64::max).min(PhysAddr::LIMIT);
        let frames = end.div_ceil(PAGE_SIZE);
        let words = frames.div_ceil(64) as usize;
        let bitmap_frames = (2 * words as u64 * 8).div_ceil(PAGE_SIZE);
        let storage = ranges
            .clone()
            .filter_map(|(start, end)| whole_frames(start, end, frames))
            .find(|f| f.end - f.start >= bitmap_frames)
            .ok_or(FrameError::NoRoomForBitmap)?;
        let bitmap_phys = storage.start * PAGE_SIZE;
        let ptr = bitmap_phys.wrapping_add(phys_offset) as *mut u64;
        // SAFETY: the storage frames lie in a usable range, which the caller
        // gives us and maps at `phys + phys_offset`; they hold `2 * words`
        // words (`bitmap_frames` was rounded up).
        unsafe { ptr.write_bytes(0, 2 * words) };
        *self = Self { bits: Bitmaps { ptr, words }, bitmap_phys, frames, total: 0, free: 0, hint: 0 };
        for range in ranges.filter_map(|(start, end)| whole_frames(start, end, frames)) {
            self.add_frames(range);
        }
        self.take(storage.start..storage.start + bitmap_frames);
        Ok(())
    }

    /// Hands the whole frames of the physical byte range `[start, end)` to
    /// the allocator, e.g. boot-services memory once the loader's data is no
    /// longer needed.
    /// Frames already usable are left as they are (allocated ones stay
    /// allocated), so overlapping ranges are harmless. Returns how many
    /// frames became usable.
    ///
    /// Errors: `OutOfSpan` if the range ends beyond the span fixed at init
    /// (nothing is added then).
    ///
    /// # Safety
    ///
    /// As for [`FrameAllocator::init`]: the range must be RAM that nothing else
    /// uses from now on (the allocator hands it out; it never writes to it).
    pub unsafe fn add_range(&mut self, start: u64, end: u64) -> Result<usize, FrameError> {
        if start < end && end / PAGE_SIZE > self.frames {
            return Err(FrameError::OutOfSpan);
        }
        Ok(whole_frames(start, end, self.frames).map_or(0, |frames| self.add_frames(frames)))
    }

    /// Takes one free frame (contents undefined), or `None` when none is left.
    pub fn alloc(&mut self) -> Option<PhysAddr> {
        if self.free == 0 {
            return None;
        }
        let frame = self.next_free(self.hint).or_else(|| self.next_free(0))?;
        self.take(frame..frame + 1);
        self.hint = frame + 1;
        Some(frame_addr(frame))
    }

    /// Takes `count` physically contiguous free frames whose first frame
    /// number is a multiple of `align_frames` (a power of two), lowest
    /// address first. `None` if no such run exists, or if `count` is 0 or
    /// `align_frames` is not a power of two.
    pub fn alloc_contiguous(&mut self, count: u64, align_frames: u64) -> Option<PhysAddr> {
        if count == 0 || count > self.free as u64 || !align_frames.is_power_of_two() {
            return None;
        }
        let mut start = self.next_free(0)?.next_multiple_of(align_frames);
        while start.checked_add(count)? <= self.frames {
            match self.first_taken(start..start + count) {
                None => {
                    self.take(start..start + count);
                    return Some(frame_addr(start));
                }
                Some(taken) => start = self.next_free(taken + 1)?.next_multiple_of(align_frames),
            }
        }
        None
    }

    /// Returns one frame from `alloc` or `alloc_contiguous`.
    ///
    /// Errors: `Misaligned`, `NotManaged` (not RAM of this allocator),
    /// `DoubleFree`; the allocator is unchanged then.
    pub fn free(&mut self, addr: PhysAddr) -> Result<(), FrameError> {
        self.free_contiguous(addr, 1)
    }

    /// Returns `count` contiguous frames starting at `addr`; all or nothing,
    /// with the errors of [`FrameAllocator::free`].
    pub fn free_contiguous(&mut self, addr: PhysAddr, count: u64) -> Result<(), FrameError> {
        if !addr.is_aligned(PAGE_SIZE) {
            return Err(FrameError::Misaligned);
        }
        let first = addr.as_u64() / PAGE_SIZE;
        let end = first.checked_add(count).filter(|&end| end <= self.frames).ok_or(FrameError::NotManaged)?;
        let (usable, free) = self.bits.split();
        for (w, mask) in word_masks(first..end) {
            if mask & !usable[w] != 0 {
                return Err(FrameError::NotManaged);
            }
            if mask & free[w] != 0 {
                return Err(FrameError::DoubleFree);
            }
        }
        for (w, mask) in word_masks(first..end) {
            free[w] |= mask;
        }
        self.free += count as usize;
        Ok(())
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Usable frames managed, free or not (including the bitmaps' own).
    pub fn total_frames(&self) -> usize {
        self.total
    }

    /// Moves the bitmaps' virtual address: call it before the mapping given
    /// so far goes away (e.g. when the kernel switches from the firmware's
    /// identity map to its own direct map).
    ///
    /// # Safety
    ///
    /// The allocator's bitmap frames (and, as for `init`, all usable memory)
    /// must be readable and writable at `phys + phys_offset` from now on.
    pub unsafe fn set_phys_offset(&mut self, phys_offset: u64) {
        self.bits.ptr = self.bitmap_phys.wrapping_add(phys_offset) as *mut u64;
    }

    /// Marks `frames` usable and free where they were not usable yet;
    /// returns how many changed.
    fn add_frames(&mut self, frames: Range<u64>) -> usize {
        let (usable, free) = self.bits.split();
        let mut added = 0;
        for (w, mask) in word_masks(frames) {
            let new = mask & !usable[w];
            usable[w] |= new;
            free[w] |= new;
            added += new.count_ones() as usize;
        }
        self.total += added;
        self.free += added;
        added
    }

    /// Marks `frames`, which must all be free, allocated.
    fn take(&mut self, frames: Range<u64>) {
        let count = (frames.end - frames.start) as usize;
        let (_, free) = self.bits.split();
        for (w, mask) in word_masks(frames) {
            debug_assert_eq!(free[w] & mask, mask);
            free[w] &= !mask;
        }
        self.free -= count;
    }

    /// The first free frame at or after `from`.
    fn next_free(&self, from: u64) -> Option<u64> {
        let free = self.bits.free();
        let mut w = (from / 64) as usize;
        let mut word = free.get(w)? & (u64::MAX << (from % 64));
        while word == 0 {
            w += 1;
            word = *free.get(w)?;
        }
        Some(w as u64 * 64 + u64::from(word.trailing_zeros()))
    }

    /// The first frame of `frames` that is not free.
    fn first_taken(&self, frames: Range<u64>) -> Option<u64> {
        let free = self.bits.free();
        word_masks(frames).find_map(|(w, mask)| {
            let taken = mask & !free[w];
            (taken != 0).then(|| w as u64 * 64 + u64::from(taken.trailing_zeros()))
        })
    }
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `alloc` hands out each usable frame at most once until it is freed,
// and usable frames are RAM nobody else uses (contracts of `init`/`add_range`).
unsafe impl FrameAlloc for FrameAllocator {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        self.alloc()
    }
}

fn frame_addr(frame: u64) -> PhysAddr {
    PhysAddr::new(frame * PAGE_SIZE)
}

/// Frame numbers of the whole frames inside the byte range `[start, end)`,
/// below `limit` and above frame 0; `None` if there are none.
fn whole_frames(start: u64, end: u64, limit: u64) -> Option<Range<u64>> {
    let first = start.div_ceil(PAGE_SIZE).max(1);
    let end = (end / PAGE_SIZE).min(limit);
    (first < end).then_some(first..end)
}

/// For each bitmap word a frame range touches: (word index, mask of the
/// range's bits in it).
fn word_masks(frames: Range<u64>) -> impl Iterator<Item = (usize, u64)> {
    let (start, end) = (frames.start, frames.end);
    let words = if start < end { start / 64..(end - 1) / 64 + 1 } else { 0..0 };
    words.map(move |w| {
        let lo = start.max(w * 64) - w * 64;
        let hi = end.min(w * 64 + 64) - w * 64;
        // 1 <= hi - lo <= 64
        ((w as usize), (u64::MAX >> (64 - (hi - lo))) << lo)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::FakePhys;
    use std::collections::BTreeSet;

    const MIB: u64 = 1 << 20;

    /// The fake machine: 4 MiB of "RAM" at physical 0.
    fn phys() -> FakePhys {
        FakePhys::new(1024)
    }

    fn new(phys: &mut FakePhys, ranges: &[(u64, u64)], span_end: u64) -> Result<FrameAllocator, FrameError> {
        let mut a = FrameAllocator::new();
        // SAFETY: the ranges used by the tests lie in the fake memory, which
        // outlives the allocator, and the offset maps it.
        unsafe { a.init(ranges.iter().copied(), span_end, phys.offset()) }?;
        Ok(a)
    }

    fn drain(a: &mut FrameAllocator) -> Vec<u64> {
        std::iter::from_fn(|| a.alloc()).map(PhysAddr::as_u64).collect()
    }

    #[test]
    fn messy_ranges_count_whole_frames_once() {
        let mut p = phys();
        let ranges = [
            (0, 0x3800),            // frame 0 never, frames 1, 2; the half frame not
            (0x2000, 0x5000),       // overlaps: adds frames 3, 4
            (0x10_0123, 0x10_0123), // empty
            (0x20_0000, 0x1f_0000), // inverted
            (0x30_0800, 0x30_1800), // no whole frame
            (0x10_0000, 0x14_0000), // 64 frames: the bitmaps go to frame 1 anyway
            (0x10_0000, 0x10_1000), // duplicate
        ];
        let mut a = new(&mut p, &ranges, 4 * MIB).unwrap();
        assert_eq!(a.total_frames(), 4 + 64);
        // 1024 frames need 2 * 16 words: one bitmap frame, frame 1.
        assert_eq!(a.free_frames(), 4 + 64 - 1);
        // SAFETY: never acted on: the allocator refuses a second init.
        assert_eq!(unsafe { a.init([(0, 4 * MIB)], 0, 0) }, Err(FrameError::AlreadyInitialised));
        let got = drain(&mut a);
        let expected: Vec<u64> = (2..5).chain(0x100..0x140).map(|f| f * PAGE_SIZE).collect();
        assert_eq!(got, expected);
        assert_eq!(a.alloc(), None);
        assert_eq!(a.free_frames(), 0);
        for &addr in &got {
            a.free(PhysAddr::new(addr)).unwrap();
        }
        assert_eq!(a.free_frames(), 67);
    }

    #[test]
    fn bitmaps_span_all_frames_and_live_in_usable_memory() {
        let mut p = phys();
        // 16 GiB span: 4 Mi frames, 2 * 64 Ki words = 1 MiB of bitmaps, 256
        // frames, placed in the first range big enough.
        let ranges = [(0x1000, 0x10_0000), (MIB, 3 * MIB)];
        let mut a = new(&mut p, &ranges, 16 << 30).unwrap();
        assert_eq!(a.total_frames(), 255 + 512);
        assert_eq!(a.free_frames(), 255 + 256);
        let got: BTreeSet<u64> = drain(&mut a).into_iter().collect();
        assert!(got.iter().all(|&f| (0x1000..0x10_0000).contains(&f) || (2 * MIB..3 * MIB).contains(&f)));
        // Too little memory for the bitmaps of that span.
        assert_eq!(new(&mut p, &[(0x1000, 0x10_0000)], 16 << 30).err(), Some(FrameError::NoRoomForBitmap));
        assert_eq!(new(&mut p, &[], 0).err(), Some(FrameError::NoRoomForBitmap));
    }

    #[test]
    fn free_rejects_bad_addresses() {
        let mut p = phys();
        let mut a = new(&mut p, &[(0x1000, 0x8000), (0x20_0000, 0x21_0000)], 4 * MIB).unwrap();
        let frame = a.alloc().unwrap();
        let before = a.free_frames();
        use FrameError::*;
        assert_eq!(a.free(PhysAddr::new(frame.as_u64() + 8)), Err(Misaligned));
        assert_eq!(a.free(PhysAddr::new(0)), Err(NotManaged));
        assert_eq!(a.free(PhysAddr::new(0x10_0000)), Err(NotManaged)); // hole inside the span
        assert_eq!(a.free(PhysAddr::new(64 * MIB)), Err(NotManaged)); // beyond the span
        assert_eq!(a.free(PhysAddr::new(0x20_0000)), Err(DoubleFree)); // never allocated
        assert_eq!(a.free_contiguous(frame, 2), Err(DoubleFree)); // second frame is free
        assert_eq!(a.free_contiguous(PhysAddr::new(0x7000), 2), Err(NotManaged)); // runs into the hole
        assert_eq!(a.free_contiguous(frame, u64::MAX), Err(NotManaged));
        assert_eq!(a.free_frames(), before);
        a.free(frame).unwrap();
        assert_eq!(a.free(frame), Err(DoubleFree));
        assert_eq!(a.free_frames(), before + 1);
    }

    #[test]
    fn add_range_reclaims_after_init() {
        let mut p = phys();
        let mut a = new(&mut p, &[(0x1000, 0x4000)], 4 * MIB).unwrap();
        assert_eq!(drain(&mut a), vec![0x2000, 0x3000]); // frame 1 holds the bitmaps
        // SAFETY: fake memory; the allocator never writes to managed frames.
        let add = |a: &mut FrameAllocator, start, end| unsafe { a.add_range(start, end) };
        assert_eq!(add(&mut a, 0x8000, 0xa000), Ok(2));
        // Overlapping what is already managed (and allocated) adds only the new part.
        assert_eq!(add(&mut a, 0x0, 0x5800), Ok(1));
        assert_eq!(add(&mut a, 0x8000, 0xa000), Ok(0));
        assert_eq!(add(&mut a, 0x9000, 0x9000), Ok(0));
        assert_eq!(add(&mut a, 4 * MIB - 0x1000, 4 * MIB + 0x1000), Err(FrameError::OutOfSpan));
        assert_eq!(a.total_frames(), 6);
        assert_eq!(drain(&mut a), vec![0x4000, 0x8000, 0x9000]);
        assert_eq!(add(&mut a, 4 * MIB - 0x1000, 4 * MIB), Ok(1));
        assert_eq!(a.alloc(), Some(PhysAddr::new(4 * MIB - 0x1000)));
    }

    #[test]
    fn contiguous_runs_are_aligned_and_free() {
        let mut p = phys();
        let mut a = new(&mut p, &[(0x1000, 4 * MIB)], 4 * MIB).unwrap();
        let total_free = a.free_frames();
        // Fragment the bottom: take frames 2..10 then free the even ones.
        let singles: Vec<PhysAddr> = (0..8).map(|_| a.alloc().unwrap()).collect();
        for f in singles.iter().step_by(2) {
            a.free(*f).unwrap();
        }
        let run = a.alloc_contiguous(4, 1).unwrap();
        assert_eq!(run.as_u64(), 10 * PAGE_SIZE);
        let aligned = a.alloc_contiguous(3, 512).unwrap();
        assert_eq!(aligned.as_u64(), 2 * MIB);
        let one = a.alloc_contiguous(1, 1).unwrap();
        assert_eq!(one.as_u64(), 2 * PAGE_SIZE);
        assert_eq!(a.alloc_contiguous(0, 1), None);
        assert_eq!(a.alloc_contiguous(1, 3), None);
        assert_eq!(a.alloc_contiguous(1024, 1), None); // more than there is
        assert_eq!(a.alloc_contiguous(512, 512), None); // [2 MiB, 4 MiB) is taken at its start
        a.free_contiguous(aligned, 3).unwrap();
        assert_eq!(a.alloc_contiguous(512, 512), Some(PhysAddr::new(2 * MIB)));
        a.free_contiguous(PhysAddr::new(2 * MIB), 512).unwrap();
        a.free_contiguous(run, 4).unwrap();
        a.free(one).unwrap();
        for f in singles.iter().skip(1).step_by(2) {
            a.free(*f).unwrap();
        }
        assert_eq!(a.free_frames(), total_free);
    }

    #[test]
    fn rebased_bitmaps_keep_working() {
        let mut p = phys();
        let mut a = new(&mut p, &[(0x1000, MIB)], 4 * MIB).unwrap();
        let first = a.alloc().unwrap();
        // "Switch to another direct map": the same bytes at another address.
        let mut copy = phys();
        let len = 4 * MIB as usize;
        // SAFETY: both buffers are 4 MiB long and distinct.
        unsafe { std::ptr::copy_nonoverlapping(p.offset() as *const u8, copy.offset() as *mut u8, len) };
        // SAFETY: `copy` holds the bitmaps now and outlives the allocator.
        unsafe { a.set_phys_offset(copy.offset()) };
        drop(p);
        assert_eq!(a.free(first), Ok(()));
        assert_eq!(a.free(first), Err(FrameError::DoubleFree));
        assert_eq!(drain(&mut a).len(), 255 - 1);
    }

    /// Random alloc/free/contiguous against a model of allocated frames.
    #[test]
    fn random_stress_matches_model() {
        let mut p = phys();
        let ranges = [(0x3000, 0x9_0000), (0x10_0800, 0x30_0000), (0x28_0000, 0x3f_f000)];
        let mut a = new(&mut p, &ranges, 4 * MIB).unwrap();
        let usable: BTreeSet<u64> = ranges.iter().flat_map(|&(s, e)| whole_frames(s, e, 1024).unwrap()).collect();
        let mut taken: BTreeSet<u64> = BTreeSet::new();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let start_free = a.free_frames();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng % 8 {
                0..=3 => {
                    if let Some(f) = a.alloc() {
                        let frame = f.as_u64() / PAGE_SIZE;
                        assert!(usable.contains(&frame) && taken.insert(frame), "frame {frame}");
                        runs.push((frame, 1));
                    } else {
                        assert_eq!(taken.len() + 1, usable.len()); // + the bitmap frame
                    }
                }
                4 => {
                    let (count, align) = ((rng >> 8) % 20 + 1, 1 << ((rng >> 16) % 6));
                    if let Some(f) = a.alloc_contiguous(count, align) {
                        let frame = f.as_u64() / PAGE_SIZE;
                        assert_eq!(frame % align, 0);
                        for i in frame..frame + count {
                            assert!(usable.contains(&i) && taken.insert(i), "frame {i}");
                        }
                        runs.push((frame, count));
                    }
                }
                _ if !runs.is_empty() => {
                    let (frame, count) = runs.swap_remove((rng >> 8) as usize % runs.len());
                    a.free_contiguous(frame_addr(frame), count).unwrap();
                    for i in frame..frame + count {
                        taken.remove(&i);
                    }
                }
                _ => {}
            }
            assert_eq!(a.free_frames(), start_free - taken.len());
        }
    }
}
