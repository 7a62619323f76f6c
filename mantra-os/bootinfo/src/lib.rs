//! BootInfo: what MantraBoot hands MantraCore, in one position-independent
//! blob (a fixed header followed by variable-length tables referenced by
//! offset), so either side can read it through any mapping.
//!
//! The loader encodes it with [`encode`] into a buffer it allocated before
//! ExitBootServices; the kernel validates it with [`BootInfo::parse`] before
//! trusting any field. A version mismatch is detected twice: the loader reads
//! the version the kernel was built against from the kernel's `.note.mantra`
//! ELF note ([`KernelNote`]) and refuses to jump, and the kernel checks the
//! header again at entry.
#![no_std]

pub mod bootfs;
pub mod eventlog;

use core::mem::{align_of, size_of};

/// Magic at offset 0 of a BootInfo blob.
pub const MAGIC: [u8; 8] = *b"MANTRABI";
/// Version of the layout below. Bump on every incompatible change.
pub const VERSION: u32 = 3;

/// Base of the kernel's direct map of physical memory: physical address `p`
/// is mapped at `DIRECT_MAP_BASE + p`. MantraBoot gives the UEFI runtime
/// regions these virtual addresses (SetVirtualAddressMap), so the kernel
/// reaches firmware code, data and MMIO through its direct map.
pub const DIRECT_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;

/// UEFI memory attribute bit: the region is needed by runtime services.
pub const EFI_MEMORY_RUNTIME: u64 = 1 << 63;
/// UEFI memory attribute bit: the region supports write-back caching.
pub const EFI_MEMORY_WB: u64 = 1 << 3;
/// UEFI memory type of runtime services code.
pub const EFI_RUNTIME_SERVICES_CODE: u32 = 5;
/// UEFI memory type of runtime services data.
pub const EFI_RUNTIME_SERVICES_DATA: u32 = 6;
/// UEFI memory types of memory-mapped I/O (and I/O port space).
pub const EFI_MMIO: u32 = 11;
pub const EFI_MMIO_PORT_SPACE: u32 = 12;

/// Kind of a physical memory region, as the kernel needs to know it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM.
    Usable = 1,
    /// RAM the firmware or loader used before hand-over (boot services,
    /// loader code/data): free once the kernel no longer needs the loader.
    Reclaimable = 2,
    /// ACPI tables: free once the kernel has parsed them.
    AcpiReclaimable = 3,
    /// ACPI non-volatile storage: never touch.
    AcpiNvs = 4,
    /// Reserved by firmware or hardware.
    Reserved = 5,
    /// Memory-mapped I/O.
    Mmio = 6,
    /// The kernel image's segments.
    Kernel = 7,
    /// Loader allocations the kernel uses at entry: this BootInfo, the boot
    /// filesystem, the boot stack, the initial page tables.
    BootData = 8,
    /// UEFI runtime services code/data.
    FirmwareRuntime = 9,
    /// RAM with errors.
    Unusable = 10,
}

impl MemoryKind {
    /// Decodes a raw kind; unknown values read as `Reserved` (the safe side).
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Usable,
            2 => Self::Reclaimable,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            6 => Self::Mmio,
            7 => Self::Kernel,
            8 => Self::BootData,
            9 => Self::FirmwareRuntime,
            10 => Self::Unusable,
            _ => Self::Reserved,
        }
    }
}

/// One physical memory region, in 4 KiB pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub pages: u64,
    pub kind: u32,
    pub _reserved: u32,
}

impl MemoryRegion {
    pub const fn new(start: u64, pages: u64, kind: MemoryKind) -> Self {
        Self { start, pages, kind: kind as u32, _reserved: 0 }
    }
    pub fn kind(&self) -> MemoryKind {
        MemoryKind::from_raw(self.kind)
    }
    /// End address (exclusive), saturating.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.pages.saturating_mul(4096))
    }
}

/// ELF-style segment permission bits.
pub const SEG_X: u32 = 1;
pub const SEG_W: u32 = 2;
pub const SEG_R: u32 = 4;

/// Where the loader put one loadable segment of the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSegment {
    pub vaddr: u64,
    pub paddr: u64,
    pub mem_size: u64,
    /// `SEG_R | SEG_W | SEG_X` bits.
    pub flags: u32,
    pub _reserved: u32,
}

/// One UEFI memory descriptor with the EFI_MEMORY_RUNTIME attribute, as
/// MantraBoot passed it to SetVirtualAddressMap: the firmware's runtime
/// services use `virt` (always `DIRECT_MAP_BASE + phys`) from then on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeRegion {
    pub phys: u64,
    pub virt: u64,
    pub pages: u64,
    /// UEFI memory type (`EFI_RUNTIME_SERVICES_CODE`, `_DATA`, `EFI_MMIO`, ...).
    pub efi_type: u32,
    pub _reserved: u32,
    /// UEFI attribute bits (`EFI_MEMORY_RUNTIME`, cacheability, ...).
    pub attribute: u64,
}

impl RuntimeRegion {
    /// End address (exclusive, physical), saturating.
    pub fn end(&self) -> u64 {
        self.phys.saturating_add(self.pages.saturating_mul(4096))
    }
    /// Firmware code (mapped executable).
    pub fn is_code(&self) -> bool {
        self.efi_type == EFI_RUNTIME_SERVICES_CODE
    }
    /// Device memory (mapped uncached): MMIO types, or anything the
    /// firmware did not declare write-back cacheable.
    pub fn is_mmio(&self) -> bool {
        matches!(self.efi_type, EFI_MMIO | EFI_MMIO_PORT_SPACE) || self.attribute & EFI_MEMORY_WB == 0
    }
}

/// Pixel layout of the framebuffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    None = 0,
    Rgb = 1,
    Bgr = 2,
    Bitmask = 3,
}

/// The GOP framebuffer, or `format == None` when there is none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framebuffer {
    pub base: u64,
    pub size: u64,
    pub width: u32,
    pub height: u32,
    /// Pixels per scan line.
    pub stride: u32,
    pub format: u32,
}

impl Framebuffer {
    pub const NONE: Self = Self { base: 0, size: 0, width: 0, height: 0, stride: 0, format: 0 };
}

/// A table inside the blob: byte offset from the blob's start and element count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub offset: u64,
    pub count: u64,
}

/// The fixed header at offset 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    /// Size of the whole blob, tables included.
    pub total_size: u64,
    pub memory_map: Table,
    pub kernel_segments: Table,
    /// Kernel command line, bytes (UTF-8, not NUL-terminated).
    pub cmdline: Table,
    pub framebuffer: Framebuffer,
    /// Physical address of the ACPI RSDP (0 when the firmware gave none).
    pub rsdp: u64,
    /// Physical address and size of the boot filesystem (see [`bootfs`]).
    pub bootfs_addr: u64,
    pub bootfs_size: u64,
    /// The stack the kernel is entered on.
    pub boot_stack_base: u64,
    pub boot_stack_size: u64,
    /// Root of the page tables active at kernel entry.
    pub boot_page_table: u64,
    /// Time-stamp counter read just before the jump to the kernel.
    pub loader_exit_tsc: u64,
    /// The TCG event log, bytes (empty without a TPM): the firmware's log in
    /// the crypto-agile `TCG_PCR_EVENT2` format as EFI_TCG2_PROTOCOL's
    /// GetEventLog returned it (its measurements and MantraBoot's), then the
    /// entries of the EFI_TCG2_FINAL_EVENTS_TABLE logged after that call
    /// (ExitBootServices). Version 2.
    pub event_log: Table,
    /// Physical address of the UEFI runtime services table (reached at
    /// `DIRECT_MAP_BASE + this`); 0 when there are none (no firmware, or
    /// SetVirtualAddressMap failed).
    pub efi_runtime_services: u64,
    /// The runtime regions ([`RuntimeRegion`]) SetVirtualAddressMap was given.
    pub runtime_regions: Table,
}

/// What the encoder needs besides the tables.
#[derive(Clone, Copy, Debug)]
pub struct Fixed {
    pub framebuffer: Framebuffer,
    pub rsdp: u64,
    pub bootfs_addr: u64,
    pub bootfs_size: u64,
    pub boot_stack_base: u64,
    pub boot_stack_size: u64,
    pub boot_page_table: u64,
    pub loader_exit_tsc: u64,
    pub efi_runtime_services: u64,
}

/// Why a blob could not be encoded or parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The buffer is too small: this many bytes are needed.
    BufferTooSmall { needed: usize },
    /// The buffer is not 8-byte aligned.
    Misaligned,
    BadMagic,
    /// The blob was written for another layout version.
    VersionMismatch { found: u32, expected: u32 },
    /// The header or a table lies outside the blob.
    Truncated,
    /// A table's offset is not aligned for its element type.
    BadTable,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BufferTooSmall { needed } => write!(f, "BootInfo buffer too small ({needed} bytes needed)"),
            Error::Misaligned => write!(f, "BootInfo buffer is not 8-byte aligned"),
            Error::BadMagic => write!(f, "not a BootInfo blob (bad magic)"),
            Error::VersionMismatch { found, expected } => write!(
                f,
                "BootInfo version {found} but this side speaks version {expected}: rebuild MantraBoot and MantraCore together (./mantra build)"
            ),
            Error::Truncated => write!(f, "BootInfo blob is truncated"),
            Error::BadTable => write!(f, "BootInfo table offset is misaligned"),
        }
    }
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes [`encode`] needs for these table sizes (`event_log` in bytes,
/// `runtime` in regions).
pub const fn encoded_size(regions: usize, segments: usize, cmdline: usize, event_log: usize, runtime: usize) -> usize {
    align8(size_of::<Header>())
        + align8(regions * size_of::<MemoryRegion>())
        + align8(segments * size_of::<KernelSegment>())
        + align8(cmdline)
        + align8(event_log)
        + align8(runtime * size_of::<RuntimeRegion>())
}

/// Writes a blob into `buf` and returns its size.
///
/// Allocation-free, so the loader can call it after ExitBootServices.
pub fn encode(
    buf: &mut [u8],
    fixed: &Fixed,
    memory_map: &[MemoryRegion],
    segments: &[KernelSegment],
    cmdline: &[u8],
    event_log: &[u8],
    runtime: &[RuntimeRegion],
) -> Result<usize, Error> {
    let needed = encoded_size(memory_map.len(), segments.len(), cmdline.len(), event_log.len(), runtime.len());
    if buf.len() < needed {
        return Err(Error::BufferTooSmall { needed });
    }
    if buf.as_ptr() as usize % 8 != 0 {
        return Err(Error::Misaligned);
    }
    buf[..needed].fill(0);
    let mut cursor = align8(size_of::<Header>());
    let mut put = |bytes: &[u8], count: usize| -> Table {
        let offset = cursor;
        buf[offset..offset + bytes.len()].copy_from_slice(bytes);
        cursor += align8(bytes.len());
        Table { offset: offset as u64, count: count as u64 }
    };
    let memory_table = put(as_bytes(memory_map), memory_map.len());
    let segment_table = put(as_bytes(segments), segments.len());
    let cmdline_table = put(cmdline, cmdline.len());
    let event_log_table = put(event_log, event_log.len());
    let runtime_table = put(as_bytes(runtime), runtime.len());
    let header = Header {
        magic: MAGIC,
        version: VERSION,
        header_size: size_of::<Header>() as u32,
        total_size: needed as u64,
        memory_map: memory_table,
        kernel_segments: segment_table,
        cmdline: cmdline_table,
        framebuffer: fixed.framebuffer,
        rsdp: fixed.rsdp,
        bootfs_addr: fixed.bootfs_addr,
        bootfs_size: fixed.bootfs_size,
        boot_stack_base: fixed.boot_stack_base,
        boot_stack_size: fixed.boot_stack_size,
        boot_page_table: fixed.boot_page_table,
        loader_exit_tsc: fixed.loader_exit_tsc,
        event_log: event_log_table,
        efi_runtime_services: fixed.efi_runtime_services,
        runtime_regions: runtime_table,
    };
    buf[..size_of::<Header>()].copy_from_slice(as_bytes(core::slice::from_ref(&header)));
    Ok(needed)
}

fn as_bytes<T: Copy>(items: &[T]) -> &[u8] {
    // SAFETY: T is one of this crate's repr(C) plain-data types without
    // padding holes that matter (all padding is explicit `_reserved` fields),
    // so viewing it as bytes reads initialized memory.
    unsafe { core::slice::from_raw_parts(items.as_ptr().cast::<u8>(), core::mem::size_of_val(items)) }
}

/// A validated view of a BootInfo blob.
#[derive(Clone, Copy)]
pub struct BootInfo<'a> {
    bytes: &'a [u8],
    header: Header,
}

impl<'a> BootInfo<'a> {
    /// Validates magic, version, size and every table's bounds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.as_ptr() as usize % 8 != 0 {
            return Err(Error::Misaligned);
        }
        if bytes.len() < 12 {
            return Err(Error::Truncated);
        }
        if bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != VERSION {
            return Err(Error::VersionMismatch { found: version, expected: VERSION });
        }
        if bytes.len() < size_of::<Header>() {
            return Err(Error::Truncated);
        }
        // SAFETY: the length was checked and Header is plain data valid for
        // any bit pattern; read_unaligned tolerates any alignment.
        let header = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Header>()) };
        if (header.header_size as usize) < size_of::<Header>() || header.total_size as usize > bytes.len() {
            return Err(Error::Truncated);
        }
        let bytes = &bytes[..header.total_size as usize];
        let info = Self { bytes, header };
        info.table::<MemoryRegion>(header.memory_map)?;
        info.table::<KernelSegment>(header.kernel_segments)?;
        info.table::<u8>(header.cmdline)?;
        info.table::<u8>(header.event_log)?;
        info.table::<RuntimeRegion>(header.runtime_regions)?;
        Ok(info)
    }

    /// Parses the blob at a raw address, reading its size from the header.
    ///
    /// # Safety
    /// `ptr` must point to readable memory of at least the header's size and,
    /// if the magic matches, of `total_size` bytes, valid for `'a`.
    pub unsafe fn from_ptr(ptr: *const u8) -> Result<Self, Error> {
        // SAFETY: the caller guarantees the header is readable.
        let head = unsafe { core::slice::from_raw_parts(ptr, size_of::<Header>()) };
        if head[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        // SAFETY: as above; Header is plain data.
        let header = unsafe { core::ptr::read_unaligned(ptr.cast::<Header>()) };
        if header.version != VERSION {
            return Err(Error::VersionMismatch { found: header.version, expected: VERSION });
        }
        // SAFETY: the caller guarantees total_size bytes are readable once the
        // magic matched.
        Self::parse(unsafe { core::slice::from_raw_parts(ptr, header.total_size as usize) })
    }

    fn table<T>(&self, table: Table) -> Result<&'a [T], Error> {
        let offset = usize::try_from(table.offset).map_err(|_| Error::Truncated)?;
        let count = usize::try_from(table.count).map_err(|_| Error::Truncated)?;
        let len = count.checked_mul(size_of::<T>()).ok_or(Error::Truncated)?;
        let end = offset.checked_add(len).ok_or(Error::Truncated)?;
        if end > self.bytes.len() {
            return Err(Error::Truncated);
        }
        let ptr = self.bytes[offset..].as_ptr();
        if ptr as usize % align_of::<T>() != 0 {
            return Err(Error::BadTable);
        }
        // SAFETY: bounds and alignment were checked above; T is plain data
        // (u8 or one of this crate's repr(C) structs) valid for any bits.
        Ok(unsafe { core::slice::from_raw_parts(ptr.cast::<T>(), count) })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn memory_map(&self) -> &'a [MemoryRegion] {
        self.table(self.header.memory_map).unwrap_or(&[])
    }
    pub fn kernel_segments(&self) -> &'a [KernelSegment] {
        self.table(self.header.kernel_segments).unwrap_or(&[])
    }
    pub fn cmdline(&self) -> &'a str {
        core::str::from_utf8(self.table(self.header.cmdline).unwrap_or(&[])).unwrap_or("")
    }
    pub fn framebuffer(&self) -> Option<Framebuffer> {
        (self.header.framebuffer.format != PixelFormat::None as u32).then_some(self.header.framebuffer)
    }
    pub fn rsdp(&self) -> Option<u64> {
        (self.header.rsdp != 0).then_some(self.header.rsdp)
    }
    /// The TCG event log (see [`Header::event_log`]); empty when there is none.
    pub fn event_log(&self) -> &'a [u8] {
        self.table(self.header.event_log).unwrap_or(&[])
    }
    /// Physical address of the UEFI runtime services table, if usable.
    pub fn efi_runtime_services(&self) -> Option<u64> {
        (self.header.efi_runtime_services != 0).then_some(self.header.efi_runtime_services)
    }
    /// The UEFI runtime regions (mapped at `DIRECT_MAP_BASE + phys`).
    pub fn runtime_regions(&self) -> &'a [RuntimeRegion] {
        self.table(self.header.runtime_regions).unwrap_or(&[])
    }
    /// Physical range of the boot filesystem, if the loader provided one.
    pub fn bootfs(&self) -> Option<(u64, u64)> {
        (self.header.bootfs_size != 0).then_some((self.header.bootfs_addr, self.header.bootfs_size))
    }
}

/// ELF note the kernel carries so the loader can check, before jumping, that
/// both speak the same BootInfo version. Name "Mantra", type [`NOTE_TYPE_BOOTINFO_VERSION`].
#[repr(C, align(4))]
pub struct KernelNote {
    pub namesz: u32,
    pub descsz: u32,
    pub note_type: u32,
    pub name: [u8; 8],
    pub desc: u32,
}

pub const NOTE_NAME: &[u8] = b"Mantra\0";
pub const NOTE_TYPE_BOOTINFO_VERSION: u32 = 1;

impl KernelNote {
    /// The note for this crate's [`VERSION`].
    pub const CURRENT: Self = Self {
        namesz: 7,
        descsz: 4,
        note_type: NOTE_TYPE_BOOTINFO_VERSION,
        name: *b"Mantra\0\0",
        desc: VERSION,
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[repr(C, align(8))]
    struct Buf([u8; 4096]);

    fn fixed() -> Fixed {
        Fixed {
            framebuffer: Framebuffer { base: 0x8000_0000, size: 0x30_0000, width: 1280, height: 800, stride: 1280, format: PixelFormat::Bgr as u32 },
            rsdp: 0x7fb7_e014,
            bootfs_addr: 0x10_0000,
            bootfs_size: 8192,
            boot_stack_base: 0x20_0000,
            boot_stack_size: 65536,
            boot_page_table: 0x30_0000,
            loader_exit_tsc: 42,
            efi_runtime_services: 0x7fe0_0018,
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Buf([0xAA; 4096]);
        let map = [
            MemoryRegion::new(0, 160, MemoryKind::Usable),
            MemoryRegion::new(0x10_0000, 2, MemoryKind::BootData),
            MemoryRegion::new(0xfee0_0000, 1, MemoryKind::Mmio),
        ];
        let segs = [KernelSegment { vaddr: 0xffff_ffff_8000_0000, paddr: 0x40_0000, mem_size: 0x5000, flags: SEG_R | SEG_X, _reserved: 0 }];
        let rt = [
            RuntimeRegion { phys: 0x7fe0_0000, virt: DIRECT_MAP_BASE + 0x7fe0_0000, pages: 16, efi_type: EFI_RUNTIME_SERVICES_CODE, _reserved: 0, attribute: EFI_MEMORY_RUNTIME | EFI_MEMORY_WB },
            RuntimeRegion { phys: 0xffc0_0000, virt: DIRECT_MAP_BASE + 0xffc0_0000, pages: 1024, efi_type: EFI_MMIO, _reserved: 0, attribute: EFI_MEMORY_RUNTIME | 1 },
        ];
        let n = encode(&mut buf.0, &fixed(), &map, &segs, b"log=debug", b"\x00\x01event log", &rt).unwrap();
        assert_eq!(n, encoded_size(3, 1, 9, 11, 2));
        assert_eq!(BootInfo::parse(&buf.0[..n]).unwrap().runtime_regions(), &rt);
        assert_eq!(BootInfo::parse(&buf.0[..n]).unwrap().efi_runtime_services(), Some(0x7fe0_0018));
        assert!(rt[0].is_code() && !rt[0].is_mmio() && rt[1].is_mmio() && !rt[1].is_code());
        let info = BootInfo::parse(&buf.0[..n]).unwrap();
        assert_eq!(info.memory_map(), &map);
        assert_eq!(info.memory_map()[2].kind(), MemoryKind::Mmio);
        assert_eq!(info.kernel_segments(), &segs);
        assert_eq!(info.cmdline(), "log=debug");
        assert_eq!(info.event_log(), b"\x00\x01event log");
        assert_eq!(info.rsdp(), Some(0x7fb7_e014));
        assert_eq!(info.bootfs(), Some((0x10_0000, 8192)));
        assert_eq!(info.framebuffer().unwrap().width, 1280);
        // SAFETY: buf is live and holds n bytes.
        let raw = unsafe { BootInfo::from_ptr(buf.0.as_ptr()) }.unwrap();
        assert_eq!(raw.memory_map().len(), 3);
    }

    #[test]
    fn too_small_buffer_reports_needed_size() {
        let mut buf = Buf([0; 4096]);
        let map = vec![MemoryRegion::new(0, 1, MemoryKind::Usable); 400];
        assert_eq!(
            encode(&mut buf.0, &fixed(), &map, &[], b"", b"", &[]),
            Err(Error::BufferTooSmall { needed: encoded_size(400, 0, 0, 0, 0) })
        );
    }

    #[test]
    fn rejects_bad_magic_version_and_truncation() {
        let mut buf = Buf([0; 4096]);
        let n = encode(&mut buf.0, &fixed(), &[MemoryRegion::new(0, 1, MemoryKind::Usable)], &[], b"", b"", &[]).unwrap();
        assert_eq!(BootInfo::parse(&buf.0[..n - 8]).err(), Some(Error::Truncated));
        buf.0[8] = 99;
        assert_eq!(BootInfo::parse(&buf.0[..n]).err(), Some(Error::VersionMismatch { found: 99, expected: VERSION }));
        buf.0[0] = b'X';
        assert_eq!(BootInfo::parse(&buf.0[..n]).err(), Some(Error::BadMagic));
    }

    #[test]
    fn rejects_table_outside_blob() {
        let mut buf = Buf([0; 4096]);
        let n = encode(&mut buf.0, &fixed(), &[MemoryRegion::new(0, 1, MemoryKind::Usable)], &[], b"", b"", &[]).unwrap();
        // Point the memory map past the end.
        let off = core::mem::offset_of!(Header, memory_map);
        buf.0[off..off + 8].copy_from_slice(&(n as u64).to_le_bytes());
        assert_eq!(BootInfo::parse(&buf.0[..n]).err(), Some(Error::Truncated));
    }

    #[test]
    fn unknown_memory_kind_is_reserved() {
        assert_eq!(MemoryKind::from_raw(77), MemoryKind::Reserved);
    }
}
