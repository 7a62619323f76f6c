//! x86-64 4-level page tables for the hand-over: an identity map of physical
//! memory with 2 MiB pages plus the kernel's segments with 4 KiB pages and
//! their own permissions. The kernel replaces these tables with its own soon
//! after entry; they only have to be correct, not clever.
//!
//! Frames come from a [`FrameSource`], so the same builder runs on the host
//! in tests (frames are heap boxes) and in MantraBoot (frames are
//! identity-mapped physical pages from a pre-allocated pool).

use core::fmt;

pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page size bit: this PDE maps a 2 MiB page (PDPTE: 1 GiB).
pub const PTE_HUGE: u64 = 1 << 7;
pub const PTE_NO_EXECUTE: u64 = 1 << 63;
/// Physical address bits of an entry (bits 12..51).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const ENTRIES: usize = 512;
const SMALL: u64 = crate::PAGE_SIZE;
const LARGE: u64 = crate::LARGE_PAGE_SIZE;

/// Where page-table frames come from.
pub trait FrameSource {
    /// Physical address of a fresh, zeroed 4 KiB frame; `None` when exhausted.
    fn alloc_frame(&mut self) -> Option<u64>;
    /// The entries of the table frame at `phys`, a frame this source returned.
    fn table(&mut self, phys: u64) -> &mut [u64; ENTRIES];
}

/// What a mapping allows besides reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub writable: bool,
    pub executable: bool,
}

impl Access {
    pub const RX: Self = Self { writable: false, executable: true };
    pub const R: Self = Self { writable: false, executable: false };
    pub const RW: Self = Self { writable: true, executable: false };
    pub const RWX: Self = Self { writable: true, executable: true };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The frame pool is exhausted.
    OutOfFrames,
    /// `virt` is mapped already (or lies under a large page).
    AlreadyMapped { virt: u64 },
    /// `virt` is not a canonical 48-bit address.
    NotCanonical { virt: u64 },
    /// `virt` or `phys` is not aligned to the page size asked for.
    Misaligned { virt: u64, phys: u64 },
    /// `phys` does not fit in the entry's 52-bit address field.
    PhysTooHigh { phys: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::OutOfFrames => write!(f, "out of page-table frames"),
            Error::AlreadyMapped { virt } => write!(f, "address {virt:#x} is mapped twice"),
            Error::NotCanonical { virt } => write!(f, "address {virt:#x} is not canonical"),
            Error::Misaligned { virt, phys } => write!(f, "mapping {virt:#x} -> {phys:#x} is not page aligned"),
            Error::PhysTooHigh { phys } => write!(f, "physical address {phys:#x} is beyond 52 bits"),
        }
    }
}

/// Whether `virt` is canonical for 4-level paging (bits 63..47 equal).
pub const fn is_canonical(virt: u64) -> bool {
    let top = virt >> 47;
    top == 0 || top == 0x1_ffff
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * level)) & 0x1ff) as usize
}

/// A 4-level hierarchy under construction.
pub struct PageTables<F: FrameSource> {
    frames: F,
    root: u64,
    /// Whether NX bits may be used (EFER.NXE will be set).
    nx: bool,
}

impl<F: FrameSource> PageTables<F> {
    /// An empty hierarchy. `nx` says whether the CPU supports no-execute and
    /// EFER.NXE will be enabled: only then are NX bits written.
    pub fn new(mut frames: F, nx: bool) -> Result<Self, Error> {
        let root = frames.alloc_frame().ok_or(Error::OutOfFrames)?;
        Ok(Self { frames, root, nx })
    }

    /// Physical address of the PML4 (the value for CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn frames(&mut self) -> &mut F {
        &mut self.frames
    }

    fn leaf_flags(&self, access: Access) -> u64 {
        let mut flags = PTE_PRESENT;
        if access.writable {
            flags |= PTE_WRITABLE;
        }
        if !access.executable && self.nx {
            flags |= PTE_NO_EXECUTE;
        }
        flags
    }

    /// The table the entry `idx` of table `table` points to, created on
    /// demand. Intermediate entries allow everything; leaves restrict.
    fn child(&mut self, table: u64, idx: usize, virt: u64) -> Result<u64, Error> {
        let entry = self.frames.table(table)[idx];
        if entry & PTE_PRESENT != 0 {
            if entry & PTE_HUGE != 0 {
                return Err(Error::AlreadyMapped { virt });
            }
            return Ok(entry & PTE_ADDR_MASK);
        }
        let frame = self.frames.alloc_frame().ok_or(Error::OutOfFrames)?;
        self.frames.table(table)[idx] = frame | PTE_PRESENT | PTE_WRITABLE;
        Ok(frame)
    }

    fn check(virt: u64, phys: u64, size: u64) -> Result<(), Error> {
        if !is_canonical(virt) {
            return Err(Error::NotCanonical { virt });
        }
        if !virt.is_multiple_of(size) || !phys.is_multiple_of(size) {
            return Err(Error::Misaligned { virt, phys });
        }
        if phys & !PTE_ADDR_MASK != 0 {
            return Err(Error::PhysTooHigh { phys });
        }
        Ok(())
    }

    /// Maps the 2 MiB page at `virt` to `phys`.
    pub fn map_large(&mut self, virt: u64, phys: u64, access: Access) -> Result<(), Error> {
        Self::check(virt, phys, LARGE)?;
        let pdpt = self.child(self.root, index(virt, 3), virt)?;
        let pd = self.child(pdpt, index(virt, 2), virt)?;
        let idx = index(virt, 1);
        if self.frames.table(pd)[idx] & PTE_PRESENT != 0 {
            return Err(Error::AlreadyMapped { virt });
        }
        let flags = self.leaf_flags(access) | PTE_HUGE;
        self.frames.table(pd)[idx] = phys | flags;
        Ok(())
    }

    /// Maps the 4 KiB page at `virt` to `phys`.
    pub fn map_small(&mut self, virt: u64, phys: u64, access: Access) -> Result<(), Error> {
        Self::check(virt, phys, SMALL)?;
        let pdpt = self.child(self.root, index(virt, 3), virt)?;
        let pd = self.child(pdpt, index(virt, 2), virt)?;
        let pt = self.child(pd, index(virt, 1), virt)?;
        let idx = index(virt, 0);
        if self.frames.table(pt)[idx] & PTE_PRESENT != 0 {
            return Err(Error::AlreadyMapped { virt });
        }
        let flags = self.leaf_flags(access);
        self.frames.table(pt)[idx] = phys | flags;
        Ok(())
    }

    /// Maps `[virt, virt + len)` to `[phys, ...)` with 4 KiB pages; `len` is
    /// rounded up to whole pages.
    pub fn map_range(&mut self, virt: u64, phys: u64, len: u64, access: Access) -> Result<(), Error> {
        let pages = len.div_ceil(SMALL);
        for i in 0..pages {
            let off = i * SMALL;
            let v = virt.checked_add(off).ok_or(Error::NotCanonical { virt })?;
            let p = phys.checked_add(off).ok_or(Error::PhysTooHigh { phys })?;
            self.map_small(v, p, access)?;
        }
        Ok(())
    }

    /// Identity-maps `[0, end)` (rounded up to 2 MiB) with 2 MiB pages,
    /// writable and executable: the loader runs from there while it switches
    /// to these tables.
    pub fn identity_map(&mut self, end: u64) -> Result<(), Error> {
        let end = crate::align_up(end, LARGE).ok_or(Error::NotCanonical { virt: end })?;
        let mut addr = 0;
        while addr < end {
            self.map_large(addr, addr, Access::RWX)?;
            addr += LARGE;
        }
        Ok(())
    }

    /// Walks the tables like the MMU: the physical address `virt` maps to
    /// and the effective access, or `None` when unmapped.
    pub fn translate(&mut self, virt: u64) -> Option<(u64, Access)> {
        if !is_canonical(virt) {
            return None;
        }
        let mut table = self.root;
        let mut writable = true;
        let mut executable = true;
        for level in (0..4).rev() {
            let entry = self.frames.table(table)[index(virt, level)];
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            writable &= entry & PTE_WRITABLE != 0;
            executable &= entry & PTE_NO_EXECUTE == 0;
            let addr = entry & PTE_ADDR_MASK;
            let leaf = level == 0 || (level <= 2 && entry & PTE_HUGE != 0);
            if leaf {
                let page_mask = (1u64 << (12 + 9 * level)) - 1;
                return Some((addr + (virt & page_mask), Access { writable, executable }));
            }
            table = addr;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    /// Frames on the heap, at fake physical addresses 0x1000_0000 + i * 4 KiB.
    struct HeapFrames {
        frames: Vec<Box<[u64; ENTRIES]>>,
        limit: usize,
    }
    const FAKE_BASE: u64 = 0x1000_0000;
    impl FrameSource for HeapFrames {
        fn alloc_frame(&mut self) -> Option<u64> {
            if self.frames.len() == self.limit {
                return None;
            }
            self.frames.push(Box::new([0; ENTRIES]));
            Some(FAKE_BASE + (self.frames.len() as u64 - 1) * SMALL)
        }
        fn table(&mut self, phys: u64) -> &mut [u64; ENTRIES] {
            &mut self.frames[((phys - FAKE_BASE) / SMALL) as usize]
        }
    }
    fn tables(limit: usize, nx: bool) -> PageTables<HeapFrames> {
        PageTables::new(HeapFrames { frames: Vec::new(), limit }, nx).unwrap()
    }

    #[test]
    fn identity_map_of_4_gib_uses_2_mib_pages() {
        let mut pt = tables(100, true);
        pt.identity_map(4 << 30).unwrap();
        // PML4 + one PDPT + 4 PDs.
        assert_eq!(pt.frames().frames.len(), 6);
        assert_eq!(pt.translate(0), Some((0, Access::RWX)));
        assert_eq!(pt.translate(0x1234_5678), Some((0x1234_5678, Access::RWX)));
        assert_eq!(pt.translate((4 << 30) - 1), Some(((4 << 30) - 1, Access::RWX)));
        assert_eq!(pt.translate(4 << 30), None);
        let pml4 = pt.root();
        let pdpt = pt.frames().table(pml4)[0] & PTE_ADDR_MASK;
        let pd = pt.frames().table(pdpt)[0] & PTE_ADDR_MASK;
        assert_eq!(pt.frames().table(pd)[1], LARGE | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
    }

    #[test]
    fn identity_end_rounds_up_to_2_mib() {
        let mut pt = tables(100, true);
        pt.identity_map(LARGE + 1).unwrap();
        assert!(pt.translate(2 * LARGE - 1).is_some());
        assert!(pt.translate(2 * LARGE).is_none());
    }

    #[test]
    fn kernel_segments_get_their_permissions() {
        let mut pt = tables(100, true);
        pt.identity_map(4 << 30).unwrap();
        let base = 0xffff_ffff_8000_0000u64;
        pt.map_range(base + 0x1000, 0x20_0000, 0x2000, Access::RX).unwrap();
        pt.map_range(base + 0x3000, 0x30_0000, 0x1000, Access::R).unwrap();
        pt.map_range(base + 0x4000, 0x40_0000, 0x1001, Access::RW).unwrap();
        assert_eq!(pt.translate(base + 0x1008), Some((0x20_0008, Access::RX)));
        assert_eq!(pt.translate(base + 0x2fff), Some((0x20_1fff, Access::RX)));
        assert_eq!(pt.translate(base + 0x3000), Some((0x30_0000, Access::R)));
        assert_eq!(pt.translate(base + 0x5000), Some((0x40_1000, Access::RW)));
        assert_eq!(pt.translate(base + 0x6000), None);
        assert_eq!(pt.translate(base), None);
        // Leaf bits: NX only on the non-executable ones.
        let e = |pt: &mut PageTables<HeapFrames>, v: u64| {
            let mut t = pt.root();
            for level in (1..4).rev() {
                t = pt.frames().table(t)[index(v, level)] & PTE_ADDR_MASK;
            }
            pt.frames().table(t)[index(v, 0)]
        };
        assert_eq!(e(&mut pt, base + 0x1000), 0x20_0000 | PTE_PRESENT);
        assert_eq!(e(&mut pt, base + 0x3000), 0x30_0000 | PTE_PRESENT | PTE_NO_EXECUTE);
        assert_eq!(e(&mut pt, base + 0x4000), 0x40_0000 | PTE_PRESENT | PTE_WRITABLE | PTE_NO_EXECUTE);
    }

    #[test]
    fn without_nx_support_no_nx_bits_are_written() {
        let mut pt = tables(100, false);
        pt.map_range(0xffff_ffff_8000_0000, 0x40_0000, 0x1000, Access::RW).unwrap();
        assert_eq!(pt.translate(0xffff_ffff_8000_0000), Some((0x40_0000, Access::RWX)));
        for frame in &pt.frames().frames {
            assert!(frame.iter().all(|e| e & PTE_NO_EXECUTE == 0));
        }
    }

    #[test]
    fn double_mappings_and_bad_addresses_are_errors() {
        let mut pt = tables(100, true);
        pt.identity_map(4 << 30).unwrap();
        assert_eq!(pt.map_small(0x1000, 0x1000, Access::RW), Err(Error::AlreadyMapped { virt: 0x1000 }));
        assert_eq!(pt.map_large(0, 0, Access::RW), Err(Error::AlreadyMapped { virt: 0 }));
        pt.map_small(0xffff_ffff_8000_0000, 0x1000, Access::R).unwrap();
        assert!(pt.map_small(0xffff_ffff_8000_0000, 0x2000, Access::R).is_err());
        assert_eq!(
            pt.map_large(0xffff_ffff_8000_0000, 0, Access::R),
            Err(Error::AlreadyMapped { virt: 0xffff_ffff_8000_0000 })
        );
        assert_eq!(
            pt.map_small(0x0000_8000_0000_0000, 0, Access::R),
            Err(Error::NotCanonical { virt: 0x0000_8000_0000_0000 })
        );
        assert_eq!(pt.map_small(0x1001, 0, Access::R), Err(Error::Misaligned { virt: 0x1001, phys: 0 }));
        assert_eq!(pt.map_small(0xffff_ffff_9000_0000, 1 << 60, Access::R), Err(Error::PhysTooHigh { phys: 1 << 60 }));
    }

    #[test]
    fn exhausted_pool_is_reported() {
        let mut pt = tables(3, true);
        assert_eq!(pt.identity_map(4 << 30), Err(Error::OutOfFrames));
    }

    #[test]
    fn frames_needed_estimate_is_enough() {
        use crate::layout::table_frames_needed;
        let base = 0xffff_ffff_8000_0000u64;
        let segs = [(base + 0x1000, 0x30_0000u64), (base + 0x40_0000, 0x1000), (base + 0x3fff_f000, 0x2000)];
        for end in [4u64 << 30, (4 << 30) + 1, 513 << 30] {
            let need = table_frames_needed(end, segs.iter().copied()) as usize;
            let mut pt = tables(need, true);
            pt.identity_map(end).unwrap();
            let mut phys = 0x1_0000_0000;
            for (v, len) in segs {
                let start = crate::align_down(v, SMALL);
                pt.map_range(start, phys, v + len - start, Access::RW).unwrap();
                phys += 0x100_0000;
            }
            assert!(pt.frames().frames.len() <= need);
        }
    }
}
