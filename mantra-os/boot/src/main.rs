//! MantraBoot: the MantraOS UEFI loader (x86_64-unknown-uefi).
//!
//! Verifies `\MANTRA\MANIFEST.SIG` with the root key built into it
//! (docs/signing.md), loads `\MANTRA\KERNEL.ELF` and `\MANTRA\BOOTFS.IMG`
//! from the ESP it was started from and checks each against the signed
//! manifest before using it, checks that the kernel speaks our BootInfo
//! version, builds the hand-over page tables, exits boot services and jumps
//! to the kernel with a [`mantra_bootinfo`] blob. Any failure prints
//! `MantraBoot: error: <what>; <what to try>` and halts.
//!
//! The machine-independent parts live in the library (`lib.rs`) and are
//! host-tested; this binary is only the UEFI glue.
#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]

#[cfg(target_os = "uefi")]
extern crate alloc;

#[cfg(target_os = "uefi")]
mod efi;

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("MantraBoot is a UEFI application: build it with --target x86_64-unknown-uefi (./mantra build)");
    std::process::exit(2);
}
