//! MantraBoot's machine-independent logic, host-testable: the page-table
//! builder, the conversion of the UEFI memory map into BootInfo regions and
//! the checks and sizing of the kernel's memory layout, the A/B slot state
//! machine, the TPM commands MantraBoot marshals itself and flash mode's
//! protocol (frames, the session state machine). (Sizing TCG
//! event log entries is `mantra_bootinfo::eventlog`.) The UEFI application
//! itself is `main.rs` (built for `x86_64-unknown-uefi` only).
#![no_std]

extern crate alloc;

pub mod flash;

pub mod layout;
pub mod memmap;
pub mod paging;
pub mod slots;
pub mod tpm;
pub mod tpm_nv;

/// Size of a small page and of a page-table frame.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large (PDE-mapped) page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Rounds `n` up to a multiple of `align` (a power of two); `None` on overflow.
pub const fn align_up(n: u64, align: u64) -> Option<u64> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `n` down to a multiple of `align` (a power of two).
pub const fn align_down(n: u64, align: u64) -> u64 {
    n & !(align - 1)
}
