//! The kernel ELF: validation (ELF, BootInfo version note, layout) and
//! loading of its PT_LOAD segments into pages of the kernel memory type.

use alloc::format;
use alloc::vec::Vec;
use mantra_boot::layout::{self, page_span};
use mantra_boot::memmap::KERNEL_MEMORY_TYPE;
use mantra_boot::paging::Access;
use mantra_bootinfo::{KernelSegment, NOTE_NAME, NOTE_TYPE_BOOTINFO_VERSION, SEG_R, SEG_W, SEG_X};
use mantra_elf::{Elf, EM_X86_64, PF_R, PF_W, PF_X};
use uefi::boot::{self, AllocateType, MemoryType};

use super::fail::Fatal;
use super::{KERNEL_PATH, REBUILD};

/// One PT_LOAD segment copied to physical memory.
pub struct LoadedSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub flags: u32,
    /// First virtual page and its physical page; `pages` of them.
    pub page_vaddr: u64,
    pub page_paddr: u64,
    pub pages: u64,
}

impl LoadedSegment {
    pub fn access(&self) -> Access {
        Access { writable: self.flags & PF_W != 0, executable: self.flags & PF_X != 0 }
    }

    /// The BootInfo record: `paddr` is where `vaddr` itself landed.
    pub fn bootinfo(&self) -> KernelSegment {
        let mut flags = 0;
        if self.flags & PF_R != 0 {
            flags |= SEG_R;
        }
        if self.flags & PF_W != 0 {
            flags |= SEG_W;
        }
        if self.flags & PF_X != 0 {
            flags |= SEG_X;
        }
        KernelSegment {
            vaddr: self.vaddr,
            paddr: self.page_paddr + (self.vaddr - self.page_vaddr),
            mem_size: self.memsz,
            flags,
            _reserved: 0,
        }
    }
}

pub struct LoadedKernel {
    pub entry: u64,
    pub segments: Vec<LoadedSegment>,
}

/// Parses the kernel, checks its BootInfo version note and its layout.
pub fn check(bytes: &[u8]) -> Result<Elf<'_>, Fatal> {
    let elf = Elf::parse(bytes, EM_X86_64).map_err(|e| {
        Fatal::new(format!("kernel {KERNEL_PATH} is not a loadable x86_64 ELF executable: {e}"), REBUILD)
    })?;
    let ours = mantra_bootinfo::VERSION;
    let note = elf
        .find_note(NOTE_NAME, NOTE_TYPE_BOOTINFO_VERSION)
        .map_err(|e| Fatal::new(format!("kernel {KERNEL_PATH} has a malformed note: {e}"), REBUILD))?
        .ok_or_else(|| {
            Fatal::new(
                format!(
                    "kernel {KERNEL_PATH} carries no Mantra BootInfo version note (PT_NOTE \"Mantra\" type {NOTE_TYPE_BOOTINFO_VERSION}), \
                     so its BootInfo version is unknown (MantraBoot speaks version {ours})"
                ),
                REBUILD,
            )
        })?;
    let desc: [u8; 4] = note.desc.try_into().map_err(|_| {
        Fatal::new(
            format!("kernel {KERNEL_PATH}: the Mantra note has a {}-byte descriptor, expected 4", note.desc.len()),
            REBUILD,
        )
    })?;
    let theirs = u32::from_le_bytes(desc);
    if theirs != ours {
        return Err(Fatal::new(
            format!("kernel {KERNEL_PATH} speaks BootInfo version {theirs}, MantraBoot speaks version {ours}"),
            REBUILD,
        ));
    }
    layout::check_kernel_segments(&elf).map_err(|e| Fatal::new(format!("kernel {KERNEL_PATH}: {e}"), REBUILD))?;
    Ok(elf)
}

/// Copies every PT_LOAD segment into fresh pages (any physical address,
/// memory type [`KERNEL_MEMORY_TYPE`]) and zeroes the rest (bss, padding).
pub fn load(elf: &Elf<'_>) -> Result<LoadedKernel, Fatal> {
    let mut segments = Vec::new();
    for seg in elf.loads() {
        let h = seg.header;
        let (page_vaddr, pages) = page_span(h.vaddr, h.memsz);
        let count = usize::try_from(pages)
            .map_err(|_| Fatal::new(format!("kernel segment {} is too large", seg.index), REBUILD))?;
        let ptr = boot::allocate_pages(AllocateType::AnyPages, MemoryType::custom(KERNEL_MEMORY_TYPE), count).map_err(
            |e| {
                Fatal::new(
                    format!("cannot allocate {count} pages for kernel segment {}: {}", seg.index, e.status()),
                    "give the machine more memory",
                )
            },
        )?;
        let page_paddr = ptr.as_ptr() as u64;
        let offset = (h.vaddr - page_vaddr) as usize;
        // SAFETY: `ptr` is a fresh allocation of `count` pages, identity
        // mapped, that nothing else references.
        let dest = unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), count * 4096) };
        dest.fill(0);
        // Elf::parse checked filesz <= memsz, so the data fits.
        dest[offset..offset + seg.data.len()].copy_from_slice(seg.data);
        segments.push(LoadedSegment { vaddr: h.vaddr, memsz: h.memsz, flags: h.flags, page_vaddr, page_paddr, pages });
    }
    Ok(LoadedKernel { entry: elf.entry(), segments })
}
