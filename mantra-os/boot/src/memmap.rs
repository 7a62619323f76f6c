//! The UEFI memory map as the kernel sees it: each UEFI memory type becomes
//! a [`MemoryKind`], regions are sorted and adjacent regions of the same kind
//! merged.

use mantra_bootinfo::{MemoryKind, MemoryRegion, RuntimeRegion, DIRECT_MAP_BASE, EFI_MEMORY_RUNTIME};

/// UEFI memory type (OS-loader range) of the kernel's segments.
pub const KERNEL_MEMORY_TYPE: u32 = 0x8000_0001;
/// UEFI memory type of the loader allocations the kernel uses at entry:
/// BootInfo, boot filesystem, boot stack, initial page tables.
pub const BOOT_DATA_MEMORY_TYPE: u32 = 0x8000_0002;

// UEFI memory types (UEFI 2.10, table 7.10).
const RESERVED: u32 = 0;
const LOADER_CODE: u32 = 1;
const LOADER_DATA: u32 = 2;
const BOOT_SERVICES_CODE: u32 = 3;
const BOOT_SERVICES_DATA: u32 = 4;
const RUNTIME_SERVICES_CODE: u32 = 5;
const RUNTIME_SERVICES_DATA: u32 = 6;
const CONVENTIONAL: u32 = 7;
const UNUSABLE: u32 = 8;
const ACPI_RECLAIM: u32 = 9;
const ACPI_NON_VOLATILE: u32 = 10;
const MMIO: u32 = 11;
const MMIO_PORT_SPACE: u32 = 12;

/// The kind of a region of UEFI memory type `ty`. Types with no safe use
/// for the kernel (PAL code, persistent and unaccepted memory, OEM types)
/// read as `Reserved`.
pub fn kind_of(ty: u32) -> MemoryKind {
    match ty {
        LOADER_CODE | LOADER_DATA | BOOT_SERVICES_CODE | BOOT_SERVICES_DATA => MemoryKind::Reclaimable,
        CONVENTIONAL => MemoryKind::Usable,
        KERNEL_MEMORY_TYPE => MemoryKind::Kernel,
        BOOT_DATA_MEMORY_TYPE => MemoryKind::BootData,
        ACPI_RECLAIM => MemoryKind::AcpiReclaimable,
        ACPI_NON_VOLATILE => MemoryKind::AcpiNvs,
        MMIO | MMIO_PORT_SPACE => MemoryKind::Mmio,
        RUNTIME_SERVICES_CODE | RUNTIME_SERVICES_DATA => MemoryKind::FirmwareRuntime,
        UNUSABLE => MemoryKind::Unusable,
        RESERVED => MemoryKind::Reserved,
        _ => MemoryKind::Reserved,
    }
}

/// Sorts `regions` by start address, drops empty ones and merges each
/// region into its predecessor when it starts where that one ends and has
/// the same kind. Returns the new length; `regions[..len]` is the result.
/// Allocation-free: it runs after ExitBootServices.
pub fn normalize(regions: &mut [MemoryRegion]) -> usize {
    regions.sort_unstable_by_key(|r| r.start);
    let mut len = 0;
    for i in 0..regions.len() {
        let r = regions[i];
        if r.pages == 0 {
            continue;
        }
        if len > 0 {
            let last = &mut regions[len - 1];
            if last.kind == r.kind && last.end() == r.start {
                last.pages += r.pages;
                continue;
            }
        }
        regions[len] = r;
        len += 1;
    }
    len
}

/// The runtime region for a UEFI descriptor, when it has the
/// EFI_MEMORY_RUNTIME attribute: its virtual address for
/// SetVirtualAddressMap is the kernel's direct-map address of it.
/// `None` for other descriptors, and for a runtime region the direct map
/// cannot reach (above the 47-bit physical limit the kernel maps).
pub fn runtime_region(phys: u64, pages: u64, ty: u32, attribute: u64) -> Option<RuntimeRegion> {
    const PHYS_LIMIT: u64 = 1 << 46;
    if attribute & EFI_MEMORY_RUNTIME == 0 || pages == 0 {
        return None;
    }
    let end = phys.checked_add(pages.checked_mul(4096)?)?;
    if end > PHYS_LIMIT {
        return None;
    }
    Some(RuntimeRegion { phys, virt: DIRECT_MAP_BASE + phys, pages, efi_type: ty, _reserved: 0, attribute })
}

/// Pages of `kind` in `regions`.
pub fn pages_of(regions: &[MemoryRegion], kind: MemoryKind) -> u64 {
    regions.iter().filter(|r| r.kind() == kind).map(|r| r.pages).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_regions_go_to_the_direct_map() {
        let r = runtime_region(0xffc0_0000, 1024, MMIO, EFI_MEMORY_RUNTIME | 1).unwrap();
        assert_eq!((r.virt, r.pages, r.efi_type), (0xffff_8000_ffc0_0000, 1024, MMIO));
        assert!(r.is_mmio());
        assert_eq!(runtime_region(0x10_0000, 4, RUNTIME_SERVICES_CODE, 8), None, "no RUNTIME attribute");
        assert_eq!(runtime_region(0x10_0000, 0, RUNTIME_SERVICES_CODE, EFI_MEMORY_RUNTIME), None);
        assert_eq!(runtime_region(1 << 46, 1, RUNTIME_SERVICES_DATA, EFI_MEMORY_RUNTIME), None, "beyond the direct map");
        assert_eq!(runtime_region(u64::MAX - 4095, 2, RUNTIME_SERVICES_DATA, EFI_MEMORY_RUNTIME), None);
    }

    fn r(start: u64, pages: u64, kind: MemoryKind) -> MemoryRegion {
        MemoryRegion::new(start, pages, kind)
    }

    #[test]
    fn maps_uefi_types() {
        assert_eq!(kind_of(7), MemoryKind::Usable);
        for t in [1, 2, 3, 4] {
            assert_eq!(kind_of(t), MemoryKind::Reclaimable);
        }
        assert_eq!(kind_of(5), MemoryKind::FirmwareRuntime);
        assert_eq!(kind_of(6), MemoryKind::FirmwareRuntime);
        assert_eq!(kind_of(8), MemoryKind::Unusable);
        assert_eq!(kind_of(9), MemoryKind::AcpiReclaimable);
        assert_eq!(kind_of(10), MemoryKind::AcpiNvs);
        assert_eq!(kind_of(11), MemoryKind::Mmio);
        assert_eq!(kind_of(12), MemoryKind::Mmio);
        assert_eq!(kind_of(0), MemoryKind::Reserved);
        assert_eq!(kind_of(13), MemoryKind::Reserved);
        assert_eq!(kind_of(14), MemoryKind::Reserved);
        assert_eq!(kind_of(15), MemoryKind::Reserved);
        assert_eq!(kind_of(0x7000_0000), MemoryKind::Reserved);
        assert_eq!(kind_of(KERNEL_MEMORY_TYPE), MemoryKind::Kernel);
        assert_eq!(kind_of(BOOT_DATA_MEMORY_TYPE), MemoryKind::BootData);
        assert_eq!(kind_of(0x8000_0003), MemoryKind::Reserved);
    }

    #[test]
    fn sorts_and_merges_adjacent_equal_regions() {
        use MemoryKind::*;
        let mut map = [
            r(0x10_0000, 16, Usable),
            r(0, 160, Usable),
            r(0x11_0000, 4, Usable),
            r(0x11_4000, 2, Kernel),
            r(0x11_6000, 0, BootData),
            r(0x11_6000, 3, Kernel),
            r(0x20_0000, 1, Usable), // not adjacent: gap before it
            r(0x20_1000, 1, Reclaimable),
            r(0x20_2000, 5, Reclaimable),
        ];
        let n = normalize(&mut map);
        assert_eq!(
            &map[..n],
            &[
                r(0, 160, Usable),
                r(0x10_0000, 20, Usable),
                r(0x11_4000, 5, Kernel),
                r(0x20_0000, 1, Usable),
                r(0x20_1000, 6, Reclaimable),
            ]
        );
        assert_eq!(pages_of(&map[..n], Usable), 181);
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(normalize(&mut []), 0);
        let mut one = [r(0, 0, MemoryKind::Usable)];
        assert_eq!(normalize(&mut one), 0);
        let mut one = [r(0x1000, 1, MemoryKind::Usable)];
        assert_eq!(normalize(&mut one), 1);
    }
}
