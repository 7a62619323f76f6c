//! The MantraOS system-call ABI: the single source of truth shared by the
//! kernel and userland (syscall numbers, error codes, rights, message
//! layout). The kernel issue fills it in; the foundation only fixes the
//! crate and its version.
#![no_std]

/// Version of the syscall ABI. Bumped on every incompatible change.
pub const ABI_VERSION: u32 = 0;
