//! MantraCore. Architecture-independent logic lives in this library and
//! builds and tests on the host (`cargo test -p mantra-kernel`); everything
//! that touches the machine is in the kernel binary (src/main.rs, `arch`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod cap;
pub mod efivar;
pub mod handle;
pub mod irq;
pub mod mm;
pub mod signal;
pub mod sync;
pub mod usermem;
pub mod vmo;
