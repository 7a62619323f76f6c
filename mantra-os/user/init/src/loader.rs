//! Loading a program in user mode: the plan.
//!
//! [`plan`] validates an ELF file (mantra_elf's checks, plus: every
//! loadable segment lies in the program area of user space, none is both
//! writable and executable, no two share a page) and says, per segment,
//! which page-aligned range to map with which permissions and where its
//! file bytes go inside that range. MantraInit then, per segment, creates a
//! memory object of `len` bytes, writes `data` at `data_offset`
//! (VMO_WRITE; the rest stays zero: .bss), and maps it at `addr` with
//! `flags | FIXED` into the child's address space.
//!
//! The stack is a separate memory object of [`STACK_SIZE`] bytes mapped so
//! that it ends at [`STACK_TOP`]; the [`STACK_GUARD`] bytes below it belong
//! to no mapping MantraInit makes (programs are linked far below), so an
//! overflow faults instead of running into other memory.

use alloc::vec::Vec;
use core::fmt;

use mantra_abi::{map, USER_BASE, USER_END};
use mantra_elf::{Elf, EM_X86_64};

pub const PAGE: u64 = 4096;
/// Top (exclusive) of the main thread's stack.
pub const STACK_TOP: u64 = 0x0000_7FFF_0000_0000;
pub const STACK_SIZE: u64 = 256 * 1024;
/// Unmapped gap below the stack.
pub const STACK_GUARD: u64 = 1024 * 1024;
/// Programs must lie below the stack's guard gap.
pub const PROGRAM_END: u64 = STACK_TOP - STACK_SIZE - STACK_GUARD;

const _: () = assert!(STACK_TOP <= USER_END && STACK_TOP % PAGE == 0 && STACK_SIZE % PAGE == 0);

/// One loadable segment, page-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan<'a> {
    /// Index of the program header (for messages).
    pub index: usize,
    /// Page-aligned start address.
    pub addr: u64,
    /// Bytes to map (a multiple of [`PAGE`]).
    pub len: u64,
    /// Where the file bytes start inside the mapping.
    pub data_offset: u64,
    /// The segment's bytes in the file (`p_filesz`).
    pub data: &'a [u8],
    /// `map::READ | WRITE | EXECUTE` as the segment asks.
    pub flags: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    pub entry: u64,
    pub segments: Vec<SegmentPlan<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    Elf(mantra_elf::Error),
    /// Segment `index` is outside `[USER_BASE, PROGRAM_END)`.
    OutsideProgramArea { index: usize, start: u64, end: u64 },
    /// Segment `index` is writable and executable.
    WriteAndExecute { index: usize },
    /// Segment `index` is not readable.
    NotReadable { index: usize },
    /// Segments `first` and `second` share a page.
    SharedPage { first: usize, second: usize },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LoadError::Elf(e) => write!(f, "bad ELF file: {e}"),
            LoadError::OutsideProgramArea { index, start, end } => write!(
                f,
                "segment {index} [{start:#x}, {end:#x}) is outside the program area [{USER_BASE:#x}, {PROGRAM_END:#x}) (link with mantra-os/user/user.ld)"
            ),
            LoadError::WriteAndExecute { index } => write!(f, "segment {index} is writable and executable"),
            LoadError::NotReadable { index } => write!(f, "segment {index} is not readable"),
            LoadError::SharedPage { first, second } => {
                write!(f, "segments {first} and {second} share a page (segments must be 4 KiB aligned)")
            }
        }
    }
}

/// The loading plan for the ELF file `bytes`.
pub fn plan(bytes: &[u8]) -> Result<Plan<'_>, LoadError> {
    let elf = Elf::parse(bytes, EM_X86_64).map_err(LoadError::Elf)?;
    let mut segments: Vec<SegmentPlan<'_>> = Vec::new();
    for segment in elf.loads() {
        let h = segment.header;
        let index = segment.index;
        if h.memsz == 0 {
            continue;
        }
        let end = h.vaddr_end();
        if h.vaddr < USER_BASE || end > PROGRAM_END {
            return Err(LoadError::OutsideProgramArea { index, start: h.vaddr, end });
        }
        if !h.is_readable() {
            return Err(LoadError::NotReadable { index });
        }
        if h.is_writable() && h.is_executable() {
            return Err(LoadError::WriteAndExecute { index });
        }
        let addr = h.vaddr & !(PAGE - 1);
        let len = end.next_multiple_of(PAGE) - addr;
        let mut flags = map::READ;
        if h.is_writable() {
            flags |= map::WRITE;
        }
        if h.is_executable() {
            flags |= map::EXECUTE;
        }
        for other in &segments {
            if addr < other.addr + other.len && other.addr < addr + len {
                return Err(LoadError::SharedPage { first: other.index, second: index });
            }
        }
        segments.push(SegmentPlan { index, addr, len, data_offset: h.vaddr - addr, data: segment.data, flags });
    }
    Ok(Plan { entry: elf.entry(), segments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    /// A minimal ET_EXEC x86_64 file: segments (vaddr, flags, file bytes, memsz).
    fn elf(entry: u64, segments: &[(u64, u32, &[u8], u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_start = 0x1000u64;
        let mut out = vec![0u8; data_start as usize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, (vaddr, flags, data, memsz)) in segments.iter().enumerate() {
            // File offset congruent to vaddr modulo the page size.
            let offset = (out.len() as u64).next_multiple_of(PAGE) + vaddr % PAGE;
            out.resize(offset as usize, 0);
            out.extend_from_slice(data);
            let ph = phoff as usize + i * 56;
            let fields: [u64; 6] = [offset, *vaddr, *vaddr, data.len() as u64, *memsz, PAGE];
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            for (k, v) in fields.iter().enumerate() {
                out[ph + 8 + k * 8..ph + 16 + k * 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    const RX: u32 = 5;
    const R: u32 = 4;
    const RW: u32 = 6;

    #[test]
    fn plans_pages_permissions_and_bss() {
        let text = [0x90u8; 100];
        let data = [7u8; 10];
        let file = elf(0x400000, &[(0x400000, RX, &text, 100), (0x401000, R, b"ro", 2), (0x402010, RW, &data, 0x3000)]);
        let plan = plan(&file).unwrap();
        assert_eq!(plan.entry, 0x400000);
        let summary: Vec<_> = plan.segments.iter().map(|s| (s.addr, s.len, s.data_offset, s.data.len(), s.flags)).collect();
        assert_eq!(
            summary,
            [
                (0x400000, 0x1000, 0, 100, map::READ | map::EXECUTE),
                (0x401000, 0x1000, 0, 2, map::READ),
                (0x402000, 0x4000, 0x10, 10, map::READ | map::WRITE),
            ]
        );
        assert_eq!(plan.segments[2].data, &data);
    }

    #[test]
    fn refuses_what_cannot_be_mapped_safely() {
        let code = [0xc3u8; 4];
        let wx = elf(0x400000, &[(0x400000, 7, &code, 4)]);
        assert_eq!(plan(&wx).unwrap_err(), LoadError::WriteAndExecute { index: 0 });
        let low = elf(0x0, &[(0x0, RX, &code, 4)]);
        assert!(matches!(plan(&low).unwrap_err(), LoadError::OutsideProgramArea { index: 0, .. }));
        let high = elf(PROGRAM_END - 2, &[(PROGRAM_END - 2, RX, &code, 4)]);
        assert!(matches!(plan(&high).unwrap_err(), LoadError::OutsideProgramArea { .. }));
        let shared = elf(0x400000, &[(0x400000, RX, &code, 4), (0x400800, RW, &code, 4)]);
        assert_eq!(plan(&shared).unwrap_err(), LoadError::SharedPage { first: 0, second: 1 });
        let unreadable = elf(0x400000, &[(0x400000, 1, &code, 4)]);
        assert_eq!(plan(&unreadable).unwrap_err(), LoadError::NotReadable { index: 0 });
        assert!(matches!(plan(b"not an elf file at all, really not, no no no no no no no no no no no"), Err(LoadError::Elf(_))));
        assert!(std::format!("{}", LoadError::SharedPage { first: 0, second: 1 }).contains("share a page"));
    }
}
