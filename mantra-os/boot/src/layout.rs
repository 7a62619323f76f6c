//! Checks of the kernel's virtual layout that go beyond ELF validity (the
//! loader maps 4 KiB pages, so segments must not share one, and the low half
//! belongs to the identity map), and the sizing of the page-table pool.

use crate::{align_down, align_up, LARGE_PAGE_SIZE, PAGE_SIZE};
use core::fmt;
use mantra_elf::Elf;

/// Lowest address of the higher half (4-level paging).
pub const HIGHER_HALF: u64 = 0xffff_8000_0000_0000;
/// The identity map must stay in the lower canonical half.
pub const MAX_IDENTITY_END: u64 = 0x0000_8000_0000_0000;
/// The identity map always covers at least this much (PCI holes, LAPIC,
/// IOAPIC and the framebuffer live below 4 GiB).
pub const MIN_IDENTITY_END: u64 = 4 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// Loadable segment `index` starts below the higher half.
    NotHigherHalf { index: usize, vaddr: u64 },
    /// Loadable segments `first` and `second` share a 4 KiB page.
    SharedPage { first: usize, second: usize },
    /// Physical memory reaches `end`, beyond what the identity map can cover.
    MemoryTooHigh { end: u64 },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::NotHigherHalf { index, vaddr } => write!(
                f,
                "kernel segment {index} at {vaddr:#x} is below the higher half ({HIGHER_HALF:#x}): link the kernel at 0xffffffff80000000"
            ),
            LayoutError::SharedPage { first, second } => write!(
                f,
                "kernel segments {first} and {second} share a 4 KiB page: align every PT_LOAD to 4096 in the linker script"
            ),
            LayoutError::MemoryTooHigh { end } => {
                write!(f, "physical memory reaches {end:#x}, beyond the 128 TiB the identity map can cover")
            }
        }
    }
}

/// First page and page count of a segment at `vaddr` of `memsz` bytes
/// (validated not to overflow by `Elf::parse`).
pub fn page_span(vaddr: u64, memsz: u64) -> (u64, u64) {
    let start = align_down(vaddr, PAGE_SIZE);
    // (vaddr - start) < 4096 and memsz <= 2^64 - 1 - vaddr: no overflow for
    // validated segments; saturate for anything else.
    (start, (vaddr - start).saturating_add(memsz).div_ceil(PAGE_SIZE))
}

/// Address of the last page of a span of `pages` (>= 1) pages at `start`.
fn last_page(start: u64, pages: u64) -> u64 {
    start.saturating_add((pages.max(1) - 1).saturating_mul(PAGE_SIZE))
}

/// Checks that every loadable segment lies in the higher half and that no
/// two share a page.
pub fn check_kernel_segments(elf: &Elf<'_>) -> Result<(), LayoutError> {
    for a in elf.loads() {
        if a.header.vaddr < HIGHER_HALF {
            return Err(LayoutError::NotHigherHalf { index: a.index, vaddr: a.header.vaddr });
        }
        let (a_start, a_pages) = page_span(a.header.vaddr, a.header.memsz);
        for b in elf.loads().filter(|b| b.index > a.index) {
            let (b_start, b_pages) = page_span(b.header.vaddr, b.header.memsz);
            if a_start <= last_page(b_start, b_pages) && b_start <= last_page(a_start, a_pages) {
                return Err(LayoutError::SharedPage { first: a.index, second: b.index });
            }
        }
    }
    Ok(())
}

/// End of the identity map for physical memory (memory map, framebuffer)
/// reaching `highest`: at least 4 GiB, rounded up to 2 MiB.
pub fn identity_end(highest: u64) -> Result<u64, LayoutError> {
    let end = align_up(highest.max(MIN_IDENTITY_END), LARGE_PAGE_SIZE).unwrap_or(u64::MAX);
    if end > MAX_IDENTITY_END {
        return Err(LayoutError::MemoryTooHigh { end: highest });
    }
    Ok(end)
}

/// Upper bound of the page-table frames for an identity map up to
/// `identity_end` plus 4 KiB mappings of `segments` (`(vaddr, memsz)`).
pub fn table_frames_needed(identity_end: u64, segments: impl Iterator<Item = (u64, u64)>) -> u64 {
    const GIB: u64 = 1 << 30;
    const PML4_SPAN: u64 = 512 * GIB;
    let gib = identity_end.div_ceil(GIB);
    // PML4, the identity map's PDPTs and PDs.
    let mut frames = 1 + gib.div_ceil(512) + gib;
    for (vaddr, memsz) in segments {
        let (start, pages) = page_span(vaddr, memsz);
        let last = last_page(start, pages);
        let touched = |span: u64| last / span - start / span + 1;
        frames += touched(LARGE_PAGE_SIZE) + touched(GIB) + touched(PML4_SPAN);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(page_span(0x1000, 0x1000), (0x1000, 1));
        assert_eq!(page_span(0x1008, 0x1000), (0x1000, 2));
        assert_eq!(page_span(0x1000, 0), (0x1000, 0));
        assert_eq!(page_span(0xffff_ffff_ffff_f008, 0xff8), (0xffff_ffff_ffff_f000, 1));
        assert_eq!(last_page(0xffff_ffff_ffff_f000, 1), 0xffff_ffff_ffff_f000);
    }

    extern crate std;
    use std::string::ToString;
    use std::vec::Vec;

    /// ELF64 with one PT_LOAD per `(vaddr, memsz, flags)`, no file data.
    fn elf_with(loads: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut b = std::vec![0u8; 64 + 56 * loads.len()];
        b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        b[16..18].copy_from_slice(&mantra_elf::ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&mantra_elf::EM_X86_64.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&loads[0].0.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(loads.len() as u16).to_le_bytes());
        for (i, &(vaddr, memsz, flags)) in loads.iter().enumerate() {
            let at = 64 + 56 * i;
            b[at..at + 4].copy_from_slice(&mantra_elf::PT_LOAD.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        b
    }

    fn check(loads: &[(u64, u64, u32)]) -> Result<(), LayoutError> {
        let bytes = elf_with(loads);
        let elf = Elf::parse(&bytes, mantra_elf::EM_X86_64).unwrap();
        check_kernel_segments(&elf)
    }

    #[test]
    fn kernel_segments_must_be_higher_half_and_not_share_pages() {
        const B: u64 = 0xffff_ffff_8000_0000;
        assert_eq!(check(&[(B, 0x1000, 5), (B + 0x1000, 0x10, 4), (B + 0x2000, 0x3000, 6)]), Ok(()));
        assert_eq!(
            check(&[(B, 0x1000, 5), (B + 0x1800, 0x10, 4), (B + 0x1810, 0x10, 6)]),
            Err(LayoutError::SharedPage { first: 1, second: 2 })
        );
        assert_eq!(
            check(&[(B, 0x1001, 5), (B + 0x1001, 0x10, 4)]),
            Err(LayoutError::SharedPage { first: 0, second: 1 })
        );
        assert_eq!(check(&[(0x40_0000, 0x1000, 5)]), Err(LayoutError::NotHigherHalf { index: 0, vaddr: 0x40_0000 }));
        // The very last page of the address space.
        assert_eq!(check(&[(B, 0x1000, 5), (0xffff_ffff_ffff_f000, 0xfff, 6)]), Ok(()));
        assert!(LayoutError::SharedPage { first: 0, second: 1 }.to_string().contains("linker script"));
    }

    #[test]
    fn identity_end_bounds() {
        assert_eq!(identity_end(0), Ok(4 << 30));
        assert_eq!(identity_end((8 << 30) + 1), Ok((8 << 30) + LARGE_PAGE_SIZE));
        assert!(identity_end(u64::MAX).is_err());
        assert!(identity_end(MAX_IDENTITY_END + 1).is_err());
    }

    #[test]
    fn frame_estimate_grows_with_memory() {
        let small = table_frames_needed(4 << 30, core::iter::empty());
        assert_eq!(small, 1 + 1 + 4);
        let big = table_frames_needed(1024 << 30, core::iter::empty());
        assert_eq!(big, 1 + 2 + 1024);
        let seg = table_frames_needed(4 << 30, [(0xffff_ffff_8000_0000u64, 0x1000u64)].into_iter());
        assert_eq!(seg, small + 3);
    }
}
