//! UEFI variable access as pure logic: what FIRMWARE_VARIABLE_GET/_SET
//! accept from user mode (names, attributes, sizes), the vendor GUID they
//! are confined to, how the firmware's status codes become ABI errors, and
//! the checks on the runtime regions MantraBoot handed over. The kernel
//! binary's `efirt` module makes the firmware calls.

use mantra_abi::{fwvar, Error};
use mantra_bootinfo::{RuntimeRegion, DIRECT_MAP_BASE};

/// EFI_GUID of `fwvar::VENDOR_GUID` (b1237644-3bb1-4cbd-a419-51a543783796)
/// in its in-memory layout: Data1 (u32), Data2 and Data3 (u16) little-endian,
/// then Data4's eight bytes as written.
pub const MANTRA_VENDOR_GUID: [u8; 16] =
    [0x44, 0x76, 0x23, 0xb1, 0xb1, 0x3b, 0xbd, 0x4c, 0xa4, 0x19, 0x51, 0xa5, 0x43, 0x78, 0x37, 0x96];

/// A variable name as the firmware takes it: UCS-2, NUL-terminated.
pub type Ucs2Name = [u16; fwvar::MAX_NAME_LEN + 1];

/// Converts a user-supplied name (printable ASCII, 1..=64 bytes) to UCS-2
/// with its terminating NUL. Anything else is `InvalidArgs`.
pub fn name_to_ucs2(name: &[u8]) -> Result<Ucs2Name, Error> {
    if name.is_empty() || name.len() > fwvar::MAX_NAME_LEN {
        return Err(Error::InvalidArgs);
    }
    let mut out = [0u16; fwvar::MAX_NAME_LEN + 1];
    for (slot, &byte) in out.iter_mut().zip(name) {
        if !(0x20..=0x7e).contains(&byte) {
            return Err(Error::InvalidArgs);
        }
        *slot = u16::from(byte);
    }
    Ok(out)
}

/// The attributes FIRMWARE_VARIABLE_SET accepts: exactly NV|BS|RT or BS|RT
/// (no authenticated, hardware-error or append writes).
pub fn check_set_attributes(attributes: u64) -> Result<u32, Error> {
    match u32::try_from(attributes) {
        Ok(a) if a == fwvar::ATTRS_NV || a == fwvar::ATTRS_VOLATILE => Ok(a),
        _ => Err(Error::InvalidArgs),
    }
}

/// Whether user mode may write a variable of this name: not one of the
/// names only MantraBoot writes.
pub fn user_may_write(name: &[u8]) -> bool {
    !fwvar::BOOT_OWNED.iter().any(|owned| owned.as_bytes() == name)
}

/// The value sizes FIRMWARE_VARIABLE_SET accepts (0 deletes).
pub fn check_data_len(len: u64) -> Result<usize, Error> {
    usize::try_from(len).ok().filter(|&n| n <= fwvar::MAX_DATA_LEN).ok_or(Error::InvalidArgs)
}

/// EFI_STATUS values (UEFI 2.10 appendix D): errors have the top bit set.
pub mod status {
    const ERR: usize = 1 << (usize::BITS - 1);
    pub const SUCCESS: usize = 0;
    pub const INVALID_PARAMETER: usize = ERR | 2;
    pub const UNSUPPORTED: usize = ERR | 3;
    pub const BUFFER_TOO_SMALL: usize = ERR | 5;
    pub const DEVICE_ERROR: usize = ERR | 7;
    pub const WRITE_PROTECTED: usize = ERR | 8;
    pub const OUT_OF_RESOURCES: usize = ERR | 9;
    pub const NOT_FOUND: usize = ERR | 14;
    pub const ACCESS_DENIED: usize = ERR | 15;
    pub const SECURITY_VIOLATION: usize = ERR | 26;
}

/// The ABI error for a firmware status that is not SUCCESS. Unknown codes
/// (and warnings) read as the firmware failing.
pub fn status_to_error(code: usize) -> Error {
    match code {
        status::NOT_FOUND => Error::NotFound,
        status::BUFFER_TOO_SMALL => Error::BufferTooSmall,
        status::WRITE_PROTECTED | status::SECURITY_VIOLATION | status::ACCESS_DENIED => Error::AccessDenied,
        status::OUT_OF_RESOURCES => Error::NoResources,
        status::INVALID_PARAMETER => Error::InvalidArgs,
        status::UNSUPPORTED => Error::NotSupported,
        _ => Error::IoError,
    }
}

/// Why the runtime regions cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// A region's virtual address is not `DIRECT_MAP_BASE + phys`.
    NotDirectMapped(u64),
    /// A region is not page aligned, empty or overflows.
    Malformed(u64),
    /// Regions overlap or are not sorted by address.
    Overlap(u64),
}

impl core::fmt::Display for RegionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegionError::NotDirectMapped(p) => write!(f, "runtime region {p:#x} is not at its direct-map address"),
            RegionError::Malformed(p) => write!(f, "runtime region {p:#x} is malformed"),
            RegionError::Overlap(p) => write!(f, "runtime region {p:#x} overlaps its predecessor or is out of order"),
        }
    }
}

/// Highest physical address the direct map can reach (47-bit half minus
/// what the kernel's other regions need): the loader's own limit.
pub const RUNTIME_PHYS_LIMIT: u64 = 1 << 46;

/// Checks the runtime regions MantraBoot passed: page aligned, non-empty,
/// below [`RUNTIME_PHYS_LIMIT`], at their direct-map addresses, sorted and
/// disjoint (so mapping them one by one cannot clash).
pub fn check_runtime_regions(regions: &[RuntimeRegion]) -> Result<(), RegionError> {
    let mut previous_end = 0;
    for r in regions {
        let end = r.pages.checked_mul(4096).and_then(|len| r.phys.checked_add(len));
        match end {
            Some(end) if r.phys % 4096 == 0 && r.pages != 0 && end <= RUNTIME_PHYS_LIMIT => {
                if r.virt != DIRECT_MAP_BASE + r.phys {
                    return Err(RegionError::NotDirectMapped(r.phys));
                }
                if r.phys < previous_end {
                    return Err(RegionError::Overlap(r.phys));
                }
                previous_end = end;
            }
            _ => return Err(RegionError::Malformed(r.phys)),
        }
    }
    Ok(())
}

/// Whether `[addr, addr + len)` lies inside one runtime region satisfying
/// `pick` (virtual addresses).
pub fn in_runtime_region(regions: &[RuntimeRegion], addr: u64, len: u64, pick: impl Fn(&RuntimeRegion) -> bool) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    regions.iter().filter(|r| pick(r)).any(|r| addr >= r.virt && end <= r.virt + r.pages * 4096)
}

/// Calls `f` for each part of `[start, end)` outside every runtime region
/// (sorted and disjoint, as [`check_runtime_regions`] ensures), so RAM the
/// firmware still uses is never handed to the frame allocator.
pub fn outside_runtime(start: u64, end: u64, regions: &[RuntimeRegion], mut f: impl FnMut(u64, u64)) {
    let mut cursor = start;
    for r in regions {
        if r.end() <= cursor || r.phys >= end {
            continue;
        }
        if r.phys > cursor {
            f(cursor, r.phys);
        }
        cursor = cursor.max(r.end());
    }
    if cursor < end {
        f(cursor, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mantra_bootinfo::{EFI_MEMORY_RUNTIME, EFI_MMIO, EFI_RUNTIME_SERVICES_CODE, EFI_RUNTIME_SERVICES_DATA};

    fn region(phys: u64, pages: u64, efi_type: u32) -> RuntimeRegion {
        RuntimeRegion { phys, virt: DIRECT_MAP_BASE + phys, pages, efi_type, _reserved: 0, attribute: EFI_MEMORY_RUNTIME | 8 }
    }

    #[test]
    fn the_vendor_guid_bytes_match_the_documented_string() {
        let text: std::string::String = fwvar::VENDOR_GUID.chars().filter(|c| *c != '-').collect();
        let raw: std::vec::Vec<u8> = (0..16).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect();
        let mut expected = [0u8; 16];
        expected[..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
        expected[4..6].copy_from_slice(&[raw[5], raw[4]]);
        expected[6..8].copy_from_slice(&[raw[7], raw[6]]);
        expected[8..].copy_from_slice(&raw[8..]);
        assert_eq!(MANTRA_VENDOR_GUID, expected);
    }

    #[test]
    fn names_become_nul_terminated_ucs2() {
        let name = name_to_ucs2(b"MantraSlots").unwrap();
        assert_eq!(&name[..12], &[77, 97, 110, 116, 114, 97, 83, 108, 111, 116, 115, 0]);
        let longest = [b'x'; 64];
        let name = name_to_ucs2(&longest).unwrap();
        assert_eq!((name[63], name[64]), (u16::from(b'x'), 0));
        assert_eq!(name_to_ucs2(b" ~").unwrap()[..3], [0x20, 0x7e, 0]);
        for bad in [&b""[..], &[b'x'; 65], b"a\0b", b"tab\t", b"\x7f", "é".as_bytes()] {
            assert_eq!(name_to_ucs2(bad), Err(Error::InvalidArgs), "{bad:?}");
        }
    }

    #[test]
    fn only_the_two_attribute_sets_are_accepted() {
        assert_eq!(check_set_attributes(7), Ok(7));
        assert_eq!(check_set_attributes(6), Ok(6));
        for bad in [0, 1, 2, 3, 4, 5, 0x27, 0x47, 0x17, 1 << 32 | 7, u64::MAX] {
            assert_eq!(check_set_attributes(bad), Err(Error::InvalidArgs), "{bad:#x}");
        }
    }

    #[test]
    fn boot_owned_names_and_sizes() {
        assert!(!user_may_write(b"MantraRollback"));
        assert!(!user_may_write(b"MantraBootCurrent"));
        assert!(user_may_write(b"MantraSlots"));
        assert!(user_may_write(b"MantraRollback2"));
        assert_eq!(check_data_len(0), Ok(0));
        assert_eq!(check_data_len(2048), Ok(2048));
        assert_eq!(check_data_len(2049), Err(Error::InvalidArgs));
        assert_eq!(check_data_len(u64::MAX), Err(Error::InvalidArgs));
    }

    #[test]
    fn firmware_statuses_map_to_clear_errors() {
        assert_eq!(status_to_error(status::NOT_FOUND), Error::NotFound);
        assert_eq!(status_to_error(status::BUFFER_TOO_SMALL), Error::BufferTooSmall);
        assert_eq!(status_to_error(status::WRITE_PROTECTED), Error::AccessDenied);
        assert_eq!(status_to_error(status::SECURITY_VIOLATION), Error::AccessDenied);
        assert_eq!(status_to_error(status::OUT_OF_RESOURCES), Error::NoResources);
        assert_eq!(status_to_error(status::DEVICE_ERROR), Error::IoError);
        assert_eq!(status_to_error(status::INVALID_PARAMETER), Error::InvalidArgs);
        assert_eq!(status_to_error(status::UNSUPPORTED), Error::NotSupported);
        assert_eq!(status_to_error(3), Error::IoError, "a warning is not success");
        assert_eq!(status_to_error(usize::MAX), Error::IoError);
    }

    #[test]
    fn runtime_regions_are_checked() {
        let good = [region(0x7f00_0000, 16, EFI_RUNTIME_SERVICES_CODE), region(0x7f01_0000, 4, EFI_RUNTIME_SERVICES_DATA), region(0xffc0_0000, 1024, EFI_MMIO)];
        assert_eq!(check_runtime_regions(&good), Ok(()));
        assert_eq!(check_runtime_regions(&[]), Ok(()));
        let mut moved = good;
        moved[1].virt += 4096;
        assert_eq!(check_runtime_regions(&moved), Err(RegionError::NotDirectMapped(0x7f01_0000)));
        let overlapping = [good[0], region(0x7f00_f000, 1, EFI_RUNTIME_SERVICES_DATA)];
        assert_eq!(check_runtime_regions(&overlapping), Err(RegionError::Overlap(0x7f00_f000)));
        assert_eq!(check_runtime_regions(&[good[2], good[0]]), Err(RegionError::Overlap(0x7f00_0000)));
        assert_eq!(check_runtime_regions(&[region(0x1001, 1, 5)]), Err(RegionError::Malformed(0x1001)));
        assert_eq!(check_runtime_regions(&[region(0x1000, 0, 5)]), Err(RegionError::Malformed(0x1000)));
        assert_eq!(check_runtime_regions(&[region(RUNTIME_PHYS_LIMIT, 1, 5)]), Err(RegionError::Malformed(RUNTIME_PHYS_LIMIT)));
        let code = |r: &RuntimeRegion| r.is_code();
        assert!(in_runtime_region(&good, DIRECT_MAP_BASE + 0x7f00_0100, 8, code));
        assert!(!in_runtime_region(&good, DIRECT_MAP_BASE + 0x7f01_0000, 8, code), "data, not code");
        assert!(!in_runtime_region(&good, DIRECT_MAP_BASE + 0x7f00_fffc, 8, code), "straddles the end");
        assert!(!in_runtime_region(&good, u64::MAX - 2, 8, |_| true));
    }

    #[test]
    fn free_memory_skips_runtime_regions() {
        let regions = [region(0x3000, 2, 5), region(0x8000, 1, 6)];
        let mut parts = std::vec::Vec::new();
        outside_runtime(0x1000, 0xa000, &regions, |s, e| parts.push((s, e)));
        assert_eq!(parts, [(0x1000, 0x3000), (0x5000, 0x8000), (0x9000, 0xa000)]);
        parts.clear();
        outside_runtime(0x3000, 0x5000, &regions, |s, e| parts.push((s, e)));
        assert!(parts.is_empty());
        outside_runtime(0x4000, 0x9000, &regions, |s, e| parts.push((s, e)));
        assert_eq!(parts, [(0x5000, 0x8000)]);
    }
}
