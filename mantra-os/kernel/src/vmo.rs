//! Memory-object page bookkeeping and per-address-space mapping records.
//!
//! - [`PageList`]: which pages of a memory object (VMO) have a physical
//!   frame. Memory objects commit lazily: a page gets a frame the first time
//!   it is touched (a page fault in a mapping, or `vmo_read`/`vmo_write`),
//!   through [`PageList::commit`]. Uncommitted pages read as zeros.
//! - [`Mappings`]: the sorted, non-overlapping list of mappings of one
//!   address space (which object, at which offset, with which protection),
//!   with the checks `vmar_map`, `vmar_unmap` and `vmar_protect` need and a
//!   free-range finder for non-`FIXED` maps.
//!
//! Pure bookkeeping: allocating, zeroing and freeing frames, editing page
//! tables and TLB shootdowns are the caller's.
#![warn(missing_docs)]

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Range;

use mantra_abi::{map, Error, USER_BASE, USER_END};

/// Page size of memory objects and mappings.
pub const PAGE_SIZE: u64 = crate::mm::PAGE_SIZE;

/// Largest memory object, in bytes (4 GiB). Larger `vmo_create` sizes are
/// `InvalidArgs`.
pub const MAX_VMO_SIZE: u64 = 1 << 32;

/// Default limit on the mappings of one address space.
pub const MAX_MAPPINGS: usize = 4096;

/// The protection bits a mapping record keeps.
pub const PROT_MASK: u32 = map::READ | map::WRITE | map::EXECUTE;

/// `len` rounded up to a whole number of pages; `None` on overflow.
pub const fn page_round_up(len: u64) -> Option<u64> {
    match len.checked_add(PAGE_SIZE - 1) {
        Some(v) => Some(v & !(PAGE_SIZE - 1)),
        None => None,
    }
}

/// The frames of one memory object, committed on first touch.
///
/// Frames are stored sparsely (a `BTreeMap` from page index to physical
/// address), so metadata grows with committed pages, not with the size.
#[derive(Debug)]
pub struct PageList {
    size_pages: u64,
    frames: BTreeMap<u64, u64>,
}

impl PageList {
    /// An object of `size` bytes rounded up to pages, with nothing
    /// committed.
    ///
    /// Errors: [`Error::InvalidArgs`] when `size` is 0 or above
    /// [`MAX_VMO_SIZE`] once rounded.
    pub fn new(size: u64) -> Result<Self, Error> {
        match page_round_up(size) {
            Some(bytes) if size != 0 && bytes <= MAX_VMO_SIZE => {
                Ok(Self { size_pages: bytes / PAGE_SIZE, frames: BTreeMap::new() })
            }
            _ => Err(Error::InvalidArgs),
        }
    }

    /// Size in pages.
    pub fn size_pages(&self) -> u64 {
        self.size_pages
    }

    /// Size in bytes (a multiple of [`PAGE_SIZE`]).
    pub fn size_bytes(&self) -> u64 {
        self.size_pages * PAGE_SIZE
    }

    /// Pages that have a frame.
    pub fn committed(&self) -> usize {
        self.frames.len()
    }

    /// Checks that the byte range `[offset, offset + len)` lies inside the
    /// object and returns the page indices it touches (empty for `len` 0).
    ///
    /// Errors: [`Error::OutOfRange`] when the range overflows or ends past
    /// the object (`offset == size` with `len == 0` is fine).
    pub fn check_range(&self, offset: u64, len: u64) -> Result<Range<u64>, Error> {
        let end = offset.checked_add(len).ok_or(Error::OutOfRange)?;
        if end > self.size_bytes() {
            return Err(Error::OutOfRange);
        }
        if len == 0 {
            return Ok(offset / PAGE_SIZE..offset / PAGE_SIZE);
        }
        Ok(offset / PAGE_SIZE..end.div_ceil(PAGE_SIZE))
    }

    /// The frame of page `page`, if committed.
    ///
    /// Errors: [`Error::OutOfRange`] when `page` is past the end.
    pub fn lookup(&self, page: u64) -> Result<Option<u64>, Error> {
        if page >= self.size_pages {
            return Err(Error::OutOfRange);
        }
        Ok(self.frames.get(&page).copied())
    }

    /// The frame of page `page`, calling `alloc` for one if the page is not
    /// committed yet (only then). `alloc` returns the physical address of a
    /// page-aligned frame **that it has already zero-filled** (the object's
    /// contents start as zeros; this module cannot write memory), or `None`
    /// when memory is exhausted.
    ///
    /// Errors: [`Error::OutOfRange`] (checked before calling `alloc`);
    /// [`Error::NoMemory`] when `alloc` returns `None` (nothing committed).
    pub fn commit(&mut self, page: u64, alloc: impl FnOnce() -> Option<u64>) -> Result<u64, Error> {
        if page >= self.size_pages {
            return Err(Error::OutOfRange);
        }
        if let Some(&frame) = self.frames.get(&page) {
            return Ok(frame);
        }
        let frame = alloc().ok_or(Error::NoMemory)?;
        debug_assert!(frame.is_multiple_of(PAGE_SIZE), "unaligned frame");
        self.frames.insert(page, frame);
        Ok(frame)
    }

    /// Commits every page the byte range `[offset, offset + len)` touches
    /// (e.g. before `vmo_write` copies into it), calling `alloc` for each
    /// missing one under [`Self::commit`]'s contract. On `NoMemory` the
    /// pages committed so far stay committed (harmless: they are zeros).
    ///
    /// Errors: [`Error::OutOfRange`] (as [`Self::check_range`], before any
    /// allocation); [`Error::NoMemory`].
    pub fn commit_range(&mut self, offset: u64, len: u64, mut alloc: impl FnMut() -> Option<u64>) -> Result<(), Error> {
        for page in self.check_range(offset, len)? {
            self.commit(page, &mut alloc)?;
        }
        Ok(())
    }

    /// Committed pages as `(page index, frame)`, in page order.
    pub fn iter_committed(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.frames.iter().map(|(&p, &f)| (p, f))
    }

    /// Removes every frame and returns them for freeing (the object is
    /// dying; its pages must be unmapped everywhere first). The list stays
    /// usable, with nothing committed.
    pub fn drain_frames(&mut self) -> Vec<u64> {
        core::mem::take(&mut self.frames).into_values().collect()
    }
}

/// One mapping of (part of) an object into an address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping<V> {
    /// First address (page-aligned, in user space).
    pub start: u64,
    /// Length in bytes (a multiple of [`PAGE_SIZE`], at least one page).
    pub len: u64,
    /// The mapped object (e.g. an `Arc` to the memory object, or its id).
    pub object: V,
    /// Offset in the object of `start` (page-aligned).
    pub offset: u64,
    /// Current protection: `map::READ`, `map::WRITE`, `map::EXECUTE` bits.
    pub flags: u32,
    /// Protection the mapping may ever have (from the object handle's
    /// rights at map time); bounds `protect`.
    pub max_flags: u32,
}

impl<V> Mapping<V> {
    /// A mapping record; [`Mappings::insert`] validates it.
    pub fn new(start: u64, len: u64, object: V, offset: u64, flags: u32, max_flags: u32) -> Self {
        Self { start, len, object, offset, flags, max_flags }
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Whether `addr` lies inside the mapping.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.len
    }

    /// The object offset that `addr` (inside the mapping) maps.
    pub fn object_offset(&self, addr: u64) -> u64 {
        debug_assert!(self.contains(addr));
        self.offset + (addr - self.start)
    }

    /// The object page that `addr` (inside the mapping) maps.
    pub fn object_page(&self, addr: u64) -> u64 {
        self.object_offset(addr) / PAGE_SIZE
    }

    /// Whether the current protection allows every `map::*` bit in `access`
    /// (for the page-fault handler: `map::WRITE` for a write fault...).
    pub fn allows(&self, access: u32) -> bool {
        self.flags & access == access
    }
}

/// Checks protection bits for a mapping: only READ/WRITE/EXECUTE, READ
/// always (x86 has no present-but-unreadable pages), never WRITE with
/// EXECUTE; then that they stay within `max_flags`.
///
/// Errors: [`Error::InvalidArgs`], then [`Error::AccessDenied`].
pub fn check_protection(flags: u32, max_flags: u32) -> Result<(), Error> {
    if flags & !PROT_MASK != 0 || flags & map::READ == 0 || flags & (map::WRITE | map::EXECUTE) == (map::WRITE | map::EXECUTE)
    {
        return Err(Error::InvalidArgs);
    }
    if flags & !max_flags != 0 {
        return Err(Error::AccessDenied);
    }
    Ok(())
}

/// Checks that `[start, start + len)` (with `len` rounded up to pages) is a
/// non-empty, page-aligned range of user space and returns its end.
///
/// Errors: [`Error::InvalidArgs`] (misaligned `start`, `len` 0, overflow,
/// below `USER_BASE` or past `USER_END`).
pub fn check_user_range(start: u64, len: u64) -> Result<u64, Error> {
    let len = page_round_up(len).ok_or(Error::InvalidArgs)?;
    if len == 0 || !start.is_multiple_of(PAGE_SIZE) || start < USER_BASE {
        return Err(Error::InvalidArgs);
    }
    match start.checked_add(len) {
        Some(end) if end <= USER_END => Ok(end),
        _ => Err(Error::InvalidArgs),
    }
}

/// The mappings of one address space, sorted and non-overlapping.
#[derive(Debug)]
pub struct Mappings<V> {
    /// Keyed by start address.
    by_start: BTreeMap<u64, Mapping<V>>,
    limit: usize,
}

impl<V> Default for Mappings<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Mappings<V> {
    /// No mappings; at most [`MAX_MAPPINGS`].
    pub const fn new() -> Self {
        Self::with_limit(MAX_MAPPINGS)
    }

    /// No mappings; at most `limit`.
    pub const fn with_limit(limit: usize) -> Self {
        Self { by_start: BTreeMap::new(), limit }
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// The mappings in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping<V>> + '_ {
        self.by_start.values()
    }

    /// The mapping containing `addr` (page-fault lookup). O(log n).
    pub fn find(&self, addr: u64) -> Option<&Mapping<V>> {
        self.by_start.range(..=addr).next_back().map(|(_, m)| m).filter(|m| m.contains(addr))
    }

    /// Whether any mapping intersects `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < end && self.by_start.range(..end).next_back().is_some_and(|(_, m)| m.end() > start)
    }

    /// Validates `m` for a `FIXED` map: `len` is rounded up to pages, then
    /// in this order: [`check_protection`] (`InvalidArgs`, `AccessDenied`),
    /// [`check_user_range`] and a page-aligned `offset` (`InvalidArgs`), no
    /// overlap with an existing mapping (`InvalidArgs`), the mapping limit
    /// ([`Error::NoMemory`]). Returns `m.start`.
    ///
    /// That `[offset, offset + len)` lies inside the object is the caller's
    /// check ([`PageList::check_range`], `OutOfRange`), with the rounded
    /// length.
    pub fn insert(&mut self, mut m: Mapping<V>) -> Result<u64, Error> {
        m.max_flags &= PROT_MASK;
        check_protection(m.flags, m.max_flags)?;
        let end = check_user_range(m.start, m.len)?;
        if !m.offset.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidArgs);
        }
        if self.overlaps(m.start, end) {
            return Err(Error::InvalidArgs);
        }
        if self.by_start.len() >= self.limit {
            return Err(Error::NoMemory);
        }
        m.len = end - m.start;
        let start = m.start;
        self.by_start.insert(start, m);
        Ok(start)
    }

    /// As [`Self::insert`] but the kernel picks the address (`m.start` is
    /// ignored): the highest free range that leaves an unmapped guard page
    /// on both sides ([`Self::find_free`]). Returns the address.
    ///
    /// Errors: as `insert` (protection, rounding, offset, limit), plus
    /// [`Error::InvalidArgs`] for `len` 0 and [`Error::NoMemory`] when no
    /// free range is large enough.
    pub fn insert_anywhere(&mut self, mut m: Mapping<V>) -> Result<u64, Error> {
        m.max_flags &= PROT_MASK;
        check_protection(m.flags, m.max_flags)?;
        let len = page_round_up(m.len).filter(|&l| l != 0).ok_or(Error::InvalidArgs)?;
        if !m.offset.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidArgs);
        }
        if self.by_start.len() >= self.limit {
            return Err(Error::NoMemory);
        }
        m.start = self.find_free(len).ok_or(Error::NoMemory)?;
        m.len = len;
        let start = m.start;
        self.by_start.insert(start, m);
        Ok(start)
    }

    /// `vmar_map`: [`Self::insert`] when `flags` has `map::FIXED` (at
    /// `m.start`), else [`Self::insert_anywhere`]. `m.flags` must not carry
    /// `FIXED` (pass it here).
    pub fn map(&mut self, m: Mapping<V>, fixed: bool) -> Result<u64, Error> {
        if fixed {
            self.insert(m)
        } else {
            self.insert_anywhere(m)
        }
    }

    /// The start of the highest free range of `len` bytes (rounded up to
    /// pages) in user space that has an unmapped page between it and every
    /// existing mapping. Top-down placement keeps the low addresses free
    /// for `FIXED` loads (program images). O(n).
    pub fn find_free(&self, len: u64) -> Option<u64> {
        let len = page_round_up(len).filter(|&l| l != 0)?;
        // `hi`: end of the current gap (exclusive), guard page excluded.
        let mut hi = USER_END;
        for m in self.by_start.values().rev() {
            let lo = m.end().saturating_add(PAGE_SIZE);
            if hi >= lo && hi - lo >= len {
                return Some(hi - len);
            }
            hi = m.start.saturating_sub(PAGE_SIZE);
        }
        (hi >= USER_BASE && hi - USER_BASE >= len).then(|| hi - len)
    }

    /// `vmar_unmap`: removes every mapping inside `[start, start + len)`
    /// (len rounded up to pages) and returns them, in address order, for the
    /// caller to unmap their pages and shoot down TLBs. A range with no
    /// mapping removes nothing.
    ///
    /// Errors: [`Error::InvalidArgs`] (as [`check_user_range`]);
    /// [`Error::NotSupported`] when a mapping straddles the range's edge
    /// (only whole mappings are removed; nothing is removed then).
    pub fn remove_range(&mut self, start: u64, len: u64) -> Result<Vec<Mapping<V>>, Error> {
        let end = check_user_range(start, len)?;
        let starts = self.whole_mappings_in(start, end)?;
        Ok(starts.into_iter().filter_map(|s| self.by_start.remove(&s)).collect())
    }

    /// `vmar_protect`: sets the protection of every mapping inside `[start,
    /// start + len)` to `flags`, all or none, and returns their `(start,
    /// len)` for the caller to update page tables. Holes in the range are
    /// ignored.
    ///
    /// Errors, in this order: [`Error::InvalidArgs`] (flags as
    /// [`check_protection`]; range as [`check_user_range`]);
    /// [`Error::NotSupported`] (a mapping straddles an edge);
    /// [`Error::AccessDenied`] (`flags` exceed a mapping's `max_flags`).
    pub fn protect(&mut self, start: u64, len: u64, flags: u32) -> Result<Vec<(u64, u64)>, Error> {
        check_protection(flags, PROT_MASK)?;
        let end = check_user_range(start, len)?;
        let starts = self.whole_mappings_in(start, end)?;
        if starts.iter().any(|s| flags & !self.by_start[s].max_flags != 0) {
            return Err(Error::AccessDenied);
        }
        Ok(starts
            .into_iter()
            .map(|s| {
                let m = self.by_start.get_mut(&s).expect("listed");
                m.flags = flags;
                (m.start, m.len)
            })
            .collect())
    }

    /// Removes and returns every mapping (address space teardown).
    pub fn drain(&mut self) -> Vec<Mapping<V>> {
        core::mem::take(&mut self.by_start).into_values().collect()
    }

    /// Starts of the mappings intersecting `[start, end)`, all of which must
    /// lie inside it (`NotSupported` otherwise).
    fn whole_mappings_in(&self, start: u64, end: u64) -> Result<Vec<u64>, Error> {
        let mut starts = Vec::new();
        // A mapping starting below `start` may reach into the range.
        if let Some((_, m)) = self.by_start.range(..start).next_back() {
            if m.end() > start {
                return Err(Error::NotSupported);
            }
        }
        for (&s, m) in self.by_start.range(start..end) {
            if m.end() > end {
                return Err(Error::NotSupported);
            }
            starts.push(s);
        }
        Ok(starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::test_rng::Rng;
    use map::{EXECUTE as X, READ as R, WRITE as W};

    const P: u64 = PAGE_SIZE;
    const RWX: u32 = R | W | X;

    #[test]
    fn page_list_sizes() {
        assert_eq!(PageList::new(0).unwrap_err(), Error::InvalidArgs);
        assert_eq!(PageList::new(1).unwrap().size_pages(), 1);
        assert_eq!(PageList::new(P).unwrap().size_pages(), 1);
        assert_eq!(PageList::new(P + 1).unwrap().size_bytes(), 2 * P);
        assert_eq!(PageList::new(MAX_VMO_SIZE).unwrap().size_pages(), MAX_VMO_SIZE / P);
        assert_eq!(PageList::new(MAX_VMO_SIZE + 1).unwrap_err(), Error::InvalidArgs);
        assert_eq!(PageList::new(u64::MAX).unwrap_err(), Error::InvalidArgs);
        assert_eq!(PageList::new(u64::MAX - P + 2).unwrap_err(), Error::InvalidArgs);
    }

    #[test]
    fn commit_allocates_on_first_touch_only() {
        let mut pl = PageList::new(4 * P).unwrap();
        let mut next = 0x10_0000u64;
        let mut calls = 0;
        let mut alloc = || {
            calls += 1;
            next += P;
            Some(next)
        };
        let f = pl.commit(2, &mut alloc).unwrap();
        assert_eq!(pl.commit(2, &mut alloc).unwrap(), f);
        assert_eq!(pl.lookup(2), Ok(Some(f)));
        assert_eq!(pl.lookup(1), Ok(None));
        assert_eq!(pl.lookup(4).unwrap_err(), Error::OutOfRange);
        assert_eq!(pl.commit(4, &mut alloc).unwrap_err(), Error::OutOfRange);
        assert_eq!(pl.commit(u64::MAX, &mut alloc).unwrap_err(), Error::OutOfRange);
        assert_eq!(calls, 1);
        assert_eq!(pl.commit(0, || None).unwrap_err(), Error::NoMemory);
        assert_eq!(pl.lookup(0), Ok(None));
        assert_eq!(pl.committed(), 1);
        // A failing allocator is not called for committed pages.
        assert_eq!(pl.commit(2, || None), Ok(f));
    }

    #[test]
    fn check_and_commit_ranges() {
        let mut pl = PageList::new(3 * P).unwrap();
        assert_eq!(pl.check_range(0, 3 * P), Ok(0..3));
        assert_eq!(pl.check_range(P - 1, 2), Ok(0..2));
        assert_eq!(pl.check_range(3 * P, 0), Ok(3..3));
        assert_eq!(pl.check_range(5, 0), Ok(0..0));
        assert_eq!(pl.check_range(3 * P, 1), Err(Error::OutOfRange));
        assert_eq!(pl.check_range(3 * P + 1, 0), Err(Error::OutOfRange));
        assert_eq!(pl.check_range(1, 3 * P), Err(Error::OutOfRange));
        assert_eq!(pl.check_range(u64::MAX, 2), Err(Error::OutOfRange));
        assert_eq!(pl.check_range(2, u64::MAX), Err(Error::OutOfRange));

        let mut frames = vec![0x7000, 0x6000, 0x5000];
        assert_eq!(pl.commit_range(2 * P, 2 * P, || frames.pop()), Err(Error::OutOfRange));
        assert_eq!(pl.committed(), 0, "range checked before allocating");
        pl.commit_range(P + 10, P, || frames.pop()).unwrap();
        assert_eq!(pl.iter_committed().collect::<Vec<_>>(), [(1, 0x5000), (2, 0x6000)]);
        let mut one = vec![0x9000];
        assert_eq!(pl.commit_range(0, 3 * P, || one.pop()), Ok(()));
        assert_eq!(pl.committed(), 3);
        let mut none = Vec::<u64>::new();
        let mut pl2 = PageList::new(2 * P).unwrap();
        assert_eq!(pl2.commit_range(0, 2 * P, || none.pop()), Err(Error::NoMemory));
        let mut drained = pl.drain_frames();
        drained.sort();
        assert_eq!(drained, [0x5000, 0x6000, 0x9000]);
        assert_eq!(pl.committed(), 0);
        assert_eq!(pl.lookup(1), Ok(None));
    }

    #[test]
    fn huge_sparse_object_costs_nothing_until_touched() {
        let mut pl = PageList::new(MAX_VMO_SIZE).unwrap();
        let last = pl.size_pages() - 1;
        pl.commit(last, || Some(0x1000)).unwrap();
        assert_eq!(pl.committed(), 1);
        assert_eq!(pl.lookup(last), Ok(Some(0x1000)));
    }

    fn m(start: u64, pages: u64, flags: u32) -> Mapping<u32> {
        Mapping::new(start, pages * P, 1, 0, flags, RWX)
    }

    #[test]
    fn protection_rules() {
        assert_eq!(check_protection(R, RWX), Ok(()));
        assert_eq!(check_protection(R | W, RWX), Ok(()));
        assert_eq!(check_protection(R | X, RWX), Ok(()));
        assert_eq!(check_protection(R | W | X, RWX), Err(Error::InvalidArgs));
        assert_eq!(check_protection(W | X, RWX), Err(Error::InvalidArgs));
        assert_eq!(check_protection(0, RWX), Err(Error::InvalidArgs));
        assert_eq!(check_protection(W, RWX), Err(Error::InvalidArgs));
        assert_eq!(check_protection(R | map::FIXED, RWX), Err(Error::InvalidArgs));
        assert_eq!(check_protection(R | 1 << 31, RWX), Err(Error::InvalidArgs));
        assert_eq!(check_protection(R | W, R), Err(Error::AccessDenied));
        // InvalidArgs beats AccessDenied.
        assert_eq!(check_protection(R | W | X, R), Err(Error::InvalidArgs));
    }

    #[test]
    fn user_range_rules() {
        assert_eq!(check_user_range(USER_BASE, 1), Ok(USER_BASE + P));
        assert_eq!(check_user_range(USER_END - P, P), Ok(USER_END));
        assert_eq!(check_user_range(USER_END - P, P + 1), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(USER_END, P), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(0, P), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(USER_BASE + 1, P), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(USER_BASE, 0), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(USER_BASE, u64::MAX), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(0xFFFF_FFFF_FFFF_F000, P), Err(Error::InvalidArgs));
        assert_eq!(check_user_range(0xFFFF_8000_0000_0000, P), Err(Error::InvalidArgs));
    }

    #[test]
    fn insert_rejects_bad_mappings_in_order() {
        let mut ms = Mappings::new();
        let base = 0x40_0000;
        assert_eq!(ms.insert(m(base, 2, R | W)), Ok(base));
        // W+X with a misaligned start: protection is checked first.
        assert_eq!(ms.insert(m(base + 1, 1, R | W | X)), Err(Error::InvalidArgs));
        let mut denied = m(base + 10 * P, 1, R | X);
        denied.max_flags = R | W;
        assert_eq!(ms.insert(denied), Err(Error::AccessDenied));
        assert_eq!(ms.insert(m(base + 1, 1, R)), Err(Error::InvalidArgs));
        assert_eq!(ms.insert(m(base + 10 * P, 0, R)), Err(Error::InvalidArgs));
        let mut odd = m(base + 10 * P, 1, R);
        odd.offset = 12;
        assert_eq!(ms.insert(odd), Err(Error::InvalidArgs));
        assert_eq!(ms.insert(m(0, 1, R)), Err(Error::InvalidArgs));
        assert_eq!(ms.insert(m(USER_END - P, 2, R)), Err(Error::InvalidArgs));
        assert_eq!(ms.insert(m(0xFFFF_FFFF_FFFF_F000, 1, R)), Err(Error::InvalidArgs));
        // Overlaps: inside, straddling either edge, covering.
        for (s, n) in [(base, 1), (base + P, 1), (base - P, 2), (base + P, 5), (base - 3 * P, 10)] {
            assert_eq!(ms.insert(m(s, n, R)), Err(Error::InvalidArgs), "{s:#x} {n}");
        }
        // Adjacent on both sides: fine.
        assert_eq!(ms.insert(m(base - P, 1, R)), Ok(base - P));
        assert_eq!(ms.insert(m(base + 2 * P, 1, R)), Ok(base + 2 * P));
        assert_eq!(ms.len(), 3);
        // Length rounds up.
        let mut short = m(base + 20 * P, 0, R);
        short.len = 10;
        ms.insert(short).unwrap();
        assert_eq!(ms.find(base + 20 * P).unwrap().len, P);
        // Extra max_flags bits are masked off.
        let mut extra = m(base + 30 * P, 1, R);
        extra.max_flags = u32::MAX;
        ms.insert(extra).unwrap();
        assert_eq!(ms.find(base + 30 * P).unwrap().max_flags, RWX);
    }

    #[test]
    fn mapping_limit() {
        let mut ms = Mappings::with_limit(2);
        ms.insert(m(0x10000, 1, R)).unwrap();
        ms.insert(m(0x20000, 1, R)).unwrap();
        assert_eq!(ms.insert(m(0x30000, 1, R)), Err(Error::NoMemory));
        assert_eq!(ms.insert_anywhere(m(0, 1, R)), Err(Error::NoMemory));
        // Bad arguments still report InvalidArgs first.
        assert_eq!(ms.insert(m(0x30001, 1, R)), Err(Error::InvalidArgs));
    }

    #[test]
    fn find_and_fault_helpers() {
        let mut ms = Mappings::new();
        let mut mp = m(0x10000, 3, R | W);
        mp.offset = 5 * P;
        ms.insert(mp).unwrap();
        assert!(ms.find(0xFFFF).is_none());
        assert!(ms.find(0x10000 + 3 * P).is_none());
        let found = ms.find(0x10000 + P + 17).unwrap();
        assert_eq!(found.object_offset(0x10000 + P + 17), 6 * P + 17);
        assert_eq!(found.object_page(0x10000 + 2 * P), 7);
        assert!(found.allows(R | W) && !found.allows(X));
        assert!(ms.find(0).is_none() && ms.find(u64::MAX).is_none());
    }

    #[test]
    fn remove_whole_mappings_only() {
        let mut ms = Mappings::new();
        let a = 0x100000;
        ms.insert(m(a, 2, R)).unwrap();
        ms.insert(m(a + 4 * P, 1, R)).unwrap();
        ms.insert(m(a + 5 * P, 3, R)).unwrap();
        // Partial: the middle of the first, or cutting the last.
        assert_eq!(ms.remove_range(a + P, P), Err(Error::NotSupported));
        assert_eq!(ms.remove_range(a, 7 * P), Err(Error::NotSupported));
        assert_eq!(ms.remove_range(a - P, 2 * P), Err(Error::NotSupported));
        assert_eq!(ms.len(), 3);
        assert_eq!(ms.remove_range(a + 1, P), Err(Error::InvalidArgs));
        assert_eq!(ms.remove_range(a, 0), Err(Error::InvalidArgs));
        assert_eq!(ms.remove_range(0, P), Err(Error::InvalidArgs));
        // Empty range: nothing.
        assert_eq!(ms.remove_range(a + 20 * P, P), Ok(vec![]));
        // Whole mappings with holes between: removed, in order.
        let gone = ms.remove_range(a + 3 * P, 5 * P).unwrap();
        assert_eq!(gone.iter().map(|m| m.start).collect::<Vec<_>>(), [a + 4 * P, a + 5 * P]);
        assert_eq!(ms.len(), 1);
        // Rounded length.
        assert_eq!(ms.remove_range(a, 2 * P - 100).unwrap().len(), 1);
        assert!(ms.is_empty());
    }

    #[test]
    fn protect_rules() {
        let mut ms = Mappings::new();
        let a = 0x200000;
        ms.insert(m(a, 2, R | W)).unwrap();
        let mut ro = m(a + 2 * P, 1, R);
        ro.max_flags = R;
        ms.insert(ro).unwrap();
        assert_eq!(ms.protect(a, 2 * P, R | W | X), Err(Error::InvalidArgs));
        assert_eq!(ms.protect(a, 2 * P, 0), Err(Error::InvalidArgs));
        assert_eq!(ms.protect(a + 1, P, R), Err(Error::InvalidArgs));
        assert_eq!(ms.protect(a, P, R), Err(Error::NotSupported));
        // AccessDenied for the read-only one: all or nothing.
        assert_eq!(ms.protect(a, 3 * P, R | W), Err(Error::AccessDenied));
        assert_eq!(ms.find(a).unwrap().flags, R | W);
        assert_eq!(ms.protect(a, 3 * P, R), Ok(vec![(a, 2 * P), (a + 2 * P, P)]));
        assert_eq!(ms.find(a).unwrap().flags, R);
        assert_eq!(ms.protect(a, 2 * P, R | X), Ok(vec![(a, 2 * P)]));
        assert!(ms.find(a).unwrap().allows(X));
        assert_eq!(ms.protect(a + 10 * P, P, R), Ok(vec![]));
    }

    #[test]
    fn anywhere_is_top_down_with_guard_pages() {
        let mut ms = Mappings::new();
        let first = ms.insert_anywhere(m(0, 2, R)).unwrap();
        assert_eq!(first, USER_END - 2 * P);
        let second = ms.insert_anywhere(m(0, 1, R)).unwrap();
        assert_eq!(second, first - P - P, "one guard page below the first");
        assert_eq!(ms.map(m(0x1000_0000, 1, R), true), Ok(0x1000_0000));
        assert_eq!(ms.insert_anywhere(m(0, 0, R)), Err(Error::InvalidArgs));
        assert_eq!(ms.insert_anywhere(m(0, 1, R | W | X)), Err(Error::InvalidArgs));
        // Fill almost everything with one FIXED mapping, leaving 3 pages at the top.
        let mut ms = Mappings::new();
        let big = USER_END - 3 * P - USER_BASE;
        ms.insert(Mapping::new(USER_BASE, big, 0, 0, R, R)).unwrap();
        // One guard page above the big mapping leaves two usable pages.
        assert_eq!(ms.find_free(2 * P), Some(USER_END - 2 * P));
        assert_eq!(ms.insert_anywhere(m(0, 3, R)), Err(Error::NoMemory));
        assert_eq!(ms.insert_anywhere(m(0, 1, R)), Ok(USER_END - P));
        assert_eq!(ms.insert_anywhere(m(0, 1, R)), Err(Error::NoMemory));
        assert_eq!(ms.find_free(0), None);
        // The bottom gap is used when it is the only one.
        let mut ms = Mappings::new();
        ms.insert(Mapping::new(USER_BASE + 4 * P, USER_END - USER_BASE - 4 * P, 0, 0, R, R)).unwrap();
        assert_eq!(ms.find_free(3 * P), Some(USER_BASE));
        assert_eq!(ms.find_free(4 * P), None);
        assert_eq!(ms.drain().len(), 1);
        assert!(ms.is_empty());
    }

    #[test]
    fn random_mappings_match_a_page_model() {
        // A window of 64 pages; the model is a per-page owner array.
        const PAGES: u64 = 64;
        let base = 0x1000_0000u64;
        for seed in 0..30 {
            let mut rng = Rng::new(seed + 1000);
            let mut ms = Mappings::new();
            let mut owner: Vec<Option<u64>> = vec![None; PAGES as usize]; // start of the owning mapping
            for _ in 0..600 {
                let s = rng.below(PAGES);
                let n = 1 + rng.below(8);
                let start = base + s * P;
                let end_page = (s + n).min(PAGES);
                let len = (end_page - s) * P;
                match rng.below(4) {
                    0 | 1 => {
                        let free = (s..end_page).all(|p| owner[p as usize].is_none());
                        let r = ms.insert(m(start, end_page - s, R));
                        assert_eq!(r.is_ok(), free, "insert {s} {n}");
                        if free {
                            for p in s..end_page {
                                owner[p as usize] = Some(start);
                            }
                        } else {
                            assert_eq!(r, Err(Error::InvalidArgs));
                        }
                    }
                    2 => {
                        // Whole iff no owner straddles an edge.
                        let cut = |p: u64| -> bool {
                            p > 0 && p < PAGES && owner[p as usize].is_some() && owner[p as usize] == owner[p as usize - 1]
                        };
                        let partial = cut(s) || cut(end_page);
                        let r = ms.remove_range(start, len);
                        if partial {
                            assert_eq!(r.unwrap_err(), Error::NotSupported);
                        } else {
                            let removed = r.unwrap();
                            let mut expect: Vec<u64> = (s..end_page).filter_map(|p| owner[p as usize]).collect();
                            expect.dedup();
                            assert_eq!(removed.iter().map(|m| m.start).collect::<Vec<_>>(), expect);
                            for p in s..end_page {
                                owner[p as usize] = None;
                            }
                        }
                    }
                    _ => {
                        for p in 0..PAGES {
                            let addr = base + p * P + rng.below(P);
                            assert_eq!(ms.find(addr).map(|m| m.start), owner[p as usize]);
                        }
                    }
                }
                // Sorted, non-overlapping, consistent with the model.
                let mut prev_end = 0;
                let mut covered = 0;
                for mp in ms.iter() {
                    assert!(mp.start >= prev_end);
                    prev_end = mp.end();
                    covered += mp.len / P;
                }
                assert_eq!(covered, owner.iter().filter(|o| o.is_some()).count() as u64);
            }
        }
    }

    #[test]
    fn random_anywhere_never_overlaps_and_keeps_guards() {
        let mut rng = Rng::new(5);
        let mut ms = Mappings::new();
        let mut live = Vec::new();
        for _ in 0..2000 {
            if rng.chance(2, 3) || live.is_empty() {
                let n = 1 + rng.below(16);
                let a = ms.insert_anywhere(m(0, n, R)).unwrap();
                live.push(a);
            } else {
                let i = rng.index(live.len());
                let a = live.swap_remove(i);
                let len = ms.find(a).unwrap().len;
                ms.remove_range(a, len).unwrap();
            }
            let all: Vec<_> = ms.iter().cloned().collect();
            for w in all.windows(2) {
                assert!(w[0].end() + P <= w[1].start, "guard page between {:#x} and {:#x}", w[0].start, w[1].start);
            }
            assert!(all.iter().all(|m| m.start >= USER_BASE && m.end() <= USER_END));
        }
    }
}
